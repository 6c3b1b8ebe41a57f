"""The self-teacher pass: the same policy re-reads its own rollout with privileged context.

Privileged context c_i for rollout i = the original question + the verifier's outcome and feedback on this very
rollout. The rollout itself is then re-read, token for token, as the assistant's answer:

    teacher input  = chat(user: question + "\n\n" + grader note(verdict_i)) + assistant: y_i
    student input  = chat(user: question)                                  + assistant: y_i

and the pass returns log pi(y_{i,t} | x, c_i, y_{i,<t}) for every completion token, aligned with the student's
log pi(y_{i,t} | x, y_{i,<t}). No gradient flows through it: it is an evaluator, not an imitation target.

Distributions, for critics that compare whole next-token distributions rather than the sampled token: with
`top_k=k` the pass also returns, per completion position, the k largest log-probs and their token ids; with
`support_ids` it returns its log-probs at given ids instead (the student's top-k, so both sides share a
support). The remaining mass is one tail bucket, log(1 - sum_k p), computed by `objective.with_tail`. The same pass with
`context=student_messages` (no grader's note) gives the student's distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transformers import DynamicCache

from scpo_lab import engine as static_engine
from scpo_lab.objective import backbone_and_head, chunk_logprobs
from scpo_lab.padding import pad_token_lists
from scpo_lab.rollout import RolloutBatch

# The grader's note appended to the question in the teacher's context. Kept in one place so every critic and
# baseline that builds a privileged context reads the same words.
# The verdict's feedback names the outcome and puts what all rollouts of a problem share first ("The expected
# answer is 42. Your final answer 40 is wrong."), so the contexts of a group differ only in a short tail.
GRADER_NOTE = (
    "\n\n[Grader's note, visible only to you: an automatic checker has already graded the answer that follows. "
    "{feedback}]"
)


def student_messages(prompt: list[dict], verdict) -> list[dict]:
    """The student's context: the problem's prompt as the policy saw it when sampling (the verdict is ignored)."""
    return [dict(m) for m in prompt]


def privileged_messages(prompt: list[dict], verdict) -> list[dict]:
    """The problem's chat prompt with the verifier's outcome and feedback added to the last user turn."""
    return with_note(prompt, GRADER_NOTE.format(feedback=verdict.feedback))


def with_note(prompt: list[dict], note: str) -> list[dict]:
    """A copy of the chat prompt with `note` appended to its last user turn."""
    messages = [dict(m) for m in prompt]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = messages[last_user]["content"] + note
    return messages


@dataclass
class TeacherOutput:
    """What a critic's teacher pass returns; every field a critic may fill is declared here."""
    logprobs: torch.Tensor | None  # [B, T] log pi(y_t | x, c, y_<t), 0 where masked (None: a judge reads no tokens)
    tokens_read: int  # tokens the teacher forward processed (shared prefixes once), for FLOP accounting
    dist_logprobs: torch.Tensor | None = None  # [B, T, k] log-probs on a support (top_k or support_ids)
    dist_ids: torch.Tensor | None = None  # [B, T, k] the support's token ids
    student: "TeacherOutput | None" = None  # the student's pass on the same support, when a critic needs it
    hidden: torch.Tensor | None = None  # [B, T, H] states of layer `hidden_layer` after reading each completion token
    states: torch.Tensor | None = None  # [B, T, H] final (normed) states s_t that predict each completion token
    values: torch.Tensor | None = None  # [B, T] a value critic's V(s_t), when the method has one
    extras: list[dict] | None = None  # per rollout, written to samples.jsonl (a judge's critique and score)
    critic_data: dict | None = None  # what a critic's own pass computed for its advantages (judge scores, ...)
    has_teacher: torch.Tensor | None = None  # [B] bool: the row had a teacher context (sdpo / opsd)
    context_stats: dict | None = None  # how the teacher contexts were built (distill/sibling_frac, ...)


