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


def build_feature_store(
    out: str | Path,
    windows: Sequence[tuple[int, Window]],
    window_texts: Callable[[Sequence[tuple[int, Window]]], list[str]],
    item_texts: list[str],
    encode_windows: EncodeFn,
    encode_items: EncodeFn,
    manifest: dict[str, Any],
    chunk: int = 2048,
) -> FeatureStore:
    """Encode `windows` (rendered by `window_texts`) and `item_texts` into a feature folder at `out`."""
    out = Path(out)
    partial = out.parent / f".{out.name}.partial"
    if (partial / "manifest.json").is_file():
        old = json.loads((partial / "manifest.json").read_text(encoding="utf-8"))
        if old != manifest:
            log.info("feature cache settings changed; discarding partial build in %s", partial)
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")

    texts = window_texts(windows)
    win_feats = _encode_chunked(texts, encode_windows, partial, "windows", chunk, "Encoding windows")
    item_feats = _encode_chunked(item_texts, encode_items, partial, "items", chunk, "Encoding items")
    dims = {"n_windows": len(texts), "n_items": len(item_texts), "dim": int(item_feats.shape[1])}

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
    return FeatureStore.load(out)
