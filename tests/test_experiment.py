"""What the notebooks share (scpo_lab.experiment): training and evaluating arms once, cached."""

import pytest

from scpo_lab.config import make_config
from scpo_lab.conclusions import compute_summary, cost_table, hacking_summary
from scpo_lab.experiment import arm_configs, collapse_experiment, run_experiment, sweep_configs

SETTINGS = {"n_problems": 3, "n_samples": 2, "batch_prompts": 3}


def test_checkpoint_curve_reuses_the_final_evaluation_and_caches_everything(tmp_path, monkeypatch):
    configs = {"grpo/s0": make_config("smoke", runs_dir=str(tmp_path), steps=2, save_every=1)}
    exp = run_experiment(configs, "smoke", settings=SETTINGS, checkpoint_evals=True, progress=False)
    assert exp.curve["step"].tolist() == [1, 2]
    final = exp.evals["grpo/s0"]
    assert exp.curve.loc[exp.curve.step == 2, "pass@1"].item() == final.pass_at_1
    # the step-2 checkpoint is the final adapter: one evaluation for both, plus step 1's
    assert len(exp.runs["grpo/s0"].dir.read_eval()) == 2
    import scpo_lab.experiment as experiment

    monkeypatch.setattr(experiment, "_evaluate", lambda *a, **k: pytest.fail("re-evaluated a cached run"))
    monkeypatch.setattr(experiment, "policy_for", lambda *a, **k: pytest.fail("loaded a model for cached work"))
    again = run_experiment(configs, "smoke", settings=SETTINGS, checkpoint_evals=True, progress=False)
    assert again.curve.equals(exp.curve)


def test_cost_and_hacking_tables_per_arm(tmp_path):
    configs, arm_of = arm_configs("smoke", ["grpo", "scpo-judge"], [0, 1], runs_dir=str(tmp_path))
    exp = run_experiment(configs, "smoke", settings=SETTINGS, progress=False)
    df = exp.metrics
    df["arm"] = df["label"].map(arm_of)
    costs = cost_table(df, ["grpo", "scpo-judge"]).set_index("arm")
    assert costs.loc["grpo", "extra_seconds"] == 0.0
    assert costs.loc["scpo-judge", "teacher"] > 0 and costs.loc["grpo", "teacher"] == 0
    # FLOPs per step: the run's logged total over its steps, the judge's pass included
    assert costs.loc["scpo-judge", "flops_per_step"] > costs.loc["grpo", "flops_per_step"] > 0
    hack = hacking_summary(df, exp.evals, arm_of, runs=exp.runs).set_index("arm")
    assert {"base", "grpo", "scpo-judge"} <= set(hack.index)
    assert hack.loc["grpo", "mean_length_vs_grpo"] == 1.0 and hack.loc["grpo", "train_length_vs_grpo"] == 1.0
    assert hack["train_repeated_3gram_rate"].notna()[["grpo", "scpo-judge"]].all()
    assert hack["hack/auroc"].isna()["grpo"]  # grpo has no critic score: nothing to compare with the verifier
    assert "hack/high_reward_failures" in hack and not hack["hack/high_reward_failures"].isna()["scpo-judge"]


def test_sweep_configs_change_one_field_and_the_default_point_is_the_arms_own_run():
    from scpo_lab.runs import config_hash

    configs, info = sweep_configs("smoke", "scpo-judge", "judge.samples", [1, 3], [0, 1])
    assert sorted(configs) == ["scpo-judge judge.samples=1/s0", "scpo-judge judge.samples=1/s1",
                               "scpo-judge judge.samples=3/s0", "scpo-judge judge.samples=3/s1"]
    assert configs["scpo-judge judge.samples=3/s1"].judge.samples == 3
    assert configs["scpo-judge judge.samples=3/s1"].seed == 1
    assert info["scpo-judge judge.samples=3/s0"] == {"arm": "scpo-judge", "axis": "judge.samples", "value": 3,
                                                     "point": "scpo-judge judge.samples=3"}
    own, _ = arm_configs("smoke", ["scpo-judge"], [0])  # judge.samples defaults to 1: the same run, cached once
    assert config_hash(configs["scpo-judge judge.samples=1/s0"].to_dict()) == config_hash(own["scpo-judge/s0"].to_dict())
    gspo, _ = sweep_configs("smoke", "gspo", "num_iterations", [3], [0])  # a field the arm sets: the sweep wins
    assert gspo["gspo num_iterations=3/s0"].num_iterations == 3
    g16, _ = sweep_configs("smoke", "grpo", "group_size", [16], [0])
    assert g16["grpo group_size=16/s0"].group_size == 16
    with pytest.raises(Exception, match="group_size"):
        sweep_configs("smoke", "grpo", "group_size", [0], [0])


