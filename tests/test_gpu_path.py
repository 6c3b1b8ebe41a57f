"""The GPU path's options, tested on CPU: LoRA targets, gradient checkpointing, 4-bit and vLLM switches, the vLLM
rollout engine's conversion (with vLLM-shaped stand-ins: vllm needs CUDA), per-process GPU placement."""

from types import SimpleNamespace

import pytest
import torch

from scpo_lab import vllm_engine
from scpo_lab.config import ConfigError, make_config
from scpo_lab.runs import DEFAULT_EXCLUDE, config_hash


def _hash(config):
    return config_hash(config.to_dict(), DEFAULT_EXCLUDE + config.hash_exclude())


def test_gpu_profile_turns_on_offloaded_checkpointing_and_vllm_when_installed():
    m = make_config("gpu").model
    assert (m.backend, m.gradient_checkpointing, m.fast_inference, m.load_in_4bit) == ("unsloth", "unsloth", "auto",
                                                                                      False)
    assert make_config("gpu", **{"model.load_in_4bit": True}).model.load_in_4bit is True


@pytest.mark.parametrize("change, message", [
    ({"model.load_in_4bit": True}, "model.load_in_4bit: True needs model.backend 'unsloth'"),
    ({"model.gradient_checkpointing": "unsloth"}, "model.gradient_checkpointing: 'unsloth' needs model.backend"),
    ({"model.fast_inference": "on"}, "model.fast_inference: 'on' needs model.backend 'unsloth'"),
    ({"model.gradient_checkpointing": "always"}, "model.gradient_checkpointing: unknown 'always'"),
    ({"model.fast_inference": "yes"}, "model.fast_inference"),
    ({"model.lora_target_modules": []}, "model.lora_target_modules: got []"),
    ({"model.gpu_memory_utilization": 1.5}, "model.gpu_memory_utilization: got 1.5"),
    ({"rollout_engine": "vllm"}, "rollout_engine: 'vllm' needs model.fast_inference"),
])
def test_gpu_options_are_validated_with_one_line_errors(change, message):
    with pytest.raises(ConfigError) as err:
        make_config("cpu", **change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_gpu_model_fields_are_part_of_every_runs_identity():
    """Every model field is hashed (run identity: the common fields and the method's own section). Folders cached
    when the GPU fields were left out of the hash at their defaults are adopted by the old rule (migrate.py)."""
    from scpo_lab.migrate import LEGACY_ABSENT_FIELDS, legacy_exclude

    base = make_config("cpu")
    assert not [k for k in base.hash_exclude() if k.startswith("model.")]
    assert {"model.lora_target_modules", "model.gradient_checkpointing", "model.fast_inference"} <= set(
        legacy_exclude(base))
    record = base.to_dict()
    for name in ("lora_target_modules", "gradient_checkpointing", "load_in_4bit", "fast_inference",
                 "gpu_memory_utilization", "max_seq_length"):
        del record["model"][name]  # a config.json written before these fields existed
    del record["precision"]
    for name in ("dynamic_sampling", "max_sampling_rounds") + LEGACY_ABSENT_FIELDS + (
            "overlong_buffer", "overlong_penalty", "mask_truncated_completions"):  # nor these (issue 19)
        del record[name]
    for name in set(base.sections) - {"scpo", "distill", "value", "judge", "irl"}:  # sections added since
        del record[name]
    assert config_hash(record, DEFAULT_EXCLUDE + ("value", "judge", "irl")) == config_hash(
        base.to_dict(), DEFAULT_EXCLUDE + legacy_exclude(base))  # the old rule still finds such a folder
    assert _hash(make_config("cpu", **{"model.lora_target_modules": ["q_proj", "v_proj"]})) != _hash(base)
    assert _hash(make_config("cpu", **{"model.gradient_checkpointing": "on"})) != _hash(base)


def test_lora_target_modules_reach_the_model():
    from scpo_lab.trainer import policy_for

    policy = policy_for(make_config("smoke", **{"model.lora_target_modules": ["q_proj", "v_proj"]}))
    adapted = {name.split(".")[-1] for name, m in policy.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_gradient_checkpointing_gives_the_same_gradients_with_shared_prompts():
    from scpo_lab.objective import completion_logprobs
    from scpo_lab.rollout import sample_rollouts
    from scpo_lab.tasks import get_task
    from scpo_lab.trainer import policy_for

    grads = []
    for mode in ("off", "on"):
        policy = policy_for(make_config("smoke", **{"model.gradient_checkpointing": mode}))
        with torch.no_grad():  # a non-zero B, so every LoRA weight gets a gradient
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        batch = sample_rollouts(policy, get_task("arithmetic").problems("train", n=2, seed=0), group_size=3,
                                max_new_tokens=5, seed=3)
        policy.model.train()
        assert policy.model.base_model.model.model.gradient_checkpointing is (mode == "on")
        logp, _ = completion_logprobs(policy.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                      batch.completion_mask, group_size=3)
        (logp * batch.completion_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_fast_inference_resolution():
    from scpo_lab.models import resolve_fast_inference

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_fast_inference("on", "unsloth", cpu) is True  # asked for: loading then fails loudly
    assert resolve_fast_inference("off", "unsloth", cuda) is False
    assert resolve_fast_inference("auto", "hf", cuda) is False
    assert resolve_fast_inference("auto", "unsloth", cpu) is False


def _request(*completions):
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=t, finish_reason=f) for t, f in completions])


