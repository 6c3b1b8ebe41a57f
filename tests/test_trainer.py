"""The loop end to end on the tiny model: metrics, run folder, caching by config hash, resume after a kill."""

import json
import math

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


# ------------------------------------------------------------------------------------------------ issue 19: GSPO,
# DAPO's overlong penalty, masked truncated rollouts (the tiny model never emits EOS: every smoke rollout runs to
# max_new_tokens = 8 and is truncated)

def _spy_policy_loss(monkeypatch):
    calls = []
    real = trainer_module.policy_loss

    def spy(logp, old, advantages, mask, **kwargs):
        loss, stats = real(logp, old, advantages, mask, **kwargs)
        calls.append({"mask": mask.detach().clone(), "loss": float(loss.detach()), **kwargs})
        return loss, stats

    monkeypatch.setattr(trainer_module, "policy_loss", spy)
    return calls


def _coin_verifier(monkeypatch):
    """A verifier passing about half of the tiny model's completions (it never solves arithmetic), so that
    groups have non-zero advantages and the surrogate a gradient."""
    from scpo_lab.tasks.base import Verdict

    task_class = type(trainer_module.get_task("arithmetic"))
    monkeypatch.setattr(task_class, "verify_batch", lambda self, problems, completions: [
        Verdict(float(len(c) % 2), bool(len(c) % 2), "checked") for c in completions])


def test_gspo_trains_and_is_grpo_exactly_at_one_iteration(tmp_path, monkeypatch):
    _coin_verifier(monkeypatch)
    calls = _spy_policy_loss(monkeypatch)
    token = train(smoke(tmp_path, steps=2), progress=False).metrics
    gspo = train(smoke(tmp_path, steps=2, importance_sampling_level="sequence"), progress=False)
    assert {c["importance_sampling_level"] for c in calls} == {"token", "sequence"}
    assert (token["grad_norm"] > 0).all()  # the coin verifier gives the groups advantages
    # mu = 1: old = current, every sequence ratio is 1, so GSPO's loss and gradient are GRPO's, bit for bit
    for column in ("loss", "grad_norm", "clip_ratio", "reward"):
        assert gspo.metrics[column].tolist() == token[column].tolist(), column
    # mu = 2: the second pass sees real ratios, clipped per sequence
    mu2 = {level: train(smoke(tmp_path, steps=2, num_iterations=2, learning_rate=0.05,
                              importance_sampling_level=level), progress=False).metrics
           for level in ("token", "sequence")}
    assert mu2["sequence"]["step"].tolist() == [1, 2]
    assert mu2["sequence"][["loss", "grad_norm", "clip_ratio"]].notna().all().all()
    assert mu2["sequence"]["loss"].tolist() != mu2["token"]["loss"].tolist()
    assert len({p.name for p in (tmp_path / "runs").iterdir()}) == 4  # each level its own run folder


@pytest.mark.parametrize("method", ["grpo", "opsd", "random-reward"])
def test_overlong_penalty_shapes_the_trained_reward_not_pass_rate(tmp_path, monkeypatch, method):
    seen = []
    real_group_advantages = trainer_module.group_advantages

    def spy(rewards, *args, **kwargs):
        seen.append(rewards.clone())
        return real_group_advantages(rewards, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "group_advantages", spy)
    run = train(smoke(tmp_path, method=method, steps=2, overlong_buffer=4, overlong_penalty=0.5), progress=False)
    df = run.metrics
    # every rollout has 8 = max_new_tokens tokens, 4 into the 4-token buffer: -4 / 4 * 0.5 = -0.5
    assert (df["completions/mean_length"] == 8).all()
    assert (df["completions/overlong_penalty_mean"] == -0.5).all() and (df["completions/overlong_frac"] == 1).all()
    samples = run.samples()
    assert (samples["overlong_penalty"] == -0.5).all()
    # GRPO's advantages come from the verifier's reward + the penalty (the tiny model passes nothing: 0 - 0.5)
    assert all(r.tolist() == [-0.5] * 8 for r in seen) and len(seen) == 2
    assert (df["pass_rate"] == 0).all()  # pass_rate stays the verifier's
    if method == "random-reward":  # the coin carries the penalty too: 1 - 0.5 or 0 - 0.5
        assert set(samples["reward"]) <= {0.5, -0.5}
    else:  # the reward trained on (and logged) = the verifier's - 0.5
        assert (df["reward"] == -0.5).all() and (samples["reward"] == -0.5).all()
    off = train(smoke(tmp_path, method=method, steps=1), progress=False).metrics
    assert "completions/overlong_penalty_mean" not in off.columns  # off: nothing logged, nothing shaped


