"""Choosing ``model.items.cold_boost`` on validation after training (the new-item exposure knob).

Items with no training event (new items) are under-scored by a model trained only on the others:
whatever the item tower learned about popularity favours trained items, so a user whose next item
is new sees it ranked low even when its text fits. ``cold_boost`` adds ``b`` x (the user's score
standard deviation over the catalogue) to every new item's score. It is a trade-off, not a free
gain: raising new items lowers the ranks of the trained ones, so ``b`` is chosen on VALIDATION
(never test) from ``cold_boost_grid``: the best validation NDCG@10 among the values whose
cold/warm validation NDCG@10 ratio reaches ``cold_boost_min_ratio`` (with no value reaching it,
the highest ratio). The chosen value is written into the best model's config (so evaluate,
recommend and publish use it) and every value's validation figures into ``best/cold_boost.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from seqrec.config import RunConfig, save_config
from seqrec.data.schema import PreparedData, atomic_directory
from seqrec.manifest import seal_model_folder

log = logging.getLogger(__name__)

TABLE_FILE = "cold_boost.json"


class _Boosted:
    """score_batch = the cached raw scores of a batch with new items raised by ``boost``."""

    def __init__(self, model: Any, boost: float):
        self.model, self.boost = model, boost

    def score_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.boost_cold(batch["raw_scores"], self.boost)


def _cold_over_warm(result: Any, metric: str) -> float | None:
    """Validation `metric` of users with a new-item target over the others' (None: no such users)."""
    slices = result.slices.get("target_item", {})
    if "cold" not in slices or "warm" not in slices:
        return None
    return slices["cold"][metric] / max(slices["warm"][metric], 1e-12)


def pick(table: list[dict[str, Any]], metric: str, min_ratio: float) -> dict[str, Any]:
    """The row to keep: best `metric` among rows meeting the ratio; none meets it: best ratio."""
    ok = [r for r in table if min_ratio <= 0 or (r["cold_over_warm"] or 0.0) >= min_ratio]
    if ok:  # ties: the smaller boost (the smaller change to the trained model)
        return max(ok, key=lambda r: (r["metrics"][metric], -r["boost"]))
    return max(table, key=lambda r: (r["cold_over_warm"] or 0.0, r["metrics"][metric]))


def choose_cold_boost(cfg: RunConfig, data: PreparedData, best_dir: Path) -> dict[str, Any] | None:
    """Score validation once with the best model, evaluate every grid value, save the choice."""
    from seqrec.baselines.folder import read_run_config
    from seqrec.evaluation.cli import load_model_and_batches
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.evaluation.protocols import make_protocol
    from seqrec.training.run import validation_users

    grid, min_ratio = list(cfg.model.items.cold_boost_grid), cfg.model.items.cold_boost_min_ratio
    if not grid:
        return None
    if not (data.train_item_counts() == 0).any():
        log.info("cold_boost: every item has training events; nothing to choose (kept %g)", 0.0)
        grid = [0.0]
    saved = read_run_config(best_dir)
    users = validation_users(data, cfg.train.eval_max_users, cfg.train.seed)
    protocol = make_protocol(cfg.eval, data, "valid")
    model, batches = load_model_and_batches(
        best_dir, saved, data, "valid", users if users is not None else protocol.users()
    )
    model.eval()
    with torch.no_grad():  # the model runs once; each grid value only re-ranks the cached scores
        cached = [{**batch, "raw_scores": model.raw_scores(batch).float()} for batch in batches]
    metric = cfg.train.best_metric
    table = []
    for boost in grid:
        result = evaluate(_Boosted(model, boost), cached, data, "valid", cfg.eval, protocol, progress=False)
        row = {"boost": boost, "metrics": result.metrics, "cold_over_warm": _cold_over_warm(result, metric)}
        table.append(row)
        log.info("cold_boost %.2f: valid %s %.4f, cold/warm %s", boost, metric, result.metrics[metric],
                 "n/a" if row["cold_over_warm"] is None else f"{row['cold_over_warm']:.2f}")  # fmt: skip
    best = pick(table, metric, min_ratio)
    if min_ratio > 0 and (best["cold_over_warm"] or 0.0) < min_ratio:
        log.warning("cold_boost: no grid value reaches cold/warm %.2f on validation; kept the highest ratio", min_ratio)  # fmt: skip
    saved.model.items.cold_boost = float(best["boost"])
    spec = {"chosen": best["boost"], "selected_on": f"valid {metric}", "min_ratio": min_ratio, "grid": table}
    _rewrite_best(best_dir, saved, spec)
    _update_best_metrics(best_dir.parent, best)
    log.info("cold_boost: chose %.2f (valid %s %.4f); saved in %s", best["boost"], metric, best["metrics"][metric], best_dir)  # fmt: skip
    return spec


def _rewrite_best(best_dir: Path, cfg: RunConfig, spec: dict[str, Any]) -> None:
    """Replace best/ by a copy with the chosen boost in its config, the table, a new manifest."""
    with atomic_directory(best_dir, overwrite=True) as tmp:
        shutil.copytree(best_dir, tmp, dirs_exist_ok=True)
        save_config(cfg, tmp / "seqrec_config.json")
        (tmp / TABLE_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
        seal_model_folder(tmp)


def _update_best_metrics(out: Path, best: dict[str, Any]) -> None:
    """best_metrics.json holds the validation figures of the model as saved (boost included)."""
    path = out / "best_metrics.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    record.update({"metrics": best["metrics"], "cold_boost": best["boost"]})
    tmp = out / ".best_metrics.json.tmp"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)
