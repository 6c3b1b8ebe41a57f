"""Multi-process training with plain torch.distributed (DDP-style), for runs started by
`accelerate launch --num_processes N ...` or `torchrun --nproc_per_node N ...` (they set RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; this module starts the process group from them: gloo on CPU, nccl on CUDA).

How a step is split (trainer.py):
    problems   every process draws the step's prompts exactly as one process would, then takes its share of
               whole groups (prompts rank, rank + N, ...): the G rollouts of a prompt never straddle processes,
               so group-relative advantages and group-centred critics are unchanged
    loss       each process divides by the GLOBAL normaliser (loss_denominator summed over processes), so the sum
               of the processes' gradients is exactly the gradient of the whole batch on one process
    gradients  summed over processes (all_reduce) before clipping; every process then takes the same optimizer
               step on the same weights, so the weights stay identical without a broadcast
    metrics    each process's row, averaged over processes (counts summed) and written by rank 0; samples
               gathered to rank 0; checkpoints, the final adapter and DONE written once, by rank 0
    critics    a critic that trains parameters (the head, the online critic, the probe, the discriminator) divides
               its losses by the whole batch's counts and sums its gradients over processes before its own
               optimizer step (`sum_gradients`), or gathers what it trains on (the discriminator's experts and
               negatives), so its parameters stay identical on every process too (checked at the end of a run)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: str | None = None  # this process's device under several processes (cuda:<LOCAL_RANK> or cpu)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: float) -> float:
        """The sum of `value` over processes (the value itself in one process)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)  # nccl reduces GPU tensors only
        dist.all_reduce(t)
        return float(t)

    def sum_gradients(self, params) -> None:
        """grad <- sum over processes of grad, for every parameter (one flat all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).float()
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if not self.enabled:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def mean_row(self, row: dict, summed: tuple[str, ...] = ("loss", "distill/loss"), token_means: tuple[str, ...] = (),
                 tokens: float | None = None) -> dict:
        """One metrics row from every process's row: numeric values averaged (processes hold equal shares of the
        batch's rollouts, so a mean of per-rollout means is the batch mean; cumulative counts are already global),
        except: the losses, each process's share of the whole batch's loss (global normaliser), summed; the
        `token_means` (per-token means such as entropy, kl, clip_ratio), weighted by each process's `tokens` (a mean
        of token means is not the batch's: 10 tokens at 1 and 30 at 0 are 0.25, not 0.5); keys ending in "_max",
        the largest. Other values from rank 0."""
        rows = self.gather((row, tokens))
        if len(rows) == 1:
            return row
        merged = dict(rows[0][0])
        for key, value in rows[0][0].items():
            values = [r.get(key) for r, _ in rows]
            if all(v == value for v in values):
                continue  # the same on every process (step, cumulative counts): kept as it is
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                finite = [(v, n) for v, (_, n) in zip(values, rows) if v == v]
                if not finite:
                    merged[key] = float("nan")
                elif key in summed:
                    merged[key] = sum(v for v, _ in finite)
                elif key.endswith("_max"):
                    merged[key] = max(v for v, _ in finite)
                elif key in token_means and all(n for _, n in finite):
                    merged[key] = sum(v * n for v, n in finite) / sum(n for _, n in finite)
                else:
                    merged[key] = sum(v for v, _ in finite) / len(finite)
        return merged

    def check_in_sync(self, params) -> None:
        """Raise if the processes' weights differ (they must: same gradients, same optimizer steps)."""
        if not self.enabled:
            return
        with torch.no_grad():
            digest = [float(torch.cat([p.detach().reshape(-1).double() for p in params]).abs().sum())]
        digests = self.gather(digest)
        if any(d != digests[0] for d in digests):
            raise RuntimeError(f"distributed: the processes' weights drifted apart ({digests}); report this")


def local_device(local_rank: int, cuda: bool) -> str:
    """One GPU per process: process LOCAL_RANK of a node uses cuda:LOCAL_RANK (the CPU without CUDA)."""
    return f"cuda:{local_rank}" if cuda else "cpu"


def world() -> World:
    """This process's place in the run; starts the process group on first call when WORLD_SIZE > 1, after
    pinning the process to its own GPU (LOCAL_RANK, set by accelerate launch / torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    cuda = torch.cuda.is_available()
    device = local_device(int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))), cuda)
    if cuda:
        torch.cuda.set_device(device)  # before nccl starts: each process's collectives run on its own GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


def check_config(config, size: int) -> None:
    """Refuse, with a one-line error, what multi-process training does not support.

    Dynamic sampling (trainer._dynamic_sampling) is refused. Its rounds could be made global and deterministic:
    every process draws round r's prompts from (seed, step, r) exactly as one process would, takes its share of
    whole groups, and the processes all-gather which of their groups are informative, so that all agree on the kept
    set and on whether another round is needed. What does not hold is the equal split: kept groups stay where they
    were sampled, so one process may train on 3 groups and another on none (an empty batch, which the update and
    several critics do not take), and World.mean_row's mean of per-process means is the batch mean only for equal
    shares. That needs the kept groups rebalanced across processes (moving rollouts, and a critic's per-rollout
    state, between them); until then, dynamic sampling runs on one process."""
    from scpo_lab.checks import ConfigError

    if size <= 1:
        return
    if config.prompts_per_step % size:
        raise ConfigError(f"prompts_per_step: {config.prompts_per_step} is not a multiple of the {size} processes "
                          "(each process samples whole groups)")
    if config.scale_rewards == "batch":
        raise ConfigError("scale_rewards: 'batch' needs the whole batch's std; allowed with several processes: "
                          "group, none")
    if config.dynamic_sampling:  # see the docstring
        raise ConfigError(f"dynamic_sampling: not supported with several processes ({size}): the informative groups "
                          "it keeps fall unevenly on the processes; set dynamic_sampling false or run one process")

