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

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Iterable, Iterator
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
from seqrec.manifest import seal_model_folder

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

    from seqrec.modeling import SeqRecModel
    from seqrec.training.distributed import Precision
    from seqrec.training.run import TrainingSetup

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def load_encoder_model(cfg: RunConfig, data: PreparedData, precision: Precision | None = None) -> SeqRecModel:
    """A model with its backbone: from `train.init_from` (tuned adapters) or fresh from the config,
    in the precision's backbone dtype and on its device when given."""
    from seqrec.modeling import SeqRecModel

    if cfg.train.init_from:
        model = SeqRecModel.from_pretrained(cfg.train.init_from)
    else:
        dtype = precision.backbone_dtype if precision is not None else None
        model = SeqRecModel.from_data(cfg, data, backbone_dtype=dtype)
    if precision is not None:
        if cfg.train.init_from and model.encoder is not None:
            model.encoder.backbone.to(precision.backbone_dtype)  # from_pretrained used its own dtype
        model.to(precision.device)
    return model


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


def features_match(cfg: RunConfig, data: PreparedData, folder: Path, adapter_dir: Path | None = None) -> bool:
    """Whether the feature folder was built by this model's encoder: same backbone, encoder, window,
    text and data settings and the same adapter, compared by content. ``adapter_dir`` is where the
    adapter is now (a head-stage model folder carries a copy of its stage-1 adapter); the path the
    features were built from is not compared, only whether there was one. A folder rebuilt since
    for another model (a shared cache, a rerun with another adapter) does not match."""
    import json

    f = folder / "manifest.json"
    if not f.is_file():
        return False
    saved = json.loads(f.read_text(encoding="utf-8"))
    want = json.loads(json.dumps(feature_manifest(cfg, data), default=str))
    if adapter_dir is not None:
        want["adapter_digest"] = _file_digest(adapter_dir / ADAPTER_FILES[0])
    if (saved.get("adapter_from") is None) != (want.pop("adapter_from") is None):
        return False
    return all(saved.get(k) == v for k, v in want.items())


def _encoded_alike(cfg: RunConfig) -> bool:
    """Windows and items go through the same prefix and token limit: their texts can be pooled."""
    enc, text = cfg.model.encoder, cfg.text
    return enc.window_prefix == enc.item_prefix and text.max_window_tokens == text.max_item_tokens


def ensure_features(
    cfg: RunConfig,
    data: PreparedData,
    accelerator: Accelerator | None = None,
    precision: Precision | None = None,
) -> FeatureStore:
    """Load the feature folder if it matches this config, else build it once.

    With several processes every rank loads the encoder (outside ZeRO-3's zero.Init: each rank
    needs the whole frozen backbone for inference, and a partitioned load is a collective that one
    rank alone would deadlock in), on its own device, and encodes its share of the windows and
    items; rank 0 merges the shares (see seqrec.data.features.build_feature_store). Rank 0's view
    of the folder decides for everyone whether to build.
    """
    import json

    out = Path(cfg.train.features_dir or Path(cfg.train.output_dir) / "features")
    manifest = feature_manifest(cfg, data)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0

    def matches() -> bool:
        f = out / "manifest.json"
        if not f.is_file():
            return False
        saved = json.loads(f.read_text(encoding="utf-8"))
        return all(saved.get(k) == v for k, v in json.loads(json.dumps(manifest, default=str)).items())

    build = [not matches()]
    if world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(build, from_process=0)
    if build[0]:
        if rank == 0:
            log.info(
                "building the feature cache in %s on %d process(es) (encoded once, reused by every "
                "head-stage run)",
                out,
                world,
            )
        # The cache covers every user's windows: a rank that holds only its own users' events
        # (sharded data) reads the whole data for the build, once per feature config.
        source = data if data.loaded is None or data.path is None else PreparedData.load(data.path)
        with _without_zero_init(accelerator):
            model = load_encoder_model(cfg, source, precision)
        model.eval()
        renderer = make_renderer(source, cfg)
        windows = list(iter_windows(source, cfg, ["train", "valid", "test"]))

        def window_texts(ws: Any) -> list[str]:
            return [render_windows(source, renderer, u, (w,))[0] for u, w in ws]

        assert model.encoder is not None
        with model.encoder.local_only():  # each rank encodes its own share: no call-count sync
            build_feature_store(
                out,
                windows,
                window_texts,
                renderer.item_texts,
                lambda texts: model.encode_texts(texts, "window"),
                lambda texts: model.encode_texts(texts, "item"),
                json.loads(json.dumps(manifest, default=str)),
                shared=_encoded_alike(cfg),
                rank=rank,
                world=world,
                barrier=accelerator.wait_for_everyone if accelerator is not None else (lambda: None),
            )
        del model, source, windows
    return FeatureStore.load(out)


