"""What `--overwrite` may replace: only a folder that a seqrec command wrote, never user data.

`seqrec data prepare|synth --overwrite` replaces ``--out`` after a successful run. That is safe only
when ``--out`` is a prepared data set (it carries :data:`PREPARED_MARKER`, written with every
prepared folder) and neither is, nor contains, the raw input being read. Anything else (the
input folder, its parent, the home directory, an unrelated project) is refused with one line
before any work starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from seqrec.data.schema import PREPARED_MARKER, DataError

__all__ = ["PREPARED_MARKER", "check_replaceable", "is_prepared_dataset"]


def is_prepared_dataset(folder: Path) -> bool:
    """`folder` was written by `seqrec data prepare` or `synth`: its marker, or (older versions) a
    meta.json with seqrec's format_version next to the prepared tables."""
    if (folder / PREPARED_MARKER).is_file():
        return True
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    tables = ("items.parquet", "users.parquet")
    events = (folder / "events.parquet").exists() or (folder / "shards.json").is_file()  # sharded events
    return (
        isinstance(meta, dict)
        and "format_version" in meta
        and events
        and all((folder / t).is_file() for t in tables)
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable(out: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """DataError unless `out` may be replaced by a new prepared data set (or does not exist)."""
    out_path = Path(out).expanduser()
    if not out_path.exists() and not out_path.is_symlink():
        return
    resolved = Path(os.path.realpath(out_path))
    for raw in inputs:
        if not str(raw):
            continue
        source = Path(os.path.realpath(Path(raw).expanduser()))
        if _inside(source, resolved):
            what = "is" if source == resolved else "contains"
            raise DataError(
                f"--out {out} {what} the input {raw}: --overwrite would delete the raw data; "
                "choose another --out"
            )
    if not out_path.is_dir():
        raise DataError(f"--out {out} is a file, not a prepared data set; --overwrite replaces only those")
    if not is_prepared_dataset(out_path):
        raise DataError(
            f"--out {out} exists and is not a seqrec prepared data set (no {PREPARED_MARKER}); "
            "--overwrite replaces only those: choose a new folder, or remove it yourself"
        )
