"""`run_training(cfg)`: the one function behind `train/train.py` and `seqrec train`.

It makes the Accelerator first (so ZeRO-3 can partition a backbone while it loads), builds the
model and its data for `train.model`, trains with :class:`seqrec.training.loop.Trainer`, and
returns the TrainResult; its `exit_code` is what the process should exit with (0, or 143 after
a preemption checkpoint, see seqrec/training/preemption.py).

Each trainable model registers a builder in BUILDERS returning a TrainingSetup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from seqrec.config import ConfigError, RunConfig, load_config, validate

if TYPE_CHECKING:
    from accelerate.accelerator import Accelerator
    from torch import nn
    from torch.utils.data import Dataset

    from seqrec.data.schema import PreparedData
    from seqrec.training.loop import EvaluateFn, SaveModelFn, StepHook, Trainer, TrainResult

log = logging.getLogger(__name__)


@dataclass
class TrainingSetup:
    """What the generic loop needs from a model family."""

    model: nn.Module
    train_dataset: Dataset
    collate_fn: Callable[[list[Any]], Any]
    evaluate_fn: EvaluateFn | None
    save_model_fn: SaveModelFn
    param_groups: list[dict[str, Any]] | None = None

    def trainer(
        self, cfg: RunConfig, accelerator: Accelerator, step_hooks: Sequence[StepHook] = ()
    ) -> Trainer:
        """The generic loop over this setup."""
        from seqrec.training.loop import Trainer

        return Trainer(
            cfg,
            self.model,
            self.train_dataset,
            self.collate_fn,
            self.evaluate_fn,
            self.save_model_fn,
            self.param_groups,
            accelerator=accelerator,
            step_hooks=step_hooks,
        )


def resolve_config(
    config: str | Path | None,
    data: str | None = None,
    output: str | None = None,
    resume: str | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The run config from a YAML file, the usual flags and key=value overrides (flags win)."""
    extra = list(overrides)
    if data:
        extra.append(f"data_dir={data}")
    if output:
        extra.append(f"train.output_dir={output}")
    if resume:
        extra.append(f"train.resume={resume}")
    return load_config(config, extra)


def validation_users(data: PreparedData, max_users: int, seed: int) -> np.ndarray | None:
    """All validation users, or a fixed random subset of train.eval_max_users (same every time)."""
    users = data.eval_users("valid")
    if max_users <= 0 or max_users >= len(users):
        return None
    pick = np.random.default_rng(seed).choice(len(users), size=max_users, replace=False)
    return np.sort(users[pick])