@contextlib.contextmanager
def _without_zero_init(accelerator: Accelerator | None) -> Iterator[None]:
    """Load models whole on every rank, even under ZeRO-3. transformers partitions a model while it
    loads (zero.Init, a collective) whenever a ZeRO-3 HfDeepSpeedConfig is registered, which
    accelerate does for any stage-3 config whatever its zero3_init flag; unregister it here and
    register the plugin's again afterwards."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None) if accelerator is not None else None
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def seqrec_setup(cfg: RunConfig, data: PreparedData, accelerator: Accelerator) -> TrainingSetup:
    """TrainingSetup for `train.model=seqrec` (joint or head stage)."""
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.evaluation.protocols import make_protocol
    from seqrec.modeling import SeqRecModel
    from seqrec.training.distributed import compute_precision
    from seqrec.training.run import TrainingSetup, rank_users, validation_users

    tokens: TextTokens | None = None
    features: FeatureStore | None = None
    item_tokens: list[list[int]] | None = None
    pad_id = 0
    precision = compute_precision(accelerator, cfg)  # the one place dtype and device are decided
    if cfg.train.stage == "head":
        features = ensure_features(cfg, data, accelerator, precision)
        cfg.model.backbone.hidden_size = features.dim
        model = SeqRecModel.from_data(cfg, data, load_backbone=False, item_features=features.items)
        if cfg.model.items.id_init == "text_pca" and model.item_tower.ids is not None:
            from seqrec.modeling.text_init import init_ids_from_text

            init_ids_from_text(model.item_tower.ids, features.items)
            log.info("ID embeddings initialised from the PCA of the item text features")
    else:
        model = SeqRecModel.from_data(cfg, data, backbone_dtype=precision.backbone_dtype)
        if cfg.train.init_from:
            _load_weights(model, cfg.train.init_from, accelerator)
        tokens = TextTokens.for_model(model.tokenizer, cfg, model.is_decoder)
        pad_id = int(model.tokenizer.pad_token_id or 0)
        if model.item_tower.uses_text:
            # The catalogue's tokens need the backbone's tokenizer, so they are wired in here, by
            # the training setup (the data layer only computes them).
            item_tokens = item_token_ids(data, cfg, tokens)
            model.set_item_tokens(item_tokens)
    if precision.deepspeed_stage is not None:
        _cast_unpartitioned_parameters(model, precision.dtype)
    train_ds = SeqRecDataset(data, cfg, "train", tokens=tokens, features=features)
    collate = SeqRecCollator(
        data, cfg, "train", features=features, item_tokens=item_tokens, pad_token_id=pad_id
    )
    users = validation_users(data, cfg.train.eval_max_users, cfg.train.seed)
    # Each rank scores its own users (seqrec/data/shards.py); the evaluator gathers and de-duplicates.
    own = rank_users(data, users, accelerator.process_index, accelerator.num_processes)
    loader = eval_loader(data, cfg, "valid", tokens=tokens, features=features, users=own, pad_token_id=pad_id)
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
            tuned = Path(cfg.train.init_from) / "backbone"  # a fully fine-tuned stage 1
            if tuned.is_dir():
                shutil.copytree(tuned, Path(folder) / "backbone", dirs_exist_ok=True)
            seal_model_folder(folder)  # the manifest covers the copied adapter too

    return TrainingSetup(model, train_ds, collate, evaluate_fn, save_fn, model.param_groups(cfg.train))


def _cast_unpartitioned_parameters(model: SeqRecModel, dtype: Any) -> None:
    """Every parameter not yet partitioned by ZeRO-3 to the run's compute dtype, as DeepSpeed does:
    it casts a whole module to bf16/fp16 itself, EXCEPT when zero.Init already partitioned part of
    it (the backbone), when it leaves all other parameters (head, LoRA adapters) in fp32, and
    ZeRO-3's optimizer then refuses trainable parameters of mixed dtypes. Doing it here gives the
    same dtypes under every stage. Buffers stay as they are (the item prior feeds the fp32 loss;
    the model casts the item feature cache where it enters)."""
    for p in model.parameters():
        if p.is_floating_point() and not hasattr(p, "ds_id") and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _backbone_name(key: str) -> str:
    """A state-dict key without peft's wrapping (``base_model.model.``, ``.base_layer``)."""
    return key.replace("base_model.model.", "").replace(".base_layer.", ".")


