"""Item vectors from text features, learned IDs, or both.

* text: a projection of the item's backbone feature (cached for the catalogue, encoded live for a
  step's positives), so items never seen in training still get a vector from their text;
* id: a learned embedding per item (no backbone needed);
* hybrid: the sum of both. ``items.id_dropout`` drops an item's ID part in training, so the text
  part alone must also rank well, which is what cold items rely on; ``items.cold_ids=zero`` zeroes
  the ID part of items with no training event (their IDs were never trained), so they score from
  text alone. ``items.id_init=text_pca`` starts the ID table from the items' text (text_init.py).

Outputs are L2-normalized; scores are dot products divided by the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import ItemTowerConfig


class ItemTower(nn.Module):
    def __init__(
        self, n_items: int, feature_dim: int, cfg: ItemTowerConfig, dim: int, need_ids: bool = False
    ):
        super().__init__()
        self.mode = cfg.mode
        self.id_dropout = cfg.id_dropout
        self.text_proj = nn.Linear(feature_dim, dim) if self.uses_text else None
        self.cold_ids = cfg.cold_ids
        self.ids: nn.Embedding | None = None
        # cold_ids=zero: 1 = the item has training events (set_seen, from the training counts);
        # saved with the weights so a loaded model scores cold items the way training left them.
        self.seen: torch.Tensor | None
        self.register_buffer("seen", torch.ones(n_items) if self.cold_ids == "zero" else None)
        if self.uses_ids or need_ids:
            self.ids = nn.Embedding(n_items, dim)
            nn.init.normal_(self.ids.weight, std=0.02)

    def set_seen(self, train_item_counts: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen = (train_item_counts > 0).to(self.seen.device, self.seen.dtype)

    @property
    def uses_text(self) -> bool:
        return self.mode in ("text", "hybrid")

    @property
    def uses_ids(self) -> bool:
        return self.mode in ("id", "hybrid")

    def forward(self, item_idx: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """item_idx [M] long, features [M, H] (text/hybrid) -> item vectors [M, D], unit length."""
        parts = []
        if self.text_proj is not None:
            if features is None:
                raise ValueError(f"item tower mode {self.mode!r} needs item text features")
            parts.append(self.text_proj(features))
        if self.uses_ids:
            assert self.ids is not None
            ids = self.ids(item_idx)  # [M, D]
            if self.training and self.mode == "hybrid" and self.id_dropout > 0:
                keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.id_dropout
                ids = ids * keep.to(ids.dtype)
            if self.mode == "hybrid" and self.seen is not None:
                ids = ids * self.seen[item_idx].unsqueeze(-1).to(ids.dtype)
            parts.append(ids)
        return F.normalize(torch.stack(parts).sum(dim=0), dim=-1)
