"""Methods that add parameters: the reward head (scpo-head, V1) and the online critic (scpo-critic, V4)."""

import pytest
import torch

from scpo_lab.config import ConfigError, make_config
from scpo_lab.critics.base import UpdateForward, outcome_bce
from scpo_lab.critics.value import (CRITIC_ADAPTER, HeadCritic, OnlineCritic, ValueHead, auroc, clipped_value_loss,
                                    explained_variance, gae, shaping_rewards)
from scpo_lab.models import tiny_policy
from scpo_lab.rollout import sample_rollouts
from scpo_lab.tasks import get_task
from scpo_lab.tasks.base import Verdict


def _pair(result):
    """(advantages, stats) of a CriticResult."""
    return result.advantages, result.stats


@pytest.fixture(scope="module")
def problems():
    return get_task("arithmetic").problems("train", n=3, seed=0)


def _labelled_batch(policy, problems, seed=1):
    """Rollouts whose 'outcome' is a function of the completion (its first token's parity): a separable signal
    that a value function can learn from the states after the first token."""
    batch = sample_rollouts(policy, problems, group_size=4, max_new_tokens=6, seed=seed)
    passed = [bool(int(batch.completion_ids[i, 0]) % 2) for i in range(len(batch))]
    batch.verdicts = [Verdict(float(p), p, "The answer is correct." if p else "The answer is wrong.") for p in passed]
    return batch, torch.tensor(passed)


# ------------------------------------------------------------------------------------------------ the math

