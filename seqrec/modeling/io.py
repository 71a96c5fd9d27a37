"""Saving and loading a SeqRecModel folder: JSON and safetensors only, validated before use.

Layout (written atomically: a temporary folder renamed into place)::

    adapter_model.safetensors   peft adapter (LoRA/DoRA/QLoRA), loadable with peft on the real base
    adapter_config.json         its peft config; base_model_name_or_path = the real base model
    backbone/                   full fine-tuning only: config, safetensors weights, tokenizer
    head.safetensors            everything that is not the backbone: aggregator, profile, fusion,
                                item tower, ranking head
    seqrec_config.json          the resolved RunConfig (model.backbone.hidden_size filled in)
    seqrec_model.json           format version, n_items, profile spec, behaviours, feature width, files
    manifest.json               size and sha256 of every file above (seqrec/manifest.py), written last

A frozen backbone saves no backbone weights (the base is loaded by name). A head-stage model (no
backbone) saves none either; loading restores the encoder that made its features so it can encode
new windows: the frozen base, or base + the stage-1 adapter its folder carries after
``train.init_from`` (``load_backbone=False`` skips that and scores from cached features). Every
file is checked against the manifest (a folder without one loads with a warning) and every
loaded weight must be finite. Loading never unpickles
and never runs code from the folder: a pickle file where safetensors are expected, a missing file,
or tensors with the wrong names or shapes raise CheckpointError naming the file; remote code stays
off unless the caller passes ``trust_remote_code=True`` (a saved config cannot turn it on).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from seqrec.config import ConfigError, RunConfig, load_config, save_config
from seqrec.data.schema import ProfileSpec, atomic_directory
from seqrec.errors import CheckpointError
from seqrec.manifest import check_finite, check_model_folder, seal_model_folder
from seqrec.modeling.availability import check_backbone_available, offline_if_local

if TYPE_CHECKING:
    from seqrec.modeling.model import SeqRecModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_META = "seqrec_model.json"
CONFIG_FILE = "seqrec_config.json"
HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
BACKBONE_DIR = "backbone"
BACKBONE_PREFIX = "encoder.backbone."
ADAPTER_METHODS = ("lora", "dora", "qlora")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# What a hub download may fetch: data and weights, never code or pickles.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.md"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# ---- saving ---------------------------------------------------------------------------------


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses aliased tensors)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_model(
    model: SeqRecModel, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write `model` to `path`. `state_dict` (a full state dict of the model, e.g. gathered under
    ZeRO-3) replaces the live parameters as the source of every tensor."""
    state = state_dict if state_dict is not None else model.state_dict()
    head = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIX)}
    backbone = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    method = model.cfg.model.adapter.method
    files: dict[str, str | None] = {"head": HEAD_FILE, "adapter": None, "backbone": None}
    with atomic_directory(path, overwrite=True) as tmp:
        save_file(_plain(head), str(tmp / HEAD_FILE), metadata={"format": "pt"})
        if model.encoder is not None and method in ADAPTER_METHODS:
            peft_model: Any = model.encoder.backbone
            peft_model.save_pretrained(str(tmp), state_dict=backbone, save_embedding_layers=False)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's template card; publishing writes ours
            files["adapter"] = ADAPTER_FILE
        elif model.encoder is not None and method == "full":
            model.encoder.backbone.save_pretrained(str(tmp / BACKBONE_DIR), state_dict=_plain(backbone))  # type: ignore[operator]
            model.tokenizer.save_pretrained(str(tmp / BACKBONE_DIR))
            files["backbone"] = BACKBONE_DIR
        save_config(model.cfg, tmp / CONFIG_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "n_items": model.n_items,
            "behaviors": model.behaviors,
            "profile_spec": model.profile_spec.to_json(),
            "feature_dim": model.feature_dim,
            "has_backbone": model.encoder is not None,
            "is_decoder": model.is_decoder,
            "adapter_method": method,
            "base_model": model.base_name,
            "files": files,
        }
        (tmp / MODEL_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        seal_model_folder(tmp)  # last: sizes and sha256 of every file above, checked at load
    return Path(path)


# ---- loading --------------------------------------------------------------------------------


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local folder, or a hub repo id downloaded with huggingface_hub (JSON/safetensors only)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; a seqrec model is a folder")
    if _REPO_ID.fullmatch(str(name_or_path)):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=str(name_or_path), allow_patterns=HUB_PATTERNS))
        except Exception as e:  # offline, missing repo, no access: one clear line
            raise CheckpointError(
                f"{name_or_path}: not a local folder, and fetching it from the Hugging Face Hub failed ({e})"
            ) from e
    raise CheckpointError(f"model folder not found: {path}")


