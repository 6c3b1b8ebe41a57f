"""Tests for scpo_lab.models: tiny policy and cache logic (fast, GGUF load faked); embedded model (slow)."""

import importlib.util
import logging
import os

import pytest
import torch

from scpo_lab import models
from scpo_lab.models import LoraConfig, Policy, load_policy, tiny_policy

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def _ids(policy: Policy, messages=PROMPT):
    return policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)


def _short(policy: Policy):
    """A few tokens: cheap forwards on the 135M model."""
    return policy.tokenizer(["What is 2 + 3?"], return_tensors="pt")


@torch.no_grad()
def _logits(policy: Policy, enc) -> torch.Tensor:
    return policy.model(**enc).logits


def _perturb_lora_b(policy: Policy, seed: int = 1, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _zero_lora_b(policy: Policy) -> None:
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.zero_()


# ----------------------------------------------------------------------------------------------- tiny


@pytest.fixture(scope="module")
def tiny():
    return tiny_policy(seed=0)


def test_tiny_is_deterministic_per_seed():
    a, b, c = tiny_policy(seed=0), tiny_policy(seed=0), tiny_policy(seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # seeding must not move the caller's RNG stream
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_policy(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_trains_lora_only(tiny):
    trainable = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    frozen = [n for n, p in tiny.model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen) and any("base_layer" in n for n in frozen)
    n_lora = sum(p.numel() for n, p in tiny.model.named_parameters() if n in trainable)
    assert tiny.num_parameters(trainable_only=True) == n_lora < tiny.num_parameters()
    targets = {n.split(".")[-4] for n in trainable}  # ...<proj>.lora_A.default.weight
    assert targets == set(LoraConfig().target_modules)
    assert {p.shape[0] for n, p in tiny.model.named_parameters() if "lora_A" in n} == {4}  # r=4


def test_tiny_tokenizer_and_eos(tiny):
    tok = tiny.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>" and tok.padding_side == "left"
    assert tiny.eos_token_ids == [2]
    assert tiny.backend == "hf" and tiny.name == "tiny" and tiny.device == torch.device("cpu")
    assert tiny.model.config.vocab_size == len(tok) == 49152
    assert tiny.model.config.tie_word_embeddings


def test_tiny_generates_with_left_padding(tiny):
    tok = tiny.tokenizer
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
             for m in (PROMPT, [{"role": "user", "content": "Hi"}])]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, -1] == 1).all()  # left padded
    out = tiny.model.generate(**enc, max_new_tokens=4, do_sample=False, eos_token_id=tiny.eos_token_ids,
                              pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] <= enc["input_ids"].shape[1] + 4


def test_reference_disables_adapter():
    policy = tiny_policy(seed=0)
    enc = _ids(policy)
    base = _logits(policy, enc)
    _perturb_lora_b(policy)
    adapted = _logits(policy, enc)
    assert not torch.allclose(adapted, base, atol=1e-4)
    with policy.reference():
        assert torch.equal(_logits(policy, enc), base)
    assert torch.equal(_logits(policy, enc), adapted)  # adapter back on after the block


def test_save_load_adapter_roundtrip(tmp_path):
    src = tiny_policy(seed=0)
    _perturb_lora_b(src, seed=2)
    enc = _ids(src)
    expected = _logits(src, enc)
    out = src.save_adapter(tmp_path / "ckpt")
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()

    dst = tiny_policy(seed=0)
    assert not torch.equal(_logits(dst, enc), expected)
    before = {n: p for n, p in dst.model.named_parameters()}
    dst.load_adapter(tmp_path / "ckpt")
    assert torch.equal(_logits(dst, enc), expected)
    after = dict(dst.model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in after)  # loaded in place
    assert dst.num_parameters(True) == src.num_parameters(True)


