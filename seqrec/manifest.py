"""Size + sha256 manifests of a folder's files: the one implementation behind resumable checkpoints
(seqrec/training/checkpoint.py) and model folders (seqrec/modeling/io.py).

``manifest.json`` holds ``{"format": 1, "files": {relative/path: {"size": N, "sha256": HEX}}, ...}``
plus whatever extra keys the writer adds (a checkpoint records its step). It is written last,
after every file it lists, so a folder whose manifest verifies is complete and untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_text_durably(path: Path, text: str) -> None:
    """Write and fsync, so the bytes are on disk before anything that depends on them."""
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(folder: Path, skip: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> Path:
    """Record size and sha256 of every file under `folder` (recursively, except `skip` and the
    manifest itself) in ``folder/manifest.json``."""
    ignored = {MANIFEST_FILE, *skip}
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in ignored:
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    out = folder / MANIFEST_FILE
    write_text_durably(out, json.dumps({"format": 1, **(extra or {}), "files": files}, indent=1))
    return out


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The parsed manifest, None when the folder has none; ValueError when it is unreadable."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from e
    if not isinstance(files, dict):
        raise ValueError(f"{path} is unreadable: 'files' is not a mapping")
    return dict(data)


def verify_files(folder: Path, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """None when every listed file exists with its recorded size and sha256, else the first problem."""
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != meta["size"]:
            return f"{path} has {size} bytes but the manifest says {meta['size']} (truncated?)"
        if sha256_file(path) != meta["sha256"]:
            return f"{path} does not match its sha256 in the manifest (corrupted or modified)"
    return None


# ---- model folders ------------------------------------------------------------------------------

# Files a loader reads from a model folder: each must be listed in the manifest when there is one
# (a weight or config file dropped in after saving is refused, not silently used).
_LOADED_PATTERNS = ("*.safetensors", "*.json", "backbone/*.safetensors", "backbone/*.json", "backbone/*.txt")


def seal_model_folder(folder: str | Path) -> Path:
    """Write the manifest of a finished model folder (call after its last file is written).
    Markdown files (the model card, which people edit on the Hub) are not weights or configs and
    are left out."""
    folder = Path(folder)
    cards = [p.relative_to(folder).as_posix() for p in folder.rglob("*.md")]
    return write_manifest(folder, skip=cards)


def check_model_folder(folder: str | Path) -> bool:
    """Verify a model folder against its manifest: CheckpointError naming the first file that is
    missing, changed, truncated or unlisted. A folder saved before manifests existed passes with a
    warning; returns whether a manifest was checked."""
    import logging

    from seqrec.errors import CheckpointError

    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if manifest is None:
        logging.getLogger(__name__).warning(
            "%s has no %s (saved by an older seqrec): its files cannot be checked for corruption; "
            "re-save it to add one",
            folder,
            MANIFEST_FILE,
        )
        return False
    files: dict[str, dict[str, Any]] = manifest["files"]
    problem = verify_files(folder, files)
    if problem is not None:
        raise CheckpointError(f"{problem}; the model folder {folder} is refused")
    for pattern in _LOADED_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST_FILE and rel not in files:
                raise CheckpointError(
                    f"{path} is not listed in {folder / MANIFEST_FILE} (added after the model was saved); "
                    "remove it, or re-save the model"
                )
    return True


def check_finite(tensors: Mapping[str, Any], file: str | Path) -> None:
    """CheckpointError naming the first tensor holding NaN or infinity (corrupted weights)."""
    import torch

    from seqrec.errors import CheckpointError

    for name, tensor in tensors.items():
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())
        ):
            raise CheckpointError(f"{file}: tensor {name} holds NaN or infinite values (corrupted weights)")
