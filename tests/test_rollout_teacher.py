"""The decode loop against HF generate and teacher forcing; the teacher's privileged context; the V2 critic math."""

import math

import pytest
import torch

from scpo_lab.config import make_config
from scpo_lab.critics.divergence import DivergenceCritic
from scpo_lab.models import tiny_policy
from scpo_lab.objective import completion_logprobs
from scpo_lab.rollout import RolloutBatch, encode_prompts, generate, sample_rollouts
from scpo_lab.tasks import get_task
from scpo_lab.tasks.base import Verdict
from scpo_lab.teacher import privileged_messages, teacher_pass


def _pair(result):
    """(advantages, stats) of a CriticResult."""
    return result.advantages, result.stats


@pytest.fixture(scope="module")
def policy():
    p = tiny_policy(seed=0)
    with torch.no_grad():  # make the LoRA update non-zero so "adapter on" differs from the base
        for name, param in p.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return p


@pytest.fixture(scope="module")
def problems():
    return get_task("arithmetic").problems("train", n=3, seed=0)


ENGINES = ("static", "hf")


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_decode_equals_hf_generate(policy, problems, engine):
    ids, mask = encode_prompts(policy.tokenizer, [p.prompt for p in problems], policy.device)
    eos = policy.eos_token_ids
    ours, ours_mask, _, _ = generate(policy.model, ids, mask, repeats=1, max_new_tokens=12, temperature=0, top_p=1.0,
                                     eos_token_ids=eos, pad_token_id=policy.tokenizer.pad_token_id, engine=engine)
    ref = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                eos_token_id=eos, pad_token_id=policy.tokenizer.pad_token_id)[:, ids.shape[1]:]
    for row in range(len(problems)):
        n = int(ours_mask[row].sum())
        assert ours[row, :n].tolist() == ref[row, :n].tolist()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampled_logprobs_equal_teacher_forced_pass(policy, problems, engine, top_p):
    batch = sample_rollouts(policy, problems, group_size=4, max_new_tokens=10, temperature=0.9, top_p=top_p, seed=3,
                            engine=engine)
    assert len(batch) == 12 and batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    with torch.no_grad():
        forced, _ = completion_logprobs(policy.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                        batch.completion_mask, temperature=0.9)
    torch.testing.assert_close(forced, batch.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_same_seed_same_rollouts_and_different_seed_differs(policy, problems, engine):
    a = sample_rollouts(policy, problems, group_size=2, max_new_tokens=8, seed=5, engine=engine)
    b = sample_rollouts(policy, problems, group_size=2, max_new_tokens=8, seed=5, engine=engine)
    c = sample_rollouts(policy, problems, group_size=2, max_new_tokens=8, seed=6, engine=engine)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_eos_ends_a_row_and_is_kept_in_the_mask(policy, problems):
    eos = policy.eos_token_ids[0]

    def eos_always_wins(module, inputs, output):  # a huge EOS logit: every row stops after one token
        output[..., eos] += 1e4
        return output

    hook = policy.model.get_output_embeddings().register_forward_hook(eos_always_wins)
    try:  # the hook acts on the HF forward only; engine.py's EOS handling is tested in test_engine.py
        batch = sample_rollouts(policy, problems, group_size=2, max_new_tokens=6, seed=0, engine="hf")
    finally:
        hook.remove()
    assert batch.completion_mask.sum(1).tolist() == [1] * 6
    assert (batch.completion_ids[:, 0] == eos).all() and not batch.truncated.any()


def test_privileged_context_carries_the_verdict_and_keeps_the_question():
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2 + 2?"}]
    verdict = Verdict(reward=0.0, passed=False, feedback="The expected answer is 4. Your final answer 5 is wrong.")
    messages = privileged_messages(prompt, verdict)
    assert messages[0] == prompt[0] and prompt[1]["content"] == "What is 2 + 2?"  # input not mutated
    assert messages[1]["content"].startswith("What is 2 + 2?")
    assert messages[1]["content"].endswith("The expected answer is 4. Your final answer 5 is wrong.]")


@pytest.mark.parametrize("engine", ENGINES)
def test_teacher_pass_reads_the_same_completion_tokens_with_another_context(policy, problems, engine):
    task = get_task("arithmetic")
    batch = sample_rollouts(policy, problems, group_size=3, max_new_tokens=8, seed=1)
    verdicts = [task.verify(p, t) for p, t in zip(batch.problems, batch.texts)]
    out = teacher_pass(policy, batch, verdicts, micro_batch_size=4, engine=engine)
    assert out.logprobs.shape == batch.logprobs.shape
    assert (out.logprobs[batch.completion_mask == 0] == 0).all()
    # by hand, row by row: privileged prompt + the same completion, teacher forced, nothing shared
    for row in range(len(batch)):
        ids, _ = encode_prompts(policy.tokenizer, [privileged_messages(batch.problems[row].prompt, verdicts[row])],
                                policy.device)
        n = int(batch.completion_mask[row].sum())
        with torch.no_grad():
            logits = policy.model(input_ids=torch.cat([ids, batch.completion_ids[row:row + 1, :n]], 1)).logits[0]
        expected = torch.log_softmax(logits[ids.shape[1] - 1:-1], -1).gather(
            -1, batch.completion_ids[row, :n, None])[:, 0]
        torch.testing.assert_close(out.logprobs[row, :n], expected, atol=1e-4, rtol=0)
    n = int(batch.completion_mask[0].sum())
    assert not torch.allclose(out.logprobs[0, :n], batch.logprobs[0, :n], atol=1e-4)  # the context matters


def test_divergence_critic_hand_computed():
    cfg = make_config("smoke", method="scpo-divergence", **{"scpo.weight": 0.5, "scpo.clip": 1.0})
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch = RolloutBatch(prompt_ids=None, prompt_mask=None, completion_ids=None, completion_mask=mask,
                         logprobs=torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]]), texts=[], problems=[],
                         group_ids=torch.tensor([0, 0]), truncated=None, group_size=2,
                         verdicts=[Verdict(1.0, True, ""), Verdict(0.0, False, "")])

    class Teacher:
        logprobs = torch.tensor([[-0.5, -4.0, -0.5], [-3.0, -0.9, 0.0]])

    adv, stats = _pair(DivergenceCritic(cfg).advantages(batch, torch.tensor([0.7, -0.7]), Teacher()))
    # d = [[0.5, -2.0, 0], [-2.0, 0.1, (masked)]]; clip to [-1, 1]; A + 0.5 * clip(d)
    expected = torch.tensor([[0.7 + 0.25, 0.7 - 0.5, 0.7], [-0.7 - 0.5, -0.7 + 0.05, -0.7]])
    torch.testing.assert_close(adv[:, :2], expected[:, :2])
    assert adv[0, 2] == pytest.approx(0.7)
    assert stats["scpo/clipped_frac"] == pytest.approx(2 / 5)
    assert stats["scpo/log_ratio_mean"] == pytest.approx((0.5 - 2.0 + 0 - 2.0 + 0.1) / 5)