def test_load_adapter_missing_path(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter path"):
        tiny.load_adapter(tmp_path / "nope")


def test_load_adapter_wrong_shape(tiny, tmp_path):
    other = tiny_policy(seed=0, lora=LoraConfig(r=2, alpha=4))
    other.save_adapter(tmp_path / "r2")
    with pytest.raises(RuntimeError, match="size mismatch"):
        tiny.load_adapter(tmp_path / "r2")


def test_no_lora_policy():
    policy = tiny_policy(seed=0, lora=None)
    assert policy.num_parameters(trainable_only=True) == policy.num_parameters() > 0
    with pytest.raises(ValueError, match="lora"):
        policy.reference()


def test_load_policy_tiny_and_local_folder(tmp_path):
    assert load_policy("tiny", backend="hf").name == "tiny"
    base = tiny_policy(seed=3, lora=None)
    base.model.save_pretrained(tmp_path / "m")
    base.tokenizer.save_pretrained(tmp_path / "m")
    policy = load_policy(str(tmp_path / "m"), backend="hf", lora=LoraConfig(r=2, alpha=4))
    assert policy.backend == "hf" and policy.name == str(tmp_path / "m")
    assert policy.tokenizer.padding_side == "left" and policy.eos_token_ids == [2]
    enc = _ids(policy)
    assert torch.allclose(_logits(policy, enc), _logits(base, enc), atol=1e-5)  # B = 0: same as the base
    assert not policy.model.training and policy.model.config.use_cache


def test_bad_backend():
    with pytest.raises(ValueError, match=r"model\.backend: unknown 'foo'; known: auto, hf, unsloth"):
        load_policy("tiny", backend="foo")
    with pytest.raises(ValueError, match=r"model\.backend"):
        load_policy("tiny", backend="unsloth")


@pytest.mark.parametrize("path", ["/nonexistent/model", "./no_such_model", "~/no_such_model_xyz",
                                  os.path.join("a", "b", "c")])
def test_missing_path(path):
    with pytest.raises(ValueError, match=r"model\.name: path .* does not exist; use 'embedded', 'tiny'"):
        load_policy(path, backend="hf")


def test_hub_ids_are_not_paths():
    assert models._resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models._resolve_source("gpt2") == "gpt2"


def test_auto_backend_is_hf_on_cpu():
    assert models._resolve_backend("auto", torch.device("cpu")) == "hf"
    assert models._resolve_backend("unsloth", torch.device("cpu")) == "unsloth"


# ------------------------------------------------------------------------------- third-party import noise


def test_importing_the_model_path_prints_no_torchao_or_bitsandbytes_noise():
    """peft imports torchao and bitsandbytes; on CPU they logged two messages in every kernel and CLI run."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from scpo_lab.models import load_policy\n"
            "load_policy('tiny')\n"
            "print(json.dumps({m: m in sys.modules for m in ('torchao', 'bitsandbytes')}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.splitlines()[-1])
    if not any(imported.values()):
        pytest.skip("neither torchao nor bitsandbytes is installed here: nothing to silence")
    assert "is an Enum subclass" not in done.stderr, done.stderr[-3000:]
    assert "gemm_4bit_forward" not in done.stderr and "kernels-community" not in done.stderr, done.stderr[-3000:]


def test_the_noise_filters_drop_only_those_two_messages():
    """Not a blanket silence: each filter matches one format string; other records of the same loggers pass."""
    import scpo_lab._quiet as quiet

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    for name in quiet.NOISE:
        assert any(isinstance(f, quiet._DropMessage) for f in logging.getLogger(name).filters), name
    pytree, cpu_ops = logging.getLogger("torch.utils._pytree"), logging.getLogger("bitsandbytes.backends.cpu.ops")
    handler = Keep()
    for logger in (pytree, cpu_ops):
        logger.addHandler(handler)
    try:
        pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value "
                       "type.", "<enum 'KernelPreference'>")
        cpu_ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure",
                        "No module named 'kernels'")
        pytree.warning("some other pytree warning")
        cpu_ops.warning("some other bitsandbytes warning")
    finally:
        for logger in (pytree, cpu_ops):
            logger.removeHandler(handler)
    assert seen == ["some other pytree warning", "some other bitsandbytes warning"]


# ------------------------------------------------------------------------ cache conversion (GGUF load faked)


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Point the cache at tmp_path and make the GGUF load return a tiny model + a GGUF-like (wrong eos) tokenizer."""
    import transformers

    real_tok = transformers.AutoTokenizer
    tok_dir = str(models.embedded_model_dir())  # the real cache, before re-pointing it
    tiny_model = tiny_policy(seed=0, lora=None).model  # built before re-pointing (it needs the tokenizer)
    calls = []

    class FakeModel:
        @staticmethod
        def from_pretrained(folder, gguf_file=None, dtype=None):
            assert gguf_file == models.EMBEDDED_GGUF and dtype == torch.float32
            calls.append(folder)
            return tiny_model

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(folder, gguf_file=None, **kw):
            if gguf_file is None:
                return real_tok.from_pretrained(folder, **kw)
            tok = real_tok.from_pretrained(tok_dir)
            tok.eos_token, tok.padding_side = "<|im_start|>", "right"  # as the GGUF metadata gives it
            return tok

    monkeypatch.setenv("SCPO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", FakeModel)
    monkeypatch.setattr(transformers, "AutoTokenizer", FakeTokenizer)
    return calls


def test_conversion_once_and_fixed_tokenizer(fake_gguf, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="scpo_lab"):
        folder = models.embedded_model_dir()
    assert folder == tmp_path / "cache" / "models" / models.EMBEDDED_DIRNAME
    assert any("converting" in r.message and "once" in r.message for r in caplog.records)
    assert len(fake_gguf) == 1
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.embedded_model_dir() == folder and len(fake_gguf) == 1  # reused, not reconverted
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in folder.parent.iterdir()] == [models.EMBEDDED_DIRNAME]  # no temp leftovers
    tok = models._embedded_tokenizer()
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|im_end|>", "left")
    import json
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2


