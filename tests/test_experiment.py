"""What the notebooks share (scpo_lab.experiment): training and evaluating arms once, cached."""

import pytest

from scpo_lab.config import make_config
from scpo_lab.experiment import (arm_configs, collapse_experiment, compute_summary, cost_table, hacking_summary,
                                 run_experiment, sweep_configs)

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
    g16, _ = sweep_configs("smoke", "grpo", "group_size", [16], [0])
    assert g16["grpo group_size=16/s0"].group_size == 16
    with pytest.raises(Exception, match="group_size"):
        sweep_configs("smoke", "grpo", "group_size", [0], [0])


def test_compute_summary_intervals_over_seeds_or_problems_and_the_logged_flops():
    import pandas as pd

    from scpo_lab.evaluation import EvalResult
    from scpo_lab.stats import mean_ci

    def result(p, low, high):
        return EvalResult(task="t", split="test", n_problems=10, n_samples=2, temperature=1.0, max_new_tokens=8,
                          seed=0, pass_at_1=p, ci_low=low, ci_high=high, pass_at_k=[], per_problem=[])

    metrics = pd.DataFrame([  # flops are running totals: the last step's value is the run's total
        {"label": "a/s0", "step": 1, "flops": 1e12, "generated_tokens": 10, "time/step": 2.0},
        {"label": "a/s0", "step": 2, "flops": 3e12, "generated_tokens": 20, "time/step": 2.0},
        {"label": "a/s1", "step": 1, "flops": 2e12, "generated_tokens": 12, "time/step": 1.0},
        {"label": "a/s1", "step": 2, "flops": 5e12, "generated_tokens": 24, "time/step": 3.0},
        {"label": "b/s0", "step": 2, "flops": 7e12, "generated_tokens": 30, "time/step": 5.0}])
    evals = {"a/s0": result(0.2, 0.1, 0.3), "a/s1": result(0.4, 0.3, 0.5), "b/s0": result(0.5, 0.25, 0.75)}
    table = compute_summary(metrics, evals, {"a/s0": "a", "a/s1": "a", "b/s0": "b"}).set_index("group")
    assert table.loc["a", "total_flops"] == pytest.approx(4e12) and table.loc["a", "generated_tokens"] == 22
    assert table.loc["a", "seconds"] == pytest.approx(4.0) and table.loc["a", "runs"] == 2
    mean, low, high = mean_ci([0.2, 0.4])
    assert (table.loc["a", "pass@1"], table.loc["a", "ci_low"], table.loc["a", "ci_high"]) == pytest.approx(
        (mean, low, high)) and table.loc["a", "ci_over"] == "seeds"
    assert (table.loc["b", "pass@1"], table.loc["b", "ci_low"], table.loc["b", "ci_high"]) == (0.5, 0.25, 0.75)
    assert table.loc["b", "ci_over"] == "problems" and table.loc["b", "total_flops"] == 7e12


def test_collapse_experiment_trains_every_seed_and_evaluates_only_the_eval_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path))
    metrics, held, base = collapse_experiment("smoke", ["grpo"], [0, 1], eval_seeds=[1])
    assert sorted(metrics["label"].unique()) == ["grpo/s0", "grpo/s1"] and set(metrics["arm"]) == {"grpo"}
    assert held["group"].tolist() == ["grpo"] and held["runs"].tolist() == [1]  # seed 1 only: interval over problems
    assert held["ci_over"].tolist() == ["problems"] and base.task == "gsm8k"
    evaluated = [d for d in tmp_path.glob("grpo-*") if (d / "eval.json").is_file()]
    assert len(evaluated) == 1  # seed 0 trained, not evaluated
