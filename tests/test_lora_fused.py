"""The fused LoRA Linear (scpo_lab.lora_fused): its equations on small tensors, peft's values on a model, the
fallbacks that keep peft's semantics, and that the trainer's update uses it."""

import pytest
import torch

from scpo_lab import lora_fused, precision
from scpo_lab.config import make_config
from scpo_lab.lora_fused import _LoraLinear, fused_lora
from scpo_lab.models import LoraConfig, tiny_policy
from scpo_lab.objective import completion_logprobs
from scpo_lab.rollout import encode_prompts
from scpo_lab.tasks import get_task


def _inputs(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, dtype=dtype, generator=g)
    w = torch.randn(4, 5, dtype=dtype, generator=g)
    b = torch.randn(4, dtype=dtype, generator=g) if bias else None
    a = torch.randn(2, 5, dtype=dtype, generator=g)  # rank 2
    lb = torch.randn(4, 2, dtype=dtype, generator=g)
    return x, w, b, a, lb


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_every_gradient_equal_the_unfused_expression(bias):
    """y = x W^T + b + s (x A^T) B^T and its gradients, against autograd through the plain expression (float64)."""
    x, w, b, a, lb = (t.requires_grad_() if t is not None else None for t in _inputs(bias=bias))
    s = 0.75
    fused = _LoraLinear.apply(x, w, b, a, lb, s, torch.float64)
    plain = x @ w.t() + (0 if b is None else b) + s * (x @ a.t()) @ lb.t()
    torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)
    upstream = torch.randn_like(plain)
    leaves = [t for t in (x, w, b, a, lb) if t is not None]
    got = torch.autograd.grad(fused, leaves, upstream)
    want = torch.autograd.grad(plain, leaves, upstream)
    for g_fused, g_plain in zip(got, want):
        torch.testing.assert_close(g_fused, g_plain, atol=1e-12, rtol=0)
    # by hand for B: dL/dB = s g^T (x A^T), rows flattened
    g2, x2 = upstream.reshape(-1, 4), x.detach().reshape(-1, 5)
    torch.testing.assert_close(got[-1], s * g2.t() @ (x2 @ a.detach().t()), atol=1e-12, rtol=0)


def test_gradcheck():
    x, w, b, a, lb = (t.requires_grad_() for t in _inputs(seed=1))
    assert torch.autograd.gradcheck(lambda *t: _LoraLinear.apply(*t, 0.5, torch.float64), (x, w, b, a, lb))


def test_under_bf16_the_product_is_bf16_and_each_gradient_keeps_its_inputs_dtype():
    """A bf16 frozen weight with fp32 x and fp32 LoRA masters: y in bf16, x's gradient fp32, A's and B's fp32."""
    x, w, b, a, lb = _inputs(dtype=torch.float32)
    x.requires_grad_(), a.requires_grad_(), lb.requires_grad_()
    y = _LoraLinear.apply(x, w.to(torch.bfloat16), None, a, lb, 2.0, torch.bfloat16)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == a.grad.dtype == lb.grad.dtype == torch.float32


@pytest.fixture(scope="module")
def policy():
    p = tiny_policy(seed=5)
    with torch.no_grad():  # B = 0 at init would make the adapter's branch vanish
        for name, param in p.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return p


def _forced(policy):
    problems = get_task("arithmetic").problems("train", n=3, seed=6)
    ids, mask = encode_prompts(policy.tokenizer, [p.prompt for p in problems], policy.device)
    completion = torch.randint(3, 200, (ids.shape[0], 7), generator=torch.Generator().manual_seed(0))
    return ids, mask, completion, torch.ones_like(completion)


def _logp_and_grads(model, args):
    lora = [p for p in model.parameters() if p.requires_grad]
    for p in lora:
        p.grad = None
    logp, entropy = completion_logprobs(model, *args)
    (logp.sum() + 0.1 * entropy.sum()).backward()
    grads = [p.grad.clone() for p in lora]
    for p in lora:
        p.grad = None
    return logp.detach(), grads


