"""sdpo and opsd against their reference code (issue 18, items 4 and 5): the alpha convention of SDPO's
compute_self_distillation_loss and TRL's GKD, SDPO's student top-k support, token mean over distilled tokens and
importance weight clipped at 2, OPSD's full vocabulary, point-wise clip and initial-model teacher, and the EMA
teacher moving once per training step. Hand-computed values on small tensors (float64 where a limit is taken)."""

import math

import pytest
import torch

from scpo_lab.config import make_config
from scpo_lab.critics.base import UpdateForward
from scpo_lab.critics.selfdistill import OpsdCritic, SdpoCritic, vocabulary_size
from scpo_lab.models import tiny_policy
from scpo_lab.objective import distill_divergence, distill_loss
from scpo_lab.rollout import RolloutBatch, sample_rollouts
from scpo_lab.tasks import get_task
from scpo_lab.tasks.base import Verdict
from scpo_lab.teacher import TeacherOutput, student_messages, teacher_pass

S = [0.5, 0.3, 0.2]  # student
T = [0.2, 0.2, 0.6]  # teacher


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def log(p):
    return torch.tensor(p, dtype=torch.float64).log()


# ------------------------------------------------------------------------------------------------ item 4: alpha

def test_alpha_quarter_is_the_references_generalized_jsd():
    # SDPO core_algos.py L1154-1160 / TRL gkd_trainer.py: m = (1 - a) s + a t, D = (1 - a) KL(s || m) + a KL(t || m)
    a = 0.25
    m = [(1 - a) * s + a * t for s, t in zip(S, T)]
    expected = (1 - a) * kl(S, m) + a * kl(T, m)
    assert distill_divergence(log(S), log(T), a).item() == pytest.approx(expected, abs=1e-12)
    flipped_m = [a * s + (1 - a) * t for s, t in zip(S, T)]  # the old convention: a KL(s || m') + (1 - a) KL(t || m')
    assert abs(expected - (a * kl(S, flipped_m) + (1 - a) * kl(T, flipped_m))) > 1e-3  # the test tells them apart


def test_alpha_quarter_through_the_loss_with_a_tail_bucket():
    # top-2 support [0.5, 0.3] / [0.2, 0.2] + tails 0.2 / 0.6: the same three buckets as above
    student, teacher = log([[S[:2]]]), log([[T[:2]]])
    loss, per_token = distill_loss(student, teacher, torch.ones(1, 1), alpha=0.25, token_clip=0.0, n_tokens=1.0)
    m = [0.75 * s + 0.25 * t for s, t in zip(S, T)]
    assert loss.item() == pytest.approx(0.75 * kl(S, m) + 0.25 * kl(T, m), abs=1e-9)


def test_alpha_ends_forward_kl_at_zero_reverse_kl_at_one_and_continuous():
    s, t = log(S), log(T)
    forward, reverse = kl(T, S), kl(S, T)  # KL(t || s), KL(s || t)
    assert distill_divergence(s, t, 0.0).item() == pytest.approx(forward, abs=1e-12)
    assert distill_divergence(s, t, 1.0).item() == pytest.approx(reverse, abs=1e-12)
    eps = 1e-6  # the interior tends to a KL(t || s) as a -> 0 and to (1 - a) KL(s || t) as a -> 1
    assert distill_divergence(s, t, eps).item() / eps == pytest.approx(forward, rel=1e-4)
    assert distill_divergence(s, t, 1 - eps).item() / eps == pytest.approx(reverse, rel=1e-4)
    assert abs(forward - reverse) > 0.03  # 10 % apart, far outside rel=1e-4: a swapped end fails


# ------------------------------------------------------------------------------------------------ item 5: SDPO

