"""Evaluation protocols: which candidates compete with the held-out target.

Every protocol turns a model's scores over the whole catalogue ``[B, n_items]`` into a ranking
problem (:class:`Ranking`) that :func:`seqrec.evaluation.metrics.target_ranks` solves:

* ``full`` (the default, as HSTU, HLLM and RecBole report): the whole catalogue competes; the
  items of the user's model input (history) are masked, because recommending what the user just
  had is trivial and usually filtered in production. The target is never masked, even when the
  same item also occurs in the history (repeat purchases are real targets).
* ``sampled`` ("legacy, sampled"): the target against a FIXED set of ``num_negatives`` negatives
  per user, drawn once with ``negatives_seed`` (uniformly, or by training popularity) from the
  items the user never interacted with, and saved to a file that every later call reuses. Sampled
  metrics are only comparable between runs on the same file; they overstate quality and can
  reorder models (Krichene & Rendle, 2020), hence "legacy".
* ``candidates``: a user-supplied JSONL file, one line per user:
  ``{"user_id": "U1", "target": "I7", "candidates": ["I7", "I3", ...]}``; the listed candidates
  are ranked as given (no masking). The model input is still the user's input for the split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from seqrec.config import ConfigError, EvalConfig
from seqrec.data.schema import DataError, PreparedData

log = logging.getLogger(__name__)

EvalSplit = Literal["valid", "test"]
TIE_RULE = "pessimistic: candidates scoring equal to the target rank above it"


@dataclass
class Ranking:
    """One batch as a ranking problem over C candidates per user."""

    scores: Tensor  # [B, C] float, higher = better
    target_col: Tensor  # [B] long, column of the target in `scores`
    exclude: Tensor | None  # [B, C] bool, True = not a candidate (masked or padding)
    target_item: Tensor  # [B] long, item_idx of the target (for cold-item slices and per-user rows)
    keep: Tensor  # [B] bool, False = user not evaluated under this protocol (e.g. not in the file)
    exclude_cols: Tensor | None = None  # [B, H] long, masked columns as a list (-1 = padding)


class Protocol(ABC):
    """Chooses the competing candidates for each user of an evaluation batch."""

    name: str

    @abstractmethod
    def rank_input(self, scores: Tensor, batch: dict[str, Tensor]) -> Ranking:
        """scores [B, n_items] from the model, batch with EVAL_KEYS -> the ranking problem."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What a report must state to make the numbers reproducible."""

    def users(self) -> np.ndarray | None:
        """Users this protocol evaluates (user_idx, ascending); None = every user of the split."""
        return None


# --------------------------------------------------------------------------------------------
# full: the whole catalogue, history masked
# --------------------------------------------------------------------------------------------


def history_mask(history: Tensor, n_items: int) -> Tensor:
    """[B, H] item indices (-1 padded) -> [B, n_items] bool, True where the item is in the history."""
    b = history.shape[0]
    # Padding writes into an extra dummy column so it can never clear a real item's mark.
    idx = torch.where(history >= 0, history, torch.full_like(history, n_items))  # [B, H]
    mask = torch.zeros(b, n_items + 1, dtype=torch.bool, device=history.device)
    mask.scatter_(1, idx, True)
    return mask[:, :n_items]


class FullRanking(Protocol):
    name = "full"

    def __init__(self, mask_history: bool = True):
        self.mask_history = mask_history

    def rank_input(self, scores: Tensor, batch: dict[str, Tensor]) -> Ranking:
        target = batch["eval_target"].to(scores.device).long()  # [B]
        # The history stays a [B, H] list: target_ranks subtracts it without a [B, n_items] mask
        # and never masks the target, even when it also occurs in the history.
        history = batch["history_items"].to(scores.device).long() if self.mask_history else None
        keep = torch.ones_like(target, dtype=torch.bool)
        return Ranking(scores, target, None, target, keep, exclude_cols=history)

    def describe(self) -> dict[str, Any]:
        return {
            "protocol": "full",
            "label": "full ranking over the catalogue",
            "candidates": "all items",
            "masking": "items of the user's input history (never the target)"
            if self.mask_history
            else "none",
            "tie_rule": TIE_RULE,
        }


