"""What every notebook does: train (or load) runs, and evaluate them and the base model, with caching (the tables
and conclusions drawn from them are in conclusions.py). Evaluations are stored next to the run (eval.json) or, for
the base model, in <runs_dir>/base-evals/, keyed by what determines them, so a notebook rerun recomputes nothing
that finished.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scpo_lab import critics, tasks
from scpo_lab.conclusions import compute_summary
from scpo_lab.config import (ModelConfig, TrainConfig, collapse_eval, collapse_sizes, comparison_settings,
                             eval_settings, make_config)
from scpo_lab.evaluation import EvalResult, evaluate
from scpo_lab.runs import config_hash, default_runs_dir
from scpo_lab.tasks import get_task
from scpo_lab.trainer import Run, policy_for, train

log = logging.getLogger("scpo_lab")


# The arms the comparison notebooks share: name -> config overrides, from each critic's presets (its own module),
# so an arm that appears in several notebooks is the same config (and the same cached run) everywhere.
ARMS: dict[str, dict] = critics.arms()


def arm_configs(profile: str, arms: list[str], seeds: list[int], sizes: dict | None = None, *,
                screen_arms: list[str] = (), screen_seeds: list[int] = (0,),
                **overrides) -> tuple[dict[str, TrainConfig], dict[str, str]]:
    """({"arm/s<seed>": config}, {label: arm}) for every arm x seed, and every screen arm x screen seed: the
    profile, the comparison sizes (or `sizes`), the arm's options (ARMS) and `overrides`.

    screen_arms: arms trained on fewer seeds (default seed 0 only) to fit the report budget: a first look that the
    comparison rule reports as "no claim" (it needs conclusions.MIN_SEEDS paired seeds); an arm in both lists
    gets the `seeds`. Labels come arm by arm, the `arms` first, then the screens."""
    known = critics.arms()  # read now: critics registered after import add their arms
    unknown = [a for a in [*arms, *screen_arms] if a not in known]
    if unknown:
        field = "arms" if unknown[0] in arms else "screen_arms"
        raise ValueError(f"{field}: unknown {unknown[0]!r}; known: {', '.join(known)}")
    sizes = comparison_settings(profile)[0] if sizes is None else sizes
    # the headline arms first (tables list arms in this order), then the screens not already among them
    seeds_of = {arm: list(seeds) for arm in arms} | {arm: list(screen_seeds) for arm in screen_arms if arm not in arms}
    configs, arm_of = {}, {}
    for arm, arm_seeds in seeds_of.items():
        options = dict(known[arm])
        if profile == "smoke" and "value.critic_model" in options:
            options["value.critic_model"] = "tiny"
        for seed in arm_seeds:
            label = f"{arm}/s{seed}"
            # a sweep's override wins over the arm's own option (gspo at num_iterations=3; it raised TypeError)
            configs[label] = make_config(profile, seed=seed, **{**sizes, **options, **overrides})
            arm_of[label] = arm
    return configs, arm_of


def sweep_configs(profile: str, arm: str, field: str, values: list, seeds: list[int],
                  sizes: dict | None = None) -> tuple[dict[str, TrainConfig], dict[str, dict]]:
    """One arm with one config field swept (a dotted key such as "judge.samples", or "group_size"):
    ({"<arm> <field>=<value>/s<seed>": config}, {label: {"arm", "axis", "value", "point"}}). The point is
    "<arm> <field>=<value>"; a value equal to the arm's own setting gives the arm's cached run."""
    configs, info = {}, {}
    for value in values:
        point = f"{arm} {field}={value}"
        swept, _ = arm_configs(profile, [arm], seeds, sizes=sizes, **{field: value})
        for label, config in swept.items():
            new_label = f"{point}/s{config.seed}"
            configs[new_label] = config
            info[new_label] = {"arm": arm, "axis": field, "value": value, "point": point}
    return configs, info


# ------------------------------------------------------------------------------------------------------------------
# Compute-matched GRPO: does a critic's compute beat spending the same compute on rollouts?
# ------------------------------------------------------------------------------------------------------------------

@dataclass
class ComputeMatch:
    """A GRPO config with (about) the training FLOPs of a target run, and how it was chosen (compute_match)."""

    config: TrainConfig  # the grpo arm at the matched group size
    target_flops: float  # the target run's logged total (or the target_flops given)
    predicted_flops: float  # the matched config's training FLOPs by the trainer's count (flops.grpo_flops_line)
    exact_group_size: float  # where the FLOPs line meets the target; config.group_size is it rounded
    fixed_flops: float  # the part of the matched run's FLOPs that does not grow with the group size (prompts)
    flops_per_rollout: float  # FLOPs one more rollout per prompt adds over the whole run
    completion_tokens: float  # mean completion tokens per rollout assumed for the matched run

    @property
    def relative_error(self) -> float:
        """(predicted - target) / target: what the rounding to a whole group size leaves."""
        return (self.predicted_flops - self.target_flops) / self.target_flops


def matched_group_size(target_flops: float, fixed_flops: float, flops_per_rollout: float,
                       min_group_size: int = 2) -> tuple[int, float]:
    """(group size, exact solution) of fixed + per_rollout * G = target: the nearest whole G (a tie goes up, so
    the matched arm is never given less at a tie), at least min_group_size (2: group-relative advantages need two
    rollouts). The matched run's FLOPs are then within per_rollout / 2 of the target."""
    exact = (target_flops - fixed_flops) / flops_per_rollout
    return max(min_group_size, math.floor(exact + 0.5)), exact


