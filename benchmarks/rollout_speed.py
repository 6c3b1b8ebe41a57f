#!/usr/bin/env python
"""Rollout throughput: scpo_lab's static-cache engine vs HF `generate`, same prompts, same sizes, one run.

    python benchmarks/rollout_speed.py                         # batches 8,16,32,64; 128 new tokens
    python benchmarks/rollout_speed.py --batches 16 --max-new-tokens 32 --profile   # + where a step's ms go

Model: the embedded SmolLM2-135M-Instruct, fp32, with its LoRA adapter attached (as during training; B is
random so the adapter changes the outputs and the engine must merge it). Prompts: arithmetic problems.
Sampling: temperature 1, no top-k, no top-p on every side. Every row generates exactly `--max-new-tokens` tokens
(HF: min_new_tokens = max_new_tokens; ours: no EOS token), so tokens/s = B x T / wall seconds, prefill included.

Two tables:
  1. B distinct prompts (pure decoding). Columns: HF generate, our HF-forward loop (engine="hf"), the static
     engine with F.linear (USE_ONEDNN=False), the static engine (default), and static / HF generate.
  2. The RL shape: B/G prompts x G samples (G = --group-size). HF: num_return_sequences=G (each copy prefilled);
     ours: one prefill per prompt, cache copied G times.
  3. The static engine in each precision (--precisions; default fp32,bf16 where the CPU has bf16 instructions):
     tokens/s, ms per decode step, the weights' bytes one step reads and the floor they set at the host's
     measured memory bandwidth (printed with the host line), and floor / measured.
Each cell is the best of --repeats timed calls after one untimed warm-up call of the same shape (oneDNN builds
its kernels for a new shape on the first call; the trainer pays that once per run).
"""

from __future__ import annotations

import argparse
import os
import time

from common import print_host

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: kernel selection, first-touch allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="8,16,32,64", help="comma-separated batch sizes (rows)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per cell (best is kept)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--profile", action="store_true", help="also profile decode steps at the first batch size")
    parser.add_argument("--precisions", default=None,
                        help="table 3's precisions (default: fp32,bf16 where the CPU has bf16 instructions, else fp32)")
    parser.add_argument("--skip-hf", action="store_true", help="only table 3 (the static engine per precision)")
    args = parser.parse_args()

    import torch

    from scpo_lab import engine
    from scpo_lab.models import load_policy
    from scpo_lab.rollout import encode_prompts, generate
    from scpo_lab.tasks import get_task

    host = print_host()
    torch.manual_seed(0)
    policy = load_policy(args.model, backend="hf")
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model, tok = policy.model.eval(), policy.tokenizer
    batches = [int(b) for b in args.batches.split(",")]
    problems = get_task("arithmetic").problems("train", n=max(batches), seed=0)
    T, G = args.max_new_tokens, args.group_size

    def hf_generate(ids, mask, repeats):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=T, min_new_tokens=T,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=repeats,
                                 pad_token_id=tok.pad_token_id)
        assert out.shape[1] - ids.shape[1] == T

    def ours(ids, mask, repeats, name, onednn=True):
        engine.USE_ONEDNN = onednn
        try:
            tokens, completion_mask, _, _ = generate(
                model, ids, mask, repeats=repeats, max_new_tokens=T, temperature=1.0, top_p=1.0, eos_token_ids=[],
                pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0), engine=name)
        finally:
            engine.USE_ONEDNN = True
        assert int(completion_mask.sum()) == ids.shape[0] * repeats * T

    def row(batch, n_prompts, repeats, variants):
        ids, mask = encode_prompts(tok, [p.prompt for p in problems[:n_prompts]], policy.device)
        rates = {}
        for label, fn in variants:
            seconds = _timed(lambda: fn(ids, mask, repeats), args.repeats)
            rates[label] = batch * T / seconds
        return rates

    if not args.skip_hf:
        _hf_tables(args, batches, T, G, row, hf_generate, ours)
    from scpo_lab import precision

    names = [p for p in (args.precisions or ("fp32,bf16" if precision.bf16_hardware() else "fp32")).split(",") if p]
    _precision_table(names, batches, T, row, ours, model, host["mem_read_gbs"])
    if args.profile:
        for name in names:
            with precision.activate(name):
                _profile(model, tok, problems[:batches[0]], T, policy.device, name)


