"""The self-distillation baselines SCPO is measured against: `sdpo` and `opsd` (options: `distill.*`).

Both reuse the self-teacher pass, but as an imitation target: the student's next-token distribution is pulled
toward the teacher's (objective.distill_loss, added to the update), or, in sampled-token mode, the per-token
reward log pi_teacher(y_j) - log pi_student(y_j) enters the clipped surrogate.

Teacher context (method): sdpo = question + a passing sibling rollout of the same group ("Correct solution"),
never the rollout itself, else the failed attempt's feedback (a lone passing rollout gets no teacher);
opsd = question + the task's reference solution (GSM8K's worked answer; "a + b = c" for arithmetic; the
canonical program for MBPP+). Teacher weights (distill.teacher): "ema" (theta_T <- (1 - r) theta_T + r theta once
per training step, after the actor's update, r = ema_rate), "live" (the current policy), "initial" (adapter
disabled), "auto" = ema for sdpo, initial for opsd.

Loss, per completion token j; s = the student's next-token distribution (with gradient), t = the teacher's (no
gradient); the distilled tokens are those of the rows with a teacher:
    support "topk" (auto for sdpo): the student's top_k tokens (a student-context pass of the current policy) + one
        tail bucket, the teacher scored on those ids; "full" (auto for opsd): the whole vocabulary, no tail
    D_j = the alpha-divergence on the support: alpha = 0 forward KL(t || s), alpha = 1 reverse KL(s || t),
        between: the generalized JSD (1 - a) KL(s || m) + a KL(t || m), m = (1 - a) s + a t
        (objective.distill_divergence; as a -> 0 it tends to a KL(t || s), as a -> 1 to (1 - a) KL(s || t));
        token_clip > 0 caps each term of the sum over the support (OPSD's point-wise clip; auto: 0.05 for opsd,
        none for sdpo)
    w_j = min(pi_theta(y_j) / pi_sampler(y_j), is_clip), no gradient (is_clip auto: 2 for sdpo; 0 = w_j = 1, opsd)
    L = grpo_weight * L_GRPO(A_i) + (1 - grpo_weight) * sum_j w_j D_j / (number of distilled tokens in the batch)
support "sampled": the policy gradient with per-token reward d_j = log t(y_j) - log s(y_j) (SDPO's sampled-token
    mode), through the clipped surrogate: A_{i,j} = grpo_weight * A_i + (1 - grpo_weight) * d_j, d clipped to
    +-token_clip if token_clip > 0 (auto: none)
grpo_weight = 0 is pure distillation (SDPO's public code, OPSD).

The references, and the lines each formula follows (README "Deliberate differences from the reference code"
lists where this module departs from them):
  SDPO, lasgroup/SDPO at 0e6d510:
    verl/trainer/ppo/core_algos.py L1085-1188 compute_self_distillation_loss: L1104 the loss mask keeps the rows
      with a teacher (self_distillation_mask); L1112-1117, L1126-1128 the tail bucket of a top-k support;
      L1132-1136 the full vocabulary, no tail; L1138-1160 alpha (0 forward KL, 1 reverse KL, between
      lerp(KL(s || m), KL(t || m), a), m = (1 - a) s + a t); L1164-1166 the sampled-token loss; L1168-1176 the
      importance weight exp(log pi - log pi_old) (log ratio clamped to +-20) capped at is_clip; L1182-1186 a token
      mean over loss_mask.sum(), the distilled tokens only
    verl/workers/actor/dp_actor.py L779-791 the update's forward returns the student's top-k ids (distill_topk);
      L820-829 the teacher forward scored on those ids (topk_indices=student_topk_indices); L132-151 the EMA step,
      called once per update_policy (L918-920), i.e. once per training step, after all mini-batches and epochs
    verl/trainer/config/sdpo.yaml L20 is_clip 2.0, L31-32 rollout_is token, threshold 2.0;
      verl/trainer/config/actor/actor.yaml L90 distillation_topk 100, L93 tail, L96 alpha 0.5, L105 rate 0.05
  OPSD, siyan-zhao/OPSD at 5e75d75 (the code released 2026-03-18 and its later commits):
    opsd_trainer.py L382-479 generalized_jsd_loss: L430-435 its optional top-k (the teacher's, renormalized);
      L441-460 the same alpha (beta) convention; L462-464 the point-wise clip jsd.clamp(max=token_clip) on the
      [B, T, V] terms, before the sum over the vocabulary; L466-473 a token mean over the completion tokens;
      L678-679 the fixed teacher = the adapter disabled (the initial model)
    opsd_train.py L63-70 top_k_loss 0 (the full vocabulary), L71-77 jsd_token_clip 0.05
  TRL GKD, huggingface/trl trl/experimental/gkd/gkd_trainer.py L239 generalized_jsd_loss (the alpha convention).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from scpo_lab import checks, precision
from scpo_lab.critics.base import Critic, CriticResult, LossTerm, UpdateForward, signal_stats
from scpo_lab.objective import backbone_and_head, distill_loss
from scpo_lab.teacher import TeacherOutput, student_messages, teacher_pass, with_note

SUPPORTS = ("auto", "sampled", "topk", "full")
TEACHERS = ("auto", "ema", "live", "initial")
IS_LOG_RATIO_BOUND = 20.0  # |log pi - log pi_sampler| is clamped before exp (SDPO core_algos.py L1174)


def _auto_or_nonnegative(name: str, value) -> None:
    if value == "auto":
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 0):
        raise checks.ConfigError(f"{name}: got {value!r}; must be 'auto' or a finite number >= 0")


@dataclass
class DistillConfig(checks.Section):
    """Options of sdpo and opsd (`distill.*`); the formulas are the module docstring's. "auto" resolves per
    method (SdpoCritic.defaults, OpsdCritic.defaults)."""

    name = "distill"
    grpo_weight: float = 0.0  # lam in L = lam L_GRPO + (1 - lam) L_distill
    support: str = "auto"  # auto | sampled | topk | full  (auto: topk for sdpo, full for opsd)
    top_k: int = 100  # support "topk": the student's top-k tokens (SDPO's distillation_topk)
    alpha: float = 0.5  # 0 forward KL(t || s), 1 reverse KL(s || t), between: generalized JSD
    teacher: str = "auto"  # auto | ema | live | initial  (auto: ema for sdpo, initial for opsd)
    ema_rate: float = 0.05  # r of the EMA teacher, moved once per training step
    # topk / full: cap on each term of D_j (OPSD's point-wise clip); sampled: |d_j| cap; 0 = none
    token_clip: float | str = "auto"  # auto: 0.05 for opsd with topk / full, else 0
    # topk / full: the importance weight w_j = min(pi / pi_sampler, is_clip); 0 = no weight (w_j = 1)
    is_clip: float | str = "auto"  # auto: 2 for sdpo, 0 for opsd

    def check(self) -> None:
        f = self.field_name
        for name in ("grpo_weight", "alpha", "ema_rate"):
            checks.unit_interval(f(name), getattr(self, name))
        checks.one_of(f("support"), self.support, SUPPORTS)
        checks.one_of(f("teacher"), self.teacher, TEACHERS)
        checks.positive_int(f("top_k"), self.top_k)
        _auto_or_nonnegative(f("token_clip"), self.token_clip)
        _auto_or_nonnegative(f("is_clip"), self.is_clip)


class DistillLoss(LossTerm):
    """weight * objective.distill_loss on the distilled tokens (rows with a teacher): pull the student's
    distribution toward the teacher's log-probs on the support, each token weighted by the clipped importance
    weight, a token mean over the distilled tokens of the whole batch."""

    name = "distill/loss"

    def __init__(self, support_ids, logprobs, rows, weight: float, alpha: float, token_clip: float,
                 is_clip: float = 0.0, sampler_logprobs=None, n_distilled: float = 1.0, tail: bool = True):
        self.support_ids = support_ids  # [B, T, k] support token ids
        self.logprobs = logprobs  # [B, T, k] teacher log-probs on the support (no gradient)
        self.rows = rows  # [B] bool: the row has a teacher
        self.weight, self.alpha, self.token_clip = weight, alpha, token_clip  # weight = 1 - grpo_weight
        self.is_clip = is_clip  # > 0: w_j = min(exp(log pi - log pi_sampler), is_clip)
        self.sampler_logprobs = sampler_logprobs  # [B, T] the sampler's log pi(y_j) (batch.logprobs)
        self.n_distilled = n_distilled  # distilled tokens of the whole batch, all processes
        self.tail = tail  # a top-k support gets a tail bucket; the full vocabulary none

    def importance_weights(self, logprobs, rows, width):
        """w_j = min(pi_theta(y_j) / pi_sampler(y_j), is_clip) [b, T], no gradient; None when is_clip = 0."""
        if self.is_clip <= 0:
            return None
        log_ratio = logprobs.detach() - self.sampler_logprobs[rows, :width]
        return log_ratio.clamp(-IS_LOG_RATIO_BOUND, IS_LOG_RATIO_BOUND).exp().clamp(max=self.is_clip)

    def __call__(self, forward: UpdateForward, rows, mask, n_tokens):
        width = mask.shape[1]
        distill_mask = mask * self.rows[rows, None]
        distill, _ = distill_loss(forward.support_logprobs, self.logprobs[rows, :width], distill_mask, self.alpha,
                                  self.token_clip, self.n_distilled,
                                  weights=self.importance_weights(forward.logprobs, rows, width), tail=self.tail)
        return self.weight * distill, float(distill.detach())  # L = lam L_GRPO + (1 - lam) sum_j w_j D_j / n_distilled

SDPO_SOLUTION = "\n\nCorrect solution:\n{solution}\n\nCorrectly solve the original question."
SDPO_FEEDBACK = ("\n\nThe following is feedback from your unsuccessful earlier attempt:\n{feedback}\n\n"
                 "Correctly solve the original question.")
OPSD_REFERENCE = ("\n\nHere is a reference solution to this problem:\n{solution}\n\nAfter understanding the "
                  "reference solution, solve the problem yourself.")


def vocabulary_size(policy) -> int:
    """Rows of the policy's lm_head: the support of "full" (the head may have more rows than the tokenizer)."""
    return int(backbone_and_head(policy.model)[1].weight.shape[0])


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
    # what "auto" resolves to, per method (token_clip: for the topk / full supports; sampled: none)
    defaults: ClassVar[dict] = {"teacher": "live", "support": "topk", "token_clip": 0.0, "is_clip": 0.0}

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.ema: dict[str, torch.Tensor] | None = None

    # which rows get a teacher, and what it reads
    def contexts(self, batch) -> tuple[list[list[dict]], torch.Tensor, dict]:
        raise NotImplementedError

    def _resolved(self, name: str):
        value = getattr(self.config.distill, name)
        return self.defaults[name] if value == "auto" else value

    @property
    def teacher_kind(self) -> str:
        return self._resolved("teacher")

    @property
    def support(self) -> str:
        return self._resolved("support")

    @property
    def token_clip(self) -> float:
        if self.config.distill.token_clip == "auto" and self.support == "sampled":
            return 0.0
        return float(self._resolved("token_clip"))

    @property
    def is_clip(self) -> float:
        return float(self._resolved("is_clip"))

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        """The teacher's log-probs on the support. topk: the student's top-k ids come first, from a student-context
        pass of the current policy (SDPO takes them from the update's forward, dp_actor.py L779-791: for
        num_iterations = 1 the same weights), then the teacher is scored on them."""
        cfg = self.config.distill
        messages, has_teacher, stats = self.contexts(batch)
        kwargs = dict(temperature=temperature, micro_batch_size=micro_batch_size, engine=self.config.rollout_engine)
        student, support_ids = None, None
        if self.support == "topk":
            k = min(cfg.top_k, vocabulary_size(policy))
            student = teacher_pass(policy, batch, batch.verdicts, context=student_messages, top_k=k, **kwargs)
            support_ids = student.dist_ids
        elif self.support == "full":
            V = vocabulary_size(policy)
            support_ids = torch.arange(V, device=batch.completion_ids.device).expand(*batch.completion_ids.shape, V)
        with self.teacher_weights(policy):
            out = teacher_pass(policy, batch, batch.verdicts, messages=messages, support_ids=support_ids, **kwargs)
        if student is not None:
            out.student = student
            out.tokens_read += student.tokens_read  # the student's pass is one more forward (FLOPs)
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
            precision.weights_changed()  # under bf16, autocast's copies of the live values are stale now
            yield
        finally:
            with torch.no_grad():
                for n, p in live.items():
                    p.copy_(saved[n])
            precision.weights_changed()

    def after_update(self, policy) -> None:
        """EMA teacher: theta_T <- (1 - r) theta_T + r theta, once per training step, after the actor's update
        (all of its num_iterations optimizer steps): SDPO moves its EMA once per update_policy call, after every
        mini-batch and epoch (dp_actor.py L918-920), not after each optimizer step."""
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
        lam, support, token_clip = cfg.grpo_weight, self.support, self.token_clip
        if support == "sampled":  # A_{i,j} = lam A_i + (1 - lam) d_j, d_j = log t(y_j) - log s(y_j)
            d = (teacher.logprobs - batch.logprobs) * mask * rows
            if token_clip > 0:
                d = d.clamp(-token_clip, token_clip)
            signal = (1 - lam) * d
            advantages = (lam * group_advantages[:, None] + signal) * mask
        else:  # the distillation loss carries the teacher; the surrogate keeps lam A_i
            signal = (1 - lam) * rows * mask  # non-zero wherever a token is distilled (for the accounting)
            advantages = lam * group_advantages
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        stats = {**teacher.context_stats,
                 **signal_stats(advantages, mask, group_advantages, batch.group_size, passed, signal=signal)}
        if support != "sampled":  # the teacher acts through the distillation loss, not the advantages:
            for key in ("scpo/signal_mean", "scpo/signal_std", "scpo/signal_top1pct_share", "scpo/agreement_auroc"):
                stats.pop(key)  # (its magnitude is distill/loss); where it acts: the zero-std rows with a teacher
            zero_std = (group_advantages.view(-1, batch.group_size).abs().amax(1) == 0).repeat_interleave(
                batch.group_size)
            stats["distill/zero_std_rows_frac"] = float((zero_std & teacher.has_teacher).float().mean())
        term = None  # sampled mode carries the teacher in the advantages; grpo_weight = 1 distils nothing
        if support != "sampled" and cfg.grpo_weight < 1:
            # a token mean over the distilled tokens only (SDPO core_algos.py L1104, L1186): rows without a teacher
            # leave the denominator, so they do not shrink the other rows' gradient
            n_distilled = self.world.sum(float((mask * rows).sum()))
            term = DistillLoss(support_ids=teacher.dist_ids, logprobs=teacher.dist_logprobs, rows=teacher.has_teacher,
                               weight=1 - cfg.grpo_weight, alpha=cfg.alpha, token_clip=token_clip,
                               is_clip=self.is_clip, sampler_logprobs=batch.logprobs, n_distilled=n_distilled,
                               tail=support == "topk")
        return CriticResult(advantages, stats, loss_term=term)


class SdpoCritic(SelfDistillation):
    methods = ("sdpo",)
    presets = {"sdpo": {"method": "sdpo"}}
    # SDPO's config: EMA teacher, distillation_topk 100 + tail, no token clip, is_clip 2 (module docstring)
    defaults = {"teacher": "ema", "support": "topk", "token_clip": 0.0, "is_clip": 2.0}

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
    # OPSD's later release: the initial model (fixed_teacher), the full vocabulary, jsd_token_clip 0.05, no IS weight
    defaults = {"teacher": "initial", "support": "full", "token_clip": 0.05, "is_clip": 0.0}

    def contexts(self, batch):
        messages, has_teacher = [], []
        for problem, verdict in zip(batch.problems, batch.verdicts):
            solution = reference_solution(problem)
            note = OPSD_REFERENCE.format(solution=solution) if solution is not None else None
            messages.append(with_note(problem.prompt, note) if note else student_messages(problem.prompt, verdict))
            has_teacher.append(solution is not None)
        has = torch.tensor(has_teacher, dtype=torch.bool)
        return messages, has, {"distill/no_teacher_frac": float(1 - has.float().mean()) if len(has) else 0.0}
