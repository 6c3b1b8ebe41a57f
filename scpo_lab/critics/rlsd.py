"""RLSD, RLVR with Self-Distillation (Yang, Qin et al., arXiv 2604.03128, "Self-Distilled RLVR"), options `rlsd.*`:
the verifier sets each token's update direction, the self-teacher's clipped evidence ratio its magnitude.

For rollout i with group advantage A_i (GRPO's) and completion token t; the teacher is the same (live) policy
reading privileged information r_i, both log-probs without gradient:
    Delta_{i,t} = log pi(y_t | x, r_i, y_<t) - log pi_sampler(y_t | x, y_<t)       (the privileged-information gain)
    w_{i,t}     = clip(exp(sign(A_i) Delta_{i,t}), 1 - eps_w, 1 + eps_w)          (direction-aware evidence weight)
    lam_s       = lam_start + (lam_end - lam_start) * f(p_s),  p_s = min(1, (s - 1) / decay_steps)   (step s = 1, 2, ..)
                  f(p) = p ("linear"), (1 - cos(pi p)) / 2 ("cosine"), 0 ("constant": lam_s = lam_start)
    A_{i,t}     = A_i * ((1 - lam_s) + lam_s w_{i,t})
sign(A_i) makes a token the teacher finds more likely (Delta > 0) carry more credit in a passing rollout (A > 0)
and less blame in a failing one (A < 0); the weight never flips the sign of A_i, and A_i = 0 gives 0 (RLSD
cannot rescue an all-pass or all-fail group). lam_s = 0 is GRPO. rlsd.context = "reference": r_i = the task's
reference solution (OPSD's teacher prompt, selfdistill.reference_solution; a row whose task has none gets
w = 1); "feedback": r_i = the verifier's outcome and feedback (the lab's default privileged context).

What the sources give, and what this module chose:
  - followed: Delta (stop-gradient teacher minus student log-prob on the sampled token), w = exp(sign(A) Delta)
    clipped to [1 - eps_w, 1 + eps_w], and A_{i,t} = A_i ((1 - lam) + lam w_t). These are the forms quoted from the
    paper by third-party write-ups that were available here (an implementation PR in fw-ai/cookbook #333 quoting
    w_t = clip(exp(sign(A) (log P_T - log P_S)), 1 +- eps_w), and a comparison page quoting
    A_t = A ((1 - lam) + lam w_t)); the paper's own method section and code were not available to this module;
  - chosen: eps_w = 0.2 (PPO's usual clip range; the authors' value was not found), a linear decay of lam from 1
    at step 1 to 0 after decay_steps = the run's `steps` (the authors decay the self-distillation share over
    training; their exact schedule and end points were not found), teacher = the live policy (the paper's
    stop-gradient self-teacher), context = the reference solution (the paper's privileged information).
  - `scpo.grounding: rlsd` (critics/divergence.py) is a different, earlier form: A_i exp(sign(A_i) w s_{i,t}),
    no clip of the weight to 1 +- eps_w (only of s to +-clip: multipliers e^-1 to e at the defaults) and no schedule;
    it is kept unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scpo_lab import checks
from scpo_lab.critics.base import Critic, CriticResult, signal_stats
from scpo_lab.critics.selfdistill import OPSD_REFERENCE, reference_solution
from scpo_lab.teacher import privileged_messages, teacher_pass, with_note

SCHEDULES = ("linear", "cosine", "constant")
CONTEXTS = ("reference", "feedback")


@dataclass
class RlsdConfig(checks.Section):
    """Options of rlsd (`rlsd.*`); the formulas are the module docstring's."""

    name = "rlsd"
    eps_w: float = 0.2  # w_{i,t} in [1 - eps_w, 1 + eps_w]
    lam_start: float = 1.0  # lam at step 1
    lam_end: float = 0.0  # lam after decay_steps steps
    schedule: str = "linear"  # linear | cosine | constant
    decay_steps: int = 0  # steps over which lam goes from lam_start to lam_end; 0 = the run's `steps`
    context: str = "reference"  # reference | feedback: the teacher's privileged information

    def check(self) -> None:
        f = self.field_name
        eps = self.eps_w
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and 0 < eps < 1):
            raise checks.ConfigError(f"{f('eps_w')}: got {eps!r}; must be in (0, 1)")
        checks.unit_interval(f("lam_start"), self.lam_start)
        checks.unit_interval(f("lam_end"), self.lam_end)
        checks.one_of(f("schedule"), self.schedule, SCHEDULES)
        checks.count(f("decay_steps"), self.decay_steps, "0 = the run's steps")
        checks.one_of(f("context"), self.context, CONTEXTS)


