"""SCPO critics inside TRL's GRPOTrainer: the reward function, the dense-advantage subclass, the example script."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from scpo_lab.config import make_config  # noqa: E402
from scpo_lab.critics import make_critic  # noqa: E402
from scpo_lab.integrations.trl import ScpoReward, VerifierReward  # noqa: E402
from scpo_lab.models import tiny_policy  # noqa: E402
from scpo_lab.rollout import sample_rollouts  # noqa: E402
from scpo_lab.tasks import get_task  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "trl_scpo.py"


def _example():
    spec = importlib.util.spec_from_file_location("trl_scpo_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fake_trainer(policy, group):
    """What the bridge reads from a GRPOTrainer: model, processing_class, accelerator.device, num_generations."""
    return SimpleNamespace(model=policy.model, processing_class=policy.tokenizer, num_generations=group,
                           accelerator=SimpleNamespace(device=policy.device))


def test_reward_function_reproduces_the_lab_critic_on_the_same_rollouts():
    """The bridge rebuilds the batch from TRL's inputs (chat prompts, unpadded completion ids, dataset columns) and
    recomputes the student's log-probs: its reward must equal scpo_lab's critic on the sampled batch."""
    policy = tiny_policy()
    task = get_task("arithmetic")
    problems = task.problems("train", n=2, seed=0)
    batch = sample_rollouts(policy, problems, group_size=3, max_new_tokens=6, seed=0)
    batch.verdicts = task.verify_batch(batch.problems, batch.texts)
    cfg = make_config("smoke", method="scpo-divergence")
    critic = make_critic("scpo-divergence", cfg, policy.tokenizer)
    result = critic.advantages(batch, torch.zeros(len(batch)), critic.teacher_pass(policy, batch, temperature=1.0,
                                                                            micro_batch_size=4))
    reward = ScpoReward("scpo-divergence", task, problems, config=cfg).bind(_fake_trainer(policy, 3))
    lengths = batch.completion_mask.sum(1).tolist()
    completion_ids = [batch.completion_ids[i, :n].tolist() for i, n in enumerate(lengths)]
    out = reward(prompts=[p.prompt for p in batch.problems], completions=batch.texts,
                 completion_ids=completion_ids, problem_id=[p.id for p in batch.problems])
    assert out == pytest.approx(result.sequence_reward.tolist(), abs=1e-4)
    verifier = VerifierReward(task, problems)
    assert verifier(batch.texts, batch.texts, problem_id=[p.id for p in batch.problems]) == \
        [v.reward for v in batch.verdicts]


def test_reward_function_errors_say_what_to_do():
    task = get_task("arithmetic")
    problems = task.problems("train", n=1, seed=0)
    with pytest.raises(ValueError, match="ScpoGRPOTrainer"):
        ScpoReward("scpo-critic", task, problems)
    with pytest.raises(ValueError, match="value.reward"):
        ScpoReward("scpo-head", task, problems)
    with pytest.raises(RuntimeError, match="bind"):
        ScpoReward("scpo-judge", task, problems)(prompts=[], completions=["1"], completion_ids=[[1]],
                                                 problem_id=[problems[0].id])
    with pytest.raises(KeyError, match="problem_id"):
        VerifierReward(task, problems)([], ["1"], problem_id=["nope"])


@pytest.mark.slow
def test_example_trains_two_steps_with_the_dense_critic(tmp_path):
    history = _example().main(["--model", "tiny", "--steps", "2", "--max-completion-length", "6",
                               "--output", str(tmp_path / "dense")])
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        # the tiny model never solves a problem: every group is all-fail, GRPO alone has no gradient, and the
        # critic's per-token advantages are what reaches the loss
        assert h["frac_reward_zero_std"] == 1.0 and h["scpo/zero_std_adv_std"] > 0
        assert h["grad_norm"] > 0 and torch.isfinite(torch.tensor(h["loss"]))


@pytest.mark.slow
def test_example_trains_two_steps_with_a_critic_as_reward_function(tmp_path):
    history = _example().main(["--model", "tiny", "--steps", "2", "--max-completion-length", "6", "--mode",
                               "reward", "--output", str(tmp_path / "reward")])
    assert [h["step"] for h in history] == [1, 2]
    assert all("rewards/scpo-divergence/mean" in h and "rewards/verifier/mean" in h for h in history)
    assert all(h["frac_reward_zero_std"] < 1.0 for h in history)  # the critic's reward varies within groups
