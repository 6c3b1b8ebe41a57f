"""The static-cache rollout engine: exactness against the HF forward, EOS + compaction, sampling distribution."""

import math

import pytest
import torch

from scpo_lab import engine
from scpo_lab.models import tiny_policy
from scpo_lab.objective import completion_logprobs
from scpo_lab.rollout import encode_prompts, generate, sample_rollouts
from scpo_lab.tasks import get_task


@pytest.fixture(scope="module")
def policy():
    p = tiny_policy(seed=1)
    with torch.no_grad():  # a non-zero LoRA delta, so the merge W + (alpha/r) B A is exercised
        for name, param in p.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return p


@pytest.fixture(scope="module")
def prompts(policy):
    problems = get_task("arithmetic").problems("train", n=4, seed=2)
    return encode_prompts(policy.tokenizer, [p.prompt for p in problems], policy.device)


def _greedy(policy, prompts, engine_name, eos, repeats=1, max_new_tokens=14, model=None, temperature=0.0):
    ids, mask = prompts
    return generate(model or policy.model, ids, mask, repeats=repeats, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=1.0, eos_token_ids=eos, pad_token_id=policy.tokenizer.pad_token_id,
                    generator=torch.Generator().manual_seed(7), engine=engine_name)


def _assert_same_draws(a, b, max_flips: int = 2):
    """Two decodes with the same seed, a = b = (tokens, mask, logps, truncated): the same tokens row by row, except
    where a draw lands within rounding of a CDF boundary. The two sides' logits differ in the last bits (other kernels,
    another batch size), and the 49k-entry cumulative sum turns that into differences at entry k, so a uniform falling
    between the two sums picks k on one side and k + 1 on the other. Measured (300 seeds of this fixture, static vs HF
    engine): 13 and 15 rows flipped in ~50,000 draws under the AVX512 and AVX2 kernels (~3e-4 per draw, ~5 % of runs
    of one 168-draw comparison), every one between neighbouring ids. That holds because this random model's
    distribution is near-uniform (every entry ~2e-5, far above the sums' rounding); on a peaked one a flip could skip
    entries whose probability is below that rounding, so the rule is for such fixtures. After a flip the row's
    contexts differ, so it is compared up to the flip. A real defect (a draw that depends on which rows are active,
    another context, a stale cache row) changes tokens to unrelated ids, or in many rows, and fails; more than
    `max_flips` rows (P ~ 2e-5 by chance) fails too."""
    (a_ids, a_mask, a_logps, a_trunc), (b_ids, b_mask, b_logps, b_trunc) = a, b
    flips = []
    for row in range(a_ids.shape[0]):
        la, lb = int(a_mask[row].sum()), int(b_mask[row].sum())
        differ = [t for t in range(min(la, lb)) if int(a_ids[row, t]) != int(b_ids[row, t])]
        n = differ[0] if differ else la
        if differ:
            t = differ[0]
            assert abs(int(a_ids[row, t]) - int(b_ids[row, t])) == 1, f"row {row} step {t}: not a CDF-boundary flip"
            flips.append((row, t))
        else:
            assert la == lb and bool(a_trunc[row]) == bool(b_trunc[row]), f"row {row}: same tokens, other stop"
        torch.testing.assert_close(a_logps[row, :n], b_logps[row, :n], atol=1e-5, rtol=0)
        assert (a_logps[row, la:] == 0).all() and (b_logps[row, lb:] == 0).all()
    assert len(flips) <= max_flips, f"{len(flips)} rows flipped at a CDF boundary ({flips}): more than rounding explains"


