"""The self-distillation baselines SCPO is measured against: `sdpo` and `opsd` (options: `distill.*`).

Both reuse the self-teacher pass, but as an imitation target: the student's next-token distribution is pulled
toward the teacher's (objective.distill_loss, added to the update), or, in sampled-token mode, the per-token
reward log pi_teacher(y_t) - log pi_student(y_t) enters the clipped surrogate.

Teacher context (method): sdpo = question + a passing sibling rollout of the same group ("Correct solution"),
never the rollout itself, else the failed attempt's feedback (a lone passing rollout gets no teacher);
opsd = question + the task's reference solution (GSM8K's worked answer; "a + b = c" for arithmetic; the
canonical program for MBPP+). Teacher weights (distill.teacher): "ema" (theta_T <- (1 - r) theta_T + r theta
after every optimizer step, r = ema_rate), "live" (the current policy), "initial" (adapter disabled),
"auto" = ema for sdpo, initial for opsd.

Loss, per completion token t, p = student (with gradient), q = teacher (no gradient):
    support "topk"/"full": D_t = alpha-divergence over the teacher's top_k tokens + a tail bucket (or the whole
        vocabulary): alpha = 0 forward KL(q || p), alpha = 1 reverse KL(p || q), between: the generalized JSD
        a KL(p || m) + (1 - a) KL(q || m), m = a p + (1 - a) q;  D_t <- min(D_t, token_clip) if token_clip > 0
        L = grpo_weight * L_GRPO(A_i) + (1 - grpo_weight) * sum_t D_t / (number of completion tokens)
    support "sampled": the policy gradient with per-token reward log q(y_t) - log p(y_t) (SDPO's sampled-token
        mode), through the clipped surrogate: A_{i,t} = grpo_weight * A_i + (1 - grpo_weight) * d_{i,t},
        d clipped to +-token_clip if token_clip > 0
grpo_weight = 0 is pure distillation (SDPO's public code, OPSD).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from scpo_lab import checks
from scpo_lab.critics.base import Critic, CriticResult, LossTerm, UpdateForward, signal_stats
from scpo_lab.objective import distill_loss
from scpo_lab.teacher import TeacherOutput, student_messages, teacher_pass, with_note

SUPPORTS = ("sampled", "topk", "full")
TEACHERS = ("auto", "ema", "live", "initial")


@dataclass
class DistillConfig(checks.Section):
    """Options of sdpo and opsd (`distill.*`); the formulas are the module docstring's."""

    name = "distill"
    grpo_weight: float = 0.0
    support: str = "topk"  # sampled | topk | full
    top_k: int = 100
    alpha: float = 0.5
    teacher: str = "auto"  # auto | ema | live | initial
    ema_rate: float = 0.05
    token_clip: float = 0.0  # 0 = no per-token clipping

    def check(self) -> None:
        f = self.field_name
        for name in ("grpo_weight", "alpha", "ema_rate"):
            checks.unit_interval(f(name), getattr(self, name))
        checks.one_of(f("support"), self.support, SUPPORTS)
        checks.one_of(f("teacher"), self.teacher, TEACHERS)
        checks.positive_int(f("top_k"), self.top_k)
        checks.positive(f("token_clip"), self.token_clip, allow_zero=True)


class DistillLoss(LossTerm):
    """weight * objective.distill_loss on the rows that have a teacher: pull the student's distribution toward the
    teacher's log-probs on the support (alpha: 0 forward KL, 1 reverse KL, between: generalized JSD)."""

    name = "distill/loss"

    def __init__(self, support_ids, logprobs, rows, weight: float, alpha: float, token_clip: float):
        self.support_ids = support_ids  # [B, T, k] support token ids
        self.logprobs = logprobs  # [B, T, k] teacher log-probs on the support (no gradient)
        self.rows = rows  # [B] bool: the row has a teacher
        self.weight, self.alpha, self.token_clip = weight, alpha, token_clip  # weight = 1 - grpo_weight

    def __call__(self, forward: UpdateForward, rows, mask, n_tokens):
        width = mask.shape[1]
        distill_mask = mask * self.rows[rows, None]
        distill, _ = distill_loss(forward.support_logprobs, self.logprobs[rows, :width], distill_mask, self.alpha,
                                  self.token_clip, n_tokens)
        return self.weight * distill, float(distill.detach())  # L = lam L_GRPO + (1 - lam) sum_t D_t / n_tokens