# --------------------------------------------------------------------------------------------
# sampled: fixed, saved negatives ("legacy, sampled")
# --------------------------------------------------------------------------------------------

Sampler = Literal["uniform", "popularity"]


def negatives_path(folder: Path, split: EvalSplit, n: int, seed: int, sampler: Sampler) -> Path:
    suffix = "" if sampler == "uniform" else f"_{sampler}"
    return folder / f"negatives_{split}_{n}_{seed}{suffix}.npz"


def _data_signature(data: PreparedData, split: EvalSplit) -> str:
    """Hash of everything the negatives depend on: sequences, split positions, catalogue size."""
    h = hashlib.sha256()
    h.update(f"{data.n_users}:{data.n_items}:{data.n_events}:{split}".encode())
    h.update(np.ascontiguousarray(data.seq_items, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(data.offsets, dtype=np.int64).tobytes())
    col = "valid_pos" if split == "valid" else "test_pos"
    h.update(np.ascontiguousarray(data.users[col].to_numpy(), dtype=np.int64).tobytes())
    return h.hexdigest()


def _draw_one(
    rng: np.random.Generator, n: int, seen: set[int], n_items: int, cdf: np.ndarray | None
) -> np.ndarray:
    """n distinct items not in `seen` (by `cdf` when given, else uniform); -1 padded if too few exist.

    Rejection first (cheap when a user's items are a small part of the catalogue), then an exact
    draw from the complement for the rare users who own most of the probability mass.
    """
    got: list[int] = []
    taken: set[int] = set()
    for _ in range(4):
        need = n - len(got)
        size = 2 * need + 8
        if cdf is None:
            draw = rng.integers(0, n_items, size)
        else:
            draw = np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), n_items - 1)
        for i in draw.tolist():
            if i not in seen and i not in taken:
                got.append(i)
                taken.add(i)
                if len(got) == n:
                    return np.asarray(got, dtype=np.int32)
    rest = np.setdiff1d(np.arange(n_items), np.fromiter(seen | taken, dtype=np.int64))
    need = n - len(got)
    if cdf is not None:
        w = np.diff(cdf, prepend=0.0)[rest]
        positive = rest[w > 0]
        if len(positive) >= need:
            extra = rng.choice(positive, size=need, replace=False, p=w[w > 0] / w[w > 0].sum())
        else:  # too few items with any training count: take them all, fill uniformly
            zero = rest[w <= 0]
            extra = np.concatenate([positive, rng.permutation(zero)[: need - len(positive)]])
    else:
        extra = rng.permutation(rest)[:need]
    out = np.full(n, -1, dtype=np.int32)
    picked = np.concatenate([np.asarray(got, dtype=np.int64), extra.astype(np.int64)])
    out[: len(picked)] = picked
    return out


def draw_negatives(data: PreparedData, split: EvalSplit, n: int, seed: int, sampler: Sampler) -> np.ndarray:
    """[n_users, n] int32 negatives (-1 = none) for the users with a target in `split`.

    Negatives come from the items NOT in the user's whole sequence (train, valid and test parts),
    so no negative is ever a true positive of that user.
    """
    rng = np.random.default_rng(seed)
    cdf = None
    if sampler == "popularity":
        cdf = np.cumsum(data.train_item_counts().astype(np.float64))
        if cdf[-1] <= 0:
            raise DataError("popularity negatives need training events; the training part is empty")
    out = np.full((data.n_users, n), -1, dtype=np.int32)
    for u in data.eval_users(split).tolist():
        items, _, _ = data.sequence(u)
        out[u] = _draw_one(rng, n, set(items.tolist()), data.n_items, cdf)
    return out