def compute_match(run_or_config, *, arm: str | None = None, base: TrainConfig | None = None, policy=None,
                  target_flops: float | None = None, completion_tokens: float | None = None) -> ComputeMatch:
    """The GRPO arm with the training FLOPs of `run_or_config` (a Run, a run folder (RunDir or path), or a
    TrainConfig whose run folder holds its metrics): same prompts and steps, more (or fewer) rollouts per prompt.

    Why the group size and not prompts_per_step: a critic spends its extra compute on the step's own rollouts (a
    second pass over each), so the alternative it must beat is more rollouts of the same prompts. The matched arm
    draws exactly the target's prompts (the draws come from (seed, step) and prompts_per_step, both kept); only G
    changes, and the FLOPs are linear in G (scpo_lab/flops.py): F(G) = fixed + per_rollout * G, where `fixed` is
    the prompts' passes, replayed exactly from the seeds and the tokenizer, and per_rollout assumes the matched run's
    completions are as long on average as the target's sampled ones (its logged generated_tokens over its sampled
    rollouts, every dynamic-sampling round included; `completion_tokens` overrides, e.g. a grpo run's mean).
    G is rounded to the nearest whole value (matched_group_size): the matched FLOPs are within half a rollout per
    prompt of the target, `relative_error` says how far.

    The target's FLOPs: its run's logged cumulative `flops` after its last step (the run must be finished), or
    `target_flops`. A bare config with no run and `target_flops` assumes max_new_tokens per completion (an upper
    bound: a smaller group). N and the prompt lengths come from `policy` (any policy of the same model and LoRA
    settings) or one loaded for the config.

    The base of the matched config: `base` (a grpo config) if given, else the target's config with method grpo,
    dynamic sampling off, and, with `arm` (the target's arm in ARMS), every common field the arm's preset sets put
    back to its default (arm="dapo" gives plain grpo, not grpo with clip-higher and token-mean); `notes` (outside
    the run hash) records the match, so the config is the same cached run as grpo at that group size."""
    from scpo_lab.flops import grpo_flops_line
    from scpo_lab.rollout import encode_prompts
    from scpo_lab.seeds import step_seed
    from scpo_lab.trainer import _training_problems, parameter_count

    config, rows, name = _target_of(run_or_config)
    if target_flops is None:
        if rows is None:
            raise ValueError(f"run_or_config: {name} has no logged metrics; train it first or pass target_flops")
        if len(rows) < config.steps:
            raise ValueError(f"run_or_config: {name} has {len(rows)} of {config.steps} steps; finish it first or "
                             "pass target_flops")
        target_flops = float(rows[-1]["flops"])
    matched = _matched_base(config, arm, base)
    policy = policy if policy is not None else _policy_for_match(matched)
    task = get_task(matched.task.name, **matched.task.options)
    pool = _training_problems(task, matched)
    n_prompts = min(matched.prompts_per_step, len(pool))
    drawn = [random.Random(step_seed(matched.seed, step, 0)).sample(pool, n_prompts)
             for step in range(1, matched.steps + 1)]  # the trainer's draws (trainer.training_step, step 1)
    unique = list({id(p): p for step in drawn for p in step}.values())
    _, mask = encode_prompts(policy.tokenizer, [p.prompt for p in unique], "cpu")
    lengths = {id(p): int(n) for p, n in zip(unique, mask.sum(1).tolist())}
    step_prompt_tokens = [sum(lengths[id(p)] for p in step) for step in drawn]
    if completion_tokens is None:
        completion_tokens = (float(config.max_new_tokens) if rows is None
                             else _mean_completion_tokens(config, rows, len(pool)))
    n_params = parameter_count(policy.model)
    fixed, per_rollout = grpo_flops_line(n_params, step_prompt_tokens, n_prompts, completion_tokens,
                                         matched.num_iterations, matched.model.gradient_checkpointing,
                                         reference=matched.beta > 0)
    group_size, exact = matched_group_size(target_flops, fixed, per_rollout)
    predicted = fixed + per_rollout * group_size
    note = (f"compute-matched grpo for {name}: target {target_flops:.4g} FLOPs, group_size {group_size} "
            f"(exact {exact:.3f}, completions of {completion_tokens:.2f} tokens) predicts {predicted:.4g}")
    return ComputeMatch(config=matched.replace(group_size=group_size, notes=note).validate(),
                        target_flops=target_flops, predicted_flops=predicted, exact_group_size=exact,
                        fixed_flops=fixed, flops_per_rollout=per_rollout, completion_tokens=completion_tokens)


