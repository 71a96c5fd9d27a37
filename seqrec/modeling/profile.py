"""Profile features -> one profile vector per user.

Categorical features (codes from the ProfileSpec vocabularies; code 0 = unknown / missing, which
gets its own learned embedding) are embedded, numeric features (already standardized on the
training part) are projected, and the concatenation is mapped to ``profile.dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from seqrec.config import ProfileConfig
from seqrec.data.schema import ProfileSpec


class ProfileEncoder(nn.Module):
    def __init__(self, spec: ProfileSpec, cfg: ProfileConfig):
        super().__init__()
        self.cat = nn.ModuleList([nn.Embedding(card, cfg.cat_dim) for card in spec.cardinalities])
        self.num = nn.Linear(spec.num_numeric, cfg.cat_dim) if spec.num_numeric else None
        width = cfg.cat_dim * (len(self.cat) + (1 if self.num is not None else 0))
        self.out = nn.Sequential(nn.Linear(width, cfg.dim), nn.GELU())
        self.dim = cfg.dim

    @staticmethod
    def has_features(spec: ProfileSpec) -> bool:
        return bool(spec.cardinalities) or spec.num_numeric > 0

    def forward(self, profile_cat: torch.Tensor, profile_num: torch.Tensor) -> torch.Tensor:
        """profile_cat [B, C] long, profile_num [B, F] float -> [B, profile.dim]."""
        parts = [emb(profile_cat[:, j]) for j, emb in enumerate(self.cat)]
        if self.num is not None:
            parts.append(self.num(profile_num))  # cast at the model boundary
        return self.out(torch.cat(parts, dim=-1))
