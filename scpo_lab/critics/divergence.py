"""scpo-divergence (variant 2, token level): the teacher-student log-ratio as a dense shaping term.

For rollout i of a group and its completion token t:

    d_{i,t} = log pi(y_t | x, c_i, y_<t) - log pi(y_t | x, y_<t)          (teacher minus student, no gradient)
    A_{i,t} = A_i + w * clip(d_{i,t}, -C, C)                              (w = scpo.weight, C = scpo.clip)

A_i is the verifier's group advantage (GRPO), so the verifier keeps the sign of the update wherever the group
disagrees; inside an all-pass or all-fail group A_i = 0 and d alone moves the tokens the teacher, knowing the
outcome, finds more (d > 0) or less (d < 0) likely than the student did. Clipping keeps a few tokens from
dominating (OPSD reports style tokens with 6-15x the average divergence).
"""

from __future__ import annotations

import torch

from scpo_lab.critics.base import Critic


class DivergenceCritic(Critic):
    def advantages(self, batch, group_advantages, teacher):
        mask = batch.completion_mask.float()
        log_ratio = (teacher.logprobs - batch.logprobs) * mask  # d_{i,t}
        shaping = self.config.scpo.weight * log_ratio.clamp(-self.config.scpo.clip, self.config.scpo.clip)
        advantages = group_advantages[:, None] + shaping * mask  # A_{i,t}
        n = mask.sum().clamp(min=1)
        passed = torch.tensor([v.passed for v in batch.verdicts], dtype=torch.bool)
        seq_ratio = log_ratio.sum(1) / mask.sum(1).clamp(min=1)
        stats = {
            "scpo/log_ratio_mean": float(log_ratio.sum() / n),
            "scpo/log_ratio_abs_mean": float(log_ratio.abs().sum() / n),
            "scpo/clipped_frac": float(((log_ratio.abs() > self.config.scpo.clip) & (mask > 0)).sum() / n),
            "scpo/log_ratio_passed": float(seq_ratio[passed].mean()) if passed.any() else float("nan"),
            "scpo/log_ratio_failed": float(seq_ratio[~passed].mean()) if (~passed).any() else float("nan"),
        }
        return advantages, stats
