"""Guarding a training output folder: one run at a time, and no silent mixing of two runs.

* **Lock.** ``<output_dir>/.lock`` is held (``flock``) by the main process for the whole run. A
  second run into the same folder fails at once, naming the holder's pid and host; a killed
  run's lock goes with its process (the kernel releases it), so requeued jobs are never stuck.
* **Started folders.** A folder that already holds a run (``config.yaml``, ``checkpoints/``,
  ``best/``, validation history) is only trained into with ``--resume`` (continue it) or
  ``--overwrite`` (start over: the old run's files are removed; a feature cache is kept). A
  folder holding anything else is never written into.
* **Fresh starts under --resume auto** (no usable checkpoint, e.g. all were corrupted) move the
  old validation history and best model aside (``<name>.old-<UTC time>``), so the new run's
  history is not appended to the old one's.

Only the main process (``RANK`` 0, or a single process) guards and locks; the other ranks of an
``accelerate launch`` run share its folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from seqrec.errors import CheckpointError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# What a run writes into its folder (seqrec/training/loop.py, checkpoint.py, distributed.py).
RUN_FILES = ("config.yaml", "checkpoints", "best", "best_metrics.json", "valid_history.jsonl", "logs")
HISTORY_FILES = ("valid_history.jsonl", "best_metrics.json", "best")
# What may already be in a folder a fresh run goes into.
KEEP = {LOCK_FILE, "features"}


class RunFolderError(CheckpointError):
    """The output folder is in use, holds another run, or holds something that is not a run."""


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def started(folder: Path) -> list[str]:
    """The run files already in `folder` (empty for a fresh folder)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_output_folder(folder: Path, resume: str | None, overwrite: bool) -> None:
    """RunFolderError unless a run may write into `folder`; with `overwrite`, clear the old run."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunFolderError(f"train.output_dir {folder} is a file, not a folder")
    found = started(folder)
    others = sorted(p.name for p in folder.iterdir() if p.name not in KEEP and p.name not in RUN_FILES)
    others = [n for n in others if not n.startswith(".")]  # our own temporary/aside files
    if others and not found:
        raise RunFolderError(
            f"train.output_dir {folder} exists and is not a seqrec run folder (it holds {others[:3]}); "
            "choose a new or empty folder"
        )
    if not found or resume:
        return
    if not overwrite:
        raise RunFolderError(
            f"train.output_dir {folder} already holds a run ({', '.join(found)}): pass --resume auto to "
            "continue it, or --overwrite to start over (its checkpoints and best model are deleted)"
        )
    for name in found:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log.info("--overwrite: removed the previous run's %s from %s", ", ".join(found), folder)


def set_history_aside(folder: Path) -> list[Path]:
    """Move the validation history and best model of an earlier run aside (fresh start)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for name in HISTORY_FILES:
        path = folder / name
        if path.exists():
            target = folder / f"{name}.old-{stamp}"
            path.rename(target)
            moved.append(target)
    if moved:
        log.warning(
            "starting fresh in %s: the earlier run's %s moved aside (%s)",
            folder,
            ", ".join(HISTORY_FILES),
            ", ".join(p.name for p in moved),
        )
    return moved


@contextlib.contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the block; RunFolderError at once if another process holds it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_lock(fd, path, folder)
        if locked:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
        try:
            yield
        finally:
            if locked:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_lock(fd: int, path: Path, folder: Path) -> bool:
    """True once locked; RunFolderError when another process holds it; False (with a warning)
    on a file system without flock support (some network file systems): the run goes on unlocked."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            log.warning("cannot lock %s (%s); running without the run-folder lock", path, e)
            return False
        raise RunFolderError(
            f"train.output_dir {folder} is in use by another training run ({_read_holder(path)}); wait for "
            "it to finish, stop it, or choose another --output"
        ) from None
    return True


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextlib.contextmanager
def guarded_run_folder(folder: str | Path, resume: str | None, overwrite: bool) -> Iterator[None]:
    """Lock the folder (main process), then check what it holds; see the module docstring."""
    folder = Path(folder)
    if not is_main_process():
        yield
        return
    with run_folder_lock(folder):
        check_output_folder(folder, resume, overwrite)
        yield
