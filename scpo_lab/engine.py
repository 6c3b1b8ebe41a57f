"""A rollout engine for Llama-family decoders (Llama, SmolLM2, Qwen2, Mistral): plain PyTorch, static KV cache.

Why not the HF forward in the decode loop: at batch 16 on two CPU cores a SmolLM2-135M decode step spends about
half its time outside the matrix products (DynamicCache concatenations that copy the whole cache every token,
peft's per-module LoRA branches, mask construction, multinomial's per-element exponential draws). This engine
keeps the products and removes the rest:

- weights are snapshotted once per call with the LoRA delta merged in, W' = W + (alpha/r) B A, and q/k/v and
  gate/up fused into one matrix each (two matmuls fewer per layer, no LoRA branch);
- on CPU in fp32 the snapshot is stored in oneDNN's blocked layout for the expected batch size and multiplied
  with oneDNN's linear (the op torch.compile's CPU freezing pass uses): at batch 16 the 30 layers' products
  take ~17 ms instead of ~39 ms through F.linear here (same fp32 arithmetic, another summation order; outputs
  agree to ~1e-5 relative). Elsewhere, or with `USE_ONEDNN = False`, plain F.linear;
- under `precision: bf16` (scpo_lab.precision) the merged weights are cast to bf16 (half the bytes per decode
  step; packed for oneDNN where it has bf16 kernels) and so is the KV cache; the residual stream, the norms and
  the sampler's softmax stay fp32;
- the KV cache is one tensor per layer of shape [B, kv_heads, prompt_len + max_new_tokens, head_dim], allocated
  once and written in place;
- the prompt of each group is prefilled once and its cache copied G times (prefix sharing);
- rows that emitted EOS leave the batch when at least a quarter of it is done (compaction copies the cache, so
  it is batched instead of done every token).

The model itself is not modified and stays the source of truth: `completion_logprobs` (teacher forcing through
the HF model) reproduces the log-probs recorded here to ~1e-5 (tests/test_engine.py). Models this engine does
not recognise fall back to the HF decode loop in rollout.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scpo_lab import precision

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
COMPACT_FRACTION = 0.25  # drop finished rows once this share of the active batch is done
USE_ONEDNN = True  # module switch so benchmarks can measure both paths


class _Linear:
    """y = x W^T + b, with W packed for oneDNN when that is available (CPU, fp32 or bf16 where oneDNN has bf16
    kernels), else F.linear. x is cast to W's dtype: a bf16 snapshot multiplies in bf16 (fp32 accumulation inside
    the kernel) and returns bf16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int):
        self.bias, self.packed, self.dtype = bias, False, weight.dtype
        self.weight = weight
        if USE_ONEDNN and weight.device.type == "cpu" and _packable(weight.dtype) \
                and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
            try:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch_hint)
                self.packed = True
            except RuntimeError:  # an oneDNN build without this op: stay on F.linear
                pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    @property
    def nbytes(self) -> int:
        """Bytes of weight (and bias) a product reads."""
        n = self.weight.numel() * self.weight.element_size()
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())


def _packable(dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


@dataclass
class _Layer:
    ln_attn: torch.Tensor  # RMSNorm weight before attention
    qkv: _Linear  # [(H + 2 KV) * hd, D]: q, k, v projections stacked
    o: _Linear
    ln_mlp: torch.Tensor
    gate_up: _Linear  # [2 I, D]: gate and up stacked
    down: _Linear


@dataclass
class DecoderWeights:
    """Everything a decode step reads, LoRA merged. Built by `snapshot(model)`; valid until the weights change."""
    embed: torch.Tensor
    layers: list[_Layer]
    ln_final: torch.Tensor
    lm_head: _Linear
    rotary: torch.nn.Module  # the model's own rotary embedding (handles every RoPE variant it supports)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    scaling: float
    dtype: torch.dtype = torch.float32  # of the products' weights, their outputs and the KV cache
    # attention's dtype where torch cannot run it in `dtype` here (precision.cpu_bf16_attention_works); None: dtype
    attention_dtype: torch.dtype | None = None

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads: every layer's products and the lm_head (the embedding table
        is read one row per token)."""
        linears = [lin for layer in self.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        norms = [t for layer in self.layers for t in (layer.ln_attn, layer.ln_mlp)] + [self.ln_final]
        return sum(lin.nbytes for lin in linears + [self.lm_head]) + sum(t.numel() * t.element_size() for t in norms)


def _backbone(model):
    """The HF causal LM under any peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base