def _batch(logprobs, mask, passed, group_size=2):
    problem = get_task("arithmetic").problems("train", n=1, seed=0)[0]
    n = len(passed)
    return RolloutBatch(prompt_ids=None, prompt_mask=None, completion_ids=None, completion_mask=mask,
                        logprobs=logprobs, texts=[f"attempt {i}" for i in range(n)], problems=[problem] * n,
                        group_ids=torch.arange(n) // group_size, truncated=None, group_size=group_size,
                        verdicts=[Verdict(float(p), p, "Wrong." if not p else "Correct.") for p in passed])


def _teacher(dist_logprobs, has_teacher):
    B, T, k = dist_logprobs.shape
    ids = torch.arange(k).expand(B, T, k)
    return TeacherOutput(logprobs=torch.zeros(B, T), tokens_read=0, dist_logprobs=dist_logprobs, dist_ids=ids,
                         has_teacher=torch.tensor(has_teacher), context_stats={})


def _term(critic, batch, teacher):
    result = critic.advantages(batch, torch.zeros(len(batch.verdicts)), teacher)
    return result.loss_term


def test_sdpo_loss_is_a_token_mean_over_distilled_tokens_only():
    """Row 1 has no teacher: it leaves the denominator, so row 0's loss and gradient are those of row 0 alone."""
    cfg = make_config("smoke", method="sdpo")  # the sampler's log-probs equal the forward's below: w_t = 1
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    teacher_support = torch.log(torch.tensor([[[0.6, 0.2]] * 3, [[0.1, 0.1]] * 3]))
    student = torch.log(torch.tensor([[[0.5, 0.3]] * 3, [[0.3, 0.3]] * 3])).requires_grad_()
    batch = _batch(torch.zeros(2, 3), mask, [True, True])
    term = _term(SdpoCritic(cfg), batch, _teacher(teacher_support, [True, False]))
    forward = UpdateForward(torch.zeros(2, 3), support_logprobs=student)
    loss, _ = term(forward, slice(0, 2), mask, float(mask.sum()))  # n_tokens = all 5 completion tokens
    m = [0.5 * s + 0.5 * t for s, t in zip([0.5, 0.3, 0.2], [0.6, 0.2, 0.2])]
    jsd = 0.5 * kl([0.5, 0.3, 0.2], m) + 0.5 * kl([0.6, 0.2, 0.2], m)
    assert loss.item() == pytest.approx(jsd, abs=1e-6)  # (2 jsd) / 2 distilled tokens, not / 5
    loss.backward()
    alone = student[:1].detach().clone().requires_grad_()
    term_alone = _term(SdpoCritic(cfg), _batch(torch.zeros(1, 3), mask[:1], [True], group_size=1),
                       _teacher(teacher_support[:1], [True]))
    term_alone(UpdateForward(torch.zeros(1, 3), support_logprobs=alone), slice(0, 1), mask[:1], 2.0)[0].backward()
    torch.testing.assert_close(student.grad[:1], alone.grad)
    assert student.grad[1].abs().sum() == 0


def test_sdpo_importance_weight_is_clipped_at_two_and_carries_no_gradient():
    cfg = make_config("smoke", method="sdpo")  # is_clip auto = 2 (SDPO's sdpo.yaml is_clip 2.0)
    critic = SdpoCritic(cfg)
    mask = torch.ones(1, 2)
    sampler = torch.tensor([[-1.0, -1.0]])
    current = (sampler + torch.tensor([[math.log(3.0), math.log(0.5)]])).requires_grad_()  # ratios 3 and 0.5
    teacher_support = torch.log(torch.tensor([[[0.6, 0.2], [0.6, 0.2]]]))
    student = torch.log(torch.tensor([[[0.5, 0.3], [0.5, 0.3]]]))
    term = _term(critic, _batch(sampler, mask, [False], group_size=1), _teacher(teacher_support, [True]))
    loss, _ = term(UpdateForward(current, support_logprobs=student), slice(0, 1), mask, 2.0)
    m = [0.5 * s + 0.5 * t for s, t in zip([0.5, 0.3, 0.2], [0.6, 0.2, 0.2])]
    jsd = 0.5 * kl([0.5, 0.3, 0.2], m) + 0.5 * kl([0.6, 0.2, 0.2], m)
    assert loss.item() == pytest.approx((2.0 * jsd + 0.5 * jsd) / 2, rel=1e-5)  # min(3, 2) and 0.5
    assert not loss.requires_grad  # w_t has no gradient: the loss reaches the student's support log-probs only
    assert critic.is_clip == 2.0


