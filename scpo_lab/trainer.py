"""The two-pass training loop, top to bottom.

    for step in 1..steps:
        problems   <- draw prompts_per_step training problems           (seeded by (seed, step))
        rollouts   <- G samples per problem, sampler log-probs recorded  (rollout.sample_rollouts)
        verdicts   <- task.verify_batch(problems, completions)          (reward, passed, feedback)
        [dynamic sampling: drop groups whose rewards are all equal, sample more prompts; _dynamic_sampling]
                      [+ DAPO's overlong penalty in the reward when overlong_buffer > 0]
        teacher    <- policy re-reads each rollout with its verdict       (teacher.teacher_pass; skipped by grpo)
        advantages <- group-relative advantages [+ the critic's signal]  (objective / critics)
        update     <- clipped surrogate (+ beta * k3 KL), AdamW on LoRA weights, grad clipping
                      (ratio per token or per sequence; truncated rollouts masked out if asked)
        log, write samples, checkpoint

Every step's randomness is derived from (seed, step) (a dynamic-sampling round's from (seed, step, round)), so a run
killed at any point and resumed from its last checkpoint replays the same problems and draws, and its metrics.jsonl
has no duplicated or missing rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from scpo_lab import distributed, precision, tasks
from scpo_lab.config import ConfigError, TrainConfig
from scpo_lab.critics import Critic, CriticResult, LossTerm, UpdateForward, make_critic
from scpo_lab.flops import forward_flops, reference_flops, sampling_flops, update_flops
from scpo_lab.lora_fused import fused_lora
from scpo_lab.metrics import hacking_stats
from scpo_lab.migrate import legacy_exclude
from scpo_lab.objective import (completion_logprobs, group_advantages, group_reward_std, loss_denominator,
                                 overlong_penalty, policy_loss)
from scpo_lab.rollout import RolloutBatch, concat_batches, micro_batches, sample_rollouts, select_groups
from scpo_lab.runs import DEFAULT_EXCLUDE, RunDir
from scpo_lab.seeds import round_seed, step_seed
from scpo_lab.tasks import get_task

log = logging.getLogger("scpo_lab")


def policy_for(config: TrainConfig, device=None):
    """The config's model with a fresh LoRA adapter; under several processes on CUDA, on this process's GPU."""
    from scpo_lab.models import GpuOptions, LoraConfig, load_policy

    m = config.model
    lora = LoraConfig(r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                      target_modules=tuple(m.lora_target_modules))
    options = GpuOptions(**{f.name: getattr(m, f.name) for f in fields(GpuOptions)})  # same names
    device = device if device is not None else distributed.world().device
    # CPU: the weights stay fp32 in either precision (bf16 is autocast + the engine's snapshot); CUDA: the
    # weights carry the precision (bf16 by default there, as before the option existed)
    fp32_on_cuda = precision.legacy(device) == "bf16" and precision.resolve(config.precision, device) == "fp32"
    return load_policy(m.name, backend=m.backend, lora=lora, seed=config.seed, options=options, device=device,
                       dtype=torch.float32 if fp32_on_cuda else None)


def parameter_count(model) -> int:
    """N for the FLOP counts: every parameter, 4-bit ones at their unpacked size (bitsandbytes packs two 4-bit
    weights per byte and keeps the true shape in quant_state)."""
    total = 0
    for p in model.parameters():
        quant_state = getattr(p, "quant_state", None)
        total += int(torch.Size(quant_state.shape).numel()) if quant_state is not None else p.numel()
    return total


@dataclass
class Run:
    """A finished (or resumed-and-finished) training run and its folder."""

    config: TrainConfig
    dir: RunDir
    loaded: bool = False  # True: train() found it finished and trained nothing (run_experiment counts these)

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def metrics(self):
        import pandas as pd

        return pd.DataFrame(self.dir.read_metrics())

    def samples(self):
        import pandas as pd

        return pd.DataFrame(self.dir.read_samples())

    def load_policy(self, policy=None):
        """The trained policy: the base model with this run's final adapter (into `policy` if given)."""
        policy = policy or policy_for(self.config)
        policy.load_adapter(self.dir.path / "final")
        return policy


class RunWriteError(RuntimeError):
    """A write into the run folder failed (a full disk, lost permissions); the last complete checkpoint is intact."""


