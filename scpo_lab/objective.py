"""RL objective for verifiable-reward post-training: group advantages, completion log-probs, clipped policy loss.

Read top to bottom:
  1. `group_advantages`     GRPO / Dr. GRPO / batch-scaled advantages from the rewards of G rollouts per prompt.
  2. `completion_logprobs`  log pi(y_t | x, y_<t) and entropy of each completion token, with the lm_head applied
                            chunk by chunk (and checkpointed) so a B x T x V logits tensor never sits in memory.
  3. `policy_loss`          PPO-style clipped surrogate + optional k3 KL, with GRPO / DAPO / Dr. GRPO aggregation;
                            the ratio per token (GRPO) or per sequence (GSPO).
  4. `overlong_penalty`     DAPO's soft overlong punishment, added to the reward before the advantages.

Shapes: B rollouts (= n_groups * G, ordered group by group), P prompt positions (LEFT padded),
T completion positions (RIGHT padded), V vocabulary. Masks are 1 on real tokens, 0 on padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

ADVANTAGE_SCALES = ("group", "none", "batch")
LOSS_AGGS = ("sequence-mean", "token-mean", "constant")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")  # TRL's GRPOConfig.importance_sampling_level
STD_EPS = 1e-4  # TRL's epsilon in A = (r - mean) / (std + 1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------

def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the positions where mask is 1 (over all of them, or along `dim`); 0 where mask is empty."""
    mask = mask.to(x.dtype)
    total = torch.where(mask.bool(), x, torch.zeros_like(x))  # zero (not x*0) so NaN/inf at pads can't leak
    if dim is None:
        return total.sum() / mask.sum().clamp(min=1.0)  # sum_t m_t x_t / max(1, sum_t m_t)
    return total.sum(dim) / mask.sum(dim).clamp(min=1.0)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman): unbiased, always >= 0, samples drawn from pi."""
    log_ratio = ref_logp - logp  # log(pi_ref / pi)
    return torch.exp(log_ratio) - log_ratio - 1.0  # k3 = pi_ref/pi - log(pi_ref/pi) - 1


def _unbiased_std(x: Tensor, dim: int | None = None) -> Tensor:
    # torch.std's default (Bessel-corrected, divide by n-1) like TRL; a single sample has std 0 rather than NaN.
    n = x.numel() if dim is None else x.shape[dim]
    correction = 1 if n > 1 else 0
    return x.std(correction=correction) if dim is None else x.std(dim=dim, correction=correction)


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards: expected a 1-D tensor [B]; got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"group_size: must be >= 1 and divide B={rewards.numel()}; got {group_size}")
    return rewards.float().view(-1, group_size)  # [n_groups, G]


# ----------------------------------------------------------------------------------------------------------------
# 1. Advantages
# ----------------------------------------------------------------------------------------------------------------

def _all_equal(r: Tensor) -> Tensor:
    """[n_groups, G] -> [n_groups, 1]: True where every reward of the group equals its first. float32's mean of G
    equal values that are not binary fractions (an overlong penalty of 0.7 on every rollout) is off by an ulp, so
    the std came out ~1e-8 and A ~1e-4 instead of 0: such groups are set to exactly 0 by name, not by rounding."""
    return (r == r[:, :1]).all(dim=1, keepdim=True)


def group_reward_std(rewards: Tensor, group_size: int) -> Tensor:
    """Unbiased std of the rewards in each group -> [n_groups], exactly 0 where they are all equal.
    `frac_reward_zero_std` = (std == 0).float().mean()."""
    r = _grouped(rewards, group_size)
    return torch.where(_all_equal(r).squeeze(1), 0.0, _unbiased_std(r, dim=1))


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """Advantage of each rollout relative to its group -> [B] (float32).

    scale "group" (GRPO):     A_i = (r_i - mean_g r) / (std_g r + 1e-4)
          "none"  (Dr. GRPO): A_i =  r_i - mean_g r
          "batch":            A_i = (r_i - mean_g r) / (std_batch r + 1e-4)
    std is the unbiased (n-1) std, as torch.std's default and TRL's GRPOTrainer use. A group whose rewards are
    all equal gets exactly A = 0 (no gradient: "advantage collapse"), whatever their value.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale: unknown {scale!r}; known: {', '.join(ADVANTAGE_SCALES)}")
    r = _grouped(rewards, group_size)  # [n_groups, G]
    centered = r - r.mean(dim=1, keepdim=True)  # r_i - mean_g r
    if scale == "group":
        centered = centered / (_unbiased_std(r, dim=1).unsqueeze(1) + STD_EPS)  # / (std_g r + 1e-4)
    elif scale == "batch":
        centered = centered / (_unbiased_std(r) + STD_EPS)  # / (std_batch r + 1e-4)
    return torch.where(_all_equal(r), 0.0, centered).reshape(-1)