def _count_fused_calls(monkeypatch):
    calls = []
    original = _LoraLinear.apply
    monkeypatch.setattr(_LoraLinear, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


def test_fused_model_matches_peft_in_fp32_and_the_forwards_are_restored(policy, monkeypatch):
    model, args = policy.model, _forced(policy)
    calls = _count_fused_calls(monkeypatch)
    plain, plain_grads = _logp_and_grads(model, args)
    assert not calls
    with fused_lora(model):
        fused, fused_grads = _logp_and_grads(model, args)
    n_lora_linears = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    assert len(calls) == n_lora_linears > 0  # every adapted layer ran fused, once (one forward)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    with pytest.raises(RuntimeError, match="inside"):
        with fused_lora(model):
            raise RuntimeError("inside")
    assert not any("forward" in m.__dict__ or "_peft_forward" in m.__dict__ for m in model.modules())


def test_fused_under_bf16_agrees_with_peft_under_bf16_and_both_stay_near_fp32(policy, monkeypatch):
    """Inside the bf16 region (with the update's bf16 copies of the frozen weights) the fused op ran on every
    adapted layer, and its log-probs and LoRA gradients agree with peft's bf16 path to bf16 rounding; both stay
    within the bf16 tolerance of fp32."""
    model, args = policy.model, _forced(policy)
    exact, exact_grads = _logp_and_grads(model, args)
    calls = _count_fused_calls(monkeypatch)
    with precision.activate("bf16"), precision.frozen_linears_in_bf16(model):
        peft_bf16, peft_grads = _logp_and_grads(model, args)
        assert not calls
        with fused_lora(model):
            fused_bf16, fused_grads = _logp_and_grads(model, args)
    assert calls  # the fused op really ran, in bf16
    assert not torch.equal(fused_bf16, exact) and not torch.equal(fused_bf16, peft_bf16)  # bf16, another rounding
    for ours in (peft_bf16, fused_bf16):
        torch.testing.assert_close(ours, exact, atol=0.05, rtol=0)
    torch.testing.assert_close(fused_bf16, peft_bf16, atol=0.05, rtol=0)
    for fused, peft, fp32 in zip(fused_grads, peft_grads, exact_grads):
        scale = float(fp32.norm())
        assert float((fused - fp32).norm()) < 0.1 * scale and float((fused - peft).norm()) < 0.1 * scale


def test_adapters_disabled_or_dropout_on_run_pefts_forward(policy, monkeypatch):
    model, args = policy.model, _forced(policy)
    calls = _count_fused_calls(monkeypatch)
    with torch.no_grad():
        with policy.reference():  # adapters disabled: the base model, through peft's own path
            base, _ = completion_logprobs(model, *args)
            with fused_lora(model):
                base_fused, _ = completion_logprobs(model, *args)
    assert not calls and torch.equal(base, base_fused)

    dropped = tiny_policy(seed=5, lora=LoraConfig(r=4, alpha=8, dropout=0.5))
    dropped.model.train()
    with fused_lora(dropped.model), torch.no_grad():
        completion_logprobs(dropped.model, *args)
    assert not calls  # train-mode dropout: peft's forward (the fused op has no dropout)
    dropped.model.eval()
    with fused_lora(dropped.model), torch.no_grad():
        completion_logprobs(dropped.model, *args)
    assert calls  # eval mode: dropout is the identity, so fused


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)

    def forward(self, x):
        return self.proj(x)


def _peft_net(**lora_options):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_Net(), PeftLoraConfig(r=2, lora_alpha=4, target_modules=["proj"], **lora_options))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                param.normal_(0, 0.5)
    return model


def _second_adapter(model):
    from peft import LoraConfig as PeftLoraConfig

    model.add_adapter("second", PeftLoraConfig(r=2, lora_alpha=4, target_modules=["proj"]))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["second"].weight.normal_(0, 0.5)
    layer.set_adapter(["default", "second"])


def _merged(model):
    model.base_model.model.proj.merge()


def _hooked(model):
    model.base_model.model.proj.base_layer.register_forward_hook(lambda module, inputs, output: output * 2)


def _bf16_base(model):
    model.base_model.model.proj.base_layer.to(torch.bfloat16)


@pytest.mark.parametrize("options, change", [
    ({}, None),
    ({"use_dora": True}, None),
    ({"lora_bias": True}, None),
    ({}, _second_adapter),
    ({}, _merged),
    ({}, _hooked),
    ({}, _bf16_base),
], ids=["eligible", "dora", "lora-bias", "two-adapters", "merged", "hooked", "bf16-base-fp32-adapter"])
def test_peft_configurations_the_fused_op_does_not_cover_run_pefts_forward(options, change, monkeypatch):
    """Every case gives peft's output (and its input gradient); only the plain one runs the fused op."""
    model = _peft_net(**options)
    if change is not None:
        change(model)
    x = torch.randn(3, 6, dtype=model.base_model.model.proj.get_base_layer().weight.dtype, requires_grad=True)
    want = model(x)
    want_grad, = torch.autograd.grad(want.float().sum(), x)
    calls = _count_fused_calls(monkeypatch)
    with fused_lora(model):
        got = model(x)
        got_grad, = torch.autograd.grad(got.float().sum(), x)
    assert bool(calls) == (change is None and not options)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-5, rtol=1e-5)


def test_the_trainers_update_runs_the_fused_op_and_the_switch_turns_it_off(tmp_path, monkeypatch):
    from scpo_lab.trainer import policy_for, train

    calls = _count_fused_calls(monkeypatch)
    cfg = make_config("smoke", method="random-reward", steps=1, runs_dir=str(tmp_path / "a"))
    train(cfg, policy_for(cfg), progress=False)
    assert calls
    calls.clear()
    monkeypatch.setattr(lora_fused, "ENABLED", False)
    cfg = make_config("smoke", method="random-reward", steps=1, runs_dir=str(tmp_path / "b"))
    train(cfg, policy_for(cfg), progress=False)
    assert not calls
