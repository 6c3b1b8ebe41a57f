"""What the benchmark scripts share: the host line every one prints first, peak RSS, one child process per
measured variant, a scratch folder."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_child(script: str, name: str, cmd_args: list[str], marker: str) -> dict | None:
    """Run `script` with `cmd_args` in a fresh interpreter (so its peak RSS is its own) and return the JSON it
    printed after `marker`; its stderr passes through. None (with its stdout shown) when it failed."""
    cmd = [sys.executable, os.path.abspath(script), *cmd_args]
    print(f"[{name}] running: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    results = [json.loads(line[len(marker):]) for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not results:
        print(f"[{name}] FAILED (exit {proc.returncode}); its stdout:\n{proc.stdout}", file=sys.stderr)
        return None
    return results[-1]


@contextlib.contextmanager
def scratch_dir(path: str | None, prefix: str):
    """`path` (created) if given, else a temporary folder deleted afterwards."""
    if path is not None:
        os.makedirs(path, exist_ok=True)
        yield path
        return
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def print_load() -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} on {os.cpu_count()} cores (timings are only meaningful on a quiet machine)")


def cpu_model() -> str:
    """The CPU's marketing name (scpo_lab.precision reads /proc/cpuinfo), or platform.processor() elsewhere."""
    from scpo_lab.precision import cpu_model as proc_cpu_model
    import platform
    return proc_cpu_model() or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector ISA level that matters for these kernels: AVX2 / AVX-512 / AVX512-BF16 / AMX (most capable
    last), from the CPU flags the package reads for `precision: auto`; torch's own kernel choice
    (`get_cpu_capability`, which ATEN_CPU_CAPABILITY can lower) is printed beside it."""
    from scpo_lab.precision import cpu_flags
    flags = cpu_flags()
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                   ("amx_bf16", "AMX-BF16")) if flag in flags]
    return " / ".join(isa) or "no AVX2"


def _rate(work, units_per_call: float, seconds: float) -> float:
    """units per second of `work()`, calls repeated for `seconds` after one warm-up call."""
    import time
    work()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        calls += 1
    return units_per_call * calls / (time.perf_counter() - start)


def host_measurements(seconds: float = 3.0) -> dict:
    """Memory read bandwidth (GB/s: a 256 MiB fp32 tensor summed, larger than any cache) and 2048 x 2048 GEMM
    GFLOP/s in fp32 and bf16, at torch's current thread count; `seconds` in all, split between the three."""
    import torch
    share = seconds / 3
    big = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    bandwidth = _rate(lambda: big.sum(), big.numel() * 4 / 1e9, share)
    del big
    out = {"mem_read_gbs": bandwidth}
    n = 2048
    for dtype, key in ((torch.float32, "gemm_fp32_gflops"), (torch.bfloat16, "gemm_bf16_gflops")):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[key] = _rate(lambda: a @ b, 2 * n ** 3 / 1e9, share)
    return out


def host_line(seconds: float = 3.0, measurements: dict | None = None) -> str:
    """One line naming the host a benchmark ran on: CPU model, ISA, torch's kernel set, threads, and a short
    measurement of memory bandwidth and GEMM throughput (so a figure can be read against its machine)."""
    import torch
    m = measurements or host_measurements(seconds)
    return (f"host: {cpu_model()} | ISA {cpu_isa()} | torch {torch.__version__} kernels "
            f"{torch.backends.cpu.get_cpu_capability()} | threads {torch.get_num_threads()} of "
            f"{os.cpu_count()} cores | mem read {m['mem_read_gbs']:.1f} GB/s | GEMM 2048 fp32 "
            f"{m['gemm_fp32_gflops']:.0f} GFLOP/s, bf16 {m['gemm_bf16_gflops']:.0f} GFLOP/s")


def print_host() -> dict:
    """The host line, then the load average: every benchmark's output begins with these. Returns the host's
    measurements (host_measurements), e.g. the bandwidth a memory floor is computed from."""
    m = host_measurements()
    print(host_line(measurements=m), flush=True)
    print_load()
    return m
