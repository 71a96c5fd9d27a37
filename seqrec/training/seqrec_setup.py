"""Training setups for the seqrec model: the joint stage and the two-stage head stage.

joint: windows are tokenized (Arrow-cached) and go through the backbone with its adapters every
step; positives' item texts are encoded live, the rest of the catalogue comes from a cache the model
refreshes on a schedule.

head: every window and item is encoded ONCE by the backbone (with the adapters of ``train.init_from``
when given) into a feature folder; then only the aggregator, fusion and head train, from cached
features, in minutes on a CPU. The saved model keeps the backbone's name and the adapter, so it can
still encode new windows when serving.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.config import RunConfig, to_dict
from seqrec.data.collate import (
    SeqRecCollator,
    SeqRecDataset,
    TextTokens,
    data_fingerprint,
    eval_loader,
    item_token_ids,
    iter_windows,
)
from seqrec.data.examples import make_renderer, render_windows
from seqrec.data.features import FeatureStore, build_feature_store
from seqrec.data.schema import PreparedData

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from seqrec.modeling import SeqRecModel
    from seqrec.training.run import TrainingSetup

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def load_encoder_model(cfg: RunConfig, data: PreparedData) -> SeqRecModel:
    """A model with its backbone: from `train.init_from` (tuned adapters) or fresh from the config."""
    from seqrec.modeling import SeqRecModel

    if cfg.train.init_from:
        return SeqRecModel.from_pretrained(cfg.train.init_from)
    return SeqRecModel.from_data(cfg, data)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def feature_manifest(cfg: RunConfig, data: PreparedData) -> dict[str, Any]:
    """Everything the cached features depend on; a change means they are rebuilt."""
    init = Path(cfg.train.init_from) if cfg.train.init_from else None
    return {
        "backbone": to_dict(cfg.model.backbone) | {"hidden_size": None},
        "adapter_from": str(init) if init else None,
        "adapter_digest": _file_digest(init / ADAPTER_FILES[0]) if init else "",
        "encoder": to_dict(cfg.model.encoder) | {"micro_batch_size": None},
        "window": to_dict(cfg.window),
        "text": to_dict(cfg.text),
        "data": data_fingerprint(data),
    }


def _encoded_alike(cfg: RunConfig) -> bool:
    """Windows and items go through the same prefix and token limit: their texts can be pooled."""
    enc, text = cfg.model.encoder, cfg.text
    return enc.window_prefix == enc.item_prefix and text.max_window_tokens == text.max_item_tokens


def ensure_features(
    cfg: RunConfig, data: PreparedData, accelerator: Accelerator | None = None
) -> FeatureStore:
    """Load the feature folder if it matches this config, else build it (main process) once."""
    import json

    out = Path(cfg.train.features_dir or Path(cfg.train.output_dir) / "features")
    manifest = feature_manifest(cfg, data)
    main = accelerator is None or accelerator.is_main_process

    def matches() -> bool:
        f = out / "manifest.json"
        if not f.is_file():
            return False
        saved = json.loads(f.read_text(encoding="utf-8"))
        return all(saved.get(k) == v for k, v in json.loads(json.dumps(manifest, default=str)).items())

    if main and not matches():
        log.info("building the feature cache in %s (encoded once, reused by every head-stage run)", out)
        model = load_encoder_model(cfg, data)
        model.eval()
        renderer = make_renderer(data, cfg)
        windows = list(iter_windows(data, cfg, ["train", "valid", "test"]))

        def window_texts(ws: Any) -> list[str]:
            return [render_windows(data, renderer, u, (w,))[0] for u, w in ws]

        build_feature_store(
            out,
            windows,
            window_texts,
            renderer.item_texts,
            lambda texts: model.encode_texts(texts, "window"),
            lambda texts: model.encode_texts(texts, "item"),
            json.loads(json.dumps(manifest, default=str)),
            shared=_encoded_alike(cfg),
        )
        del model
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return FeatureStore.load(out)


def seqrec_setup(cfg: RunConfig, data: PreparedData, accelerator: Accelerator) -> TrainingSetup:
    """TrainingSetup for `train.model=seqrec` (joint or head stage)."""
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.evaluation.protocols import make_protocol
    from seqrec.modeling import SeqRecModel
    from seqrec.training.run import TrainingSetup, validation_users

    tokens: TextTokens | None = None
    features: FeatureStore | None = None
    item_tokens: list[list[int]] | None = None
    pad_id = 0
    if cfg.train.stage == "head":
        features = ensure_features(cfg, data, accelerator)
        cfg.model.backbone.hidden_size = features.dim
        model = SeqRecModel.from_data(cfg, data, load_backbone=False)
        model.set_item_features(features.items)
        if cfg.model.items.id_init == "text_pca" and model.item_tower.ids is not None:
            from seqrec.modeling.text_init import init_ids_from_text

            init_ids_from_text(model.item_tower.ids, features.items)
            log.info("ID embeddings initialised from the PCA of the item text features")
    else:
        model = SeqRecModel.from_data(cfg, data)
        if cfg.train.init_from:
            _load_weights(model, cfg.train.init_from)
        tokens = TextTokens.for_model(model.tokenizer, cfg, model.is_decoder)
        pad_id = int(model.tokenizer.pad_token_id or 0)
        if model.item_tower.uses_text:
            item_tokens = item_token_ids(data, cfg, tokens)
            model.set_item_tokens(item_tokens)
    train_ds = SeqRecDataset(data, cfg, "train", tokens=tokens, features=features)
    collate = SeqRecCollator(
        data, cfg, "train", features=features, item_tokens=item_tokens, pad_token_id=pad_id
    )
    users = validation_users(data, cfg.train.eval_max_users, cfg.train.seed)
    loader = accelerator.prepare_data_loader(
        eval_loader(data, cfg, "valid", tokens=tokens, features=features, users=users, pad_token_id=pad_id),
        device_placement=True,
    )
    protocol = make_protocol(cfg.eval, data, "valid")

    def evaluate_fn(m: nn.Module, acc: Accelerator) -> dict[str, float]:
        target: Any = acc.unwrap_model(m)
        target.prepare_eval()
        result = evaluate(
            target,
            loader,
            data,
            "valid",
            cfg.eval,
            protocol,
            gather=acc.gather,
            device=acc.device,
            progress=False,
        )
        return result.metrics

    def save_fn(m: nn.Module, folder: Path, state_dict: dict[str, Any] | None) -> None:
        target: Any = m
        target.save_pretrained(folder, state_dict)
        if cfg.train.stage == "head" and cfg.train.init_from:
            # Keep the stage-1 adapter beside the head so the model can encode new windows.
            for name in ADAPTER_FILES:
                src = Path(cfg.train.init_from) / name
                if src.is_file():
                    shutil.copy2(src, Path(folder) / name)

    return TrainingSetup(model, train_ds, collate, evaluate_fn, save_fn, model.param_groups(cfg.train))


def _load_weights(model: SeqRecModel, folder: str) -> None:
    """Initialize `model` (adapter + head) from a saved SeqRecModel folder of the same shape."""
    from seqrec.modeling import SeqRecModel

    src = SeqRecModel.from_pretrained(folder)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    log.info("initialized from %s (%d missing, %d unexpected keys)", folder, len(missing), len(unexpected))