def test_vllm_outputs_become_right_padded_rows_prompt_by_prompt():
    outputs = [_request(([5, 6, 2], "stop"), ([7], "stop")), _request(([8, 9, 10, 11], "length"), ([], "stop"))]
    ids, mask, truncated = vllm_engine.outputs_to_tensors(outputs, repeats=2, max_new_tokens=4, pad_token_id=0,
                                                          device="cpu")
    assert ids.tolist() == [[5, 6, 2, 0], [7, 0, 0, 0], [8, 9, 10, 11], [0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]
    with pytest.raises(RuntimeError, match="returned 1 completions for prompt 0; expected 2"):
        vllm_engine.outputs_to_tensors([_request(([1], "stop"))], repeats=2, max_new_tokens=4, pad_token_id=0,
                                       device="cpu")


def test_vllm_engine_samples_through_fast_generate_with_the_live_adapter(monkeypatch):
    from scpo_lab.models import tiny_policy
    from scpo_lab.objective import completion_logprobs
    from scpo_lab.rollout import encode_prompts, generate
    from scpo_lab.tasks import get_task

    policy = tiny_policy(seed=0)
    model, tok = policy.model, policy.tokenizer
    calls = []

    def fast_generate(prompts, sampling_params, lora_request, use_tqdm):
        calls.append((prompts, sampling_params, lora_request))
        n = sampling_params["n"]
        return [_request(*[([11 + i, 12 + j, policy.eos_token_ids[0]], "stop") for j in range(n)])
                for i, _ in enumerate(prompts)]

    monkeypatch.setattr(vllm_engine, "_sampling_params", lambda **kw: kw)
    with pytest.raises(RuntimeError, match="rollout_engine: 'vllm' needs a model loaded with model.fast_inference"):
        generate(model, *encode_prompts(tok, [[{"role": "user", "content": "hi"}]], "cpu"), repeats=1,
                 max_new_tokens=4, temperature=1.0, top_p=1.0, eos_token_ids=policy.eos_token_ids,
                 pad_token_id=tok.pad_token_id, engine="vllm")
    model.vllm_engine, model.fast_generate = object(), fast_generate
    model.load_lora = lambda name, load_tensors: ("lora", name, load_tensors)
    problems = get_task("arithmetic").problems("train", n=2, seed=0)
    prompt_ids, prompt_mask = encode_prompts(tok, [p.prompt for p in problems], "cpu")
    kwargs = dict(repeats=3, max_new_tokens=4, temperature=0.7, top_p=0.9, eos_token_ids=policy.eos_token_ids,
                  pad_token_id=tok.pad_token_id, engine="auto")  # auto: the model carries an engine
    ids, mask, logprobs, truncated = generate(model, prompt_ids, prompt_mask,
                                              generator=torch.Generator().manual_seed(5), **kwargs)
    prompts, params, lora = calls[-1]
    assert [p["prompt_token_ids"] for p in prompts] == [ids_[m.bool()].tolist() for ids_, m in
                                                        zip(prompt_ids, prompt_mask)]  # left padding stripped
    assert (params["n"], params["temperature"], params["top_p"], params["max_tokens"]) == (3, 0.7, 0.9, 4)
    assert params["stop_token_ids"] == policy.eos_token_ids and lora == ("lora", vllm_engine.LORA_NAME, True)
    assert ids[:, :2].tolist() == [[11, 12], [11, 13], [11, 14], [12, 12], [12, 13], [12, 14]]
    assert mask.sum().item() == 18 and not truncated.any()
    # the recorded log-probs are the training model's own at the sampling temperature (teacher forcing)
    with torch.no_grad():
        expected, _ = completion_logprobs(model, prompt_ids.repeat_interleave(3, 0), prompt_mask.repeat_interleave(
            3, 0), ids, mask, temperature=0.7, with_entropy=False)
    torch.testing.assert_close(logprobs, expected * mask, atol=1e-5, rtol=1e-5)
    # the same generator state gives the same vLLM seed; the base model (adapter off) gets no LoRA request
    generate(model, prompt_ids, prompt_mask, generator=torch.Generator().manual_seed(5), **kwargs)
    assert calls[-1][1]["seed"] == params["seed"]
    with policy.reference():
        generate(model, prompt_ids, prompt_mask, generator=torch.Generator().manual_seed(5), **kwargs)
    assert calls[-1][2] is None


def test_each_process_gets_its_own_gpu():
    from scpo_lab.distributed import World, local_device

    assert local_device(1, cuda=True) == "cuda:1" and local_device(3, cuda=False) == "cpu"
    assert World().device is None  # one process: load_policy picks the device


def test_parameter_count_unpacks_4bit_weights():
    from scpo_lab.trainer import parameter_count

    model = torch.nn.Linear(4, 8, bias=False)  # 32 weights
    assert parameter_count(model) == 32
    model.weight.quant_state = SimpleNamespace(shape=(64, 32))  # bitsandbytes: packed bytes + the true shape
    assert parameter_count(model) == 64 * 32