class SampledRanking(Protocol):
    name = "sampled"

    def __init__(self, negatives: np.ndarray, path: Path, info: dict[str, Any]):
        self.negatives = torch.from_numpy(negatives.astype(np.int64))  # [n_users, n]
        self.path = path
        self.info = info

    @classmethod
    def load_or_create(
        cls, data: PreparedData, split: EvalSplit, n: int, seed: int, sampler: Sampler, folder: Path
    ) -> SampledRanking:
        """Reuse the saved negatives for (split, n, seed, sampler) in `folder`, drawing them once if absent."""
        if n < 1:
            raise ConfigError(f"eval.num_negatives must be >= 1, got {n}")
        path = negatives_path(folder, split, n, seed, sampler)
        signature = _data_signature(data, split)
        info = {
            "split": split,
            "num_negatives": n,
            "seed": seed,
            "sampler": sampler,
            "data_signature": signature,
        }
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                saved = json.loads(str(z["info"]))
                negatives = z["negatives"]
            if saved != info or negatives.shape != (data.n_users, n):
                raise DataError(
                    f"{path}: these negatives were drawn for other data or settings ({saved}); "
                    "delete the file to draw new ones, or set eval.negatives_dir elsewhere"
                )
            log.info("sampled protocol: reusing %s", path)
            return cls(negatives, path, info)
        log.info("sampled protocol: drawing %d %s negatives per user (seed %d)", n, sampler, seed)
        negatives = draw_negatives(data, split, n, seed, sampler)
        folder.mkdir(parents=True, exist_ok=True)
        # Written to a temporary file and renamed, so a crash never leaves a truncated file behind.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, negatives=negatives, info=np.array(json.dumps(info)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("sampled protocol: saved negatives to %s", path)
        return cls(negatives, path, info)

    def rank_input(self, scores: Tensor, batch: dict[str, Tensor]) -> Ranking:
        target = batch["eval_target"].to(scores.device).long()  # [B]
        negs = self.negatives[batch["user_idx"].cpu().long()].to(scores.device)  # [B, n]
        cands = torch.cat([target.unsqueeze(1), negs], dim=1)  # [B, 1 + n], target in column 0
        cand_scores = scores.gather(1, cands.clamp(min=0))  # [B, 1 + n]
        col = torch.zeros_like(target)
        keep = torch.ones_like(target, dtype=torch.bool)
        return Ranking(cand_scores, col, cands < 0, target, keep)

    def describe(self) -> dict[str, Any]:
        return {
            "protocol": "sampled",
            "label": "legacy, sampled",
            "candidates": f"target + {self.info['num_negatives']} fixed {self.info['sampler']} negatives per user "
            f"(seed {self.info['seed']}), never items of the user's sequence",
            "masking": "none needed (negatives exclude the user's items)",
            "tie_rule": TIE_RULE,
            "negatives_file": str(self.path),
        }


# --------------------------------------------------------------------------------------------
# candidates: a user-supplied file
# --------------------------------------------------------------------------------------------


