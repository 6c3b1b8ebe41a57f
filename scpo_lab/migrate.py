"""Run folders written before run identity hashed only what a method reads (issue 17), found and renamed once.

Until then a run's hash covered the common fields, the `scpo` and `distill` sections always, the `value`,
`judge` and `irl` sections unless they held their defaults, and six model fields unless they held theirs
(LEGACY_* below, frozen: they describe folders already on disk, not today's configs). The trainer looks for the
folder a config had under that rule (RunDir.adopt): when it exists, verifies, and no folder exists under today's
rule, it is renamed to today's name and its config.json rewritten (today's full config, its original provenance,
the new hash and exclusions, and `migrated_from`), under the folder's lock. Its metrics, samples, checkpoints,
evaluations and DONE marker are kept as they are: a finished run loads without retraining, a killed one resumes.
"""

from __future__ import annotations


LEGACY_HASHED_SECTIONS = ("scpo", "distill")  # always in the old hash
LEGACY_LATE_SECTIONS = ("value", "judge", "irl")  # in the old hash only when not at their defaults
LEGACY_ABSENT_FIELDS = ("importance_sampling_level",)  # added with issue 19 (a choice, not a switch: hashed today)
LEGACY_LATE_MODEL_FIELDS = ("lora_target_modules", "gradient_checkpointing", "load_in_4bit", "fast_inference",
                            "gpu_memory_utilization", "max_seq_length")


def legacy_exclude(config) -> tuple[str, ...]:
    """The keys the old rule left out of `config`'s hash, beside runs.DEFAULT_EXCLUDE; with the fields added since
    that such folders never held: those of a switched-off option (TrainConfig.unused_fields) and
    LEGACY_ABSENT_FIELDS at their defaults."""
    from scpo_lab.config import ModelConfig, TrainConfig

    default_model = ModelConfig()
    sections = tuple(name for name, section in config.sections.items()
                     if name not in LEGACY_HASHED_SECTIONS
                     and (name not in LEGACY_LATE_SECTIONS or section == type(section)()))
    model = tuple(f"model.{name}" for name in LEGACY_LATE_MODEL_FIELDS
                  if getattr(config.model, name) == getattr(default_model, name))
    defaults = TrainConfig()
    added = tuple(name for name in LEGACY_ABSENT_FIELDS if getattr(config, name) == getattr(defaults, name))
    return ("precision",) + tuple(dict.fromkeys(config.unused_fields() + added)) + sections + model
