"""The golden record: every method's losses, advantages and logged statistics on a fixed seed (smoke profile,
2 steps), recorded before the one-file-per-critic refactor (issue 17) and kept so that a change meant to leave
behaviour alone is shown to.

On the host and kernel set that wrote the record the comparison is bit for bit; elsewhere (other CPUs, other
ATEN_CPU_CAPABILITY kernel sets: other summation orders) within rtol 1e-2 / atol 1e-4: float32 log-probs differ by
~1e-6 between kernel sets, and zero-std groups amplify that (a judge's advantage moved by 6e-5 under avx2), while
a change of formula moves these values by far more.
Rewrite the record only for an intended change of behaviour:  python tests/test_golden_record.py --write
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

RECORD = Path(__file__).resolve().parent / "data" / "golden_record.json"

# variant -> (method, overrides): every method, and each option that takes another code path
VARIANTS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}),
    "grpo-mu2-beta": ("grpo", {"num_iterations": 2, "beta": 0.04}),
    # the dapo arm (issue 19, recorded with it): the tiny model never solves a problem, so every group is dropped
    # and each step samples all 3 rounds and takes no update; it pins the rounds' draws and their token count
    "dapo": ("grpo", {"dynamic_sampling": True, "epsilon_high": 0.28, "loss_agg": "token-mean"}),
    "random-reward": ("random-reward", {}),
    "scpo-divergence": ("scpo-divergence", {}),
    "scpo-divergence-span-group": ("scpo-divergence", {"scpo.center": "group", "scpo.aggregation": "span",
                                                       "scpo.span_tokens": 3}),
    "scpo-divergence-line-rlsd": ("scpo-divergence", {"scpo.aggregation": "line", "scpo.grounding": "rlsd"}),
    "scpo-divergence-jsd": ("scpo-divergence", {"scpo.signal": "jsd", "scpo.top_k": 5}),
    "scpo-divergence-reverse-kl": ("scpo-divergence", {"scpo.signal": "reverse-kl", "scpo.top_k": 0}),
    "scpo-divergence-pairwise": ("scpo-divergence", {"scpo.signal": "pairwise-rank"}),
    "scpo-divergence-probe": ("scpo-divergence", {"scpo.signal": "probe"}),
    "scpo-head": ("scpo-head", {}),
    "scpo-head-score-lora": ("scpo-head", {"value.reward": "score", "value.train_lora": True,
                                           "value.head": "mlp"}),
    "scpo-critic": ("scpo-critic", {}),
    "scpo-critic-asym-warmup": ("scpo-critic", {"value.asymmetric": True, "value.warmup_steps": 1,
                                                "value.critic_epochs": 2}),
    "scpo-critic-separate": ("scpo-critic", {"value.critic": "separate", "value.critic_model": "tiny"}),
    "scpo-judge": ("scpo-judge", {}),
    "scpo-judge-parsed-base": ("scpo-judge", {"judge.reading": "parsed", "judge.model": "base",
                                              "judge.samples": 2, "judge.planted_phrase": "the",
                                              "judge.planted_bonus": 0.5}),
    "scpo-irl": ("scpo-irl", {}),
    "scpo-irl-teacher-gail": ("scpo-irl", {"irl.expert": "teacher", "irl.form": "gail", "irl.grad_penalty": 0.1}),
    "sdpo": ("sdpo", {}),
    "sdpo-sampled": ("sdpo", {"distill.support": "sampled", "distill.token_clip": 0.5, "distill.grpo_weight": 0.3}),
    "opsd": ("opsd", {}),
    "opsd-full": ("opsd", {"distill.support": "full", "distill.alpha": 0.0}),
    "srpo": ("srpo", {}),
    "rlsd": ("rlsd", {}),
}


def host_key() -> str:
    """The kernels a record is bit-exact for: the CPU model, torch's kernel set and its thread count (1 and 2
    threads split the reductions differently: ~1e-7 apart)."""
    from scpo_lab.precision import cpu_model

    return (f"{cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads")


def record_variant(name: str, runs_dir: Path) -> dict:
    """Train the variant for 2 smoke steps; every numeric metric (time/* left out) and, per step, the advantages
    and the loss of every policy_loss call, as exact float64 values (hex)."""
    from scpo_lab import trainer
    from scpo_lab.config import make_config

    method, overrides = VARIANTS[name]
    config = make_config("smoke", method=method, seed=3, runs_dir=str(runs_dir), **overrides)
    calls = []
    original = trainer.policy_loss

    def spy(logp, old, advantages, mask, **kwargs):
        loss, stats = original(logp, old, advantages, mask, **kwargs)
        calls.append({"advantages": [float(x) for x in advantages.detach().reshape(-1)],
                      "loss": float(loss.detach())})
        return loss, stats

    trainer.policy_loss = spy
    try:
        run = trainer.train(config, progress=False)
    finally:
        trainer.policy_loss = original
    metrics = []
    for row in run.dir.read_metrics():
        metrics.append({k: v for k, v in sorted(row.items()) if not k.startswith("time/")
                        and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {"metrics": metrics, "policy_loss_calls": calls}


def _same(a, b, exact: bool, path: str = "") -> list[str]:
    """Differences between two records (paths), exact or within rtol 1e-2 / atol 1e-4."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        return [d for k in a for d in _same(a[k], b[k], exact, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, exact, f"{path}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return []
        if a == b or (not exact and math.isclose(a, b, rel_tol=1e-2, abs_tol=1e-4)):
            return []
        return [f"{path}: {a!r} vs recorded {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs recorded {b!r}"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_golden_record(name, tmp_path):
    recorded = json.loads(RECORD.read_text())
    exact = recorded["host"] == host_key()
    now = record_variant(name, tmp_path)
    differences = _same(now, recorded["variants"][name], exact)
    assert not differences, f"{name} ({'bit for bit' if exact else 'tolerance'}): " + "; ".join(differences[:5])


if __name__ == "__main__" and "--write" in sys.argv:
    # python tests/test_golden_record.py --write [VARIANT ...]: rewrite every variant, or only those named (an
    # intended change of one method's behaviour); the others keep their recorded values
    import tempfile

    names = [a for a in sys.argv[sys.argv.index("--write") + 1:] if not a.startswith("-")] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"--write: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    out = json.loads(RECORD.read_text()) if RECORD.is_file() and names != list(VARIANTS) else {"variants": {}}
    if out.get("host", host_key()) != host_key():
        sys.exit(f"--write: the record was written on {out['host']!r}; rewrite every variant on one host")
    out["host"] = host_key()
    with tempfile.TemporaryDirectory() as tmp:
        for variant in names:
            out["variants"][variant] = record_variant(variant, Path(tmp))
            print(variant, "recorded", flush=True)
    out["variants"] = {name: out["variants"][name] for name in VARIANTS if name in out["variants"]}
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", RECORD)
