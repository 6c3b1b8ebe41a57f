"""The loop end to end on the tiny model: metrics, run folder, caching by config hash, resume after a kill."""

import json

import pytest
import torch

import scpo_lab.trainer as trainer_module
from scpo_lab.config import make_config
from scpo_lab.runs import load_runs
from scpo_lab.trainer import train

EXPECTED_METRICS = {"reward", "reward_std", "pass_rate", "frac_reward_zero_std", "kl", "entropy", "clip_ratio",
                    "completions/mean_length", "grad_norm", "loss", "time/generation", "time/verification",
                    "time/teacher", "time/update", "generated_tokens", "flops"}


def smoke(tmp_path, **overrides):
    return make_config("smoke", runs_dir=str(tmp_path / "runs"), **overrides)


@pytest.mark.parametrize("method", ["grpo", "scpo-divergence", "random-reward"])
def test_each_method_trains_and_logs(tmp_path, method):
    run = train(smoke(tmp_path, method=method, steps=2, beta=0.04), progress=False)
    df = run.metrics
    assert df["step"].tolist() == [1, 2]
    assert EXPECTED_METRICS <= set(df.columns)
    assert df[["loss", "grad_norm", "entropy", "kl"]].notna().all().all()
    assert (df["time/teacher"] > 0).all() == (method == "scpo-divergence")
    config = json.loads((run.path / "config.json").read_text())
    assert config["method"] == method and "git_commit" in config and "package_version" in config
    assert (run.path / "final" / "adapter_config.json").is_file() and (run.path / "DONE").is_file()
    samples = run.samples()
    assert len(samples) == 2 * 2 * 4 and {"completion", "reward", "feedback"} <= set(samples.columns)


