"""Before any weight is loaded: is the configured backbone there, and may we stay off the network?

`check_backbone_available` turns the usual ways a backbone cannot load into one ConfigError line
(an unknown name, a missing folder, a custom-code model with remote code off, a hub id that is not
cached while ``HF_HUB_OFFLINE`` is set), without contacting the Hub. `offline_if_local` switches
the Hub client off when every file is local (an alias, a folder, a GGUF file), so loading a
local model never waits on a network fetch (peft and transformers otherwise look up the base
model's hub id recorded in an adapter).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from seqrec.config import BackboneConfig, ConfigError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def set_hub_offline() -> None:
    """Switch the Hub client off for this process (environment and, if imported, huggingface_hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def local_source(cfg: BackboneConfig) -> Path | None:
    """The local folder or file the backbone loads from, None for a hub id."""
    from seqrec.modeling.backbone import ALIASES, alias_folder

    if cfg.name in ALIASES:
        return alias_folder(cfg.name)
    path = Path(cfg.name).expanduser()
    return path if path.exists() else None


def _cached_hub_config(cfg: BackboneConfig) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(cfg.name, cfg.gguf_file or "config.json", revision=cfg.revision)
    return Path(found) if isinstance(found, str) else None


def _check_custom_code(config_file: Path, cfg: BackboneConfig) -> None:
    """A config that needs code shipped with the model (auto_map, unknown model_type) while
    trust_remote_code is off: say so now instead of failing deep inside transformers."""
    if cfg.trust_remote_code or config_file.suffix != ".json" or not config_file.is_file():
        return
    try:
        data: Any = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"model.backbone.name={cfg.name!r}: {config_file} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"model.backbone.name={cfg.name!r}: {config_file} must hold a JSON object")
    from transformers import CONFIG_MAPPING

    model_type = data.get("model_type")
    if "auto_map" in data and (not model_type or model_type not in CONFIG_MAPPING):
        raise ConfigError(
            f"model.backbone.name={cfg.name!r} needs its own Python code (auto_map in {config_file.name}) "
            "and model.backbone.trust_remote_code is false; set it to true only if you trust that code"
        )
    if model_type and model_type not in CONFIG_MAPPING:
        raise ConfigError(
            f"model.backbone.name={cfg.name!r}: model_type {model_type!r} is unknown to this transformers "
            "version (upgrade transformers, or use a supported architecture)"
        )


def check_backbone_available(cfg: BackboneConfig) -> None:
    """ConfigError (one line) unless the backbone can load; never contacts the Hub."""
    from seqrec.modeling.backbone import ALIASES

    name = cfg.name
    if not name:
        raise ConfigError(
            "model.backbone.name is empty: give a hub id, a local folder, a .gguf file or an alias"
        )
    source = local_source(cfg)  # raises for an alias whose package is missing
    if source is not None:
        if source.is_dir() and not cfg.gguf_file and not (source / "config.json").is_file():
            gguf = sorted(p.name for p in source.glob("*.gguf"))
            hint = f" (it holds {gguf[0]}: set model.backbone.gguf_file)" if gguf else ""
            raise ConfigError(f"model.backbone.name={name!r}: {source} has no config.json{hint}")
        if source.is_dir() and cfg.gguf_file and not (source / cfg.gguf_file).is_file():
            raise ConfigError(f"model.backbone.gguf_file={cfg.gguf_file!r} not found in {source}")
        if source.is_dir() and not cfg.gguf_file and name not in ALIASES:
            _check_custom_code(source / "config.json", cfg)
        return
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith(".gguf") or os.sep in name.strip("/")
    if not _HUB_ID.fullmatch(name):
        if looks_like_path:
            raise ConfigError(f"model.backbone.name={name!r}: no such file or folder")
        if _cached_hub_config(cfg) is not None:  # a legacy hub id without an owner, cached earlier
            return
        raise ConfigError(
            f"model.backbone.name={name!r} is not an alias ({', '.join(sorted(ALIASES))}), not an existing "
            "folder or file, and not a hub id of the form ORG/NAME"
        )
    cached = _cached_hub_config(cfg)
    if cached is not None:
        _check_custom_code(cached, cfg)
        return
    if hub_offline():
        raise ConfigError(
            f"model.backbone.name={name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
            "set: download it once with network access, or point model.backbone.name at a local folder"
        )


def offline_if_local(cfg: BackboneConfig) -> bool:
    """Set HF_HUB_OFFLINE when the backbone's files are all local; returns whether it is offline."""
    if hub_offline():
        return True
    try:
        local = local_source(cfg) is not None
    except ConfigError:
        return False
    if local:
        log.debug("backbone %s is local: Hugging Face Hub access switched off", cfg.name)
        set_hub_offline()
    return local
