"""concat(sequence state, profile) -> normalization -> MLP -> L2-normalized user vector.

This is the seed's "merge the user profile, then normalize": the normalization puts the sequence
state and the profile vector on one scale before the MLP mixes them. Without a profile (ablation
or no profile features) the state alone goes through the same path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import FusionConfig


class Fusion(nn.Module):
    def __init__(self, state_dim: int, profile_dim: int, cfg: FusionConfig, out_dim: int):
        super().__init__()
        width = state_dim + profile_dim
        self.norm_kind = cfg.norm
        self.norm = nn.LayerNorm(width) if cfg.norm == "layernorm" else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, out_dim)
        )

    def forward(self, state: torch.Tensor, profile: torch.Tensor | None) -> torch.Tensor:
        """state [..., d], profile [..., p] or None -> user vectors [..., out_dim], unit length."""
        x = state if profile is None else torch.cat([state, profile], dim=-1)
        x = F.normalize(x, dim=-1) if self.norm_kind == "l2" else self.norm(x)
        return F.normalize(self.mlp(x), dim=-1)
