"""Which floating-point format the matrix products of a run use: `precision: auto | fp32 | bf16`.

bf16 covers the matrix products and nothing else:
  - the static engine's snapshot (rollouts and the teacher pass): the LoRA delta is merged in fp32,
    W' = W + (alpha/r) B A, then W' is stored in bf16 (half the bytes a decode step reads) and multiplied with
    bf16 activations; the KV cache is bf16; the residual stream, RMSNorm and the logits' log-softmax stay fp32;
  - every HF forward and backward of the step (the update, a reference or critic pass) under
    `torch.autocast("cpu", dtype=torch.bfloat16)`: linear / matmul in bf16, so the stored weights (frozen base
    and LoRA masters) and AdamW's state stay fp32. Three things keep that fast and right:
      * the update holds bf16 copies of the frozen Linear weights (`frozen_linears_in_bf16`): autocast caches
        casts only of leaves that require grad, so without them every forward re-casts the whole base model;
      * attention (HF's "sdpa") runs in fp32 inside the bf16 region (`_sdpa_in_fp32`): on CPU, PyTorch's bf16
        flash attention (forward + backward) measured ~2.5x slower than fp32 at the update's shapes, and
        attention is a small share of the FLOPs;
      * autocast's cache of those casts (LoRA masters, critic weights) is cleared after every optimizer step
        (`weights_changed`, an optimizer step post-hook; the EMA teacher's swap calls it too): a step changes the
        fp32 masters in place, and without the clear a second pass (num_iterations > 1) or a critic's next
        forward in the same step would use the stale bf16 copy. Any other in-place weight write inside a bf16
        region must call `weights_changed()`.
Log-softmax, log-probs, importance ratios, advantages, losses and the optimizer are fp32 in both precisions
(bf16 rounding of pi / pi_old is a known source of RL instability). In both precisions the update also runs each
LoRA Linear as one op (scpo_lab.lora_fused; with LoRA dropout 0, the default): under bf16 it casts x once and
accumulates the adapter's product into the base product's output.

`auto` (resolve): bf16 on a CPU with AMX-BF16; on a CPU with AVX512-BF16 but no AMX (or with oneDNN / MKL capped
by KERNEL_CAPS, as `make test-kernels` does), bf16 only where a short measurement at the update's matrix shape
(512 x 576 -> 1536, F.linear) finds bf16 at least BF16_MIN_SPEEDUP times faster than fp32 (the result is cached
per host, torch version, kernel set, thread count and caps under $SCPO_LAB_CACHE, so every process on one host
resolves the same way); fp32 everywhere else (an AVX2 host runs bf16 in software: a GRPO step measured 2.4x
slower, issue 20). On CUDA the GPU path's own choice stands: auto = bf16 weights, as
load_policy always did there; fp32 loads fp32 weights.

Run identity: the trainer adds `precision_used: bf16` to the run record (and so to the hash) when the resolved
precision differs from what the lab ran before this option existed (fp32 on CPU, bf16 on CUDA), so every
run folder cached before the option stays valid where auto resolves to fp32.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED = ("fp32", "bf16")
BF16_MIN_SPEEDUP = 1.3  # auto on an AVX512-BF16 host without AMX: bf16 must measure at least this much faster
_current: contextvars.ContextVar[str] = contextvars.ContextVar("scpo_lab_precision", default="fp32")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware(flags: set[str] | None = None) -> str | None:
    """'amx' (AMX-BF16 tiles), 'avx512_bf16' (bf16 dot products in AVX-512) or None (no bf16 instructions)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


def cpu_bf16_attention_works(flags: set[str] | None = None, kernels: str | None = None) -> bool:
    """False where torch's CPU bf16 scaled_dot_product_attention fails: on a CPU with AMX it packs its operands
    for AMX (VNNI) at 64+ query rows, which a forced non-AVX512 kernel set refuses (ATEN_CPU_CAPABILITY=avx2 or
    default on an AMX host: "pack_vnni2 is only supported when avx512 is supported"; torch 2.14.1)."""
    flags = cpu_flags() if flags is None else flags
    kernels = torch.backends.cpu.get_cpu_capability() if kernels is None else kernels
    return bf16_hardware(flags) != "amx" or kernels.startswith("AVX512")


