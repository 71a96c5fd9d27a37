"""Cached window and item features for the two-stage ("head") mode.

The backbone (with or without tuned adapters) encodes every window the training, validation and
test inputs use, and every item text, ONCE; the light aggregator, fusion and head then train from
these features in minutes on a CPU. Layout of a feature folder::

    manifest.json            backbone, adapter, dims, window/text config, data fingerprint
    windows.safetensors      {"features": [N, H] float32}
    windows_index.parquet    user_idx, start, end, row   (row into windows.safetensors)
    items.safetensors        {"features": [n_items, H] float32}

Building is resumable: encoded chunks are kept in ``.partial/`` and skipped when the build restarts.
"""

from __future__ import annotations

import json
import logging
import shutil
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


@dataclass
class FeatureStore:
    windows: torch.Tensor  # [N, H]
    items: torch.Tensor  # [n_items, H]
    index: dict[tuple[int, int, int], int]
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.windows.shape[1] if self.windows.numel() else self.items.shape[1])

    def rows(self, user_idx: int, windows: Sequence[Window]) -> list[int]:
        try:
            return [self.index[(user_idx, w.start, w.end)] for w in windows]
        except KeyError as e:
            raise DataError(
                f"window {e.args[0]} (user_idx, start, end) is not in the feature cache "
                f"{self.manifest.get('path', '')}: it was built for another window config or split; "
                "rebuild it (seqrec train --stage head builds it when missing)"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> FeatureStore:
        path = Path(path)
        needed = ["manifest.json", "windows.safetensors", "windows_index.parquet", "items.safetensors"]
        missing = [n for n in needed if not (path / n).is_file()]
        if missing:
            raise DataError(f"feature cache {path} is incomplete (missing {', '.join(missing)})")
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        windows = load_file(str(path / "windows.safetensors"))["features"]
        items = load_file(str(path / "items.safetensors"))["features"]
        idx = pd.read_parquet(path / "windows_index.parquet")
        index = {
            (int(u), int(s), int(e)): int(r)
            for u, s, e, r in zip(idx["user_idx"], idx["start"], idx["end"], idx["row"])
        }
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


def _share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [lo, hi) share of n rows for `rank` (sizes differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


def build_feature_store(
    out: str | Path,
    windows: Sequence[tuple[int, Window]],
    window_texts: Callable[[Sequence[tuple[int, Window]]], list[str]],
    item_texts: list[str],
    encode_windows: EncodeFn,
    encode_items: EncodeFn,
    manifest: dict[str, Any],
    chunk: int = 2048,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> FeatureStore:
    """Encode `windows` (rendered by `window_texts`) and `item_texts` into a feature folder at `out`.

    With several processes, call it on EVERY rank with the same inputs: each rank encodes its
    contiguous share of the windows and of the items into ``shard-<rank>-of-<world>`` files, then
    rank 0 concatenates the shards in rank order (the same rows as one process would write) and
    every rank loads the result. `barrier` (e.g. ``accelerator.wait_for_everyone``) separates the
    phases, so no rank waits longer than the slowest rank's share.
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

    tag = f"of{world}-r{rank}"
    lo, hi = _share(len(windows), rank, world)
    texts = window_texts(windows[lo:hi])
    own_windows = _encode_chunked(texts, encode_windows, partial, f"windows-{tag}", chunk, "Encoding windows")
    lo, hi = _share(len(item_texts), rank, world)
    own_items = _encode_chunked(
        item_texts[lo:hi], encode_items, partial, f"items-{tag}", chunk, "Encoding items"
    )
    log.info(
        "rank %d of %d encoded its share: %d of %d windows, %d of %d items",
        rank,
        world,
        own_windows.shape[0],
        len(windows),
        own_items.shape[0],
        len(item_texts),
    )
    for name, feats in (("windows", own_windows), ("items", own_items)):
        shard = partial / f"{name}-shard-{rank}-of-{world}.safetensors"
        save_file({"features": feats.contiguous()}, str(shard.with_suffix(".tmp")))
        shard.with_suffix(".tmp").rename(shard)
    barrier()
    if rank == 0:
        _merge_shards(out, partial, windows, len(item_texts), world, manifest)
    barrier()
    return FeatureStore.load(out)


def _merge_shards(
    out: Path,
    partial: Path,
    windows: Sequence[tuple[int, Window]],
    n_items: int,
    world: int,
    manifest: dict[str, Any],
) -> None:
    def merged(name: str) -> torch.Tensor:
        parts = [
            load_file(str(partial / f"{name}-shard-{r}-of-{world}.safetensors"))["features"]
            for r in range(world)
        ]
        parts = [p for p in parts if p.numel()]  # a rank with an empty share wrote [0, 0]
        return torch.cat(parts) if parts else torch.zeros(0, 0)

    win_feats, item_feats = merged("windows"), merged("items")
    if win_feats.shape[0] != len(windows) or item_feats.shape[0] != n_items:
        raise DataError(
            f"merged feature shards hold {win_feats.shape[0]} windows and {item_feats.shape[0]} items, "
            f"expected {len(windows)} and {n_items} (shards of an interrupted build? delete {partial})"
        )
    dims = {"n_windows": len(windows), "n_items": n_items, "dim": int(item_feats.shape[1])}

    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({"features": win_feats}, str(tmp / "windows.safetensors"))
    save_file({"features": item_feats}, str(tmp / "items.safetensors"))
    pd.DataFrame(
        {
            "user_idx": np.array([u for u, _ in windows], dtype=np.int64),
            "start": np.array([w.start for _, w in windows], dtype=np.int64),
            "end": np.array([w.end for _, w in windows], dtype=np.int64),
            "row": np.arange(len(windows), dtype=np.int64),
        }
    ).to_parquet(tmp / "windows_index.parquet", index=False)
    (tmp / "manifest.json").write_text(
        json.dumps({**manifest, **dims}, indent=2, default=str), encoding="utf-8"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    shutil.rmtree(partial, ignore_errors=True)
