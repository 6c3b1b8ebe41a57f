"""Issue 18's checks: a critic's weight sets its share of the advantage, the collapse metrics cannot count by
construction, pi_old is the update's own first forward, and the critics' own updates count in the FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch

from scpo_lab.config import make_config
from scpo_lab.critics.base import signal_stats
from scpo_lab.critics.judge import JudgeCritic
from scpo_lab.models import tiny_policy
from scpo_lab.objective import CRITIC_SCALE, critic_advantages, group_advantages, policy_loss
from scpo_lab.rollout import RolloutBatch, micro_batches, sample_rollouts
from scpo_lab.tasks import get_task
from scpo_lab.tasks.base import Verdict
from scpo_lab.trainer import _update, train


# ------------------------------------------------------------------------------------------------ 1. the weight

def test_in_a_zero_std_group_the_advantage_scales_with_the_weight():
    rewards = torch.zeros(4)  # all fail: the verifier cannot tell them apart
    scores = torch.tensor([0.2, 0.4, 0.6, 0.8])
    base = group_advantages(rewards, 4)
    assert torch.equal(base, torch.zeros(4))
    centred = scores - scores.mean()
    for w in (0.05, 0.5):
        torch.testing.assert_close(critic_advantages(base, scores, 4, w), w * centred / CRITIC_SCALE)
    ratio = critic_advantages(base, scores, 4, 0.5) / critic_advantages(base, scores, 4, 0.05)
    torch.testing.assert_close(ratio, torch.full((4,), 10.0))


def test_scores_that_differ_by_1e_3_give_advantages_near_zero_not_near_one():
    base = torch.zeros(4)
    scores = torch.tensor([0.500, 0.501, 0.499, 0.500])
    for w in (0.05, 0.5):
        new = critic_advantages(base, scores, 4, w).abs().max()
        assert new < 2e-3
        # what normalising r + w s by its group's own std made of the same scores: 0.36 at w = 0.05, 1.2 at 0.5
        old = group_advantages(torch.zeros(4) + w * scores, 4).abs().max()
        assert old > 0.3 and old > 100 * new


def test_the_verifier_keeps_its_advantage_where_it_discriminates():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    scores = torch.tensor([0.0, 1.0, 1.0, 1.0])  # a judge that disagrees everywhere, at full weight 0.5
    a = critic_advantages(group_advantages(rewards, 4), scores, 4, 0.5)
    assert a[0] > a[1:].max()  # a pass still outranks the failures


def test_the_judges_stated_bound_a_pass_outranks_every_fail_below_weight_one_over_root_two():
    """judge.py's docstring: scores on [0, 1] keep every pass above every fail of its group whenever weight <
    1/sqrt(2) (GRPO's smallest pass-fail gap, 1.414 at G = 2, against the score term's 2 weight), and no further:
    the docstring said weight < 1, false above ~0.71. IRL's reward is a clipped logit: at its defaults the term
    can reorder a pass and a fail, as irl.py now says."""
    from scpo_lab.critics.irl import IrlConfig

    for g in range(2, 17):
        for k in range(1, g):  # k passes; the judge scores every pass 0 and every fail 1 (its worst)
            rewards = torch.tensor([1.0] * k + [0.0] * (g - k))
            a = critic_advantages(group_advantages(rewards, g), 1.0 - rewards, g, 0.70)
            assert a[:k].min() > a[k:].max(), (g, k)
    reversed_ = critic_advantages(group_advantages(torch.tensor([1.0, 0.0]), 2), torch.tensor([0.0, 1.0]), 2, 0.75)
    assert reversed_[0] < reversed_[1]  # above the bound a confident judge ranks the fail first
    irl = IrlConfig()
    logit_reward = torch.tensor([-irl.reward_clip, irl.reward_clip])  # airl: D sure the fail is the expert
    a = critic_advantages(group_advantages(torch.tensor([1.0, 0.0]), 2), logit_reward, 2, irl.weight)
    assert a[0] < a[1] and irl.weight * irl.reward_clip > 0.354


def test_the_judge_uses_the_shared_formula(tmp_path):
    cfg = make_config("smoke", method="scpo-judge", **{"judge.weight": 0.3})
    batch = _batch([False] * 4, group_size=4)
    judged = {"expected": torch.tensor([[0.1], [0.3], [0.5], [0.7]]), "parsed": torch.full((4, 1), float("nan")),
              "bias": torch.zeros(4, 1), "critique_tokens": torch.ones(4, 1)}

    class Teacher:
        critic_data = judged

    result = JudgeCritic(cfg).advantages(batch, torch.zeros(4), Teacher())
    s = torch.tensor([0.1, 0.3, 0.5, 0.7])
    torch.testing.assert_close(result.advantages, 0.3 * (s - s.mean()) / CRITIC_SCALE)


def _batch(passed, group_size, T=3):
    B = len(passed)
    return RolloutBatch(prompt_ids=None, prompt_mask=None, completion_ids=None,
                        completion_mask=torch.ones(B, T, dtype=torch.long), logprobs=torch.zeros(B, T), texts=[""] * B,
                        problems=[], group_ids=torch.arange(B) // group_size, truncated=torch.zeros(B, dtype=torch.bool),
                        group_size=group_size, verdicts=[Verdict(float(p), p, "") for p in passed])


# ------------------------------------------------------------------------------------------------ 2. the metrics

def test_a_constant_score_rescues_nothing():
    """The old `rescued` count: any non-zero raw score (a judge's in (0, 1), GAIL's softplus > 0) rescued a
    zero-std group. A critic that gives every rollout of a group the same score moves nothing there."""
    passed = torch.tensor([False] * 4 + [True, False, False, False])
    group = group_advantages(passed.float(), 4)
    same = critic_advantages(group, torch.full((8,), 0.7), 4, 0.5)  # 0.7 everywhere: non-zero, uninformative
    stats = signal_stats(same, torch.ones(8, 3), group, 4, passed)
    assert stats["scpo/zero_std_spread"] == 0.0 and stats["scpo/zero_std_adv_std"] == 0.0
    informative = critic_advantages(group, torch.tensor([0.1, 0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1]), 4, 0.5)
    stats = signal_stats(informative, torch.ones(8, 3), group, 4, passed)
    # zero-std group: a = 0.5 * (+-0.4) / 0.5 = +-0.4, variance 0.16; the other: A = [1.5, -0.5 x 3] (to 1e-4)
    # plus [0.6, -0.2 x 3] -> [2.1, -0.7 x 3], variance 1.47; share 0.16 / 1.63
    assert stats["scpo/zero_std_adv_std"] == pytest.approx(0.4, abs=1e-6)
    assert stats["scpo/zero_std_spread"] == pytest.approx(0.16 / 1.63, abs=1e-3)
    assert stats["scpo/agreement_auroc"] == 1.0  # in the discriminating group the pass scored highest


def test_agreement_is_below_one_half_for_a_critic_that_inverts_the_verifier():
    passed = torch.tensor([True, False, True, False])
    group = group_advantages(passed.float(), 4)
    inverted = critic_advantages(group, (~passed).float(), 4, 0.5)
    assert signal_stats(inverted, torch.ones(4, 2), group, 4, passed)["scpo/agreement_auroc"] == 0.0


# ------------------------------------------------------------------------------------------------ 6. pi_old

def _rollouts(seed=0):
    policy = tiny_policy(seed=seed)
    task = get_task("arithmetic")
    batch = sample_rollouts(policy, task.problems("train", n=2, seed=0), group_size=4, max_new_tokens=6, seed=1)
    batch.verdicts = task.verify_batch(batch.problems, batch.texts)
    return policy, batch


def test_two_iterations_match_a_hand_run_update():
    """num_iterations = 2: pi_old is the first pass's own forward (not the sampler's log-probs), then two
    optimizer steps, each on the clipped surrogate against that pi_old."""
    from scpo_lab.objective import completion_logprobs, loss_denominator

    cfg = make_config("smoke", num_iterations=2, learning_rate=0.05, micro_batch_size=8)
    policy, batch = _rollouts()
    batch.logprobs = batch.logprobs + 0.3  # a sampler that disagrees with the update's forward
    advantages = torch.linspace(-1, 1, len(batch))
    twin = copy.deepcopy(policy)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    _update(cfg, policy, batch, advantages, torch.optim.AdamW(params, lr=cfg.learning_rate), params)

    model = twin.model
    model.train()
    twin_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(twin_params, lr=cfg.learning_rate)
    [(rows, inputs)] = list(micro_batches(batch, 8))
    normalizer = loss_denominator(batch.completion_mask, cfg.loss_agg, cfg.max_new_tokens)
    old = None
    for _ in range(2):
        optimizer.zero_grad()
        logp = completion_logprobs(model, *inputs, temperature=cfg.temperature, group_size=4)[0]
        old = logp.detach() if old is None else old  # pi_old = the first forward, before any step
        loss, _ = policy_loss(logp, old, advantages, inputs[3], eps_low=cfg.epsilon, eps_high=cfg.epsilon_high,
                              loss_agg=cfg.loss_agg, max_completion_length=cfg.max_new_tokens, normalizer=normalizer)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin_params, cfg.max_grad_norm)
        optimizer.step()
    for a, b in zip(params, twin_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_the_first_pass_ratio_is_one_against_pi_old_and_logged_against_the_sampler():
    cfg = make_config("smoke", num_iterations=2)
    policy, batch = _rollouts()
    batch.logprobs = batch.logprobs - 0.5  # the sampler's numbers are off by e^0.5
    params = [p for p in policy.model.parameters() if p.requires_grad]
    out = _update(cfg, policy, batch, torch.zeros(len(batch)), torch.optim.AdamW(params, lr=1e-3), params)
    assert out["clip_ratio"] == 0.0  # against pi_old = its own forward, no token is outside the clip range
    assert out["ratio/first_pass_mean"] == pytest.approx(float(torch.exp(torch.tensor(0.5))), rel=1e-3)


def test_the_update_logs_clip_ratio_by_region():
    """TRL's clip_ratio/low (rho < 1 - eps where A < 0) and /high (rho > 1 + eps where A > 0): a big step between
    two passes moves ratios out of the range, and the logged total is their sum (they were computed, not logged)."""
    cfg = make_config("smoke", num_iterations=2)
    policy, batch = _rollouts()
    params = [p for p in policy.model.parameters() if p.requires_grad]
    advantages = torch.tensor([1.0, -1.0] * (len(batch) // 2))
    out = _update(cfg, policy, batch, advantages, torch.optim.SGD(params, lr=50.0), params)
    assert out["clip_ratio/low"] > 0 and out["clip_ratio/high"] > 0
    assert out["clip_ratio"] == pytest.approx(out["clip_ratio/low"] + out["clip_ratio/high"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ 7. FLOPs

@pytest.mark.parametrize("method, options", [("scpo-critic", {}), ("scpo-head", {}),
                                             ("scpo-irl", {"irl.expert": "teacher", "irl.keep_passing": False})])
def test_a_critics_own_update_counts_in_the_flops(tmp_path, method, options):
    run = train(make_config("smoke", method=method, runs_dir=str(tmp_path), **options), progress=False)
    m = run.metrics
    assert (m["flops/critic_update"] > 0).all()
    assert m["flops"].diff().dropna().ge(m["flops/critic_update"].iloc[1:].values).all()
    if method == "scpo-critic":  # the value model's forward + backward: at least 6 N per completion token
        n = sum(p.numel() for p in tiny_policy().model.parameters())
        assert (m["flops/critic_update"] >= 6 * n * m["completions/mean_length"] * 8).all()