def _pickle_sibling(file: Path) -> Path | None:
    for suffix in PICKLE_SUFFIXES:
        candidate = file.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    if file.name == ADAPTER_FILE and (file.parent / "adapter_model.bin").is_file():
        return file.parent / "adapter_model.bin"
    return None


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; CheckpointError naming the file if it is missing or unreadable."""
    if not file.is_file():
        sibling = _pickle_sibling(file)
        if sibling is not None:
            raise CheckpointError(
                f"{file} is missing and {sibling.name} (a pickle file) is there instead: seqrec loads only "
                "safetensors and never unpickles; re-save the model with save_pretrained"
            )
        raise CheckpointError(f"{file} is missing: the model folder is incomplete")
    try:
        return load_file(str(file))
    except Exception as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from e


def check_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: Path) -> None:
    """Names and shapes in `found` must match `expected` exactly."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(
            f"{file}: {len(missing)} tensor(s) missing, e.g. {missing[:3]} (incomplete or other model)"
        )
    if unexpected:
        raise CheckpointError(
            f"{file}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]} (another model?)"
        )
    for name, tensor in found.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{file}: tensor {name} has shape {list(tensor.shape)}, the model expects "
                f"{list(expected[name].shape)} (saved with another config?)"
            )


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {file.parent} is not a complete seqrec model folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    return data


def _head_stage_backbone(cfg: RunConfig, path: Path, carries_adapter: bool) -> None:
    """Set `cfg` up to rebuild the encoder that made a head-stage model's features. With the
    stage-1 adapter in the folder, its own peft config (rank, alpha, targets) is used; without
    one, the features came from the frozen base."""
    if not carries_adapter:
        # A fully fine-tuned stage 1 (train.init_from) leaves its tuned backbone in backbone/.
        tuned = (path / BACKBONE_DIR / "config.json").is_file()
        cfg.model.adapter.method = "full" if tuned else "frozen"
        return
    peft_cfg = _read_json(path / ADAPTER_CONFIG)
    adapter = cfg.model.adapter
    adapter.r = int(peft_cfg.get("r", adapter.r))
    adapter.alpha = int(peft_cfg.get("lora_alpha", adapter.alpha))
    targets = peft_cfg.get("target_modules")
    if isinstance(targets, list) and targets:
        adapter.target_modules = [str(t) for t in targets]
    if adapter.method not in ADAPTER_METHODS:
        adapter.method = "dora" if peft_cfg.get("use_dora") else "lora"