def test_compute_summary_intervals_over_seeds_and_problems_and_the_logged_flops():
    import numpy as np
    import pandas as pd

    from scpo_lab.evaluation import EvalResult
    from scpo_lab.stats import seeds_by_problems_bootstrap

    def result(correct):  # 2 samples per problem
        rate = sum(correct) / (2 * len(correct))
        return EvalResult(task="t", split="test", n_problems=len(correct), n_samples=2, temperature=1.0,
                          max_new_tokens=8, seed=0, pass_at_1=rate, ci_low=rate, ci_high=rate, pass_at_k=[],
                          per_problem=[{"problem_id": i, "n": 2, "correct": c} for i, c in enumerate(correct)])

    metrics = pd.DataFrame([  # flops are running totals: the last step's value is the run's total
        {"label": "a/s0", "step": 1, "flops": 1e12, "generated_tokens": 10, "time/step": 2.0},
        {"label": "a/s0", "step": 2, "flops": 3e12, "generated_tokens": 20, "time/step": 2.0},
        {"label": "a/s1", "step": 1, "flops": 2e12, "generated_tokens": 12, "time/step": 1.0},
        {"label": "a/s1", "step": 2, "flops": 5e12, "generated_tokens": 24, "time/step": 3.0},
        {"label": "b/s0", "step": 2, "flops": 7e12, "generated_tokens": 30, "time/step": 5.0}])
    a0, a1, b0 = [0, 1, 0, 1, 2], [1, 1, 2, 2, 0], [2, 2, 1, 0, 0]
    evals = {"a/s0": result(a0), "a/s1": result(a1), "b/s0": result(b0)}
    table = compute_summary(metrics, evals, {"a/s0": "a", "a/s1": "a", "b/s0": "b"}).set_index("group")
    assert table.loc["a", "total_flops"] == pytest.approx(4e12) and table.loc["a", "generated_tokens"] == 22
    assert table.loc["a", "TFLOPs"] == pytest.approx(4.0)  # every summary has it (04's matched rows were NaN)
    assert table.loc["a", "seconds"] == pytest.approx(4.0) and table.loc["a", "runs"] == 2
    both = seeds_by_problems_bootstrap(np.array([a0, a1]) / 2, n_boot=4000, bounds=(0.0, 1.0))  # 2 seeds x 5 problems
    assert (table.loc["a", "pass@1"], table.loc["a", "ci_low"], table.loc["a", "ci_high"]) == pytest.approx(
        (both.value, both.low, both.high)) and table.loc["a", "ci_over"] == "seeds x problems"
    one = seeds_by_problems_bootstrap(np.array([b0]) / 2, n_boot=4000, bounds=(0.0, 1.0))  # one run: over problems
    assert (table.loc["b", "pass@1"], table.loc["b", "ci_low"], table.loc["b", "ci_high"]) == pytest.approx(
        (one.value, one.low, one.high))
    assert table.loc["b", "ci_over"] == "problems" and table.loc["b", "total_flops"] == 7e12
    assert 0 <= table["ci_low"].min() and table["ci_high"].max() <= 1


def test_collapse_experiment_trains_every_seed_and_evaluates_only_the_eval_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path))
    metrics, held, base = collapse_experiment("smoke", ["grpo"], [0, 1], eval_seeds=[1])
    assert sorted(metrics["label"].unique()) == ["grpo/s0", "grpo/s1"] and set(metrics["arm"]) == {"grpo"}
    assert held["group"].tolist() == ["grpo"] and held["runs"].tolist() == [1]  # seed 1 only: interval over problems
    assert held["ci_over"].tolist() == ["problems"] and base.task == "gsm8k"
    evaluated = [d for d in tmp_path.glob("grpo-*") if (d / "eval.json").is_file()]
    assert len(evaluated) == 1  # seed 0 trained, not evaluated