def test_conversion_failure_leaves_no_folder(fake_gguf, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def boom(*a, **k):
        raise RuntimeError("disk full")  # the conversion dies after writing the weights
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        models.embedded_model_dir()
    models_dir = tmp_path / "cache" / "models"
    assert list(models_dir.iterdir()) == []


def test_incomplete_cache_folder_is_reconverted(fake_gguf, tmp_path):
    folder = tmp_path / "cache" / "models" / models.EMBEDDED_DIRNAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert models.embedded_model_dir() == folder and len(fake_gguf) == 1
    assert (folder / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------- embedded

BACKENDS = ["hf", pytest.param("unsloth", marks=pytest.mark.skipif(
    importlib.util.find_spec("unsloth") is None, reason="unsloth not installed"))]


@pytest.fixture(scope="module")
def embedded():
    """One embedded policy per backend, loaded lazily and shared by the slow tests."""
    cache: dict[str, Policy] = {}

    def get(backend: str) -> Policy:
        if backend not in cache:
            cache[backend] = load_policy("embedded", backend=backend)
        return cache[backend]
    return get


@pytest.mark.slow
def test_embedded_loads_through_cache(embedded):
    folder = models.embedded_model_dir()
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    policy = embedded("hf")
    assert policy.model.get_base_model().config._name_or_path == str(folder)
    again = load_policy("embedded", backend="hf", lora=None)
    assert again.model.config._name_or_path == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rewritten


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedded_api(embedded, backend):
    policy = embedded(backend)
    assert policy.backend == backend and policy.name == "embedded" and policy.device == torch.device("cpu")
    tok = policy.tokenizer
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.padding_side) == ("<|im_end|>", 2, "<|im_end|>",
                                                                                  "left")
    assert policy.eos_token_ids == [2]
    assert policy.model.dtype == torch.float32 and policy.model.config.use_cache
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert policy.num_parameters(True) == 4_884_480  # r=16 on 7 projections x 30 layers
    assert policy.num_parameters() == 134_515_008 + 4_884_480


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedded_greedy_answer(embedded, backend):
    policy = embedded(backend)
    enc = _ids(policy)
    out = policy.model.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=policy.eos_token_ids,
                                pad_token_id=policy.tokenizer.pad_token_id)
    text = policy.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in text, text  # measured: "2 + 3 = 5"
    assert out[0, -1].item() == 2  # stopped on <|im_end|>


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_embedded_reference_and_adapter_roundtrip(embedded, backend, tmp_path):
    policy = embedded(backend)
    enc = _short(policy)
    base = _logits(policy, enc)
    try:
        _perturb_lora_b(policy, scale=0.01)
        adapted = _logits(policy, enc)
        assert not torch.allclose(adapted, base, atol=1e-3)
        with policy.reference():
            assert torch.equal(_logits(policy, enc), base)
        policy.save_adapter(tmp_path / "a")
        _zero_lora_b(policy)
        assert torch.equal(_logits(policy, enc), base)
        policy.load_adapter(tmp_path / "a")
        assert torch.equal(_logits(policy, enc), adapted)
    finally:
        _zero_lora_b(policy)