CRITIC_SCALE = 0.5  # the largest std a reward on [0, 1] can have (a pass rate of 1/2): the critic's score unit


def critic_advantages(group_advantages: Tensor, scores: Tensor, group_size: int, weight: float) -> Tensor:
    """A sequence-level critic's score s_i [B] added to the verifier's group advantage A_i [B] -> [B]:

        A'_i = A_i + w * (s_i - mean_g s) / CRITIC_SCALE

    The critic's group-centred score is read in reward units (the judge's score and a head's value are on the
    verifier's [0, 1] scale; IRL's reward is a clipped logit, in its own units: irl.py) over a fixed scale, not
    over the group's own spread: so its weight sets its share of
    the advantage (a difference of 1 in score moves the advantage by 2w, a verifier pass among failures by ~2.5),
    and in a group the verifier cannot tell apart (A_i = 0) scores that differ by 1e-3 give advantages ~1e-3,
    not the +-1 that normalising r_i + w s_i by its own std would make of them.
    """
    s = _grouped(scores.float(), group_size)
    centred = (s - s.mean(dim=1, keepdim=True)).reshape(-1)  # s_i - mean_g s
    return group_advantages + weight * centred / CRITIC_SCALE


# ----------------------------------------------------------------------------------------------------------------
# 2. Per-token log-probs of the completion, without materialising B x T x V logits
# ----------------------------------------------------------------------------------------------------------------

def backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformer backbone returning last_hidden_state, lm_head) of an HF causal LM or a peft PeftModel over one.

    LoRA layers live inside the base model's modules (peft injects them in place), so the backbone and head
    returned here carry the adapters; `with model.disable_adapter():` still switches them off.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap peft
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)  # LlamaForCausalLM.model, ...
    if backbone is None:
        backbone = base.model
    head = base.get_output_embeddings()
    if getattr(base.config, "final_logit_softcapping", None) is not None:
        raise ValueError("model.config.final_logit_softcapping: not supported by completion_logprobs; allowed: None")
    return backbone, head


def chunk_logprobs(head: torch.nn.Module, h: Tensor, targets: Tensor, temperature: float, with_entropy: bool,
                   support: Tensor | None = None):
    """log pi(target), entropy and log pi at `support` ids for one chunk of hidden states h [B, c, H]
    -> ([B, c], [B, c] or None, [B, c, k] or None)."""
    logits = head(h).float()  # z, [B, c, V] (only this chunk's)
    if temperature != 1.0:  # a pass over B x c x V spared at tau = 1 (z / 1 is z, bit for bit)
        logits = logits / temperature  # z / tau
    logp_all = F.log_softmax(logits, dim=-1)  # log softmax(z / tau)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # log pi(y_t)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None  # H_t = -sum_v p_v log p_v
    return logp, entropy, None if support is None else logp_all.gather(-1, support)


