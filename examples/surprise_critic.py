"""scpo-surprise: a critic added as one file (docs/add_a_critic.md walks through it).

The self-teacher re-reads rollout i knowing the verifier's verdict; the token it finds least likely relative to the
student marks where the outcome-aware model disagrees most. Its log-ratio is the rollout's score:

    d_{i,t} = log pi(y_t | x, c_i, y_<t) - log pi(y_t | x, y_<t)      (the teacher pass minus the sampler)
    s_i     = clip(min_t d_{i,t}, -clip, 0)                           (<= 0: only surprise is penalised)
    A'_i    = A_i + weight * (s_i - mean_g s) / 0.5                  (objective.critic_advantages: the verifier's
                                                                      group advantage stays, w sets the share)

Options `surprise.*`. Arm preset: "scpo-surprise".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scpo_lab import checks
from scpo_lab.critics import Critic, CriticResult, register
from scpo_lab.critics.base import signal_stats
from scpo_lab.objective import critic_advantages


@dataclass
class SurpriseConfig(checks.Section):
    name = "surprise"  # the section's key: surprise.weight, surprise.clip
    weight: float = 0.2  # w in A_i + w (s_i - mean_g s) / 0.5
    clip: float = 5.0  # |s_i| <= clip

    def check(self) -> None:
        checks.positive(self.field_name("weight"), self.weight, allow_zero=True)
        checks.positive(self.field_name("clip"), self.clip)


class SurpriseCritic(Critic):
    methods = ("scpo-surprise",)
    Config = SurpriseConfig
    presets = {"scpo-surprise": {"method": "scpo-surprise"}}
    reads_sampler_logprobs = True  # d uses batch.logprobs
    sequence_level = True

    # teacher_pass: the default one (the sampled tokens' log-probs under the privileged context)

    def advantages(self, batch, group_advantages_, teacher, step: int = 0) -> CriticResult:
        cfg = self.config.surprise
        mask = batch.completion_mask.bool()
        d = (teacher.logprobs - batch.logprobs).masked_fill(~mask, float("inf"))  # d_{i,t}; padding never the min
        s = d.min(1).values.clamp(-cfg.clip, 0.0)  # s_i = clip(min_t d_{i,t}, -clip, 0)
        s = torch.where(mask.any(1), s, torch.zeros_like(s))  # an empty completion: no score
        advantages = critic_advantages(group_advantages_, s, batch.group_size, cfg.weight)
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        stats = {"surprise/score_mean": float(s.mean()),
                 **signal_stats(advantages, mask, group_advantages_, batch.group_size, passed)}
        return CriticResult(advantages, stats, score=s, sequence_reward=s)


register(SurpriseCritic)  # the one registry line (a critic inside the package: one line in critics/__init__.py)