@torch.no_grad()
def teacher_pass(policy, batch: RolloutBatch, verdicts, *, temperature: float = 1.0,
                 micro_batch_size: int = 16, context=privileged_messages, top_k: int | None = None,
                 support_ids: torch.Tensor | None = None, messages: list[list[dict]] | None = None,
                 hidden_layer: int | None = None, engine: str = "auto",
                 return_states: bool = False) -> TeacherOutput:
    """Teacher-forced forward of the policy (adapter on: the live policy) over context(prompt, verdict) + rollout.

    Cost, which the lab's budget depends on: the contexts of one group differ only after the question (each
    rollout has its own verdict), so
      1. the longest common token prefix of each group's contexts runs once, all groups in one forward (KV cache);
      2. each row's own tail ("...your final answer 40 is wrong.]" + chat tokens) and its completion then run in
         micro-batches of rows sorted by length, reading their group's prefix from that cache, so padding is small;
      3. the lm_head runs only on the completion positions.
    The result equals a plain teacher-forced pass over each full context + completion (tested row by row).

    engine: "static" runs both forwards through engine.py's merged, oneDNN-packed weights (the rollout engine's
    products: ~2.4x faster than the HF modules with LoRA branches on CPU); "hf" through the HF model; "auto"
    picks static when engine.py supports the architecture.
    """
    model, tok, device = policy.model, policy.tokenizer, policy.device
    if engine == "static" and not static_engine.supports(model):
        raise ValueError(f"engine: 'static' does not support model_type "
                         f"{getattr(model.config, 'model_type', None)!r}; allowed: 'hf' or 'auto'")
    weights = None
    if engine in ("static", "auto") and static_engine.supports(model):
        weights = static_engine.snapshot(model, batch_hint=micro_batch_size * 64)
        head = weights.lm_head
    else:
        backbone, head = backbone_and_head(model)
    if messages is None:  # one context per row: context(prompt, verdict), or given whole in `messages`
        messages = [context(p.prompt, v) for p, v in zip(batch.problems, verdicts)]
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    contexts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    B, G = len(batch), batch.group_size if len(batch) % batch.group_size == 0 else 1
    group_of = [r // G for r in range(B)]
    groups = [contexts[g:g + G] for g in range(0, B, G)]
    cut = [min(_common_prefix_length(grp), min(len(c) for c in grp) - 1) for grp in groups]  # >= 1 tail token
    tails = [contexts[r][cut[group_of[r]]:] for r in range(B)]
    was_training = model.training
    model.eval()

    # 1. every group's shared prefix, once (left padded)
    prefix_ids, prefix_mask = pad_token_lists([grp[0][:k] for grp, k in zip(groups, cut)], tok.pad_token_id, device, left=True)
    if weights is not None:
        prefix_k, prefix_v, _, _ = static_engine.prefill(weights, prefix_ids, prefix_mask)
    else:
        prefix_pos = (prefix_mask.cumsum(1) - 1).clamp(min=0)
        cache = backbone(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=prefix_pos,
                         past_key_values=DynamicCache(), use_cache=True).past_key_values
        prefix_k, prefix_v = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    read = int(prefix_mask.sum())

    # 2.-3. tails + completions, rows sorted by length, each micro-batch reading its groups' prefixes
    lengths = batch.completion_mask.sum(1).tolist()
    order = sorted(range(B), key=lambda r: len(tails[r]) + lengths[r])
    logprobs = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=device)
    k = support_ids.shape[-1] if support_ids is not None else top_k
    dist = torch.zeros((*batch.completion_ids.shape, k), dtype=torch.float32, device=device) if k else None
    dist_ids = support_ids if support_ids is not None else (torch.zeros_like(dist, dtype=torch.long) if k else None)
    layer_states = final_states = None
    for start in range(0, B, micro_batch_size):
        rows = order[start:start + micro_batch_size]
        index = torch.tensor([group_of[r] for r in rows], device=device)
        bodies = [tails[r] + batch.completion_ids[r, :lengths[r]].tolist() for r in rows]
        body_ids, body_mask = pad_token_lists(bodies, tok.pad_token_id, device, left=False)
        read += int(body_mask.sum())
        if weights is not None:
            hidden, states = static_engine.forward_after_prefix(
                weights, [c[index] for c in prefix_k], [c[index] for c in prefix_v], prefix_mask[index],
                body_ids, body_mask, record_layer=hidden_layer)
        else:
            row_cache = DynamicCache(ddp_cache_data=[(ck[index], cv[index]) for ck, cv in zip(prefix_k, prefix_v)])
            attention = torch.cat([prefix_mask[index], body_mask], dim=1)
            positions = prefix_mask[index].sum(1, keepdim=True) + torch.arange(body_ids.shape[1], device=device)
            out = backbone(input_ids=body_ids, attention_mask=attention, position_ids=positions,
                           past_key_values=row_cache, use_cache=True, output_hidden_states=hidden_layer is not None)
            hidden = out.last_hidden_state  # [b, S, H]
            states = out.hidden_states[hidden_layer] if hidden_layer is not None else None
        # completion token t of a row sits at body index len(tail) + t and is predicted by the state before it
        T = max(lengths[r] for r in rows) or 1
        at = torch.tensor([len(tails[r]) for r in rows], device=device)[:, None] + torch.arange(T, device=device) - 1
        at = at.clamp(max=hidden.shape[1] - 1)
        h = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
        targets = body_ids.gather(1, (at + 1).clamp(max=body_ids.shape[1] - 1))
        row_index = torch.tensor(rows, device=device)
        if return_states:  # s_t: the state that predicts completion token t
            if final_states is None:
                final_states = torch.zeros((*batch.completion_ids.shape, h.shape[-1]), device=device)
            final_states[row_index, :T] = h.float()
        if hidden_layer is not None:  # the state right after token t was read: index at + 1
            if layer_states is None:
                layer_states = torch.zeros((*batch.completion_ids.shape, states.shape[-1]), device=device)
            after = (at + 1).clamp(max=states.shape[1] - 1)
            layer_states[row_index, :T] = states.gather(1, after[..., None].expand(-1, -1, states.shape[-1])).float()
        if not k:
            logp, _, _ = chunk_logprobs(head, h, targets, temperature, False)
        else:
            logp_all = torch.log_softmax(head(h).float() / temperature, dim=-1)  # [b, T, V]
            logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
            if support_ids is not None:
                dist[row_index, :T] = logp_all.gather(-1, support_ids[row_index, :T])
            else:
                dist[row_index, :T], dist_ids[row_index, :T] = logp_all.topk(k, dim=-1)
        logprobs[row_index, :T] = logp * batch.completion_mask[row_index, :T]
    model.train(was_training)
    return TeacherOutput(logprobs=logprobs, tokens_read=read, dist_logprobs=dist, dist_ids=dist_ids,
                         hidden=layer_states, states=final_states)


def _common_prefix_length(sequences: list[list[int]]) -> int:
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != sequences[0][i] for s in sequences[1:]):
            return i
    return n