def test_grpo_flops_are_linear_in_the_group_size_and_the_match_rounds_to_the_nearest():
    """Hand-computed: N = 1000, 2 steps whose 2 prompts hold 20 and 30 tokens, 5 completion tokens per rollout,
    mu = 1. Per step, sampling 2N (T + 2 G 5) and update 6N (T + 2 G 5): F(G) = 8N (50 + 20 G) = 400000 + 160000 G."""
    from scpo_lab.experiment import matched_group_size
    from scpo_lab.flops import grpo_flops_line, sampling_flops, update_flops

    fixed, per_rollout = grpo_flops_line(1000, [20, 30], 2, 5.0)
    assert (fixed, per_rollout) == (400_000, 160_000)
    # the trainer's own count of a run at G = 4 (prompt tokens over the batch's rows: G copies of each prompt's)
    trainer_count = sum(sampling_flops(1000, 4 * t, 2 * 4 * 5, 4) + update_flops(1000, 4 * t, 2 * 4 * 5, 4, 1)
                        for t in (20, 30))
    assert trainer_count == fixed + 4 * per_rollout == 1_040_000
    assert matched_group_size(1_040_000, fixed, per_rollout) == (4, 4.0)  # the same compute: the same G
    assert matched_group_size(1_400_000, fixed, per_rollout) == (6, 6.25)  # nearest
    assert matched_group_size(1_440_000, fixed, per_rollout) == (7, 6.5)  # a tie goes up
    assert matched_group_size(1_000, fixed, per_rollout)[0] == 2  # never below 2 rollouts
    # gradient checkpointing: every row runs its own prompt in the update, so that part grows with G too
    assert grpo_flops_line(1000, [20, 30], 2, 5.0, gradient_checkpointing="on") == (100_000, 160_000 + 300_000)
    # beta > 0: the reference's forward, 2N per update token, is in the line as the trainer counts it (it was not:
    # a matched grpo with a KL term got too large a group)
    from scpo_lab.flops import reference_flops

    fixed, per_rollout = grpo_flops_line(1000, [20, 30], 2, 5.0, reference=True)
    assert (fixed, per_rollout) == (500_000, 200_000)  # 10N (50 + 20 G)
    for checkpointing in ("off", "on"):
        fixed, per_rollout = grpo_flops_line(1000, [20, 30], 2, 5.0, gradient_checkpointing=checkpointing,
                                             reference=True)
        assert fixed + 4 * per_rollout == sum(
            sampling_flops(1000, 4 * t, 40, 4) + update_flops(1000, 4 * t, 40, 4, 1, checkpointing)
            + reference_flops(1000, 4 * t, 40, 4, checkpointing) for t in (20, 30))


