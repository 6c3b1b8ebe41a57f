"""Self-critics: each turns the self-teacher pass into a reward signal that enters the GRPO objective.

One small interface (`Critic`); one module per variant. The trainer calls `critic.advantages(...)` after the
verifier and the teacher pass, and uses what it returns as the advantage of every completion token.
"""

from __future__ import annotations

from scpo_lab.critics.base import Critic, DistillTarget
from scpo_lab.critics.divergence import DivergenceCritic
from scpo_lab.critics.irl import IrlCritic
from scpo_lab.critics.judge import JudgeCritic
from scpo_lab.critics.selfdistill import OpsdCritic, SdpoCritic
from scpo_lab.critics.value import HeadCritic, OnlineCritic

# sdpo / opsd are baselines, not self-critics, but they use the same teacher pass and hooks
CRITICS: dict[str, type[Critic]] = {"scpo-divergence": DivergenceCritic, "scpo-head": HeadCritic,
                                    "scpo-critic": OnlineCritic, "scpo-judge": JudgeCritic, "scpo-irl": IrlCritic,
                                    "sdpo": SdpoCritic, "opsd": OpsdCritic}


def make_critic(method: str, config, tokenizer=None) -> Critic | None:
    """The critic of a method, or None for methods that skip the teacher pass (grpo, random-reward).
    The tokenizer is needed by options that read token text (scpo.aggregation = "line")."""
    cls = CRITICS.get(method)
    return cls(config, tokenizer) if cls else None


__all__ = ["CRITICS", "Critic", "DistillTarget", "DivergenceCritic", "HeadCritic", "IrlCritic", "JudgeCritic",
           "OnlineCritic", "OpsdCritic", "SdpoCritic", "make_critic"]