def baseline_kind(path: Path) -> str:
    """train.model of a baseline folder (SASRec, popularity), '' when it is not one."""
    if (path / MODEL_META).is_file() or not (path / "model.safetensors").is_file():
        return ""
    try:
        saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        kind = saved["train"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return str(kind) if kind in ("sasrec", "popularity") else ""


def load_model(
    cls: type[SeqRecModel],
    name_or_path: str | Path,
    load_backbone: bool = True,
    trust_remote_code: bool = False,
) -> SeqRecModel:
    path = resolve_model_dir(name_or_path)
    if not (path / MODEL_META).is_file() and (path / "model.safetensors").is_file():
        kind = baseline_kind(path)
        if kind:
            raise CheckpointError(
                f"{path} holds a {kind} model: this needs a seqrec model (a baseline folder works with "
                "`seqrec evaluate` and `seqrec recommend`)"
            )
    meta = _read_json(path / MODEL_META)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / MODEL_META}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}"
        )
    try:
        cfg: RunConfig = load_config(path / CONFIG_FILE)
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from e
    if cfg.model.backbone.trust_remote_code and not trust_remote_code:
        log.warning("%s asks for trust_remote_code; ignored (pass trust_remote_code=True to allow it)", path)
    cfg.model.backbone.trust_remote_code = trust_remote_code
    method = cfg.model.adapter.method
    # A head-stage model has no backbone of its own: its features came from the frozen base, or
    # from base + the stage-1 adapter (train.init_from) that its folder then carries. Serving needs
    # to encode new text the same way, so that backbone is loaded (load_backbone=False skips it).
    carries_adapter = method in ADAPTER_METHODS and (path / ADAPTER_FILE).is_file()
    head_stage = not meta.get("has_backbone")
    with_backbone = load_backbone
    if with_backbone and head_stage:
        _head_stage_backbone(cfg, path, carries_adapter)
        method = cfg.model.adapter.method
    head = read_safetensors(path / HEAD_FILE)
    check_finite(head, path / HEAD_FILE)
    adapter = None
    weights_dir = None
    if with_backbone and method in ADAPTER_METHODS:
        _read_json(path / ADAPTER_CONFIG)
        adapter = read_safetensors(path / ADAPTER_FILE)
        check_finite(adapter, path / ADAPTER_FILE)
    elif with_backbone and method == "full":
        weights_dir = path / BACKBONE_DIR
        _read_json(weights_dir / "config.json")
        # Only model.safetensors (or its shard index) counts: any other weights file in backbone/
        # (e.g. a pytorch_model.bin beside an unrelated .safetensors) would be unpickled by transformers.
        pickles = sorted(
            p.name for p in weights_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")
        )
        if pickles:
            raise CheckpointError(
                f"{weights_dir} holds pickle weight files {pickles}; seqrec loads safetensors only "
                "(delete them, or re-save the model with save_pretrained)"
            )
        if not (weights_dir / "model.safetensors.index.json").is_file():
            # raises if missing or not safetensors
            check_finite(
                read_safetensors(weights_dir / "model.safetensors"), weights_dir / "model.safetensors"
            )
    # After the reads above (which name a missing file or a pickle in its place), before any weight
    # is used: sizes and sha256 of every file against the manifest (a warning for older folders).
    check_model_folder(path)
    if with_backbone and weights_dir is None:
        try:
            check_backbone_available(cfg.model.backbone)
        except ConfigError as e:
            raise CheckpointError(
                f"{path}: its backbone cannot be loaded ({e}); with load_backbone=False a head-stage "
                "model still scores from cached features"
            ) from e
        offline_if_local(cfg.model.backbone)  # local files: no Hub lookups for the base model's name
    try:
        model = cls(
            cfg,
            int(meta["n_items"]),
            ProfileSpec.from_json(meta["profile_spec"]),
            list(meta["behaviors"]),
            load_backbone=with_backbone,
            backbone_weights_dir=weights_dir,
        )
    except KeyError as e:
        raise CheckpointError(f"{path / MODEL_META}: missing entry {e}") from e
    if not with_backbone:
        model.is_decoder = bool(meta.get("is_decoder", model.is_decoder))  # for tokenizing new text later
    elif head_stage and model.feature_dim != int(meta.get("feature_dim") or model.feature_dim):
        raise CheckpointError(
            f"{path}: its head was trained on {meta.get('feature_dim')}-wide features but the backbone "
            f"{cfg.model.backbone.name!r} gives {model.feature_dim}; load it with the base model it was "
            "trained with"
        )
    if adapter is not None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        assert model.encoder is not None
        check_tensors(adapter, get_peft_model_state_dict(model.encoder.backbone), path / ADAPTER_FILE)
        set_peft_model_state_dict(model.encoder.backbone, adapter)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(BACKBONE_PREFIX)}
    check_tensors(head, expected, path / HEAD_FILE)
    model.load_state_dict(head, strict=False)
    model.eval()
    return model
