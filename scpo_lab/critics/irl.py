"""V5 `scpo-irl`: inverse RL. A discriminator D(x, y) = sigmoid(z) learns online to tell expert completions from
the policy's; its output, read as a reward, enters the GRPO objective beside the verifier's (options `irl.*`).

Per step:
    features   phi(x, y) = mean over the completion of the frozen base model's final hidden states, in the
               student's context (question only), standardised per row: the discriminator sees what was written,
               not who wrote it or what they were told
    experts    A ("passing"): the batch's verifier-passing rollouts; B ("teacher"): the policy re-solves each
               group's failed problem after reading its failed attempt and the verifier's feedback (privileged
               context), kept only when the verifier passes them (keep_passing) -- into a replay buffer
    reward     z = D's logit; airl: log D - log(1 - D) = z; gail: -log(1 - D) = softplus(z); clipped to
               [-reward_clip, reward_clip] (gail: [0, reward_clip]); scored by D before D trains on this batch
    advantage  A'_i = A_i + weight * (reward_i - mean_g reward) / 0.5 (objective.critic_advantages), A_i the
               verifier's group advantage. The reward is in logit units, not on the verifier's [0, 1] scale as
               the judge's score is: it spans 2 reward_clip (airl), so the term moves by up to 4 weight
               reward_clip, 2 at the defaults (0.25, 2), above GRPO's smallest pass-fail gap (1.414, G = 2). A
               discriminator sure of itself can therefore rank a fail over a pass of its group: the learned
               reward is not bounded by the verifier's (weight reward_clip < 0.354 keeps it so under airl).
    D update   after the actor's update: disc_updates AdamW steps on class-balanced BCE with label smoothing
               (+ an R1 gradient penalty on the experts), experts from the buffer, negatives = this batch's
               non-expert rollouts; D = a linear or MLP head, its own AdamW (lr), disc_updates steps per step,
               class-balanced BCE with label smoothing (targets 1 - label_smoothing and label_smoothing)
    buffer     buffer_size expert feature rows shared across steps, so a group with no success still gets a target
               from earlier experts
Several processes: the step's experts and negatives are gathered from every process, so each holds the same
buffer and takes the same discriminator steps (its parameters stay identical everywhere).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scpo_lab import checks
from scpo_lab.critics.base import Critic, CriticResult, signal_stats
from scpo_lab.critics.value import HEADS, ValueHead
from scpo_lab.objective import critic_advantages
from scpo_lab.rollout import sample_rollouts
from scpo_lab.stats import auroc
from scpo_lab.teacher import TeacherOutput, teacher_pass, with_note

FORMS = ("airl", "gail")
EXPERTS = ("passing", "teacher")


@dataclass
class IrlConfig(checks.Section):
    """Options of scpo-irl (`irl.*`); the formulas are the module docstring's."""

    name = "irl"
    form: str = "airl"  # airl | gail
    expert: str = "passing"  # passing | teacher
    teacher_rollouts: int = 2
    keep_passing: bool = True
    head: str = "mlp"  # linear | mlp
    head_hidden: int = 64
    lr: float = 1e-3
    disc_updates: int = 2
    buffer_size: int = 256
    label_smoothing: float = 0.1
    grad_penalty: float = 0.0
    reward_clip: float = 2.0
    weight: float = 0.25

    def check(self) -> None:
        f = self.field_name
        checks.one_of(f("form"), self.form, FORMS)
        checks.one_of(f("expert"), self.expert, EXPERTS)
        checks.one_of(f("head"), self.head, HEADS)
        for name in ("teacher_rollouts", "head_hidden", "disc_updates", "buffer_size"):
            checks.positive_int(f(name), getattr(self, name))
        checks.boolean(f("keep_passing"), self.keep_passing)
        checks.positive(f("lr"), self.lr)
        checks.positive(f("reward_clip"), self.reward_clip)
        for name in ("weight", "grad_penalty"):
            checks.positive(f(name), getattr(self, name), allow_zero=True)
        if not isinstance(self.label_smoothing, (int, float)) or not 0 <= self.label_smoothing < 0.5:
            raise checks.ConfigError(f"{f('label_smoothing')}: got {self.label_smoothing!r}; must be in [0, 0.5)")


RESOLVE_NOTE = ("\n\n[Your previous attempt:\n{attempt}\n\nAn automatic checker graded it: {feedback} "
                "Solve the problem again.]")


def airl_reward(logits: torch.Tensor) -> torch.Tensor:
    """log D - log(1 - D) with D = sigmoid(z): exactly the logit z."""
    return logits