def train(config: TrainConfig, policy=None, *, progress: bool = True, runs_dir: str | None = None,
          label: str | None = None) -> Run:
    """Train `config` in its run folder, or load it if that folder already finished; resumes a killed run.
    label: the progress bar's name (run_experiment passes its config label, e.g. "scpo-span/s1"); default
    "<method>/s<seed>", so the bars of several arms of one method can be told apart.
    Under `accelerate launch --num_processes N` (or torchrun) the N processes share each step (distributed.py).
    One process writes a run folder at a time (RunDir.lock; rank 0 under several processes)."""
    if not isinstance(config, TrainConfig):  # e.g. a dict: say how to build one instead of an AttributeError
        raise ConfigError(f"config: train() takes a TrainConfig, got {type(config).__name__}; build one with "
                          "make_config(profile, **fields) or load_config(path)")
    config.validate()
    world = distributed.world()
    distributed.check_config(config, world.size)
    task = get_task(config.task.name, **config.task.options)
    train_problems = _training_problems(task, config)
    if not train_problems:
        raise ConfigError(f"task.name: {config.task.name!r} yielded no training problems; check its data or options")
    record, create = _folder_args(config, runs_dir, world)
    if world.is_main:  # a folder of the old run identity is renamed once, by one process
        _adopt_legacy(config, record, create)
    world.barrier()
    if RunDir.locate(record, **create).is_finished():  # reading a finished run needs no model and no lock
        run = RunDir.create(record, **create)  # checks its config.json
        log.debug("run %s already finished: loading it", run.path.name)  # a set's callers summarise the loads
        return Run(config, run, loaded=True)
    policy = policy or policy_for(config)  # before the folder exists: a model that cannot load leaves nothing
    with _writer(RunDir.locate(record, **create), world):
        if world.is_main:
            run = RunDir.create(record, **create)
        world.barrier()  # rank 0 has written config.json; the others open the same folder
        if not world.is_main:
            run = RunDir.create(record, **create)
        if run.is_finished():  # another process finished it while this one loaded its model
            log.debug("run %s already finished: loading it", run.path.name)
            return Run(config, run, loaded=True)
        _train_in(run, config, policy, task, train_problems, world, progress,
                  label or f"{config.method}/s{config.seed}")
    return Run(config, run)


def _folder_args(config: TrainConfig, runs_dir, world: distributed.World) -> tuple[dict, dict]:
    """(the record config.json holds, RunDir.create's keyword arguments) of `config`'s run folder."""
    resolved = precision.resolve(config.precision, world.device)  # the precision actually used is its identity
    record = config.to_dict() | precision.identity(resolved, world.device) | tasks.identity(config.task.name) | (
        {"processes": world.size} if world.enabled else {})  # its own run folder
    return record, dict(name=config.method, runs_dir=runs_dir or config.runs_dir,
                        exclude=DEFAULT_EXCLUDE + config.hash_exclude())


def run_dir_of(config: TrainConfig, runs_dir: str | None = None) -> RunDir:
    """The run folder `train(config)` uses in this process (it may not exist yet)."""
    record, create = _folder_args(config, runs_dir, distributed.world())
    return _adopt_legacy(config, record, create) or RunDir.locate(record, **create)


def _adopt_legacy(config: TrainConfig, record: dict, create: dict) -> RunDir | None:
    """A folder written under the run identity before issue 17 (scpo_lab/migrate.py), renamed to today's."""
    adopted = RunDir.adopt(record, **create, old_exclude=DEFAULT_EXCLUDE + legacy_exclude(config))
    if adopted is not None:
        log.info("run folder %s renamed to %s (run identity hashes only what the method reads)",
                 adopted.record()["migrated_from"], adopted.path.name)
    return adopted


def _writer(run: RunDir, world: distributed.World):
    """The run folder's lock, held by the process that writes it (rank 0); the other ranks only read."""
    return run.lock() if world.is_main else contextlib.nullcontext()


def _train_in(run: RunDir, config: TrainConfig, policy, task, train_problems, world, progress: bool,
              label: str) -> None:
    """Resume from the newest checkpoint that loads, train the remaining steps, write final/ and DONE."""
    model = policy.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    critic = make_critic(config.method, config, policy.tokenizer, world)

    start_step, state, damaged = _resume(run, policy, optimizer, critic, set_aside=world.is_main)
    if start_step:
        log.info("resuming %s from step %d", run.path.name, start_step)
    else:
        if damaged:  # a checkpoint that failed halfway may have loaded part of its state: start clean
            optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
            critic = make_critic(config.method, config, policy.tokenizer, world)
        if config.steps > 0:
            policy.reset_adapter(seed=config.seed)  # a fresh run starts from the same LoRA init whatever ran before
    if world.is_main:
        run.truncate_after(start_step)  # rows written after the checkpoint are replayed, never duplicated

    n_params = parameter_count(model)
    loop = _Loop(config, policy, task, train_problems, optimizer, params, critic, n_params, run, world)
    bar = _progress(range(start_step + 1, config.steps + 1), progress and world.is_main, label,
                    total=config.steps, initial=start_step)
    resolved = precision.resolve(config.precision, world.device)
    log.info("precision: %s (config: %s)", resolved, config.precision)
    last_good, step = start_step, start_step
    try:
        for step in bar:
            with precision.activate(resolved, world.device):
                row = training_step(loop, step, state)
            _check_finite(policy, critic)  # before its row, checkpoint or final/: nothing non-finite is kept
            if world.is_main:
                run.append_metrics(row)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(reward=f"{row['reward']:.2f}", zero_std=f"{row['frac_reward_zero_std']:.2f}")
            if step % config.save_every == 0 or step == config.steps:
                if world.is_main:
                    _save_checkpoint(run, policy, optimizer, step, state, critic)
                world.barrier()
                last_good = step
        world.check_in_sync(params + (critic.parameters() if critic is not None else []))
        if world.is_main:
            _save_final(run, policy, critic)
            run.mark_done()
    except FloatingPointError as err:
        raise FloatingPointError(f"run {run.path}: step {step}: {err}; nothing of this step was saved and "
                                 f"{_kept(last_good)}") from None
    except OSError as err:  # a full disk, a folder made read-only: one line, and what is already saved stays
        what = f"could not write '{err.filename}'" if err.filename else "a write failed"
        raise RunWriteError(f"run {run.path}: {what} ({err.strerror or err}); free space or fix the folder, then "
                            f"rerun the same command: {_kept(last_good)}") from None
    world.barrier()


