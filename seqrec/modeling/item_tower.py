"""Item vectors from text features, learned IDs, or both.

* text: a projection of the item's backbone feature (cached for the catalogue, encoded live for a
  step's positives), so items never seen in training still get a vector from their text;
* id: a learned embedding per item (no backbone needed);
* hybrid: the sum of both. ``items.id_dropout`` drops an item's ID part in training, so the text
  part alone must also rank well, which is what cold items rely on; ``items.cold_ids=zero`` zeroes
  the ID part of items with no training event (their IDs were never trained), so they score from
  text alone. ``items.id_init=text_pca`` starts the ID table from the items' text (text_init.py).

* alphafuse (AlphaFuse, arXiv 2504.19218): the catalogue's frozen text features, centred and
  projected on their principal directions, each standardised to unit variance (whitened); the
  first D - ``items.null_dims`` coordinates are that frozen semantic part, and learned ID
  embeddings fill the remaining ``null_dims`` coordinates, orthogonal to it (the text's low-variance
  "null space", which carries little semantics). Nothing on the text side is trained: the basis is
  fitted once from the catalogue features (fit_text_basis) and saved with the weights.

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
        self.text_proj = nn.Linear(feature_dim, dim) if self.mode in ("text", "hybrid") else None
        self.cold_ids = cfg.cold_ids
        self.ids: nn.Embedding | None = None
        # cold_ids=zero: 1 = the item has training events (set_seen, from the training counts);
        # saved with the weights so a loaded model scores cold items the way training left them.
        self.seen: torch.Tensor | None
        self.register_buffer("seen", torch.ones(n_items) if self.cold_ids == "zero" else None)
        if self.mode == "alphafuse":
            if not 0 < cfg.null_dims < dim:
                raise ValueError(
                    f"items.null_dims must be in (0, {dim}) (model.head.dim), got {cfg.null_dims}"
                )
            self.semantic_dims = dim - cfg.null_dims
            # Fitted once from the catalogue's frozen features; saved with the weights.
            self.text_mean: torch.Tensor
            self.text_basis: torch.Tensor
            self.basis_fitted: torch.Tensor
            self.register_buffer("text_mean", torch.zeros(feature_dim))  # [H]
            self.register_buffer("text_basis", torch.zeros(feature_dim, self.semantic_dims))  # [H, D - n]
            self.register_buffer("basis_fitted", torch.zeros(()))  # 1 once fitted
            self.ids = nn.Embedding(n_items, cfg.null_dims)
            nn.init.normal_(self.ids.weight, std=0.02)
        elif self.uses_ids or need_ids:
            self.ids = nn.Embedding(n_items, dim)
            nn.init.normal_(self.ids.weight, std=0.02)

    def set_seen(self, train_item_counts: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen = (train_item_counts > 0).to(self.seen.device, self.seen.dtype)

    @property
    def uses_text(self) -> bool:
        return self.mode in ("text", "hybrid", "alphafuse")

    @property
    def uses_ids(self) -> bool:
        return self.mode in ("id", "hybrid", "alphafuse")

    def fit_text_basis(self, features: torch.Tensor) -> None:
        """alphafuse: the whitening projection of the catalogue's text features [n_items, H] on
        their top D - null_dims principal directions. A no-op once fitted (a loaded model keeps the
        basis it was trained with)."""
        if self.mode != "alphafuse" or bool(self.basis_fitted):
            return
        x = features.detach().double().cpu()
        mean = x.mean(dim=0)
        cov = (x - mean).T @ (x - mean) / max(x.shape[0] - 1, 1)  # [H, H]
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        k = min(self.semantic_dims, evals.shape[0])
        top = torch.argsort(evals, descending=True)[:k]
        basis = torch.zeros(x.shape[1], self.semantic_dims, dtype=torch.float64)
        basis[:, :k] = evecs[:, top] / evals[top].clamp(min=1e-12).sqrt()  # unit variance per direction
        self.text_mean.copy_(mean.to(self.text_mean.dtype))
        self.text_basis.copy_(basis.to(self.text_basis.dtype))
        self.basis_fitted.fill_(1.0)

    def _semantic(self, features: torch.Tensor) -> torch.Tensor:
        """alphafuse: [M, H] -> [M, D - null_dims] frozen, standardised text coordinates."""
        if not bool(self.basis_fitted):
            raise RuntimeError(
                "items.mode=alphafuse: the text basis is not fitted (no catalogue features set)"
            )
        return (features - self.text_mean.to(features.dtype)) @ self.text_basis.to(features.dtype)

    def _id_part(self, item_idx: torch.Tensor) -> torch.Tensor:
        """Learned ID vectors [M, width] with ID dropout (training) and cold IDs zeroed."""
        assert self.ids is not None
        ids = self.ids(item_idx)
        if self.training and self.mode in ("hybrid", "alphafuse") and self.id_dropout > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.id_dropout
            ids = ids * keep.to(ids.dtype)
        if self.mode in ("hybrid", "alphafuse") and self.seen is not None:
            ids = ids * self.seen[item_idx].unsqueeze(-1).to(ids.dtype)
        return ids

    def forward(self, item_idx: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """item_idx [M] long, features [M, H] (text/hybrid/alphafuse) -> item vectors [M, D], unit length."""
        if self.uses_text and features is None:
            raise ValueError(f"item tower mode {self.mode!r} needs item text features")
        if self.mode == "alphafuse":
            assert features is not None
            # [M, D - n] frozen semantics beside [M, n] learned IDs: orthogonal by construction.
            return F.normalize(torch.cat([self._semantic(features), self._id_part(item_idx)], dim=-1), dim=-1)
        parts = []
        if self.text_proj is not None:
            assert features is not None
            parts.append(self.text_proj(features))
        if self.uses_ids:
            parts.append(self._id_part(item_idx))  # [M, D]
        return F.normalize(torch.stack(parts).sum(dim=0), dim=-1)