def rank_users(
    data: PreparedData,
    users: np.ndarray | None,
    rank: int,
    world: int,
    split: Literal["valid", "test"] = "valid",
) -> np.ndarray:
    """The evaluation users of `rank`: those it owns (seqrec/data/shards.py), repeated from the
    start up to the largest rank's count, so every rank makes the same number of scoring calls
    (collectives stay in lock-step, ZeRO-3 included); the evaluator gathers the per-user rows and
    counts each user once, so the metrics are those of one process scoring every user."""
    users = data.eval_users(split) if users is None else np.asarray(users, dtype=np.int64)
    if world == 1:
        return users
    owner = data.owner_ranks(world)[users]
    most = int(np.bincount(owner, minlength=world).max())
    own = users[owner == rank]
    if len(own) == 0:
        raise ConfigError(
            f"rank {rank} of {world} owns none of the {len(users)} {split} users: use fewer processes "
            "or more validation users (train.eval_max_users)"
        )
    return np.tile(own, -(-most // len(own)))[:most]


def load_training_data(cfg: RunConfig, accelerator: Accelerator) -> PreparedData:
    """The prepared data for this rank: only its own users' event shards when the directory is
    sharded, the run has several processes and the model needs no other user's events (SASRec
    and the seqrec head stage, with full-ranking validation); otherwise the whole data. Global
    item counts are summed over the ranks (each counts its own users)."""
    import torch

    from seqrec.data.schema import PreparedData

    head = cfg.train.model == "seqrec" and cfg.train.stage == "head"
    partial = (cfg.train.model == "sasrec" or head) and cfg.eval.protocol == "full"
    rank, world = (accelerator.process_index, accelerator.num_processes) if partial else (0, 1)
    data = PreparedData.load(cfg.data_dir, rank=rank, world=world)
    if data.loaded is not None:
        local = torch.from_numpy(data.local_item_counts()).to(accelerator.device)
        data.item_counts = accelerator.reduce(local, reduction="sum").cpu().numpy()
    return data


# ---- SASRec ------------------------------------------------------------------------------------


def _sasrec_setup(cfg: RunConfig, data: PreparedData, accelerator: Accelerator) -> TrainingSetup:
    from seqrec.baselines.sasrec import SASRec
    from seqrec.baselines.sequences import TrainSequences, collate_train, eval_loader
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.evaluation.protocols import make_protocol

    features = None
    if cfg.sasrec.item_init == "text_pca" or cfg.sasrec.item_text == "add":
        from seqrec.training.distributed import compute_precision
        from seqrec.training.seqrec_setup import ensure_features

        # The same cached item features as the seqrec head stage (built once when absent).
        features = ensure_features(cfg, data, accelerator, compute_precision(accelerator, cfg))
    text_dim = features.dim if features is not None and cfg.sasrec.item_text == "add" else 0
    model = SASRec(data.n_items, cfg.sasrec, text_dim)
    if features is not None and cfg.sasrec.item_text == "add":
        model.set_item_text(features.items)
    if features is not None and cfg.sasrec.item_init == "text_pca":
        from seqrec.modeling.text_init import init_ids_from_text

        init_ids_from_text(model.item_emb, features.items, offset=1)  # row 0 stays the padding
        log.info("SASRec item embeddings initialised from the PCA of the item text features")
    users = validation_users(data, cfg.train.eval_max_users, cfg.train.seed)
    # Each rank scores its own users; the evaluator gathers and de-duplicates.
    own = rank_users(data, users, accelerator.process_index, accelerator.num_processes)
    loader = eval_loader(data, "valid", cfg.sasrec.max_len, cfg.eval.batch_size, own)
    protocol = make_protocol(cfg.eval, data, "valid")

    def evaluate_fn(m: nn.Module, acc: Accelerator) -> dict[str, float]:
        result = evaluate(
            m, loader, data, "valid", cfg.eval, protocol, gather=acc.gather, device=acc.device, progress=False
        )
        return result.metrics

    def save_fn(m: nn.Module, folder: Path, state_dict: dict[str, Any] | None) -> None:
        # Under ZeRO-3 the live module holds only shards: save the gathered state dict.
        clean = SASRec(data.n_items, cfg.sasrec, text_dim)
        clean.load_state_dict(state_dict if state_dict is not None else m.state_dict())
        clean.save_pretrained(folder, cfg)

    return TrainingSetup(model, TrainSequences(data, cfg.sasrec.max_len), collate_train, evaluate_fn, save_fn)


def _seqrec_setup(cfg: RunConfig, data: PreparedData, accelerator: Accelerator) -> TrainingSetup:
    from seqrec.training.seqrec_setup import seqrec_setup

    return seqrec_setup(cfg, data, accelerator)


BUILDERS: dict[str, Callable[[RunConfig, PreparedData, Accelerator], TrainingSetup]] = {
    "sasrec": _sasrec_setup,
    "seqrec": _seqrec_setup,
}


def fit_popularity(cfg: RunConfig, data: PreparedData) -> TrainResult:
    """Most-popular needs no loop: count the training part, save `best/`, validate once."""
    import json
    import time

    from seqrec.baselines.popularity import PopularityModel
    from seqrec.baselines.sequences import eval_loader
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.training.loop import TrainResult

    start = time.perf_counter()
    out = Path(cfg.train.output_dir)
    model = PopularityModel.fit(data)
    model.save_pretrained(out / "best", cfg)
    users = validation_users(data, cfg.train.eval_max_users, cfg.train.seed)
    metrics = evaluate(
        model,
        eval_loader(data, "valid", 1, cfg.eval.batch_size, users),
        data,
        "valid",
        cfg.eval,
        progress=False,
    ).metrics
    (out / "best_metrics.json").write_text(
        json.dumps({"step": 0, "epoch": 0, "metrics": metrics}, indent=1) + "\n", encoding="utf-8"
    )
    log.info(
        "popularity: valid %s = %.4f; saved %s",
        cfg.train.best_metric,
        metrics.get(cfg.train.best_metric, float("nan")),
        out / "best",
    )
    return TrainResult(
        global_step=0,
        epoch=0,
        stop_reason="completed",
        exit_code=0,
        best_metric=metrics.get(cfg.train.best_metric),
        best_step=0,
        best_dir=out / "best",
        last_checkpoint=None,
        resumed_from=None,
        train_seconds=time.perf_counter() - start,
        last_eval=metrics,
    )


def _choose_cold_boost(cfg: RunConfig, data: PreparedData, best_dir: Path, accelerator: Accelerator) -> None:
    """model.items.cold_boost_grid: pick the new-item boost on validation (main process only)."""
    if not cfg.model.items.cold_boost_grid:
        return
    if accelerator.is_main_process:
        from seqrec.training.cold_boost import choose_cold_boost

        choose_cold_boost(cfg, data, best_dir)
    accelerator.wait_for_everyone()


# ---- the entry --------------------------------------------------------------------------------


def run_training(cfg: RunConfig, end_process_group: bool = True, overwrite: bool = False) -> TrainResult:
    """Train `cfg.train.model` on `cfg.data_dir` into `cfg.train.output_dir`.

    Everything the run needs is checked before any work starts (config values, the data folder,
    the backbone); the output folder is locked for the run and a folder that already holds a run
    is refused unless `cfg.train.resume` continues it or `overwrite` starts over
    (seqrec/training/run_folder.py)."""
    from seqrec.training.preflight import preflight
    from seqrec.training.run_folder import guarded_run_folder

    validate(cfg)
    preflight(cfg)
    with guarded_run_folder(cfg.train.output_dir, cfg.train.resume, overwrite):
        return _run_training(cfg, end_process_group)


def _run_training(cfg: RunConfig, end_process_group: bool) -> TrainResult:
    from accelerate.utils import set_seed

    from seqrec.training.distributed import make_accelerator

    if cfg.train.model == "popularity":
        if not cfg.data_dir:
            raise ConfigError("data_dir is empty: pass --data DIR (a prepared data directory)")
        from seqrec.data.schema import PreparedData as _Data

        return fit_popularity(cfg, _Data.load(cfg.data_dir))
    if cfg.train.model == "ensemble":
        if not cfg.data_dir:
            raise ConfigError("data_dir is empty: pass --data DIR (a prepared data directory)")
        from seqrec.data.schema import PreparedData as _Data
        from seqrec.training.late_fusion import fit_late_fusion

        return fit_late_fusion(cfg, _Data.load(cfg.data_dir))
    builder = BUILDERS.get(cfg.train.model)
    if builder is None:
        raise ConfigError(
            f"train.model={cfg.train.model!r} has no training loop here (trainable: {sorted(BUILDERS)})"
        )
    if not cfg.data_dir:
        raise ConfigError("data_dir is empty: pass --data DIR (a prepared data directory)")
    accelerator = make_accelerator(cfg)  # first: ZeRO-3 partitions large models while they load
    set_seed(cfg.train.seed)
    data = load_training_data(cfg, accelerator)
    setup = builder(cfg, data, accelerator)
    result = setup.trainer(cfg, accelerator).train()
    if cfg.train.model == "seqrec" and result.exit_code == 0 and result.best_dir is not None:
        _choose_cold_boost(cfg, data, result.best_dir, accelerator)
    if end_process_group:
        accelerator.end_training()
    return result
