"""Bad input fails before any training, with one line naming the field and what is allowed."""

import json
import os

import pytest

from scpo_lab.cli import main
from scpo_lab.config import ConfigError, load_config, make_config


@pytest.mark.parametrize("overrides, field, allowed", [
    ({"method": "ppo"}, "method", "grpo, scpo-divergence"),
    ({"judge.reading": "regex"}, "judge.reading", "expected, parsed"),
    ({"judge.model": "gpt"}, "judge.model", "policy, base"),
    ({"judge.samples": 0}, "judge.samples", ">= 1"),
    ({"judge.fallback_score": 2}, "judge.fallback_score", "[0, 1]"),
    ({"irl.form": "wgan"}, "irl.form", "airl, gail"),
    ({"irl.expert": "human"}, "irl.expert", "passing, teacher"),
    ({"irl.label_smoothing": 0.5}, "irl.label_smoothing", "[0, 0.5)"),
    ({"irl.buffer_size": 0}, "irl.buffer_size", ">= 1"),
    ({"task": {"name": "mathqa"}}, "task.name", "arithmetic, gsm8k"),
    ({"model": {"backend": "jax"}}, "model.backend", "auto, hf, unsloth"),
    ({"steps": 0}, "steps", ">= 1"),
    ({"group_size": -4}, "group_size", ">= 1"),
    ({"group_size": 1}, "group_size", ">= 2"),
    ({"prompts_per_step": 2.5}, "prompts_per_step", "integer"),
    ({"learning_rate": 0}, "learning_rate", "> 0"),
    ({"top_p": 1.5}, "top_p", "(0, 1]"),
    ({"loss_agg": "mean"}, "loss_agg", "sequence-mean, token-mean, constant"),
    ({"scale_rewards": "std"}, "scale_rewards", "group, batch, none"),
    ({"rollout_engine": "vllm"}, "rollout_engine", "auto, static, hf"),
    ({"scpo.center": "batch"}, "scpo.center", "none, group"),
    ({"scpo.aggregation": "paragraph"}, "scpo.aggregation", "token, span, line, sequence"),
    ({"scpo.grounding": "mult"}, "scpo.grounding", "additive, rlsd"),
    ({"scpo.span_tokens": 0}, "scpo.span_tokens", ">= 1"),
    ({"scpo.signal": "kl"}, "scpo.signal", "log-ratio, reverse-kl, forward-kl, jsd"),
    ({"scpo.top_k": -1}, "scpo.top_k", ">= 0"),
    ({"scpo.jsd_alpha": 1.0}, "scpo.jsd_alpha", "(0, 1)"),
    ({"scpo.probe_depth": 1.5}, "scpo.probe_depth", "[0, 1]"),
    ({"scpo.rank_beta": 0}, "scpo.rank_beta", "> 0"),
    ({"distill.support": "dense"}, "distill.support", "auto, sampled, topk, full"),
    ({"distill.teacher": "frozen"}, "distill.teacher", "auto, ema, live, initial"),
    ({"distill.alpha": 2}, "distill.alpha", "[0, 1]"),
    ({"distill.token_clip": -0.1}, "distill.token_clip", "'auto' or a finite number >= 0"),
    ({"distill.is_clip": "none"}, "distill.is_clip", "'auto' or a finite number >= 0"),
    ({"max_new_tokens": 0}, "max_new_tokens", ">= 1"),
    ({"beta": -0.1}, "beta", ">= 0"),
    ({"importance_sampling_level": "group"}, "importance_sampling_level", "allowed: token, sequence"),
    ({"overlong_buffer": -1}, "overlong_buffer", "integer >= 0 (0 = off)"),
    ({"overlong_buffer": 2.5}, "overlong_buffer", "integer >= 0"),
    ({"overlong_buffer": 9}, "overlong_buffer", "<= max_new_tokens (8)"),  # smoke: 8 new tokens
    ({"overlong_penalty": -1.0}, "overlong_penalty", ">= 0"),
    ({"overlong_penalty": float("inf")}, "overlong_penalty", "finite"),
    ({"mask_truncated_completions": "yes"}, "mask_truncated_completions", "true or false"),
    ({"dynamic_sampling": "yes"}, "dynamic_sampling", "true or false"),
    ({"dynamic_sampling": True, "max_sampling_rounds": 0}, "max_sampling_rounds", ">= 1"),
    ({"max_sampling_rounds": 2.5}, "max_sampling_rounds", "integer"),
    ({"lr": 1e-4}, "lr", "allowed: method, model"),
    ({"model": {"rank": 8}}, "model.rank", "allowed: name, backend"),
])
def test_bad_values_fail_with_one_line_naming_the_field(overrides, field, allowed):
    with pytest.raises(ConfigError) as err:
        make_config("smoke", **overrides)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(field + ":"), message
    assert allowed in message