def _to_target_names(state: dict[str, Any], target: Iterable[str]) -> dict[str, Any]:
    """`state` with its backbone keys renamed to the target's, across adapter wrappings: a source
    without adapters (frozen or fully fine-tuned) names a weight ``encoder.backbone.X`` where a
    LoRA target has ``encoder.backbone.base_model.model.X`` (or ``...base_layer.weight``), and
    the reverse. Without this, such weights were silently skipped (a fully fine-tuned stage 1's
    backbone lost when a LoRA run starts from it)."""
    names = set(target)
    by_name = {_backbone_name(k): k for k in names}
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k not in names and _backbone_name(k) in by_name:
            k = by_name[_backbone_name(k)]
        out[k] = v
    return out


def _load_weights(model: SeqRecModel, folder: str, accelerator: Accelerator | None = None) -> None:
    """Initialize `model` (adapter + head) from a saved SeqRecModel folder of the same shape.

    The source is loaded whole on every rank (outside zero.Init). Under ZeRO-3 the target's
    backbone is already partitioned: its entries are written through deepspeed's
    GatheredParameters (a collective every rank joins; rank 0's values are kept), the rest
    (head, adapters: not partitioned yet) directly."""
    import torch

    from seqrec.modeling import SeqRecModel

    with _without_zero_init(accelerator):
        src = SeqRecModel.from_pretrained(folder)
    state = _to_target_names(src.state_dict(), model.state_dict().keys())
    params = dict(model.named_parameters())
    partitioned = {k for k, p in params.items() if hasattr(p, "ds_id")}
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if k not in partitioned}, strict=False
    )
    # Frozen partitioned tensors are the same pretrained weights on both sides: only trainable
    # ones (full fine-tuning) need the collective gather.
    gather = [k for k in state if k in partitioned and params[k].requires_grad]
    if gather:
        import deepspeed

        with deepspeed.zero.GatheredParameters([params[k] for k in gather], modifier_rank=0):
            if accelerator is None or accelerator.is_main_process:
                with torch.no_grad():
                    for k in gather:
                        params[k].copy_(state[k].to(params[k].dtype))
    missing = [k for k in missing if k not in partitioned]
    fresh = sum("lora_" in k for k in missing)
    log.info(
        "initialized from %s (%d missing keys, %d of them adapter weights that start fresh; %d "
        "unexpected; %d partitioned tensors gathered)",
        folder,
        len(missing),
        fresh,
        len(unexpected),
        len(gather),
    )