SDPO_SOLUTION = "\n\nCorrect solution:\n{solution}\n\nCorrectly solve the original question."
SDPO_FEEDBACK = ("\n\nThe following is feedback from your unsuccessful earlier attempt:\n{feedback}\n\n"
                 "Correctly solve the original question.")
OPSD_REFERENCE = ("\n\nHere is a reference solution to this problem:\n{solution}\n\nAfter understanding the "
                  "reference solution, solve the problem yourself.")


def reference_solution(problem) -> str | None:
    """A worked solution for OPSD's teacher, or None when the task has none."""
    meta = problem.meta or {}
    if meta.get("solution"):
        return str(meta["solution"])
    if meta.get("expression"):
        return f"{meta['expression']} = {problem.answer}"
    if meta.get("entry_point") and problem.answer:
        return f"```python\n{problem.answer}\n```"
    return None


class SelfDistillation(Critic):
    """Shared by sdpo and opsd: teacher contexts per row, teacher weights, the distillation target."""

    Config = DistillConfig
    default_teacher = "live"

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.ema: dict[str, torch.Tensor] | None = None

    # which rows get a teacher, and what it reads
    def contexts(self, batch) -> tuple[list[list[dict]], torch.Tensor, dict]:
        raise NotImplementedError

    @property
    def teacher_kind(self) -> str:
        kind = self.config.distill.teacher
        return self.default_teacher if kind == "auto" else kind

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        cfg = self.config.distill
        messages, has_teacher, stats = self.contexts(batch)
        k = None if cfg.support == "sampled" else (len(policy.tokenizer) if cfg.support == "full" else cfg.top_k)
        with self.teacher_weights(policy):
            out = teacher_pass(policy, batch, batch.verdicts, temperature=temperature,
                               micro_batch_size=micro_batch_size, top_k=k, messages=messages,
                               engine=self.config.rollout_engine)
        out.has_teacher, out.context_stats = has_teacher, stats
        return out

    @contextlib.contextmanager
    def teacher_weights(self, policy):
        kind = self.teacher_kind
        if kind == "initial":
            with policy.reference():
                yield
            return
        if kind == "live":
            yield
            return
        live = self._lora(policy)  # "ema": swap the EMA values into the adapter for the pass, then back
        if self.ema is None:
            self.ema = {n: p.detach().clone() for n, p in live.items()}
        saved = {n: p.detach().clone() for n, p in live.items()}
        try:
            with torch.no_grad():
                for n, p in live.items():
                    p.copy_(self.ema[n])
            yield
        finally:
            with torch.no_grad():
                for n, p in live.items():
                    p.copy_(saved[n])

    def after_update(self, policy) -> None:
        """EMA teacher: theta_T <- (1 - r) theta_T + r theta after each update."""
        if self.teacher_kind != "ema":
            return
        live = self._lora(policy)
        if self.ema is None:
            self.ema = {n: p.detach().clone() for n, p in live.items()}
            return
        rate = self.config.distill.ema_rate
        with torch.no_grad():
            for n, p in live.items():
                self.ema[n].mul_(1 - rate).add_(p.detach(), alpha=rate)

    def state_dict(self) -> dict:
        return {"ema": self.ema} if self.ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state.get("ema")

    @staticmethod
    def _lora(policy) -> dict[str, torch.Tensor]:
        return {n: p for n, p in policy.model.named_parameters() if p.requires_grad}

    def advantages(self, batch, group_advantages, teacher: TeacherOutput, step: int = 0) -> CriticResult:
        cfg = self.config.distill
        mask = batch.completion_mask.float()
        rows = teacher.has_teacher.float()[:, None]
        lam = cfg.grpo_weight
        if cfg.support == "sampled":  # A_{i,t} = lam A_i + (1 - lam) d_{i,t}, d = log q(y_t) - log p(y_t)
            d = (teacher.logprobs - batch.logprobs) * mask * rows
            if cfg.token_clip > 0:
                d = d.clamp(-cfg.token_clip, cfg.token_clip)
            signal = (1 - lam) * d
            advantages = (lam * group_advantages[:, None] + signal) * mask
        else:  # the distillation loss carries the teacher; the surrogate keeps lam A_i
            signal = (1 - lam) * rows * mask  # non-zero wherever a token is distilled (for the accounting)
            advantages = lam * group_advantages
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        stats = {**teacher.context_stats,
                 **signal_stats(advantages, mask, group_advantages, batch.group_size, passed, signal=signal)}
        if cfg.support != "sampled":  # the teacher acts through the distillation loss, not the advantages:
            for key in ("scpo/signal_mean", "scpo/signal_std", "scpo/signal_top1pct_share", "scpo/agreement_auroc"):
                stats.pop(key)  # (its magnitude is distill/loss); where it acts: the zero-std rows with a teacher
            zero_std = (group_advantages.view(-1, batch.group_size).abs().amax(1) == 0).repeat_interleave(
                batch.group_size)
            stats["distill/zero_std_rows_frac"] = float((zero_std & teacher.has_teacher).float().mean())
        term = None  # sampled mode carries the teacher in the advantages; grpo_weight = 1 distils nothing
        if cfg.support != "sampled" and cfg.grpo_weight < 1:
            term = DistillLoss(support_ids=teacher.dist_ids, logprobs=teacher.dist_logprobs, rows=teacher.has_teacher,
                               weight=1 - cfg.grpo_weight, alpha=cfg.alpha, token_clip=cfg.token_clip)
        return CriticResult(advantages, stats, loss_term=term)


