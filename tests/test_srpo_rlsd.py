"""SRPO and RLSD (issue 19, item 4) against hand-computed values: SRPO's routing (passing rollouts keep GRPO's
advantage and are never distilled, failing ones are distilled with SDPO's loss, a token mean over their tokens
only), RLSD's weight (the sign of A_i, the clip to 1 +- eps_w, the decay of lam at two steps); then each trains
2 steps on the smoke profile."""

import math

import pytest
import torch

from scpo_lab.checks import ConfigError
from scpo_lab.config import make_config
from scpo_lab.critics import arms, critic_class
from scpo_lab.critics.base import UpdateForward
from scpo_lab.critics.rlsd import RlsdCritic, rlsd_lambda
from scpo_lab.critics.selfdistill import OPSD_REFERENCE, SDPO_SOLUTION, SdpoCritic
from scpo_lab.critics.srpo import SrpoCritic
from scpo_lab.teacher import TeacherOutput
from test_selfdistill import _batch  # the same small hand-made batch


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def jsd(s, t):  # alpha 0.5 on a top-2 support + tail bucket (SDPO's default)
    s, t = [*s, 1 - sum(s)], [*t, 1 - sum(t)]
    m = [0.5 * x + 0.5 * y for x, y in zip(s, t)]
    return 0.5 * kl(s, m) + 0.5 * kl(t, m)


# two groups of 2: group 0 both pass (A = 0), group 1 one pass (A = +0.7) and one fail (A = -0.7)
PASSED = [True, True, True, False]
A = torch.tensor([0.0, 0.0, 0.7, -0.7])
STUDENT = [[[0.5, 0.3], [0.4, 0.4]]] * 4  # [B, T, k] student's support probabilities (same for every row)
TEACHER = [[[0.1, 0.8], [0.1, 0.1]]] * 3 + [[[0.6, 0.2], [0.2, 0.3]]]  # rows 0-2 far off: distilled, they'd dominate


def _teacher(critic, batch, logprobs=None):
    messages, has, stats = critic.contexts(batch)
    dist = torch.log(torch.tensor(TEACHER))
    return TeacherOutput(logprobs=logprobs if logprobs is not None else torch.zeros(4, 2), tokens_read=0,
                         dist_logprobs=dist, dist_ids=torch.arange(2).expand(4, 2, 2), has_teacher=has,
                         context_stats=stats), messages