def test_shaping_hand_computed():
    values = torch.tensor([[0.9, 0.2, 0.6, 0.8], [0.3, 0.7, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    r = shaping_rewards(values, mask, gamma=0.5)
    # row 0: Phi = [1/2, 0.2, 0.6, 0.8, 1/2 (terminal)]: r_t = 0.5 Phi_t - Phi_{t-1}
    expected0 = [0.5 * 0.2 - 0.5, 0.5 * 0.6 - 0.2, 0.5 * 0.8 - 0.6, 0.5 * 0.5 - 0.8]
    expected1 = [0.5 * 0.7 - 0.5, 0.5 * 0.5 - 0.7, 0.0, 0.0]  # Phi = [1/2, 0.7, 1/2]
    assert r[0].tolist() == pytest.approx(expected0)
    assert r[1].tolist() == pytest.approx(expected1)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_shaping_telescopes_whatever_the_values(gamma):
    """sum_t gamma^(t-1) r_t = (gamma^T - 1) / 2 for any values (the terms telescope). This alone does not make it
    Ng et al.'s shaping (the potentials read the verdict, and r_t enters as an advantage): see the next test."""
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(6, 9, generator=gen)
    lengths = torch.tensor([9, 1, 4, 7, 2, 9])
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    discounts = gamma ** torch.arange(9).float()
    for scale in (1.0, -3.0):  # other values, same sums
        sums = (shaping_rewards(values * scale, mask, gamma) * discounts).sum(1)
        assert sums.tolist() == pytest.approx(((gamma ** lengths.float() - 1) / 2).tolist(), abs=1e-6)


def test_shaping_moves_credit_to_the_first_token_for_a_confident_head():
    """What the head's "shaping" term does as an advantage (value.py's docstring): a head that is confident from
    the first token moves credit to the first token and blame to the last, the reverse for a failure."""
    mask = torch.ones(2, 5, dtype=torch.long)
    values = torch.tensor([[0.95] * 5, [0.05] * 5])  # V(s_t) for a pass, for a failure
    r = shaping_rewards(values, mask, gamma=1.0)
    assert r[0].tolist() == pytest.approx([0.45, 0.0, 0.0, 0.0, -0.45])
    assert r[1].tolist() == pytest.approx([-0.45, 0.0, 0.0, 0.0, 0.45])


def test_a_perfect_hindsight_critic_makes_gae_vanish():
    """value.asymmetric: a baseline that reads the verdict. V_t = R at every state gives GAE = 0 everywhere
    (gamma = lambda = 1): the GAE part of the advantage carries nothing exactly where the critic is right."""
    rewards = torch.tensor([1.0, 0.0, 1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    values = rewards[:, None].expand(3, 3) * mask
    adv, _ = gae(values, rewards, mask, gamma=1.0, lam=1.0)
    assert torch.equal(adv, torch.zeros(3, 3))


def test_gae_hand_computed():
    values = torch.tensor([[0.2, 0.5, 0.7], [0.4, 0.1, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(values, torch.tensor([1.0, 0.0]), mask, gamma=1.0, lam=0.5)
    # row 0: delta = [0.5 - 0.2, 0.7 - 0.5, 1 - 0.7] = [0.3, 0.2, 0.3]; A_2 = 0.3, A_1 = 0.2 + 0.5 * 0.3,
    # A_0 = 0.3 + 0.5 * 0.35; row 1 (two tokens, reward 0): delta = [0.1 - 0.4, 0 - 0.1]; the masked 9.0 unseen
    assert adv[0].tolist() == pytest.approx([0.475, 0.35, 0.3])
    assert adv[1].tolist() == pytest.approx([-0.3 + 0.5 * -0.1, -0.1, 0.0])
    assert ret[0].tolist() == pytest.approx([0.675, 0.85, 1.0])
    adv_mc, _ = gae(values, torch.tensor([1.0, 0.0]), mask, gamma=1.0, lam=1.0)  # lambda = 1: R - V(s_t)
    assert adv_mc[0].tolist() == pytest.approx([0.8, 0.5, 0.3])


def test_clipped_value_loss_hand_computed():
    values = torch.tensor([[0.9, 0.1]])
    old = torch.tensor([[0.5, 0.1]])
    returns = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0]])
    # token 0: unclipped (0.9 - 1)^2 = 0.01; clipped V = 0.5 + 0.2 = 0.7: (0.7 - 1)^2 = 0.09 -> max 0.09
    # token 1: 0.01 both ways
    assert float(clipped_value_loss(values, old, returns, mask, clip=0.2)) == pytest.approx(0.5 * (0.09 + 0.01) / 2)


def test_auroc_and_explained_variance_hand_computed():
    assert auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx((2 + 1 + 0.5) / 4)  # a tie counts 1/2
    assert auroc([0.3, 0.2], [1, 1]) != auroc([0.3, 0.2], [1, 1])  # nan: one class only
    target = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(target, target, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(target, 2.0), target, mask) == pytest.approx(0.0)


def test_value_head_starts_neutral_and_learns_a_separable_signal():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(32, 5, 16, generator=gen)
    passed = states[:, 0, 3] > 0  # the outcome is written in one feature of the first state
    states[:, :, 3] = states[:, :1, 3]  # ... and every state of the rollout carries it
    mask = torch.ones(32, 5)
    for kind in ("linear", "mlp"):
        torch.manual_seed(0)
        head = ValueHead(16, kind, width=8)
        assert torch.sigmoid(head(states)).eq(0.5).all()  # no signal before learning
        optimizer = torch.optim.AdamW(head.parameters(), lr=0.05)
        for _ in range(40):
            optimizer.zero_grad()
            outcome_bce(head(states), passed, mask).backward()
            optimizer.step()
        assert auroc(head(states).mean(1).detach(), passed) > 0.95, kind


# ------------------------------------------------------------------------------------------------ the critics

def test_head_critic_learns_the_outcome_from_the_teacher_pass_and_resumes(problems):
    policy = tiny_policy(seed=0)
    batch, passed = _labelled_batch(policy, problems)
    cfg = make_config("smoke", method="scpo-head", **{"value.lr": 0.05})
    critic = HeadCritic(cfg, policy.tokenizer)
    group = torch.zeros(len(batch))
    teacher = critic.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4)
    result = critic.advantages(batch, group, teacher)
    first, stats = result.advantages, result.stats
    assert first.abs().max() == 0  # V = 1/2 everywhere at the start: Phi is constant, the shaping is zero
    for _ in range(30):
        critic.after_update(policy)
        stats = critic.advantages(batch, group, teacher).stats
    assert stats["head/auroc_teacher"] > 0.9
    assert stats["head/loss_teacher"] < 0.6
    twin = HeadCritic(cfg, policy.tokenizer)
    twin.load_state_dict(critic.state_dict())
    twin.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4)
    torch.testing.assert_close(twin.advantages(batch, group, teacher).advantages,
                               critic.advantages(batch, group, teacher).advantages)


def test_head_loss_reaches_lora_only_with_train_lora(problems):
    from scpo_lab.objective import completion_logprobs
    for train_lora in (False, True):
        policy = tiny_policy(seed=0)
        batch, _ = _labelled_batch(policy, problems)
        critic = HeadCritic(make_config("smoke", method="scpo-head", **{"value.train_lora": train_lora}),
                            policy.tokenizer)
        teacher = critic.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4)
        term = critic.advantages(batch, torch.zeros(len(batch)), teacher).loss_term
        assert term.wants_states and not term.policy_objective  # it trains the head, not the policy's objective
        with torch.no_grad():
            critic.head.net.weight.normal_()  # a non-zero head, so its loss has a gradient towards the states
        logp, _, states = completion_logprobs(policy.model, batch.prompt_ids, batch.prompt_mask,
                                              batch.completion_ids, batch.completion_mask, return_states=True)
        policy.model.zero_grad()
        loss, _ = term(UpdateForward(logp, states=states), slice(None), batch.completion_mask,
                       float(batch.completion_mask.sum()))
        loss.backward()
        lora_grads = [p.grad for n, p in policy.model.named_parameters() if "lora_B" in n]  # B = 0: A gets none
        assert any(g is not None and g.abs().sum() > 0 for g in lora_grads) == train_lora


def test_switching_to_the_critic_adapter_leaves_the_policy_unchanged(problems):
    policy = tiny_policy(seed=0)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial policy adapter
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    batch, passed = _labelled_batch(policy, problems)
    policy_params = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in policy.model.named_parameters()}
    with torch.no_grad():
        logits_before = policy.model(input_ids=batch.completion_ids).logits
    # A small step and several epochs: the fit converges (values -> 1 for passes, -> 0 for failures) instead of
    # hovering near 1/2, so the assertions below hold by a wide margin on every kernel set. (lr 0.01 x 1 epoch
    # left values within 0.487..0.513 on one host and separated them on another: rounding decided the test.)
    cfg = make_config("smoke", method="scpo-critic",
                      **{"value.lr": 0.003, "value.critic_epochs": 4, "value.gae_lambda": 1.0})
    critic = OnlineCritic(cfg, policy.tokenizer)
    group = torch.zeros(len(batch))
    explained = []
    for _ in range(25):  # critic-only updates on one batch: the critic learns the outcome of the first token
        teacher = critic.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4)
        _, stats = _pair(critic.advantages(batch, group, teacher))
        explained.append(stats["critic/explained_variance"])
        critic.after_update(policy)
    values_after_first = teacher.values[:, 1:].mean(1)  # states that have read the first token
    assert auroc(values_after_first, passed) == 1.0
    # a margin, not just an order: every pass's value above every failure's by half the reward's range
    assert values_after_first[passed].min() - values_after_first[~passed].max() > 0.5
    assert explained[-1] > explained[1] + 0.4  # s_0 cannot know the outcome: explained variance stays below 1
    assert explained[-1] < 0.95
    assert policy.model.active_adapter == "default"
    critic_params = {n: p for n, p in policy.model.named_parameters() if f".{CRITIC_ADAPTER}." in n}
    assert critic_params and any(p.abs().sum() > 0 for n, p in critic_params.items() if "lora_B" in n)
    for n, p in policy.model.named_parameters():
        if n in policy_params:
            assert torch.equal(p, policy_params[n]), n  # the policy's weights are untouched
            assert p.requires_grad == flags[n], n
    with torch.no_grad():
        torch.testing.assert_close(policy.model(input_ids=batch.completion_ids).logits, logits_before)
    again = sample_rollouts(policy, problems, group_size=4, max_new_tokens=6, seed=1)  # the rollout engine too
    assert torch.equal(again.completion_ids, batch.completion_ids)
    # resume: a fresh critic loaded from the state has the same values
    twin = OnlineCritic(cfg, policy.tokenizer)
    twin.load_state_dict(critic.state_dict())
    other = tiny_policy(seed=0)
    torch.testing.assert_close(twin.teacher_pass(other, batch, temperature=1.0, micro_batch_size=4).values,
                               critic.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4).values)