def _kept(step: int) -> str:
    return (f"the checkpoint of step {step} is the last good one (a rerun resumes from it)" if step
            else "no checkpoint was written (a rerun starts from step 0)")


def _resume(run: RunDir, policy, optimizer, critic, set_aside: bool = True) -> tuple[int, dict, int]:
    """(step, trainer state, number of damaged checkpoints) of the newest checkpoint that loads, (0, fresh, n)
    if none does. A COMPLETE checkpoint can still be damaged (a deleted or truncated file, a disk error): it is
    renamed step-N.damaged with a warning naming the file, and the one before it is tried."""
    damaged = 0
    for step, ckpt in reversed(run.checkpoints()):
        try:
            return step, _load_checkpoint(ckpt, step, policy, optimizer, critic), damaged
        except Exception as err:  # any failure to read it makes it unusable: safetensors, pickle, JSON, missing
            damaged += 1
            where = getattr(err, "filename", None) or ckpt
            message = (str(err).strip().splitlines() or [type(err).__name__])[0]
            aside = RunDir.set_aside(ckpt).name if set_aside else "left for rank 0"
            log.warning("checkpoint %s does not load (%s: %s); set aside as %s, trying the one before", ckpt,
                        where, message, aside)
    return 0, {"generated_tokens": 0, "flops": 0.0}, damaged


def _load_checkpoint(ckpt: Path, step: int, policy, optimizer, critic) -> dict:
    """Restore adapter, optimizer and critic from `ckpt`; its trainer state. Every file is read before any is
    applied, so a damaged file leaves the policy and optimizer as they were."""
    from safetensors.torch import load_file

    for name in ("adapter/adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        if not (ckpt / name).is_file():
            raise FileNotFoundError(2, "missing", str(ckpt / name))
    load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))  # a truncated file fails here, before loading
    optimizer_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    if not isinstance(state, dict) or state.get("step") != step:
        raise ValueError(f"{ckpt / 'trainer_state.json'}: not the state of step {step}")
    if state.pop("has_critic", False) and not (ckpt / "critic.pt").is_file():  # older checkpoints lack the key
        raise FileNotFoundError(2, "missing", str(ckpt / "critic.pt"))
    critic_state = None
    if critic is not None and (ckpt / "critic.pt").is_file():
        critic_state = torch.load(ckpt / "critic.pt", weights_only=True)
    policy.load_adapter(ckpt / "adapter")
    optimizer.load_state_dict(optimizer_state)
    if critic_state is not None:
        critic.load_state_dict(critic_state)
    return state


def _non_finite(obj) -> bool:
    """True if any tensor or float in a (nested) state dict is inf or nan."""
    if isinstance(obj, torch.Tensor):
        return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_non_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_non_finite(v) for v in obj)
    return False


def _check_finite(policy, critic) -> None:
    """Stop at weights with inf or nan: a checkpoint or final/ must be a good state to resume or evaluate."""
    lora = [p for p in policy.model.parameters() if p.requires_grad]
    if _non_finite(lora):
        raise FloatingPointError("the LoRA weights are not finite (lower learning_rate)")
    if critic is not None and _non_finite(critic.state_dict()):
        raise FloatingPointError("the critic's state is not finite (lower value.lr or the critic's weight)")


def _save_final(run: RunDir, policy, critic) -> None:
    policy.save_adapter(run.path / "final")
    if critic is not None and critic.state_dict():
        torch.save(critic.state_dict(), run.path / "final" / "critic.pt")  # heads and critics live with it


def _training_problems(task, config: TrainConfig):
    try:
        return task.problems("train", n=None, seed=config.seed)
    except (TypeError, ValueError):  # procedural tasks need n
        return task.problems("train", n=config.train_pool_size, seed=config.seed)


def _progress(iterable, enabled: bool, desc: str, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, **kwargs)