def _mean_completion_tokens(config: TrainConfig, rows: list[dict], pool_size: int) -> float:
    """A run's generated tokens per sampled rollout (every dynamic-sampling round included)."""
    prompts = min(config.prompts_per_step, pool_size)
    rollouts = sum(r.get("sampling/sampled_groups", prompts) for r in rows) * config.group_size
    return float(rows[-1]["generated_tokens"]) / rollouts


def compute_matched_grpo(run_or_config, **kwargs) -> TrainConfig:
    """The GRPO config with the training FLOPs of a run by raising group_size (compute_match has the details and
    the keyword arguments: arm, base, policy, target_flops, completion_tokens)."""
    return compute_match(run_or_config, **kwargs).config


def compute_matched_configs(runs: dict[str, Run], arm_of: dict[str, str], policy=None,
                            **kwargs) -> tuple[dict[str, TrainConfig], dict[str, str]]:
    """For arm_configs-style notebooks: ({"grpo@<arm>/s<seed>": matched config}, {label: "grpo@<arm>"}) for every
    trained run of an arm other than grpo (`runs`: Experiment.runs; `arm_of`: arm_configs' labels), one policy shared.
    Train them with run_experiment and put them beside the arms in compute_summary: each critic against the grpo
    that spent its compute on rollouts.

    The matched run is a grpo run, so where `runs` holds the grpo run of the same seed its completions predict the
    matched run's length (`completion_tokens`), not the target's own: a critic that shortens its completions
    (scpo-sequence: 17.7 tokens against grpo's 20.0 in the 2026-12-02 report set) would otherwise get a group
    that far overshoots its FLOPs (G = 12-13 realized x1.14 the target there; with grpo's lengths G = 11-12,
    x1.06). Without it, the target's lengths."""
    from scpo_lab.trainer import _training_problems

    shared = {"policy": policy}
    grpo_length = {}  # seed -> mean completion tokens of that seed's grpo run
    for label, run in runs.items():
        if arm_of.get(label) == critics.BASELINE:
            config, rows, _ = _target_of(run)
            if rows:
                pool = _training_problems(get_task(config.task.name, **config.task.options), config)
                grpo_length[config.seed] = _mean_completion_tokens(config, rows, len(pool))
    configs, matched_arm = {}, {}
    for label, run in runs.items():
        arm = arm_of.get(label)
        if arm is None or arm == critics.BASELINE:
            continue
        if shared["policy"] is None:
            shared["policy"] = _policy_for_match(run.config)
        options = dict(kwargs)
        if "completion_tokens" not in options and run.config.seed in grpo_length:
            options["completion_tokens"] = grpo_length[run.config.seed]
        config = compute_matched_grpo(run, arm=arm, policy=shared["policy"], **options)
        new_label = f"grpo@{arm}/s{config.seed}"
        configs[new_label], matched_arm[new_label] = config, f"grpo@{arm}"
    return configs, matched_arm


