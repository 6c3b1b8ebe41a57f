"""Where the lab keeps what it builds once: $SCPO_LAB_CACHE (default ~/.cache/scpo_lab) holds the converted
embedded model, the MBPP+ harness cache and the host's measured precision choice. A leaf module."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("SCPO_LAB_CACHE") or "~/.cache/scpo_lab").expanduser()
