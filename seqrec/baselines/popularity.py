"""Most-popular baseline: every user gets the items bought/viewed most often in the training part.

Counts come from ``PreparedData.train_item_counts()`` (events before each user's ``train_end``),
so nothing from validation or test leaks in. History masking is the protocol's job, not the
model's. Items with equal counts are ordered by item index (lower first): a fixed, arbitrary
order like a stable sort. Without it the pessimistic tie rule would rank a target below every
item with the same count, which makes popularity look worse than any real popularity list is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from seqrec.baselines.folder import WEIGHTS_FILE, read_run_config, read_weights, write_run_config
from seqrec.config import RunConfig
from seqrec.data.schema import PreparedData, atomic_directory
from seqrec.errors import CheckpointError
from seqrec.manifest import seal_model_folder


class PopularityModel(nn.Module):
    counts: Tensor  # [N] long, training-part event counts
    item_scores: Tensor  # [N] float, N for the most popular item down to 1

    def __init__(self, counts: Tensor):
        super().__init__()
        counts = counts.long()
        self.register_buffer("counts", counts)  # [N] training counts
        # Strict order: by count descending, then item index ascending. score = N - place.
        n = len(counts)
        order = np.lexsort((np.arange(n), -counts.cpu().numpy()))  # most popular first
        scores = torch.empty(n, dtype=torch.float32)
        scores[torch.from_numpy(order)] = torch.arange(n, 0, -1, dtype=torch.float32)
        self.register_buffer("item_scores", scores)  # [N]

    @property
    def n_items(self) -> int:
        return len(self.counts)

    @classmethod
    def fit(cls, data: PreparedData) -> PopularityModel:
        return cls(torch.from_numpy(data.train_item_counts()))

    def score_batch(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, n_items]: the same popularity scores for every user (higher = more popular)."""
        b = batch["user_idx"].shape[0]
        return self.item_scores.unsqueeze(0).expand(b, -1)

    def top_items(self, k: int) -> Tensor:
        """The k most popular item indices, best first."""
        return torch.argsort(self.item_scores, descending=True)[:k]

    def save_pretrained(self, path: str | Path, run_config: RunConfig | None = None) -> None:
        """A folder with seqrec_config.json (train.model = popularity) and model.safetensors (counts)."""
        with atomic_directory(path, overwrite=True) as tmp:
            write_run_config(tmp, run_config, "popularity")
            save_file({"counts": self.counts.cpu().contiguous()}, str(tmp / WEIGHTS_FILE))
            seal_model_folder(tmp)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PopularityModel:
        path = Path(path)
        read_run_config(path, "popularity")
        tensors = read_weights(path)
        if "counts" not in tensors or tensors["counts"].dim() != 1:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: expected a 1-d 'counts' tensor")
        return cls(tensors["counts"])