def _target_of(run_or_config) -> tuple[TrainConfig, list[dict] | None, str]:
    """(config, metrics rows or None, a name for messages) of a Run, RunDir, run folder path or TrainConfig."""
    from scpo_lab.config import config_of_record
    from scpo_lab.runs import RunDir
    from scpo_lab.trainer import run_dir_of

    if isinstance(run_or_config, TrainConfig):
        folder = run_dir_of(run_or_config)
        rows = folder.read_metrics() if folder.metrics_path.is_file() else None
        return run_or_config, rows or None, f"run {folder.path.name}"
    if isinstance(run_or_config, Run):
        config, folder = run_or_config.config, run_or_config.dir
    elif isinstance(run_or_config, (RunDir, str, Path)):
        folder = run_or_config if isinstance(run_or_config, RunDir) else RunDir(run_or_config)
        config = config_of_record(folder.config)
    else:
        raise TypeError(f"run_or_config: a Run, a run folder or a TrainConfig, got {type(run_or_config).__name__}")
    rows = sorted(folder.read_metrics(), key=lambda r: r["step"]) if folder.metrics_path.is_file() else []
    return config, rows or None, f"run {folder.path.name}"


def _matched_base(config: TrainConfig, arm: str | None, base: TrainConfig | None) -> TrainConfig:
    if base is not None:
        if base.method != critics.BASELINE:
            raise ValueError(f"base: method {base.method!r}; the matched arm is {critics.BASELINE}")
        return base
    defaults = TrainConfig()
    reset = {}
    if arm is not None:
        known = critics.arms()
        if arm not in known:
            raise ValueError(f"arm: unknown {arm!r}; known: {', '.join(known)}")
        reset = {k: getattr(defaults, k) for k in known[arm] if k != "method" and "." not in k}
    reset.update({name: getattr(defaults, name) for name in ("dynamic_sampling", "max_sampling_rounds")})
    return config.replace(method=critics.BASELINE, **reset)


def _policy_for_match(config: TrainConfig):
    from scpo_lab.trainer import policy_for

    return policy_for(config)


def collapse_experiment(profile: str, arms: list[str], seeds: list[int],
                        eval_seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, EvalResult]:
    """The GSM8K collapse-accounting runs of notebooks 01 and 05: every arm x seed at sizes.COLLAPSE_SIZES, and
    held-out GSM8K pass@1 (sizes.COLLAPSE_EVAL) of the eval_seeds' adapters and of the base model.
    -> (training metrics with an `arm` column, compute_summary of the evaluated adapters per arm, base result)."""
    configs, arm_of = arm_configs(profile, arms, seeds, sizes=collapse_sizes(profile),
                                  task={"name": "gsm8k", "options": {}})
    metrics = run_experiment(configs, profile, evaluate=False).metrics
    metrics["arm"] = metrics["label"].map(arm_of)
    evaluated = {label: c for label, c in configs.items() if c.seed in eval_seeds}
    held = run_experiment(evaluated, profile, settings=collapse_eval(profile))  # trained above: from the run cache
    return metrics, compute_summary(held.metrics, held.evals, {l: arm_of[l] for l in evaluated}), held.evals["base"]