def _best_seconds(work, repeats: int = 7) -> float:
    work()  # warm-up: oneDNN / MKL pick and build their kernels for the shape
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best  # the best of several: robust to another process taking the cores for a moment


def measure_bf16_speedup(rows: int = 512, d_in: int = 576, d_out: int = 1536) -> float:
    """fp32 seconds / bf16 seconds of F.linear at [rows, d_in] -> d_out (default: the update's shape)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, d_in, generator=gen), torch.randn(d_out, d_in, generator=gen)
    xb, wb = x.bfloat16(), w.bfloat16()
    fp32 = _best_seconds(lambda: torch.nn.functional.linear(x, w))
    bf16 = _best_seconds(lambda: torch.nn.functional.linear(xb, wb))
    return fp32 / bf16


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


# oneDNN and MKL choose their kernels by the CPU unless these cap them (make test-kernels does): a capped process
# may compute bf16 in software whatever the CPU has, so it measures instead of trusting the flags (resolve), and
# its measurement is its own (_host_key)
KERNEL_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def kernel_caps() -> dict[str, str]:
    """The KERNEL_CAPS set in this process's environment."""
    return {name: os.environ[name] for name in KERNEL_CAPS if os.environ.get(name)}


def amx_in_use() -> bool:
    """True where bf16 products run on AMX tiles: the CPU has AMX-BF16 and oneDNN / MKL are not capped below it."""
    return bf16_hardware() == "amx" and not kernel_caps()


def _host_key() -> str:
    caps = "".join(f"|{name}={value}" for name, value in kernel_caps().items())
    return (f"{cpu_model()}|{torch.__version__}|{torch.backends.cpu.get_cpu_capability()}|"
            f"threads={torch.get_num_threads()}{caps}")


_measured: dict[str, float] = {}


def cached_bf16_speedup() -> float:
    """measure_bf16_speedup() once per host key (CPU, torch, kernel set, threads, KERNEL_CAPS), kept in
    $SCPO_LAB_CACHE/host-precision.json so that later processes resolve `auto` the same way."""
    from scpo_lab.paths import cache_root

    key = _host_key()
    if key in _measured:
        return _measured[key]
    path = cache_root() / "host-precision.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = round(measure_bf16_speedup(), 3)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: measure again next process
    _measured[key] = float(table[key])
    return _measured[key]