def rlsd_lambda(step: int, lam_start: float, lam_end: float, schedule: str, decay_steps: int) -> float:
    """lam_s of the module docstring (step s counts from 1)."""
    if schedule == "constant":
        return float(lam_start)
    p = min(1.0, max(0, step - 1) / max(1, decay_steps))
    f = p if schedule == "linear" else (1 - math.cos(math.pi * p)) / 2
    return float(lam_start + (lam_end - lam_start) * f)


class RlsdCritic(Critic):
    methods = ("rlsd",)
    Config = RlsdConfig
    presets = {"rlsd": {"method": "rlsd"}}
    reads_sampler_logprobs = True

    def contexts(self, batch) -> tuple[list[list[dict]], torch.Tensor]:
        """Per row: the teacher's messages and whether it has privileged information."""
        if self.options().context == "feedback":
            return ([privileged_messages(p.prompt, v) for p, v in zip(batch.problems, batch.verdicts)],
                    torch.ones(len(batch.verdicts), dtype=torch.bool))
        messages, has = [], []
        for problem, verdict in zip(batch.problems, batch.verdicts):
            solution = reference_solution(problem)
            messages.append(with_note(problem.prompt, OPSD_REFERENCE.format(solution=solution)) if solution
                            else [dict(m) for m in problem.prompt])
            has.append(solution is not None)
        return messages, torch.tensor(has, dtype=torch.bool)

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        messages, has = self.contexts(batch)
        out = teacher_pass(policy, batch, batch.verdicts, messages=messages, temperature=temperature,
                           micro_batch_size=micro_batch_size, engine=self.config.rollout_engine)
        out.has_teacher = has
        return out

    def lam(self, step: int) -> float:
        cfg = self.options()
        return rlsd_lambda(step, cfg.lam_start, cfg.lam_end, cfg.schedule, cfg.decay_steps or self.config.steps)

    def advantages(self, batch, group_advantages, teacher, step: int = 0) -> CriticResult:
        cfg = self.options()
        mask = batch.completion_mask.float()
        has = (teacher.has_teacher if teacher.has_teacher is not None
               else torch.ones(mask.shape[0], dtype=torch.bool)).float()[:, None]
        delta = (teacher.logprobs - batch.logprobs) * mask * has  # Delta_{i,t}; 0 (w = 1) without a teacher
        raw = torch.exp(torch.sign(group_advantages)[:, None] * delta)
        w = raw.clamp(1 - cfg.eps_w, 1 + cfg.eps_w)
        lam = self.lam(step)
        a = group_advantages[:, None]
        advantages = a * ((1 - lam) + lam * w) * mask  # A_i ((1 - lam_s) + lam_s w_{i,t})
        n = mask.sum().clamp(min=1)
        active = mask * (a != 0).float()  # tokens whose weight matters (A_i != 0)
        n_active = active.sum().clamp(min=1)
        stats = {
            "rlsd/lambda": lam,
            "rlsd/weight_mean": float((w * active).sum() / n_active),
            "rlsd/clipped_frac": float((((raw < 1 - cfg.eps_w) | (raw > 1 + cfg.eps_w)).float() * active).sum()
                                       / n_active),
            "rlsd/delta_mean": float(delta.sum() / n),
            "rlsd/no_teacher_frac": float(1 - has.mean()),
            **signal_stats(advantages, mask, group_advantages, batch.group_size,
                           torch.tensor([bool(v.passed) for v in batch.verdicts])),
        }
        return CriticResult(advantages, stats)
