"""Rollouts through Unsloth's vLLM engine (model.fast_inference = on|auto on a CUDA machine with vllm installed).

Unsloth's `FastLanguageModel.from_pretrained(..., fast_inference=True)` starts a vLLM engine that shares the base
weights with the training model and attaches `model.fast_generate` (vLLM's LLM.generate) and `model.load_lora`.
Each call here reads the live LoRA weights into a vLLM LoRA request (`load_lora(name, load_tensors=True)`: from
memory, no file), or none while the adapter is disabled (policy.reference(): the base model), and samples
`repeats` completions of each prompt with one seeded request per call.

vLLM reports its own log-probs (of the raw model by default, before temperature and top-p), so the sampled
tokens' log-probs are recomputed here by one teacher-forced pass of the training model at the sampling
temperature (objective.completion_logprobs): the same convention as the other engines (rollout.py), whatever
vLLM's settings. Not run on a GPU yet (README, "Scaling up"); the conversion is tested with vLLM-shaped stand-ins.
"""

from __future__ import annotations

import torch

from scpo_lab.padding import pad_token_lists

LORA_NAME = "scpo_lab_live_adapter"


def available(model) -> bool:
    """Whether `model` carries Unsloth's vLLM engine (loaded with fast_inference)."""
    return getattr(model, "vllm_engine", None) is not None and callable(getattr(model, "fast_generate", None))


def adapter_active(model) -> bool:
    """True when a LoRA layer of `model` is applied (not inside peft's disable_adapter())."""
    return any(hasattr(m, "lora_A") and not getattr(m, "disable_adapters", False) for m in model.modules())


def _sampling_params(**kwargs):
    from vllm import SamplingParams  # imported only on this path: vllm is a CUDA-only optional dependency
    return SamplingParams(**kwargs)


def outputs_to_tensors(outputs, repeats: int, max_new_tokens: int, pad_token_id: int, device):
    """vLLM RequestOutputs (one per prompt, each with `repeats` completions: .token_ids, .finish_reason) ->
    (completion_ids [B, T] right-padded, T >= 1, mask [B, T], truncated [B]), rows prompt by prompt as
    rollout.generate."""
    rows, truncated = [], []
    for i, request in enumerate(outputs):
        if len(request.outputs) != repeats:
            raise RuntimeError(f"vllm returned {len(request.outputs)} completions for prompt {i}; expected {repeats}")
        for completion in request.outputs:
            rows.append(list(completion.token_ids)[:max_new_tokens])
            truncated.append(completion.finish_reason == "length")
    ids, mask = pad_token_lists(rows, pad_token_id, device, left=False)
    return ids, mask, torch.tensor(truncated, dtype=torch.bool, device=device)


@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, *, repeats: int, max_new_tokens: int, temperature: float,
             top_p: float, eos_token_ids: list[int], pad_token_id: int, generator: torch.Generator | None = None):
    """Same contract as rollout.generate: (completion_ids, mask, logprobs, truncated), rows prompt by prompt."""
    from scpo_lab.objective import completion_logprobs

    if not available(model):
        raise RuntimeError("rollout_engine: 'vllm' needs a model loaded with model.fast_inference 'on' (Unsloth + "
                           "vllm on CUDA); allowed otherwise: auto, static, hf")
    prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=getattr(generator, "device", "cpu")))
    params = _sampling_params(n=repeats, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                              stop_token_ids=list(eos_token_ids), seed=seed)
    lora = model.load_lora(LORA_NAME, load_tensors=True) if adapter_active(model) else None
    outputs = model.fast_generate(prompts, sampling_params=params, lora_request=lora, use_tqdm=False)
    ids, mask, truncated = outputs_to_tensors(outputs, repeats, max_new_tokens, pad_token_id, prompt_ids.device)
    logprobs, _ = completion_logprobs(model, prompt_ids.repeat_interleave(repeats, 0),
                                      prompt_mask.repeat_interleave(repeats, 0), ids, mask,
                                      temperature=temperature if temperature > 0 else 1.0, with_entropy=False,
                                      group_size=repeats)
    return ids, mask, logprobs.float() * mask, truncated
