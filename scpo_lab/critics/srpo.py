"""SRPO, Sample-Routed Policy Optimization (Li, Yang et al., arXiv 2604.02288, "Unifying Group-Relative and
Self-Distillation Policy Optimization via Sample Routing"): passing rollouts train through GRPO, failing ones
through SDPO's self-distillation (options: the `distill.*` section of sdpo / opsd, read with SDPO's defaults).

For rollout i with verifier outcome passed_i and group advantage A_i (GRPO's), lam = distill.grpo_weight:
    passing rollout:  the surrogate's advantage is A_i; no teacher, nothing distilled
    failing rollout:  the surrogate's advantage is lam A_i; the teacher is SDPO's (critics/selfdistill.py, SdpoCritic):
                      the question + a passing sibling of the same group ("Correct solution"), else the verifier's
                      feedback on the attempt; the failing rollout's tokens are distilled toward it with
                      (1 - lam) * SDPO's loss (selfdistill.DistillLoss: the student's top-k + tail, alpha 0.5, EMA
                      teacher, importance weight min(pi / pi_sampler, 2)), a token mean over the failing rollouts'
                      tokens only
    L = L_GRPO(A_i 1[passed_i] + lam A_i 1[not passed_i]) + (1 - lam) sum_{j in failing} w_j D_j / n_failing_tokens
lam = 0 (the default) is SRPO's routing: a failing rollout gets no GRPO push-down, only the teacher's correction;
lam = 1 is GRPO. With distill.support = "sampled" the failing rows' per-token advantage is SDPO's sampled-token
form lam A_i + (1 - lam) d_j, d_j = log t(y_j) - log s(y_j), and the passing rows keep A_i.

What the paper states and this module follows: the routing (correct samples -> GRPO's reward-aligned
reinforcement, failed samples -> SDPO's logit-level correction), on-policy, with SDPO's self-teacher.
What this module chose where no text or code was available to it (no public SRPO code was found; the paper's
abstract was read, not its method section's formulas):
  - the distillation itself is SDPO's exactly as `sdpo` runs it here (SDPO's public code, selfdistill.py's
    docstring), with the same `distill.*` options and defaults; `distill.grpo_weight` keeps its sdpo meaning,
    applied to the failing rows only (the passing rows always get the full A_i);
  - the paper's entropy-aware dynamic weighting of the distillation targets (down-weighting high-entropy teacher
    tokens) is NOT implemented: its formula was not available; every distilled token has SDPO's weight w_j;
  - the teacher pass still reads every row (a passing row's context is its own prompt and it is not distilled):
    the paper's compute saving from skipping the passing rows' teacher is not reproduced.
"""

from __future__ import annotations

import torch

from scpo_lab.critics.base import signal_stats
from scpo_lab.critics.selfdistill import SdpoCritic
from scpo_lab.teacher import student_messages


class SrpoCritic(SdpoCritic):
    methods = ("srpo",)
    presets = {"srpo": {"method": "srpo"}}
    # defaults (the `auto` values of distill.*): SDPO's, inherited from SdpoCritic

    def contexts(self, batch):
        """SDPO's teacher contexts for the failing rollouts only; a passing rollout is routed to GRPO (no teacher,
        its own prompt as context)."""
        messages, has_teacher, _ = super().contexts(batch)
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts], dtype=torch.bool)
        routed = has_teacher & ~passed
        n_sibling = n_feedback = 0
        for i, (problem, verdict) in enumerate(zip(batch.problems, batch.verdicts)):
            if passed[i]:
                messages[i] = student_messages(problem.prompt, verdict)
            elif any(batch.verdicts[j].passed for j in self._group(i, batch.group_size)):
                n_sibling += 1
            else:
                n_feedback += 1
        B = max(1, len(batch.verdicts))
        stats = {"distill/sibling_frac": n_sibling / B, "distill/feedback_frac": n_feedback / B,
                 "distill/no_teacher_frac": 1 - (n_sibling + n_feedback) / B,
                 "srpo/grpo_frac": float(passed.float().mean()) if len(passed) else 0.0,
                 "srpo/distill_frac": float(routed.float().mean()) if len(routed) else 0.0}
        return messages, routed, stats

    @staticmethod
    def _group(i: int, group_size: int) -> range:
        return range(i - i % group_size, i - i % group_size + group_size)

    def advantages(self, batch, group_advantages, teacher, step: int = 0):
        """sdpo's advantages and loss on the failing rows (teacher.has_teacher is False on every passing row), plus
        the rest of A_i on the passing rows: A_i there, lam A_i on the failing rows."""
        result = super().advantages(batch, group_advantages, teacher, step)
        lam = self.config.distill.grpo_weight
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts], dtype=group_advantages.dtype)
        grpo = (1 - lam) * group_advantages * passed  # the part of A_i sdpo's lam A_i leaves out, passing rows only
        if result.advantages.dim() == 2:  # support "sampled": [B, T]
            result.advantages = result.advantages + grpo[:, None] * batch.completion_mask.float()
        else:
            result.advantages = result.advantages + grpo
        final = signal_stats(result.advantages, batch.completion_mask, group_advantages, batch.group_size,
                             passed.bool())  # the collapse accounting of the routed advantages
        result.stats.update({k: v for k, v in final.items() if k in result.stats})
        return result
