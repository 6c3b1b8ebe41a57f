#!/usr/bin/env python
"""Where a training step's time goes, and what the self-teacher pass costs: grpo vs the two-pass methods.

For each method this trains a few steps on the `cpu` profile (embedded SmolLM2-135M-Instruct, arithmetic task,
the profile's default sizes unless flags say otherwise) in a fresh run folder, and reads the trainer's own per-step
timings (time/generation, time/verification, time/teacher, time/update, time/step) from metrics.jsonl.

    python benchmarks/step_profile.py                        # every method (VARIANTS), each in its own subprocess
    python benchmarks/step_profile.py --model tiny --steps 2 # smoke check of the plumbing (numbers mean nothing)
    python benchmarks/step_profile.py --method grpo           # one method, in this process

Reported per method: seconds per step of each phase averaged over the steps AFTER the first (step 1 is warm-up:
first-call allocations, lazy imports, kernel selection), generated tokens per step, generation tokens/s, and the
peak RSS of the process that trained it (ru_maxrss: the process's peak so far, so each method runs in its own
subprocess to get its own peak; model loading is included in it). Then the two targets:

    teacher overhead = mean scpo-divergence time/teacher / mean grpo time/step   (target <= 25 %)
    peak RSS         = max over methods                                         (target < 4 GiB)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from common import peak_rss_mib, print_host, run_child, scratch_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download: every model here is local

# every method with a different step: label -> (method, config overrides)
VARIANTS = {"grpo": ("grpo", {}),
            # DAPO (the arm in scpo_lab.critics.BASELINE_PRESETS): dynamic sampling's extra rounds are in its
            # generation time and tokens/step
            "dapo": ("grpo", {"dynamic_sampling": True, "epsilon_high": 0.28, "loss_agg": "token-mean"}),
            "scpo-divergence": ("scpo-divergence", {}), "scpo-head": ("scpo-head", {}),
            "scpo-critic": ("scpo-critic", {}),
            "scpo-critic-separate": ("scpo-critic", {"value.critic": "separate"}),
            "sdpo": ("sdpo", {}), "opsd": ("opsd", {}), "srpo": ("srpo", {}), "rlsd": ("rlsd", {}),
            # V2's other extractors: a second (student-context) pass for the distribution signals, the pairwise
            # ranking reward, the online probe
            "scpo-divergence-jsd": ("scpo-divergence", {"scpo.signal": "jsd"}),
            "scpo-divergence-pairwise": ("scpo-divergence", {"scpo.signal": "pairwise-rank"}),
            "scpo-divergence-probe": ("scpo-divergence", {"scpo.signal": "probe"}),
            "scpo-judge": ("scpo-judge", {}),
            "scpo-irl-A": ("scpo-irl", {"irl.expert": "passing"}),
            "scpo-irl-B": ("scpo-irl", {"irl.expert": "teacher"}),
            # issue 19's objective options. GSPO at mu = 1 is GRPO bit for bit (ratio 1): it runs at mu = 2, beside
            # grpo at mu = 2, so its row is the sequence-level ratio's cost and not the second pass's
            "grpo-mu2": ("grpo", {"num_iterations": 2}),
            "gspo": ("grpo", {"importance_sampling_level": "sequence", "num_iterations": 2}),
            # DAPO's soft overlong punishment over the last quarter of max_new_tokens (OVERLONG_SHARE: 12 of the cpu
            # profile's 48), and truncated rollouts masked out of the loss
            "overlong": ("grpo", {}),
            "mask-truncated": ("grpo", {"mask_truncated_completions": True})}
OVERLONG_SHARE = {"overlong": 4}  # variant -> overlong_buffer = max_new_tokens // share (follows --max-new-tokens)
METHODS = tuple(VARIANTS)
PHASES = ("generation", "verification", "teacher", "update", "step")
MARKER = "STEP_PROFILE_JSON "  # prefix of the one JSON line a child process prints for its parent
TEACHER_TARGET = 0.25  # teacher seconds / grpo step seconds
BF16_TARGET = 2.5  # grpo step seconds fp32 / bf16, on a host with AMX-BF16 (issue 20)
RSS_TARGET_MIB = 4096.0  # < 4 GiB


def _overrides(args) -> dict:
    out = {"steps": args.steps, "seed": args.seed, "precision": args.precision}
    if args.model is not None:
        out["model.name"] = args.model
    if args.prompts is not None:
        out["prompts_per_step"] = args.prompts
    if args.group_size is not None:
        out["group_size"] = args.group_size
    if args.max_new_tokens is not None:
        out["max_new_tokens"] = args.max_new_tokens
    return out


def profile_method(method: str, args, runs_dir: str) -> dict:
    """Train `method` for args.steps steps in a fresh folder under runs_dir; summarise its metrics."""
    import torch

    from scpo_lab.config import make_config
    from scpo_lab.trainer import policy_for, train

    name, options = VARIANTS[method]
    config = make_config("cpu", method=name, **options, **_overrides(args))
    if method in OVERLONG_SHARE:
        config = config.replace(overlong_buffer=max(1, config.max_new_tokens // OVERLONG_SHARE[method])).validate()
    t0 = time.perf_counter()
    policy = policy_for(config)
    load_s = time.perf_counter() - t0
    # a folder of its own: a finished run of the same config is never found and reused
    run_root = tempfile.mkdtemp(prefix=f"{method}-", dir=runs_dir)
    t0 = time.perf_counter()
    run = train(config, policy, progress=False, runs_dir=run_root)
    train_s = time.perf_counter() - t0
    rows = sorted(run.dir.read_metrics(), key=lambda r: r["step"])
    if len(rows) != config.steps:
        raise RuntimeError(f"expected {config.steps} metric rows in {run.path}, found {len(rows)}")

    cumulative = [0] + [int(r["generated_tokens"]) for r in rows]
    tokens = [b - a for a, b in zip(cumulative, cumulative[1:])]
    warmup_excluded = len(rows) > 1
    first = 1 if warmup_excluded else 0
    measured, measured_tokens = rows[first:], tokens[first:]
    mean = {p: sum(r[f"time/{p}"] for r in measured) / len(measured) for p in PHASES}
    gen_time = sum(r["time/generation"] for r in measured)
    from scpo_lab import precision

    return {
        "method": method if args.precision == "fp32" else f"{method} [{args.precision}]",
        "base_method": method,
        "precision": precision.resolve(config.precision),
        "first_pass_ratio_max": max(r.get("ratio/first_pass_max", float("nan")) for r in rows),
        "first_pass_ratio_mean": sum(r.get("ratio/first_pass_mean", float("nan")) for r in rows) / len(rows),
        "model": config.model.name,
        "steps": config.steps,
        "measured_steps": len(measured),
        "warmup_excluded": warmup_excluded,
        "prompts_per_step": config.prompts_per_step,
        "group_size": config.group_size,
        "max_new_tokens": config.max_new_tokens,
        "seconds": mean,  # per step, averaged over the measured steps
        "first_step_seconds": rows[0]["time/step"],
        "tokens_per_step": sum(measured_tokens) / len(measured),
        # dynamic sampling: sampling rounds per step (None for methods without it)
        "sampling_rounds": (sum(r["sampling/rounds"] for r in measured) / len(measured)
                            if "sampling/rounds" in measured[0] else None),
        "generation_tokens_per_s": sum(measured_tokens) / gen_time if gen_time > 0 else float("nan"),
        "peak_rss_mib": peak_rss_mib(),
        "extra_params": int(rows[-1].get("params/extra", 0)),
        "load_s": load_s,
        "train_s": train_s,
        "torch_threads": torch.get_num_threads(),
        "run_dir": str(run.path),
    }


def run_in_subprocess(method: str, args, runs_dir: str, precision: str = "fp32") -> dict | None:
    """`--method NAME` in a fresh interpreter (its own peak RSS); its stderr passes through."""
    cmd = ["--method", method, "--precision", precision, "--steps", str(args.steps),
           "--seed", str(args.seed), "--runs-dir", runs_dir]
    for flag, value in (("--model", args.model), ("--prompts", args.prompts), ("--group-size", args.group_size),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None:
            cmd += [flag, str(value)]
    return run_child(__file__, method, cmd, MARKER)


def print_markdown(results: list[dict]) -> None:
    """The same numbers as a Markdown table (for benchmarks/README.md)."""
    grpo = next((r["seconds"] for r in results if r.get("base_method", r["method"]) == "grpo"), None)
    print("\n| method | generation s | teacher s | update s | step s | added vs grpo (teacher / whole step) | "
          "tokens/step | extra parameters | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        sec = r["seconds"]
        added = "-" if grpo is None or r["method"] == "grpo" else (
            f"{100 * sec['teacher'] / grpo['step']:+.0f} % / {100 * (sec['step'] / grpo['step'] - 1):+.0f} %")
        print(f"| {r['method']} | {sec['generation']:.2f} | {sec['teacher']:.2f} | {sec['update']:.2f} | "
              f"{sec['step']:.2f} | {added} | {r['tokens_per_step']:,.0f} | {r.get('extra_params', 0):,} | "
              f"{r['peak_rss_mib']:,.0f} MiB |")


def print_table(results: list[dict]) -> None:
    r0 = results[0]
    print(f"\nmodel {r0['model']}, {r0['prompts_per_step']} prompts x {r0['group_size']} rollouts, "
          f"max {r0['max_new_tokens']} new tokens, {r0['steps']} steps, torch threads {r0['torch_threads']}")
    if r0["warmup_excluded"]:
        print(f"seconds per step averaged over steps 2..{r0['steps']} (step 1 = warm-up, excluded; "
              f"its total is in 'step 1 s')")
    else:
        print("only 1 step: it is the warm-up step and is reported as is (use --steps >= 2 to exclude it)")
    grpo = next((r["seconds"] for r in results if r.get("base_method", r["method"]) == "grpo"), None)

    def added(r):  # what the method adds to a GRPO step: its teacher pass, and the whole-step difference
        if grpo is None or r.get("base_method", r["method"]) == "grpo":
            return "-"
        teacher, whole = r["seconds"]["teacher"] / grpo["step"], r["seconds"]["step"] / grpo["step"] - 1
        return f"{100 * teacher:+.0f}% / {100 * whole:+.0f}%"

    head = ("method", "generation", "verification", "teacher", "update", "total", "added vs grpo", "step 1 s",
            "tokens/step", "rounds/step", "gen tok/s", "extra params", "peak RSS MiB")
    rows = [(r["method"], *(f"{r['seconds'][p]:.3f}" for p in PHASES), added(r), f"{r['first_step_seconds']:.3f}",
             f"{r['tokens_per_step']:.0f}",
             "-" if r.get("sampling_rounds") is None else f"{r['sampling_rounds']:.2f}",
             f"{r['generation_tokens_per_s']:.1f}", f"{r.get('extra_params', 0):,}",
             f"{r['peak_rss_mib']:.0f}")
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print("added vs grpo = teacher-pass seconds / grpo step seconds, then the whole step's difference to grpo (from "
          "step 2 on the policies differ, so completion lengths and generation times can too)")
    print("tokens/step = every sampled completion token, dynamic sampling's discarded groups included; rounds/step = "
          "its sampling rounds per step (a round samples the prompts still missing)")
    print("extra params = parameters the method adds beyond the policy and its LoRA adapter (value heads, critic "
          "adapters, a separate critic model)")
    print("peak RSS = ru_maxrss of the process that trained the method (its peak so far, model load included)")


def print_targets(results: list[dict]) -> None:
    by = {r["method"]: r for r in results}
    print()
    if "grpo" in by and "scpo-divergence" in by:
        teacher = by["scpo-divergence"]["seconds"]["teacher"]
        grpo_step = by["grpo"]["seconds"]["step"]
        ratio = teacher / grpo_step if grpo_step > 0 else float("nan")
        verdict = "MEETS" if ratio <= TEACHER_TARGET else "MISSES"
        print(f"teacher overhead: {teacher:.3f} s teacher / {grpo_step:.3f} s grpo step = {100 * ratio:.1f} % "
              f"(target <= {100 * TEACHER_TARGET:.0f} %): {verdict}")
        scpo_step = by["scpo-divergence"]["seconds"]["step"]
        print(f"  (whole step: scpo-divergence {scpo_step:.3f} s vs grpo {grpo_step:.3f} s = "
              f"{100 * (scpo_step / grpo_step - 1):+.1f} %; from step 2 on the two policies differ, so their rollouts "
              f"and generation times can too)")
    else:
        print("teacher overhead: needs both grpo and scpo-divergence results")
    peak = max(r["peak_rss_mib"] for r in results)
    worst = max(results, key=lambda r: r["peak_rss_mib"])["method"]
    verdict = "MEETS" if peak < RSS_TARGET_MIB else "MISSES"
    print(f"peak RSS: {peak:.0f} MiB ({worst}) (target < {RSS_TARGET_MIB:.0f} MiB = 4 GiB): {verdict}")
    by_precision = {r["precision"]: r for r in results if r.get("base_method") == "grpo"}
    if {"fp32", "bf16"} <= set(by_precision):
        fp32, bf16 = by_precision["fp32"], by_precision["bf16"]
        speedup = fp32["seconds"]["step"] / bf16["seconds"]["step"]
        update = fp32["seconds"]["update"] / bf16["seconds"]["update"]
        generation = fp32["seconds"]["generation"] / bf16["seconds"]["generation"]
        verdict = "MEETS" if speedup >= BF16_TARGET else "MISSES"
        print(f"grpo step fp32 / bf16: {speedup:.2f}x (update {update:.2f}x, generation {generation:.2f}x) "
              f"(target >= {BF16_TARGET}x on a host with AMX-BF16): {verdict}")
        print(f"  first-pass ratio pi/pi_sampler, bf16: mean {bf16['first_pass_ratio_mean']:.4f}, max "
              f"{bf16['first_pass_ratio_max']:.4f} (fp32: mean {fp32['first_pass_ratio_mean']:.5f}, max "
              f"{fp32['first_pass_ratio_max']:.5f})")
    if results[0]["model"] == "tiny":
        print("NOTE: --model tiny is a plumbing check; its timings and memory say nothing about the targets.")


def _load_saved(path: str | None) -> dict:
    """(method, requested precision) -> result, from a --save file ({} when there is none yet)."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["base_method"], r["requested_precision"]): r for r in rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, help="profile only this method, in this process")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated methods, each in its own subprocess (default: {','.join(METHODS)})")
    parser.add_argument("--steps", type=int, default=3, help="training steps per method; step 1 is warm-up")
    parser.add_argument("--model", default=None, help="'embedded' (cpu profile default), 'tiny', or a folder")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default: cpu profile's)")
    parser.add_argument("--group-size", type=int, default=None, help="rollouts per prompt (default: profile's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the cpu profile's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                        help="the config's precision (with --method)")
    parser.add_argument("--precisions", default="fp32",
                        help="comma-separated precisions, each method run in each (e.g. fp32,bf16)")
    parser.add_argument("--save", default=None,
                        help="a JSONL file: each method's result is appended as it finishes, and methods already in "
                             "it are not run again (a killed profile resumes; the table covers the whole file)")
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    parser.add_argument("--runs-dir", default=None,
                        help="where run folders go (a fresh sub-folder per method; default: a temp dir, deleted)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    with scratch_dir(args.runs_dir, "step_profile-") as runs_dir:
        if args.method:
            result = profile_method(args.method, args, runs_dir)
            print_table([result])
            print(MARKER + json.dumps(result), flush=True)
            return 0
        print_host()
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            parser.error(f"--methods: unknown {unknown[0]!r}; allowed: {', '.join(METHODS)}")
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        if any(p not in ("auto", "fp32", "bf16") for p in precisions):
            parser.error(f"--precisions: {args.precisions!r}; allowed: auto, fp32, bf16 (comma-separated)")
        jobs = [(m, p) for m in methods for p in precisions]
        saved = _load_saved(args.save)
        results = []
        for m, p in jobs:
            result = saved.get((m, p)) or run_in_subprocess(m, args, runs_dir, p)
            if result is None:
                continue
            if args.save and (m, p) not in saved:
                with open(args.save, "a") as f:  # one line per finished method: a kill loses only the running one
                    f.write(json.dumps({**result, "requested_precision": p}) + "\n")
            results.append(result)
        if not results:
            print("no method finished", file=sys.stderr)
            return 1
        print_table(results)
        print_targets(results)
        if args.markdown:
            print_markdown(results)
        return 0 if len(results) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