class CandidateFile(Protocol):
    name = "candidates"

    def __init__(self, path: Path, user_rows: np.ndarray, cands: np.ndarray, target_cols: np.ndarray):
        self.path = path
        self.user_rows = torch.from_numpy(user_rows)  # [n_users] long, row in `cands` or -1
        self.cands = torch.from_numpy(cands)  # [R, Cmax] long item_idx, -1 padded
        self.target_cols = torch.from_numpy(target_cols)  # [R] long

    @classmethod
    def load(cls, path: str | Path, data: PreparedData, split: EvalSplit) -> CandidateFile:
        """Read and validate the JSONL file; every error names the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"candidates file not found: {path}")
        user_index = {str(u): i for i, u in enumerate(data.users["user_id"].tolist())}
        item_index = {str(it): i for i, it in enumerate(data.items["item_id"].tolist())}
        split_pos = data.users["valid_pos" if split == "valid" else "test_pos"].to_numpy()
        rows: dict[int, tuple[list[int], int]] = {}
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                u, cand_idx, col = cls._parse_line(line, where, user_index, item_index)
                if u in rows:
                    raise DataError(
                        f"{where}: user {data.users['user_id'].iloc[u]!r} already listed on an earlier line"
                    )
                if split_pos[u] < 0:
                    raise DataError(
                        f"{where}: user {data.users['user_id'].iloc[u]!r} has no {split} input in {data.path}"
                    )
                rows[u] = (cand_idx, col)
        if not rows:
            raise DataError(f"{path}: no candidate lines")
        users = sorted(rows)
        width = max(len(rows[u][0]) for u in users)
        cands = np.full((len(users), width), -1, dtype=np.int64)
        cols = np.zeros(len(users), dtype=np.int64)
        user_rows = np.full(data.n_users, -1, dtype=np.int64)
        for r, u in enumerate(users):
            c, col = rows[u]
            cands[r, : len(c)] = c
            cols[r] = col
            user_rows[u] = r
        return cls(path, user_rows, cands, cols)

    @staticmethod
    def _parse_line(
        line: str, where: str, user_index: dict[str, int], item_index: dict[str, int]
    ) -> tuple[int, list[int], int]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict) or not {"user_id", "target", "candidates"} <= rec.keys():
            raise DataError(f'{where}: expected {{"user_id": ..., "target": ..., "candidates": [...]}}')
        user_id, target = str(rec["user_id"]), str(rec["target"])
        cands = rec["candidates"]
        if not isinstance(cands, list) or not cands:
            raise DataError(f"{where}: 'candidates' must be a non-empty list of item ids")
        if user_id not in user_index:
            raise DataError(f"{where}: unknown user_id {user_id!r}")
        ids = [str(c) for c in cands]
        unknown = [c for c in ids if c not in item_index]
        if target not in item_index:
            unknown.insert(0, target)
        if unknown:
            raise DataError(f"{where}: unknown item_id(s) {unknown[:5]}")
        if len(set(ids)) != len(ids):
            dup = sorted({c for c in ids if ids.count(c) > 1})
            raise DataError(f"{where}: duplicate candidate(s) {dup[:5]}")
        if target not in ids:
            raise DataError(f"{where}: target {target!r} is not among the candidates")
        return user_index[user_id], [item_index[c] for c in ids], ids.index(target)

    def users(self) -> np.ndarray:
        return np.flatnonzero(self.user_rows.numpy() >= 0).astype(np.int64)

    def rank_input(self, scores: Tensor, batch: dict[str, Tensor]) -> Ranking:
        rows = self.user_rows[batch["user_idx"].cpu().long()]  # [B], -1 = not in the file
        keep = rows >= 0
        rows = rows.clamp(min=0)
        cands = self.cands[rows].to(scores.device)  # [B, Cmax]
        cols = self.target_cols[rows].to(scores.device)  # [B]
        cand_scores = scores.gather(1, cands.clamp(min=0))  # [B, Cmax]
        target_item = cands.gather(1, cols.unsqueeze(1)).squeeze(1)  # [B]
        return Ranking(cand_scores, cols, cands < 0, target_item, keep.to(scores.device))

    def describe(self) -> dict[str, Any]:
        return {
            "protocol": "candidates",
            "label": "user-supplied candidates",
            "candidates": f"as listed in {self.path} (targets from the file)",
            "masking": "none (candidates ranked as given)",
            "tie_rule": TIE_RULE,
            "candidates_file": str(self.path),
        }


def make_protocol(
    cfg: EvalConfig, data: PreparedData, split: EvalSplit, out_dir: Path | None = None
) -> Protocol:
    """The protocol `cfg.protocol` for `split`. Sampled negatives live in eval.negatives_dir, else
    beside the prepared data (so every model is scored on the same file), else in `out_dir`."""
    if cfg.protocol == "full":
        return FullRanking(cfg.mask_history)
    if cfg.protocol == "sampled":
        folder = cfg.negatives_dir or data.path or out_dir
        if folder is None:
            raise ConfigError("eval.protocol=sampled needs eval.negatives_dir (the data has no directory)")
        return SampledRanking.load_or_create(
            data, split, cfg.num_negatives, cfg.negatives_seed, cfg.negatives_sampler, Path(folder)
        )
    if cfg.protocol == "candidates":
        if not cfg.candidates_file:
            raise ConfigError("eval.protocol=candidates needs eval.candidates_file")
        return CandidateFile.load(cfg.candidates_file, data, split)
    raise ConfigError(f"eval.protocol: unknown protocol {cfg.protocol!r}")
