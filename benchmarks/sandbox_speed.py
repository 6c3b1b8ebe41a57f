"""Sandbox throughput: programs per second at a few worker counts.

    python benchmarks/sandbox_speed.py                         # workers 1, 2, 4; both workloads
    python benchmarks/sandbox_speed.py --workers 1,2,4,8 --programs 64

Workloads:
  trivial    `print(sum(range(1000)))`: the fixed cost of one sandboxed run (interpreter start, prelude,
             rlimits, audit hook, temp folder, process-group cleanup)
  mbppplus   real MBPP+ verification jobs: the first N canonical solutions of the train split, each called on all
             its base + plus inputs (~100 calls) by the functional harness, as a candidate is graded

Each cell runs every program once (after one warm-up run) and reports N / wall seconds.

    python benchmarks/sandbox_speed.py --mbppplus-all          # also: all 378 canonical solutions, end to end

--mbppplus-all times, with an empty cache (a temporary $SCPO_LAB_CACHE), (1) computing the expected outputs of
all 378 MBPP+ tasks from their canonical solutions and (2) grading those same solutions as completions through
MBPPPlusTask.verify_batch, and counts how many pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_host  # noqa: E402

from scpo_lab.sandbox import Limits, SandboxJob, run_program, run_programs  # noqa: E402


def trivial_jobs(n: int) -> list[SandboxJob]:
    return [SandboxJob("print(sum(range(1000)))\n") for _ in range(n)]


def mbppplus_jobs(n: int) -> list[SandboxJob]:
    from scpo_lab.tasks.code import functional_job
    from scpo_lab.tasks.mbppplus import MBPPPlusTask, task_inputs

    problems = MBPPPlusTask().problems("train")[:n]
    limits = Limits(wall_s=60.0, cpu_s=60)
    return [functional_job(p.answer, p.meta["entry_point"], task_inputs(p.meta, "plus"), limits) for p in problems]


def measure(jobs: list[SandboxJob], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = run_programs(jobs, workers)
    elapsed = time.perf_counter() - start
    ok = sum(r.status == "passed" for r in results)
    return len(jobs) / elapsed, ok


def mbppplus_all(workers: int) -> None:
    """Expected outputs for all 378 tasks, then every canonical solution graded as a completion."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scpo-sandbox-bench-") as cache:
        os.environ["SCPO_LAB_CACHE"] = cache
        from scpo_lab.tasks.mbppplus import MBPPPlusTask, expected_outputs

        task = MBPPPlusTask(workers=workers)
        problems = task.problems("train") + task.problems("test")
        start = time.perf_counter()
        expected_outputs(problems, workers)
        t_expected = time.perf_counter() - start
        start = time.perf_counter()
        verdicts = task.verify_batch(problems, [f"```python\n{p.answer}\n```" for p in problems])
        t_verify = time.perf_counter() - start
    n_tests = sum(v.details["tests_total"] for v in verdicts)
    print(f"\nMBPP+ canonical solutions, workers={workers}: {sum(v.passed for v in verdicts)}/{len(problems)} pass; "
          f"expected outputs {t_expected:.1f} s, grading {t_verify:.1f} s ({len(problems) / t_verify:.1f} "
          f"programs/s, {n_tests} test calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--programs", type=int, default=48, help="programs per cell")
    parser.add_argument("--workloads", default="trivial,mbppplus")
    parser.add_argument("--mbppplus-all", action="store_true", help="also time all 378 canonical solutions")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    print_host()
    builders = {"trivial": trivial_jobs, "mbppplus": mbppplus_jobs}
    run_program(SandboxJob("pass"))  # warm-up: page cache for the interpreter and the stdlib
    rows = []
    for workload in args.workloads.split(","):
        jobs = builders[workload](args.programs)
        for w in workers:
            rate, ok = measure(jobs, w)
            rows.append((workload, w, len(jobs), rate, ok))
            print(f"  {workload} workers={w}: {rate:.1f} programs/s", file=sys.stderr, flush=True)
    print("\n| workload | workers | programs | programs/s | passed |")
    print("| --- | --- | --- | --- | --- |")
    for workload, w, n, rate, ok in rows:
        print(f"| {workload} | {w} | {n} | {rate:.1f} | {ok}/{n} |")
    if args.mbppplus_all:
        mbppplus_all(max(workers))


if __name__ == "__main__":
    main()
