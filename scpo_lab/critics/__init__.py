"""Self-critics: each turns the self-teacher pass into a reward signal that enters the GRPO objective.

The registry below is the only list of methods: `grpo` (the verifier alone, no critic) and every registered
critic's `methods`. A critic module owns its config section, its formulas and its arm presets (critics/base.py);
a new one is one file and one line here, or `register(MyCritic)` from the user's own module
(docs/add_a_critic.md).
"""

from __future__ import annotations

from scpo_lab.critics.base import Critic, CriticResult, LossTerm, UpdateForward
from scpo_lab.critics.divergence import DivergenceCritic
from scpo_lab.critics.irl import IrlCritic
from scpo_lab.critics.judge import JudgeCritic
from scpo_lab.critics.random_reward import RandomRewardCritic
from scpo_lab.critics.rlsd import RlsdCritic
from scpo_lab.critics.selfdistill import OpsdCritic, SdpoCritic
from scpo_lab.critics.srpo import SrpoCritic
from scpo_lab.critics.value import HeadCritic, OnlineCritic

BASELINE = "grpo"  # the method without a critic: group-relative advantages of the verifier's reward
# the arms without a critic: grpo, and DAPO (Yu et al. 2025) as far as it is built here: grpo with dynamic sampling
# (trainer._dynamic_sampling), clip-higher (epsilon_high 0.28, epsilon 0.2) and the token-mean loss; its overlong
# reward shaping is not part of this arm
BASELINE_PRESETS = {"grpo": {"method": "grpo"},
                    "dapo": {"method": "grpo", "dynamic_sampling": True, "epsilon_high": 0.28,
                             "loss_agg": "token-mean"},
                    # GSPO's sequence-level ratio is 1 on the first pass, so at one pass it is GRPO; two passes
                    # over each batch make it differ (and cost a second update: compare it at equal FLOPs too)
                    "gspo": {"method": "grpo", "importance_sampling_level": "sequence", "num_iterations": 2}}

# sdpo / opsd are baselines, not self-critics, but they use the same teacher pass and hooks
CRITICS: dict[str, type[Critic]] = {}


def register(cls: type[Critic]) -> type[Critic]:
    """Add a critic class under each of its `methods` (usable as a class decorator). Its config section becomes
    a TrainConfig section for configs built afterwards; its presets become comparison arms."""
    if not (isinstance(cls, type) and issubclass(cls, Critic)) or not cls.methods:
        raise TypeError(f"register: {cls!r} must be a Critic subclass with a non-empty `methods` tuple")
    for method in cls.methods:
        owner = CRITICS.get(method)
        if method == BASELINE or (owner is not None and owner is not cls):
            raise ValueError(f"register: method {method!r} is already {'grpo' if owner is None else owner.__name__}")
    section = cls.section()
    for other in set(CRITICS.values()):
        if section is not None and other.section() == section and other.Config is not cls.Config:
            raise ValueError(f"register: section {section!r} is already {other.__name__}'s")
    if all(CRITICS.get(m) is cls for m in cls.methods):
        return cls  # registered already
    clash = sorted(set(cls.presets) & set(arms()))
    if clash:
        raise ValueError(f"register: arm {clash[0]!r} already exists")
    for method in cls.methods:
        CRITICS[method] = cls
    return cls


def unregister(cls: type[Critic]) -> None:
    """Remove a critic registered with register() (a test, a notebook trying a variant); configs built afterwards
    no longer have its section."""
    for method in cls.methods:
        if CRITICS.get(method) is cls:
            del CRITICS[method]


def methods() -> tuple[str, ...]:
    """Every method name: grpo, then the registered critics' in registration order."""
    return (BASELINE, *CRITICS)


def critic_class(method: str) -> type[Critic] | None:
    """The critic class of a method (None for grpo)."""
    return CRITICS.get(method)


def sections() -> dict[str, type]:
    """Config section name -> its dataclass, over every registered critic (in registration order)."""
    out: dict[str, type] = {}
    for cls in CRITICS.values():
        if cls.Config is not None:
            out.setdefault(cls.Config.name, cls.Config)
    return out


def section_of(method: str) -> str | None:
    """The config section a method reads (None: only the common fields)."""
    cls = CRITICS.get(method)
    return cls.section() if cls is not None else None


def arms() -> dict[str, dict]:
    """The comparison notebooks' arms: name -> config overrides, from grpo's and every critic's presets."""
    out = dict(BASELINE_PRESETS)
    for cls in dict.fromkeys(CRITICS.values()):
        out.update(cls.presets)
    return out


def make_critic(method: str, config, tokenizer=None, world=None) -> Critic | None:
    """The critic of a method, or None for grpo. The tokenizer is needed by options that read token text
    (scpo.aggregation = "line"); `world` (distributed.World) by critics that train parameters on several
    processes."""
    cls = CRITICS.get(method)
    return cls(config, tokenizer, world) if cls else None


# The registry: one line per critic module (a new critic: add its class here, or register() it elsewhere)
for _cls in (DivergenceCritic, HeadCritic, OnlineCritic, JudgeCritic, IrlCritic, SdpoCritic, OpsdCritic,
             RandomRewardCritic, SrpoCritic, RlsdCritic):
    register(_cls)

__all__ = ["BASELINE", "CRITICS", "Critic", "CriticResult", "DivergenceCritic", "HeadCritic", "IrlCritic",
           "JudgeCritic", "LossTerm", "OnlineCritic", "OpsdCritic", "RandomRewardCritic", "RlsdCritic", "SdpoCritic",
           "SrpoCritic", "UpdateForward", "arms", "critic_class", "make_critic", "methods", "register", "section_of",
           "sections", "unregister"]