def test_separate_critic_is_its_own_model_and_reads_privileged_context(problems):
    policy = tiny_policy(seed=0)
    batch, passed = _labelled_batch(policy, problems)
    cfg = make_config("smoke", method="scpo-critic", **{"value.critic": "separate", "value.critic_model": "tiny",
                                                         "value.asymmetric": True, "value.lr": 0.01,
                                                         "value.warmup_steps": 2})
    critic = OnlineCritic(cfg, policy.tokenizer)
    assert not critic.updates_actor()
    for _ in range(20):
        teacher = critic.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4)
        critic.advantages(batch, torch.zeros(len(batch)), teacher)
        critic.after_update(policy)
    assert critic.updates_actor()  # warm-up over after 2 critic updates
    assert critic.separate.model is not policy.model
    assert not any(CRITIC_ADAPTER in n for n, _ in policy.model.named_parameters())
    assert auroc(teacher.values.mean(1), passed) > 0.9  # the verdict is in its context: easy
    assert critic.extra_parameters() > sum(p.numel() for p in critic.separate.model.parameters()) - 1


def test_value_options_are_validated():
    with pytest.raises(ConfigError, match="value.critic: unknown 'both'"):
        make_config("smoke", method="scpo-critic", **{"value.critic": "both"})
    with pytest.raises(ConfigError, match="value.gamma"):
        make_config("smoke", method="scpo-head", **{"value.gamma": 1.5})
    with pytest.raises(ConfigError, match="value.critic_model"):
        make_config("smoke", method="scpo-critic", **{"value.critic_model": "./no/such/model"})