def test_compute_matched_grpo_spends_a_critics_flops_on_more_rollouts(tmp_path, monkeypatch):
    from scpo_lab.experiment import compute_match, compute_matched_configs, compute_matched_grpo
    from scpo_lab.trainer import policy_for

    configs, arm_of = arm_configs("smoke", ["grpo", "scpo-token", "dapo"], [0], runs_dir=str(tmp_path))
    policy = policy_for(configs["grpo/s0"])
    exp = run_experiment(configs, "smoke", evaluate=False, progress=False)
    flops = {label: float(run.metrics["flops"].iloc[-1]) for label, run in exp.runs.items()}
    # grpo matched to itself: its own group size, and the prediction is the trainer's count
    own = compute_match(exp.runs["grpo/s0"], policy=policy)
    assert own.config.group_size == 4 and own.exact_group_size == pytest.approx(4.0, abs=1e-9)
    assert own.predicted_flops == pytest.approx(flops["grpo/s0"], rel=1e-12)
    # a critic's second pass costs FLOPs: the matched grpo gets more rollouts of the same prompts
    match = compute_match(exp.runs["scpo-token/s0"], arm="scpo-token", policy=policy)
    assert match.target_flops == flops["scpo-token/s0"] > flops["grpo/s0"]
    assert match.config.group_size > 4 and match.config.method == "grpo"
    assert abs(match.predicted_flops - match.target_flops) <= match.flops_per_rollout / 2
    assert match.config.prompts_per_step == 2 and match.config.steps == 2 and "compute-matched" in match.config.notes
    trained = run_experiment({"m": match.config}, "smoke", evaluate=False, progress=False).runs["m"]
    assert float(trained.metrics["flops"].iloc[-1]) == pytest.approx(match.predicted_flops, rel=0.01)
    # the same config whatever the entry point: a run folder, or the config of a trained run
    assert compute_matched_grpo(exp.runs["scpo-token/s0"].path, arm="scpo-token", policy=policy).group_size == \
        compute_matched_grpo(configs["scpo-token/s0"], arm="scpo-token", policy=policy).group_size == \
        match.config.group_size
    # dapo's matched arm is plain grpo: no dynamic sampling, the default clip and loss
    dapo = compute_matched_grpo(exp.runs["dapo/s0"], arm="dapo", policy=policy)
    assert (dapo.dynamic_sampling, dapo.epsilon_high, dapo.loss_agg) == (False, 0.2, "sequence-mean")
    # for notebooks: one matched grpo per non-grpo run, labelled by the arm it matches
    # the matched run is grpo: the same seed's grpo run (among `runs`) predicts its completion length, not the
    # critic's own (scpo-sequence's shorter completions gave G = 12-13 and x1.14 its FLOPs in the 2026-12-02 set)
    from scpo_lab import experiment

    grpo_tokens = own.completion_tokens
    lengths_used = []
    real = experiment.compute_matched_grpo
    monkeypatch.setattr(experiment, "compute_matched_grpo",
                        lambda run, **kw: lengths_used.append(kw.get("completion_tokens")) or real(run, **kw))
    matched, matched_arm = compute_matched_configs(exp.runs, arm_of, policy=policy)
    assert sorted(matched) == ["grpo@dapo/s0", "grpo@scpo-token/s0"] and lengths_used == [grpo_tokens] * 2
    assert matched_arm["grpo@scpo-token/s0"] == "grpo@scpo-token"
    with_grpo_lengths = compute_match(exp.runs["scpo-token/s0"], arm="scpo-token", policy=policy,
                                      completion_tokens=grpo_tokens)
    assert matched["grpo@scpo-token/s0"].group_size == with_grpo_lengths.config.group_size
    assert f"completions of {grpo_tokens:.2f} tokens" in matched["grpo@scpo-token/s0"].notes
    lengths_used.clear()  # without the grpo run: the target's own lengths, as compute_match alone
    critics_only = {label: run for label, run in exp.runs.items() if arm_of[label] != "grpo"}
    assert compute_matched_configs(critics_only, arm_of, policy=policy)[0]["grpo@scpo-token/s0"].group_size == \
        match.config.group_size and lengths_used == [None, None]
    with pytest.raises(ValueError, match="no logged metrics"):
        compute_matched_grpo(make_config("smoke", seed=7, runs_dir=str(tmp_path)), policy=policy)


def test_a_set_of_cached_runs_logs_one_summary_line_not_one_per_run(tmp_path, caplog):
    """A notebook rerun loads tens of finished runs: one line for the set, none per run (166 across the reports)."""
    import logging

    configs, _ = arm_configs("smoke", ["grpo"], [0, 1], runs_dir=str(tmp_path), steps=1)
    with caplog.at_level(logging.INFO, logger="scpo_lab"):
        run_experiment(configs, "smoke", evaluate=False, progress=False)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")] == [
        f"loaded 0 of 2 runs from {tmp_path} (trained 2)"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scpo_lab"):
        again = run_experiment(configs, "smoke", evaluate=False, progress=False)
    assert all(run.loaded for run in again.runs.values())
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("scpo_lab")]
    assert messages == [f"loaded 2 of 2 runs from {tmp_path} (trained 0)"], messages  # and no "already finished"