def supports(model) -> bool:
    """True when `snapshot` understands this model's architecture."""
    base = _backbone(model)
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    inner = getattr(base, "model", None)
    return all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) \
        and getattr(config, "hidden_act", "silu") == "silu"


def _effective_weight(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a Linear as the model currently computes it: base + active LoRA deltas."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    weight, bias = base.weight, base.bias
    lora_a = getattr(module, "lora_A", None)
    if lora_a is not None and not getattr(module, "disable_adapters", False) and not getattr(module, "merged", False):
        for a in (a for a in module.active_adapters if a in lora_a):
            if getattr(module, "use_dora", {}).get(a) or getattr(module, "fan_in_fan_out", False):
                weight = weight + module.get_delta_weight(a)  # peft's general merge
            else:  # W' = W + (alpha/r) B A in one fused op
                weight = torch.addmm(weight, module.lora_B[a].weight, lora_a[a].weight, alpha=module.scaling[a])
    return weight.detach(), None if bias is None else bias.detach()


@torch.no_grad()
def snapshot(model, batch_hint: int = 16, dtype: torch.dtype | None = None) -> DecoderWeights:
    """The weights as the model computes them now (adapter state included), laid out for batches ~batch_hint.
    dtype: of the products' weights (merged in the model's dtype, then cast) and of the KV cache; None = the
    current precision's (scpo_lab.precision.activate: bf16 under bf16, else the model's own dtype). The
    embedding, the norms and the residual stream keep the model's dtype."""
    dtype = dtype or precision.snapshot_dtype()
    base = _backbone(model)
    config, inner = base.config, base.model
    dtype = dtype or inner.embed_tokens.weight.dtype
    with torch.autocast(inner.embed_tokens.weight.device.type, enabled=False):  # merge at the weights' precision
        return _snapshot(base, config, inner, batch_hint, dtype)


def _snapshot(base, config, inner, batch_hint: int, dtype: torch.dtype) -> DecoderWeights:
    def effective(module):
        weight, bias = _effective_weight(module)
        return weight.to(dtype), None if bias is None else bias.to(dtype)

    layers = []
    for block in inner.layers:
        attn, mlp = block.self_attn, block.mlp
        (wq, bq), (wk, bk), (wv, bv) = (effective(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        wo, bo = effective(attn.o_proj)
        (wg, _), (wu, _), (wd, _) = (effective(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        b_qkv = None if bq is None else torch.cat([bq, bk, bv])
        layers.append(_Layer(block.input_layernorm.weight, _Linear(torch.cat([wq, wk, wv]), b_qkv, batch_hint),
                             _Linear(wo, bo, batch_hint), block.post_attention_layernorm.weight,
                             _Linear(torch.cat([wg, wu]), None, batch_hint), _Linear(wd, None, batch_hint)))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    lm_head = _Linear(*effective(base.get_output_embeddings()), batch_hint)
    return DecoderWeights(
        embed=inner.embed_tokens.weight, layers=layers, ln_final=inner.norm.weight, lm_head=lm_head,
        rotary=inner.rotary_emb, n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads,
        head_dim=head_dim, eps=config.rms_norm_eps, scaling=head_dim ** -0.5, dtype=dtype,
        attention_dtype=torch.float32 if dtype == torch.bfloat16 and inner.embed_tokens.weight.device.type == "cpu"
        and not precision.cpu_bf16_attention_works() else None)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # x / sqrt(mean(x^2) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin  # RoPE: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)


def _forward_states(w: DecoderWeights, tokens: torch.Tensor, positions: torch.Tensor, cache_k: list,
                    cache_v: list, start: int, attn_mask: torch.Tensor, record_layer: int | None = None):
    """Run tokens [B, S] at cache slots start..start+S-1; attn_mask [B, 1, S, start+S] (True = may attend).
    Writes their keys/values into the cache and returns the hidden states [B, S, D] after the last layer
    (before the final norm) and, when `record_layer` is given, the input of that layer [B, S, D] (HF's
    `hidden_states[record_layer]`; record_layer == len(layers) is the normed output)."""
    b, s = tokens.shape
    h = w.embed[tokens]  # [B, S, D]
    cos, sin = w.rotary(h, positions)  # [B, S, hd]
    cos, sin = cos[:, None], sin[:, None]
    q_size, kv_size = w.n_heads * w.head_dim, w.n_kv_heads * w.head_dim
    end = start + s
    recorded = None
    for i, layer in enumerate(w.layers):
        if i == record_layer:
            recorded = h
        qkv = layer.qkv(_rms_norm(h, layer.ln_attn, w.eps))
        # q and k heads rotated together: one RoPE (six elementwise launches) per layer instead of two
        qk = _rotate(qkv[..., :q_size + kv_size].view(b, s, w.n_heads + w.n_kv_heads, w.head_dim).transpose(1, 2),
                     cos, sin)
        q = qk[:, :w.n_heads].to(w.dtype)
        cache_k[i][:, :, start:end] = qk[:, w.n_heads:]
        cache_v[i][:, :, start:end] = qkv[..., q_size + kv_size:].view(b, s, w.n_kv_heads, w.head_dim).transpose(1, 2)
        out = _attention(w, q, cache_k[i][:, :, :end], cache_v[i][:, :, :end], attn_mask)
        h = h + layer.o(out.transpose(1, 2).reshape(b, s, q_size))
        gate, up = layer.gate_up(_rms_norm(h, layer.ln_mlp, w.eps)).chunk(2, dim=-1)
        h = h + layer.down(F.silu(gate) * up)  # SwiGLU MLP
    if record_layer == len(w.layers):
        recorded = _rms_norm(h, w.ln_final, w.eps)
    return h, recorded


def _attention(w: DecoderWeights, q, k, v, attn_mask: torch.Tensor) -> torch.Tensor:
    if w.attention_dtype is not None:  # only where torch's kernel for w.dtype fails on this host
        with torch.autocast(q.device.type, enabled=False):  # the trainer's bf16 region would cast back to bf16
            q, k, v = (x.to(w.attention_dtype) for x in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=w.scaling,
                                                  enable_gqa=True).to(w.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=w.scaling,
                                          enable_gqa=True)  # softmax(q k^T / sqrt(hd)) v


def _forward(w: DecoderWeights, tokens: torch.Tensor, positions: torch.Tensor, cache_k: list, cache_v: list,
             start: int, attn_mask: torch.Tensor) -> torch.Tensor:
    """`_forward_states` for decoding: the last position's normed hidden state [B, D]."""
    h, _ = _forward_states(w, tokens, positions, cache_k, cache_v, start, attn_mask)
    return _rms_norm(h[:, -1], w.ln_final, w.eps)


def _empty_cache(w: DecoderWeights, rows: int, slots: int, device) -> tuple[list, list]:
    shape = (rows, w.n_kv_heads, slots, w.head_dim)
    return ([torch.empty(shape, dtype=w.dtype, device=device) for _ in w.layers],
            [torch.empty(shape, dtype=w.dtype, device=device) for _ in w.layers])


def _prefill_mask(mask: torch.Tensor) -> torch.Tensor:
    """[n, P] left-padded key mask -> [n, 1, P, P] causal attention mask; pad query rows attend to themselves
    so that no softmax row is empty."""
    width = mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=mask.device)
    return ((causal & mask.bool()[:, None, :]) | eye)[:, None]


@torch.no_grad()
def prefill(w: DecoderWeights, ids: torch.Tensor, mask: torch.Tensor, extra_slots: int = 0):
    """Left-padded prompts [n, P] -> (cache_k, cache_v with P + extra_slots slots, positions [n, P], the last
    position's normed hidden state [n, D])."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: the first real token is position 0
    cache_k, cache_v = _empty_cache(w, ids.shape[0], ids.shape[1] + extra_slots, ids.device)
    hidden = _forward(w, ids, positions, cache_k, cache_v, 0, _prefill_mask(mask))
    return cache_k, cache_v, positions, hidden


@torch.no_grad()
def forward_after_prefix(w: DecoderWeights, prefix_k: list, prefix_v: list, prefix_mask: torch.Tensor,
                         body_ids: torch.Tensor, body_mask: torch.Tensor, record_layer: int | None = None):
    """Teacher forcing of right-padded bodies [b, S] after their (left-padded) cached prefixes [b, P]:
    -> (normed hidden states [b, S, D], input of layer `record_layer` [b, S, D] or None). Body token j sits at
    position (real prefix length + j) and attends to the real prefix tokens and to body tokens <= j."""
    b, width = body_ids.shape
    prefix_len = prefix_mask.shape[1]
    cache_k, cache_v = _empty_cache(w, b, prefix_len + width, body_ids.device)
    for layer in range(len(w.layers)):
        cache_k[layer][:, :, :prefix_len] = prefix_k[layer]
        cache_v[layer][:, :, :prefix_len] = prefix_v[layer]
    causal = torch.ones(width, width, dtype=torch.bool, device=body_ids.device).tril()
    attn_mask = torch.cat([prefix_mask.bool()[:, None, :].expand(b, width, prefix_len),
                           causal.expand(b, width, width)], dim=2)[:, None]  # [b, 1, S, P + S]
    positions = prefix_mask.sum(1, keepdim=True) + torch.arange(width, device=body_ids.device)
    h, recorded = _forward_states(w, body_ids, positions, cache_k, cache_v, prefix_len, attn_mask, record_layer)
    return _rms_norm(h, w.ln_final, w.eps), recorded


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator,
                 uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(logits / T), optionally top-p truncated; return it and its log-prob
    under the untruncated temperature-scaled policy log pi_T(y) (TRL's convention). Greedy when T == 0.

    Inverse-CDF sampling: one uniform per row (`uniform` [B], or drawn from `generator`) against the cumulative
    probabilities. Same distribution as torch.multinomial, which draws one exponential per vocabulary entry
    (~20 ms per step at batch 16 here)."""
    logits = logits.float()
    if temperature == 0:
        token = logits.argmax(-1)
        return token, logits.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    scaled = logits / temperature if temperature != 1.0 else logits
    lse = torch.logsumexp(scaled, -1, keepdim=True)  # log Z
    probs = (scaled - lse).exp_()  # pi_T(. | context)
    sample_probs = probs
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set with mass >= top_p
        sample_probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill_(outside, 0.0))
    cdf = sample_probs.cumsum(-1)
    if uniform is None:
        uniform = torch.rand(cdf.shape[0], generator=generator, device=cdf.device)
    u = uniform[:, None] * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    # a zero-probability entry can never be returned: right=True skips entries whose cdf equals the previous one
    return token, (scaled.gather(-1, token[:, None]) - lse).squeeze(-1)  # log pi_T(y) = logit/T - log Z


@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, *, repeats: int, max_new_tokens: int, temperature: float, top_p: float,
             eos_token_ids: list[int], pad_token_id: int, generator: torch.Generator | None = None):
    """Same contract as rollout.generate: (completion_ids, mask, logprobs, truncated), rows prompt by prompt."""
    n_prompts, prompt_len = prompt_ids.shape
    batch, total = n_prompts * repeats, prompt_len + max_new_tokens
    w = snapshot(model, batch_hint=batch)
    device = prompt_ids.device
    cache_k, cache_v, positions, hidden = prefill(w, prompt_ids, prompt_mask, extra_slots=max_new_tokens)
    last_logits = w.lm_head(hidden)
    if repeats > 1:  # prefix sharing: G copies of each prompt's cache, one prefill
        cache_k = [c.repeat_interleave(repeats, 0) for c in cache_k]
        cache_v = [c.repeat_interleave(repeats, 0) for c in cache_v]
        last_logits = last_logits.repeat_interleave(repeats, 0)

    key_mask = torch.ones(batch, total, dtype=torch.bool, device=device)  # generated slots are always visible
    key_mask[:, :prompt_len] = prompt_mask.bool().repeat_interleave(repeats, 0)
    next_pos = positions[:, -1].repeat_interleave(repeats, 0) + 1

    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)  # rows of the full batch still in the cache
    alive = torch.ones(batch, dtype=torch.bool, device=device)  # per cache row: not finished yet
    for t in range(max_new_tokens):
        # one uniform per row of the full batch every step: a row's draws do not depend on which rows finished
        uniform = torch.rand(batch, generator=generator, device=device)[active]
        token, logp = sample_token(last_logits, temperature, top_p, generator, uniform)
        rows = active[alive]
        tokens[rows, t], logps[rows, t], lengths[rows] = token[alive], logp[alive], t + 1
        done = alive & torch.isin(token, eos)
        finished[active[done]] = True
        alive &= ~done
        n_alive = int(alive.sum())
        if t == max_new_tokens - 1 or n_alive == 0:
            break
        if len(active) - n_alive >= max(1, COMPACT_FRACTION * len(active)):  # compact: drop finished rows
            keep = alive.nonzero().squeeze(-1)
            cache_k = [c[keep] for c in cache_k]
            cache_v = [c[keep] for c in cache_v]
            active, token, key_mask, next_pos, alive = active[keep], token[keep], key_mask[keep], next_pos[keep], \
                alive[keep]
        slot = prompt_len + t
        hidden = _forward(w, token[:, None], next_pos[:, None], cache_k, cache_v, slot,
                          key_mask[:, None, None, :slot + 1])
        last_logits = w.lm_head(hidden)
        next_pos = next_pos + 1

    width = int(lengths.max()) if batch else 0
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return tokens[:, :width], mask, logps[:, :width] * mask, ~finished
