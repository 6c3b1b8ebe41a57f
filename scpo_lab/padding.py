"""Padding token lists and tensors into batches: what the rollout engines, the teacher pass, the judge and the
TRL bridge share. A leaf module."""

from __future__ import annotations

import torch


def pad_token_lists(sequences: list[list[int]], pad: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids, mask) [n, longest (at least 1)], padded on the left or the right."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols], mask[i, cols] = torch.tensor(s, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def pad_cat(tensors: list[torch.Tensor], value, left: bool = False) -> torch.Tensor:
    """Concatenate [b_i, w_i] tensors along rows, padding widths to the widest (on the left or the right)."""
    if len(tensors) == 1:
        return tensors[0]
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = t.new_full((t.shape[0], width - t.shape[1]), value)
        padded.append(torch.cat([pad, t] if left else [t, pad], dim=1))
    return torch.cat(padded)