@pytest.fixture(scope="module")
def policy():
    p = tiny_policy(seed=0)
    with torch.no_grad():  # a non-zero LoRA update, so the contexts' distributions differ visibly
        for name, param in p.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return p


@pytest.fixture(scope="module")
def rollouts(policy):
    task = get_task("arithmetic")
    batch = sample_rollouts(policy, task.problems("train", n=2, seed=0), group_size=2, max_new_tokens=6, seed=2)
    batch.verdicts = [Verdict(0.0, False, "The expected answer is 3. Your final answer 4 is wrong.")] * len(batch)
    return batch


def test_sdpo_support_is_the_students_top_k_with_the_teacher_scored_on_it(policy, rollouts):
    cfg = make_config("smoke", method="sdpo", **{"distill.top_k": 4})
    critic = SdpoCritic(cfg, policy.tokenizer)
    out = critic.teacher_pass(policy, rollouts, temperature=1.0, micro_batch_size=4)
    student = teacher_pass(policy, rollouts, rollouts.verdicts, context=student_messages, top_k=4, micro_batch_size=4)
    messages, _, _ = critic.contexts(rollouts)
    teacher_own = teacher_pass(policy, rollouts, rollouts.verdicts, messages=messages, top_k=4, micro_batch_size=4)
    on = rollouts.completion_mask.bool()
    assert torch.equal(out.dist_ids[on], student.dist_ids[on])  # the student's top-k ids
    assert not torch.equal(teacher_own.dist_ids[on], student.dist_ids[on])  # which are not the teacher's own
    scored = teacher_pass(policy, rollouts, rollouts.verdicts, messages=messages, support_ids=student.dist_ids,
                          micro_batch_size=4)  # the EMA starts at the live weights
    torch.testing.assert_close(out.dist_logprobs[on], scored.dist_logprobs[on], atol=1e-5, rtol=0)
    assert out.tokens_read == student.tokens_read + scored.tokens_read  # the student's pass is counted
    term = critic.advantages(rollouts, torch.zeros(len(rollouts)), out).loss_term
    assert term.tail and torch.equal(term.support_ids, out.dist_ids)


# ------------------------------------------------------------------------------------------------ item 5: OPSD

def test_opsd_defaults_full_vocabulary_pointwise_clip_initial_teacher(policy, rollouts):
    critic = OpsdCritic(make_config("smoke", method="opsd"), policy.tokenizer)
    out = critic.teacher_pass(policy, rollouts, temperature=1.0, micro_batch_size=4)
    V = vocabulary_size(policy)
    on = rollouts.completion_mask.bool()
    assert out.dist_logprobs.shape[-1] == V
    torch.testing.assert_close(out.dist_logprobs[on].exp().sum(-1), torch.ones(int(on.sum())), atol=1e-4, rtol=0)
    messages, _, _ = critic.contexts(rollouts)
    with policy.reference():  # OPSD's fixed_teacher: the adapter disabled
        initial = teacher_pass(policy, rollouts, rollouts.verdicts, messages=messages, top_k=3, micro_batch_size=4)
    torch.testing.assert_close(out.dist_logprobs[on].topk(3, -1).values, initial.dist_logprobs[on], atol=1e-5,
                               rtol=0)
    term = critic.advantages(rollouts, torch.zeros(len(rollouts)), out).loss_term
    assert not term.tail and term.token_clip == 0.05 and term.is_clip == 0.0
    assert (critic.support, critic.teacher_kind, critic.token_clip, critic.is_clip) == ("full", "initial", 0.05, 0.0)