def _precision_table(names, batches, T, row, ours, model, bandwidth_gbs: float) -> None:
    """Table 3: the static engine in each precision, beside its memory floor (weights' bytes / bandwidth)."""
    from scpo_lab import engine, precision

    print(f"\n3. Static engine per precision, B distinct prompts, {T} new tokens; measured memory read "
          f"{bandwidth_gbs:.1f} GB/s; floor = weights' bytes read per decode step / that bandwidth")
    header = (f"{'batch':>6} | {'precision':>9} | {'tokens/s':>9} | {'ms/step':>8} | {'weights MB':>10} | "
              f"{'floor ms':>8} | {'floor / measured':>16}")
    print(header)
    print("-" * len(header))
    for name in names:
        with precision.activate(name):
            weight_mb = engine.snapshot(model).weight_bytes / 1e6
            floor_ms = weight_mb / 1e3 / bandwidth_gbs * 1e3
            for b in batches:
                rate = row(b, b, 1, [("static (default)", lambda i, m, r: ours(i, m, r, "static"))])["static (default)"]
                ms = 1e3 * b / rate  # wall ms per generated token of a row = per decode step (prefill included)
                print(f"{b:>6} | {name:>9} | {rate:9.1f} | {ms:8.1f} | {weight_mb:10.0f} | {floor_ms:8.1f} | "
                      f"{floor_ms / ms:15.0%}")


def _hf_tables(args, batches, T, G, row, hf_generate, ours) -> None:
    decode_variants = [("HF generate", hf_generate), ("ours, HF forward", lambda i, m, r: ours(i, m, r, "hf")),
                       ("static, F.linear", lambda i, m, r: ours(i, m, r, "static", onednn=False)),
                       ("static (default)", lambda i, m, r: ours(i, m, r, "static"))]
    print(f"\n1. B distinct prompts, {T} new tokens each; tokens/s (higher is better)")
    _print_table([(b, row(b, b, 1, decode_variants)) for b in batches], [v[0] for v in decode_variants])

    rl_variants = [("HF generate", hf_generate), ("static (default)", lambda i, m, r: ours(i, m, r, "static"))]
    rl_rows = [(b, row(b, b // G, G, rl_variants)) for b in batches if b % G == 0 and b >= G]
    print(f"\n2. RL shape: B/{G} prompts x {G} samples, {T} new tokens; tokens/s")
    _print_table(rl_rows, [v[0] for v in rl_variants])


def _print_table(rows, labels) -> None:
    header = f"{'batch':>6} | " + " | ".join(f"{label:>17}" for label in labels) + " | static / HF generate"
    print(header)
    print("-" * len(header))
    for batch, rates in rows:
        cells = " | ".join(f"{rates[label]:17.1f}" for label in labels)
        print(f"{batch:>6} | {cells} | {rates['static (default)'] / rates['HF generate']:.2f}x")


def _profile(model, tok, problems, T, device, name: str = "fp32") -> None:
    """Self CPU time per operator over one static-engine call, per decode step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from scpo_lab.rollout import encode_prompts, generate

    ids, mask = encode_prompts(tok, [p.prompt for p in problems], device)

    def call():
        generate(model, ids, mask, repeats=1, max_new_tokens=T, temperature=1.0, top_p=1.0, eos_token_ids=[],
                 pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0), engine="static")

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n4. Where a decode step's time goes (static engine, {name}, batch {len(problems)}, {T} steps incl. "
          "prefill; profiler overhead included)")
    print(f"{'operator':>45} | ms per step | share")
    for e in events[:12]:
        print(f"{e.key[:45]:>45} | {e.self_cpu_time_total / 1000 / T:11.2f} | {e.self_cpu_time_total / total:5.1%}")
    print(f"{'total':>45} | {total / 1000 / T:11.2f} |")


if __name__ == "__main__":
    main()