def test_expected_calibration_error_hand_computed():
    from scpo_lab.conclusions import expected_calibration_error
    # bins of width 0.1: {0.05} -> pass rate 0, {0.15} -> 1, {0.95, 0.95} -> 1/2
    ece = expected_calibration_error([0.05, 0.15, 0.95, 0.95], [False, True, True, False])
    assert ece == pytest.approx((0.05 + 0.85 + 2 * 0.45) / 4)
    assert expected_calibration_error([0.0, 1.0], [False, True]) == 0.0


@pytest.mark.parametrize("method", ["scpo-head", "scpo-critic"])
def test_value_calibration_reads_every_checkpoint_and_is_cached(tmp_path, monkeypatch, method):
    import scpo_lab.rollout
    from scpo_lab.experiment import value_calibration
    from scpo_lab.trainer import train

    run = train(make_config("smoke", method=method, steps=2, runs_dir=str(tmp_path)), progress=False)
    cal = value_calibration(run, n_problems=3, group_size=2)
    assert sorted(cal["step"].unique()) == [1, 2] and len(cal) == 2 * 3 * 2
    assert cal["predicted"].between(0, 1).all() and cal["passed"].isin([True, False]).all()
    monkeypatch.setattr(scpo_lab.rollout, "sample_rollouts", lambda *a, **k: pytest.fail("recomputed"))
    assert value_calibration(run, n_problems=3, group_size=2).equals(cal)
    with pytest.raises(ValueError, match="^run: method 'grpo' has no value"):
        value_calibration(train(make_config("smoke", steps=1, runs_dir=str(tmp_path)), progress=False))
