"""Late fusion (``train.model=ensemble``): an ID model and text models, scores added.

Each member is an ordinary run (its own YAML in ``ensemble.members``) trained, when not already
done, into ``<output>/../<config file stem>`` so that runs of the same seed are shared with the
benchmark's single-model rows; a member may also be a finished run folder, fused as it is. Each
member's scores are standardized per user over the catalogue (z-score), then added: ``(1 - w) * z_first + w * z_last`` for two members, ``sum_i w_i z_i`` for
more (members 2..N take values of the grid, the first the rest). The weights are chosen on VALIDATION
NDCG@10 over ``ensemble.weights`` (never on test, cf. EnsRec, arXiv 2512.17820); every weight's
validation figures are saved in ``best/late_fusion.json``. The folder ``best/`` works with
``seqrec evaluate`` like any other model folder.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from seqrec.config import ConfigError, RunConfig, save_config
from seqrec.data.schema import PreparedData

log = logging.getLogger(__name__)

FUSION_FILE = "late_fusion.json"


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Per-row z-score over the catalogue (non-finite entries count as the row's minimum)."""
    s = scores.float()
    finite = torch.isfinite(s)
    low = torch.where(finite, s, torch.full_like(s, float("inf"))).amin(dim=1, keepdim=True)
    s = torch.where(finite, s, low)
    return (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, keepdim=True).clamp(min=1e-6)


class LateFusion:
    """score = sum_i weight_i * norm(score_i); batches carry each member's batch in ``members``."""

    def __init__(self, members: Sequence[Any], weights: Sequence[float], normalize: str = "zscore"):
        if len(members) != len(weights):
            raise ValueError("one weight per member")
        self.members, self.weights, self.normalize = list(members), [float(w) for w in weights], normalize
        self.n_items = int(getattr(members[0], "n_items", 0))

    def eval(self) -> LateFusion:
        for m in self.members:
            if hasattr(m, "eval"):
                m.eval()
        return self

    def score_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        total: torch.Tensor | None = None
        for model, sub, w in zip(self.members, batch["members"], self.weights):
            if w == 0.0:
                continue
            tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
            dev = tensors[0].device if tensors else None
            if dev is not None:
                sub = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in sub.items()}
            s = model.score_batch(sub).float().cpu()
            s = standardize(s) if self.normalize == "zscore" else s
            total = w * s if total is None else total + w * s
        if total is None:
            raise ValueError("every member weight is 0")
        return total


class ZippedBatches:
    """The members' evaluation loaders side by side (same users, same order)."""

    def __init__(self, loaders: Sequence[Any]):
        self.loaders = list(loaders)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for subs in zip(*self.loaders, strict=True):
            users = subs[0]["user_idx"]
            for s in subs[1:]:
                if not torch.equal(s["user_idx"].cpu(), users.cpu()):
                    raise RuntimeError("member loaders disagree on the users of a batch")
            yield {**subs[0], "members": list(subs)}


def score_once(models: Sequence[Any], batches: ZippedBatches, normalize: str) -> list[dict[str, Any]]:
    """Each batch with its members' (normalized) scores, computed once for a whole weight grid."""
    out = []
    LateFusion(models, [1.0] * len(models)).eval()  # dropout off in every member
    with torch.no_grad():
        for batch in batches:
            scores = []
            for i, model in enumerate(models):
                s = LateFusion([model], [1.0], normalize).score_batch({"members": [batch["members"][i]]})
                scores.append(s)
            out.append({k: v for k, v in batch.items() if k != "members"} | {"member_scores": scores})
    return out


class _Cached:
    """Weighted sum of the cached member scores of a batch (see score_once)."""

    def __init__(self, weights: Sequence[float]):
        self.weights = list(weights)

    def score_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        parts = [w * s for w, s in zip(self.weights, batch["member_scores"]) if w != 0.0]
        return torch.stack(parts).sum(dim=0)


def weight_grid(grid: Sequence[float], n_members: int) -> list[list[float]]:
    """Every weight vector to try: members 2..N each take a value of `grid` (their sum at most 1),
    the first member gets the rest. Two members: [1 - w, w] for each w of the grid."""
    for w in grid:
        if not 0.0 <= w <= 1.0:
            raise ConfigError(f"ensemble.weights must lie in [0, 1], got {w}")
    combos = [[round(1.0 - sum(rest), 10), *rest] for rest in itertools.product(grid, repeat=n_members - 1)]
    return [c for c in combos if c[0] >= -1e-9]