def test_mask_truncated_completions_zeroes_their_loss_with_trl_normalisers(tmp_path, monkeypatch):
    calls = _spy_policy_loss(monkeypatch)
    real_sample = trainer_module.sample_rollouts

    def half_truncated(*args, **kwargs):  # rows 0, 2, 4, ... as if they had ended with EOS
        batch = real_sample(*args, **kwargs)
        batch.truncated = torch.arange(len(batch)) % 2 == 1
        return batch

    monkeypatch.setattr(trainer_module, "sample_rollouts", half_truncated)
    _coin_verifier(monkeypatch)
    for loss_agg in ("token-mean", "sequence-mean"):
        calls.clear()
        run = train(smoke(tmp_path, steps=2, loss_agg=loss_agg, mask_truncated_completions=True), progress=False)
        assert run.metrics[["loss", "grad_norm"]].notna().all().all() and (run.metrics["grad_norm"] > 0).all()
        for call in calls:
            rows = call["mask"].sum(1)
            assert (rows[1::2] == 0).all() and (rows[0::2] > 0).all()  # truncated rows carry no loss
            # TRL's normalisers: token-mean counts the kept tokens only, sequence-mean every row (B = 8)
            assert call["normalizer"] == (float(rows.sum()) if loss_agg == "token-mean" else 8.0)


@pytest.mark.parametrize("method", ["grpo", "opsd"])
def test_all_truncated_rollouts_masked_train_nothing(tmp_path, method):
    # every smoke rollout is truncated: the surrogate and opsd's distillation term carry no loss, no gradient
    run = train(smoke(tmp_path, method=method, steps=2, mask_truncated_completions=True), progress=False)
    df = run.metrics
    assert (df["completions/clipped_ratio"] == 1).all()
    assert (df["loss"] == 0).all() and (df["grad_norm"] == 0).all()
    if method == "opsd":
        assert (df["distill/loss"] == 0).all()
    assert (df["entropy"] > 0).all()  # the policy's entropy is still measured on every token


# ------------------------------------------------------------------------------------------------ dynamic sampling

MIXED, FLAT = [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]  # a group with signal, a group whose rewards are all equal


def _scripted(monkeypatch, rounds):
    """Stand-ins for sampling and verification with hand-countable tokens: every prompt 3 tokens, every completion
    max_new_tokens (8) tokens, and the verdicts of the k-th sampling call's groups are rounds[k] (MIXED / FLAT).
    -> the list of calls made (problem ids, rollout seed)."""
    from scpo_lab.rollout import RolloutBatch
    from scpo_lab.tasks.base import Verdict

    calls = []

    def sample(policy, problems, *, group_size, max_new_tokens, seed, **kwargs):
        calls.append({"problems": [p.id for p in problems], "seed": seed})
        B = len(problems) * group_size
        ids = torch.Generator().manual_seed(seed)
        return RolloutBatch(
            prompt_ids=torch.full((B, 3), 100), prompt_mask=torch.ones(B, 3, dtype=torch.long),
            completion_ids=torch.randint(200, 300, (B, max_new_tokens), generator=ids),
            completion_mask=torch.ones(B, max_new_tokens, dtype=torch.long),
            logprobs=torch.full((B, max_new_tokens), -5.0), texts=["x"] * B,
            problems=[p for p in problems for _ in range(group_size)],
            group_ids=torch.arange(len(problems)).repeat_interleave(group_size),
            truncated=torch.ones(B, dtype=torch.bool), group_size=group_size)

    def verify(self, problems, completions):
        groups = rounds[len(calls) - 1]
        assert len(groups) * 4 == len(completions), "a round drew another number of prompts than scripted"
        return [Verdict(r, r == 1.0, "checked") for group in groups for r in group]

    monkeypatch.setattr(trainer_module, "sample_rollouts", sample)
    monkeypatch.setattr(type(trainer_module.get_task("arithmetic")), "verify_batch", verify)
    return calls


