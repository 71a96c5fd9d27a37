"""Evaluation on a fixed random sample of users (``eval.sample_users``), for very large data.

Full-catalogue ranking of a million users costs a million catalogue scans; a few tens of
thousands of users give metrics with a small standard error. The sample is drawn ONCE per
(data, split, size, seed) from the users with a target in the split and saved beside the data
(``eval_users_<split>_<n>_<seed>.json``, with the user ids and a hash of the data), so every model
and every later call is scored on the same users; a file that does not match the data is an error.
The report states the sample (size, seed, file). Applies to ``seqrec evaluate``; validation
during training has its own cap (``train.eval_max_users``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seqrec.config import ConfigError, EvalConfig
from seqrec.data.schema import DataError, PreparedData
from seqrec.evaluation.protocols import EvalSplit, Protocol, Ranking, _data_signature


def sample_path(folder: Path, split: EvalSplit, n: int, seed: int) -> Path:
    return folder / f"eval_users_{split}_{n}_{seed}.json"


def draw_users(data: PreparedData, split: EvalSplit, n: int, seed: int) -> np.ndarray:
    """n users (user_idx, ascending) drawn without replacement from those with a `split` target."""
    users = data.eval_users(split)
    if n >= len(users):
        return users
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=n, replace=False)).astype(np.int64)


def load_or_draw(
    data: PreparedData, split: EvalSplit, n: int, seed: int, folder: Path
) -> tuple[np.ndarray, Path]:
    path = sample_path(folder, split, n, seed)
    signature = _data_signature(data, split)
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("data_signature") != signature:
            raise DataError(
                f"{path}: this user sample was drawn for other data (signature mismatch); delete the file "
                "to draw a new one, or set eval.negatives_dir elsewhere"
            )
        ids = np.asarray(saved["user_ids"], dtype=object)
        lookup = {u: i for i, u in enumerate(data.users["user_id"].astype(str).tolist())}
        return np.asarray([lookup[str(u)] for u in ids], dtype=np.int64), path
    users = draw_users(data, split, n, seed)
    record = {
        "split": split,
        "n": n,
        "seed": seed,
        "data_signature": signature,
        "user_ids": data.users["user_id"].astype(str).to_numpy()[users].tolist(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return users, path


class UserSample(Protocol):
    """Another protocol restricted to a saved sample of users."""

    def __init__(self, inner: Protocol, users: np.ndarray, path: Path, seed: int):
        self.inner, self.sample, self.path, self.seed = inner, np.asarray(users, np.int64), path, seed
        self.name = inner.name

    def users(self) -> np.ndarray:
        inner = self.inner.users()
        return self.sample if inner is None else np.intersect1d(self.sample, inner)

    def rank_input(self, scores: Tensor, batch: dict[str, Tensor]) -> Ranking:
        ranking = self.inner.rank_input(scores, batch)
        member = np.isin(batch["user_idx"].cpu().numpy(), self.sample)
        keep = ranking.keep & torch.from_numpy(member).to(ranking.keep.device)
        return Ranking(
            ranking.scores,
            ranking.target_col,
            ranking.exclude,
            ranking.target_item,
            keep,
            ranking.exclude_cols,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **self.inner.describe(),
            "user_sample": {"users": len(self.sample), "seed": self.seed, "file": str(self.path)},
        }


def with_user_sample(
    protocol: Protocol, cfg: EvalConfig, data: PreparedData, split: EvalSplit, out_dir: Path | None = None
) -> Protocol:
    """`protocol` restricted to the saved sample when eval.sample_users > 0 (beside the data, like
    sampled negatives: eval.negatives_dir, else the prepared directory, else `out_dir`)."""
    if cfg.sample_users <= 0:
        return protocol
    folder = cfg.negatives_dir or data.path or out_dir
    if folder is None:
        raise ConfigError("eval.sample_users needs eval.negatives_dir (the data has no directory)")
    users, path = load_or_draw(data, split, cfg.sample_users, cfg.sample_seed, Path(folder))
    return UserSample(protocol, users, path, cfg.sample_seed)