def test_progress_bars_are_named_by_the_configs_label(tmp_path, capsys):
    """Nine arms of one method were nine bars named "scpo-divergence": each bar carries its arm and seed."""
    configs = {"my-arm/s7": make_config("smoke", runs_dir=str(tmp_path), steps=1)}
    run_experiment(configs, "smoke", settings=SETTINGS, progress=True)
    bars = capsys.readouterr().err  # tqdm draws on stderr outside a notebook
    assert "my-arm/s7: 100%" in bars and "eval my-arm/s7" in bars and "eval base" in bars
    assert "grpo:" not in bars  # the method name alone no longer names a bar
    # progress=False: no bar at all, the evaluations' included
    run_experiment({"other/s0": make_config("smoke", runs_dir=str(tmp_path), steps=1, seed=1)}, "smoke",
                   settings=SETTINGS, progress=False)
    quiet = capsys.readouterr().err
    assert "%|" not in quiet and "other/s0" not in quiet


def test_screen_arms_get_the_screen_seeds_and_an_arm_in_both_lists_gets_every_seed():
    configs, arm_of = arm_configs("smoke", ["grpo", "sdpo"], [0, 1, 2], screen_arms=["scpo-span", "sdpo"],
                                  screen_seeds=[0])
    # in order: the headline arms first (the tables list arms so), then the screens not among them
    assert list(configs) == ["grpo/s0", "grpo/s1", "grpo/s2", "sdpo/s0", "sdpo/s1", "sdpo/s2", "scpo-span/s0"]
    assert arm_of["scpo-span/s0"] == "scpo-span" and configs["sdpo/s2"].seed == 2
    # the screen run is the same config (and so the same cached run) as that arm's seed-0 run in another notebook
    full, _ = arm_configs("smoke", ["scpo-span"], [0, 1])
    assert configs["scpo-span/s0"].to_dict() == full["scpo-span/s0"].to_dict()
    with pytest.raises(ValueError, match="screen_arms: unknown 'nope'"):
        arm_configs("smoke", ["grpo"], [0], screen_arms=["nope"])


def test_checkpoint_evals_of_chosen_seeds_only(tmp_path):
    configs, _ = arm_configs("smoke", ["grpo"], [0, 1], runs_dir=str(tmp_path), steps=2, save_every=1)
    exp = run_experiment(configs, "smoke", settings=SETTINGS, checkpoint_evals=[1], progress=False)
    assert exp.curve["label"].unique().tolist() == ["grpo/s1"] and exp.curve["step"].tolist() == [1, 2]
    assert set(exp.evals) == {"base", "grpo/s0", "grpo/s1"}  # every final adapter is still evaluated
    assert len(exp.runs["grpo/s0"].dir.read_eval()) == 1  # seed 0: its final evaluation only


def test_the_base_models_cached_evaluation_is_keyed_by_how_the_base_is_loaded(tmp_path, monkeypatch):
    """base-evals/ is shared across configs: a base loaded in 4 bits (or by another backend) must not read the
    full-precision base's pass@1 (the key held only the model's name)."""
    import scpo_lab.experiment as experiment
    from scpo_lab.evaluation import EvalResult

    calls = []
    fake = EvalResult(task="arithmetic", split="test", n_problems=1, n_samples=1, temperature=1.0,
                      max_new_tokens=8, seed=0, pass_at_1=0.0, ci_low=0.0, ci_high=0.0, pass_at_k=[], per_problem=[])

    class Policy:
        def reference(self):
            import contextlib
            return contextlib.nullcontext()

    monkeypatch.setattr(experiment, "_evaluate", lambda *a, **k: calls.append(1) or fake)
    plain = make_config("smoke", runs_dir=str(tmp_path))
    quantized = make_config("smoke", runs_dir=str(tmp_path),
                            **{"model.backend": "unsloth", "model.load_in_4bit": True})
    for config in (plain, plain, quantized):
        experiment.evaluate_base(config, SETTINGS, policy=Policy(), progress=False)
    assert len(calls) == 2 and len(list((tmp_path / "base-evals").glob("*.json"))) == 2