def test_srpo_routes_passing_rollouts_to_grpo_and_failing_ones_to_sdpo_distillation():
    cfg = make_config("smoke", method="srpo")
    batch = _batch(torch.zeros(4, 2), torch.ones(4, 2), PASSED)
    critic = SrpoCritic(cfg)
    teacher, messages = _teacher(critic, batch)
    # contexts: only the failing row 3 has a teacher, SDPO's: its passing sibling (row 2) as the solution
    assert teacher.has_teacher.tolist() == [False, False, False, True]
    assert messages[3][-1]["content"].endswith(SDPO_SOLUTION.format(solution="attempt 2"))
    assert all(m == batch.problems[0].prompt for m in messages[:3])
    sdpo_has = SdpoCritic(cfg).contexts(batch)[1]
    assert sdpo_has.tolist() == [True, True, False, True]  # sdpo would distil the passing rows 0 and 1 too
    result = critic.advantages(batch, A, teacher)
    assert result.advantages.tolist() == pytest.approx([0.0, 0.0, 0.7, 0.0])  # A_i 1[passed_i] (lam = 0)
    assert result.stats["srpo/grpo_frac"] == 0.75 and result.stats["srpo/distill_frac"] == 0.25
    # the loss: row 3's two tokens only, a mean over those 2 tokens (not over the batch's 8)
    student = torch.log(torch.tensor(STUDENT)).requires_grad_()
    term = result.loss_term
    loss, _ = term(UpdateForward(torch.zeros(4, 2), support_logprobs=student), slice(0, 4), torch.ones(4, 2), 8.0)
    expected = (jsd([0.5, 0.3], [0.6, 0.2]) + jsd([0.4, 0.4], [0.2, 0.3])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert student.grad[:3].abs().sum() == 0 and student.grad[3].abs().sum() > 0


def test_srpo_grpo_weight_applies_to_failing_rows_only_and_sampled_mode():
    batch = _batch(torch.full((4, 2), -1.5), torch.ones(4, 2), PASSED)
    cfg = make_config("smoke", method="srpo", **{"distill.grpo_weight": 0.25})
    critic = SrpoCritic(cfg)
    teacher, _ = _teacher(critic, batch)
    result = critic.advantages(batch, A, teacher)
    assert result.advantages.tolist() == pytest.approx([0.0, 0.0, 0.7, 0.25 * -0.7])  # passing keep all of A_i
    assert result.loss_term.weight == 0.75
    # sampled: the failing row gets lam A_i + (1 - lam) d_j, d = log t - log s = [0.5, -0.5]; lam = 0.5
    cfg = make_config("smoke", method="srpo", **{"distill.grpo_weight": 0.5, "distill.support": "sampled"})
    critic = SrpoCritic(cfg)
    teacher, _ = _teacher(critic, batch, logprobs=torch.tensor([[-1.0, -2.0]] * 4))
    result = critic.advantages(batch, A, teacher)
    assert result.loss_term is None
    expected = [[0.0, 0.0], [0.0, 0.0], [0.7, 0.7], [-0.35 + 0.25, -0.35 - 0.25]]
    torch.testing.assert_close(result.advantages, torch.tensor(expected), atol=1e-6, rtol=0)


def test_rlsd_weight_sign_clip_and_decay_at_two_steps():
    cfg = make_config("smoke", method="rlsd")  # eps_w 0.2, lam 1 -> 0 linearly over the run's 2 steps
    assert cfg.steps == 2
    critic = RlsdCritic(cfg)
    sampler = torch.full((4, 3), -2.0)
    delta = torch.tensor([0.1, 0.5, -0.5])
    teacher = TeacherOutput(logprobs=sampler + delta, tokens_read=0, has_teacher=None)
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    batch = _batch(sampler, mask, [True, False, True, True])
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0])
    # A > 0: w = clip(e^{0.1}, e^{0.5}, e^{-0.5}) = (1.10517, 1.2, 0.8); A < 0: clip(e^{-0.1}, e^{-0.5}, e^{0.5})
    w_pass = [math.exp(0.1), 1.2, 0.8]
    w_fail = [math.exp(-0.1), 0.8, 1.2]
    step1 = critic.advantages(batch, adv, teacher, step=1)  # lam = 1: A_i w_{i,t}
    torch.testing.assert_close(step1.advantages, torch.tensor([w_pass, [-w for w in w_fail], [0.0] * 3, [0.0] * 3]),
                               atol=1e-6, rtol=0)
    assert step1.stats["rlsd/lambda"] == 1.0
    assert step1.stats["rlsd/clipped_frac"] == pytest.approx(4 / 6)  # 4 of the 6 tokens with A != 0
    step2 = critic.advantages(batch, adv, teacher, step=2)  # lam = 0.5: A_i (0.5 + 0.5 w)
    torch.testing.assert_close(step2.advantages,
                               torch.tensor([[0.5 + 0.5 * w for w in w_pass], [-(0.5 + 0.5 * w) for w in w_fail],
                                             [0.0] * 3, [0.0] * 3]), atol=1e-6, rtol=0)
    assert step2.stats["rlsd/lambda"] == 0.5
    assert critic.advantages(batch, adv, teacher, step=3).stats["rlsd/lambda"] == 0.0  # after decay: GRPO
    # the schedules at two steps, by hand
    assert rlsd_lambda(2, 1.0, 0.0, "cosine", 3) == pytest.approx((1 + math.cos(math.pi / 3)) / 2)  # 0.75
    assert rlsd_lambda(3, 0.8, 0.2, "linear", 4) == pytest.approx(0.8 - 0.6 * 0.5)
    assert rlsd_lambda(7, 0.6, 0.0, "constant", 4) == 0.6
    wide = RlsdCritic(make_config("smoke", method="rlsd", **{"rlsd.eps_w": 0.5, "rlsd.schedule": "constant"}))
    out = wide.advantages(batch, adv, teacher, step=2).advantages
    assert out[0].tolist() == pytest.approx([math.exp(0.1), 1.5, math.exp(-0.5)], abs=1e-6)  # inside [0.5, 1.5]


def test_rlsd_context_and_checks():
    critic = RlsdCritic(make_config("smoke", method="rlsd"))
    batch = _batch(torch.zeros(2, 1), torch.ones(2, 1), [True, False])
    messages, has = critic.contexts(batch)
    problem = batch.problems[0]
    note = OPSD_REFERENCE.format(solution=f"{problem.meta['expression']} = {problem.answer}")
    assert has.tolist() == [True, True] and messages[0][-1]["content"].endswith(note)
    feedback = RlsdCritic(make_config("smoke", method="rlsd", **{"rlsd.context": "feedback"}))
    assert "Wrong." in feedback.contexts(batch)[0][1][-1]["content"]
    with pytest.raises(ConfigError, match=r"rlsd.eps_w: got 1.0; must be in \(0, 1\)"):
        make_config("smoke", method="rlsd", **{"rlsd.eps_w": 1.0})
    with pytest.raises(ConfigError, match="rlsd.schedule: unknown 'step'"):
        make_config("smoke", method="rlsd", **{"rlsd.schedule": "step"})
    assert arms()["srpo"] == {"method": "srpo"} and arms()["rlsd"] == {"method": "rlsd"}
    assert critic_class("srpo") is SrpoCritic and critic_class("rlsd") is RlsdCritic


@pytest.mark.parametrize("method", ["srpo", "rlsd"])
def test_trains_two_steps_on_smoke(method, tmp_path):
    from scpo_lab.trainer import train
    run = train(make_config("smoke", method=method, runs_dir=str(tmp_path / "runs")), progress=False)
    metrics = run.metrics
    assert metrics["step"].tolist() == [1, 2] and metrics["loss"].notna().all()
    if method == "srpo":
        assert {"srpo/grpo_frac", "srpo/distill_frac"} <= set(metrics.columns)
    else:
        assert metrics["rlsd/lambda"].tolist() == [1.0, 0.5]
