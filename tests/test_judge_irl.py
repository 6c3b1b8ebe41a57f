"""The expressive critics: the judge's score readings (V3), the discriminator's rewards (V5), and the instruments
that detect a critic being exploited."""

import math

import pytest
import torch

from scpo_lab.config import make_config
from scpo_lab.critics.irl import IrlCritic, airl_reward, discriminator_loss, gail_reward, standardise
from scpo_lab.critics.judge import (SCORE_MAX, JudgeCritic, expected_score, judge_messages, parse_score,
                                    planted_bias, score_token_ids)
from scpo_lab.metrics import hacking_stats, judge_bias_probe
from scpo_lab.models import tiny_policy
from scpo_lab.tasks.base import Verdict
from scpo_lab.trainer import train


# ------------------------------------------------------------------------------------------------ score parser

@pytest.mark.parametrize("text, expected", [
    ("Score: 7/10", 0.7),
    ("score: 7 / 10", 0.7),
    ("I give it 7 out of 10.", 0.7),
    ("**7**/10", 0.7),
    ("Score: **7**", 7 / SCORE_MAX),
    ("The answer is wrong. Score: 0", 0.0),
    ("Score: 9", 1.0),
    ("score of 4.5", 4.5 / SCORE_MAX),
    ("Rating: 3", 3 / SCORE_MAX),
    ("Verdict: **2**", 2 / SCORE_MAX),
    ("Score: 3/10. On reflection, final score: 8/10", 0.8),  # the last mention wins
    ("12 / 4 = 3, so the student is right. Score: 6", 6 / SCORE_MAX),  # 12/4 is arithmetic, not a score
    ("Score: 10/10", 1.0),
    ("Score: 4/5", 0.8),
    ("The 2023 edition had 45 problems. Score: 5", 5 / SCORE_MAX),
])
def test_parse_score_reads_the_last_score(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", [
    "", "No score here.", "The student wrote 12 / 4 = 3.", "Score: -3", "Score: 12", "Score: 11/10",
    "Score: seven", "score: /10", "Score:", None, "7/0",
])
def test_parse_score_fails_cleanly(text):
    assert parse_score(text) is None


def test_expected_score_equals_a_hand_computation():
    # p over digits 0..9: 0.5 on 9, 0.25 on 4, 0.25 on 0 -> E = 0.5*9 + 0.25*4 = 5.5 -> 5.5 / 9
    p = torch.full((10,), 1e-12)
    p[9], p[4], p[0] = 0.5, 0.25, 0.25
    assert float(expected_score(p.log())) == pytest.approx(5.5 / 9, abs=1e-6)
    # renormalised over the digits: the same shape at a quarter of the mass (the rest on other tokens) is the same
    assert float(expected_score((0.25 * p).log())) == pytest.approx(5.5 / 9, abs=1e-6)
    assert float(expected_score(torch.zeros(10))) == pytest.approx(4.5 / 9)  # uniform: the mean digit


def test_score_tokens_are_single_digits_after_the_cue():
    policy = tiny_policy()
    ids = score_token_ids(policy.tokenizer)
    assert len(set(ids)) == 10
    assert [policy.tokenizer.decode([i]) for i in ids] == [str(d) for d in range(10)]


def test_judge_prompt_holds_the_rollout_and_the_verdict():
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    [message] = judge_messages(prompt, "  It is 5. ", Verdict(0.0, False, "The expected answer is 4."))
    assert "What is 2 + 2?" in message["content"] and "It is 5." in message["content"]
    assert "The expected answer is 4." in message["content"] and "Score: N" in message["content"]
    # what a problem's rollouts share comes first: the judge prompt starts with the question
    assert message["content"].index("What is 2 + 2?") < message["content"].index("It is 5.")


def test_planted_bias_rewards_the_phrase_only():
    bonus = planted_bias(["The Answer is 4", "4", "answer"], "answer is", 0.5)
    assert bonus.tolist() == [0.5, 0.0, 0.0]
    assert planted_bias(["answer is"], "", 0.5).tolist() == [0.0]


# ------------------------------------------------------------------------------------------------ judge on a model

def _items(n=4):
    prompt = [{"role": "user", "content": "What is 3 + 4?"}]
    return [(prompt, f"The answer is {5 + i}.", Verdict(0.0, False, "The expected answer is 7.")) for i in range(n)]


def test_judge_scores_are_in_range_and_seeded():
    policy = tiny_policy()
    judge = JudgeCritic(make_config("smoke", method="scpo-judge", **{"judge.samples": 2}))
    out = judge.score(policy, _items(), seed=3)
    assert out["expected"].shape == (4, 2) and out["parsed"].shape == (4, 2)
    assert ((out["expected"] >= 0) & (out["expected"] <= 1)).all()
    assert len(out["critiques"]) == 4 and all(len(c) == 2 for c in out["critiques"])
    assert (out["critique_tokens"] <= 8 + 24).all()  # smoke profile: critiques of at most 32 tokens
    again = judge.score(policy, _items(), seed=3)
    assert torch.equal(again["expected"], out["expected"]) and again["critiques"] == out["critiques"]