@dataclass
class _Loop:
    """What every step of one run shares."""
    config: TrainConfig
    policy: object
    task: object
    train_problems: list
    optimizer: torch.optim.Optimizer
    params: list  # the policy's trainable (LoRA) parameters
    critic: Critic | None
    n_params: int  # N of the FLOP counts
    run: RunDir
    world: distributed.World = distributed.World()


def training_step(loop: _Loop, step: int, state: dict) -> dict:
    """sample -> verify -> critic -> update -> log; `state` holds the cumulative counts (tokens, FLOPs)."""
    config, policy, critic, world = loop.config, loop.policy, loop.critic, loop.world
    times = {}
    # 1. sample: prompts_per_step problems, G rollouts each (this process's share of whole groups)
    t0 = time.perf_counter()
    rng = random.Random(step_seed(config.seed, step, 0))
    problems = rng.sample(loop.train_problems, min(config.prompts_per_step, len(loop.train_problems)))
    batch = sample_rollouts(policy, problems[world.rank::world.size], group_size=config.group_size,
                            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                            seed=step_seed(config.seed, step, 1) + 7919 * world.rank, engine=config.rollout_engine)
    times["generation"] = time.perf_counter() - t0

    # 2. verify
    t0 = time.perf_counter()
    batch.verdicts = loop.task.verify_batch(batch.problems, batch.texts)
    verifier_rewards = torch.tensor([v.reward for v in batch.verdicts], dtype=torch.float32)
    times["verification"] = time.perf_counter() - t0
    # the collapse rate and pass rate of the step's draw, on the verifier's reward, before any filter: dynamic
    # sampling's kept batch holds only groups with signal (its rate is 0 by construction) and pooling its refill
    # rounds biases both (when it stops depends on what it kept); this first round is the draw grpo makes at the
    # same seed and step. A critic's or the random-reward control's trained reward can spread a group the verifier
    # cannot tell apart, so neither is read from it.
    zero_std = float((group_reward_std(verifier_rewards, config.group_size) == 0).float().mean())
    pass_rate = float(verifier_rewards.mean())
    sampled = None  # dynamic sampling: what every round sampled (the batch is then the kept groups only)
    if config.dynamic_sampling:  # on the verifier's rewards (DAPO's filter metric: accuracy), before any shaping
        batch, verifier_rewards, sampled = _dynamic_sampling(loop, step, problems, batch, verifier_rewards, times)
    trained_rewards, length_stats = _shape_rewards(config, batch, verifier_rewards)
    trains = len(batch) > 0  # dynamic sampling may keep no group: no critic pass and no update this step

    # 3. advantages: A_i = (r_i - mean_group r) / (std_group r + eps), then the critic's
    t0 = time.perf_counter()
    result = CriticResult(group_advantages(trained_rewards, config.group_size, scale=config.scale_rewards)
                          if trains else torch.zeros(0), {})
    teacher = None
    if critic is not None and trains:
        if critic.needs_teacher:
            teacher = critic.teacher_pass(policy, batch, temperature=config.temperature,
                                          micro_batch_size=config.micro_batch_size)
            state["flops"] += forward_flops(loop.n_params, world.sum(teacher.tokens_read))  # 2 N FLOPs per token
        result = critic.advantages(batch, result.advantages, teacher, step=step)
    times["teacher"] = time.perf_counter() - t0 if teacher is not None else 0.0  # the second pass and its critic
    rewards = trained_rewards if result.rewards is None else result.rewards  # what the method trains on
    stats = {**length_stats, **result.stats}
    if result.score is not None:  # the critic's own score of each rollout vs the verifier
        stats.update(hacking_stats(result.score, [v.passed for v in batch.verdicts],
                                   probability=result.score_is_probability))
    if not torch.isfinite(result.advantages).all():  # stop before the update: the last checkpoint stays the good one
        raise FloatingPointError(f"the advantages are not finite ({config.method}); lower learning_rate or the "
                                 "critic's weight")

    # 4. update (a critic in warm-up keeps the actor still), then the critic's own update
    t0 = time.perf_counter()
    update = {}
    updates_actor = trains and (critic is None or critic.updates_actor())
    if updates_actor:
        # bf16: the frozen base cast once, not per forward; every LoRA Linear as one op (lora_fused: no
        # elementwise passes over the activations for the adapter's branch)
        with precision.frozen_linears_in_bf16(policy.model), fused_lora(policy.model):
            update = _update(config, policy, batch, result.advantages, loop.optimizer, loop.params,
                             result.loss_term, world)
    if critic is not None and trains:
        stats.update(critic.after_update(policy) or {})
        critic_flops = world.sum(critic.update_flops())  # the critic's own training: heads, value model, D
        state["flops"] += critic_flops
        stats["flops/critic_update"] = critic_flops
    times["update"] = time.perf_counter() - t0

    # 5. log (TRL's metric names where they mean the same thing)
    n_params = loop.n_params
    generated, prompt_tokens = world.sum(batch.num_tokens), world.sum(int(batch.prompt_mask.sum()))  # all processes
    if sampled is None:
        state["generated_tokens"] += int(generated)
        state["flops"] += sampling_flops(n_params, prompt_tokens, generated, config.group_size)
    else:  # every round's rollouts, the discarded groups' included: equal generated tokens mean equal sampling
        for round_prompt_tokens, round_generated in sampled.pop("tokens"):
            state["generated_tokens"] += int(round_generated)
            state["flops"] += sampling_flops(n_params, round_prompt_tokens, round_generated, config.group_size)
    if updates_actor:  # forward + backward over the batch trained on (scpo_lab/flops.py); none in a warm-up
        state["flops"] += update_flops(n_params, prompt_tokens, generated, config.group_size, config.num_iterations,
                                       config.model.gradient_checkpointing)
        if config.beta > 0:  # the reference's forward over the same batch, once per update (_update's ref_logp)
            state["flops"] += reference_flops(n_params, prompt_tokens, generated, config.group_size,
                                              config.model.gradient_checkpointing)
    lengths = batch.completion_mask.sum(1).float()
    row = {
        "step": step,
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "pass_rate": pass_rate,  # the verifier's alone (no length penalty), the step's draw (above)
        "frac_reward_zero_std": zero_std,  # TRL's name, on the verifier's reward of the step's draw (above)
        "completions/mean_length": float(lengths.mean()),
        "completions/clipped_ratio": float(batch.truncated.float().mean()),
        "generated_tokens": state["generated_tokens"],
        "flops": state["flops"],
        "params/extra": critic.extra_parameters() if critic is not None else 0,  # heads, critics (not the LoRA)
        **({f"sampling/{k}": v for k, v in sampled.items()} if sampled is not None else {}),
        **update,
        **stats,
        **{f"time/{k}": v for k, v in times.items()},
    }
    row["time/step"] = sum(times.values())
    if step % config.samples_every == 0 or step == config.steps:
        rows = world.gather(_sample_rows(step, batch, rewards, policy.tokenizer, result.advantages, teacher))
        if world.is_main:
            loop.run.append_samples([r for part in rows for r in part])
    return world.mean_row(row, summed=("loss",) + ((result.loss_term.name,) if result.loss_term else ()),
                          token_means=TOKEN_MEANS, tokens=float(batch.completion_mask.sum()))