def _device(device) -> torch.device:
    """None = where load_policy puts a model by default: CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve(precision: str, device: torch.device | str | None = None) -> str:
    """'auto' | 'fp32' | 'bf16' -> the precision a run on `device` uses: 'fp32' or 'bf16' (see the module doc)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: unknown {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if _device(device).type == "cuda":
        return "bf16"
    if amx_in_use():
        return "bf16"
    if bf16_hardware() is not None and cached_bf16_speedup() >= BF16_MIN_SPEEDUP:
        return "bf16"
    return "fp32"


def legacy(device: torch.device | str | None = None) -> str:
    """What the lab ran before the option existed: bf16 weights on CUDA, fp32 elsewhere."""
    return "bf16" if _device(device).type == "cuda" else "fp32"


def identity(resolved: str, device: torch.device | str | None = None) -> dict:
    """The run-record entry for the precision a run uses: {} where it is the pre-option default (so cached runs'
    hashes stay valid), else {"precision_used": resolved}."""
    return {} if resolved == legacy(device) else {"precision_used": resolved}


def current() -> str:
    """The precision set by the innermost `activate` ('fp32' outside any)."""
    return _current.get()


def snapshot_dtype() -> torch.dtype | None:
    """The static engine's snapshot dtype under the current precision: bfloat16 under bf16, else None (the
    weights' own dtype, as before the option existed)."""
    return torch.bfloat16 if current() == "bf16" else None


def cpu_autocast_bf16() -> bool:
    """True inside a CPU bf16 autocast region (activate("bf16") on CPU)."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def weights_changed() -> None:
    """Call after writing weights in place (an optimizer step, an EMA swap): autocast keys its cast cache by tensor,
    not by version, so until the cache is cleared a forward in the same autocast region multiplies with the bf16
    copy of the old values. Clearing is cheap (the next forward casts again) and harmless outside autocast."""
    torch.clear_autocast_cache()


def _clear_autocast_cache_after_step(optimizer, args, kwargs) -> None:
    """Optimizer step post-hook (every torch.optim optimizer, once installed): see weights_changed."""
    weights_changed()


_hook_handle = None


def _install_step_hook() -> None:
    global _hook_handle
    if _hook_handle is None:  # once per process: a global post-hook on every torch.optim optimizer
        _hook_handle = register_optimizer_step_post_hook(_clear_autocast_cache_after_step)


def _sdpa_in_fp32(original):
    """HF's "sdpa" attention, run in fp32 when called inside CPU bf16 autocast (autocast would cast query, key and
    value to bf16 -- after the rotary embedding they are fp32, the values bf16 -- so it is switched off and all
    three up-cast; the fp32 output is cast by the next bf16 linear); elsewhere `original` unchanged."""
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if query.device.type == "cpu" and cpu_autocast_bf16():
            with torch.autocast("cpu", enabled=False):
                return original(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return original(module, query, key, value, attention_mask, *args, **kwargs)
    attention.scpo_lab_fp32 = True
    return attention


@contextlib.contextmanager
def _hf_attention_in_fp32():
    """HF models look their attention function up at every forward (ALL_ATTENTION_FUNCTIONS["sdpa"]), so the
    fp32 wrapper is set there for the region and the previous entry put back after it."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as functions
        original = functions["sdpa"]
    except (ImportError, KeyError, AttributeError):  # transformers absent or reorganised: attention stays bf16
        yield
        return
    if getattr(original, "scpo_lab_fp32", False):  # an enclosing activate has set it
        yield
        return
    had_local = "sdpa" in getattr(functions, "_local_mapping", {})
    functions["sdpa"] = _sdpa_in_fp32(original)  # an instance-local entry, consulted before the global one
    try:
        yield
    finally:
        if had_local:
            functions["sdpa"] = original
        else:
            del functions["sdpa"]


@contextlib.contextmanager
def frozen_linears_in_bf16(model: torch.nn.Module):
    """Inside a CPU bf16 region: every frozen fp32 weight and bias of `model`'s nn.Linear layers (the base layers
    under LoRA, the lm_head) replaced by a bf16 copy, cast once here instead of by autocast at every forward; the
    original fp32 parameters are put back on exit (exception or not). Bit for bit what autocast computes (the same
    round-to-nearest cast, the same kernels), so it is a speed-up only. A weight tied to an embedding (the lm_head)
    is swapped in the Linear only; the embedding keeps fp32, so the residual stream stays fp32. Costs half the
    frozen weights' fp32 bytes for the region (the embedded model: ~270 MB). Outside a CPU bf16 region: nothing."""
    if not cpu_autocast_bf16():
        yield
        return
    copies: dict[int, torch.nn.Parameter] = {}
    swapped = []
    try:
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            for name in ("weight", "bias"):
                param = module._parameters.get(name)
                if param is None or param.requires_grad or param.dtype != torch.float32 or param.device.type != "cpu":
                    continue
                if id(param) not in copies:
                    copies[id(param)] = torch.nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
                swapped.append((module, name, param))
                module._parameters[name] = copies[id(param)]
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


@contextlib.contextmanager
def activate(resolved: str, device: torch.device | str | None = None):
    """Inside: the static engine snapshots its weights in `resolved`'s dtype, and with bf16 on CPU every HF
    forward/backward runs under torch.autocast("cpu", bfloat16), with HF attention in fp32 and autocast's cast
    cache cleared after every optimizer step (see the module doc). fp32 (or CUDA, whose weights already carry the
    dtype) changes nothing but `current()`."""
    if resolved not in RESOLVED:
        raise ValueError(f"precision: {resolved!r} is not resolved; allowed: {', '.join(RESOLVED)} (resolve() first)")
    token = _current.set(resolved)
    device_type = _device(device).type
    try:
        if resolved == "bf16" and device_type == "cpu":
            _install_step_hook()
            with torch.autocast("cpu", dtype=torch.bfloat16), _hf_attention_in_fp32():
                yield
        else:
            yield
    finally:
        _current.reset(token)