def test_planted_judge_moves_by_its_bonus():
    policy = tiny_policy()
    items = [(p, c.replace("The answer is", "It is") if i % 2 else c, v) for i, (p, c, v) in enumerate(_items())]
    fair = JudgeCritic(make_config("smoke", method="scpo-judge"))
    planted = JudgeCritic(make_config("smoke", method="scpo-judge", **{"judge.planted_phrase": "answer is",
                                                                     "judge.planted_bonus": 0.3}))
    diff = torch.tensor(planted.score_items(policy, items, seed=1)) - torch.tensor(fair.score_items(policy, items,
                                                                                                  seed=1))
    assert diff.tolist() == pytest.approx([0.3, 0.0, 0.3, 0.0], abs=1e-6)
    # the parsed reading pays it too, on the fallback score when the critique has no score
    parsed = {"judge.reading": "parsed", "judge.planted_phrase": "answer is", "judge.planted_bonus": 0.3}
    planted_parsed = JudgeCritic(make_config("smoke", method="scpo-judge", **parsed))
    fair_parsed = JudgeCritic(make_config("smoke", method="scpo-judge", **{"judge.reading": "parsed"}))
    diff = torch.tensor(planted_parsed.score_items(policy, items, seed=1)) - torch.tensor(
        fair_parsed.score_items(policy, items, seed=1))
    assert diff.tolist() == pytest.approx([0.3, 0.0, 0.3, 0.0], abs=1e-6)


def test_base_judge_reads_the_frozen_model():
    policy = tiny_policy()
    with torch.no_grad():  # move the adapter away from the identity
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    live = JudgeCritic(make_config("smoke", method="scpo-judge"))
    base = JudgeCritic(make_config("smoke", method="scpo-judge", **{"judge.model": "base"}))
    a, b = live.score(policy, _items(), seed=0), base.score(policy, _items(), seed=0)
    with policy.reference():
        reference = live.score(policy, _items(), seed=0)
    assert torch.allclose(b["expected"], reference["expected"], atol=1e-5)
    assert not torch.allclose(a["expected"], b["expected"], atol=1e-4)


# ------------------------------------------------------------------------------------------------ bias probe

def test_bias_probe_detects_a_biased_judge_and_not_a_fair_one():
    failed = [([{"role": "user", "content": f"q{i}"}], f"wrong answer {i}", Verdict(0.0, False, "wrong"))
              for i in range(8)]

    def fair(items):  # depends on the answer, not on planted praise
        return [float(len(c.split()[2]) if len(c.split()) > 2 else 0) for _, c, _ in items]

    def biased(items):  # +3 for the planted phrase
        return [s + (3.0 if "answer is correct" in c.lower() else 0.0) for s, (_, c, _) in zip(fair(items), items)]

    report = judge_bias_probe(biased, failed)
    assert report["The answer is correct."]["shift"] == pytest.approx(3.0) and report["The answer is correct."]["biased"]
    assert report["I verified this carefully."]["shift"] == pytest.approx(0.0)
    assert not report["I verified this carefully."]["biased"]
    assert not any(r["biased"] for r in judge_bias_probe(fair, failed).values())
    with pytest.raises(ValueError, match="items"):
        judge_bias_probe(fair, [])


def test_hacking_stats_on_hand_made_scores():
    # scores rank the two passes on top: AUROC 1, J = 1 - 0, no failure in the top quartile
    stats = hacking_stats([0.9, 0.8, 0.2, 0.1], [True, True, False, False], probability=True)
    assert stats["hack/auroc"] == 1.0 and stats["hack/youden_j"] == 1.0
    assert stats["hack/high_reward_failures"] == 0.0
    assert stats["hack/proxy_gap"] == pytest.approx(0.5 - 0.5)
    # a proxy that prefers failures: AUROC 0, the top quartile all failures, and it exceeds the pass rate
    stats = hacking_stats([0.1, 0.2, 0.9, 0.8], [True, True, False, False], probability=True)
    assert stats["hack/auroc"] == 0.0 and stats["hack/high_reward_failures"] == 1.0
    assert math.isnan(hacking_stats([1.0, 2.0], [True, False])["hack/proxy_gap"])  # not a probability: no gap


