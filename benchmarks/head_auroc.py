"""Why scpo-head's head/auroc_teacher sits below 1/2 although the head reads the verdict (issue 18, item 3), and
the same check for scpo-divergence's probe signal (--critic probe), which reads the same privileged states.

Trains the cpu-profile scpo-head arm (or scpo-divergence with scpo.signal = probe) at the fp32 report set's comparison size (8 steps x 2 prompts x G = 8, sizes.COMPARISON_SIZES; not the bf16 set's larger runs) and records,
at every step, for the teacher-context state the head scores (the last one of each rollout): the online head's
AUROC before it trains on the batch (what head/auroc_teacher logs), the same head's AUROC after this step's update,
and a logistic-regression probe fitted on the other steps' states (leave-one-step-out, L2, LBFGS) -- the
information a linear head could extract. Prints a table with the host line.

    python benchmarks/head_auroc.py [--critic head|probe] [--steps 8] [--seed 0] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> list[dict]:
    from common import host_line

    import scpo_lab.critics.value as value
    from scpo_lab.config import make_config
    from scpo_lab.sizes import COMPARISON_SIZES
    from scpo_lab.stats import auroc
    from scpo_lab.trainer import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--critic", choices=["head", "probe"], default="head")
    parser.add_argument("--lr", type=float, default=1e-3, help="value.lr (head) or scpo.probe_lr (probe)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--runs-dir", default="/tmp/head_auroc_runs")
    args = parser.parse_args(argv)
    print(host_line())
    records = []
    import scpo_lab.critics.divergence as divergence

    owner, name = (value.HeadCritic, "advantages") if args.critic == "head" else (divergence.DivergenceCritic,
                                                                                     "probe_signal")
    original = getattr(owner, name)

    def spy(self, batch, *rest, **kwargs):
        teacher = rest[-1] if args.critic == "probe" else rest[1]
        last = (batch.completion_mask.sum(1).long() - 1).clamp(min=0)
        passed = torch.tensor([bool(v.passed) for v in batch.verdicts])
        if args.critic == "probe":  # the probe's score of each rollout before its step: its last state
            states = teacher.hidden[torch.arange(len(batch)), last].detach().clone()
            with torch.no_grad():
                before = auroc(self.probe(states).squeeze(-1), passed) if self.probe is not None else float("nan")
        out = original(self, batch, *rest, **kwargs)
        if args.critic == "head":
            states = teacher.states[torch.arange(len(batch)), last].detach().clone()
            before = out.stats["head/auroc_teacher"]
        records.append({"step": len(records) + 1, "states": states, "passed": passed, "before": before})
        return out

    setattr(owner, name, spy)
    try:
        sizes = dict(COMPARISON_SIZES[args.profile])  # the profile's own precision (cpu: fp32)
        sizes["steps"] = args.steps
        options = {"value.lr": args.lr} if args.critic == "head" else {"scpo.signal": "probe",
                                                                         "scpo.probe_lr": args.lr}
        config = make_config(args.profile, method="scpo-head" if args.critic == "head" else "scpo-divergence",
                             seed=args.seed, runs_dir=args.runs_dir, **{**sizes, **options})
        train(config, progress=False)
    finally:
        setattr(owner, name, original)
    rows = []
    for i, r in enumerate(records):
        others = [o for j, o in enumerate(records) if j != i]
        x = torch.cat([o["states"] for o in others])
        y = torch.cat([o["passed"] for o in others]).float()
        probe = _logistic(x, y)
        with torch.no_grad():
            fitted = auroc(probe(r["states"]).squeeze(-1), r["passed"])
        rows.append({"step": r["step"], "passes": int(r["passed"].sum()), "rollouts": len(r["passed"]),
                     "online_before": r["before"], "probe_loso": fitted})
    print(f"{args.critic}, seed {args.seed}, lr {args.lr}, {args.steps} steps")
    print(f"| step | passes / rollouts | online {args.critic} AUROC (before its step) | logistic probe, other steps |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['step']} | {row['passes']} / {row['rollouts']} | {row['online_before']:.3f} | "
              f"{row['probe_loso']:.3f} |")
    valid = [r for r in rows if r["online_before"] == r["online_before"]]
    mean = lambda k: sum(r[k] for r in valid if r[k] == r[k]) / max(1, sum(r[k] == r[k] for r in valid))  # noqa: E731
    print(f"mean over steps with both classes: online {mean('online_before'):.3f}, probe {mean('probe_loso'):.3f}")
    return rows


def _logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2) -> torch.nn.Module:
    """A class-balanced, L2-regularised logistic regression on standardised inputs, fitted by LBFGS."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = torch.nn.Linear(x.shape[1], 1)
    pos = y.mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(linear(z).squeeze(-1), y, reduction="none")
                * weight).mean() + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.nn.Sequential(_Standardise(mean, std), linear)


class _Standardise(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


if __name__ == "__main__":
    main()