BASE_LOADING_FIELDS = ("backend", "load_in_4bit", "fast_inference", "max_seq_length")


def _eval_key(config: TrainConfig, settings: dict) -> dict:
    return {"model": config.model.name, "task": config.task.name, "task_options": config.task.options,
            **tasks.identity(config.task.name), "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature, **settings}


def _from_dict(d: dict) -> EvalResult:
    return EvalResult(**d)


def evaluate_base(config: TrainConfig, settings: dict | None = None, policy=None, *, progress: bool = True,
                  desc: str = "eval base") -> EvalResult:
    """The base model (adapter disabled) on the config's task; cached in <runs_dir>/base-evals/<hash>.json.
    progress, desc: the evaluation's progress bar (not part of the cache key)."""
    settings = settings or {}
    # base-evals/ is shared by every config, so how the base model is loaded is part of the key (a run's own
    # evaluations live in its folder, whose hash already holds the model section); only the fields that differ
    # from ModelConfig's defaults, as the run hash treats optional fields, so the default keys stay as they were
    loading = {f: getattr(config.model, f) for f in BASE_LOADING_FIELDS
               if getattr(config.model, f) != getattr(ModelConfig(), f)}
    key = _eval_key(config, settings) | ({"loading": loading} if loading else {})
    path = default_runs_dir() if config.runs_dir is None else Path(config.runs_dir)
    path = path / "base-evals" / f"{config_hash(key)}.json"
    if path.is_file():
        return _from_dict(json.loads(path.read_text())["result"])
    policy = policy or policy_for(config)
    with policy.reference():
        result = _evaluate(policy, config, settings, progress=progress, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "result": result.to_dict()}))
    return result


def _evaluate(policy, config: TrainConfig, settings: dict, *, progress: bool = True,
              desc: str | None = None) -> EvalResult:
    task = get_task(config.task.name, **config.task.options)
    return evaluate(policy, task, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                    progress=progress, desc=desc, **settings)


def evaluate_run(run: Run, settings: dict | None = None, policy=None, step: int | None = None, *,
                 progress: bool = True, desc: str | None = None) -> EvalResult:
    """The run's final adapter (or its checkpoint at `step`) on held-out problems; cached in the run folder's
    eval.json. progress, desc: the evaluation's progress bar (default name "eval <run folder>")."""
    settings = settings or {}
    key = _eval_key(run.config, settings) | ({} if step is None else {"step": step})
    for record in run.dir.read_eval():
        if record.get("key") == key:
            return _from_dict(record["result"])
    if step is None:
        policy = run.load_policy(policy)
    else:
        folders = dict(run.dir.checkpoints())
        if step not in folders:
            raise ValueError(f"step: run {run.path.name} has no complete checkpoint at step {step}; "
                             f"available: {sorted(folders) or 'none'}")
        policy = policy or policy_for(run.config)
        policy.load_adapter(folders[step] / "adapter")
    result = _evaluate(policy, run.config, settings, progress=progress, desc=desc or f"eval {run.path.name}")
    run.dir.add_eval({"key": key, "result": result.to_dict()})
    return result