def _critic_batch(logprobs, mask, passed, group_size, completion_ids=None):
    return RolloutBatch(prompt_ids=None, prompt_mask=None, completion_ids=completion_ids, completion_mask=mask,
                        logprobs=logprobs, texts=[], problems=[], group_ids=None, truncated=None,
                        group_size=group_size, verdicts=[Verdict(float(p), p, "") for p in passed])


class _Teacher:
    def __init__(self, logprobs):
        self.logprobs = logprobs


def test_group_centering_span_aggregation_and_rescue_hand_computed():
    """Two groups of two, all-fail: GRPO gives 0 everywhere; the centred, span-averaged signal rescues both."""
    cfg = make_config("smoke", method="scpo-divergence", **{"scpo.weight": 1.0, "scpo.clip": 10.0,
                                                            "scpo.center": "group", "scpo.aggregation": "span",
                                                            "scpo.span_tokens": 2})
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    student = torch.zeros(4, 3)
    teacher = torch.tensor([[1.0, 3.0, 2.0], [-1.0, -3.0, 9.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) * mask
    adv, stats = _pair(DivergenceCritic(cfg).advantages(_critic_batch(student, mask, [False] * 4, 2), torch.zeros(4),
                                                  _Teacher(teacher)))
    # group 0: dbar = [2, -2] -> baseline 0; spans {0,1},{2}: row 0 -> [2, 2, 2], row 1 -> [-2, -2]
    # group 1: dbar = [0, 0] -> nothing to rescue
    expected = torch.tensor([[2.0, 2.0, 2.0], [-2.0, -2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    # every group is zero-std, so all of the batch's within-group spread is there: rollout means +-2 in group 0
    assert stats["scpo/zero_std_spread"] == 1.0 and stats["scpo/zero_std_adv_std"] == pytest.approx(1.0)


def test_centering_removes_a_shift_common_to_the_group():
    cfg = make_config("smoke", method="scpo-divergence", **{"scpo.center": "group", "scpo.aggregation": "sequence"})
    mask = torch.ones(2, 2, dtype=torch.long)
    teacher = torch.tensor([[-0.3, -0.3], [-0.3, -0.3]])  # the teacher likes both rollouts equally less
    adv, _ = _pair(DivergenceCritic(cfg).advantages(_critic_batch(torch.zeros(2, 2), mask, [False, False], 2),
                                              torch.zeros(2), _Teacher(teacher)))
    assert torch.equal(adv, torch.zeros(2, 2))  # uncentred it would push both down: reverse-KL distillation


def test_rlsd_grounding_keeps_the_verifier_sign_and_never_acts_on_zero_advantage():
    cfg = make_config("smoke", method="scpo-divergence", **{"scpo.grounding": "rlsd", "scpo.weight": 0.5,
                                                            "scpo.clip": 1.0})
    mask = torch.ones(3, 2, dtype=torch.long)
    d = torch.tensor([[0.4, -3.0], [0.4, -3.0], [2.0, -2.0]])
    adv, stats = _pair(DivergenceCritic(cfg).advantages(_critic_batch(torch.zeros(3, 2), mask, [True, False, False], 3),
                                                  torch.tensor([1.0, -0.5, 0.0]), _Teacher(d)))
    # s = clip(d, -1, 1) = [[0.4, -1], [0.4, -1], [1, -1]]; A exp(sign(A) * 0.5 * s)
    expected = torch.tensor([[math.exp(0.2), math.exp(-0.5)], [-0.5 * math.exp(-0.2), -0.5 * math.exp(0.5)],
                             [0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    assert (torch.sign(adv[:2]) == torch.sign(torch.tensor([[1.0], [-1.0]]))).all()


def test_line_aggregation_uses_newline_tokens(policy):
    tok = policy.tokenizer
    ids = tok("a\nb c\nd", add_special_tokens=False)["input_ids"]
    ends = ["\n" in tok.decode([i]) for i in ids]
    assert sum(ends) == 2
    cfg = make_config("smoke", method="scpo-divergence", **{"scpo.aggregation": "line", "scpo.clip": 100.0,
                                                            "scpo.weight": 1.0})
    n = len(ids)
    teacher = torch.arange(n, dtype=torch.float32)[None].repeat(2, 1)
    batch = _critic_batch(torch.zeros(2, n), torch.ones(2, n, dtype=torch.long), [True, False], 2,
                          completion_ids=torch.tensor([ids, ids]))
    adv, _ = _pair(DivergenceCritic(cfg, tok).advantages(batch, torch.zeros(2), _Teacher(teacher)))
    line = torch.tensor(ends).long().cumsum(0) - torch.tensor(ends).long()
    for unit in line.unique():  # every token of a line carries the mean of that line
        assert torch.allclose(adv[0, line == unit], teacher[0, line == unit].mean().expand(int((line == unit).sum())))
    with pytest.raises(ValueError, match="scpo.aggregation: 'line' needs the tokenizer"):
        DivergenceCritic(cfg).advantages(batch, torch.zeros(2), _Teacher(teacher))


def test_divergences_hand_computed():
    from scpo_lab.objective import divergence
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    rkl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    fkl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    m = [0.25 * 0.5 + 0.75 * 0.9, 0.25 * 0.5 + 0.75 * 0.1]  # alpha = 0.25
    jsd = 0.25 * sum(a * math.log(a / b) for a, b in zip([0.5, 0.5], m)) + \
        0.75 * sum(a * math.log(a / b) for a, b in zip([0.9, 0.1], m))
    assert divergence(p.log(), q.log(), "reverse-kl").item() == pytest.approx(rkl, abs=1e-6)
    assert divergence(p.log(), q.log(), "forward-kl").item() == pytest.approx(fkl, abs=1e-6)
    assert divergence(p.log(), q.log(), "jsd", 0.25).item() == pytest.approx(jsd, abs=1e-6)
    assert divergence(p.log(), p.log(), "jsd").item() == pytest.approx(0.0, abs=1e-7)


def test_tail_bucket_holds_the_missing_mass():
    from scpo_lab.objective import with_tail
    out = with_tail(torch.tensor([[math.log(0.5), math.log(0.3)]]))
    torch.testing.assert_close(out.exp(), torch.tensor([[0.5, 0.3, 0.2]]))


@pytest.mark.parametrize("engine", ENGINES)
def test_teacher_pass_distributions_match_a_direct_forward(policy, problems, engine):
    from scpo_lab.teacher import student_messages
    batch = sample_rollouts(policy, problems, group_size=2, max_new_tokens=6, seed=4)
    verdicts = [Verdict(0.0, False, "The expected answer is 3. Your final answer 4 is wrong.")] * len(batch)
    student = teacher_pass(policy, batch, verdicts, context=student_messages, top_k=4, micro_batch_size=3,
                           engine=engine)
    teacher = teacher_pass(policy, batch, verdicts, support_ids=student.dist_ids, micro_batch_size=3, engine=engine)
    # the student context reproduces the sampler's log-probs; both sides checked against a plain forward, row by row
    torch.testing.assert_close(student.logprobs, batch.logprobs, atol=1e-4, rtol=0)
    for row in range(len(batch)):
        n = int(batch.completion_mask[row].sum())
        for messages, out in ((student_messages(batch.problems[row].prompt, None), student),
                              (privileged_messages(batch.problems[row].prompt, verdicts[row]), teacher)):
            ids, _ = encode_prompts(policy.tokenizer, [messages], policy.device)
            with torch.no_grad():
                logits = policy.model(input_ids=torch.cat([ids, batch.completion_ids[row:row + 1, :n]], 1)).logits[0]
            full = torch.log_softmax(logits[ids.shape[1] - 1:-1], -1)  # [n, V]
            if out is student:
                values, order = full.topk(4, -1)
                assert torch.equal(student.dist_ids[row, :n], order)
                torch.testing.assert_close(student.dist_logprobs[row, :n], values, atol=1e-4, rtol=0)
            else:
                torch.testing.assert_close(teacher.dist_logprobs[row, :n],
                                           full.gather(-1, student.dist_ids[row, :n]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_teacher_hidden_states_agree_between_engines(policy, problems, layer):
    """hidden_layer=i is HF's hidden_states[i] (the input of layer i; the last index is the normed output)."""
    batch = sample_rollouts(policy, problems, group_size=2, max_new_tokens=6, seed=5)
    verdicts = [Verdict(0.0, False, "Your final answer 4 is wrong.")] * len(batch)
    static, hf = (teacher_pass(policy, batch, verdicts, micro_batch_size=2, hidden_layer=layer, engine=e)
                  for e in ENGINES)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(static.hidden[mask], hf.hidden[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(static.logprobs, hf.logprobs, atol=1e-4, rtol=0)
    assert static.tokens_read == hf.tokens_read


def test_static_teacher_refuses_an_unsupported_model(problems):
    policy = tiny_policy(seed=0)
    batch = sample_rollouts(policy, problems, group_size=2, max_new_tokens=4, seed=0)
    policy.model.config.model_type = "gpt2"  # what engine.supports reads
    with pytest.raises(ValueError, match="engine: 'static'"):
        teacher_pass(policy, batch, [Verdict(0.0, False, "wrong")] * len(batch), engine="static")
    out = teacher_pass(policy, batch, [Verdict(0.0, False, "wrong")] * len(batch), engine="auto")  # falls back
    assert out.logprobs.shape == batch.logprobs.shape


def test_distill_loss_hand_computed_and_gradient_reaches_the_student_only():
    from scpo_lab.objective import distill_loss
    student = torch.log(torch.tensor([[[0.5, 0.3]], [[0.1, 0.1]]])).requires_grad_()  # tails 0.2 and 0.8
    teacher = torch.log(torch.tensor([[[0.6, 0.2]], [[0.1, 0.1]]])).requires_grad_()
    mask = torch.tensor([[1], [0]])
    loss, per_token = distill_loss(student, teacher, mask, alpha=1.0, token_clip=0.0, n_tokens=4.0)
    rkl = 0.5 * math.log(0.5 / 0.6) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.2)  # KL(p || q), 3 buckets
    assert loss.item() == pytest.approx(rkl / 4, abs=1e-6) and per_token[1, 0] == 0
    fkl = 0.6 * math.log(0.6 / 0.5) + 0.2 * math.log(0.2 / 0.3)
    assert distill_loss(student, teacher, mask, 0.0, 0.0, 1.0)[0].item() == pytest.approx(fkl, abs=1e-6)
    clipped = 0.5 * math.log(0.5 / 0.6) + 0.01 + 0.0  # point-wise (OPSD): each bucket's term capped at 0.01
    assert distill_loss(student, teacher, mask, 1.0, 0.01, 1.0)[0].item() == pytest.approx(clipped, abs=1e-6)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def _verdict(passed):
    return Verdict(float(passed), passed, "The expected answer is 5. " + ("Correct." if passed else "Wrong."))


def test_sdpo_contexts_use_a_passing_sibling_never_the_rollout_itself():
    from scpo_lab.critics.selfdistill import SdpoCritic
    problem = get_task("arithmetic").problems("train", n=1, seed=0)[0]
    passed = [True, False, True, False, False, False]  # group 0 (rows 0-2): two successes; group 1: none
    batch = RolloutBatch(prompt_ids=None, prompt_mask=None, completion_ids=None, completion_mask=None,
                         logprobs=None, texts=[f"attempt {i}" for i in range(6)], problems=[problem] * 6,
                         group_ids=None, truncated=None, group_size=3, verdicts=[_verdict(p) for p in passed])
    messages, has_teacher, stats = SdpoCritic(make_config("smoke", method="sdpo")).contexts(batch)
    text = [m[-1]["content"] for m in messages]
    assert "Correct solution:\nattempt 2" in text[0]  # the other success, not itself
    assert "Correct solution:\nattempt 0" in text[1] and "Correct solution:\nattempt 0" in text[2]
    for i in (3, 4, 5):  # no success in the group: the failed attempt's own feedback
        assert "feedback from your unsuccessful earlier attempt" in text[i] and "Wrong." in text[i]
    assert has_teacher.all() and stats["distill/sibling_frac"] == 0.5
    lone = RolloutBatch(prompt_ids=None, prompt_mask=None, completion_ids=None, completion_mask=None, logprobs=None,
                        texts=["a", "b"], problems=[problem] * 2, group_ids=None, truncated=None, group_size=2,
                        verdicts=[_verdict(True), _verdict(False)])
    messages, has_teacher, _ = SdpoCritic(make_config("smoke", method="sdpo")).contexts(lone)
    assert has_teacher.tolist() == [False, True]  # a lone success has nothing to learn from
    assert messages[0] == problem.prompt and "Correct solution:\na" in messages[1][-1]["content"]


def test_opsd_reference_solutions():
    from scpo_lab.critics.selfdistill import reference_solution
    arithmetic = get_task("arithmetic").problems("train", n=1, seed=0)[0]
    assert reference_solution(arithmetic) == f"{arithmetic.meta['expression']} = {arithmetic.answer}"
    gsm = get_task("gsm8k").problems("train", n=1, seed=0)[0]
    assert reference_solution(gsm) == gsm.meta["solution"] and "####" in gsm.meta["solution"]


def test_ema_teacher_moves_as_specified_and_the_live_weights_come_back(policy, problems):
    from scpo_lab.critics.selfdistill import SdpoCritic
    cfg = make_config("smoke", method="sdpo", **{"distill.ema_rate": 0.25})
    critic = SdpoCritic(cfg)
    lora = {n: p for n, p in policy.model.named_parameters() if p.requires_grad}
    name = next(iter(lora))
    start = lora[name].detach().clone()
    critic.after_update(policy)  # first call: the EMA starts at the current weights
    with torch.no_grad():
        lora[name].add_(1.0)
    critic.after_update(policy)  # theta_T <- 0.75 theta_T + 0.25 theta
    torch.testing.assert_close(critic.ema[name], start + 0.25)
    live = lora[name].detach().clone()
    with critic.teacher_weights(policy):
        torch.testing.assert_close(lora[name].detach(), start + 0.25)  # the pass runs the EMA weights
    torch.testing.assert_close(lora[name].detach(), live)  # and the live ones are back
    with torch.no_grad():
        lora[name].sub_(1.0)


def test_ema_teacher_under_bf16_runs_the_ema_weights_not_autocasts_stale_copy(policy, problems):
    """Inside one bf16 region a forward before the swap caches autocast's bf16 copies of the live LoRA weights
    (keyed by tensor, not by value): the EMA teacher's pass must still run the EMA values (the swap clears the
    cache), and the forward after it the live ones again."""
    from scpo_lab import precision
    from scpo_lab.critics.selfdistill import SdpoCritic
    from scpo_lab.objective import completion_logprobs
    from scpo_lab.rollout import encode_prompts

    critic = SdpoCritic(make_config("smoke", method="sdpo", **{"distill.ema_rate": 0.25}))
    lora = {n: p for n, p in policy.model.named_parameters() if p.requires_grad}
    ids, mask = encode_prompts(policy.tokenizer, [p.prompt for p in problems], policy.device)
    completion = torch.randint(3, 50, (ids.shape[0], 4))

    def logp():
        return completion_logprobs(policy.model, ids, mask, completion, torch.ones_like(completion))[0]

    critic.after_update(policy)  # the EMA starts at the current weights, then the live weights move away
    live = {n: p.detach().clone() for n, p in lora.items()}
    with torch.no_grad():
        for p in lora.values():
            p.add_(0.5)
    try:
        with precision.activate("bf16"):
            with torch.no_grad():
                before = logp()  # requires-grad leaves: autocast caches their bf16 copies here
            with torch.no_grad(), critic.teacher_weights(policy):
                teacher = logp()
            with torch.no_grad():
                after = logp()
        with critic.teacher_weights(policy), precision.activate("bf16"), torch.no_grad():
            fresh_teacher = logp()  # a region that starts with the EMA values: nothing cached before
    finally:
        with torch.no_grad():
            for n, p in lora.items():
                p.copy_(live[n])
    assert not torch.equal(teacher, before)
    assert torch.equal(teacher, fresh_teacher) and torch.equal(after, before)


def test_pairwise_rank_reward_hand_computed():
    from scpo_lab.critics.divergence import pairwise_rank_reward
    log_ratio = torch.tensor([[0.5, 0.5], [0.0, 0.0], [-1.0, 0.0], [2.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0]])
    r = pairwise_rank_reward(log_ratio, mask, group_size=2, beta=0.5)
    # group 0: R = [0.5, 0]; group 1: R = [-0.5, 1.0] (masked 9.0 ignored)
    s = lambda x: 1 / (1 + math.exp(-x))
    expected = [s(0.5) - 0.5, s(-0.5) - 0.5, s(-1.5) - 0.5, s(1.5) - 0.5]
    assert r.tolist() == pytest.approx(expected, abs=1e-6)
    assert r.view(2, 2).sum(1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # zero-sum within a group


def test_probe_signal_starts_at_zero_learns_the_outcome_and_resumes(policy, problems):
    cfg = make_config("smoke", method="scpo-divergence", **{"scpo.signal": "probe", "scpo.probe_lr": 0.05,
                                                            "scpo.probe_depth": 0.5})
    batch = sample_rollouts(policy, problems, group_size=2, max_new_tokens=6, seed=1)
    batch.verdicts = [Verdict(float(i % 2), bool(i % 2), "The expected answer is 3.") for i in range(len(batch))]
    critic = DivergenceCritic(cfg, policy.tokenizer)
    teacher = critic.teacher_pass(policy, batch, temperature=1.0, micro_batch_size=4)
    assert teacher.hidden.shape == (*batch.completion_ids.shape, 64)
    first = critic.signal(batch, teacher)
    assert first.abs().max() == 0  # the probe starts at p = 1/2: no signal before it has learned
    losses = []
    for _ in range(30):
        critic.signal(batch, teacher)
        losses.append(critic.last_probe_loss)
    assert losses[-1] < losses[0]
    state = critic.state_dict()
    twin = DivergenceCritic(cfg, policy.tokenizer)
    twin.load_state_dict(state)
    mask = batch.completion_mask.float()
    torch.testing.assert_close(twin.signal(batch, teacher) * mask, critic.signal(batch, teacher) * mask)
