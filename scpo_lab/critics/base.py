from __future__ import annotations

import abc
from dataclasses import dataclass

import torch


@dataclass
class DistillTarget:
    """What a distillation baseline adds to the update: pull the student toward these teacher log-probs."""
    ids: torch.Tensor  # [B, T, k] support token ids
    logprobs: torch.Tensor  # [B, T, k] teacher log-probs on the support (no gradient)
    rows: torch.Tensor  # [B] bool: the row has a teacher
    weight: float  # multiplies the distillation loss (1 - grpo_weight)
    alpha: float  # 0 forward KL, 1 reverse KL, between: generalized JSD
    token_clip: float  # 0 = off


class Critic(abc.ABC):
    """Turns (rollouts, verifier rewards, teacher pass) into advantages.

    advantages(...) returns a [B] (one value per rollout) or [B, T] (per completion token) tensor and a dict of
    float statistics logged under `scpo/` each step.
    """

    needs_teacher: bool = True
    # The critic's own score of each rollout in the last advantages() call ([B], before any mix with the verifier),
    # or None. The trainer logs its agreement with the verifier each step (metrics.hacking_stats, hack/*).
    proxy: torch.Tensor | None = None
    proxy_is_probability: bool = False  # the proxy is on the verifier's [0, 1] scale (a judge's score, a D)
    # Sequence-level critics: what each rollout's reward gains before the critic's weight ([B]; r'_i = r_i + w s_i),
    # set by advantages(); the TRL bridge hands it to GRPOTrainer as a reward function's output.
    sequence_reward: torch.Tensor | None = None

    def __init__(self, config, tokenizer=None):
        self.config = config
        self.tokenizer = tokenizer

    def teacher_pass(self, policy, batch, *, temperature: float, micro_batch_size: int):
        """The self-teacher pass this critic reads (default: sampled-token log-probs under privileged context)."""
        from scpo_lab.teacher import teacher_pass
        return teacher_pass(policy, batch, batch.verdicts, temperature=temperature, micro_batch_size=micro_batch_size,
                            engine=self.config.rollout_engine)

    def extra_parameters(self) -> int:
        """Parameters the method adds beyond the policy and its adapter (heads, critics)."""
        return 0

    @abc.abstractmethod
    def advantages(self, batch, group_advantages: torch.Tensor, teacher) -> tuple[torch.Tensor, dict]:
        ...

    def distillation_target(self, batch, teacher) -> DistillTarget | None:
        """An extra distillation loss for the update (baselines only); evaluators return None."""
        return None

    def after_update(self, policy) -> dict | None:
        """Called after each optimizer step (e.g. to move an EMA teacher, or to train a critic); may return
        statistics for this step's metrics row."""

    def updates_actor(self) -> bool:
        """False while the policy must wait (a critic's warm-up): the trainer then skips the actor's update."""
        return True

    def state_dict(self) -> dict:
        """What a checkpoint must keep so a resumed run continues exactly (empty: stateless)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def outcome_bce(logits: torch.Tensor, passed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean binary cross-entropy of every state's logit [B, T] against its rollout's verifier outcome [B]:
    the training loss of the probes, heads that predict success from hidden states."""
    labels = passed.float()[:, None].expand_as(logits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def signal_stats(signal: torch.Tensor, mask: torch.Tensor, group_advantages: torch.Tensor, group_size: int) -> dict:
    """Collapse accounting and the shape of a critic's per-token signal (what it adds to the GRPO advantage).

    rescued = groups where GRPO's advantage is zero for every rollout (all pass or all fail) but the critic's
    signal is non-zero somewhere: those are the groups the critic turns into training signal.
    top1pct_share = share of the total |signal| carried by the 1% of tokens with the largest |signal|.
    """
    mask = mask.float()
    n_groups = signal.shape[0] // group_size
    zero_std = (group_advantages.view(n_groups, group_size).abs().amax(1) == 0)
    active = ((signal.abs() * mask).view(n_groups, -1).amax(1) > 1e-8)
    values = signal[mask > 0]
    magnitudes = values.abs().sort(descending=True).values
    top = max(1, int(round(0.01 * len(magnitudes))))
    total = float(magnitudes.sum())
    return {
        "scpo/rescued_frac": float((zero_std & active).float().mean()),  # of all groups
        "scpo/rescued_of_zero_std": float((zero_std & active).sum() / zero_std.sum()) if zero_std.any()
        else float("nan"),
        "scpo/signal_mean": float(values.mean()) if len(values) else 0.0,
        "scpo/signal_std": float(values.std()) if len(values) > 1 else 0.0,
        "scpo/signal_top1pct_share": float(magnitudes[:top].sum()) / total if total > 0 else 0.0,
    }
