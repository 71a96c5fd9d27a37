"""Scores: normalized user . normalized item / temperature, and an optional pointwise re-ranker."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqrec.config import HeadConfig


class RankingHead(nn.Module):
    def __init__(self, cfg: HeadConfig, dim: int):
        super().__init__()
        inv_t = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learn_temperature:
            self.log_inv_temperature = nn.Parameter(inv_t)
        else:
            self.register_buffer("log_inv_temperature", inv_t)
        self.pointwise = PointwiseScorer(dim, cfg.pointwise_hidden) if cfg.pointwise else None

    def scale(self) -> torch.Tensor:
        # Capped at 1/T = 100 so a learned temperature cannot collapse the softmax.
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [S, D], items [C, D] (both unit length) -> [S, C]."""
        return (users @ items.T) * self.scale()


class PointwiseScorer(nn.Module):
    """MLP over [user, item, user * item] -> one logit per pair (trained with BCE, for re-ranking)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [S, D], items [S, C, D] -> logits [S, C]."""
        u = users.unsqueeze(1).expand_as(items)
        return self.mlp(torch.cat([u, items, u * items], dim=-1)).squeeze(-1)
