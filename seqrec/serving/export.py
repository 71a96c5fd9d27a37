"""Export item and user embeddings for retrieval (``seqrec export``).

Output folder::

    manifest.json     model (folder, base, fingerprint), data (folder, fingerprint), dim,
                      normalization "l2", temperature, counts, index, created
    items.parquet     item_id: string, vector: list<float32>     (catalogue order)
    items.npy         [n_items, D] float32, the same rows
    users.parquet     user_id: string, vector: list<float32>
    users.npy         [n_users, D] float32, the same rows
    items.faiss       exact inner-product index over items (only with --faiss and faiss-cpu)

Vectors are unit length, so a retrieval score is ``dot(user, item) / temperature`` (the model's own
score) and an inner-product index ranks exactly like the model. User vectors come from the
"serve" view: the user's WHOLE history, no target held out.

Large catalogues are exported in chunks: each finished chunk is saved under
``.<out>.partial/`` beside the output, and a rerun after a crash or Ctrl-C skips finished chunks
(as long as model, data, users and chunk size are unchanged). The final folder is written to a
temporary directory and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.schema import DataError, PreparedData, atomic_directory
from seqrec.errors import CheckpointError
from seqrec.modeling.encoder import pad_token_lists

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS_NPY, USERS_NPY = "items.npy", "users.npy"
ITEMS_PARQUET, USERS_PARQUET = "items.parquet", "users.parquet"
FAISS_FILE = "items.faiss"
# Files whose bytes define a saved model's outputs (hashed into the model fingerprint).
MODEL_FILES = (
    "seqrec_model.json",
    "seqrec_config.json",
    "head.safetensors",
    "adapter_model.safetensors",
    "model.safetensors",  # a SASRec folder's weights
)


@dataclass
class ExportResult:
    out: Path
    n_items: int
    n_users: int
    dim: int
    seconds: float
    items_per_s: float  # rows encoded in this run / time; 0 when every chunk was resumed
    users_per_s: float
    index: str  # "faiss IndexFlatIP (items.faiss)" or "exact search (...)"

    def summary(self) -> str:
        def rate(value: float) -> str:
            return f"{value:,.1f}/s" if value > 0 else "resumed from saved chunks"

        return (
            f"exported {self.n_items:,} items ({rate(self.items_per_s)}) and {self.n_users:,} users "
            f"({rate(self.users_per_s)}), dim {self.dim}, to {self.out} in {self.seconds:.1f} s; "
            f"index: {self.index}"
        )


# ---- identities of model, data and user lists ----------------------------------------------------


def model_fingerprint(folder: str | Path) -> str:
    """Hash of the files that define a saved model's outputs (adapter, head, config, metadata)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in MODEL_FILES:
        path = folder / name
        if path.is_file():
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    backbone = folder / "backbone"
    if backbone.is_dir():  # full fine-tuning: the weights live here
        for path in sorted(backbone.glob("*.safetensors")):
            h.update(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def select_users(data: PreparedData, users: str | Path | None) -> np.ndarray:
    """user_idx to export: every user with at least one event (None or "all"), or the user ids
    listed one per line in a file (blank lines and #-comments skipped)."""
    lengths = np.diff(data.offsets)
    if users is None or str(users) == "all":
        return np.flatnonzero(lengths > 0).astype(np.int64)
    path = Path(users)
    if not path.is_file():
        raise DataError(f"--users: file not found: {path} (give a file of user ids, one per line, or 'all')")
    index = {uid: u for u, uid in enumerate(data.users["user_id"].astype(str))}
    chosen: list[int] = []
    seen: set[int] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        uid = line.split("#", 1)[0].strip()
        if not uid:
            continue
        u = index.get(uid)
        if u is None:
            raise DataError(f"{path} line {lineno}: unknown user id {uid!r} (not in {data.path})")
        if lengths[u] == 0:
            raise DataError(f"{path} line {lineno}: user {uid!r} has no events")
        if u not in seen:
            seen.add(u)
            chosen.append(u)
    if not chosen:
        raise DataError(f"{path} lists no user ids")
    return np.asarray(chosen, dtype=np.int64)


# ---- progress --------------------------------------------------------------------------------------


class _Progress:
    """tqdm on a terminal; a log line every 30 s otherwise (SLURM logs stay readable)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.desc, self.total, self.done = desc, total, 0
        self.enabled = enabled
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="vec", dynamic_ncols=True)
        self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last > 30:
            self.last = time.monotonic()
            log.info("%s: %d/%d", self.desc, self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- chunked, resumable encoding -------------------------------------------------------------------


class ChunkStore:
    """Finished chunks of an export in progress: ``<dir>/<name>-<chunk>.npy``, each written
    atomically, plus ``settings.json``; a store with other settings is discarded on open."""

    def __init__(self, folder: Path, settings: dict[str, Any]):
        self.folder = folder
        marker = folder / "settings.json"
        if marker.is_file():
            try:
                old = json.loads(marker.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = None
            if old != settings:
                log.info("export settings changed since the interrupted run: discarding %s", folder)
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def path(self, name: str, chunk: int) -> Path:
        return self.folder / f"{name}-{chunk:06d}.npy"

    def load(self, name: str, chunk: int) -> np.ndarray | None:
        path = self.path(name, chunk)
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def save(self, name: str, chunk: int, array: np.ndarray) -> None:
        path = self.path(name, chunk)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _chunked(
    name: str, n: int, chunk: int, store: ChunkStore, encode: Callable[[int, int], np.ndarray], bar: _Progress
) -> tuple[np.ndarray, int]:
    """Encode rows [0, n) chunk by chunk (skipping chunks already in `store`) -> ([n, D], rows encoded)."""
    parts, encoded = [], 0
    for c, lo in enumerate(range(0, n, chunk)):
        hi = min(lo + chunk, n)
        part = store.load(name, c)
        if part is None or part.shape[0] != hi - lo:
            part = encode(lo, hi)
            store.save(name, c, part)
            encoded += hi - lo
        parts.append(part)
        bar.update(hi - lo)
    return (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)), encoded


@torch.no_grad()
def _item_vectors(model: Any, item_tokens: list[list[int]] | None, lo: int, hi: int) -> np.ndarray:
    """[hi - lo, D] unit-length item vectors for catalogue rows [lo, hi)."""
    idx = torch.arange(lo, hi, device=model.device)
    feats = None
    if model.item_tower.uses_text:
        assert model.encoder is not None and item_tokens is not None
        # One encoder call per chunk: it sorts by length and splits into micro-batches itself.
        ids, mask = pad_token_lists(item_tokens[lo:hi], model.encoder.pad_token_id)
        feats = model.encoder(ids, mask).emb.to(model.device)  # [hi - lo, H]
    return model.item_tower(idx, feats).float().cpu().numpy()


@torch.no_grad()
def _user_vectors(
    model: Any, data: PreparedData, tokens: Any, users: np.ndarray, batch_size: int
) -> np.ndarray:
    """[len(users), D] unit-length user vectors from the serve view (whole history)."""
    from torch.utils.data import DataLoader

    from seqrec.data.collate import SeqRecCollator, SeqRecDataset

    cfg = model.cfg
    ds = SeqRecDataset(data, cfg, "serve", tokens=tokens, users=users, cache=False)
    collate = SeqRecCollator(data, cfg, "serve", pad_token_id=int(model.tokenizer.pad_token_id or 0))
    out = [
        model.user_embeddings(batch).float().cpu()
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    ]
    return torch.cat(out).numpy()


# ---- writing -----------------------------------------------------------------------------------


def _write_parquet(path: Path, id_name: str, ids: list[str], vectors: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table(
        {id_name: pa.array(ids, pa.string()), "vector": pa.ListArray.from_arrays(offsets, values)}
    )
    pq.write_table(table, path)


def _write_faiss(path: Path, vectors: np.ndarray) -> str:
    """Write an exact inner-product index; returns what the manifest says about the index."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines are CPU-feature noise
    try:
        import faiss
    except ImportError:
        log.warning("--faiss: faiss-cpu is not installed (pip install faiss-cpu); exact search only")
        return "exact search (faiss-cpu not installed; dot products over items.npy)"
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(path))
    return f"faiss IndexFlatIP ({FAISS_FILE}, exact inner product)"