def test_opsd_clip_caps_each_term_over_the_vocabulary_not_the_token_sum():
    # reverse KL (a = 1) terms s_v log(s_v / t_v): 0.458, 0.122, -0.220; capped at 0.05 each: 0.05, 0.05, -0.220
    s, t = log(S), log(T)
    terms = [x * math.log(x / y) for x, y in zip(S, T)]
    capped = sum(min(e, 0.05) for e in terms)
    assert distill_divergence(s, t, 1.0, token_clip=0.05).item() == pytest.approx(capped, abs=1e-12)
    assert capped != pytest.approx(min(sum(terms), 0.05))  # a per-token cap of the sum would give 0.05
    # full vocabulary (no tail), forward KL (a = 0), as OPSD's later scripts run it
    cfg = make_config("smoke", method="opsd", **{"distill.alpha": 0.0})
    teacher_support = log([[T]]).float()
    student = log([[S]]).float()
    batch = _batch(torch.zeros(1, 1), torch.ones(1, 1), [False], group_size=1)
    term = _term(OpsdCritic(cfg), batch, _teacher(teacher_support, [True]))
    loss, _ = term(UpdateForward(torch.zeros(1, 1), support_logprobs=student), slice(0, 1), torch.ones(1, 1), 1.0)
    forward_terms = [y * math.log(y / x) for x, y in zip(S, T)]
    assert loss.item() == pytest.approx(sum(min(e, 0.05) for e in forward_terms), abs=1e-6)


def test_auto_options_resolve_per_method_and_explicit_values_win():
    sdpo = SdpoCritic(make_config("smoke", method="sdpo"))
    assert (sdpo.support, sdpo.teacher_kind, sdpo.token_clip, sdpo.is_clip) == ("topk", "ema", 0.0, 2.0)
    sampled = OpsdCritic(make_config("smoke", method="opsd", **{"distill.support": "sampled"}))
    assert sampled.token_clip == 0.0  # OPSD's clip is on the distribution loss only
    set_ = SdpoCritic(make_config("smoke", method="sdpo", **{"distill.token_clip": 0.3, "distill.is_clip": 0,
                                                            "distill.support": "full"}))
    assert (set_.support, set_.token_clip, set_.is_clip) == ("full", 0.3, 0.0)
    from scpo_lab.checks import ConfigError
    with pytest.raises(ConfigError, match=r"distill.is_clip: got 'off'; must be 'auto' or a finite number >= 0"):
        make_config("smoke", method="sdpo", **{"distill.is_clip": "off"})


# ------------------------------------------------------------------------------------------------ the EMA teacher

def test_ema_moves_once_per_training_step_not_per_optimizer_step(tmp_path):
    """SDPO dp_actor.py L918-920: one EMA step per update_policy call, after all its optimizer steps. With
    num_iterations = 2 (two optimizer steps) and a LoRA B that starts at 0, the EMA's B after one training step is
    r * B_final; an EMA step per optimizer step would give r (1 - r) B_mid + r B_final."""
    from scpo_lab.trainer import train
    rate = 0.25
    cfg = make_config("smoke", method="sdpo", steps=1, num_iterations=2, runs_dir=str(tmp_path / "runs"),
                      learning_rate=0.05, **{"distill.ema_rate": rate, "distill.top_k": 5})
    run = train(cfg, progress=False)
    ema = torch.load(run.dir.path / "final" / "critic.pt", weights_only=True)["ema"]
    trained = {n: p.detach() for n, p in run.load_policy().model.named_parameters() if n in ema}
    b_names = [n for n in ema if "lora_B" in n]
    assert b_names and all(trained[n].abs().max() > 0 for n in b_names)  # the actor moved
    for name in b_names:
        torch.testing.assert_close(ema[name], rate * trained[name], atol=1e-7, rtol=1e-5)
