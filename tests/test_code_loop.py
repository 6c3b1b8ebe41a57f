"""The loop on code: rollout -> sandbox -> feedback -> self-teacher pass -> critic -> update, on the tiny policy,
with the sandbox's feedback text inside the teacher's context."""

import pytest

from transformers import PreTrainedTokenizerBase

from scpo_lab.config import make_config
from scpo_lab.tasks import Task, Verdict, get_task, mbppplus
from scpo_lab.trainer import train

HEADLINES = ("Accepted", "Wrong Answer", "Runtime Error", "Time Limit Exceeded", "Memory Limit Exceeded",
             "Compile Error", "No code was found")


@pytest.mark.parametrize("task_name", ["mbppplus", "livecodebench"])
def test_scpo_divergence_trains_on_code_and_teacher_reads_sandbox_feedback(tmp_path, monkeypatch, task_name):
    # expected outputs in a fresh folder; the model cache (the tiny policy's tokenizer) stays where it is
    monkeypatch.setattr(mbppplus, "_cache_dir", lambda: tmp_path / "expected")
    rendered = []  # every chat the tokenizer renders: rollout prompts and the teacher's contexts
    real = PreTrainedTokenizerBase.apply_chat_template

    def recording(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if isinstance(out, str):
            rendered.append(out)
        return out

    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", recording)
    config = make_config("smoke", method="scpo-divergence", runs_dir=str(tmp_path / "runs"),
                         task={"name": task_name, "options": {"workers": 2}})
    run = train(config, progress=False)
    df = run.metrics
    assert df["step"].tolist() == [1, 2] and (df["time/teacher"] > 0).all()
    assert df[["loss", "grad_norm"]].notna().all().all()
    samples = run.samples()
    assert len(samples) == config.steps * config.prompts_per_step * config.group_size
    assert samples["feedback"].map(lambda f: f.startswith(HEADLINES) and "tests passed" in f).all()
    teacher_contexts = [text for text in rendered if "Grader's note" in text]
    assert teacher_contexts
    for feedback in samples["feedback"]:  # the sandbox's feedback, verbatim, in what the teacher read
        assert any(feedback in text for text in teacher_contexts), feedback[:200]


def test_verify_batch_default_loops_over_verify():
    task = get_task("arithmetic")
    problems = task.problems("test", n=3)
    texts = [f"The answer is {p.answer}" for p in problems[:2]] + ["no idea"]
    verdicts = task.verify_batch(problems, texts)
    assert [v.passed for v in verdicts] == [True, True, False] and all(isinstance(v, Verdict) for v in verdicts)
    assert type(task).verify_batch is Task.verify_batch
    with pytest.raises(ValueError, match="^completions: "):
        task.verify_batch(problems, texts[:1])