def export_embeddings(
    model: Any,
    data: PreparedData,
    out: str | Path,
    *,
    users: np.ndarray | None = None,
    chunk: int = 4096,
    faiss: bool = False,
    model_dir: str | Path | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Export item vectors (whole catalogue) and user vectors (`users`, default every user with
    events) of `model` into the folder `out`; see the module docstring for the layout.

    `model_dir` is the folder the model was loaded from (recorded, and fingerprinted so an
    interrupted export only resumes for the same weights).
    """
    from seqrec import __version__
    from seqrec.data.collate import TextTokens, data_fingerprint, item_token_ids

    out = Path(out)
    if chunk < 1:
        raise DataError(f"--chunk must be >= 1, got {chunk}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if model.n_items != data.n_items:
        raise CheckpointError(
            f"the model was trained on {model.n_items} items but {data.path} has {data.n_items}; "
            "export with the data it was trained on"
        )
    if model.tokenizer is None:
        raise CheckpointError(
            "export needs the model's backbone to encode users' whole histories; this model was loaded "
            "without one"
        )
    model.eval()
    users = select_users(data, None) if users is None else np.asarray(users, dtype=np.int64)
    cfg = model.cfg
    tokens = TextTokens.for_model(model.tokenizer, cfg, model.is_decoder)
    item_tokens = item_token_ids(data, cfg, tokens) if model.item_tower.uses_text else None
    fingerprint = model_fingerprint(model_dir) if model_dir is not None else "unsaved"
    settings = {
        "format_version": FORMAT_VERSION,
        "model": fingerprint,
        "data": data_fingerprint(data),
        "chunk": chunk,
        "users": hashlib.sha256(users.tobytes()).hexdigest()[:16],
    }
    store = ChunkStore(out.parent / f".{out.name}.partial", settings)
    t0 = time.perf_counter()

    bar = _Progress(data.n_items, "Exporting items", progress)
    items, items_done = _chunked(
        "items", data.n_items, chunk, store, lambda lo, hi: _item_vectors(model, item_tokens, lo, hi), bar
    )
    bar.close()
    t_items = time.perf_counter() - t0

    bs = batch_size or cfg.eval.batch_size
    bar = _Progress(len(users), "Exporting users", progress)
    user_vecs, users_done = _chunked(
        "users",
        len(users),
        chunk,
        store,
        lambda lo, hi: _user_vectors(model, data, tokens, users[lo:hi], bs),
        bar,
    )
    bar.close()
    t_users = time.perf_counter() - t0 - t_items

    dim = int(items.shape[1])
    temperature = float(f"{float(1.0 / model.head.scale()):.7g}")  # 0.05, not 0.05000000074505806
    item_ids = data.items["item_id"].astype(str).tolist()
    user_ids = data.users["user_id"].astype(str).to_numpy()[users].tolist()
    with atomic_directory(out, overwrite=True) as tmp:
        np.save(tmp / ITEMS_NPY, items, allow_pickle=False)
        np.save(tmp / USERS_NPY, user_vecs, allow_pickle=False)
        _write_parquet(tmp / ITEMS_PARQUET, "item_id", item_ids, items)
        _write_parquet(tmp / USERS_PARQUET, "user_id", user_ids, user_vecs)
        index = (
            _write_faiss(tmp / FAISS_FILE, items)
            if faiss
            else "exact search (dot products over items.npy; pass --faiss for a FAISS index)"
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seqrec_version": __version__,
            "model": {
                "folder": str(Path(model_dir).resolve()) if model_dir is not None else None,
                "fingerprint": fingerprint,
                "base_model": model.base_name,
                "adapter": cfg.model.adapter.method,
            },
            "data": {
                "folder": str(Path(data.path).resolve()) if data.path is not None else None,
                "fingerprint": settings["data"],
                "source": data.meta.get("source"),
            },
            "view": "serve: each user's whole history, no target held out",
            "dim": dim,
            "normalization": "l2",
            "temperature": temperature,
            "score": "dot(user, item) / temperature",
            "counts": {"items": int(items.shape[0]), "users": int(user_vecs.shape[0])},
            "files": {
                "items": [ITEMS_PARQUET, ITEMS_NPY],
                "users": [USERS_PARQUET, USERS_NPY],
                "index": FAISS_FILE if (tmp / FAISS_FILE).is_file() else None,
            },
            "index": index,
            "chunk": chunk,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    store.remove()
    seconds = time.perf_counter() - t0
    return ExportResult(
        out,
        int(items.shape[0]),
        int(user_vecs.shape[0]),
        dim,
        seconds,
        items_done / t_items if items_done and t_items > 0 else 0.0,
        users_done / t_users if users_done and t_users > 0 else 0.0,
        index,
    )


def load_item_vectors(export_dir: str | Path, model_dir: str | Path | None = None) -> tuple[np.ndarray, dict]:
    """Item vectors [n_items, D] and the manifest of an export; with `model_dir`, checks that the
    export was made from that model's weights (CheckpointError otherwise)."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {export_dir} is not a `seqrec export` folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if model_dir is not None and manifest.get("model", {}).get("fingerprint") != model_fingerprint(model_dir):
        raise CheckpointError(
            f"{export_dir} was exported from other weights than {model_dir} (model fingerprints differ); "
            "re-run `seqrec export` for this checkpoint"
        )
    npy = export_dir / ITEMS_NPY
    if not npy.is_file():
        raise CheckpointError(f"{npy} is missing: the export folder is incomplete")
    try:
        vectors = np.load(npy, allow_pickle=False)
    except ValueError as e:
        raise CheckpointError(f"{npy} is not a plain float array ({e})") from e
    if vectors.ndim != 2 or vectors.shape != (manifest["counts"]["items"], manifest["dim"]):
        raise CheckpointError(
            f"{npy} has shape {list(vectors.shape)}, the manifest says "
            f"[{manifest['counts']['items']}, {manifest['dim']}]"
        )
    return vectors.astype(np.float32, copy=False), manifest