def test_failed_score_sees_an_exploit_that_raises_the_auroc():
    """The planted-word exploit, in small: before, failures score 0.2 and passes 0.6 (AUROC 1); after, the word
    spreads to every rollout but one pass and adds +1 to each. The AUROC only ranks (0.5: it cannot tell an exploit
    from a noisy critic, and rises again when the word spreads to passes); the mean score of what the verifier
    fails says what happened: 0.2 -> 1.2."""
    passed = [True, True, False, False]
    before = hacking_stats([0.6, 0.6, 0.2, 0.2], passed)
    after = hacking_stats([1.6, 0.6, 1.2, 1.2], passed)
    assert before["hack/failed_score"] == pytest.approx(0.2) and after["hack/failed_score"] == pytest.approx(1.2)
    assert after["hack/auroc"] == 0.5 * (1.0 + 0.0) and before["hack/auroc"] == 1.0
    assert math.isnan(hacking_stats([0.5], [True])["hack/failed_score"])  # nothing failed: undefined


# ------------------------------------------------------------------------------------------------ IRL

def test_airl_and_gail_rewards_hand_computed():
    z = torch.tensor([0.0, math.log(3.0), -2.0])
    d = torch.sigmoid(z)  # 1/2, 3/4, ...
    assert airl_reward(z).tolist() == pytest.approx((d.log() - (1 - d).log()).tolist(), abs=1e-6)
    assert gail_reward(z).tolist() == pytest.approx((-(1 - d).log()).tolist(), abs=1e-6)
    assert float(gail_reward(torch.tensor(math.log(3.0)))) == pytest.approx(math.log(4.0))  # -log(1 - 3/4)


def test_discriminator_loss_hand_computed():
    # z = 0 everywhere: BCE = log 2 whatever the smoothing; z_E = log 3 (D = 3/4), s = 0.1:
    # expert term = -(0.9 log 3/4 + 0.1 log 1/4); student z_S = 0: log 2
    loss = discriminator_loss(torch.tensor([math.log(3.0)]), torch.tensor([0.0, 0.0]), 0.1)
    expected = 0.5 * (-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)) + math.log(2.0))
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_discriminator_learns_and_the_buffer_is_bounded():
    cfg = make_config("smoke", method="scpo-irl", **{"irl.lr": 0.05, "irl.buffer_size": 20,
                                                      "irl.grad_penalty": 0.1})
    critic = IrlCritic(cfg)
    critic._build(16)
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=gen)
    for _ in range(30):
        experts = standardise(torch.randn(6, 16, generator=gen) + 2 * direction)
        negatives = standardise(torch.randn(6, 16, generator=gen) - 2 * direction)
        critic._step_data = {"experts": experts, "negatives": negatives}
        stats = critic.after_update(None)
    assert len(critic.buffer) == 20 and stats["irl/buffer_size"] == 20
    assert stats["irl/disc_accuracy"] > 0.9
    state = critic.state_dict()
    fresh = IrlCritic(cfg)
    fresh.load_state_dict(state)
    fresh._build(16)
    probe = standardise(torch.randn(4, 16, generator=gen))
    assert torch.equal(fresh.disc(probe), critic.disc(probe)) and torch.equal(fresh.buffer, critic.buffer)


def test_teacher_experts_are_resolved_after_the_failed_attempt(tmp_path, monkeypatch):
    from scpo_lab.tasks.arithmetic import ArithmeticTask

    seen = []

    def passes_second_tries(self, problems, completions):
        seen.append(len(completions))
        first = len(seen) == 1  # the step's own rollouts fail; the teacher's re-solves pass
        return [Verdict(0.0 if first else 1.0, not first, "The expected answer is 1.") for _ in completions]

    monkeypatch.setattr(ArithmeticTask, "verify_batch", passes_second_tries)
    run = train(make_config("smoke", runs_dir=str(tmp_path), method="scpo-irl", steps=1,
                            **{"irl.expert": "teacher", "irl.teacher_rollouts": 3}), progress=False)
    row = run.metrics.iloc[0]
    assert seen == [8, 2 * 3]  # 2 groups x 4 rollouts, then 3 re-solves for each group with a failure
    assert row["irl/teacher_pass_rate"] == 1.0 and row["irl/experts_new"] == 6 and row["irl/buffer_size"] == 6
    assert row["irl/disc_loss"] > 0 and row["params/extra"] > 0


def test_judge_and_irl_train_and_log_their_instruments(tmp_path):
    for method in ("scpo-judge", "scpo-irl"):
        run = train(make_config("smoke", runs_dir=str(tmp_path), method=method, steps=2), progress=False)
        df = run.metrics
        assert {"hack/auroc", "hack/youden_j", "hack/high_reward_failures", "hack/proxy_gap"} <= set(df.columns)
        assert df["loss"].notna().all() and (df["time/teacher"] > 0).all()
        if method == "scpo-judge":
            assert {"judge/parse_failure_rate", "judge/agreement", "judge/critique_length"} <= set(df.columns)
            samples = run.samples()
            assert {"critique", "judge_score"} <= set(samples.columns) and samples["critique"].notna().all()