@dataclass
class Experiment:
    """Several configs trained and evaluated the same way; `metrics` is one DataFrame over all runs."""

    runs: dict[str, Run]
    evals: dict[str, EvalResult]
    curve: pd.DataFrame | None = None  # held-out pass@1 at each checkpoint (run_experiment(checkpoint_evals=True))

    @property
    def metrics(self) -> pd.DataFrame:
        frames = []
        for label, run in self.runs.items():
            df = run.metrics.copy()
            df["label"], df["method"], df["seed"], df["run"] = label, run.config.method, run.config.seed, run.path.name
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def eval_table(self) -> pd.DataFrame:
        return pd.DataFrame([{"policy": label, "pass@1": r.pass_at_1, "ci_low": r.ci_low, "ci_high": r.ci_high,
                              "problems": r.n_problems, "samples": r.n_samples, "mean_length": r.mean_length}
                             for label, r in self.evals.items()])


def run_experiment(configs: dict[str, TrainConfig], profile: str, *, include_base: bool = True,
                   progress: bool = True, settings: dict | None = None, evaluate: bool = True,
                   checkpoint_evals: bool | list[int] = False) -> Experiment:
    """Train (or load) each config, evaluate the base model once and every final adapter on the same problems.
    One policy is loaded (lazily, only when something must be computed) and shared: each run resets its LoRA
    adapter before training, evaluation loads the run's adapter into it.

    settings: evaluation sizes (default: the profile's, sizes.EVAL_SETTINGS); evaluate=False trains only;
    checkpoint_evals=True also evaluates every saved checkpoint (Experiment.curve: pass@1 along training); a list
    of seeds evaluates the checkpoints of those seeds' runs only (a curve costs one evaluation per checkpoint).
    progress: the training and evaluation bars, each named by its label ("scpo-span/s1", "eval scpo-span/s1").
    The runs found finished are logged as one line ("loaded 18 of 18 runs from runs (trained 0)"), not one each."""
    settings = dict(settings or eval_settings(profile))
    shared: dict = {}

    def policy():
        if "policy" not in shared:
            shared["policy"] = policy_for(next(iter(configs.values())))
        return shared["policy"]

    runs, evals, curve = {}, {}, []
    if include_base and evaluate:
        evals["base"] = evaluate_base(next(iter(configs.values())), settings, policy=_Lazy(policy),
                                      progress=progress)
    for label, config in configs.items():
        runs[label] = train(config, _Lazy(policy), progress=progress, label=label)
        if not evaluate:
            continue
        evals[label] = evaluate_run(runs[label], settings, policy=_Lazy(policy), progress=progress,
                                    desc=f"eval {label}")
        if checkpoint_evals is True or (checkpoint_evals and config.seed in checkpoint_evals):
            tokens = {int(r["step"]): r["generated_tokens"] for r in runs[label].dir.read_metrics()}
            for step, _ in runs[label].dir.checkpoints():
                # the last checkpoint holds the final adapter: its evaluation is the one just made
                result = evals[label] if step == config.steps else evaluate_run(
                    runs[label], settings, policy=_Lazy(policy), step=step, progress=progress,
                    desc=f"eval {label} step {step}")
                curve.append({"label": label, "method": config.method, "seed": config.seed, "step": step,
                              "generated_tokens": tokens.get(step), "pass@1": result.pass_at_1,
                              "ci_low": result.ci_low, "ci_high": result.ci_high})
    log.info(_loaded_line(runs))
    return Experiment(runs=runs, evals=evals, curve=pd.DataFrame(curve))


def _loaded_line(runs: dict[str, Run]) -> str:
    """One line for a whole set (a notebook loads tens of cached runs; a line each buried its output)."""
    loaded = sum(run.loaded for run in runs.values())
    folders = ", ".join(dict.fromkeys(str(run.path.parent) for run in runs.values()))  # in order, once each
    return f"loaded {loaded} of {len(runs)} runs from {folders} (trained {len(runs) - loaded})"


class _Lazy:
    """Stands for a policy that is loaded on first attribute access (cached runs never load the model)."""

    def __init__(self, factory):
        self._factory = factory

    def __getattr__(self, name):
        return getattr(self._factory(), name)