def member_dirs(cfg: RunConfig) -> list[tuple[Path, Path]]:
    """(member config YAML, member output folder) for each of ``ensemble.members``."""
    if len(cfg.ensemble.members) < 2:
        raise ConfigError(f"ensemble.members must name at least 2 run configs, got {cfg.ensemble.members}")
    out = Path(cfg.train.output_dir)
    repo = Path(__file__).resolve().parents[2]  # relative member paths: cwd, else the repository root
    paths = [
        Path(m) if Path(m).is_file() or Path(m).is_absolute() else repo / m for m in cfg.ensemble.members
    ]
    # A member may also be a finished run folder (fused as it is, never trained here).
    return [(p, p) if p.is_dir() else (p, out.parent / p.stem) for p in paths]


def load_members(
    folders: Sequence[Path], data: PreparedData, split: str, users: Any
) -> tuple[list[Any], ZippedBatches]:
    from seqrec.baselines.folder import read_run_config
    from seqrec.evaluation.cli import load_model_and_batches

    models, loaders = [], []
    for folder in folders:
        mcfg = read_run_config(folder)
        model, batches = load_model_and_batches(folder, mcfg, data, split, users)
        models.append(model)
        loaders.append(batches)
    return models, ZippedBatches(loaders)


def load_late_fusion(checkpoint: Path, data: PreparedData, split: str, users: Any) -> tuple[Any, Any]:
    """The (model, batches) pair `seqrec evaluate` needs for an ensemble folder."""
    spec = json.loads((Path(checkpoint) / FUSION_FILE).read_text(encoding="utf-8"))
    models, batches = load_members([Path(p) for p in spec["members"]], data, split, users)
    return LateFusion(models, spec["weights"], spec["normalize"]), batches


def fit_late_fusion(cfg: RunConfig, data: PreparedData) -> Any:
    """Train missing members, pick the fusion weight on validation, save ``best/``."""
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.evaluation.protocols import make_protocol
    from seqrec.training.loop import TrainResult
    from seqrec.training.run import resolve_config, run_training, validation_users

    start = time.perf_counter()
    folders = []
    for member_cfg, member_out in member_dirs(cfg):
        best = member_out / "best"
        if (best / "seqrec_config.json").is_file() and (member_out / "best_metrics.json").is_file():
            log.info("ensemble member %s: reusing %s", member_cfg.stem, best)
        elif member_cfg.is_dir():
            raise ConfigError(f"ensemble member {member_cfg} is a folder without a finished run (best/)")
        else:
            log.info("ensemble member %s: training into %s", member_cfg.stem, member_out)
            mcfg = resolve_config(
                member_cfg, cfg.data_dir, str(member_out), "auto", [f"train.seed={cfg.train.seed}"]
            )
            result = run_training(mcfg, end_process_group=False)
            if result.exit_code != 0:
                return result
        folders.append(best.resolve())
    users = validation_users(data, cfg.train.eval_max_users, cfg.train.seed)
    protocol = make_protocol(cfg.eval, data, "valid")
    users_arg = users if users is not None else protocol.users()
    models, batches = load_members(folders, data, "valid", users_arg)
    cached = score_once(models, batches, cfg.ensemble.normalize)  # members scored once, not per weight
    metric = cfg.train.best_metric
    table: list[dict[str, Any]] = []
    even = 1.0 / len(folders)
    for weights in weight_grid(cfg.ensemble.weights, len(folders)):
        metrics = evaluate(
            _Cached(weights), cached, data, "valid", cfg.eval, protocol, progress=False
        ).metrics
        # "weight": the last member's (the one number of a two-member grid).
        table.append({"weights": weights, "weight": weights[-1], **metrics})
        log.info("ensemble: weights %s -> valid %s %.4f", weights, metric, metrics.get(metric, float("nan")))
    # Ties: the most even mixture.
    best_row = max(
        table, key=lambda r: (r.get(metric, float("-inf")), -sum(abs(x - even) for x in r["weights"]))
    )
    weights = [float(x) for x in best_row["weights"]]
    out = Path(cfg.train.output_dir)
    best_dir = out / "best"
    best_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, best_dir / "seqrec_config.json")
    spec = {
        "members": [str(f) for f in folders],
        "weights": weights,
        "normalize": cfg.ensemble.normalize,
        "selected_on": f"valid {metric}",
        "validation": table,
    }
    (best_dir / FUSION_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    best_metrics = {k: v for k, v in best_row.items() if k not in ("weight", "weights")}
    summary = {"step": 0, "epoch": 0, "weight": weights[-1], "weights": weights, "metrics": best_metrics}
    (out / "best_metrics.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    log.info(
        "ensemble: chose weights %s (valid %s %.4f); saved %s",
        weights,
        metric,
        best_row.get(metric),
        best_dir,
    )
    return TrainResult(
        global_step=0, epoch=0, stop_reason="completed", exit_code=0, best_metric=best_row.get(metric),
        best_step=0, best_dir=best_dir, last_checkpoint=None, resumed_from=None,
        train_seconds=time.perf_counter() - start, last_eval=best_metrics,
    )  # fmt: skip