def _spy_update(monkeypatch):
    seen = []
    real = trainer_module._update

    def spy(config, policy, batch, *args, **kwargs):
        seen.append([p.id for p in batch.problems])
        return real(config, policy, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "_update", spy)
    return seen


@pytest.mark.parametrize("case", ["cap", "filled", "none"])
def test_dynamic_sampling_keeps_informative_groups_and_counts_every_sampled_token(tmp_path, monkeypatch, case):
    """Hand-computed: 2 prompts x 4 rollouts, 3 prompt tokens, 8 completion tokens, N parameters, at most 3 rounds.
    A round samples as many new prompts as groups are missing; sampling costs 2N (prompt tokens / 4 + generated)
    per round, the update 6N (prompt tokens / 4 + generated) on the kept groups only."""
    script = {"cap": [[FLAT, MIXED], [FLAT], [FLAT]],  # 1 kept of 2 after 3 rounds: trains on that one
              "filled": [[FLAT, FLAT], [MIXED, FLAT], [MIXED]],  # 2 kept in round 3: full, cap not hit
              "none": [[FLAT, FLAT], [FLAT, FLAT], [FLAT, FLAT]]}[case]  # nothing kept: no update
    calls = _scripted(monkeypatch, script)
    updates = _spy_update(monkeypatch)
    policy = trainer_module.policy_for(smoke(tmp_path))
    policy.reset_adapter(seed=0)  # as train() starts a fresh run
    before = [p.detach().clone() for p in policy.model.parameters() if p.requires_grad]
    run = train(smoke(tmp_path, steps=1, dynamic_sampling=True, max_sampling_rounds=3), policy, progress=False)
    row = run.metrics.iloc[0]
    N = trainer_module.parameter_count(policy.model)
    # round r's rollouts: seeded by (seed, step, r); its prompts are new to the step
    from scpo_lab.seeds import round_seed
    assert [c["seed"] for c in calls] == [round_seed(0, 1, r, 1) for r in range(3)]
    drawn = [p for c in calls for p in c["problems"]]
    assert len(drawn) == len(set(drawn)) == {"cap": 4, "filled": 5, "none": 6}[case]
    expected = {  # rounds, kept, discarded, cap hit, generated tokens, FLOPs / N, the groups trained on
        "cap": (3, 1, 3, 1.0, 64 + 32 + 32, 2 * (6 + 64) + 2 * (3 + 32) * 2 + 6 * (3 + 32), [calls[0]["problems"][1]]),
        "filled": (3, 2, 3, 0.0, 64 + 64 + 32, 2 * (6 + 64) * 2 + 2 * (3 + 32) + 6 * (6 + 64),
                   [calls[1]["problems"][0], calls[2]["problems"][0]]),
        "none": (3, 0, 6, 1.0, 64 * 3, 2 * (6 + 64) * 3, None)}[case]
    rounds, kept, discarded, cap_hit, tokens, flops, trained = expected
    assert (row["sampling/rounds"], row["sampling/kept_groups"], row["sampling/discarded_groups"],
            row["sampling/cap_hit"], row["sampling/sampled_groups"]) == (rounds, kept, discarded, cap_hit,
                                                                         kept + discarded)
    assert row["generated_tokens"] == tokens and row["flops"] == flops * N
    assert row["sampling/pass_rate"] == (kept / ((kept + discarded) * 4))  # one pass per MIXED group
    # the first round's rates, the draw grpo makes at this seed and step (the kept batch's is 0 by construction;
    # pooled over the rounds, they depend on when the refill stopped)
    first = script[0]
    assert row["frac_reward_zero_std"] == sum(g == FLAT for g in first) / 2
    assert row["pass_rate"] == sum(map(sum, first)) / 8
    if trained is None:  # no informative group: no update, the LoRA weights as they were
        assert updates == [] and math.isnan(row["reward"]) and "loss" not in run.metrics
        after = [p for p in policy.model.parameters() if p.requires_grad]
        assert all(torch.equal(a, b) for a, b in zip(before, after))
    else:  # the update saw the kept groups only, in the order they were found
        assert updates == [[pid for pid in trained for _ in range(4)]]
        assert row["reward"] == 0.25 and not math.isnan(row["loss"])
        assert len(run.samples()) == 4 * kept  # samples.jsonl holds the rollouts trained on


