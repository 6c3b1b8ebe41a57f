"""The notebooks run headlessly with papermill on the smoke profile and produce HTML reports with figures."""

import pytest

from scpo_lab.reports import build_reports, notebook_paths


def test_every_notebook_has_a_parameters_cell_and_no_stored_outputs():
    import nbformat

    paths = notebook_paths()
    assert paths, "no notebooks found"
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


def test_opening_a_notebook_in_jupyterlab_changes_nothing():
    """JupyterLab stores the kernel's kernelspec and the language_info its kernel reports, and saves with nbformat:
    the tracked files already hold exactly that, so opening (and autosaving) one leaves `git status` clean."""
    import nbformat
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        reply = client.kernel_info(reply=True, timeout=60)["content"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    spec = manager.kernel_spec
    for path in notebook_paths():
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        assert nb.metadata["kernelspec"] == {"display_name": spec.display_name, "language": spec.language,
                                             "name": "python3"}, path.name
        stored = dict(nb.metadata["language_info"])
        live = dict(reply["language_info"])
        # the patch version is the user's own Python's; everything else is the kernel's
        assert stored.pop("version").rsplit(".", 1)[0] == live.pop("version").rsplit(".", 1)[0], path.name
        assert stored == live, path.name
        assert nbformat.writes(nb) + "\n" == text, f"{path.name}: not in the layout nbformat saves"


def test_quickstart_executes_on_the_smoke_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "runs"))
    index = build_reports(profile="smoke", notebooks=["00_quickstart"], output_dir=tmp_path / "reports")
    html = (tmp_path / "reports" / "00_quickstart.html").read_text()
    index_html = index.read_text()
    assert "00_quickstart" in index_html and "git commit" in index_html
    assert "pass@1" in index_html  # the headline: the first line of the quickstart's computed conclusion
    assert html.count("data:image/png;base64") >= 4  # training curves, pass@1 bars, pass@k, phase times
    assert "Conclusion" in html and "only show that the code runs" in html
    assert "Traceback" not in html


def test_unknown_notebook_name_is_a_clear_error():
    with pytest.raises(ValueError, match="^notebooks: unknown"):
        notebook_paths(names=["99_nothing"])


def test_supervision_level_executes_on_the_smoke_profile(tmp_path, monkeypatch):
    from scpo_lab.reports import execute_notebook

    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "runs"))
    path = notebook_paths(names=["01_supervision_level"])[0]
    html = execute_notebook(path, tmp_path / "reports", {"profile": "smoke", "seeds": [0, 1]}).read_text()
    assert html.count("data:image/png;base64") >= 7  # bars, curve, 2 training panels, heat strips, gsm8k, cost
    assert "Conclusion" in html and "only show that the code runs" in html and "Traceback" not in html
    assert "GSM8K (2 seeds), mean over steps and seeds" in html and "scpo-sequence" in html
    assert "Share of the within-group advantage variance in zero-std GSM8K groups" in html
    assert "GSM8K held-out pass@1 (seeds [0])" in html
    # the one comparison rule: a finding, paired comparisons against grpo and dapo, no claim under 5 seeds
    assert "Finding:" in html and "dapo − grpo" in html and "scpo-sequence − scpo-span" in html
    assert "no claim (2 paired seeds (a claim needs 5)" in html and "Rule:" in html
    assert "already finished" not in html and "IProgress not found" not in html


def test_external_parameters_executes_on_the_smoke_profile(tmp_path, monkeypatch):
    from scpo_lab.reports import execute_notebook

    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "runs"))
    path = notebook_paths(names=["02_external_parameters"])[0]
    html = execute_notebook(path, tmp_path / "reports", {"profile": "smoke", "seeds": [0, 1],
                                                         "calibration_problems": 4}).read_text()
    # seed bars, pass@1 curve, cost bars, head and critic diagnostics, a reliability diagram per value arm
    assert html.count("data:image/png;base64") >= 8
    assert "Conclusion" in html and "only show that the code runs" in html and "Traceback" not in html
    assert "scpo-critic-shared" in html and "extra parameters" in html and "ECE" in html


def test_reasoning_preservation_executes_on_the_smoke_profile(tmp_path, monkeypatch):
    from scpo_lab.reports import execute_notebook

    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "runs"))
    path = notebook_paths(names=["03_reasoning_preservation"])[0]
    html = execute_notebook(path, tmp_path / "reports", {"profile": "smoke", "seeds": [0, 1], "n_problems": 4,
                                                         "n_samples": 4}).read_text()
    assert html.count("data:image/png;base64") >= 3  # pass@k curves, measure bars, entropy curves
    assert "Conclusion" in html and "only show that the code runs" in html and "Traceback" not in html
    assert "pass@4 (mean over seeds and problems)" in html and "Finding:" in html and "arithmetic claims per completion" in html
    assert "Token entropy on the policy&#x27;s own held-out samples: base" in html or \
        "Token entropy on the policy's own held-out samples: base" in html


def test_methods_head_to_head_executes_on_the_smoke_profile(tmp_path, monkeypatch):
    from scpo_lab.reports import execute_notebook

    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "runs"))
    path = notebook_paths(names=["05_methods_head_to_head"])[0]
    html = execute_notebook(path, tmp_path / "reports", {"profile": "smoke", "seeds": [0, 1], "probe_problems": 4,
                                                         "gsm8k_seeds": [0, 1]}).read_text()
    # seed bars, pass@k, cost bars, instrument bars, exploitable-judge curves
    assert html.count("data:image/png;base64") >= 5
    assert "Conclusion" in html and "only show that the code runs" in html and "Traceback" not in html
    assert "Every method named by the question is built" in html
    assert "Exploitable judge (scpo-judge-exploitable/s0)" in html and "Judge-bias probe" in html
    assert "GSM8K (2 seeds" in html and "held-out pass@1" in html and "scpo-irl-B" in html
    assert "random-reward" in html and "rlsd − grpo" in html and "Finding:" in html
    assert "Instruments that moved as an exploit moves them" in html and "Qualitative evidence" in html


def test_scaling_executes_on_the_smoke_profile(tmp_path, monkeypatch):
    from scpo_lab.reports import execute_notebook

    monkeypatch.setenv("SCPO_LAB_RUNS", str(tmp_path / "runs"))
    path = notebook_paths(names=["04_scaling"])[0]
    html = execute_notebook(path, tmp_path / "reports", {
        "profile": "smoke", "seeds": [0, 1], "arms": ["grpo", "scpo-sequence", "scpo-judge"],
        "screen_arms": ["scpo-head"], "matched_arms": ["scpo-judge"],
        "sweeps": [["grpo", "group_size", [2, 4]], ["scpo-judge", "judge.samples", [1, 2]]]}).read_text()
    assert html.count("data:image/png;base64") >= 2  # methods vs FLOPs, sweeps vs FLOPs
    assert "Conclusion" in html and "only show that the code runs" in html and "Traceback" not in html
    assert "grpo · group_size: 2 -&gt; " in html and "scpo-judge · judge.samples: 1 -&gt; " in html
    assert "Training FLOPs relative to grpo" in html and "the size axis needs the gpu profile" in html
    assert "scpo-judge − grpo@scpo-judge" in html  # the critic against GRPO given its FLOPs
