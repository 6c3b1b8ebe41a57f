"""What the notebooks share (scpo_lab.experiment): training and evaluating arms once, cached."""

import pytest

from scpo_lab.config import make_config
from scpo_lab.experiment import arm_configs, cost_table, hacking_summary, run_experiment

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