def _shape_rewards(config, batch: RolloutBatch, verifier_rewards: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(the reward the method trains on [B], its length metrics). overlong_buffer > 0: DAPO's soft overlong
    punishment r_i + R_length(|o_i|) (objective.overlong_penalty), written into each verdict's `reward` too, so
    that every critic reading batch.verdicts (judge, irl, the value critics) trains on the same shaped reward and
    random-reward adds it to its coin (batch.overlong_penalty); `passed`, the feedback, pass_rate and the
    teacher's context stay the verifier's. Off: the verifier's rewards, unchanged, and no metrics."""
    if config.overlong_buffer == 0:
        return verifier_rewards, {}
    penalty = overlong_penalty(batch.completion_mask.sum(1), config.max_new_tokens, config.overlong_buffer,
                               config.overlong_penalty)  # [B] float32, <= 0
    shaped = verifier_rewards + penalty
    batch.overlong_penalty = penalty
    batch.verdicts = [dataclasses.replace(v, reward=float(r)) for v, r in zip(batch.verdicts, shaped)]
    return shaped, {"completions/overlong_penalty_mean": float(penalty.mean()),
                    "completions/overlong_frac": float((penalty < 0).float().mean())}


def _dynamic_sampling(loop: _Loop, step: int, problems: list, batch: RolloutBatch, rewards: torch.Tensor,
                      times: dict) -> tuple[RolloutBatch, torch.Tensor, dict]:
    """DAPO's dynamic sampling: keep the groups whose verifier rewards are not all equal (a group whose rewards are
    all equal has A = 0 for every rollout: no GRPO gradient), and sample more prompts until the step has as many
    informative groups as it drew prompts (prompts_per_step), in at most config.max_sampling_rounds rounds, the
    step's ordinary draw (round 0, exactly the draw without dynamic sampling) included.
    -> (the kept groups as one batch, their verifier rewards, what was sampled: rounds, sampled_groups, kept_groups,
    discarded_groups, cap_hit, pass_rate over every sampled rollout, and each round's (prompt tokens, generated
    tokens) under "tokens" for the FLOP count).

    Round r >= 1 draws as many new prompts as groups are still missing, from the training problems not yet drawn
    this step, seeded by (seed, step, r) (seeds.round_seed: problems stream 0, rollouts stream 1), so a resumed run
    replays the same rounds. The groups kept are those of every round in order; a round draws no more prompts than
    are missing, so no informative group is sampled and thrown away.

    At the cap (or when no undrawn problem is left) the step trains on the informative groups it found, fewer than
    prompts_per_step, never padded with all-equal groups (they would bring back exactly what the filter removes:
    A = 0 rows that, under token-mean, only dilute the normaliser); `sampling/cap_hit` is 1 and a line is logged.
    With none found there is no critic pass and no update this step (its row has the sampling/* values; reward and
    the batch statistics are NaN). The critic, when there is one, sees only the kept batch.

    References (read, not copied): verl, recipe/dapo/dapo_ray_trainer.py, RayDAPOTrainer.fit with
    `algorithm.filter_groups` (enable, metric, max_num_gen_batches): it keeps the prompt uids whose metric has
    std > 0, accumulates generation batches of data.gen_batch_size prompts until data.train_batch_size prompts are
    kept, truncates the surplus, and at max_num_gen_batches (0 = no cap) raises ValueError ("Generated too many")
    instead of training. prime-rl, src/prime_rl/orchestrator/train_sink.py, TrainSink.process_batch with
    `_prune_zero_advantages` (orchestrator `train.filter_zero_advantages`): zero-advantage tokens get RL weight 0 in
    a batch already formed, with no refill; max_sampling_rounds = 1 is that filter here."""
    config, policy = loop.config, loop.policy
    G, target = config.group_size, len(problems)
    first, drawn = batch, {_prompt_key(p) for p in problems}  # by prompt: the pool repeats problems as copies
    kept_batches, kept_rewards, tokens = [], [], []
    rounds = sampled_groups = kept = passed = rollouts = 0
    while True:
        tokens.append((int(batch.prompt_mask.sum()), batch.num_tokens))
        grouped = rewards.view(-1, G)
        informative = [g for g in range(grouped.shape[0]) if bool((grouped[g] != grouped[g, 0]).any())]
        if informative:
            kept_batches.append(batch if len(informative) == grouped.shape[0] else select_groups(batch, informative))
            kept_rewards.append(grouped[informative].reshape(-1))
        rounds, sampled_groups, kept = rounds + 1, sampled_groups + grouped.shape[0], kept + len(informative)
        passed, rollouts = passed + sum(bool(v.passed) for v in batch.verdicts), rollouts + len(batch)
        if kept >= target or rounds >= config.max_sampling_rounds:
            break
        candidates, seen = [], set(drawn)  # the undrawn prompts, each once, in pool order
        for p in loop.train_problems:
            if _prompt_key(p) not in seen:
                seen.add(_prompt_key(p))
                candidates.append(p)
        if not candidates:
            break
        new = random.Random(round_seed(config.seed, step, rounds, 0)).sample(candidates,
                                                                            min(target - kept, len(candidates)))
        drawn.update(_prompt_key(p) for p in new)
        t0 = time.perf_counter()
        batch = sample_rollouts(policy, new, group_size=G, max_new_tokens=config.max_new_tokens,
                                temperature=config.temperature, top_p=config.top_p,
                                seed=round_seed(config.seed, step, rounds, 1), engine=config.rollout_engine)
        times["generation"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        batch.verdicts = loop.task.verify_batch(batch.problems, batch.texts)
        rewards = torch.tensor([v.reward for v in batch.verdicts], dtype=torch.float32)
        times["verification"] += time.perf_counter() - t0
    if kept < target:
        why = "the cap" if rounds >= config.max_sampling_rounds else "no undrawn problem left"
        log.info("step %d: %d of %d groups informative after %d sampling round(s) (%s): %s", step, kept, target,
                 rounds, why, f"training on those {kept}" if kept else "no update this step")
    if kept_batches:
        kept_batch = concat_batches(kept_batches, policy.tokenizer.pad_token_id)
        kept_reward = torch.cat(kept_rewards)
    else:
        kept_batch, kept_reward = select_groups(first, []), rewards[:0]
    return kept_batch, kept_reward, {"rounds": rounds, "sampled_groups": sampled_groups, "kept_groups": kept,
                                     "discarded_groups": sampled_groups - kept, "cap_hit": float(kept < target),
                                     "pass_rate": passed / rollouts, "tokens": tokens}


# the update's per-token means: several processes' values are merged weighted by their completion tokens (under
# mask_truncated_completions kl and the clip ratios are means over the kept rows' tokens, so that weight is close,
# not exact)
TOKEN_MEANS = ("entropy", "kl", "clip_ratio", "clip_ratio/low", "clip_ratio/high", "ratio/first_pass_mean")


def _prompt_key(problem) -> tuple:
    """What the policy sees of a problem: two pool entries with the same prompt are the same problem to refill."""
    return tuple((message["role"], message["content"]) for message in problem.prompt)


def _update(config, policy, batch: RolloutBatch, advantages, optimizer, params, term: LossTerm | None = None,
            world: distributed.World = distributed.World()) -> dict:
    """mu passes of micro-batched forward/backward over the rollouts, one optimizer step per pass; a critic's
    LossTerm (its distillation loss, a head's BCE) is added to every micro-batch's loss.

    pi_old, the denominator of every pass's ratio, is the first pass's own forward (before any step, in the same
    train mode, precision and micro-batching as every later pass), detached: the sampler's recorded log-probs come
    from another computation (the static engine's merged weights, the vLLM recompute, no LoRA dropout), so a ratio
    against them is not 1 at the first pass. Their agreement is logged as ratio/first_pass_mean and _max.

    mask_truncated_completions (TRL's option): rollouts that hit max_new_tokens without EOS get loss weight 0 in
    the policy loss and in a policy-objective LossTerm (distillation); as in TRL the normalisers that count tokens
    count the kept tokens only (token-mean, a LossTerm's n_tokens), those that count rows still count every row
    (sequence-mean: B, constant: B * max_new_tokens), so a masked row adds 0 to the numerator and nothing to a
    token count. Entropy, the first-pass ratio and a critic's own LossTerm (a head's BCE) still see every token."""
    model = policy.model
    model.train()
    mask = batch.completion_mask
    dense = advantages.dim() == 2
    keep = (~batch.truncated).to(mask.dtype)[:, None] if config.mask_truncated_completions else None  # [B, 1]
    loss_mask = mask if keep is None else mask * keep  # the tokens that carry policy loss
    # normalisers so micro-batch losses (and processes' losses) sum exactly to the full-batch loss
    normalizer = world.sum(loss_denominator(loss_mask, config.loss_agg, config.max_new_tokens))
    n_tokens = world.sum(float(mask.sum()))  # a LossTerm is a mean over the whole batch's tokens
    n_loss_tokens = n_tokens if keep is None else max(1.0, world.sum(float(loss_mask.sum())))
    # rows of one group share their prompt: one prompt forward per block of rows with one prompt (exact, see
    # objective.py). Micro-batches start at multiples of micro_batch_size and groups at multiples of G, so blocks
    # of gcd(G, micro_batch_size) rows never straddle two groups: at micro-batches of 8, G = 4 or 8 run each
    # prompt once per group, G = 12 three times and G = 16 twice (before: 12 and 16 times, unshared)
    forward = dict(temperature=config.temperature, group_size=math.gcd(config.group_size, config.micro_batch_size))
    micro = list(micro_batches(batch, config.micro_batch_size))
    ref_logp = None
    if config.beta > 0:
        with torch.no_grad(), policy.reference():
            ref_logp = [completion_logprobs(model, *inputs, with_entropy=False, **forward)[0] for _, inputs in micro]
    sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "clip_ratio/low": 0.0, "clip_ratio/high": 0.0, "entropy": 0.0,
            "term": 0.0}
    grad_norms = []
    ratio_sum, ratio_max = 0.0, float("-inf")  # first pass: pi_theta / pi_sampler over its tokens
    old_logp = [None] * len(micro)  # pi_old per micro-batch: the first pass's forward, detached
    wants_states = term is not None and term.wants_states
    for iteration in range(config.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        for i, (rows, inputs) in enumerate(micro):
            width = inputs[2].shape[1]
            micro_mask = inputs[3]
            micro_loss_mask = micro_mask if keep is None else micro_mask * keep[rows]
            support_ids = None if term is None or term.support_ids is None else term.support_ids[rows, :width]
            out = completion_logprobs(model, *inputs, support_ids=support_ids, return_states=wants_states, **forward)
            logp, entropy = out[0], out[1]
            if iteration == 0:
                old_logp[i] = logp.detach()  # pi_old: this policy before any step, computed as pi is
            old = old_logp[i]
            if iteration == 0:  # the update's forward vs the sampler's recorded log-probs, before any step: 1 up
                # to numerics (engine vs HF forward, and bf16 rounding under precision bf16)
                ratio = torch.exp(logp.detach() - batch.logprobs[rows, :width])[micro_mask.bool()]
                if ratio.numel():
                    ratio_sum += float(ratio.sum())
                    ratio_max = max(ratio_max, float(ratio.max()))
            loss, stats = policy_loss(logp, old, advantages[rows, :width] if dense else advantages[rows],
                                      micro_loss_mask, ref_logp=None if ref_logp is None else ref_logp[i],
                                      beta=config.beta, eps_low=config.epsilon, eps_high=config.epsilon_high,
                                      loss_agg=config.loss_agg, max_completion_length=config.max_new_tokens,
                                      normalizer=normalizer, importance_sampling_level=config.importance_sampling_level)
            extra = None
            if term is not None:
                computed = UpdateForward(logp, support_logprobs=out[2] if support_ids is not None else None,
                                         states=out[-1] if wants_states else None)
                if term.policy_objective:  # part of the policy's loss: truncated rows masked as the surrogate's
                    extra, logged = term(computed, rows, micro_loss_mask, n_loss_tokens)
                else:  # the critic's own parameters learn from every rollout
                    extra, logged = term(computed, rows, micro_mask, n_tokens)
                sums["term"] += logged
                if term.policy_objective:  # part of the policy's loss (and of the logged `loss`)
                    loss = loss + extra
            sums["loss"] += float(loss.detach())
            if extra is not None and not term.policy_objective:  # trains the critic's parameters through this forward
                loss = loss + extra
            loss.backward()
            # token share of this micro-batch (of the tokens that carry loss: kl and clip_ratio are means over them)
            weight = float(micro_mask.sum()) / float(mask.sum()) if keep is None else \
                float(micro_loss_mask.sum()) / max(1.0, float(loss_mask.sum()))
            sums["kl"] += stats["kl"] * weight if not math.isnan(stats["kl"]) else 0.0
            for name in ("clip_ratio", "clip_ratio/low", "clip_ratio/high"):  # low: rho < 1 - eps, A < 0; high
                sums[name] += stats[name] * weight
            sums["entropy"] += float((entropy.detach() * micro_mask).sum()) / float(mask.sum())
        world.sum_gradients(params)  # several processes: the whole batch's gradient on every process
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError("gradient norm is not finite (lower learning_rate)")
        optimizer.step()
        if _non_finite(params):  # a finite gradient can still overflow the weights (a huge learning rate)
            raise FloatingPointError("the LoRA weights are not finite after the update (lower learning_rate)")
        grad_norms.append(float(grad_norm))
    n = config.num_iterations
    return {"loss": sums["loss"] / n, "kl": sums["kl"] / n if config.beta > 0 else float("nan"),
            "clip_ratio": sums["clip_ratio"] / n, "clip_ratio/low": sums["clip_ratio/low"] / n,
            "clip_ratio/high": sums["clip_ratio/high"] / n, "entropy": sums["entropy"] / n,
            "grad_norm": sum(grad_norms) / n, "learning_rate": config.learning_rate,
            "ratio/first_pass_mean": ratio_sum / max(1.0, float(mask.sum())),
            "ratio/first_pass_max": ratio_max if ratio_max > float("-inf") else float("nan"),
            **({term.name: sums["term"] / n} if term is not None else {})}


def _sample_rows(step, batch: RolloutBatch, rewards, tokenizer=None, advantages=None, teacher=None) -> list[dict]:
    """One row per rollout. With a teacher pass or per-token advantages, also the completion's tokens and, per
    token, the teacher-minus-student log-ratio and the advantage (for heat strips of where a signal lands)."""
    rows = [{"step": step, "problem_id": p.id, "group": int(g), "prompt": p.prompt[-1]["content"],
             "completion": text, "reward": float(r), "passed": v.passed, "feedback": v.feedback,
             "extracted": v.extracted, "answer": p.answer}
            for p, g, text, r, v in zip(batch.problems, batch.group_ids, batch.texts, rewards, batch.verdicts)]
    if teacher is not None and teacher.extras is not None:  # e.g. the judge's critique and score
        for row, extra in zip(rows, teacher.extras):
            row.update(extra)
    if batch.overlong_penalty is not None:  # the reward above includes it; the verifier's is reward - penalty
        for row, penalty in zip(rows, batch.overlong_penalty.tolist()):
            row["overlong_penalty"] = round(penalty, 6)
    dense = advantages is not None and advantages.dim() == 2
    if tokenizer is None or (teacher is None and not dense):
        return rows
    lengths = batch.completion_mask.sum(1).tolist()
    for i, row in enumerate(rows):
        n = int(lengths[i])
        row["tokens"] = tokenizer.convert_ids_to_tokens(batch.completion_ids[i, :n].tolist())
        if teacher is not None and teacher.values is not None:
            row["token_value"] = [round(x, 4) for x in teacher.values[i, :n].tolist()]
        if teacher is not None and teacher.logprobs is not None:
            row["token_log_ratio"] = [round(x, 4) for x in (teacher.logprobs[i, :n] - batch.logprobs[i, :n]).tolist()]
        if dense:
            row["token_advantage"] = [round(x, 4) for x in advantages[i, :n].tolist()]
    return rows


def _save_checkpoint(run: RunDir, policy, optimizer, step: int, state: dict, critic=None) -> None:
    path = run.checkpoint_dir(step)
    try:
        policy.save_adapter(path / "adapter")
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        has_critic = bool(critic is not None and critic.state_dict())
        if has_critic:
            torch.save(critic.state_dict(), path / "critic.pt")  # e.g. sdpo's EMA teacher
        # has_critic: so that a deleted critic.pt is a damaged checkpoint, not a silently fresh critic
        (path / "trainer_state.json").write_text(json.dumps({**state, "step": step, "has_critic": has_critic}))
        run.mark_complete(path)  # written last: a checkpoint without it is ignored on resume
    except OSError:
        shutil.rmtree(path, ignore_errors=True)  # a half-written checkpoint only takes space (a full disk)
        raise