def test_dynamic_sampling_refills_with_prompts_not_yet_drawn(tmp_path, monkeypatch):
    """The pool repeats its expressions (4 prompts, 0+0 0+1 1+0 1+1, copied to 2,000 entries): a refill must skip
    every copy of a prompt already rejected this step, not only the rejected entry (it redrew them by object)."""
    from scpo_lab.tasks.base import Verdict

    prompts = []
    real_sample = trainer_module.sample_rollouts

    def sample(policy, problems, **kwargs):
        prompts.append([p.prompt[0]["content"] for p in problems])
        return real_sample(policy, problems, **kwargs)

    def verify(self, problems, completions):  # every group zero-std: each round refills
        return [Verdict(0.0, False, "checked") for _ in completions]

    monkeypatch.setattr(trainer_module, "sample_rollouts", sample)
    monkeypatch.setattr(type(trainer_module.get_task("arithmetic")), "verify_batch", verify)
    task = {"name": "arithmetic", "options": {"max_operand": 1, "operators": "+"}}
    train(smoke(tmp_path, steps=1, task=task, dynamic_sampling=True, max_sampling_rounds=3), progress=False)
    first, refills = set(prompts[0]), [q for r in prompts[1:] for q in r]
    assert refills and len(refills) == len(set(refills)) == 4 - len(first) and not first & set(refills)


def test_dynamic_sampling_gives_the_critic_the_kept_batch_only(tmp_path, monkeypatch):
    from scpo_lab.critics import DivergenceCritic

    _scripted(monkeypatch, [[FLAT, MIXED], [FLAT], [MIXED]])
    seen = []
    real = DivergenceCritic.advantages

    def spy(self, batch, *args, **kwargs):
        seen.append(len(batch))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(DivergenceCritic, "advantages", spy)
    run = train(smoke(tmp_path, method="scpo-divergence", steps=1, dynamic_sampling=True), progress=False)
    assert seen == [8] and run.metrics.iloc[0]["sampling/kept_groups"] == 2


def test_without_dynamic_sampling_a_run_keeps_its_hash_and_rows():
    from scpo_lab.runs import DEFAULT_EXCLUDE, config_hash

    cfg = make_config("smoke")
    old = cfg.to_dict()
    del old["dynamic_sampling"], old["max_sampling_rounds"]  # a config.json written before the option existed
    exclude = DEFAULT_EXCLUDE + cfg.hash_exclude()
    assert config_hash(old, exclude) == config_hash(cfg.to_dict(), exclude)
    assert config_hash(cfg.replace(max_sampling_rounds=9).to_dict(), exclude) == config_hash(old, exclude)
    dapo = cfg.replace(dynamic_sampling=True)
    assert config_hash(dapo.to_dict(), DEFAULT_EXCLUDE + dapo.hash_exclude()) != config_hash(old, exclude)
    assert "max_sampling_rounds" not in dapo.hash_exclude()


def _half_informative(self, problems, completions):
    """A verifier under which about half the problems can never be told apart (every rollout fails) and the others
    pass by completion length: zero-std groups every step, so dynamic sampling needs extra rounds."""
    import zlib

    from scpo_lab.tasks.base import Verdict

    return [Verdict(float(ok), ok, "checked") for p, c in zip(problems, completions)
            for ok in [bool(zlib.crc32(p.id.encode()) % 2 and len(c) % 2)]]


