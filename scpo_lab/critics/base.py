from __future__ import annotations

import abc

import torch


class Critic(abc.ABC):
    """Turns (rollouts, verifier rewards, teacher pass) into advantages.

    advantages(...) returns a [B] (one value per rollout) or [B, T] (per completion token) tensor and a dict of
    float statistics logged under `scpo/` each step.
    """

    needs_teacher: bool = True

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def advantages(self, batch, group_advantages: torch.Tensor, teacher) -> tuple[torch.Tensor, dict]:
        ...