def gail_reward(logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - D) with D = sigmoid(z) = softplus(z) (>= 0: every completion is rewarded, experts more)."""
    return F.softplus(logits)


def discriminator_loss(expert_logits: torch.Tensor, student_logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Class-balanced BCE: 1/2 [BCE(z_E, 1 - s) + BCE(z_S, s)], each a mean over its class (s = label smoothing),
    so a large expert buffer does not drown the few negatives of one step."""
    expert = F.binary_cross_entropy_with_logits(expert_logits, torch.full_like(expert_logits, 1 - smoothing))
    student = F.binary_cross_entropy_with_logits(student_logits, torch.full_like(student_logits, smoothing))
    return 0.5 * (expert + student)


def standardise(features: torch.Tensor) -> torch.Tensor:
    """Per-row zero mean, unit variance: the base model's hidden-state scale does not set D's learning rate."""
    return (features - features.mean(-1, keepdim=True)) / (features.std(-1, keepdim=True) + 1e-6)


def pooled_features(policy, batch, messages, *, micro_batch_size: int, engine: str) -> tuple[torch.Tensor, int]:
    """(phi [B, H] standardised mean of the frozen base's final states over each completion, tokens read)."""
    with policy.reference():
        out = teacher_pass(policy, batch, batch.verdicts or [None] * len(batch), messages=messages,
                           micro_batch_size=micro_batch_size, engine=engine, return_states=True)
    mask = batch.completion_mask.float()[..., None]
    pooled = (out.states * mask).sum(1) / mask.sum(1).clamp(min=1)
    return standardise(pooled), out.tokens_read


