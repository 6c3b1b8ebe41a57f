"""Sample G completions per prompt and return one batch of rollouts.

Our own decode loop instead of `model.generate`, for three reasons: the per-token log-prob of the sampled token
is recorded as it is drawn (no extra forward pass), the G samples of one prompt share one prefill (the cache is
computed once per prompt and repeated G times), and rows that have emitted EOS leave the active batch. Two
engines behind one interface: engine.py (static KV cache, merged LoRA; the default for Llama-family models,
~2x faster on CPU, see benchmarks/rollout_speed.py) and `generate_hf` here (the HF forward; any causal LM).

Sampling semantics (engine.sample_token, shared by both engines): logits / temperature, optional nucleus (top-p)
truncation, one inverse-CDF draw per row from a seeded torch.Generator. The recorded log-prob is log softmax(logits / temperature) at the drawn token, i.e. the
temperature-scaled policy without the top-p truncation (the convention of TRL), so it matches a teacher-forced
pass with the same temperature (see objective.completion_logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from typing import TYPE_CHECKING

from transformers import DynamicCache

from scpo_lab import engine as static_engine
from scpo_lab import vllm_engine
from scpo_lab.engine import sample_token
from scpo_lab.padding import pad_cat

if TYPE_CHECKING:
    from scpo_lab.tasks.base import Problem


@dataclass
class RolloutBatch:
    """B = n_prompts * G rollouts, ordered prompt by prompt (rows g*G .. g*G+G-1 share problem g)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, T] right-padded (pad after EOS)
    completion_mask: torch.Tensor  # [B, T] 1 for generated tokens, EOS included
    logprobs: torch.Tensor  # [B, T] log pi_sampler(y_t), 0 where masked
    texts: list[str]  # decoded completions (special tokens removed)
    problems: list[Problem]  # one per rollout
    group_ids: torch.Tensor  # [B] index of the prompt each rollout answers
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without EOS
    group_size: int = 1
    verdicts: list = field(default_factory=list)  # filled by the trainer after verification
    overlong_penalty: torch.Tensor | None = None  # [B] DAPO's length penalty in the reward (overlong_buffer > 0)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def __len__(self) -> int:
        return self.completion_ids.shape[0]


