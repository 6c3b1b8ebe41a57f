"""random-reward: the control arm. Each rollout's reward is a fair coin, independent of the completion:

    r_i ~ Bernoulli(1/2)   (seeded by (seed, step): a resumed run draws the same coins)
    A_i = group-relative advantage of r (as GRPO's of the verifier's reward)

Whatever a method gains over this arm is more than the update's own dynamics (entropy changes, format drift)
can produce with a reward that carries no information. The verifier still grades every rollout (`pass_rate`).
With overlong_buffer > 0 the coin carries DAPO's length penalty as every method's reward does (trainer
_shape_rewards): the arm then measures what the length penalty alone does.
"""

from __future__ import annotations

import torch

from scpo_lab.critics.base import Critic, CriticResult
from scpo_lab.objective import group_advantages
from scpo_lab.seeds import step_seed


class RandomRewardCritic(Critic):
    methods = ("random-reward",)
    presets = {"random-reward": {"method": "random-reward"}}
    needs_teacher = False

    def advantages(self, batch, group_advantages_, teacher, step: int = 0) -> CriticResult:
        gen = torch.Generator().manual_seed(step_seed(self.config.seed, step, 2))
        rewards = torch.bernoulli(torch.full((len(batch),), 0.5), generator=gen)  # r_i ~ Bernoulli(1/2)
        if batch.overlong_penalty is not None:  # overlong_buffer > 0: DAPO's length penalty, as on every method
            rewards = rewards + batch.overlong_penalty
        advantages = group_advantages(rewards, batch.group_size, scale=self.config.scale_rewards)
        return CriticResult(advantages, {}, rewards=rewards)