@pytest.mark.slow
def test_embedded_backends_agree(embedded):
    pytest.importorskip("unsloth")
    hf, un = embedded("hf"), embedded("unsloth")
    enc = _ids(hf)
    torch.testing.assert_close(_logits(un, enc), _logits(hf, enc), atol=1e-4, rtol=0)
    lora_hf = {n: p for n, p in hf.model.named_parameters() if "lora_A" in n}
    lora_un = {n: p for n, p in un.model.named_parameters() if "lora_A" in n}
    assert lora_hf.keys() == lora_un.keys() and all(torch.equal(lora_hf[n], lora_un[n]) for n in lora_hf)


def _lora_grads(policy: Policy, enc) -> dict[str, torch.Tensor]:
    """Gradients of a fixed scalar of the logits w.r.t. the LoRA params, in train mode (unsloth: checkpointed)."""
    policy.model.train()
    try:
        policy.model.zero_grad(set_to_none=True)
        logits = policy.model(**enc, use_cache=False).logits
        logits.float().log_softmax(-1)[0, :, :100].mean().backward()
        return {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    finally:
        policy.model.zero_grad(set_to_none=True)
        policy.model.eval()


@pytest.mark.slow
def test_embedded_backends_agree_on_gradients(embedded):
    pytest.importorskip("unsloth")
    hf, un = embedded("hf"), embedded("unsloth")
    enc = _short(hf)
    g_hf, g_un = _lora_grads(hf, enc), _lora_grads(un, enc)
    assert g_hf.keys() == g_un.keys() and all("lora_" in n for n in g_hf)
    for n in g_hf:
        torch.testing.assert_close(g_un[n], g_hf[n], atol=1e-6, rtol=1e-4)


def test_preimport_backend_hf_does_not_import_unsloth():
    import sys
    had = "unsloth" in sys.modules
    assert models.preimport_backend("auto", device="cpu") == "hf"
    assert ("unsloth" in sys.modules) == had
    with pytest.raises(ValueError, match=r"model\.backend"):
        models.preimport_backend("vllm")


@pytest.mark.slow
def test_unsloth_load_failure_is_clear(tmp_path):
    pytest.importorskip("unsloth")
    (tmp_path / "config.json").write_text("{}")  # exists, but is no model
    with pytest.raises(RuntimeError, match=r"model\.backend: unsloth could not load .*try backend='hf'"):
        load_policy(str(tmp_path), backend="unsloth")


def test_reset_adapter_restores_an_identity_adapter_deterministically():
    from scpo_lab.models import tiny_policy

    policy = tiny_policy(seed=0)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        base = policy.model(input_ids=ids).logits
        for name, param in policy.model.named_parameters():
            if "lora_" in name:
                param.add_(0.3)
        assert not torch.allclose(policy.model(input_ids=ids).logits, base)
    policy.reset_adapter(seed=7)
    first = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_A" in n}
    with torch.no_grad():
        torch.testing.assert_close(policy.model(input_ids=ids).logits, base)  # B = 0 again
    policy.reset_adapter(seed=7)
    assert all(torch.equal(p, first[n]) for n, p in policy.model.named_parameters() if "lora_A" in n)
