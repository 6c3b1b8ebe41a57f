"""One autograd op per LoRA Linear on CPU: y = x W^T + b + s (x A^T) B^T, for the update's forward and backward.

peft computes a LoRA Linear as `base(x) + lora_B(lora_A(dropout(x))) * scaling`, which on CPU costs, beyond the
matrix products, a cast of x per branch under bf16 autocast (two copies of the activations), a multiply by s and
an add over the [tokens, d_out] output, and in the backward the mirror of each (the scaling's multiply, the two
casts back, the sum of the two input gradients). At the update's shape (704 tokens, 210 adapted layers of the
embedded model) removing them saved a few percent of a micro-batch in both precisions (benchmarks/README.md,
"Precision on an AMX host, second session"). `fused_lora(model)` routes every eligible LoRA Linear
through `_LoraLinear` instead, which computes the same function with the same matrix products and no elementwise
pass over the activations beyond one cast of x and one of its gradient:

    forward:   u  = x A^T                       [N, r]
               y  = x W^T + b,  y += s u B^T     (addmm with beta = 1: accumulated inside the product)
    backward:  g_u = s g B                      [N, r]
               dB  = s g^T u,   dA = g_u^T x,   db = sum_rows g
               dx  = g W,  dx += g_u A          (addmm again)

It computes in the dtype peft's path would: bf16 inside a CPU bf16 autocast region (scpo_lab.precision), else the
weights' dtype; returns y in that dtype and every gradient in its input's dtype (the LoRA masters' fp32). It
differs from peft's result by rounding only: in fp32 ~1e-6 relative; in bf16 the output is rounded twice (x W^T
+ b, then the sum with s u B^T, accumulated in the product's fp32 accumulator) where peft rounds it four times
(x W^T, u B^T, s u B^T, the sum). Tests: tests/test_lora_fused.py.

Eligible (checked at every call, so `policy.reference()` and other adapter toggles keep peft's semantics): a peft
`lora.Linear` itself (not a subclass) on CPU over an nn.Linear base, one active adapter, no DoRA or other
variant, no lora_bias, no fan_in_fan_out, no forward hooks on the layer or its parts, dropout off (p = 0, the
lab's default, or eval mode), adapters enabled and not merged, no `adapter_names` argument, and outside autocast
the base and adapter weights in one dtype. Anything else runs peft's own forward. `ENABLED = False` (module
switch) turns the context into a no-op, for benchmarks.
"""

from __future__ import annotations

import contextlib
import types

import torch

ENABLED = True  # module switch: benchmarks time both paths


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T in `dtype`; see the module doc for the equations."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dtype: torch.dtype):
        with torch.autocast("cpu", enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            u = x2 @ a.t()  # [N, r]
            y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())  # x W^T + b
            y.addmm_(u, b.t(), alpha=scaling)  # += s (x A^T) B^T
        ctx.save_for_backward(x2, w, a, b, u)
        ctx.scaling, ctx.x_shape, ctx.x_dtype, ctx.has_bias = scaling, x.shape, x.dtype, bias is not None
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype, lora_a.dtype, lora_b.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, w, a, b, u = ctx.saved_tensors
        s = ctx.scaling
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        dx = dw = dbias = da = db = None
        with torch.autocast("cpu", enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
            g_u = (g @ b).mul_(s) if (need_x or need_a) else None  # s g B  [N, r]
            if need_x:
                dx = (g @ w).addmm_(g_u, a).view(ctx.x_shape).to(ctx.x_dtype)  # g W + s (g B) A
            if need_w:
                dw = (g.t() @ x2).to(ctx.dtypes[0])
            if need_bias and ctx.has_bias:
                dbias = g.sum(0).to(ctx.dtypes[1])
            if need_a:
                da = (g_u.t() @ x2).to(ctx.dtypes[2])  # dL/dA = (s g B)^T x
            if need_b:
                db = (g.t() @ u).mul_(s).to(ctx.dtypes[3])  # dL/dB = s g^T (x A^T)
        return dx, dw, dbias, da, db, None, None


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return weight.dtype


def _has_hooks(*modules) -> bool:
    """Forward hooks (accelerate's offloading, a user's probe) that the fused op would skip."""
    return any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in modules)


def _fused_adapter(module, x: torch.Tensor, args, kwargs) -> str | None:
    """The one active adapter `module` can run fused on `x`, or None (then peft's forward runs)."""
    if args or kwargs or x.device.type != "cpu" or module.disable_adapters or module.merged:
        return None
    base = module.get_base_layer()
    if type(base) is not torch.nn.Linear or getattr(module, "fan_in_fan_out", False):
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name):  # DoRA & co.
        return None
    if lora_b.bias is not None or _has_hooks(module, base, lora_a, lora_b):  # peft's lora_bias; hooks
        return None
    if not torch.is_autocast_enabled("cpu") and base.weight.dtype != lora_a.weight.dtype:
        return None  # e.g. bf16 base, fp32 adapter without autocast: peft runs the branch in the adapter's dtype
    dropout = module.lora_dropout[name]
    if not isinstance(dropout, torch.nn.Identity) and not (dropout.p == 0 or not dropout.training):
        return None
    return name


def _forward(module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = _fused_adapter(module, x, args, kwargs)
    if name is None:
        return module._peft_forward(x, *args, **kwargs)
    base = module.get_base_layer()
    return _LoraLinear.apply(x, base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                             float(module.scaling[name]), _compute_dtype(base.weight))


@contextlib.contextmanager
def fused_lora(model: torch.nn.Module):
    """Inside: every peft LoRA Linear of `model` computes through `_LoraLinear` when eligible (module doc); the
    modules' own forwards are put back on exit, exception or not. A no-op without peft or with ENABLED = False."""
    if not ENABLED:
        yield
        return
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft missing or reorganised: peft's path everywhere
        yield
        return
    patched = []
    try:
        for module in model.modules():
            if type(module) is LoraLinear and "forward" not in module.__dict__:  # subclasses: peft's
                module._peft_forward = module.forward
                module.forward = types.MethodType(_forward, module)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward, module._peft_forward
