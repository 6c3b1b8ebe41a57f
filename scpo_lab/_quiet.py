"""Two messages third-party imports print on every start (peft imports torchao and bitsandbytes), dropped by name.

Both are logged once per process, on stderr, in every kernel and CLI run, and say nothing about the lab's runs:

- torch.utils._pytree: "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by
  torch.compile ..." — torchao registers its Enums as pytree constants, which this torch deprecates.
- bitsandbytes.backends.cpu.ops: "Failed to load CPU gemm_4bit_forward from kernels-community: No module named
  'kernels' ..." — an optional kernel for 4-bit matmuls on CPU; the lab loads 4-bit weights only through the
  unsloth backend, on a GPU.

Each is a filter on the one logger that emits it, matching the message's format string: every other record of
those loggers, and every other warning, still shows. install() runs in scpo_lab/__init__.py, before any module of
the lab imports peft, transformers or unsloth; a library imported before scpo_lab has already printed its message.
"""

from __future__ import annotations

import logging

# logger name -> the start of the format string (record.msg) of the one message dropped from it
NOISE = {
    "torch.utils._pytree": "%s is an Enum subclass and is now natively supported by torch.compile",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def install() -> None:
    """Add the filters (once: importing scpo_lab again, or a reload, adds none)."""
    for name, prefix in NOISE.items():
        logger = logging.getLogger(name)  # the library's own getLogger(__name__) returns this same object later
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
