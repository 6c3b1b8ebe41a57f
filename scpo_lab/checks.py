"""The one-line configuration checks every config section uses (the common fields in config.py and each
critic's own section in its module). A leaf module: it imports nothing from scpo_lab, so a critic module can
validate its section without importing the configuration that collects it.

Every failure is a ConfigError whose message names the field, the value and what is allowed, e.g.
``judge.samples: got 0; must be an integer >= 1``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration value is not allowed. The message is one line: field, value, what is allowed."""


def positive(name: str, value: Any, allow_zero: bool = False) -> None:
    # inf and nan pass a comparison with 0 (or fail it silently): an infinite learning rate trains NaN weights
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{name}: got {value!r}; must be a finite number {'>= 0' if allow_zero else '> 0'}")


def positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: got {value!r}; must be an integer >= 1")


def count(name: str, value: Any, what: str = "") -> None:
    """An integer >= 0 (`what` explains 0, e.g. "0 = full vocabulary")."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name}: got {value!r}; must be an integer >= 0{f' ({what})' if what else ''}")


def one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown {value!r}; allowed: {', '.join(allowed)}")


def unit_interval(name: str, value: Any) -> None:
    """A number in [0, 1]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"{name}: got {value!r}; must be in [0, 1]")


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: got {value!r}; must be true or false")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name"


def is_missing_model_path(name: str) -> bool:
    """A model name written as a path ("/x", "./x", "~/x", "a/b/c") that does not exist; "org/name" is a hub id."""
    if name in ("embedded", "tiny") or Path(name).expanduser().exists():
        return False
    return name.startswith(("/", ".", "~")) or ("/" in name and not _HUB_ID.match(name))


class Section:
    """Base of a critic's config dataclass: `name` is its key in the config ("judge" for judge.samples, ...);
    `check()` raises ConfigError on the first bad field, at construction and at every TrainConfig.validate()."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Override: one line per field, with the helpers above and f"{self.name}.<field>" as the name."""

    def field_name(self, field: str) -> str:
        return f"{self.name}.{field}"