def test_unknown_profile():
    with pytest.raises(ConfigError, match="^profile: unknown 'laptop'; allowed: smoke, cpu, gpu$"):
        make_config("laptop")


def test_profiles_and_dotted_overrides():
    cfg = make_config("smoke", **{"task.options": {"digits": 2}, "scpo.weight": 0.1})
    assert cfg.model.name == "tiny" and cfg.task.options == {"digits": 2} and cfg.scpo.weight == 0.1
    assert make_config("cpu").model.name == "embedded"
    assert cfg.replace(method="scpo-divergence").method == "scpo-divergence"


def test_yaml_round_trip_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("profile: smoke\nmethod: scpo-divergence\nsteps: 3\ntask:\n  name: arithmetic\n")
    cfg = load_config(good)
    assert (cfg.method, cfg.steps, cfg.model.name) == ("scpo-divergence", 3, "tiny")

    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grpo\nsteps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"^config: '.*bad.yaml' is not valid YAML at line \d+"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors_in_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile: smoke\nmethod: nope\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: method: unknown 'nope'")


def test_missing_model_path_fails_in_validation():
    with pytest.raises(ConfigError, match="^model.name: path '/nowhere/model' does not exist"):
        make_config("smoke", model={"name": "/nowhere/model"})
    assert make_config("smoke", model={"name": "HuggingFaceTB/SmolLM2-135M-Instruct"}).model.name  # a hub id


def test_empty_dataset_fails_before_a_run_folder_or_model_exists(tmp_path, monkeypatch):
    import scpo_lab.trainer as trainer_module
    from scpo_lab.tasks.gsm8k import GSM8KTask

    monkeypatch.setattr(GSM8KTask, "problems", lambda self, split, n=None, seed=0: [])
    monkeypatch.setattr(trainer_module, "policy_for", lambda cfg: pytest.fail("loaded a model"))
    cfg = make_config("smoke", task={"name": "gsm8k"}, runs_dir=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="^task.name: 'gsm8k' yielded no training problems"):
        trainer_module.train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()


def test_cli_eval_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny", "--backend", "hf", "--problems", "2", "--samples", "2",
                 "--max-new-tokens", "4", "--output", str(out)]) == 0
    assert "pass@1" in capsys.readouterr().out and out.is_file()
    assert main(["eval", "--model", "tiny", "--problems", "0"]) == 2


def test_cli_eval_defaults_to_the_task_the_lab_trains_on(tmp_path, capsys):
    """`scpo-lab eval` on arithmetic with no --task-option: the cpu profile's task (max_operand=20, 131 held-out
    problems), so --problems' default 100 works; the bare space has 31 and says so in one line."""
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny", "--backend", "hf", "--problems", "100", "--samples", "1",
                 "--max-new-tokens", "2", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["n_problems"] == 100
    assert main(["eval", "--model", "tiny", "--backend", "hf", "--problems", "100", "--task-option"]) == 2
    assert "n: 100 exceeds the 31 distinct test problems" in capsys.readouterr().err


def test_cli_train_from_yaml_then_loads_the_finished_run(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"profile: smoke\nmethod: scpo-divergence\nsteps: 1\nruns_dir: {tmp_path / 'runs'}\n")
    assert main(["train", "--config", str(cfg), "--no-progress", "--eval-problems", "2", "--eval-samples", "2"]) == 0
    first = capsys.readouterr().out
    assert "run folder:" in first and "pass@1" in first
    assert main(["train", "--config", str(cfg), "--no-progress", "--set", "save_every=5"]) == 0  # same hash
    assert capsys.readouterr().out.splitlines()[0] == first.splitlines()[0]


# --- issue 22: options never dropped, numbers in scientific notation, nothing non-finite, empty or non-UTF-8 files

LCB_UPSTREAM = {"task.name": "livecodebench", "task.options.source": "upstream",
                "task.options.path": "/data/test6.jsonl"}


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_dotted_task_options_are_kept_when_the_task_changes(profile):
    cfg = make_config(profile, **LCB_UPSTREAM)
    assert cfg.task.name == "livecodebench"
    assert cfg.task.options == {"source": "upstream", "path": "/data/test6.jsonl"}  # not the profile's, not {}