class IrlCritic(Critic):
    """scpo-irl: discriminator reward, experts from the verifier (A) or from the self-teacher (B)."""

    methods = ("scpo-irl",)
    Config = IrlConfig
    presets = {"scpo-irl-A": {"method": "scpo-irl", "irl.expert": "passing"},  # experts: the verifier's passes
               "scpo-irl-B": {"method": "scpo-irl", "irl.expert": "teacher"}}  # self-teacher re-solves that pass
    sequence_level = True

    def __init__(self, config, tokenizer=None, world=None):
        super().__init__(config, tokenizer, world)
        self.disc: ValueHead | None = None
        self.optimizer = None
        self.buffer: torch.Tensor | None = None  # [N, H] expert features, oldest first
        self.calls = 0
        self._pending_state = None
        self._step_data: dict = {}
        self._task = None

    def _build(self, hidden_size: int) -> None:
        cfg = self.config.irl
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.disc = ValueHead(hidden_size, cfg.head, cfg.head_hidden)  # last layer 0: D = 1/2 until it learns
        self.optimizer = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, weight_decay=0.0)
        if self._pending_state is not None:
            self.disc.load_state_dict(self._pending_state["disc"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self.buffer = self._pending_state.get("buffer")
            self._pending_state = None

    @property
    def task(self):
        if self._task is None:
            from scpo_lab.tasks import get_task

            self._task = get_task(self.config.task.name, **self.config.task.options)
        return self._task

    def teacher_rollouts(self, policy, batch) -> tuple[object | None, list]:
        """Approach B: for each group with a failed rollout, the policy re-solves the problem after reading its
        first failed attempt and the verifier's feedback (teacher_rollouts samples). -> (rollouts, verdicts)."""
        cfg, G = self.config.irl, batch.group_size
        shown = []  # (problem, attempt text, verdict) per group with a failure
        for g in range(len(batch) // G):
            failed = [r for r in range(g * G, (g + 1) * G) if not batch.verdicts[r].passed]
            if failed:
                r = failed[0]
                shown.append((batch.problems[r], batch.texts[r], batch.verdicts[r]))
        if not shown:
            return None, []
        problems = [dataclasses.replace(p, prompt=with_note(p.prompt, RESOLVE_NOTE.format(
            attempt=text.strip(), feedback=v.feedback))) for p, text, v in shown]
        rollouts = sample_rollouts(policy, problems, group_size=cfg.teacher_rollouts,
                                   max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,
                                   top_p=self.config.top_p, seed=self.config.seed * 1_000_003 + self.calls * 7919 + 5,
                                   engine=self.config.rollout_engine)
        originals = [p for p, _, _ in shown for _ in range(cfg.teacher_rollouts)]
        rollouts.verdicts = self.task.verify_batch(originals, rollouts.texts)
        rollouts.problems = originals  # the expert is read in the student's context: the original question
        return rollouts, rollouts.verdicts

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        cfg = self.config.irl
        self.calls += 1
        engine = self.config.rollout_engine
        features, read = pooled_features(policy, batch, [p.prompt for p in batch.problems],
                                         micro_batch_size=micro_batch_size, engine=engine)
        if self.disc is None:
            self._build(features.shape[-1])
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        stats = {}
        if cfg.expert == "passing":
            experts, negatives = features[passed], features[~passed]
        else:
            rollouts, verdicts = self.teacher_rollouts(policy, batch)
            experts = features[:0]
            if rollouts is not None:
                keep = torch.tensor([bool(v.passed) or not cfg.keep_passing for v in verdicts])
                stats["irl/teacher_pass_rate"] = sum(v.passed for v in verdicts) / len(verdicts)
                read += int(rollouts.prompt_mask.sum()) // cfg.teacher_rollouts + rollouts.num_tokens  # sampling
                if keep.any():
                    teacher_features, teacher_read = pooled_features(
                        policy, rollouts, [p.prompt for p in rollouts.problems], micro_batch_size=micro_batch_size,
                        engine=engine)
                    experts, read = teacher_features[keep], read + teacher_read
            negatives = features
        stats["irl/experts_new"] = len(experts)
        if self.world.enabled:  # every process trains D on the whole batch's experts and negatives
            experts = torch.cat(self.world.gather(experts))
            negatives = torch.cat(self.world.gather(negatives))
        self._step_data = {"experts": experts, "negatives": negatives, "stats": stats}
        return TeacherOutput(logprobs=None, tokens_read=read, critic_data={"features": features})

    def parameters(self) -> list:
        return [] if self.disc is None else list(self.disc.parameters())

    def advantages(self, batch, group_advantages_, teacher, step: int = 0) -> CriticResult:
        cfg = self.config.irl
        with torch.no_grad():
            logits = self.disc(teacher.critic_data["features"])
        reward = (airl_reward if cfg.form == "airl" else gail_reward)(logits).clamp(-cfg.reward_clip, cfg.reward_clip)
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        # A'_i = A_i + w (reward_i - mean_g reward) / CRITIC_SCALE (objective.critic_advantages)
        advantages = critic_advantages(group_advantages_, reward, batch.group_size, cfg.weight)
        d = torch.sigmoid(logits)  # D(x, y): the critic's own score of each rollout
        stats = signal_stats(advantages, batch.completion_mask, group_advantages_, batch.group_size, passed)
        stats.update({"irl/reward_mean": float(reward.mean()), "irl/d_passed": float(d[passed].mean())
                      if passed.any() else float("nan"),
                      "irl/d_failed": float(d[~passed].mean()) if (~passed).any() else float("nan"),
                      "irl/auroc": auroc(logits, passed), **self._step_data.get("stats", {})})
        return CriticResult(advantages, stats, score=d, score_is_probability=True, sequence_reward=reward)

    def after_update(self, policy) -> dict:
        """Push this step's experts into the buffer, then train D on buffer vs this step's negatives."""
        cfg, data = self.config.irl, self._step_data
        experts, negatives = data.get("experts"), data.get("negatives")
        if experts is not None and len(experts):
            self.buffer = experts if self.buffer is None else torch.cat([self.buffer, experts])[-cfg.buffer_size:]
        stats = {"irl/buffer_size": 0 if self.buffer is None else len(self.buffer)}
        self.own_flops = 0.0
        if self.buffer is None or negatives is None or not len(negatives):
            return stats  # nothing to contrast yet: D stays as it is
        losses = []
        for _ in range(cfg.disc_updates):
            expert_in = self.buffer.clone().requires_grad_(cfg.grad_penalty > 0)
            expert_logits, student_logits = self.disc(expert_in), self.disc(negatives)
            loss = discriminator_loss(expert_logits, student_logits, cfg.label_smoothing)
            if cfg.grad_penalty > 0:  # R1: + gp * E_expert ||d z / d x||^2 keeps D from saturating
                grad = torch.autograd.grad(expert_logits.sum(), expert_in, create_graph=True)[0]
                loss = loss + cfg.grad_penalty * grad.pow(2).sum(-1).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError("irl: the discriminator loss is not finite; the run stops and its last "
                                         "checkpoint is kept — lower irl.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        # D's forward + backward per feature row (6 N), twice as much with the R1 penalty's double backward
        rows = len(self.buffer) + len(negatives)
        self.own_flops = 6.0 * self.extra_parameters() * rows * cfg.disc_updates * (2 if cfg.grad_penalty > 0 else 1)
        with torch.no_grad():
            accuracy = 0.5 * (float((self.disc(self.buffer) > 0).float().mean())
                              + float((self.disc(negatives) <= 0).float().mean()))
        return {**stats, "irl/disc_loss": sum(losses) / len(losses), "irl/disc_accuracy": accuracy}

    def state_dict(self) -> dict:
        if self.disc is None:
            return {}
        return {"disc": self.disc.state_dict(), "optimizer": self.optimizer.state_dict(), "buffer": self.buffer,
                "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        if "disc" in state:
            self._pending_state = state  # applied when D is built (its size comes from the model)
            self.calls = int(state.get("calls", 0))

    def extra_parameters(self) -> int:
        return 0 if self.disc is None else sum(p.numel() for p in self.disc.parameters())


__all__ = ["IrlCritic", "airl_reward", "discriminator_loss", "gail_reward", "pooled_features", "standardise"]