def _first_stops(free: torch.Tensor, n: int = 3) -> list[int]:
    """n tokens whose first occurrence ends rows at different steps (the earliest-first tokens of a few rows)."""
    stops: list[int] = []
    for row in range(0, free.shape[0], max(1, free.shape[0] // n)):
        seen = [int(x) for x in free[row]]
        late = [x for x in seen[free.shape[1] // 3:] if x not in seen[:free.shape[1] // 3] and x not in stops]
        if late:
            stops.append(late[0])
    return stops[:n]


def test_rows_stop_at_their_first_eos_through_compaction(policy, prompts):
    """Sampled rows, with 'EOS' tokens chosen so rows stop at different steps: each row must equal the unrestricted
    run (same seed) cut after its first EOS, although the batch is compacted (cache rows copied) along the way.
    The HF engine, which drops rows every step, gives the same tokens: draws are per row, not per active set."""
    free = _greedy(policy, prompts, "static", eos=[], repeats=3, temperature=1.0)
    stops = _first_stops(free[0])
    ours = _greedy(policy, prompts, "static", eos=stops, repeats=3, temperature=1.0)
    ref = _greedy(policy, prompts, "hf", eos=stops, repeats=3, temperature=1.0)
    lengths = ours[1].sum(1)
    assert lengths.min() < lengths.max(), "the chosen EOS tokens should end rows at different steps"
    # the unrestricted run cut after each row's first EOS: what a correct compaction must reproduce
    cut_mask, cut_trunc = torch.zeros_like(free[1]), torch.ones_like(free[3])
    for row in range(free[0].shape[0]):
        hits = [t for t in range(free[0].shape[1]) if int(free[0][row, t]) in stops]
        cut_mask[row, :hits[0] + 1 if hits else free[0].shape[1]] = 1
        cut_trunc[row] = not hits
    _assert_same_draws(ours, (free[0], cut_mask, free[2] * cut_mask, cut_trunc))
    _assert_same_draws(ours, ref)


def test_every_row_stopping_at_once_ends_the_loop(policy, prompts):
    vocab = policy.model.get_output_embeddings().weight.shape[0]
    ours, mask, _, truncated = _greedy(policy, prompts, "static", eos=list(range(vocab)), repeats=2)
    assert ours.shape[1] == 1 and mask.sum().item() == 8 and not truncated.any()


def test_adapter_disabled_means_base_weights(policy, prompts):
    """The engine reads the adapter state when it snapshots: under policy.reference() it decodes the base model."""
    on, _, on_logps, _ = _greedy(policy, prompts, "static", eos=[], temperature=1.0)
    with policy.reference():
        off = _greedy(policy, prompts, "static", eos=[], temperature=1.0)
        ref = _greedy(policy, prompts, "hf", eos=[], temperature=1.0)
    assert not torch.allclose(on_logps, off[2], atol=1e-3)
    assert not torch.equal(on, off[0])
    _assert_same_draws(off, ref)


def test_qwen2_shapes_with_qkv_bias_match_hf_generate(policy, prompts):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = policy.tokenizer
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # HF initialises biases to zero; make them matter
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    assert engine.supports(model)
    ids, mask = prompts
    ours, ours_mask, _, _ = _greedy(policy, prompts, "static", eos=[], max_new_tokens=10, model=model)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    assert ours.tolist() == ref.tolist()


def test_unsupported_architecture_falls_back_to_hf_and_static_says_why(policy, prompts):
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(policy.tokenizer), n_embd=32, n_layer=1, n_head=2)).eval()
    assert not engine.supports(model)
    out, mask, _, _ = _greedy(policy, prompts, "auto", eos=[], max_new_tokens=3, model=model)
    assert mask.sum().item() == 12
    with pytest.raises(ValueError, match="engine: 'static' supports model types llama"):
        _greedy(policy, prompts, "static", eos=[], max_new_tokens=3, model=model)
    with pytest.raises(ValueError, match="engine: unknown 'sglang'; allowed: auto, static, hf, vllm"):
        _greedy(policy, prompts, "sglang", eos=[], max_new_tokens=3, model=model)


def test_sample_token_draws_from_the_temperature_scaled_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -math.inf]]).repeat(40000, 1)
    gen = torch.Generator().manual_seed(0)
    token, logp = engine.sample_token(logits, 0.7, 1.0, gen)
    expected = torch.softmax(logits[0] / 0.7, -1)
    freq = torch.bincount(token, minlength=5).float() / len(token)
    # 40k draws: the standard error of each frequency is below 0.0025; 5 sigma
    assert (freq - expected).abs().max() < 0.0125 and freq[4] == 0
    torch.testing.assert_close(logp, torch.log_softmax(logits / 0.7, -1).gather(-1, token[:, None]).squeeze(-1))


def test_top_p_keeps_the_smallest_nucleus_and_logprob_stays_untruncated():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    token, logp = engine.sample_token(logits, 1.0, 0.7, torch.Generator().manual_seed(1))
    assert set(token.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    freq0 = (token == 0).float().mean().item()
    assert abs(freq0 - 0.5 / 0.8) < 0.02  # renormalised within the nucleus
    torch.testing.assert_close(logp.exp(), torch.tensor([0.5, 0.3])[token])  # pi_T, not the truncated one


def test_greedy_logprob_is_the_argmax_log_softmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, -2.0, 5.5]])
    token, logp = engine.sample_token(logits, 0.0, 1.0, None)
    assert token.tolist() == [1, 2]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[[0, 1], [1, 2]])


@pytest.fixture(scope="module")
def embedded_policy():
    from scpo_lab.models import load_policy
    return load_policy("embedded", backend="hf")


@pytest.mark.slow
def test_embedded_model_static_engine_matches_hf(embedded_policy):
    problems = get_task("arithmetic").problems("test", n=4, seed=0)
    ids, mask = encode_prompts(embedded_policy.tokenizer, [p.prompt for p in problems], embedded_policy.device)
    eos = embedded_policy.eos_token_ids
    kwargs = dict(repeats=1, max_new_tokens=24, temperature=0, top_p=1.0, eos_token_ids=eos,
                  pad_token_id=embedded_policy.tokenizer.pad_token_id)
    ours, mask_s, _, _ = generate(embedded_policy.model, ids, mask, engine="static", **kwargs)
    ref, mask_h, _, _ = generate(embedded_policy.model, ids, mask, engine="hf", **kwargs)
    assert torch.equal(ours * mask_s, ref * mask_h)
    batch = sample_rollouts(embedded_policy, problems, group_size=4, max_new_tokens=24, seed=0, engine="static")
    with torch.no_grad():
        forced, _ = completion_logprobs(embedded_policy.model, batch.prompt_ids, batch.prompt_mask,
                                        batch.completion_ids, batch.completion_mask, temperature=1.0)
    torch.testing.assert_close(forced, batch.logprobs, atol=1e-4, rtol=0)


def test_onednn_and_plain_linear_paths_agree(policy, prompts, monkeypatch):
    """The packed-weight products change only the summation order: same samples, log-probs within 1e-5."""
    runs = {}
    for flag in (True, False):
        monkeypatch.setattr(engine, "USE_ONEDNN", flag)
        runs[flag] = _greedy(policy, prompts, "static", eos=[], repeats=2, temperature=1.0)
    _assert_same_draws(runs[True], runs[False])
    assert not engine.snapshot(policy.model).lm_head.packed
    monkeypatch.setattr(engine, "USE_ONEDNN", True)
    assert engine.snapshot(policy.model).lm_head.packed == torch.backends.mkldnn.is_available()