def test_cli_set_passes_dotted_task_options_through(tmp_path, monkeypatch):
    import scpo_lab.trainer as trainer_module

    seen = {}

    def stops(config, **kwargs):  # the config the CLI built, without training it
        seen["config"] = config
        raise RuntimeError("stopped")

    monkeypatch.setattr(trainer_module, "train", stops)
    main(["train", "--profile", "smoke", "--set", *(f"{k}={v}" for k, v in LCB_UPSTREAM.items())])
    assert seen["config"].task.options == {"source": "upstream", "path": "/data/test6.jsonl"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile: smoke\n")
    main(["train", "--config", str(cfg), "--set", *(f"{k}={v}" for k, v in LCB_UPSTREAM.items())])
    assert seen["config"].task.options == {"source": "upstream", "path": "/data/test6.jsonl"}


def test_an_unknown_dotted_task_option_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"^task.options.sorce: unknown option for livecodebench; allowed: source, "
                                          "path"):
        make_config("smoke", **{"task.name": "livecodebench", "task.options.sorce": "upstream"})


def test_scientific_notation_is_a_number_in_yaml_and_set(tmp_path):
    from scpo_lab.cli import _parse_overrides

    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile: smoke\nlearning_rate: 1e-4\nvalue:\n  lr: 1.0e30\n")
    loaded = load_config(cfg)
    assert loaded.learning_rate == 1e-4 and loaded.value.lr == 1e30
    overrides = _parse_overrides(["learning_rate=2e-4", "scpo.probe_lr=5E-3", "seed=3", "notes=1e-4x"])
    assert overrides == {"learning_rate": 2e-4, "scpo.probe_lr": 5e-3, "seed": 3, "notes": "1e-4x"}
    assert make_config("smoke", **overrides).learning_rate == 2e-4


@pytest.mark.parametrize("field, value", [("learning_rate", float("inf")), ("temperature", float("inf")),
                                          ("learning_rate", float("nan")), ("value.lr", float("inf")),
                                          ("scpo.weight", float("inf")), ("max_grad_norm", float("nan")),
                                          ("judge.temperature", float("-inf"))])
def test_non_finite_numbers_are_refused_at_the_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field}: got {value!r}; must be a finite number"):
        make_config("smoke", **{field: value})