class SdpoCritic(SelfDistillation):
    methods = ("sdpo",)
    presets = {"sdpo": {"method": "sdpo"}}
    default_teacher = "ema"

    def contexts(self, batch):
        G = batch.group_size
        messages, has_teacher = [], []
        n_sibling = n_feedback = 0
        for i, (problem, verdict) in enumerate(zip(batch.problems, batch.verdicts)):
            group = range(i - i % G, i - i % G + G)
            sibling = next((j for j in group if j != i and batch.verdicts[j].passed), None)
            if sibling is not None:
                messages.append(with_note(problem.prompt, SDPO_SOLUTION.format(solution=batch.texts[sibling])))
                n_sibling += 1
            elif not verdict.passed:
                messages.append(with_note(problem.prompt, SDPO_FEEDBACK.format(feedback=verdict.feedback)))
                n_feedback += 1
            else:  # a lone success: nothing to show it, no teacher (as in SDPO)
                messages.append(student_messages(problem.prompt, verdict))
            has_teacher.append(sibling is not None or not verdict.passed)
        B = max(1, len(batch.verdicts))
        stats = {"distill/sibling_frac": n_sibling / B, "distill/feedback_frac": n_feedback / B,
                 "distill/no_teacher_frac": 1 - (n_sibling + n_feedback) / B}
        return messages, torch.tensor(has_teacher, dtype=torch.bool), stats


class OpsdCritic(SelfDistillation):
    methods = ("opsd",)
    presets = {"opsd": {"method": "opsd"}}
    default_teacher = "initial"

    def contexts(self, batch):
        messages, has_teacher = [], []
        for problem, verdict in zip(batch.problems, batch.verdicts):
            solution = reference_solution(problem)
            note = OPSD_REFERENCE.format(solution=solution) if solution is not None else None
            messages.append(with_note(problem.prompt, note) if note else student_messages(problem.prompt, verdict))
            has_teacher.append(solution is not None)
        has = torch.tensor(has_teacher, dtype=torch.bool)
        return messages, has, {"distill/no_teacher_frac": float(1 - has.float().mean()) if len(has) else 0.0}
