"""The loop on code: rollout -> sandbox -> feedback -> self-teacher pass -> critic -> update, on the tiny policy,
with the sandbox's feedback text inside the teacher's context."""

import pytest

import scpo_lab.teacher as teacher_module
from scpo_lab.config import make_config
from scpo_lab.tasks import Task, Verdict, get_task, mbppplus
from scpo_lab.trainer import train

HEADLINES = ("Accepted", "Wrong Answer", "Runtime Error", "Time Limit Exceeded", "Memory Limit Exceeded",
             "Compile Error", "No code was found")


@pytest.mark.parametrize("task_name", ["mbppplus", "livecodebench"])
def test_scpo_divergence_trains_on_code_and_teacher_reads_sandbox_feedback(tmp_path, monkeypatch, task_name):
    # expected outputs in a fresh folder; the model cache (the tiny policy's tokenizer) stays where it is
    monkeypatch.setattr(mbppplus, "_cache_dir", lambda: tmp_path / "expected")
    contexts = []
    real = teacher_module.privileged_messages

    def recording(prompt, verdict):
        messages = real(prompt, verdict)
        contexts.append((verdict, messages[-1]["content"]))
        return messages

    monkeypatch.setattr(teacher_module, "privileged_messages", recording)
    config = make_config("smoke", method="scpo-divergence", runs_dir=str(tmp_path / "runs"),
                         task={"name": task_name, "options": {"workers": 2}})
    run = train(config, progress=False)
    df = run.metrics
    assert df["step"].tolist() == [1, 2] and (df["time/teacher"] > 0).all()
    assert df[["loss", "grad_norm"]].notna().all().all()
    samples = run.samples()
    assert len(samples) == config.steps * config.prompts_per_step * config.group_size
    assert samples["feedback"].map(lambda f: f.startswith(HEADLINES)).all()
    assert contexts
    for verdict, text in contexts:  # the grader's note in the teacher context is the sandbox's feedback
        assert verdict.feedback in text and "tests passed" in verdict.feedback
        assert "status" in verdict.details


def test_verify_batch_default_loops_over_verify():
    task = get_task("arithmetic")
    problems = task.problems("test", n=3)
    texts = [f"The answer is {p.answer}" for p in problems[:2]] + ["no idea"]
    verdicts = task.verify_batch(problems, texts)
    assert [v.passed for v in verdicts] == [True, True, False] and all(isinstance(v, Verdict) for v in verdicts)
    assert type(task).verify_batch is Task.verify_batch
    with pytest.raises(ValueError, match="^completions: "):
        task.verify_batch(problems, texts[:1])
