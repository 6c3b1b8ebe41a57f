"""Tests for scpo_lab.objective. Expected numbers are worked out by hand in the comments, not recomputed."""

import math

import pytest
import torch
import torch.nn.functional as F

from scpo_lab.objective import (
    completion_logprobs,
    group_advantages,
    group_reward_std,
    k3_kl,
    loss_denominator,
    masked_mean,
    overlong_penalty,
    policy_loss,
)

T_ = torch.tensor


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ------------------------------------------------------------------------------------------------ advantages

def test_group_advantages_grpo_two_groups():
    # groups [1,0] and [0,1]: mean 0.5, unbiased std sqrt((0.25+0.25)/1) = 0.70710678
    # A = +-0.5 / (0.70710678 + 1e-4) = +-0.70700681
    a = group_advantages(T_([1.0, 0.0, 0.0, 1.0]), group_size=2)
    assert close(a, [0.70700681, -0.70700681, -0.70700681, 0.70700681])


def test_group_advantages_grpo_one_group_of_four():
    # [1,0,0,1]: mean 0.5, unbiased var (4 * 0.25) / 3 = 1/3, std 0.57735027; A = +-0.5 / 0.57745027 = +-0.86587526
    a = group_advantages(T_([1.0, 0.0, 0.0, 1.0]), group_size=4)
    assert close(a, [0.86587526, -0.86587526, -0.86587526, 0.86587526])