def completion_logprobs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 64,
    with_entropy: bool = True,
    group_size: int = 1,
    support_ids: Tensor | None = None,
    return_states: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log pi(y_t | x, y_<t) [B, T] and entropy [B, T] (or None) of the completion tokens; with
    `support_ids` [B, T, k] also the log-probs at those token ids [B, T, k] (a third output, for distillation);
    with `return_states` also the final hidden states that predict each completion token [B, T, H] (last output,
    for value heads trained on the update's own forward).

    prompt_ids/prompt_mask [B, P] are LEFT padded, completion_ids/completion_mask [B, T] RIGHT padded.
    The backbone runs once (gradients follow torch.is_grad_enabled()); the lm_head, softmax and gather run on
    `chunk_size` positions at a time, each chunk wrapped in a non-reentrant checkpoint when grad is enabled so
    the backward recomputes that chunk's logits instead of storing B x T x V. Masked positions hold 0.

    group_size = G > 1 declares that rows come in blocks of G sharing one prompt (a GRPO group): the prompt is
    then run once per block and its KV cache repeated G times, so the backbone processes n_groups * P + B * T
    tokens instead of B * (P + T). Gradients flow through the shared cache into the prompt positions; values and
    gradients equal the unshared computation (tested).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1; got {chunk_size}")
    _, head = backbone_and_head(model)
    h, input_ids = completion_states(model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    mask = completion_mask.bool()
    targets = input_ids[:, P:]  # the completion tokens y_1 .. y_T (pads set to 0 above)

    use_ckpt = torch.is_grad_enabled()
    logps, entropies, supports = [], [], []
    for s in range(0, T, chunk_size):
        args = (head, h[:, s : s + chunk_size], targets[:, s : s + chunk_size], temperature, with_entropy,
                None if support_ids is None else support_ids[:, s : s + chunk_size])
        if use_ckpt:
            lp, ent, sup = checkpoint(chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent, sup = chunk_logprobs(*args)
        logps.append(lp)
        entropies.append(ent)
        supports.append(sup)

    logp = torch.where(mask, torch.cat(logps, dim=1), 0.0)  # 0 at padding
    entropy = torch.where(mask, torch.cat(entropies, dim=1), 0.0) if with_entropy else None
    out = (logp, entropy) + ((torch.cat(supports, dim=1),) if support_ids is not None else ())
    return out + (h,) if return_states else out


def completion_states(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, group_size: int = 1) -> tuple[Tensor, Tensor]:
    """Final (normed) hidden states at the positions that predict each completion token [B, T, H] -- state t
    has read the prompt and y_<t, i.e. it is the state s_t in which y_t is chosen -- and the input ids [B, P+T]
    with pads set to 0. Left-padded prompts, right-padded completions; gradients follow torch.is_grad_enabled().
    group_size > 1 runs a prompt shared by a block of rows once (see completion_logprobs)."""
    if prompt_ids.shape[1] < 1:
        raise ValueError("prompt_ids: need at least one prompt position (P >= 1)")
    backbone, _ = backbone_and_head(model)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()  # [B, P+T]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)  # pad ids may be anything (e.g. -100); unseen anyway
    # HF's gradient checkpointing drops the KV cache in training, so prompt sharing (which feeds the completions
    # the prompt's cache) would silently lose the prompt: with checkpointing every row runs its whole sequence
    checkpointing = backbone.training and getattr(backbone, "gradient_checkpointing", False)
    if group_size > 1 and not checkpointing and _prompts_shared(prompt_ids, prompt_mask, group_size):
        return _shared_prompt_hidden(backbone, input_ids, attention_mask, P, group_size), input_ids
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # position = #real tokens before it
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state  # [B, P+T, H], no logits
    return hidden[:, P - 1: P + T - 1], input_ids  # the state at position j predicts token j+1


def _prompts_shared(prompt_ids: Tensor, prompt_mask: Tensor, group_size: int) -> bool:
    """True when rows come in blocks of `group_size` with identical prompts (checked, not assumed)."""
    B = prompt_ids.shape[0]
    if B % group_size:
        return False
    ids = prompt_ids.view(B // group_size, group_size, -1)
    masks = prompt_mask.view(B // group_size, group_size, -1)
    return bool((ids == ids[:, :1]).all() and (masks == masks[:, :1]).all())


def _shared_prompt_hidden(backbone, input_ids: Tensor, attention_mask: Tensor, P: int, G: int) -> Tensor:
    """Hidden states predicting the completion tokens, with one prompt forward per block of G rows."""
    from transformers import DynamicCache

    prompt_mask = attention_mask[::G, :P]
    prompt_pos = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = backbone(input_ids=input_ids[::G, :P], attention_mask=prompt_mask, position_ids=prompt_pos,
                   past_key_values=DynamicCache(), use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(G)  # [n_groups, ...] -> [B, ...], differentiable
    last_prompt = out.last_hidden_state[:, -1:].repeat_interleave(G, dim=0)  # predicts y_1 (prompts left padded)
    T = input_ids.shape[1] - P
    completion_pos = attention_mask[:, :P].sum(dim=1, keepdim=True) + torch.arange(T, device=input_ids.device)
    hidden = backbone(input_ids=input_ids[:, P:], attention_mask=attention_mask, position_ids=completion_pos,
                      past_key_values=cache, use_cache=True).last_hidden_state  # [B, T, H]
    return torch.cat([last_prompt, hidden[:, : T - 1]], dim=1)  # states at positions P-1 .. P+T-2


# ----------------------------------------------------------------------------------------------------------------
# 3. Clipped policy-gradient loss
# ----------------------------------------------------------------------------------------------------------------

def loss_denominator(mask: Tensor, loss_agg: str, max_completion_length: int | None = None) -> float:
    """Denominator `policy_loss` divides by for a batch with this completion mask [B, T].

    Compute it once on the FULL batch and pass it as `normalizer=` to every micro-batch's `policy_loss`:
    the micro-batch losses then SUM to the full-batch loss exactly (no extra division by the number of
    micro-batches in the trainer).
      sequence-mean -> B (number of sequences)
      token-mean    -> sum of mask (number of completion tokens, at least 1)
      constant      -> B * max_completion_length
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg: unknown {loss_agg!r}; known: {', '.join(LOSS_AGGS)}")
    if loss_agg == "sequence-mean":
        return float(mask.shape[0])
    if loss_agg == "token-mean":
        return max(1.0, float(mask.sum()))
    if max_completion_length is None:
        raise ValueError("max_completion_length: required when loss_agg='constant'; allowed: a positive int")
    return float(mask.shape[0] * max_completion_length)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    loss_agg: str = "sequence-mean",
    max_completion_length: int | None = None,
    normalizer: float | None = None,
    importance_sampling_level: str = "token",
) -> tuple[Tensor, dict]:
    """Clipped surrogate (+ beta * k3 KL) over the completion tokens -> (scalar loss, stats of python floats).

    logp [B, T] carries the gradient; old_logp and ref_logp [B, T] are treated as constants (detached).
    advantages [B] (one per rollout, broadcast to its tokens) or [B, T] (dense, per token).
    loss_agg:
      "sequence-mean" (GRPO):     (1/B) sum_i (1/|o_i|) sum_t l_it
      "token-mean"    (DAPO):     sum_it l_it / sum_i |o_i|
      "constant"      (Dr. GRPO): sum_it l_it / (B * max_completion_length)
    normalizer: when given, replaces the denominator above (B for sequence-mean, total tokens for token-mean,
    B * max_completion_length for constant) with the FULL batch's value (see `loss_denominator`), so the losses
    of the micro-batches of one optimizer step sum exactly to the full-batch loss under gradient accumulation.
    importance_sampling_level:
      "token"    (GRPO): rho_it = pi(y_it) / pi_old(y_it), clipped token by token.
      "sequence" (GSPO, Zheng et al. 2025): s_i = (pi(y_i) / pi_old(y_i))^(1/|o_i|)
                 = exp((1/|o_i|) sum_t log(pi(y_it) / pi_old(y_it))), one ratio per sequence, clipped per sequence
                 (every token of a sequence carries the same s_i, so the clip keeps or drops the whole sequence).
                 Written in GSPO-token form, as verl's compute_policy_loss_gspo (verl/trainer/ppo/core_algos.py):
                 s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)], whose value is s_i and whose gradient at token t is
                 s_i * grad log pi(y_it). With advantages constant over a sequence this equals TRL's form
                 (GRPOTrainer._compute_loss, trl/trainer/grpo_trainer.py: coef_1 = exp(mean_t log_ratio), shape
                 [B, 1]) in value and gradient under every loss_agg; with dense [B, T] advantages it is the paper's
                 GSPO-token, each token's advantage weighting its own score function. verl's clamp of log s_it at
                 10 is not applied (the token level has no such clamp either). GSPO pairs with
                 loss_agg="sequence-mean" (verl forces seq-mean-token-mean; TRL warns on the token-summing losses).
                 With old_logp = logp (mu = 1: ratio 1) both levels give the same loss and gradient.
    Stats: "kl" (masked-mean k3 KL, NaN without ref_logp), "clip_ratio", "clip_ratio/low", "clip_ratio/high"
    (fractions of real tokens where the clipped term is the one min() selects, as in TRL; at the sequence level a
    clipped sequence counts all of its tokens).
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg: unknown {loss_agg!r}; known: {', '.join(LOSS_AGGS)}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level: unknown {importance_sampling_level!r}; known: "
                         f"{', '.join(IMPORTANCE_SAMPLING_LEVELS)}")
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp: required when beta > 0; allowed: a [B, T] tensor of reference log-probs")
    for field, t in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{field}: shape must equal logp's {tuple(logp.shape)}; got {tuple(t.shape)}")
    if advantages.shape == logp.shape[:1]:
        advantages = advantages.unsqueeze(1)  # [B] -> [B, 1], broadcast over tokens
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages: shape must be [B] or [B, T]={tuple(logp.shape)}; got {tuple(advantages.shape)}")
    advantages = advantages.to(logp.dtype).detach()
    mask = mask.to(logp.dtype)
    real = mask.bool()

    log_ratio = logp - old_logp.detach()
    if importance_sampling_level == "sequence":
        # log s_i = (1/|o_i|) sum_t log(pi_t / pi_old_t)  (verl compute_policy_loss_gspo; TRL GRPOTrainer._compute_loss)
        seq_log_ratio = masked_mean(log_ratio, mask, dim=1).unsqueeze(1)  # [B, 1]
        # log s_it = sg[log s_i] + log pi_t - sg[log pi_t]: value log s_i, gradient that of log pi_t (GSPO-token)
        log_ratio = logp - logp.detach() + seq_log_ratio.detach()
    ratio = torch.exp(log_ratio)  # rho_t = pi / pi_old  (sequence level: s_i on every token of row i)
    unclipped = ratio * advantages  # rho_t * A
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages  # clip(rho_t, 1-eps_l, 1+eps_h) * A
    per_token = -torch.min(unclipped, clipped)  # l_t = -min(rho A, clip(rho) A)

    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp.detach())  # k3 = pi_ref/pi - log(pi_ref/pi) - 1
        if beta > 0:
            per_token = per_token + beta * kl  # l_t += beta * KL_t
    per_token = torch.where(real, per_token, torch.zeros_like(per_token))  # padding contributes nothing

    if loss_agg == "sequence-mean":
        seq_loss = per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (1/|o_i|) sum_t l_it
        denom = normalizer if normalizer is not None else float(logp.shape[0])
        loss = seq_loss.sum() / denom  # (1/B) sum_i ...
    else:
        denom = normalizer if normalizer is not None else loss_denominator(mask, loss_agg, max_completion_length)
        loss = per_token.sum() / denom  # sum_it l_it / (sum |o_i|  or  B * L_max)

    with torch.no_grad():
        adv = advantages.expand_as(ratio)
        low = ((ratio < 1.0 - eps_low) & (adv < 0)).to(mask.dtype)  # clipped below: rho < 1-eps_l and A < 0
        high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(mask.dtype)  # clipped above: rho > 1+eps_h and A > 0
        stats = {
            "kl": float(masked_mean(kl, mask)) if kl is not None else float("nan"),
            "clip_ratio": float(masked_mean(low + high, mask)),
            "clip_ratio/low": float(masked_mean(low, mask)),
            "clip_ratio/high": float(masked_mean(high, mask)),
        }
    return loss, stats


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment of each completion -> [B] (float32, <= 0), added to its reward.

        R_length(|o|) = min(0, -(|o| - (L_max - buffer)) / buffer * factor)

    0 up to L_max - buffer tokens, then linear over the last `buffer` tokens down to -factor at |o| = L_max
    (L_max = max_new_tokens: a rollout cannot be longer). As DAPO's reward manager (verl
    verl/workers/reward_manager/dapo.py, DAPORewardManager.__call__: overlong_buffer_cfg.len / penalty_factor)
    and TRL's get_soft_overlong_punishment (trl/rewards/other_rewards.py). buffer = 0: no penalty.
    """
    if not 0 <= buffer <= max_length:
        raise ValueError(f"buffer: must be in [0, max_length={max_length}]; got {buffer}")
    lengths = lengths.float()
    if buffer == 0:
        return torch.zeros_like(lengths)
    exceed = lengths - (max_length - buffer)  # tokens into the buffer
    return torch.clamp(-exceed / buffer * factor, max=0.0) + 0.0  # min(-exceed / buffer * factor, 0); + 0.0: no -0.0


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, kind: str, alpha: float = 0.5) -> torch.Tensor:
    """Per-position divergence between distributions given as log-probs over the last dim (p = student,
    q = teacher): reverse-kl KL(p || q), forward-kl KL(q || p), jsd a KL(p || m) + (1 - a) KL(q || m)."""
    def kl(log_a, log_b):
        return (log_a.exp() * (log_a - log_b)).sum(-1)  # KL(a || b) = sum_v a_v (log a_v - log b_v)

    if kind == "reverse-kl":
        return kl(log_p, log_q)
    if kind == "forward-kl":
        return kl(log_q, log_p)
    if kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p + math.log(alpha), log_q + math.log(1 - alpha)]), 0)  # m
        return alpha * kl(log_p, log_m) + (1 - alpha) * kl(log_q, log_m)
    raise ValueError(f"scpo.signal: unknown {kind!r}; allowed: reverse-kl, forward-kl, jsd")


def with_tail(dist_logprobs: torch.Tensor) -> torch.Tensor:
    """[..., k] log-probs of k tokens -> [..., k + 1] with the tail bucket log(1 - sum_k p) appended."""
    tail = torch.log1p(-dist_logprobs.exp().sum(-1).clamp(max=1 - 1e-6))  # log of the mass outside the support
    return torch.cat([dist_logprobs, tail[..., None]], dim=-1)


def distill_divergence(student: Tensor, teacher: Tensor, alpha: float, token_clip: float = 0.0) -> Tensor:
    """Per-token D_a(s, t) over the last dim (log-probs of one support, tail bucket included if any; s = student,
    t = teacher), in the convention of SDPO's compute_self_distillation_loss (lasgroup/SDPO
    verl/trainer/ppo/core_algos.py L1138-1162) and TRL's GKD generalized_jsd_loss (huggingface/trl
    trl/experimental/gkd/gkd_trainer.py L239):
        a = 0: forward KL(t || s);  a = 1: reverse KL(s || t);
        between: the generalized JSD (1 - a) KL(s || m) + a KL(t || m),  m = (1 - a) s + a t,
    which tends to a KL(t || s) as a -> 0 and to (1 - a) KL(s || t) as a -> 1 (each end's direction).
    token_clip > 0: each term of the sum over the support is capped at token_clip before the sum (OPSD's point-wise
    clip, siyan-zhao/OPSD opsd_trainer.py L462-464 at 5e75d75)."""
    def terms(log_a, log_b):  # a_v (log a_v - log b_v), the terms of KL(a || b)
        return log_a.exp() * (log_a - log_b)

    if alpha == 0:
        pointwise = terms(teacher, student)
    elif alpha == 1:
        pointwise = terms(student, teacher)
    else:
        log_m = torch.logsumexp(torch.stack([student + math.log(1 - alpha), teacher + math.log(alpha)]), 0)
        pointwise = (1 - alpha) * terms(student, log_m) + alpha * terms(teacher, log_m)
    if token_clip > 0:
        pointwise = pointwise.clamp(max=token_clip)
    return pointwise.sum(-1)


def distill_loss(student_support: Tensor, teacher_support: Tensor, mask: Tensor, alpha: float, token_clip: float,
                 n_tokens: float, weights: Tensor | None = None, tail: bool = True) -> tuple[Tensor, Tensor]:
    """sum_t w_t D_t / n_tokens over the masked-in tokens -> (loss, per-token D [B, T] detached, before w).
    D_t = distill_divergence on the support, with one tail bucket each side when `tail` (a top-k support; off for
    the full vocabulary), each term capped at token_clip (> 0); w_t [B, T] a per-token weight without gradient
    (None: 1); n_tokens the denominator the caller chose (sdpo / opsd: the distilled tokens of the whole batch,
    so the micro-batches' losses sum to a token mean). Gradients reach the student only."""
    student, teacher = student_support, teacher_support.detach()
    if tail:
        student, teacher = with_tail(student), with_tail(teacher)
    d = distill_divergence(student, teacher, alpha, token_clip) * mask  # [B, T]
    weighted = d if weights is None else d * weights.detach()
    return weighted.sum() / max(float(n_tokens), 1.0), d.detach()
