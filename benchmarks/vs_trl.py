#!/usr/bin/env python
"""Seconds per GRPO step: TRL's GRPOTrainer vs scpo_lab's trainer, same model, batch, LoRA and hyper-parameters.

Both sides: SmolLM2-135M-Instruct (the embedded model's safetensors folder, handed to TRL as a local path, so
nothing is downloaded), fp32 on CPU, 4 prompts x 4 generations per optimizer step, at most 64 completion tokens,
temperature 1.0 / top-p 1.0 / no top-k, LoRA r=16 alpha=32 dropout 0 on q,k,v,o,gate,up,down, the same learning rate
(constant schedule), beta = 0 (no reference pass), clip epsilon 0.2, one update per batch (num_iterations = 1),
sequence-mean loss aggregation (TRL loss_type="grpo"), group-scaled advantages, grad-norm clip 1.0, no gradient
checkpointing, arithmetic prompts rewarded by scpo_lab's own `task.verify`.

    python benchmarks/vs_trl.py                          # both frameworks, each in its own subprocess
    python benchmarks/vs_trl.py --model tiny --steps 2   # smoke check of the plumbing (numbers mean nothing)
    python benchmarks/vs_trl.py --framework trl          # one framework, in this process

Timed per optimizer step: TRL from on_step_begin to on_step_end of a TrainerCallback (generation, reward,
loss, backward, clip, optimizer and scheduler step; not logging or the dataloader fetch); scpo_lab its own
`time/step` (generation, verification, advantages, update; not metrics writing or checkpoints). Step 1 is warm-up
and excluded from the mean (reported separately). Both stop a completion at EOS (<|im_end|>), so tokens per step
depend on what was sampled: the table reports them, and a per-1k-token time next to the per-step time.
Target: ours / TRL seconds per step <= 0.6.

TRL 1.15 computes its training log-probs with a Triton-only kernel (no CPU path); without CUDA/XPU this script
swaps in `scpo_lab.integrations.trl.CpuChunkedLogProb`, a plain-PyTorch equivalent (see its docstring and benchmarks/README.md).
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FRAMEWORKS = ("trl", "scpo_lab")
MARKER = "VS_TRL_JSON "  # prefix of the one JSON line a child process prints for its parent
RATIO_TARGET = 0.6
RATIO_TARGET_BF16 = 0.5  # --precision bf16 on a host with AMX-BF16 (issue 20)
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _summary(framework: str, args, step_seconds: list[float], step_tokens: list[float], **extra) -> dict:
    warmup_excluded = len(step_seconds) > 1
    first = 1 if warmup_excluded else 0
    secs, toks = step_seconds[first:], step_tokens[first:]
    import torch

    return {
        "framework": framework,
        "model": args.model,
        "steps": len(step_seconds),
        "warmup_excluded": warmup_excluded,
        "prompts": args.prompts,
        "generations": args.generations,
        "max_completion_length": args.max_completion_length,
        "seconds_per_step": sum(secs) / len(secs),
        "first_step_seconds": step_seconds[0],
        "tokens_per_step": sum(toks) / len(toks),
        "seconds_per_1k_tokens": 1000 * sum(secs) / sum(toks) if sum(toks) > 0 else float("nan"),
        "all_step_seconds": step_seconds,
        "all_step_tokens": step_tokens,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "precision": args.precision,
        **extra,
    }


# ------------------------------------------------------------------------------------------------- scpo_lab


def run_scpo_lab(args, workdir: str) -> dict:
    from scpo_lab.config import make_config
    from scpo_lab.trainer import policy_for, train

    batch = args.prompts * args.generations
    config = make_config(
        "cpu", method="grpo", steps=args.steps, seed=args.seed,
        model={"name": args.model, "backend": "hf", "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
               "lora_dropout": 0.0},
        prompts_per_step=args.prompts, group_size=args.generations, max_new_tokens=args.max_completion_length,
        temperature=1.0, top_p=1.0, learning_rate=args.lr, weight_decay=0.0, max_grad_norm=1.0, beta=args.beta,
        epsilon=0.2, epsilon_high=0.2, loss_agg="sequence-mean", scale_rewards="group", num_iterations=1,
        micro_batch_size=batch,  # the whole step's 16 rollouts in one forward/backward, as TRL's batch of 16
        save_every=10**6, samples_every=10**6, precision=args.precision)
    t0 = time.perf_counter()
    policy = policy_for(config)
    load_s = time.perf_counter() - t0
    run = train(config, policy, progress=False, runs_dir=tempfile.mkdtemp(prefix="scpo_lab-", dir=workdir))
    rows = sorted(run.dir.read_metrics(), key=lambda r: r["step"])
    if len(rows) != args.steps:
        raise RuntimeError(f"expected {args.steps} metric rows in {run.path}, found {len(rows)}")
    seconds = [r["time/step"] for r in rows]
    tokens = [r["completions/mean_length"] * batch for r in rows]
    return _summary("scpo_lab", args, seconds, tokens, load_s=load_s,
                    dtype=str(next(policy.model.parameters()).dtype),
                    trainable_params=policy.num_parameters(trainable_only=True),
                    generation_seconds=[r["time/generation"] for r in rows],
                    clipped_ratio=[r["completions/clipped_ratio"] for r in rows])


# ------------------------------------------------------------------------------------------------------ TRL


def _trl_model_and_tokenizer(args, workdir: str):
    """(model for GRPOTrainer: a local folder path or a model object, its tokenizer)."""
    from transformers import AutoTokenizer

    if args.model == "tiny":
        from scpo_lab.models import tiny_policy

        base = tiny_policy(seed=args.seed, lora=None)  # the bare random llama: TRL adds its own LoRA
        return base.model, base.tokenizer
    if args.model == "embedded":
        from scpo_lab.models import embedded_model_dir

        folder = str(embedded_model_dir())
    else:
        folder = args.model
    if not os.path.isdir(folder):
        raise SystemExit(f"--model: '{folder}' is not a local folder (TRL must not download anything)")
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    return folder, tokenizer


def run_trl(args, workdir: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from scpo_lab.tasks import get_task

    from scpo_lab.integrations.trl import patch_trl_for_cpu

    patched = patch_trl_for_cpu()
    batch = args.prompts * args.generations
    task = get_task("arithmetic")
    problems = task.problems("train", n=args.prompts * (args.steps + 1), seed=args.seed)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems],  # conversational: [{"role", "content"}]
                                 "problem_index": list(range(len(problems)))})
    reward_calls: list[int] = []

    def arithmetic_reward(prompts, completions, problem_index, **kwargs):
        reward_calls.append(len(completions))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [task.verify(problems[i], text).reward for i, text in zip(problem_index, texts)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.logs, self._t0 = [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-", dir=workdir),
        # ONE optimizer step = one generation batch = prompts x generations completions:
        # global batch = per_device_train_batch_size x gradient_accumulation_steps (1 process) = 16, and
        # generation_batch_size = per_device_train_batch_size x steps_per_generation = 16 (4 distinct prompts).
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=args.generations, max_completion_length=args.max_completion_length,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=1.0, beta=args.beta, epsilon=0.2, num_iterations=1, loss_type="grpo", scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, report_to="none", use_cpu=True,
        bf16=args.precision == "bf16",  # TRL's own bf16 (accelerate's CPU autocast over fp32 weights), like ours
        fp16=False, model_init_kwargs=None if args.model == "tiny" else {"dtype": "float32"},
        gradient_checkpointing=False,  # TRL's default is True
        logging_steps=1, save_strategy="no", seed=args.seed, disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False)
    assert config.generation_batch_size == batch and config.steps_per_generation == 1, \
        (config.generation_batch_size, config.steps_per_generation)
    model, tokenizer = _trl_model_and_tokenizer(args, workdir)
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                             target_modules=list(TARGET_MODULES), bias="none", task_type="CAUSAL_LM")
    timer = StepTimer()
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    load_s = time.perf_counter() - t0
    for cb in (PrinterCallback, ProgressCallback):  # keep stdout for the results
        trainer.remove_callback(cb)
    trainer.train()

    if len(timer.seconds) != args.steps or len(timer.logs) != args.steps:
        raise RuntimeError(f"expected {args.steps} timed and logged steps, got {len(timer.seconds)} timed, "
                           f"{len(timer.logs)} logged")
    if reward_calls != [batch] * args.steps:  # one generation batch of 16 completions per optimizer step
        raise RuntimeError(f"expected one reward call of {batch} completions per step, got {reward_calls}")
    tokens = [log["completions/mean_length"] * batch for log in timer.logs]
    dtype = str(next(trainer.model.parameters()).dtype)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return _summary("trl", args, timer.seconds, tokens, load_s=load_s, dtype=dtype, trainable_params=trainable,
                    cpu_logprob_substitute=patched,
                    trl_step_time=[log.get("step_time") for log in timer.logs],
                    clipped_ratio=[log.get("completions/clipped_ratio") for log in timer.logs])


# ----------------------------------------------------------------------------------------------- driver


def run_in_subprocess(framework: str, args, workdir: str) -> dict | None:
    """`--framework NAME` in a fresh interpreter (its own peak RSS); its stderr passes through."""
    cmd = ["--framework", framework, "--workdir", workdir,
           "--steps", str(args.steps), "--model", args.model, "--prompts", str(args.prompts),
           "--generations", str(args.generations), "--max-completion-length", str(args.max_completion_length),
           "--lr", repr(args.lr), "--beta", repr(args.beta), "--lora-r", str(args.lora_r),
           "--lora-alpha", str(args.lora_alpha), "--seed", str(args.seed), "--precision", args.precision]
    return run_child(__file__, framework, cmd, MARKER)


def print_table(results: list[dict]) -> None:
    r0 = results[0]
    print(f"\nmodel {r0['model']}, {r0['prompts']} prompts x {r0['generations']} generations per optimizer step, "
          f"max {r0['max_completion_length']} completion tokens, {r0.get('precision', 'fp32')} on both sides, CPU, "
          f"torch threads {r0['torch_threads']}")
    if r0["warmup_excluded"]:
        print(f"s/step = mean over steps 2..{r0['steps']} (step 1 = warm-up, excluded; shown as 'step 1 s')")
    else:
        print("only 1 step: it is the warm-up step and is reported as is (use --steps >= 2 to exclude it)")
    head = ("framework", "s/step", "step 1 s", "completion tok/step", "s / 1k tok", "peak RSS MiB")
    rows = [(r["framework"], f"{r['seconds_per_step']:.3f}", f"{r['first_step_seconds']:.3f}",
             f"{r['tokens_per_step']:.1f}", f"{r['seconds_per_1k_tokens']:.3f}", f"{r['peak_rss_mib']:.0f}")
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    by = {r["framework"]: r for r in results}
    if "trl" in by and "scpo_lab" in by:
        ours, trl = by["scpo_lab"], by["trl"]
        ratio = ours["seconds_per_step"] / trl["seconds_per_step"]
        per_tok = ours["seconds_per_1k_tokens"] / trl["seconds_per_1k_tokens"]
        target = RATIO_TARGET_BF16 if r0.get("precision") == "bf16" else RATIO_TARGET
        verdict = "MEETS" if ratio <= target else "MISSES"
        print(f"\nours / TRL seconds per step: {ratio:.2f} (target <= {target}): {verdict}")
        print(f"ours / TRL seconds per 1k completion tokens: {per_tok:.2f} (same comparison with the sampled "
              f"lengths factored out: tokens/step {ours['tokens_per_step']:.0f} ours vs {trl['tokens_per_step']:.0f} "
              f"TRL)")
    if r0["model"] == "tiny":
        print("NOTE: --model tiny is a plumbing check; its timings say nothing about the target.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=FRAMEWORKS, help="run only this framework, in this process")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per framework; step 1 is warm-up")
    parser.add_argument("--model", default="embedded", help="'embedded' (default), 'tiny', or a local folder")
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4, help="both sides (scpo_lab's default LoRA rate)")
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient, both sides")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="run/output folders (default: a temp dir, deleted)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="both sides: ours precision=bf16, TRL bf16=True (fp32 weights, bf16 autocast)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.generations < 2:
        parser.error("--generations must be >= 2 (group-relative advantages)")

    with scratch_dir(args.workdir, "vs_trl-") as workdir:
        if args.framework:
            result = (run_trl if args.framework == "trl" else run_scpo_lab)(args, workdir)
            print_table([result])
            print(MARKER + json.dumps(result), flush=True)
            return 0
        print_host()
        results = [r for r in (run_in_subprocess(f, args, workdir) for f in FRAMEWORKS) if r is not None]
        if not results:
            print("no framework finished", file=sys.stderr)
            return 1
        print_table(results)
        return 0 if len(results) == len(FRAMEWORKS) else 1


if __name__ == "__main__":
    sys.exit(main())
