"""Cached window and item features for the two-stage ("head") mode.

The backbone (with or without tuned adapters) encodes every DISTINCT window text the training,
validation and test inputs use, and every item text, ONCE; the light aggregator, fusion and head
then train from these features in minutes on a CPU. Identical texts are encoded once across the
whole corpus (not per chunk): with one event per window and no date in the text, a window's text is
its item's text, so Beauty's ~200k windows cost its 12k item encodings. When windows and items are
encoded alike (same prefix and token limit, ``shared=True``), window and item texts are pooled too.

Layout of a feature folder::

    manifest.json          backbone, adapter, dims, window/text config, data fingerprint, counts
    windows.npy            [U, H] float32, one row per distinct window text (memory-mapped on load)
    windows_index.parquet  user_idx, start, end, row   (row into windows.npy; many windows -> 1 row)
    items.npy              [n_items, H] float32

The index is held as two int64 arrays (sorted composite keys and rows) and looked up with
``np.searchsorted``: no Python object per window. Building is resumable: encoded chunks of the
distinct texts are kept in ``.<name>.partial/`` and skipped when the build restarts.

With several processes every rank calls :func:`build_feature_store` with the same inputs: each
renders and deduplicates the texts (cheap, deterministic), encodes its contiguous share of the
distinct texts into a shard file, and rank 0 concatenates the shards in rank order (the rows one
process would write) and writes the folder; then every rank loads it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from seqrec.data.schema import DataError
from seqrec.data.windows import Window

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], torch.Tensor]  # texts -> [N, H]
NEEDED = ("manifest.json", "windows.npy", "windows_index.parquet", "items.npy")


class WindowIndex:
    """(user_idx, start, end) -> feature row, vectorised: sorted int64 keys + rows, searchsorted."""

    def __init__(self, user_idx: np.ndarray, start: np.ndarray, end: np.ndarray, row: np.ndarray):
        user_idx, start, end = (np.asarray(a, dtype=np.int64) for a in (user_idx, start, end))
        self.span_end = int(end.max()) + 1 if len(end) else 1
        self.span_start = (int(start.max()) + 1 if len(start) else 1) * self.span_end
        n_users = int(user_idx.max()) + 1 if len(user_idx) else 1
        if n_users * self.span_start >= 2**62:
            raise DataError("window index keys would overflow int64 (sequences too long for one key)")
        keys = self._keys(user_idx, start, end)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.rows_sorted = np.asarray(row, dtype=np.int64)[order]
        if len(self.keys) > 1 and (np.diff(self.keys) == 0).any():
            raise DataError("the window index has duplicate (user_idx, start, end) entries")

    def _keys(self, user_idx: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return user_idx * self.span_start + start * self.span_end + end

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, user_idx: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Rows for arrays of windows; -1 where a window is not in the index."""
        user_idx, start, end = (np.asarray(a, dtype=np.int64) for a in (user_idx, start, end))
        inside = (start < self.span_start // self.span_end) & (end < self.span_end) & (start >= 0)
        keys = self._keys(user_idx, np.where(inside, start, 0), np.where(inside, end, 0))
        at = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        found = inside & (len(self.keys) > 0)
        if len(self.keys):
            found &= self.keys[at] == keys
        return np.where(found, self.rows_sorted[at] if len(self.keys) else -1, -1)


@dataclass
class FeatureStore:
    windows: np.ndarray  # [U, H] float32, distinct window texts (a read-only memmap when loaded)
    items: torch.Tensor  # [n_items, H]
    index: WindowIndex
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.windows.shape[1] if self.windows.size else self.items.shape[1])

    @classmethod
    def from_keys(
        cls,
        windows: torch.Tensor | np.ndarray,
        items: torch.Tensor,
        keys: Sequence[tuple[int, int, int]],
        rows: Sequence[int] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> FeatureStore:
        """An in-memory store: window `keys[i]` = (user_idx, start, end) reads row `rows[i]` (default i)."""
        arr = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
        row = np.arange(len(arr)) if rows is None else np.asarray(rows, dtype=np.int64)
        feats = windows.numpy() if isinstance(windows, torch.Tensor) else np.asarray(windows)
        return cls(
            feats.astype(np.float32, copy=False), items, WindowIndex(arr[:, 0], arr[:, 1], arr[:, 2], row),
            manifest or {},
        )  # fmt: skip

    def rows(self, user_idx: int, windows: Sequence[Window]) -> list[int]:
        n = len(windows)
        found = self.index.lookup(
            np.full(n, user_idx), np.array([w.start for w in windows]), np.array([w.end for w in windows])
        )
        if (found < 0).any():
            w = windows[int(np.flatnonzero(found < 0)[0])]
            raise DataError(
                f"window {(user_idx, w.start, w.end)} (user_idx, start, end) is not in the feature cache "
                f"{self.manifest.get('path', '')}: it was built for another window config or split; "
                "rebuild it (seqrec train --stage head builds it when missing)"
            )
        return found.tolist()

    def gather(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """[len(rows), H] float32 window features (copied out of the memory map)."""
        idx = np.asarray(rows, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.windows[idx], dtype=np.float32))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStore:
        path = Path(path)
        missing = [n for n in NEEDED if not (path / n).is_file()]
        if missing:
            raise DataError(f"feature cache {path} is incomplete (missing {', '.join(missing)})")
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        windows = np.load(path / "windows.npy", mmap_mode="r")
        items = torch.from_numpy(np.load(path / "items.npy"))
        idx = pd.read_parquet(path / "windows_index.parquet")
        index = WindowIndex(
            idx["user_idx"].to_numpy(), idx["start"].to_numpy(), idx["end"].to_numpy(), idx["row"].to_numpy()
        )
        manifest["path"] = str(path)
        return cls(windows, items, index, manifest)


def _encode_chunked(
    texts: list[str], encode: EncodeFn, partial: Path, name: str, chunk: int, desc: str
) -> torch.Tensor:
    """Encode `texts` in chunks saved under `partial/` so an interrupted build resumes."""
    partial.mkdir(parents=True, exist_ok=True)
    parts = []
    n_chunks = (len(texts) + chunk - 1) // chunk
    with tqdm(total=len(texts), desc=desc, unit="text") as bar:
        for c in range(n_chunks):
            f = partial / f"{name}-{c:05d}.safetensors"
            if f.is_file():
                feats = load_file(str(f))["features"]
            else:
                feats = encode(texts[c * chunk : (c + 1) * chunk]).float().cpu().contiguous()
                tmp = f.with_suffix(".tmp")
                save_file({"features": feats}, str(tmp))
                tmp.rename(f)
            parts.append(feats)
            bar.update(feats.shape[0])
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def dedupe_texts(texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct): texts[i] == distinct[codes[i]]; distinct in order of first occurrence
    (a hash table over the whole list, so identical texts anywhere in the corpus share one row)."""
    codes, uniques = pd.factorize(pd.Series(list(texts), dtype=object), sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def _share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [lo, hi) share of n rows for `rank` (sizes differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


def _shard_path(partial: Path, name: str, rank: int, world: int) -> Path:
    return partial / f"{name}-shard-{rank}-of-{world}.safetensors"


def _encode_share(
    texts: list[str], encode: EncodeFn, partial: Path, name: str, chunk: int, desc: str, rank: int, world: int
) -> None:
    """Encode this rank's share of `texts` (resumable chunks) into its shard file."""
    lo, hi = _share(len(texts), rank, world)
    feats = _encode_chunked(texts[lo:hi], encode, partial, f"{name}-of{world}-r{rank}", chunk, desc)
    log.info("rank %d of %d encoded its share of %s: %d of %d texts", rank, world, name, hi - lo, len(texts))
    shard = _shard_path(partial, name, rank, world)
    save_file({"features": feats.contiguous()}, str(shard.with_suffix(".tmp")))
    shard.with_suffix(".tmp").rename(shard)


def _merged(partial: Path, name: str, world: int, expected: int) -> torch.Tensor:
    """The shards of `name` concatenated in rank order: [expected, H]."""
    parts = [load_file(str(_shard_path(partial, name, r, world)))["features"] for r in range(world)]
    parts = [p for p in parts if p.numel()]  # a rank with an empty share wrote [0, 0]
    feats = torch.cat(parts) if parts else torch.zeros(0, 0)
    if feats.shape[0] != expected:
        raise DataError(
            f"merged feature shards of {name} hold {feats.shape[0]} rows, expected {expected} "
            f"(shards of an interrupted build? delete {partial})"
        )
    return feats


def build_feature_store(
    out: str | Path,
    windows: Sequence[tuple[int, Window]],
    window_texts: Callable[[Sequence[tuple[int, Window]]], list[str]],
    item_texts: list[str],
    encode_windows: EncodeFn,
    encode_items: EncodeFn,
    manifest: dict[str, Any],
    chunk: int = 2048,
    shared: bool = False,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> FeatureStore:
    """Encode the distinct texts of `windows` (rendered by `window_texts`) and `item_texts` into a
    feature folder at `out`. ``shared=True`` says windows and items are encoded alike, so their
    texts are pooled and each distinct text is encoded once (with ``encode_windows``).

    With several processes, call it on EVERY rank with the same inputs (see the module docstring);
    `barrier` (e.g. ``accelerator.wait_for_everyone``) separates the phases, so no rank waits longer
    than the slowest rank's share.
    """
    out = Path(out)
    partial = out.parent / f".{out.name}.partial"
    if rank == 0:
        if (partial / "manifest.json").is_file():
            old = json.loads((partial / "manifest.json").read_text(encoding="utf-8"))
            if old != manifest:
                log.info("feature cache settings changed; discarding partial build in %s", partial)
                shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    barrier()

    t0 = time.perf_counter()
    texts = window_texts(windows)
    if shared:
        codes, distinct = dedupe_texts([*texts, *item_texts])
        jobs = [("texts", distinct, encode_windows, "Encoding distinct texts")]
    else:
        win_rows, distinct = dedupe_texts(texts)
        jobs = [
            ("windows", distinct, encode_windows, "Encoding windows"),
            ("items", item_texts, encode_items, "Encoding items"),
        ]
    for name, job_texts, encode, desc in jobs:
        _encode_share(job_texts, encode, partial, name, chunk, desc, rank, world)
    barrier()
    if rank == 0:
        feats = {name: _merged(partial, name, world, len(job_texts)) for name, job_texts, _, _ in jobs}
        if shared:
            win_codes, item_codes = codes[: len(texts)], codes[len(texts) :]
            used, win_rows = np.unique(win_codes, return_inverse=True)
            win_feats = feats["texts"][torch.from_numpy(used)]
            item_feats = feats["texts"][torch.from_numpy(item_codes)]
        else:
            win_feats, item_feats = feats["windows"], feats["items"]
        dims = {
            "n_windows": len(texts),
            "n_window_texts": int(win_feats.shape[0]),
            "n_items": len(item_texts),
            "dim": int(item_feats.shape[1]),
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        log.info(
            "feature cache: %d windows -> %d distinct window texts, %d items, %.0f s",
            len(texts), dims["n_window_texts"], len(item_texts), dims["build_seconds"],
        )  # fmt: skip
        _write_store(out, partial, windows, win_rows, win_feats, item_feats, {**manifest, **dims})
    barrier()
    return FeatureStore.load(out)


def _write_store(
    out: Path,
    partial: Path,
    windows: Sequence[tuple[int, Window]],
    win_rows: np.ndarray,
    win_feats: torch.Tensor,
    item_feats: torch.Tensor,
    manifest: dict[str, Any],
) -> None:
    """Write the feature folder atomically (a temporary folder renamed over `out`)."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "windows.npy", win_feats.numpy().astype(np.float32))
    np.save(tmp / "items.npy", item_feats.numpy().astype(np.float32))
    pd.DataFrame(
        {
            "user_idx": np.array([u for u, _ in windows], dtype=np.int64),
            "start": np.array([w.start for _, w in windows], dtype=np.int64),
            "end": np.array([w.end for _, w in windows], dtype=np.int64),
            "row": np.asarray(win_rows, dtype=np.int64),
        }
    ).to_parquet(tmp / "windows_index.parquet", index=False)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    shutil.rmtree(partial, ignore_errors=True)
