"""The contract between the trainer and a critic (docs/add_a_critic.md walks through a new one).

A critic module holds, in one file: the critic class with its method name(s) (`methods`), its config section (a
`checks.Section` dataclass in `Config`, validated on construction), its formulas in the module docstring, and its
arm presets (`presets`). One line in critics/__init__.py (or `register(MyCritic)` from any module) registers it;
the config, the run identity, the comparison notebooks' arms and the CLI read everything else from the class.

Each training step the trainer calls, in this order:
    teacher = critic.teacher_pass(policy, batch, ...)        the second pass (None when needs_teacher is False)
    result = critic.advantages(batch, A, teacher, step=...)   -> CriticResult (A = the verifier's group advantages)
    update: the clipped surrogate on result.advantages, plus result.loss_term on every micro-batch (if any)
    stats = critic.after_update(policy)                      the critic's own training, after the actor's update
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from scpo_lab.distributed import World


@dataclass
class UpdateForward:
    """What the update's forward of one micro-batch computed, for a LossTerm."""
    logprobs: torch.Tensor  # [b, T] log pi(y_t | x, y_<t), with gradient
    support_logprobs: torch.Tensor | None = None  # [b, T, k] the student's log-probs on LossTerm.support_ids
    states: torch.Tensor | None = None  # [b, T, H] final hidden states s_t (LossTerm.wants_states)


class LossTerm(abc.ABC):
    """A term a critic adds to the update's loss, computed from the update's own forward of each micro-batch
    (the distillation loss of sdpo / opsd, the reward head's BCE on the student-context states).

    policy_objective: True when the term is part of the policy's objective (it is included in the logged `loss`);
    False when it trains the critic's own parameters through this forward (logged only under `name`)."""

    name: str = ""  # the metrics key of the term's value, e.g. "distill/loss"
    policy_objective: bool = True
    support_ids: torch.Tensor | None = None  # [B, T, k]: the forward also returns log-probs on these ids
    wants_states: bool = False  # the forward also returns its final hidden states

    @abc.abstractmethod
    def __call__(self, forward: UpdateForward, rows, mask: torch.Tensor, n_tokens: float) -> tuple[torch.Tensor, float]:
        """(the tensor added to the micro-batch's loss, the value logged under `name`) for the batch rows `rows`
        with completion mask `mask` [b, T]; n_tokens = completion tokens of the whole batch, all processes."""


@dataclass
class CriticResult:
    """What a critic's advantages() returns: everything the trainer reads from a critic each step."""
    advantages: torch.Tensor  # [B] per rollout or [B, T] per completion token: what the surrogate uses
    stats: dict  # floats logged in this step's metrics row (scpo/*, judge/*, head/*, ...)
    score: torch.Tensor | None = None  # [B] the critic's own score of each rollout, before any mix with the
    #                                    verifier: compared with the verifier each step (metrics.hacking_stats)
    score_is_probability: bool = False  # the score is on the verifier's [0, 1] scale (a judge's score, a D)
    sequence_reward: torch.Tensor | None = None  # [B] s_i of r'_i = r_i + w s_i (the TRL bridge's reward)
    rewards: torch.Tensor | None = None  # [B] the reward the method trains on, when it is not the verifier's
    loss_term: LossTerm | None = None  # a term added to the update's loss (distillation, a head's BCE)


