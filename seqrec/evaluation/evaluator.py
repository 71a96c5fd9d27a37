"""Evaluate any recommender on a split under a protocol: overall metrics, slices, per-user rows.

A recommender is anything with ``score_batch(batch) -> [B, n_items]`` (higher = better); batches
carry the EVAL_KEYS of seqrec/data/batch.py (user_idx, eval_target, history_items) plus whatever
the model reads. The evaluator never imports accelerate: distributed callers pass ``gather`` (for
example ``accelerator.gather_for_metrics``), which is applied to one small per-user tensor per
batch. Distributed samplers pad the last batch by repeating users, so results are de-duplicated
by user_idx before anything is averaged: every user counts exactly once.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from seqrec.config import ConfigError, EvalConfig
from seqrec.data.schema import DataError, PreparedData
from seqrec.evaluation.metrics import metric_names, metrics_from_ranks, target_ranks
from seqrec.evaluation.protocols import EvalSplit, Protocol, make_protocol

log = logging.getLogger(__name__)

Gather = Callable[[Tensor], Tensor]
# Columns of the per-user tensor that is gathered across processes.
_USER, _TARGET, _RANK, _OTHERS, _KEEP = range(5)


@dataclass
class EvalResult:
    split: str
    protocol: dict[str, Any]  # Protocol.describe()
    n_users: int
    metrics: dict[str, float]  # "hr@10", "ndcg@10", "mrr", "auc", ...
    slices: dict[str, dict[str, dict[str, float]]]  # family -> bucket -> {"users": n, metric: value}
    per_user: pd.DataFrame | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Overall metrics at the top level (``result["ndcg@10"]``), then the context."""
        return {
            **self.metrics,
            "split": self.split,
            "n_users": self.n_users,
            "protocol": self.protocol,
            "slices": self.slices,
        }


def length_bucket_labels(bounds: list[int]) -> list[str]:
    """[5, 10] -> ["1-5", "6-10", "11+"]."""
    labels, lo = [], 1
    for hi in bounds:
        labels.append(f"{lo}-{hi}" if hi > lo else str(hi))
        lo = hi + 1
    return [*labels, f"{lo}+"]


def _length_buckets(lengths: np.ndarray, bounds: list[int]) -> np.ndarray:
    """Bucket label per user; 0-length inputs get their own "0" bucket."""
    if any(b < 1 for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ConfigError(f"eval.length_buckets must be positive and strictly increasing, got {bounds}")
    labels = np.array(length_bucket_labels(bounds), dtype=object)
    out = labels[np.searchsorted(np.asarray(bounds), lengths, side="left")]
    out[lengths <= 0] = "0"
    return out


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for t in [*model.parameters(), *model.buffers()]:
            return t.device
    return torch.device("cpu")


class _Progress:
    """tqdm on a terminal; a log line every 30 s otherwise (SLURM logs stay readable)."""

    def __init__(self, total: int | None, desc: str, enabled: bool):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.desc, self.total = enabled, desc, total
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False) if self.tty else None
        self.done, self.last = 0, time.monotonic()

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled and time.monotonic() - self.last > 30:
            self.last = time.monotonic()
            log.info("%s: %d/%s batches", self.desc, self.done, self.total or "?")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def collect_ranks(
    model: Any,
    batches: Iterable[dict[str, Tensor]],
    protocol: Protocol,
    gather: Gather | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> np.ndarray:
    """[U, 4] int64 rows (user_idx, target item, rank, other candidates), one per distinct user."""
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    bar = _Progress(len(batches) if hasattr(batches, "__len__") else None, desc, progress)  # type: ignore[arg-type]
    parts: list[Tensor] = []
    try:
        for batch in batches:
            batch = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in batch.items()}
            scores = model.score_batch(batch).float()  # [B, N]
            ranking = protocol.rank_input(scores, batch)
            ranks, n_others = target_ranks(
                ranking.scores, ranking.target_col, ranking.exclude, ranking.exclude_cols
            )  # [B], [B]
            rows = torch.stack(
                [batch["user_idx"].long(), ranking.target_item.long(), ranks, n_others, ranking.keep.long()],
                dim=1,
            )  # [B, 5]
            if gather is not None:
                rows = gather(rows)  # [world * B, 5], may repeat users padded in by the sampler
            parts.append(rows.cpu())
            bar.update()
    finally:
        bar.close()
        if hasattr(model, "train"):
            model.train(was_training)
    if not parts:
        return np.zeros((0, 4), dtype=np.int64)
    rows_np = torch.cat(parts).numpy()
    rows_np = rows_np[rows_np[:, _KEEP] == 1]
    # Dedupe by user: np.unique keeps the first occurrence of each user_idx (sorted by user).
    _, first = np.unique(rows_np[:, _USER], return_index=True)
    return rows_np[first, :_KEEP]


def evaluate(
    model: Any,
    batches: Iterable[dict[str, Tensor]],
    data: PreparedData,
    split: EvalSplit,
    cfg: EvalConfig,
    protocol: Protocol | None = None,
    gather: Gather | None = None,
    device: torch.device | str | None = None,
    per_user: bool | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score every batch, rank each target under the protocol, and summarize.

    `protocol` defaults to ``make_protocol(cfg, data, split)``; pass one to reuse it (the sampled
    protocol reads its negatives file once). `per_user` defaults to ``cfg.per_user``.
    """
    protocol = protocol or make_protocol(cfg, data, split)
    start = time.perf_counter()
    rows = collect_ranks(model, batches, protocol, gather, device, progress, desc=f"evaluate {split}")
    if len(rows) == 0:
        raise DataError(f"no users were evaluated on the {split} split (no targets, or no batches)")
    users, targets = rows[:, _USER], rows[:, _TARGET]
    ranks, n_others = torch.from_numpy(rows[:, _RANK]), torch.from_numpy(rows[:, _OTHERS])
    values = {k: v.numpy() for k, v in metrics_from_ranks(ranks, cfg.ks, n_others).items()}  # name -> [U]
    names = metric_names(cfg.ks)

    lengths = data.users["valid_pos" if split == "valid" else "test_pos"].to_numpy()[users]  # input events
    cold = data.train_item_counts()[targets] == 0
    families = {
        "history_length": _length_buckets(lengths, list(cfg.length_buckets)),
        "target_item": np.where(cold, "cold", "warm"),
    }
    slices = {}
    for family, labels in families.items():
        order = (
            ["0", *length_bucket_labels(list(cfg.length_buckets))]
            if family == "history_length"
            else ["warm", "cold"]
        )
        slices[family] = {
            label: {"users": int(sel.sum()), **{n: float(values[n][sel].mean()) for n in names}}
            for label in order
            if (sel := labels == label).any()
        }
    result = EvalResult(
        split=split,
        protocol=protocol.describe(),
        n_users=len(users),
        metrics={n: float(values[n].mean()) for n in names},
        slices=slices,
    )
    if cfg.per_user if per_user is None else per_user:
        result.per_user = pd.DataFrame(
            {
                "user_idx": users,
                "user_id": data.users["user_id"].to_numpy()[users],
                "target_item": data.items["item_id"].to_numpy()[targets],
                "rank": rows[:, _RANK],
                "candidates": rows[:, _OTHERS] + 1,
                "history_length": lengths,
                "cold_target": cold,
                **{n: values[n] for n in names},
            }
        )
    log.info(
        "evaluated %d users on %s (%s) in %.1fs: %s",
        result.n_users,
        split,
        protocol.name,
        time.perf_counter() - start,
        ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k.startswith("ndcg") or k == "mrr"),
    )
    return result