def test_finished_run_is_loaded_not_retrained(tmp_path, monkeypatch):
    cfg = smoke(tmp_path)
    first = train(cfg, progress=False)
    monkeypatch.setattr(trainer_module, "training_step", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = train(cfg, progress=False)
    assert again.path == first.path and len(again.metrics) == cfg.steps
    assert len(load_runs(tmp_path / "runs")) == cfg.steps


def test_update_moves_only_lora_weights(tmp_path):
    from scpo_lab.trainer import policy_for

    cfg = smoke(tmp_path, steps=1)
    policy = policy_for(cfg)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    train(cfg, policy, progress=False)
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


# sdpo: its EMA teacher, scpo-divergence with a probe: the probe and its optimizer must come back from the checkpoint
@pytest.mark.parametrize("method, options", [("grpo", {}), ("sdpo", {}),
                                             ("scpo-divergence", {"scpo.signal": "probe", "scpo.probe_lr": 0.1}),
                                             ("scpo-head", {"value.lr": 0.1}),
                                             ("scpo-critic", {"value.lr": 0.1, "value.warmup_steps": 1}),
                                             ("scpo-judge", {}),
                                             ("scpo-irl", {"irl.lr": 0.1})])
def test_resume_after_a_kill_has_no_duplicated_or_missing_rows(tmp_path, monkeypatch, method, options):
    from scpo_lab.tasks.base import Verdict
    task_class = type(trainer_module.get_task("arithmetic"))

    def coin_verdicts(self, problems, completions):  # the tiny model never solves arithmetic: a verifier that
        # passes about half of the completions, so heads and critics have something to learn and to restore
        return [Verdict(float(len(c) % 2), bool(len(c) % 2), "checked") for c in completions]

    monkeypatch.setattr(task_class, "verify_batch", coin_verdicts)
    cfg = smoke(tmp_path, steps=4, save_every=2, method=method, learning_rate=0.05, **options)
    reference = train(cfg.replace(runs_dir=str(tmp_path / "ref")), progress=False).metrics

    real_step = trainer_module.training_step
    calls = {"n": 0}

    def dies_in_step_4(*args, **kwargs):
        row = real_step(*args, **kwargs)
        calls["n"] += 1
        if row["step"] == 4:
            raise KeyboardInterrupt  # killed after computing step 4, before its row and checkpoint landed
        return row

    monkeypatch.setattr(trainer_module, "training_step", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(trainer_module, "training_step", real_step)
    # a torn half-written line at the end of the log, as a kill during a write leaves it
    run_dir = next((tmp_path / "runs").iterdir())
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')
    resumed = train(cfg, progress=False).metrics
    assert resumed["step"].tolist() == [1, 2, 3, 4]
    # steps 3 and 4 were replayed from the step-2 checkpoint with the same draws: same numbers as an unbroken run
    columns = ("reward", "completions/mean_length", "loss") + (("distill/loss",) if method == "sdpo" else ()) \
        + (("scpo/probe_loss",) if method == "scpo-divergence" else ()) \
        + (("head/loss_teacher", "head/loss_student") if method == "scpo-head" else ()) \
        + (("critic/value_mean", "critic/value_loss") if method == "scpo-critic" else ()) \
        + (("judge/score_mean",) if method == "scpo-judge" else ()) \
        + (("irl/disc_loss", "irl/reward_mean") if method == "scpo-irl" else ())
    for column in columns:
        assert resumed[column].tolist() == pytest.approx(reference[column].tolist(), abs=1e-5, nan_ok=True), column


def test_non_finite_gradients_stop_with_a_clear_error_and_keep_checkpoints(tmp_path, monkeypatch):
    cfg = smoke(tmp_path, steps=3, save_every=1)
    real_update = trainer_module._update

    def poisoned(config, policy, batch, advantages, *args):
        if trainer_module._update.calls == 2:
            advantages = advantages * float("nan")
        trainer_module._update.calls += 1
        return real_update(config, policy, batch, advantages, *args)

    poisoned.calls = 0
    monkeypatch.setattr(trainer_module, "_update", poisoned)
    with pytest.raises(FloatingPointError, match="not finite"):
        train(cfg, progress=False)
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "checkpoints" / "step-2" / "COMPLETE").is_file()


@pytest.mark.parametrize("options", [
    {"scpo.signal": "jsd", "scpo.top_k": 5, "scpo.aggregation": "line", "scpo.center": "group"},
    {"scpo.signal": "reverse-kl", "scpo.top_k": 0, "scpo.aggregation": "sequence", "scpo.grounding": "rlsd"},
    {"scpo.signal": "forward-kl", "scpo.aggregation": "span", "scpo.span_tokens": 3},
    {"scpo.signal": "pairwise-rank", "scpo.rank_beta": 0.5},
    {"scpo.signal": "probe", "scpo.probe_depth": 1.0},
])
def test_divergence_critic_options_train_end_to_end(tmp_path, options):
    run = train(smoke(tmp_path, method="scpo-divergence", steps=1, **options), progress=False)
    row = run.metrics.iloc[0]
    assert row[["loss", "scpo/signal_mean", "scpo/zero_std_adv_std"]].notna().all()
    assert row["scpo/signal_std"] >= 0 and 0 <= row["scpo/signal_top1pct_share"] <= 1


@pytest.mark.parametrize("method, options", [
    ("sdpo", {"distill.support": "topk", "distill.top_k": 5, "distill.grpo_weight": 0.3}),
    ("sdpo", {"distill.support": "sampled", "distill.token_clip": 1.0, "distill.teacher": "live"}),
    ("opsd", {"distill.support": "full", "distill.alpha": 1.0, "distill.token_clip": 0.5}),
])
def test_distillation_baselines_train_end_to_end(tmp_path, method, options):
    run = train(smoke(tmp_path, method=method, steps=2, **options), progress=False)
    df = run.metrics
    assert df[["loss", "grad_norm", "scpo/zero_std_adv_std", "distill/no_teacher_frac"]].notna().all().all()
    assert ("distill/loss" in df.columns) == (options["distill.support"] != "sampled")
    if method == "opsd":  # arithmetic always has a reference solution
        assert (df["distill/no_teacher_frac"] == 0).all()
