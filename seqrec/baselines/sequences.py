"""Item-ID sequences for the ID baselines (SASRec, popularity): map-style datasets and collation.

Batch keys (see seqrec/data/batch.py):

    input_items    [B, T]  long  item_idx + 1 (0 = padding), left padded, oldest first
    target_items   [B, T]  long  the next item + 1 at each position (0 = no target)      train
    user_idx       [B]     long                                                          eval
    eval_target    [B]     long  the held-out item_idx                                   eval
    history_items  [B, H]  long  every distinct item of the model input, -1 padded      eval

Leakage: training examples use only the user's training part ``[0, train_end)``; an evaluation
input for split s is ``[0, pos_s)`` and its target is the event at ``pos_s``. T is the batch's
longest input (at most ``max_len``), so short histories do not pay for padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seqrec.data.batch import PAD
from seqrec.data.schema import PreparedData

ItemSeq = dict[str, Any]


class TrainSequences(Dataset[ItemSeq]):
    """One example per user with >= 2 training events: every position predicts the next item."""

    def __init__(self, data: PreparedData, max_len: int, users: np.ndarray | None = None):
        self.data, self.max_len = data, max_len
        self.users = data.train_users(2) if users is None else np.asarray(users, dtype=np.int64)
        self.ends = data.users["train_end"].to_numpy()  # per-row pandas lookups are slow

    def __len__(self) -> int:
        return len(self.users)

    def owner_ranks(self, world: int) -> np.ndarray:
        """[len] the rank that owns each example's user (its training loop samples only its own)."""
        return self.data.owner_ranks(world)[self.users]

    def __getitem__(self, i: int) -> ItemSeq:
        u = int(self.users[i])
        items, _, _ = self.data.sequence(u)
        part = items[: self.ends[u]][-(self.max_len + 1) :]  # training part only
        return {"user_idx": u, "inputs": part[:-1], "targets": part[1:]}


class EvalSequences(Dataset[ItemSeq]):
    """One example per user with a target in `split`: input [0, pos), target the event at pos."""

    def __init__(self, data: PreparedData, split: str, max_len: int, users: np.ndarray | None = None):
        if split not in ("valid", "test"):
            raise ValueError(f"evaluation split must be valid or test, got {split!r}")
        self.data, self.split, self.max_len = data, split, max_len
        self.users = data.eval_users(split) if users is None else np.asarray(users, dtype=np.int64)  # type: ignore[arg-type]
        self.positions = data.users["valid_pos" if split == "valid" else "test_pos"].to_numpy()

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> ItemSeq:
        u = int(self.users[i])
        items, _, _ = self.data.sequence(u)
        end = int(self.positions[u])
        if end < 0:
            raise ValueError(f"user {u} has no {self.split} target")
        return {
            "user_idx": u,
            "inputs": items[max(0, end - self.max_len) : end],
            "target": int(items[end]),
            "history": np.unique(items[:end]),  # the whole input, not only the last max_len
        }


def _left_pad(seqs: list[np.ndarray], value: int, shift: int = 0) -> torch.Tensor:
    """[B, T] long: each sequence (+ shift) right-aligned, padded on the left with `value`."""
    width = max(max((len(s) for s in seqs), default=0), 1)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for b, s in enumerate(seqs):
        if len(s):
            out[b, width - len(s) :] = s
            out[b, width - len(s) :] += shift
    return torch.from_numpy(out)


def collate_train(examples: list[ItemSeq]) -> dict[str, torch.Tensor]:
    return {
        "user_idx": torch.tensor([e["user_idx"] for e in examples], dtype=torch.long),
        "input_items": _left_pad([e["inputs"] for e in examples], 0, shift=1),  # [B, T]
        "target_items": _left_pad([e["targets"] for e in examples], 0, shift=1),  # [B, T]
    }


def collate_eval(examples: list[ItemSeq]) -> dict[str, torch.Tensor]:
    history = [e["history"] for e in examples]
    hist = np.full((len(examples), max(max((len(h) for h in history), default=0), 1)), PAD, dtype=np.int64)
    for b, h in enumerate(history):
        hist[b, : len(h)] = h  # [B, H], right padded (order does not matter for masking)
    return {
        "user_idx": torch.tensor([e["user_idx"] for e in examples], dtype=torch.long),
        "eval_target": torch.tensor([e["target"] for e in examples], dtype=torch.long),
        "history_items": torch.from_numpy(hist),
        "input_items": _left_pad([e["inputs"] for e in examples], 0, shift=1),  # [B, T]
    }


def eval_loader(
    data: PreparedData, split: str, max_len: int, batch_size: int = 64, users: np.ndarray | None = None
) -> DataLoader:
    """Evaluation batches (EVAL_KEYS + input_items) for every user with a target in `split`, in order."""
    ds = EvalSequences(data, split, max_len, users)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_eval)


def train_loader(
    data: PreparedData, max_len: int, batch_size: int, seed: int = 0, shuffle: bool = True
) -> DataLoader:
    """Training batches over users' training parts (a plain loader; the training loop may build its own)."""
    g = torch.Generator().manual_seed(seed)
    ds = TrainSequences(data, max_len)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=collate_train)