def test_dynamic_sampling_resumes_with_the_same_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(type(trainer_module.get_task("arithmetic")), "verify_batch", _half_informative)
    cfg = smoke(tmp_path, steps=4, save_every=2, dynamic_sampling=True, max_sampling_rounds=4, learning_rate=0.05)
    reference = train(cfg.replace(runs_dir=str(tmp_path / "ref")), progress=False).metrics
    assert (reference["sampling/rounds"] > 1).any()  # the extra rounds are exercised
    real_step = trainer_module.training_step

    def dies_in_step_4(*args, **kwargs):
        row = real_step(*args, **kwargs)
        if row["step"] == 4:
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(trainer_module, "training_step", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(trainer_module, "training_step", real_step)
    resumed = train(cfg, progress=False).metrics
    assert resumed["step"].tolist() == [1, 2, 3, 4]
    for column in ("sampling/rounds", "sampling/kept_groups", "sampling/pass_rate", "generated_tokens", "flops"):
        assert resumed[column].tolist() == reference[column].tolist(), column
    for column in ("reward", "loss", "completions/mean_length"):
        assert resumed[column].tolist() == pytest.approx(reference[column].tolist(), abs=1e-5, nan_ok=True), column


def test_dapo_arm_trains_two_smoke_steps_and_is_profiled(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    from scpo_lab import critics
    from scpo_lab.experiment import arm_configs

    monkeypatch.setattr(type(trainer_module.get_task("arithmetic")), "verify_batch", _half_informative)
    configs, _ = arm_configs("smoke", ["dapo"], [0], runs_dir=str(tmp_path / "runs"))
    cfg = configs["dapo/s0"]
    assert (cfg.method, cfg.dynamic_sampling, cfg.epsilon, cfg.epsilon_high, cfg.loss_agg) == (
        "grpo", True, 0.2, 0.28, "token-mean")
    df = train(cfg, progress=False).metrics
    assert df["step"].tolist() == [1, 2] and EXPECTED_METRICS <= set(df.columns)
    assert {"sampling/rounds", "sampling/kept_groups", "sampling/discarded_groups", "sampling/cap_hit"} <= set(df)
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("step_profile", bench / "step_profile.py")
    step_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_profile)
    method, options = step_profile.VARIANTS["dapo"]  # step_profile.py profiles the arm itself
    assert {"method": method, **options} == critics.arms()["dapo"]
    sys.modules.pop("common", None)


def test_the_progress_bar_is_named_by_method_and_seed_or_the_label_given(tmp_path, capsys):
    train(smoke(tmp_path, steps=1, seed=3), progress=True)
    assert "grpo/s3: 100%" in capsys.readouterr().err  # tqdm draws on stderr outside a notebook
    train(smoke(tmp_path, steps=1, seed=4), progress=True, label="scpo-span/s4")
    assert "scpo-span/s4: 100%" in capsys.readouterr().err


@pytest.mark.parametrize("group_size, micro, block", [(12, 8, 4), (16, 8, 8), (4, 8, 4)])
def test_the_update_shares_each_prompt_in_blocks_of_gcd_of_group_and_micro_batch(tmp_path, monkeypatch,
                                                                                  group_size, micro, block):
    """Micro-batches of 8 rows cannot hold a group of 12 or 16, so a block of G rows never fit one and every row
    ran its prompt again (prompts are longer than completions at the comparison sizes). Blocks of gcd(G, 8) rows
    share one prompt in every micro-batch; equal to the unshared forward (tests/test_objective.py)."""
    from scpo_lab import objective

    blocks = []
    real = objective._shared_prompt_hidden

    def spy(backbone, input_ids, attention_mask, P, G):
        blocks.append((input_ids.shape[0], G))
        return real(backbone, input_ids, attention_mask, P, G)

    monkeypatch.setattr(objective, "_shared_prompt_hidden", spy)
    train(smoke(tmp_path, method="random-reward", steps=1, prompts_per_step=2, group_size=group_size,
                micro_batch_size=micro), progress=False)
    rows = 2 * group_size
    assert [g for _, g in blocks] == [block] * math.ceil(rows / micro)  # every micro-batch of the update
    assert sum(n for n, _ in blocks) == rows


def test_a_task_data_revision_moves_its_runs_and_evaluations_only(tmp_path):
    """The arithmetic split changed (commuted twins crossed it): a run or evaluation of the old split must not be
    loaded as one of the new, so arithmetic's revision is in the run hash and the evaluation key; GSM8K, never
    revised, keeps the hashes its cached runs have."""
    from scpo_lab import distributed
    from scpo_lab.experiment import _eval_key
    from scpo_lab.runs import RunDir

    arithmetic, gsm8k = smoke(tmp_path), smoke(tmp_path, task={"name": "gsm8k"})
    record, create = trainer_module._folder_args(arithmetic, None, distributed.world())
    assert record["task_data_revision"] == 3 and _eval_key(arithmetic, {})["task_data_revision"] == 3
    unrevised = RunDir.locate(arithmetic.to_dict(), **create)  # the folder of the identity before the revision
    assert trainer_module.run_dir_of(arithmetic).path.name != unrevised.path.name
    record, create = trainer_module._folder_args(gsm8k, None, distributed.world())
    assert record == gsm8k.to_dict() and "task_data_revision" not in _eval_key(gsm8k, {})
    assert trainer_module.run_dir_of(gsm8k).path.name == RunDir.locate(gsm8k.to_dict(), **create).path.name
    from scpo_lab import tasks
    from scpo_lab.config import RECORD_ONLY_KEYS, config_of_record

    assert tasks.IDENTITY_KEY in RECORD_ONLY_KEYS  # a record with the revision still reads back as its config
    assert config_of_record(arithmetic.to_dict() | tasks.identity("arithmetic")) == arithmetic


def test_zero_std_rate_is_the_verifiers_not_the_trained_rewards(tmp_path, monkeypatch):
    """Every rollout fails: the verifier cannot tell any group apart (rate 1), though the random-reward control's
    coin spreads them (the rate on the trained reward read 0.5-1 by the coin's luck)."""
    calls = _scripted(monkeypatch, [[FLAT, FLAT]] * 2)
    run = train(smoke(tmp_path, method="random-reward", steps=2), progress=False)
    assert len(calls) == 2 and run.metrics["frac_reward_zero_std"].tolist() == [1.0, 1.0]
    assert (run.metrics["reward_std"] > 0).all() and run.metrics["pass_rate"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("case", ["beta", "warmup"])
def test_flops_count_the_reference_pass_and_no_update_in_a_warmup(tmp_path, monkeypatch, case):
    """Hand-computed as above (2 prompts x 4 rollouts of 3 + 8 tokens: 6 + 64 tokens a pass): sampling 2N x 70,
    the update 6N x 70; beta > 0 adds the reference's forward, 2N x 70 (it was not counted); a critic's warm-up
    step trains only the critic, so it costs the update's 6N x 70 less than the same step after the warm-up (the
    teacher pass and the critic's own update, the same batch's, cost the same in both; they counted the update)."""
    _scripted(monkeypatch, [[MIXED, FLAT]] * 2)
    if case == "beta":
        cfg = smoke(tmp_path, steps=1, beta=0.04)
        row = train(cfg, progress=False).metrics.iloc[0]
        assert row["flops"] == (2 + 6 + 2) * 70 * trainer_module.parameter_count(trainer_module.policy_for(cfg).model)
        return
    rows = [train(smoke(tmp_path, steps=1, method="scpo-critic", **{"value.warmup_steps": k}), progress=False).metrics
            for k in (0, 1)]
    N = trainer_module.parameter_count(trainer_module.policy_for(smoke(tmp_path)).model)
    assert "loss" in rows[0] and "loss" not in rows[1]
    assert rows[0]["flops/critic_update"][0] == rows[1]["flops/critic_update"][0]
    assert rows[0]["flops"][0] - rows[1]["flops"][0] == 6 * 70 * N


def test_the_heads_student_auroc_is_logged_in_its_own_step(tmp_path, monkeypatch):
    """head/auroc_student scores the update's own forward of step s: it belongs to step s's row (it came a step
    late, so a one-step run, or the first step after a resume, had none), one prediction per rollout under mu = 2."""
    _scripted(monkeypatch, [[MIXED, MIXED]])
    run = train(smoke(tmp_path, steps=1, method="scpo-head", num_iterations=2), progress=False)
    assert 0.0 <= run.metrics["head/auroc_student"].iloc[0] <= 1.0