class Critic(abc.ABC):
    """Turns (rollouts, verifier rewards, teacher pass) into advantages; see the module docstring."""

    methods: ClassVar[tuple[str, ...]] = ()  # the method names this class implements (config.method)
    Config: ClassVar[type | None] = None  # its config section (a checks.Section dataclass), or None
    presets: ClassVar[dict[str, dict]] = {}  # comparison arms: arm name -> config overrides ({"method": ...})
    needs_teacher: ClassVar[bool] = True  # False: no second pass (teacher_pass is not called)
    reads_sampler_logprobs: ClassVar[bool] = False  # advantages() reads batch.logprobs (the TRL bridge adds them)
    sequence_level: ClassVar[bool] = False  # its sequence_reward can stand alone as a TRL reward function
    own_flops: float = 0.0  # set by a critic that trains parameters: FLOPs of this step's own update

    def __init__(self, config, tokenizer=None, world: World | None = None):
        self.config = config
        self.tokenizer = tokenizer
        # several processes: a critic that trains parameters sums their gradients over `world` (like the policy's)
        self.world = world or World()

    @classmethod
    def section(cls) -> str | None:
        """The config key of its section ("judge"), or None."""
        return cls.Config.name if cls.Config is not None else None

    def options(self):
        """This critic's config section (config.<section>)."""
        return getattr(self.config, self.section())

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        """The self-teacher pass this critic reads (default: sampled-token log-probs under privileged context)."""
        from scpo_lab.teacher import teacher_pass
        return teacher_pass(policy, batch, batch.verdicts, temperature=temperature, micro_batch_size=micro_batch_size,
                            engine=self.config.rollout_engine)

    @classmethod
    def check_sequence_level(cls, config) -> None:
        """Raise ValueError (one line) if this config's sequence_reward cannot serve as a TRL reward function."""

    def parameters(self) -> list:
        """The tensors the critic trains (kept identical across processes, checked at the end of a run)."""
        return []

    def extra_parameters(self) -> int:
        """Parameters the method adds beyond the policy and its adapter (heads, critics)."""
        return 0

    def update_flops(self) -> float:
        """FLOPs of the critic's own training in this step (its heads', discriminator's or value model's forward
        and backward: 6 N per token or row), added to the run's `flops` after after_update(). Its passes that read
        the batch are counted through TeacherOutput.tokens_read."""
        return self.own_flops

    @abc.abstractmethod
    def advantages(self, batch, group_advantages: torch.Tensor, teacher, step: int = 0) -> CriticResult:
        """The step's advantages from the rollouts, the verifier's group advantages [B] and the teacher pass."""

    def after_update(self, policy) -> dict | None:
        """Called once per training step, after the actor's update (all of its num_iterations optimizer steps),
        e.g. to move an EMA teacher or to train a critic; may return statistics for this step's metrics row."""

    def updates_actor(self) -> bool:
        """False while the policy must wait (a critic's warm-up): the trainer then skips the actor's update."""
        return True

    def state_dict(self) -> dict:
        """What a checkpoint must keep so a resumed run continues exactly (empty: stateless)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def outcome_bce(logits: torch.Tensor, passed: torch.Tensor, mask: torch.Tensor,
                n_tokens: float | None = None) -> torch.Tensor:
    """Binary cross-entropy of every state's logit [B, T] against its rollout's verifier outcome [B], summed over
    the masked states and divided by n_tokens (default: this batch's; several processes pass the count over all
    of them, so the processes' gradients sum to the whole batch's): the training loss of the probes and heads
    that predict success from hidden states."""
    labels = passed.float()[:, None].expand_as(logits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (loss * mask).sum() / (mask.sum().clamp(min=1) if n_tokens is None else max(n_tokens, 1.0))


def signal_stats(advantages: torch.Tensor, mask: torch.Tensor, group_advantages: torch.Tensor, group_size: int,
                 passed: torch.Tensor, signal: torch.Tensor | None = None) -> dict:
    """What a critic's advantages do where the verifier cannot tell a group's rollouts apart, and whether they
    agree with the verifier where it can. advantages [B] or [B, T] (the combined advantages the update uses);
    group_advantages [B] the verifier's; signal [B, T] the critic's per-token term (default: advantages - A_i).

    With a_i = the rollout's advantage (its token mean for per-token advantages) and zero-std groups those whose
    verifier advantages are all 0 (all pass or all fail):
        scpo/zero_std_spread  = sum over zero-std groups of var_g(a) / sum over all groups of var_g(a): the share of
                                the batch's within-group advantage variance that falls in zero-std groups
                                (0: the critic adds nothing there; nan: no within-group variance at all)
        scpo/zero_std_adv_std = mean over zero-std groups of std_g(a) (in advantage units: a verifier pass among
                                failures has ~1 under group scaling)
        scpo/agreement_auroc  = AUROC of the critic's group-centred term against the verifier's outcome, over the
                                groups the verifier does discriminate (0.5: unrelated; nan: none)
        scpo/signal_*         = mean and std of the signed signal, and the top-1% share of |signal|, over completion
                                tokens (zero_std_adv_std is a population std over each group's G rollouts)
    (These replace `scpo/rescued_*`, which counted a group as rescued whenever a raw critic score was non-zero: a
    judge with scores in (0, 1) or GAIL's softplus rescued every group by construction.)
    """
    from scpo_lab.stats import auroc

    mask = mask.float()
    n_tokens = mask.sum(1).clamp(min=1)
    per_row = advantages.float() if advantages.dim() == 1 else (advantages * mask).sum(1) / n_tokens  # a_i
    if signal is None:
        dense = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(mask)
        signal = (dense - group_advantages[:, None]) * mask
    n_groups = per_row.shape[0] // group_size
    grouped = per_row.view(n_groups, group_size)
    zero_std = group_advantages.view(n_groups, group_size).abs().amax(1) == 0
    variance = grouped.var(1, unbiased=False)
    total = float(variance.sum())
    added = ((signal * mask).sum(1) / n_tokens).view(n_groups, group_size)
    centred = added - added.mean(1, keepdim=True)
    discriminating = ~zero_std
    labels = passed.view(n_groups, group_size)[discriminating].reshape(-1)
    values = signal[mask > 0]
    magnitudes = values.abs().sort(descending=True).values
    top = max(1, int(round(0.01 * len(magnitudes))))
    mass = float(magnitudes.sum())
    return {
        "scpo/zero_std_spread": float(variance[zero_std].sum()) / total if total > 0 else float("nan"),
        "scpo/zero_std_adv_std": float(variance[zero_std].sqrt().mean()) if zero_std.any() else float("nan"),
        "scpo/agreement_auroc": auroc(centred[discriminating].reshape(-1), labels) if discriminating.any()
        else float("nan"),
        "scpo/signal_mean": float(values.mean()) if len(values) else 0.0,
        "scpo/signal_std": float(values.std()) if len(values) > 1 else 0.0,
        "scpo/signal_top1pct_share": float(magnitudes[:top].sum()) / mass if mass > 0 else 0.0,
    }