def test_all_equal_group_gives_zero_advantage():
    r = T_([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    for scale in ("group", "none", "batch"):
        assert torch.equal(group_advantages(r, 4, scale), torch.zeros(8))
    assert torch.equal(group_reward_std(r, 4), torch.zeros(2))


def test_all_equal_group_gives_zero_advantage_for_rewards_that_are_not_binary_fractions():
    """Every rollout of a group truncated at L_max gets the same overlong penalty, e.g. -0.7: float32's mean of 8
    such values is an ulp off, so the std was 6e-8 (not a zero-std group to frac_reward_zero_std) and A ~6e-4
    (not a collapsed group to signal_stats). Both are exact now; a group that differs keeps its advantages."""
    from scpo_lab.objective import overlong_penalty

    for g in (8, 16):
        for factor in (0.1, 0.3, 0.7):
            r = overlong_penalty(torch.full((g,), 64), 64, 16, factor=factor)
            assert (r != 0).all() and torch.equal(group_reward_std(r, g), torch.zeros(1))
            for scale in ("group", "none", "batch"):
                assert torch.equal(group_advantages(r, g, scale), torch.zeros(g))
    mixed = torch.cat([torch.full((8,), -0.7), T_([1.0] + [0.0] * 7)])
    a = group_advantages(mixed, 8)
    assert torch.equal(a[:8], torch.zeros(8)) and a[8] > 2.0 and (a[9:] < 0).all()


def test_dr_grpo_advantages_no_std():
    # group 1 [1,0,0,0]: mean 0.25 -> [0.75, -0.25, -0.25, -0.25]; group 2 [2,2,2,2] -> 0
    a = group_advantages(T_([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4, scale="none")
    assert close(a, [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


def test_batch_scaled_advantages():
    # groups [1,0], [1,1] -> centered [0.5, -0.5, 0, 0]; batch [1,0,1,1]: mean 0.75, sum sq dev 0.75, /3 -> std 0.5
    # A = +-0.5 / 0.5001 = +-0.99980004
    a = group_advantages(T_([1.0, 0.0, 1.0, 1.0]), 2, scale="batch")
    assert close(a, [0.99980004, -0.99980004, 0.0, 0.0])


def test_group_reward_std_and_frac_zero():
    s = group_reward_std(T_([1.0, 1.0, 0.0, 1.0]), 2)
    assert close(s, [0.0, 0.70710678])
    assert float((s == 0).float().mean()) == 0.5


def test_group_size_one_gives_zero_not_nan():
    assert torch.equal(group_advantages(T_([1.0, 0.0]), 1), torch.zeros(2))


def test_advantage_validation():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(T_([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="scale.*group, none, batch"):
        group_advantages(T_([1.0, 0.0]), 2, scale="rloo")


# ------------------------------------------------------------------------------------------------ helpers

def test_k3_kl_known_values():
    # logp=-1, ref=-2: log(ref/pi) = -1 -> e^-1 + 1 - 1 = 0.36787944
    # pi=0.5, ref=0.25: 0.5 - log 0.5 - 1 = 0.19314718; equal -> 0
    kl = k3_kl(T_([-1.0, math.log(0.5), -3.0]), T_([-2.0, math.log(0.25), -3.0]))
    assert close(kl, [0.36787944, 0.19314718, 0.0])


def test_masked_mean():
    x = T_([[1.0, 2.0, float("nan")], [4.0, 0.0, 0.0]])
    m = T_([[1, 1, 0], [1, 0, 0]])
    assert close(masked_mean(x, m), 7.0 / 3.0)  # (1 + 2 + 4) / 3, the NaN at a pad is ignored
    assert close(masked_mean(x, m, dim=1), [1.5, 4.0])
    assert close(masked_mean(x, torch.zeros(2, 3)), 0.0)


# ------------------------------------------------------------------------------------------------ policy loss

@pytest.mark.parametrize(
    "ratio, adv, eps_high, expected_loss, low, high",
    [
        (1.5, +1.0, 0.2, -1.2, 0.0, 1.0),  # min(1.5, 1.2) = 1.2 -> clipped above
        (1.5, -1.0, 0.2, 1.5, 0.0, 0.0),  # min(-1.5, -1.2) = -1.5 -> unclipped (pessimistic)
        (0.5, +1.0, 0.2, -0.5, 0.0, 0.0),  # min(0.5, 0.8) = 0.5 -> unclipped
        (0.5, -1.0, 0.2, 0.8, 1.0, 0.0),  # min(-0.5, -0.8) = -0.8 -> clipped below
        (1.25, +1.0, 0.28, -1.25, 0.0, 0.0),  # clip-higher (DAPO): 1.25 < 1.28 -> unclipped
        (1.3, +2.0, 0.28, -2.56, 0.0, 1.0),  # min(2.6, 1.28 * 2) = 2.56
    ],
)
def test_clipped_surrogate_single_token(ratio, adv, eps_high, expected_loss, low, high):
    logp = T_([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(logp, T_([[0.0]]), T_([adv]), T_([[1.0]]), eps_high=eps_high, loss_agg="token-mean")
    assert close(loss, expected_loss, 1e-6)
    assert stats["clip_ratio/low"] == low and stats["clip_ratio/high"] == high and stats["clip_ratio"] == low + high
    assert math.isnan(stats["kl"])
    loss.backward()
    # clipped: no gradient; unclipped: d(-rho A)/dlogp = -rho A
    assert close(logp.grad, 0.0 if (low or high) else -ratio * adv, 1e-6)


def test_clip_ratio_ignores_padding():
    # tokens: [clipped high, padded clipped high], [unclipped, unclipped] -> 1 of 3 real tokens clipped
    logp = torch.log(T_([[1.5, 1.5], [1.0, 1.1]]))
    _, stats = policy_loss(logp, torch.zeros(2, 2), T_([1.0, 1.0]), T_([[1, 0], [1, 1]]))
    assert close(stats["clip_ratio"], 1 / 3) and close(stats["clip_ratio/high"], 1 / 3)
    assert stats["clip_ratio/low"] == 0.0


MASK_2x3 = T_([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "loss_agg, max_len, expected",
    [
        ("sequence-mean", None, -3.0),  # rows: (-1-2-3)/3 = -2, -4/1 = -4 -> mean -3
        ("token-mean", None, -2.5),  # (-1-2-3-4) / 4 tokens
        ("constant", 4, -1.25),  # -10 / (2 * 4)
    ],
)
def test_aggregations_dense_advantages(loss_agg, max_len, expected):
    # ratio 1 everywhere -> per-token loss = -A = [[-1,-2,-3],[-4,-5,-6]]; -5, -6 are padding
    logp = torch.zeros(2, 3)
    adv = T_([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    loss, _ = policy_loss(logp, logp, adv, MASK_2x3, loss_agg=loss_agg, max_completion_length=max_len)
    assert close(loss, expected)


@pytest.mark.parametrize(
    "loss_agg, max_len, expected",
    [
        ("sequence-mean", None, 0.5),  # rows: -1 (3 tokens of -1), +2 (1 token) -> (−1 + 2)/2
        ("token-mean", None, -0.25),  # (-3 + 2) / 4
        ("constant", 3, -1.0 / 6.0),  # (-3 + 2) / (2 * 3)
    ],
)
def test_aggregations_sequence_advantages(loss_agg, max_len, expected):
    logp = torch.zeros(2, 3)
    loss, _ = policy_loss(logp, logp, T_([1.0, -2.0]), MASK_2x3, loss_agg=loss_agg, max_completion_length=max_len)
    assert close(loss, expected)


def test_kl_penalty_value_and_gradient():
    # ratio 1, A = 0 -> only beta * k3; k3(logp=-1, ref=-2) = 0.36787944; beta 0.1 -> 0.036787944
    # d k3 / d logp = 1 - exp(ref - logp) = 1 - e^-1 = 0.63212056; * beta -> 0.063212056
    logp = T_([[-1.0]], requires_grad=True)
    loss, stats = policy_loss(logp, T_([[-1.0]]), T_([0.0]), T_([[1.0]]), ref_logp=T_([[-2.0]]), beta=0.1)
    assert close(loss, 0.036787944) and close(stats["kl"], 0.36787944)
    loss.backward()
    assert close(logp.grad, 0.063212056)


def test_kl_reported_but_not_added_when_beta_zero():
    loss, stats = policy_loss(T_([[-1.0]]), T_([[-1.0]]), T_([0.0]), T_([[1.0]]), ref_logp=T_([[-2.0]]))
    assert close(loss, 0.0) and close(stats["kl"], 0.36787944)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_agg", ["sequence-mean", "token-mean", "constant"])
def test_micro_batches_with_normalizer_sum_to_full_batch(loss_agg, level):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 5
    logp = (-torch.rand(B, T, generator=g)).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = T_([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    ref = old - 0.1
    kw = dict(beta=0.05, eps_high=0.28, loss_agg=loss_agg, max_completion_length=5, importance_sampling_level=level)
    full, _ = policy_loss(logp, old, adv, mask, ref_logp=ref, **kw)
    (g_full,) = torch.autograd.grad(full, logp)
    norm = loss_denominator(mask, loss_agg, max_completion_length=5)
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], ref_logp=ref[s], normalizer=norm, **kw)[0]
             for s in (slice(0, 2), slice(2, 4))]
    (g_parts,) = torch.autograd.grad(sum(parts), logp)
    assert torch.allclose(sum(parts), full, atol=1e-6)
    assert torch.allclose(g_parts, g_full, atol=1e-7)
    # without the normalizer, token-mean micro-batches would NOT sum to the full loss (they are unevenly sized)
    if loss_agg == "token-mean":
        naive = sum(policy_loss(logp[s], old[s], adv[s], mask[s], ref_logp=ref[s], **kw)[0]
                    for s in (slice(0, 2), slice(2, 4)))
        assert not torch.allclose(naive, full, atol=1e-3)


# ------------------------------------------------------------------------------------------------ GSPO (sequence level)

def test_gspo_sequence_ratio_and_clipping_by_hand():
    # log(pi/pi_old) per token, eps 0.2 both sides, sequence-mean over B = 3 rows:
    # row 0: [0.1, 0.3, pad 5.0], A = +1: log s = 0.2, s = e^0.2 = 1.2214028 > 1.2 -> clipped above, l = -1.2
    # row 1: [-0.1, 0.1, 0.6],    A = -1: log s = 0.2 (s = (e^0.6)^(1/3)), A < 0 -> unclipped, l = s = 1.2214028
    # row 2: [-0.3, -0.5, pad],   A = -2: log s = -0.4, s = e^-0.4 = 0.6703200 < 0.8 -> clipped below,
    #                                     l = -min(-2 * 0.67032, -2 * 0.8) = 1.6
    # loss = (-1.2 + 1.2214028 + 1.6) / 3 = 0.54046759
    # grad: clipped rows 0; row 1: d/dlogp_t (1/3)(1/3) sum_t -A sg[s] e^(logp_t - sg[logp_t]) = s / 9 = 0.13571142
    # clip_ratio over the 7 real tokens: high = row 0's 2, low = row 2's 2
    log_ratio = T_([[0.1, 0.3, 5.0], [-0.1, 0.1, 0.6], [-0.3, -0.5, 0.0]])
    mask = T_([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    old = torch.full((3, 3), -2.0)
    logp = (old + log_ratio).requires_grad_()
    loss, stats = policy_loss(logp, old, T_([1.0, -1.0, -2.0]), mask, importance_sampling_level="sequence")
    assert close(loss, 0.54046759)
    assert close(stats["clip_ratio/high"], 2 / 7) and close(stats["clip_ratio/low"], 2 / 7)
    assert close(stats["clip_ratio"], 4 / 7)
    loss.backward()
    assert close(logp.grad, [[0.0, 0.0, 0.0], [0.13571142] * 3, [0.0, 0.0, 0.0]])
    # the token level on the same tensor clips token by token: row 0 keeps e^0.1 = 1.1051709 unclipped
    # (-1.1051709 - 1.2) / 2 = -1.1525855; row 1: (e^-0.1 + e^0.1 + e^0.6) / 3 = 1.2773757; row 2: 1.6
    # -> (-1.1525855 + 1.2773757 + 1.6) / 3 = 0.57493009
    token, token_stats = policy_loss(logp, old, T_([1.0, -1.0, -2.0]), mask)
    assert close(token, 0.57493009) and close(token_stats["clip_ratio"], 3 / 7)


@pytest.mark.parametrize("loss_agg", ["sequence-mean", "token-mean", "constant"])
def test_token_and_sequence_levels_agree_when_every_token_has_the_same_ratio(loss_agg):
    # rows with one ratio each (1.1: unclipped, 1.5: clipped above for A > 0, 0.7: clipped below for A < 0):
    # s_i = rho_i, so value and gradient (s_i grad log pi_t per token, GSPO-token) equal the token level's
    ratios = T_([1.1, 1.5, 0.7, 1.5])
    mask = T_([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    old = -torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    adv = T_([1.0, 0.5, -1.0, -2.0])
    ref = old - 0.2
    out = {}
    for level in ("token", "sequence"):
        logp = (old + torch.log(ratios)[:, None]).requires_grad_()
        loss, stats = policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, loss_agg=loss_agg,
                                  max_completion_length=4, importance_sampling_level=level)
        (grad,) = torch.autograd.grad(loss, logp)
        out[level] = (loss.detach(), grad, stats)
    (lt, gt, st), (ls, gs, ss) = out["token"], out["sequence"]
    assert torch.allclose(lt, ls, atol=1e-6) and torch.allclose(gt, gs, atol=1e-6)
    assert st == pytest.approx(ss, abs=1e-6)
    assert gt[1].abs().sum() > 0 or gt[2].abs().sum() > 0  # the KL term keeps clipped rows' gradients non-zero


def test_sequence_level_at_ratio_one_is_the_token_level_exactly():
    # mu = 1: old = logp.detach(), every ratio is 1 -> GSPO is GRPO, per-token (dense) advantages included
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(3, 5, generator=g)).requires_grad_()
    mask = T_([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    for adv in (torch.randn(3, generator=g), torch.randn(3, 5, generator=g)):
        results = []
        for level in ("token", "sequence"):
            loss, _ = policy_loss(logp, logp.detach(), adv, mask, importance_sampling_level=level)
            results.append((loss.detach(), torch.autograd.grad(loss, logp)[0]))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("loss_agg", ["sequence-mean", "token-mean", "constant"])
def test_gspo_token_form_equals_the_plain_sequence_ratio_for_sequence_advantages(loss_agg):
    # TRL's form: coef = exp(mean_t log ratio) of shape [B, 1], differentiated through the mean (each token gets
    # s_i / |o_i|, times |o_i| copies in the sum); verl's stop-gradient form gives each token s_i directly
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(4, 5, generator=g)
    logp = (old + 0.3 * torch.randn(4, 5, generator=g)).requires_grad_()
    mask = T_([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    adv = T_([1.0, -0.5, -2.0, -1.5])  # s = 1.066, 0.985, 0.711 (A < 0: clipped below), 0.806
    ours, _ = policy_loss(logp, old, adv, mask, loss_agg=loss_agg, max_completion_length=5,
                          importance_sampling_level="sequence")
    coef = torch.exp(((logp - old) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True))  # [B, 1]
    per_token = -torch.min(coef * adv[:, None], coef.clamp(0.8, 1.2) * adv[:, None]) * mask  # [B, T]
    plain = {"sequence-mean": (per_token.sum(1) / mask.sum(1)).mean(), "token-mean": per_token.sum() / mask.sum(),
             "constant": per_token.sum() / (4 * 5)}[loss_agg]
    assert torch.allclose(ours, plain, atol=1e-6)
    g_ours, g_plain = (torch.autograd.grad(x, logp)[0] for x in (ours, plain))
    assert torch.allclose(g_ours, g_plain, atol=1e-6)
    assert torch.equal(g_ours[2], torch.zeros(5)) and g_ours[[0, 1, 3]].abs().sum() > 0


def test_sequence_ratio_ignores_padding_values():
    # a pad's log-ratio (here 50) must not enter log s_i = mean over real tokens: s = e^0 = 1, unclipped
    logp = T_([[0.1, -0.1, 50.0]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 3), T_([1.0]), T_([[1.0, 1.0, 0.0]]),
                              importance_sampling_level="sequence")
    assert close(loss, -1.0) and stats["clip_ratio"] == 0.0
    loss.backward()
    assert close(logp.grad, [[-0.5, -0.5, 0.0]])  # -A s / |o| on each real token


# ------------------------------------------------------------------------------------------------ overlong penalty

def test_overlong_penalty_is_linear_over_the_last_buffer_tokens():
    # L_max 10, buffer 4: 0 up to 6 tokens, then -(|o| - 6) / 4: 7 -> -0.25, 8 -> -0.5, 9 -> -0.75, 10 -> -1
    lengths = T_([1, 5, 6, 7, 8, 9, 10])
    assert close(overlong_penalty(lengths, 10, 4), [0, 0, 0, -0.25, -0.5, -0.75, -1.0])
    assert close(overlong_penalty(lengths, 10, 4, factor=0.5), [0, 0, 0, -0.125, -0.25, -0.375, -0.5])
    assert torch.equal(overlong_penalty(lengths, 10, 0), torch.zeros(7))  # off
    assert close(overlong_penalty(T_([0, 5, 10]), 10, 10), [0.0, -0.5, -1.0])  # the whole range is the buffer
    assert not torch.signbit(overlong_penalty(lengths, 10, 4)[:3]).any()  # 0.0, not -0.0
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 10, 11)


def test_loss_denominator_values():
    assert loss_denominator(MASK_2x3, "sequence-mean") == 2.0
    assert loss_denominator(MASK_2x3, "token-mean") == 4.0
    assert loss_denominator(MASK_2x3, "constant", 7) == 14.0


def test_policy_loss_validation():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="loss_agg.*sequence-mean, token-mean, constant"):
        policy_loss(z, z, torch.zeros(2), MASK_2x3, loss_agg="bnpo")
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(z, z, torch.zeros(2), MASK_2x3, loss_agg="constant")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(z, z, torch.zeros(2), MASK_2x3, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(z, z, torch.zeros(2, 2), MASK_2x3)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(z, z, torch.zeros(1), MASK_2x3)
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(z, torch.zeros(1, 3), torch.zeros(2), MASK_2x3)
    with pytest.raises(ValueError, match="importance_sampling_level.*token, sequence"):
        policy_loss(z, z, torch.zeros(2), MASK_2x3, importance_sampling_level="group")


# ------------------------------------------------------------------------------------------------ completion_logprobs

V = 128


def _tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama():
    return _tiny_llama()


def _batch(prompt_lens=(), completion_lens=(), P=None, T=None, seed=1, rows=None):
    """Left-padded prompts [B, P] and right-padded completions [B, T] (pad id 0), from random tokens of the given
    lengths or from `rows` = [(prompt tokens, completion tokens), ...]."""
    g = torch.Generator().manual_seed(seed)
    toks = rows or [(torch.randint(1, V, (p,), generator=g), torch.randint(1, V, (c,), generator=g))
                    for p, c in zip(prompt_lens, completion_lens)]
    B = len(toks)
    P = P or max(len(p) for p, _ in toks)
    T = T or max(len(c) for _, c in toks)
    pi, pm = torch.zeros(B, P, dtype=torch.long), torch.zeros(B, P, dtype=torch.long)
    ci, cm = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
    for b, (p, c) in enumerate(toks):
        pi[b, P - len(p):], pm[b, P - len(p):] = p, 1
        ci[b, : len(c)], cm[b, : len(c)] = c, 1
    return pi, pm, ci, cm, toks


def _reference(model, pi, pm, ci, cm, temperature=1.0):
    """Plain full forward (full B x (P+T) x V logits), log_softmax, gather."""
    ids, att = torch.cat([pi, ci], 1), torch.cat([pm, cm], 1)
    pos = (att.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits.float() / temperature
    P, T = pi.shape[1], ci.shape[1]
    lp_all = F.log_softmax(logits[:, P - 1 : P + T - 1], dim=-1)
    lp = lp_all.gather(-1, ci.unsqueeze(-1)).squeeze(-1) * cm
    ent = -(lp_all.exp() * lp_all).sum(-1) * cm
    return lp, ent


@pytest.mark.parametrize("chunk_size", [2, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_match_full_forward(llama, chunk_size, temperature):
    pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])
    with torch.no_grad():
        lp, ent = completion_logprobs(llama, pi, pm, ci, cm, temperature=temperature, chunk_size=chunk_size)
        ref_lp, ref_ent = _reference(llama, pi, pm, ci, cm, temperature)
    assert lp.shape == ent.shape == (3, 5)
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    assert torch.all(lp[cm == 0] == 0) and torch.all(ent[cm == 0] == 0)
    assert torch.all(lp[cm == 1] < 0)


def test_completion_logprobs_never_builds_full_logits(llama):
    seen = []
    hook = llama.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])
        with torch.no_grad():
            completion_logprobs(llama, pi, pm, ci, cm, chunk_size=2, with_entropy=False)
    finally:
        hook.remove()
    assert seen == [(3, 2, V), (3, 2, V), (3, 1, V)]  # T=5 in chunks 2, 2, 1; never [B, P+T, V]


def test_backward_recomputes_chunk_logits(llama):
    # with grad on, each chunk is checkpointed: the lm_head runs once per chunk forward and again in backward
    calls = []
    hook = llama.get_output_embeddings().register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    try:
        pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])
        lp, _ = completion_logprobs(llama, pi, pm, ci, cm, chunk_size=2)
        assert len(calls) == 3
        lp.sum().backward()
    finally:
        hook.remove()
        llama.zero_grad(set_to_none=True)
    assert len(calls) == 6 and max(c[1] for c in calls) == 2


def test_completion_logprobs_without_entropy_and_odd_pad_ids(llama):
    pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])
    with torch.no_grad():
        ref_lp, _ = _reference(llama, pi, pm, ci, cm)
        lp, ent = completion_logprobs(llama, pi, pm, ci.masked_fill(cm == 0, -100), cm, with_entropy=False)
    assert ent is None and torch.allclose(lp, ref_lp, atol=1e-5)


def test_padding_invariance(llama):
    pi, pm, ci, cm, rows = _batch([4, 2, 3], [5, 3, 1])
    g = torch.Generator().manual_seed(7)
    extra = (torch.randint(1, V, (9,), generator=g), torch.randint(1, V, (8,), generator=g))
    pi2, pm2, ci2, cm2, _ = _batch(rows=rows + [extra])
    with torch.no_grad():
        lp, _ = completion_logprobs(llama, pi, pm, ci, cm, chunk_size=3)
        lp2, _ = completion_logprobs(llama, pi2, pm2, ci2, cm2, chunk_size=3)
    assert torch.allclose(lp2[:3, :5], lp, atol=1e-5)  # same rows, more left and right padding
    assert torch.all(lp2[:3, 5:] == 0)


def _grads(model, params, fn):
    model.zero_grad(set_to_none=True)
    fn().backward()
    return [p.grad.detach().clone() for p in params]


def _check_grads_match(model, params):
    pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))

    def ours():
        lp, ent = completion_logprobs(model, pi, pm, ci, cm, chunk_size=2)
        return (lp * w).sum() + 0.1 * ent.sum()

    def full():
        lp, ent = _reference(model, pi, pm, ci, cm)
        return (lp * w).sum() + 0.1 * ent.sum()

    g_ours, g_full = _grads(model, params, ours), _grads(model, params, full)
    assert any(g.abs().sum() > 0 for g in g_full)
    for a, b in zip(g_ours, g_full):
        assert torch.allclose(a, b, atol=1e-5)


def test_gradients_match_full_forward(llama):
    _check_grads_match(llama, [p for p in llama.parameters() if p.requires_grad])


def test_peft_lora_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(seed=2),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])
    with torch.no_grad():
        lp, _ = completion_logprobs(model, pi, pm, ci, cm, chunk_size=2)
        ref_lp, _ = _reference(model, pi, pm, ci, cm)
        with model.disable_adapter():  # the KL reference path: adapters off changes the values
            lp_off, _ = completion_logprobs(model, pi, pm, ci, cm, chunk_size=2)
            ref_off, _ = _reference(model, pi, pm, ci, cm)
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(lp_off, ref_off, atol=1e-5)
    assert not torch.allclose(lp, lp_off, atol=1e-3)
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora_params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    _check_grads_match(model, lora_params)


def _grouped_batch(G=3):
    """Two groups of G rows; rows of a group share one (left-padded) prompt, completions differ."""
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(1, V, (n,), generator=g) for n in (4, 2)]
    rows = [(prompts[k], torch.randint(1, V, (n,), generator=g)) for k in range(2) for n in (5, 3, 1)[:G]]
    return _batch(rows=rows)


@pytest.mark.parametrize("peft_wrap", [False, True])
def test_shared_prompt_forward_equals_unshared_values_and_gradients(peft_wrap):
    model = _tiny_llama(seed=3)
    if peft_wrap:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    pi, pm, ci, cm, _ = _grouped_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for group_size in (1, 3):
        model.zero_grad()
        lp, ent = completion_logprobs(model, pi, pm, ci, cm, chunk_size=2, group_size=group_size)
        (lp.sum() + 0.1 * ent.sum()).backward()
        results.append((lp.detach(), ent.detach(), [p.grad.clone() for p in params]))
    (lp1, ent1, g1), (lp3, ent3, g3) = results
    assert torch.allclose(lp1, lp3, atol=1e-5) and torch.allclose(ent1, ent3, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g3))


def test_shared_prompt_path_falls_back_when_prompts_differ(llama):
    pi, pm, ci, cm, _ = _batch([4, 2, 3], [5, 3, 1])  # three different prompts, "group_size" 3
    with torch.no_grad():
        shared, _ = completion_logprobs(llama, pi, pm, ci, cm, group_size=3)
        plain, _ = completion_logprobs(llama, pi, pm, ci, cm)
    assert torch.equal(shared, plain)