def value_calibration(run: Run, n_problems: int = 30, group_size: int = 4, policy=None,
                      seed: int = 0) -> pd.DataFrame:
    """How well a scpo-head / scpo-critic run's value predicts the verifier on HELD-OUT rollouts, at each of its
    checkpoints: the checkpoint's adapter samples group_size rollouts for n_problems test problems, the verifier
    grades them, and the checkpoint's head or critic predicts each one's success (critic.predict_success).
    -> rows (step, predicted, passed). Cached in the run folder (calibration.json), keyed by the arguments."""
    import torch

    from scpo_lab.critics import critic_class, make_critic

    config = run.config
    if not hasattr(critic_class(config.method), "predict_success"):
        with_value = [m for m in critics.methods() if hasattr(critic_class(m), "predict_success")]
        raise ValueError(f"run: method {config.method!r} has no value to calibrate; allowed: {', '.join(with_value)}")

    def compute():
        shared = policy or policy_for(config)
        rows = []
        for step, folder in run.dir.checkpoints():
            shared.load_adapter(folder / "adapter")
            critic = make_critic(config.method, config, shared.tokenizer)
            critic.load_state_dict(torch.load(folder / "critic.pt", weights_only=True))
            batch = held_out_rollouts(shared, config, n_problems, group_size, seed)
            predicted = critic.predict_success(shared, batch, config.micro_batch_size)
            rows += [{"step": step, "predicted": float(p), "passed": bool(v.passed)}
                     for p, v in zip(predicted.tolist(), batch.verdicts)]
        return rows

    key = {"n_problems": n_problems, "group_size": group_size, "seed": seed}
    return pd.DataFrame(_cached_json(run.path / "calibration.json", key, compute, field="rows"))


def judge_bias_report(run: Run, n_problems: int = 30, group_size: int = 2, max_items: int = 24, policy=None,
                      seed: int = 0) -> pd.DataFrame:
    """The judge-bias probe (metrics.judge_bias_probe) on a scpo-judge run's final policy as judge, with its own
    judge options (a planted bias included): up to max_items held-out rollouts the verifier fails, each scored
    with and without each planted phrase (same judge seed). -> one row per phrase: shift, ci_low, ci_high, n,
    biased. Cached in the run folder (bias_probe.json), keyed by the arguments."""
    from scpo_lab.critics.judge import JudgeCritic
    from scpo_lab.metrics import judge_bias_probe

    config = run.config
    if config.method != "scpo-judge":
        raise ValueError(f"run: method {config.method!r} has no judge to probe; allowed: scpo-judge")

    def compute():
        shared = run.load_policy(policy)
        batch = held_out_rollouts(shared, config, n_problems, group_size, seed)
        items = [(p.prompt, text, v) for p, text, v in zip(batch.problems, batch.texts, batch.verdicts)
                 if not v.passed][:max_items]
        judge = JudgeCritic(config, shared.tokenizer)
        report = judge_bias_probe(lambda xs: judge.score_items(shared, xs, seed=seed), items)
        return [{"phrase": phrase, **values} for phrase, values in report.items()]

    key = {"n_problems": n_problems, "group_size": group_size, "max_items": max_items, "seed": seed}
    return pd.DataFrame(_cached_json(run.path / "bias_probe.json", key, compute))


def held_out_rollouts(policy, config: TrainConfig, n_problems: int, group_size: int, seed: int):
    """group_size rollouts of n_problems test problems by `policy` at the config's sampling settings, verified."""
    from scpo_lab.rollout import sample_rollouts

    task = get_task(config.task.name, **config.task.options)
    batch = sample_rollouts(policy, task.problems("test", n=n_problems, seed=seed), group_size=group_size,
                            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                            seed=seed, engine=config.rollout_engine)
    batch.verdicts = task.verify_batch(batch.problems, batch.texts)
    return batch


def _cached_json(path: Path, key: dict, compute, field: str = "value"):
    """compute() once per key: its JSON result is kept in `path` as {"key": key, field: result}."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored[field]
    value = compute()
    path.write_text(json.dumps({"key": key, field: value}))
    return value