def test_an_empty_or_non_utf8_config_file_is_an_error_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"^config: '.*empty.yaml' is empty"):
        load_config(empty)
    assert main(["train", "--config", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "empty.yaml' is empty" in err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("profile: smoke\nnotes: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^config: '.*latin.yaml' is not UTF-8 text"):
        load_config(latin)


# --- issue 19: GSPO, DAPO's overlong penalty, masked truncated rollouts

def test_objective_options_are_part_of_every_runs_identity():
    """importance_sampling_level, overlong_* and mask_truncated_completions are common fields: hashed for every
    method (no exclusion at their defaults: a default changed later must never alias another run). A folder of
    the identity before issue 17, written before they existed, is still found by the old rule (migrate.py)."""
    from scpo_lab.migrate import LEGACY_ABSENT_FIELDS, legacy_exclude
    from scpo_lab.runs import DEFAULT_EXCLUDE, config_hash

    def run_hash(cfg):
        return config_hash(cfg.to_dict(), DEFAULT_EXCLUDE + cfg.hash_exclude())

    for method in ("grpo", "opsd", "scpo-judge"):
        base = make_config("smoke", method=method)
        assert not set(LEGACY_ABSENT_FIELDS) & set(base.hash_exclude())
        assert set(LEGACY_ABSENT_FIELDS) <= set(legacy_exclude(base))  # absent from every old folder
    base = make_config("smoke")
    changed = [make_config("smoke", importance_sampling_level="sequence"), make_config("smoke", overlong_buffer=4),
               make_config("smoke", overlong_buffer=4, overlong_penalty=0.5),
               make_config("smoke", mask_truncated_completions=True)]
    hashes = {run_hash(c) for c in changed}
    assert len(hashes) == len(changed) and run_hash(base) not in hashes
    assert not {"overlong_buffer", "overlong_penalty"} & set(legacy_exclude(changed[2]))  # set: hashed, old rule too


def test_cli_reports_precision_reaches_the_notebooks_and_a_bad_one_stops_before_any(tmp_path, monkeypatch, capsys,
                                                                                    fake_cpu):
    import scpo_lab.reports as reports
    from scpo_lab.sizes import REPORT_PRECISION_ENV

    monkeypatch.setenv(REPORT_PRECISION_ENV, "auto")  # recorded first, so teardown restores it whatever the CLI writes
    fake_cpu({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    seen = []
    monkeypatch.setattr(reports, "notebook_paths", lambda d, n: [tmp_path / "01_x.ipynb", tmp_path / "02_y.ipynb"])
    monkeypatch.setattr(reports, "execute_notebook", lambda *a, **k: seen.append(os.environ[REPORT_PRECISION_ENV]))
    assert main(["reports", "--output", str(tmp_path / "r")]) == 0
    # resolved once in the parent: every notebook gets 'bf16', not 'auto' to resolve again; restored afterwards
    assert seen == ["bf16", "bf16"] and os.environ[REPORT_PRECISION_ENV] == "auto"
    assert "Runs trained in <b>bf16</b>" in (tmp_path / "r" / "index.html").read_text()
    seen.clear()
    assert main(["reports", "--precision", "fp32", "--output", str(tmp_path / "r")]) == 0 and seen == ["fp32", "fp32"]
    capsys.readouterr()
    monkeypatch.setattr(reports, "execute_notebook", lambda *a, **k: pytest.fail("ran a notebook"))
    assert main(["reports", "--precision", "bf16", "--profile", "smoke", "--output", str(tmp_path / "r1")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --precision: only the cpu profile's report set")
    monkeypatch.setenv(REPORT_PRECISION_ENV, "fp16")
    assert main(["reports", "--output", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: SCPO_LAB_REPORT_PRECISION: unknown 'fp16'; allowed: auto, fp32, bf16"
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_cli_reports_says_which_sizes_and_warns_where_bf16_is_forced_against_auto(tmp_path, monkeypatch, capsys,
                                                                                   fake_cpu):
    """The report set says whether its bf16 runs are the larger ones (AMX only) and warns where bf16 is forced on a
    host where `auto` picks fp32: no bf16 instructions, or bf16 measured slower (an AVX512-BF16 Xeon with AMX
    hidden: F.linear at 0.60x fp32's speed, 2026-12-02)."""
    import html

    import scpo_lab.reports as reports
    from scpo_lab import precision
    from scpo_lab.sizes import REPORT_PRECISION_ENV

    monkeypatch.setenv(REPORT_PRECISION_ENV, "auto")
    monkeypatch.setattr(reports, "notebook_paths", lambda d, n: [tmp_path / "01_x.ipynb"])
    monkeypatch.setattr(reports, "execute_notebook", lambda *a, **k: None)
    speedup = {"value": 0.6}
    monkeypatch.setattr(precision, "cached_bf16_speedup", lambda: speedup["value"])
    cases = [({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, [], "bf16", "the larger bf16 runs (prompts_per_step 3,",
              None),
             ({"avx2", "avx512f", "avx512_bf16"}, [], "fp32", "the fp32 set's sizes", None),
             ({"avx2", "avx512f", "avx512_bf16"}, ["--precision", "bf16"], "bf16", "the fp32 set's sizes",
              "warning: bf16 measured 0.60x fp32's speed on this CPU (auto needs 1.3x); --precision auto picks fp32"),
             ({"avx2", "fma"}, ["--precision", "bf16"], "bf16", "the fp32 set's sizes",
              "warning: this CPU has no bf16 instructions: bf16 runs in software (a GRPO step measured 2.4x slower); "
              "--precision auto picks fp32 here")]
    for flags, options, trained_in, sized, warning in cases:
        fake_cpu(flags)
        assert main(["reports", *options, "--output", str(tmp_path / "r")]) == 0
        out = capsys.readouterr().out
        assert f"the cpu runs train in {trained_in} on this host at {sized}" in out, (flags, out)
        assert (warning in out) if warning else ("warning" not in out), (flags, out)
        assert os.environ[REPORT_PRECISION_ENV] == "auto"  # --precision holds for that call only
        index = (tmp_path / "r" / "index.html").read_text()
        assert f"Runs trained in <b>{trained_in}</b> at {html.escape(sized)}" in index
    speedup["value"] = 2.0  # AVX512-BF16 measured fast enough: auto picks bf16 at the fp32 set's sizes, no warning
    fake_cpu({"avx2", "avx512f", "avx512_bf16"})
    assert main(["reports", "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "train in bf16 on this host at the fp32 set's sizes" in out and "warning" not in out
