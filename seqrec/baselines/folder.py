"""The folder a trained baseline is saved as, and `seqrec evaluate` reads.

    <folder>/seqrec_config.json   the resolved RunConfig (train.model says which class to load)
    <folder>/model.safetensors    the weights (no pickle)

Folders are written to a temporary directory and renamed into place, so a crash never leaves a
half-written model behind.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from seqrec.config import ConfigError, RunConfig, from_dict, save_config, validate
from seqrec.errors import CheckpointError
from seqrec.manifest import check_finite, check_model_folder

CONFIG_FILE = "seqrec_config.json"
WEIGHTS_FILE = "model.safetensors"


def write_run_config(folder: Path, run_config: RunConfig | None, model: str) -> RunConfig:
    """Save `run_config` (defaults when None) with train.model set to `model`; returns what was saved."""
    cfg = copy.deepcopy(run_config) if run_config is not None else RunConfig()
    cfg.train.model = model  # type: ignore[assignment]
    save_config(cfg, folder / CONFIG_FILE)
    return cfg


def read_run_config(folder: str | Path, expected_model: str | None = None) -> RunConfig:
    """The RunConfig saved in a model folder; CheckpointError if missing, invalid or another model."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a seqrec model folder (no {CONFIG_FILE})")
    try:
        cfg = from_dict(RunConfig, json.loads(path.read_text(encoding="utf-8")))
        validate(cfg)
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{path}: invalid config ({e})") from e
    if expected_model is not None and cfg.train.model != expected_model:
        raise CheckpointError(f"{folder} holds a {cfg.train.model!r} model, not {expected_model!r}")
    return cfg


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights, after the folder's manifest (sizes, sha256) verified; all finite."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: missing {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors reports corrupt files with its own error types
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    check_model_folder(folder)
    check_finite(tensors, path)
    return tensors
