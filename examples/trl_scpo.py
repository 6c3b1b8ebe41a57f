#!/usr/bin/env python
"""Train with TRL's GRPOTrainer and an SCPO critic (scpo_lab.integrations.trl), on the embedded model, on CPU.

    python examples/trl_scpo.py                                   # V2 divergence critic, per token (dense), 4 steps
    python examples/trl_scpo.py --mode reward                     # V2 at sequence level, as a TRL reward function
    python examples/trl_scpo.py --mode reward --method scpo-judge # any sequence-level critic
    python examples/trl_scpo.py --model tiny --steps 2            # a random tiny model: checks the plumbing only

Arithmetic problems from scpo_lab's task; the verifier's reward plus the critic's (weight --weight); LoRA r=16 on
every projection; 4 prompts x 4 generations per step, 48 completion tokens (--max-completion-length). Nothing is downloaded: the embedded
model's safetensors folder is handed to TRL as a local path. Prints TRL's logged metrics per step as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_and_tokenizer(name: str):
    """(model or local folder for GRPOTrainer, tokenizer with left padding)."""
    from transformers import AutoTokenizer

    from scpo_lab.models import embedded_model_dir, tiny_policy

    if name == "tiny":
        base = tiny_policy(seed=0, lora=None)  # TRL adds its own LoRA
        return base.model, base.tokenizer
    folder = str(embedded_model_dir()) if name == "embedded" else name
    if not os.path.isdir(folder):
        raise SystemExit(f"--model: '{folder}' is not a local folder; use 'embedded', 'tiny' or a model folder")
    return folder, AutoTokenizer.from_pretrained(folder, padding_side="left")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--mode", choices=("dense", "reward"), default="dense")
    parser.add_argument("--method", default="scpo-divergence", help="dense: scpo-divergence; reward: scpo-divergence, "
                                                                    "scpo-judge, scpo-irl, scpo-head")
    parser.add_argument("--model", default="embedded", help="embedded | tiny | a local model folder")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--weight", type=float, default=0.5, help="weight of the critic's signal")
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="TRL output folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from peft import LoraConfig
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from scpo_lab.integrations.trl import (ScpoReward, VerifierReward, patch_trl_for_cpu, problem_dataset,
                                           scpo_grpo_trainer_class)
    from scpo_lab.tasks import get_task

    patch_trl_for_cpu()
    prompts, generations = 4, 4
    task = get_task("arithmetic", max_operand=20)
    problems = task.problems("train", n=prompts * (args.steps + 1), seed=args.seed)
    config = GRPOConfig(
        output_dir=args.output or tempfile.mkdtemp(prefix="trl-scpo-"),
        per_device_train_batch_size=prompts * generations, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=generations, max_completion_length=args.max_completion_length, max_steps=args.steps, learning_rate=2e-4,
        lr_scheduler_type="constant", beta=0.0, epsilon=0.2, num_iterations=1, loss_type="grpo",
        scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, report_to="none",
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        seed=args.seed, disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        remove_unused_columns=False, model_init_kwargs=None if args.model == "tiny" else {"dtype": "float32"})
    model, tokenizer = model_and_tokenizer(args.model)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGET_MODULES, bias="none",
                      task_type="CAUSAL_LM")
    verifier = VerifierReward(task, problems)
    common = dict(model=model, args=config, train_dataset=problem_dataset(problems), processing_class=tokenizer,
                  peft_config=lora)
    if args.mode == "reward":
        critic = ScpoReward(args.method, task, problems, seed=args.seed)
        config.reward_weights = [1.0, args.weight]  # r_i + w s_i, then TRL's group normalisation
        trainer = GRPOTrainer(reward_funcs=[verifier, critic], **common)
        critic.bind(trainer)
    else:
        trainer_class = scpo_grpo_trainer_class()
        critic = trainer_class.critic_for(args.method, task, problems, seed=args.seed,
                                          **{"scpo.weight": args.weight, "scpo.center": "group"})
        trainer = trainer_class(reward_funcs=[verifier], scpo_critic=critic, **common)

    history: list[dict] = []

    class Logs(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                history.append({"step": state.global_step, **logs})
                print(json.dumps(history[-1]), flush=True)

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(Logs())
    trainer.train()
    return history


if __name__ == "__main__":
    main()
