"""Resumable checkpoints: written atomically, verified before use, newest complete one on resume.

Layout::

    <output_dir>/checkpoints/step-<N>/
        ...                   accelerate `save_state`: model, optimizer, scheduler, RNG per rank
                              (under DeepSpeed: its ZeRO shards, one optimizer file per rank)
        extra_state.safetensors  the model's training state outside its weights, when it has
                              any (`checkpoint_tensors`, e.g. seqrec's item feature cache);
                              written by rank 0, read by every rank
        trainer_state.json    where the data stream stands (TrainerState)
        config.yaml           the resolved RunConfig
        manifest.json         every file above with its size and sha256
        COMPLETE              written last

A save goes to ``checkpoints/.tmp-step-<N>`` and is renamed into place only after the manifest and
the COMPLETE marker are on disk, so a crash or SIGKILL mid-save never leaves a folder that looks
finished. `--resume auto` walks the checkpoints newest first and takes the first whose manifest
verifies; a truncated or corrupted one is reported by file name and moved aside to
``checkpoints/.bad-step-<N>``. The output directory must be on a file system every node sees
(all ranks write into the same checkpoint folder and rank 0 hashes it).

accelerate stores optimizer, scheduler and RNG states with torch.save (pickle) and DeepSpeed its
shards likewise; they are only ever read back from a folder whose sha256 manifest matched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.config import RunConfig, save_config
from seqrec.errors import CheckpointError
from seqrec.manifest import MANIFEST_FILE, read_manifest, verify_files, write_text_durably
from seqrec.manifest import write_manifest as _write_manifest
from seqrec.training.run_folder import set_history_aside

if TYPE_CHECKING:
    import torch
    from accelerate.accelerator import Accelerator

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
EXTRA_STATE_FILE = "extra_state.safetensors"
CONFIG_FILE = "config.yaml"
COMPLETE_FILE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed, per rank
    samples_seen: int = 0  # training examples consumed, all ranks together
    train_seconds: float = 0.0  # wall time spent training, across resumes (train.max_minutes)
    best_metric: float | None = None
    best_step: int = -1
    bad_evals: int = 0  # validations since the last improvement (early stopping)
    finished: bool = False  # the run ended (completed / early stopping / budget): resume does nothing
    stop_reason: str = ""
    world_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished-looking checkpoint folder, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


# ---- manifest ------------------------------------------------------------------------------


def write_manifest(folder: Path, step: int) -> None:
    """Record size and sha256 of every file in `folder` (recursively) in manifest.json."""
    _write_manifest(folder, skip=(COMPLETE_FILE,), extra={"step": step})


def verify_checkpoint(folder: Path) -> str | None:
    """None if `folder` is a complete checkpoint whose files match its manifest, else the problem."""
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not (folder / COMPLETE_FILE).is_file():
        return f"{folder / COMPLETE_FILE} is missing (the save did not finish)"
    try:
        manifest = read_manifest(folder)
    except ValueError as e:
        return str(e)
    if manifest is None:
        return f"{folder / MANIFEST_FILE} is unreadable: it is missing"
    files: dict[str, dict[str, Any]] = manifest["files"]
    if STATE_FILE not in files:
        return f"{folder / MANIFEST_FILE} does not list {STATE_FILE}"
    return verify_files(folder, files)


def read_state(folder: Path) -> TrainerState:
    return TrainerState.from_json(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- save ----------------------------------------------------------------------------------


def _is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type.value == "DEEPSPEED"


def skip_frozen_parameters(accelerator: Accelerator) -> None:
    """Leave frozen parameters (a LoRA-tuned backbone) out of every checkpoint from now on.

    They are rebuilt identically with the model (pretrained weights, seeded init), and would
    otherwise make each checkpoint as large as the backbone. Register once, before the first
    save; DeepSpeed does the same through `exclude_frozen_parameters` in save_checkpoint.
    """
    if not _is_deepspeed(accelerator):
        accelerator.register_save_state_pre_hook(_drop_frozen)


def _drop_frozen(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    for model, state_dict in zip(models, weights):
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        for name in frozen & state_dict.keys():
            del state_dict[name]


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    state: TrainerState,
    cfg: RunConfig,
    keep_last: int,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save a resumable checkpoint for `state.global_step`. Call on EVERY rank (collective).

    `extra_tensors` (read on the main process only; the same on every rank) go to
    EXTRA_STATE_FILE, covered by the manifest like every other file; load_extra_tensors reads them.
    """
    root = checkpoints_root(output_dir)
    final = root / f"step-{state.global_step}"
    tmp = root / f".tmp-step-{state.global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a save that was killed
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # DeepSpeed: every rank writes its own shards.
    extra = {"exclude_frozen_parameters": True} if _is_deepspeed(accelerator) else {}
    accelerator.save_state(str(tmp), **extra)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra_tensors:
            _write_tensors_durably(tmp / EXTRA_STATE_FILE, extra_tensors)
        write_text_durably(tmp / STATE_FILE, json.dumps(state.to_json(), indent=1))
        save_config(cfg, tmp / CONFIG_FILE)
        write_manifest(tmp, state.global_step)
        write_text_durably(tmp / COMPLETE_FILE, f"{state.global_step}\n")
        _replace_dir(tmp, final)
        _fsync_dir(root)
        prune_checkpoints(output_dir, keep_last, keep=final)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _write_tensors_durably(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """safetensors file of `tensors` (copied to the CPU, exact dtype), fsynced."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` (same step saved again) is replaced after."""
    if not dst.exists():
        src.rename(dst)
        return
    old = dst.with_name(f".old-{dst.name}")
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def prune_checkpoints(output_dir: str | Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` complete checkpoints and stale temporary folders."""
    root = checkpoints_root(output_dir)
    complete = [p for _, p in list_checkpoints(output_dir) if (p / COMPLETE_FILE).is_file()]
    for path in complete[: max(0, len(complete) - max(1, keep_last))]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)


# ---- resume --------------------------------------------------------------------------------


def find_resumable(output_dir: str | Path) -> Path | None:
    """Newest checkpoint that verifies; broken ones are logged by file and moved aside."""
    for step, path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        bad = path.with_name(f".bad-step-{step}")
        log.warning("checkpoint %s is unusable: %s; moved to %s, trying the previous one", path, problem, bad)
        shutil.rmtree(bad, ignore_errors=True)
        path.rename(bad)
    return None


def resolve_resume(accelerator: Accelerator, output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint every rank loads: rank 0 decides (verifying files once), then broadcasts.

    `resume` is None (start fresh), "auto" (newest complete checkpoint, or fresh when there is
    none) or a checkpoint folder (which must verify).
    """
    from accelerate.utils import broadcast_object_list

    decision: list[Any] = [None, None]  # [path or None, error message or None]
    if accelerator.is_main_process and resume:
        if resume == "auto":
            found = find_resumable(output_dir)
            decision[0] = str(found) if found else None
            if found is None:
                log.info(
                    "resume=auto: no complete checkpoint in %s, starting fresh", checkpoints_root(output_dir)
                )
                # The new run's validation history must not be appended to the old run's.
                set_history_aside(Path(output_dir))
        else:
            problem = verify_checkpoint(Path(resume))
            decision = (
                [resume, None] if problem is None else [None, f"cannot resume from {resume}: {problem}"]
            )
    if accelerator.num_processes > 1:
        broadcast_object_list(decision, from_process=0)
    if decision[1]:
        raise CheckpointError(decision[1])
    return Path(decision[0]) if decision[0] else None


def load_checkpoint(accelerator: Accelerator, folder: Path) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG from `folder` (every rank) and return its state."""
    state = read_state(folder)
    if state.world_size != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {state.world_size} processes but this run has "
            f"{accelerator.num_processes}; resume with the same number of processes"
        )
    # Not strict: frozen parameters were left out on purpose (skip_frozen_parameters).
    loose = {"load_module_strict": False} if _is_deepspeed(accelerator) else {"strict": False}
    accelerator.load_state(str(folder), **loose)
    log.info(
        "resumed from %s (step %d, epoch %d, batch %d)",
        folder,
        state.global_step,
        state.epoch,
        state.batch_in_epoch,
    )
    return state


def load_extra_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors save_checkpoint stored as `extra_tensors` (CPU), or {} when it stored none
    (also checkpoints written before the file existed). Every rank reads the one file."""
    from safetensors.torch import load_file

    path = folder / EXTRA_STATE_FILE
    return load_file(str(path)) if path.is_file() else {}
