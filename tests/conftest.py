"""Shared fixtures."""

import pytest


@pytest.fixture
def fake_cpu(monkeypatch):
    """fake_cpu(flags, caps=None): make scpo_lab.precision see a CPU with these /proc/cpuinfo flags and these oneDNN /
    MKL caps (precision.KERNEL_CAPS; none unless given, so a test means the same under `make test-kernels`, which
    sets real caps)."""
    from scpo_lab import precision

    def fake(flags, caps=None):
        monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(precision, "kernel_caps", lambda: dict(caps or {}))
    return fake
