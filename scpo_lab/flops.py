"""The training FLOPs a run logs (`flops` in metrics.jsonl, cumulative), from token counts, and a GRPO run's FLOPs
as a function of its group size (for experiment.compute_matched_grpo). A leaf module.

N = the policy's parameter count (trainer.parameter_count, LoRA included); a forward is 2 N FLOPs per token,
a forward + backward 6 N:

    sampling   2 N (prompt tokens / G + generated tokens)    each prompt is prefilled once for its G rollouts
    teacher    2 N (tokens the second pass reads)             shared prefixes once (teacher.TeacherOutput)
    update     6 N (update prompt tokens + generated) * mu    update prompt tokens = prompt tokens / G (one prompt
                                                              forward per group, objective.py), or every row's
                                                              prompt under gradient checkpointing; none in a
                                                              critic's warm-up (the actor does not update)
    reference  2 N (update prompt tokens + generated)       once per update, only when beta > 0 (the KL term)

where prompt tokens are the batch's prompt tokens over its rows (G copies of each prompt's). Dynamic sampling
counts the sampling FLOPs of every round, discarded groups included, and the update FLOPs of the kept batch only.

A GRPO run with the same prompts and the same mean completion length L per rollout spends, over its steps s,

    F(G) = sum_s [ 2 N T_s + U T_s (x G under checkpointing) ] + G * steps * P * L * (2 N + U),  U = 6 N mu + 2 N b

(T_s = the tokens of step s's P prompts, each counted once; b = 1 when beta > 0: the reference's forward): linear in
G, F(G) = fixed + per_rollout * G.
"""

from __future__ import annotations


def forward_flops(n_params: int, tokens: float) -> float:
    """A forward over `tokens` tokens: 2 N per token."""
    return 2 * n_params * tokens


def sampling_flops(n_params: int, prompt_tokens: float, generated: float, group_size: int) -> float:
    """Sampling a batch: each prompt prefilled once per group, then one forward per generated token."""
    return 2 * n_params * (prompt_tokens / group_size + generated)


def update_flops(n_params: int, prompt_tokens: float, generated: float, group_size: int, num_iterations: int,
                 gradient_checkpointing: str = "off") -> float:
    """mu forward + backward passes over the batch: the prompt once per group (shared, see objective.py) unless
    gradient checkpointing is on (it drops the shared prompt's cache: every row runs its own prompt). The
    method's count, not the implementation's: where a group does not fit one micro-batch (G = 12 at micro-batches
    of 8) the update runs each prompt once per block of gcd(G, micro_batch_size) rows, which this does not count,
    so that the FLOPs of a config do not depend on how its update is micro-batched."""
    update_prompt = _update_prompt(prompt_tokens, group_size, gradient_checkpointing)
    return 6 * n_params * (update_prompt + generated) * num_iterations


def reference_flops(n_params: int, prompt_tokens: float, generated: float, group_size: int,
                    gradient_checkpointing: str = "off") -> float:
    """The reference's forward over the update's batch (beta > 0), once per update, in the update's train mode: the
    prompt once per group unless gradient checkpointing is on, as update_flops."""
    return 2 * n_params * (_update_prompt(prompt_tokens, group_size, gradient_checkpointing) + generated)


def _update_prompt(prompt_tokens: float, group_size: int, gradient_checkpointing: str) -> float:
    return prompt_tokens / group_size if gradient_checkpointing == "off" else prompt_tokens


def grpo_flops_line(n_params: int, step_prompt_tokens: list[float], prompts_per_step: int,
                    completion_tokens: float, num_iterations: int = 1,
                    gradient_checkpointing: str = "off", reference: bool = False) -> tuple[float, float]:
    """(fixed, per_rollout): a GRPO run's training FLOPs are fixed + per_rollout * G for group size G, given each
    step's prompt tokens (its P prompts, each once: step_prompt_tokens, one entry per step) and the mean completion
    length per rollout. Exactly the trainer's count when every rollout has that length (see the module docstring)."""
    mu, steps, prompts = num_iterations, len(step_prompt_tokens), sum(step_prompt_tokens)
    update = 6 * n_params * mu + (2 * n_params if reference else 0)  # per token of the update (and the reference)
    per_rollout = steps * prompts_per_step * completion_tokens * (2 * n_params + update)
    if gradient_checkpointing == "off":
        return 2 * n_params * prompts + update * prompts, per_rollout
    return 2 * n_params * prompts, per_rollout + update * prompts
