"""Reasoning-quality, diversity and reward-hacking measures on hand-made chains."""

import math

import pytest

from scpo_lab.metrics import (arithmetic_claims, distinct_answers, distinct_n, high_reward_failures, leakage_rate,
                              phrase_rates, repeated_ngram_rate, step_validity, youden_j_at_median)


@pytest.mark.parametrize("text, expected", [
    ("12 * 4 = 48", [("12 * 4 = 48", True)]),
    ("3+5=8, then 8 x 2 = 17.", [("3+5=8", True), ("8 x 2 = 17", False)]),
    ("She pays $1,200 / 4 = $300 each.", [("$1,200 / 4 = $300", True)]),
    ("<<48/2=24>>24 clips, <<48+24=72>>72", [("48/2=24", True), ("48+24=72", True)]),
    ("2 + 3 * 4 = 20", [("2 + 3 * 4 = 20", False)]),  # precedence: 14
    ("(2 + 3) * 4 = 20", [("(2 + 3) * 4 = 20", True)]),
    ("7 / 2 = 3.5 and 10 / 3 = 3.33 or 3.34", [("7 / 2 = 3.5", True), ("10 / 3 = 3.33", True)]),
    ("10 / 3 = 3.34", [("10 / 3 = 3.34", False)]),  # rounded to 2 decimals it is 3.33
    ("1,000 + 1 = 1,001", [("1,000 + 1 = 1,001", True)]),
    ("5 - 9 = -4", [("5 - 9 = -4", True)]),
    ("1 / 0 = 5", []),  # undefined: not counted
    ("The answer is 42.", []),
    ("x = 5 and y = 2", []),  # assignments are not arithmetic claims
    ("version 1.2.3 = 4", []),
    ("4 × 3 = 12 ÷ 1", [("4 * 3 = 12", True)]),
])
def test_arithmetic_claims_on_adversarial_strings(text, expected):
    assert arithmetic_claims(text) == expected


def test_step_validity_counts_right_for_the_wrong_reasons():
    chains = ["2 + 2 = 5, so 5 + 1 = 6. Answer: 6",  # right answer (say), one invalid step
              "3 * 3 = 9. Answer: 9",                 # valid
              "The answer is 7.",                      # no steps
              "10 - 4 = 5. Answer: 5"]                 # wrong step, wrong answer
    out = step_validity(chains, passed=[True, True, False, False])
    assert out["claims"] == 4
    assert out["valid_step_rate"] == pytest.approx(2 / 4)
    assert out["chains_with_invalid_step"] == pytest.approx(2 / 4)
    assert out["chains_without_steps"] == pytest.approx(1 / 4)
    assert out["right_with_invalid_step"] == pytest.approx(1 / 2)
    assert math.isnan(step_validity(["no steps"])["valid_step_rate"])


def test_phrase_rates_whole_words_and_any():
    rates = phrase_rates(["Wait, let me check: 2+2=4.", "Awaiting nothing.", "I verify it."],
                         lexicon=("wait", "let me check", "verify"))
    assert rates["wait"] == pytest.approx(1 / 3)  # "Awaiting" is not "wait"
    assert rates["let me check"] == pytest.approx(1 / 3)
    assert rates["any"] == pytest.approx(2 / 3)


def test_diversity():
    assert distinct_n(["a b c", "a b c"], n=2) == pytest.approx(2 / 4)
    assert distinct_n(["a b", "c d"], n=2) == 1.0
    assert distinct_answers(["4", "4", None, "5"]) == 2


def test_hacking_instruments_hand_computed():
    scores = [0.9, 0.8, 0.2, 0.1, 0.7, 0.3]
    passed = [True, False, False, False, True, True]
    # median 0.5: predicted pass for 0.9, 0.8, 0.7 -> TPR 2/3, FPR 1/3
    assert youden_j_at_median(scores, passed) == pytest.approx(1 / 3)
    assert youden_j_at_median([1, 2, 3, 4], [False, False, True, True]) == pytest.approx(1.0)
    assert math.isnan(youden_j_at_median([1, 2], [True, True]))
    # top quartile: threshold = sorted[int(0.75 * 5)] = sorted[3] = 0.7 -> {0.9, 0.8, 0.7}, one fails
    assert high_reward_failures(scores, passed) == pytest.approx(1 / 3)
    assert leakage_rate(["The grader's note says 42.", "7 + 5 = 12", "As the reference solution shows"]) == \
        pytest.approx(2 / 3)
    assert repeated_ngram_rate("a b c a b c") == pytest.approx(1 / 4)  # (a b c) repeats once out of 4 trigrams
    assert repeated_ngram_rate("short") == 0.0


def test_reasoning_metrics_of_one_evaluation():
    from scpo_lab.metrics import reasoning_metrics
    out = reasoning_metrics([["2 + 2 = 4. Answer 4", "2 + 2 = 5. Wait, let me check. Answer 4"], ["The grader says 9"]],
                            [[True, True], [False]], [["4", "4"], ["9"]])
    assert out["claims"] == 2 and out["valid_step_rate"] == pytest.approx(0.5)
    assert out["right_with_invalid_step"] == pytest.approx(0.5)
    assert out["self_check_rate"] == pytest.approx(1 / 3)
    assert out["distinct_answers"] == pytest.approx((1 + 1) / 2)
    assert out["leakage_rate"] == pytest.approx(1 / 3)
    assert reasoning_metrics([], [], []) == {}


def test_evaluate_reports_reasoning_metrics():
    from scpo_lab.evaluation import EvalResult, evaluate
    from scpo_lab.models import tiny_policy
    from scpo_lab.tasks import get_task
    result = evaluate(tiny_policy(seed=0), get_task("arithmetic"), n_problems=3, n_samples=2, max_new_tokens=6,
                      progress=False)
    assert {"valid_step_rate", "self_check_rate", "distinct_2", "leakage_rate"} <= set(result.reasoning)
    old_cache = {k: v for k, v in result.to_dict().items() if k != "reasoning"}  # an eval.json from before
    assert EvalResult(**old_cache).reasoning == {}


def test_evaluate_token_entropy_is_the_mean_negative_logprob_of_the_sampled_tokens():
    import torch

    from scpo_lab.evaluation import evaluate
    from scpo_lab.models import tiny_policy
    from scpo_lab.objective import completion_logprobs
    from scpo_lab.rollout import sample_rollouts
    from scpo_lab.tasks import get_task
    policy, task = tiny_policy(seed=0), get_task("arithmetic")
    result = evaluate(policy, task, n_problems=3, n_samples=4, max_new_tokens=6, batch_prompts=3, seed=7,
                      progress=False)
    # the same draws (one chunk, seed 7), scored again by teacher forcing: -log pi of each sampled token
    batch = sample_rollouts(policy, task.problems("test", n=3, seed=7), group_size=4, max_new_tokens=6, seed=7)
    with torch.no_grad():
        logp, entropy = completion_logprobs(policy.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                            batch.completion_mask)
    mask = batch.completion_mask.float()
    assert result.reasoning["token_entropy"] == pytest.approx(float(-(logp * mask).sum() / mask.sum()), rel=1e-4)
    # and it estimates the exact entropy along the same prefixes (a random model: near-uniform, low variance)
    assert result.reasoning["token_entropy"] == pytest.approx(float((entropy * mask).sum() / mask.sum()), rel=0.1)