def encode_prompts(tokenizer, messages: list[list[dict]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-template each conversation (with the assistant turn opened) and left-pad them into one batch."""
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


ENGINES = ("auto", "static", "hf", "vllm")  # rollout_engine (config.py validates against this)


def generate(model, prompt_ids, prompt_mask, *, repeats: int, max_new_tokens: int, temperature: float, top_p: float,
             eos_token_ids: list[int], pad_token_id: int, generator: torch.Generator | None = None,
             engine: str = "auto"):
    """Decode `repeats` samples of each prompt. Returns (completion_ids, mask, logprobs, truncated), each with
    rows ordered prompt by prompt. Greedy when temperature == 0.

    engine: "static" = scpo_lab.engine (merged LoRA, static KV cache; Llama-family models), "hf" = the HF
    forward with a DynamicCache (any causal LM), "vllm" = Unsloth's vLLM engine (vllm_engine.py; a model loaded
    with fast_inference), "auto" = vllm when the model carries it, else static when the model is supported."""
    if engine not in ENGINES:
        raise ValueError(f"engine: unknown {engine!r}; allowed: {', '.join(ENGINES)}")
    kwargs = dict(repeats=repeats, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                  eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, generator=generator)
    if engine == "vllm" or (engine == "auto" and vllm_engine.available(model)):
        return vllm_engine.generate(model, prompt_ids, prompt_mask, **kwargs)
    if engine == "static" or (engine == "auto" and static_engine.supports(model)):
        if not static_engine.supports(model):
            raise ValueError(f"engine: 'static' supports model types {', '.join(static_engine.SUPPORTED_MODEL_TYPES)}; "
                             "use 'hf' for this model")
        return static_engine.generate(model, prompt_ids, prompt_mask, **kwargs)
    return generate_hf(model, prompt_ids, prompt_mask, **kwargs)


@torch.no_grad()
def generate_hf(model, prompt_ids, prompt_mask, *, repeats: int, max_new_tokens: int, temperature: float, top_p: float,
                eos_token_ids: list[int], pad_token_id: int, generator: torch.Generator | None = None):
    """The decode loop through the HF forward and a DynamicCache: works for any causal LM, slower (engine.py)."""
    device = prompt_ids.device
    n_prompts, prompt_len = prompt_ids.shape
    batch = n_prompts * repeats
    position_ids = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)  # prefix sharing: one prefill per prompt, G copies of its cache
    last_logits = out.logits[:, -1].repeat_interleave(repeats, dim=0)
    attn = prompt_mask.repeat_interleave(repeats, dim=0)
    next_pos = position_ids[:, -1].repeat_interleave(repeats, dim=0) + 1

    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_token_ids, device=device)
    active = torch.arange(batch, device=device)  # rows of the full batch still decoding
    for t in range(max_new_tokens):
        uniform = torch.rand(batch, generator=generator, device=device)[active]  # as in engine.py
        token, logp = sample_token(last_logits, temperature, top_p, generator, uniform)
        tokens[active, t] = token
        logps[active, t] = logp
        lengths[active] = t + 1
        done = torch.isin(token, eos)
        finished[active[done]] = True
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):  # drop finished rows from the cache and the active set
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, token, attn, next_pos = active[keep], token[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        last_logits = out.logits[:, -1]
        next_pos = next_pos + 1

    width = int(lengths.max()) if batch else 0
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return tokens[:, :width], mask, logps[:, :width] * mask, ~finished


def sample_rollouts(policy, problems: list[Problem], *, group_size: int, max_new_tokens: int,
                    temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                    batch_prompts: int | None = None, engine: str = "auto") -> RolloutBatch:
    """G = group_size completions of each problem's chat prompt, in one batch (or in chunks of `batch_prompts`
    prompts to bound memory). `seed` fixes the draws: same policy + problems + seed -> same rollouts."""
    model, tok = policy.model, policy.tokenizer
    generator = torch.Generator(device=policy.device)
    generator.manual_seed(0 if seed is None else seed)
    was_training = model.training
    model.eval()
    chunks = [problems] if not batch_prompts else [problems[i:i + batch_prompts]
                                                   for i in range(0, len(problems), batch_prompts)]
    parts = []
    for chunk in chunks:
        prompt_ids, prompt_mask = encode_prompts(tok, [p.prompt for p in chunk], policy.device)
        completion = generate(model, prompt_ids, prompt_mask, repeats=group_size, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, eos_token_ids=policy.eos_token_ids,
                              pad_token_id=tok.pad_token_id, generator=generator, engine=engine)
        parts.append((prompt_ids.repeat_interleave(group_size, 0), prompt_mask.repeat_interleave(group_size, 0),
                      *completion))
    model.train(was_training)
    prompt_ids, prompt_mask = pad_cat([p[0] for p in parts], tok.pad_token_id, left=True), \
        pad_cat([p[1] for p in parts], 0, left=True)
    completion_ids = pad_cat([p[2] for p in parts], tok.pad_token_id)
    completion_mask = pad_cat([p[3] for p in parts], 0)
    logprobs = pad_cat([p[4] for p in parts], 0.0)
    truncated = torch.cat([p[5] for p in parts])
    texts = tok.batch_decode(completion_ids * completion_mask + tok.pad_token_id * (1 - completion_mask),
                             skip_special_tokens=True)
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, logprobs=logprobs, texts=texts,
        problems=[p for p in problems for _ in range(group_size)],
        group_ids=torch.arange(len(problems)).repeat_interleave(group_size), truncated=truncated,
        group_size=group_size,
    )


def micro_batches(batch: RolloutBatch, size: int, prompt_ids: torch.Tensor | None = None,
                  prompt_mask: torch.Tensor | None = None):
    """(rows, (prompt_ids, prompt_mask, completion_ids, completion_mask)) per micro-batch, each trimmed to its own
    longest prompt and completion: padding columns cost as much compute as real tokens. Other (left-padded)
    prompts than the batch's own may be given, e.g. a critic's privileged context."""
    prompt_ids = batch.prompt_ids if prompt_ids is None else prompt_ids
    prompt_mask = batch.prompt_mask if prompt_mask is None else prompt_mask
    for start in range(0, len(batch), size):
        rows = slice(start, start + size)
        mask, completion_mask = prompt_mask[rows], batch.completion_mask[rows]
        first = int((mask.sum(0) > 0).nonzero()[0])  # left padding shared by every row of this slice
        width = max(1, int(completion_mask.sum(1).max()))
        yield rows, (prompt_ids[rows, first:], mask[:, first:], batch.completion_ids[rows, :width],
                     completion_mask[:, :width])


def select_groups(batch: RolloutBatch, groups: list[int]) -> RolloutBatch:
    """The rollouts of the given groups (indices into the batch's prompts, in that order), renumbered 0..n-1,
    verdicts included; padding columns that no kept row uses are trimmed."""
    G = batch.group_size
    rows = torch.tensor([g * G + i for g in groups for i in range(G)], dtype=torch.long)
    prompt_mask, completion_mask = batch.prompt_mask[rows], batch.completion_mask[rows]
    used = (prompt_mask.sum(0) > 0).nonzero()
    first = int(used[0]) if len(used) else prompt_mask.shape[1]  # left padding shared by every kept row
    width = int(completion_mask.sum(1).max()) if len(rows) else 0
    picked = rows.tolist()
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[rows, first:], prompt_mask=prompt_mask[:, first:],
        completion_ids=batch.completion_ids[rows, :width], completion_mask=completion_mask[:, :width],
        logprobs=batch.logprobs[rows, :width], texts=[batch.texts[r] for r in picked],
        problems=[batch.problems[r] for r in picked],
        group_ids=torch.arange(len(groups)).repeat_interleave(G), truncated=batch.truncated[rows], group_size=G,
        verdicts=[batch.verdicts[r] for r in picked] if batch.verdicts else [])


def concat_batches(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """One batch of several batches' rollouts, prompt after prompt (groups renumbered), verdicts included; prompts
    left-padded and completions right-padded to the widest."""
    if len(batches) == 1:
        return batches[0]
    G = batches[0].group_size
    n_groups = sum(len(b) for b in batches) // G
    return RolloutBatch(
        prompt_ids=pad_cat([b.prompt_ids for b in batches], pad_token_id, left=True),
        prompt_mask=pad_cat([b.prompt_mask for b in batches], 0, left=True),
        completion_ids=pad_cat([b.completion_ids for b in batches], pad_token_id),
        completion_mask=pad_cat([b.completion_mask for b in batches], 0),
        logprobs=pad_cat([b.logprobs for b in batches], 0.0),
        texts=[t for b in batches for t in b.texts], problems=[p for b in batches for p in b.problems],
        group_ids=torch.arange(n_groups).repeat_interleave(G), truncated=torch.cat([b.truncated for b in batches]),
        group_size=G, verdicts=[v for b in batches for v in b.verdicts])
