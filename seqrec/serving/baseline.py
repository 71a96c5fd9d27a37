"""`seqrec recommend` for the baseline folders `seqrec train` writes (SASRec, most popular).

Same request and answer as :class:`seqrec.serving.recommend.Recommender`: the user's history from
the prepared data plus any new events, every item scored by the model, the items already in the
history left out (unless ``include_seen``), the top K. A baseline has no windows, so the answer
carries no attention explanation. SASRec reads the newest ``sasrec.max_len`` items; popularity
ranks by training counts for everyone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.config import RunConfig
from seqrec.data.schema import DataError, PreparedData
from seqrec.serving.incremental import Catalogue, Event
from seqrec.serving.recommend import Recommendations, RecommendedItem


class BaselineRecommender:
    """Top-K requests for a SASRec or popularity model folder."""

    def __init__(self, model: Any, kind: str, data: PreparedData, cfg: RunConfig):
        from seqrec.data.examples import make_renderer

        if model.n_items != data.n_items:
            raise DataError(
                f"the model was trained on {model.n_items} items but {data.path} has {data.n_items}"
            )
        self.model, self.kind, self.data = model.eval(), kind, data
        self.catalogue = Catalogue(data, cfg.data.source.behavior_map)
        self.item_texts = make_renderer(data, cfg).item_texts  # the item as the run's text config renders it

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, kind: str, data_dir: str | Path | None = None
    ) -> BaselineRecommender:
        from seqrec.baselines.folder import read_run_config
        from seqrec.baselines.popularity import PopularityModel
        from seqrec.baselines.sasrec import SASRec
        from seqrec.config import ConfigError

        cfg = read_run_config(checkpoint, kind)
        model: Any = (
            SASRec.from_pretrained(checkpoint)
            if kind == "sasrec"
            else PopularityModel.from_pretrained(checkpoint)
        )
        data_dir = data_dir or cfg.data_dir
        if not data_dir:
            raise ConfigError("--data is required: the model's config has no data_dir")
        return cls(model, kind, PreparedData.load(data_dir), cfg)

    def last_time(self, user_id: str) -> int | None:
        u = self.catalogue.user(user_id)
        if u is None:
            return None
        times = self.data.sequence(u)[1]
        return int(times[-1]) if len(times) else None

    @torch.no_grad()
    def recommend(
        self,
        user_id: str,
        k: int = 10,
        events: Sequence[Event] = (),
        include_seen: bool = False,
        explain_top: int = 1,
    ) -> Recommendations:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        user_id = str(user_id)
        u = self.catalogue.user(user_id)
        if u is None and not events:
            sample = ", ".join(self.catalogue.user_ids[:5])
            raise DataError(f"unknown user {user_id!r} (e.g. {sample}); pass --events for a cold start")
        known = self.data.sequence(u)[0] if u is not None else np.zeros(0, dtype=np.int64)
        history = np.concatenate([known, np.array([e.item_idx for e in events], dtype=np.int64)])
        if self.kind == "sasrec":
            recent = history[-self.model.cfg.max_len :]
            inputs = torch.from_numpy(recent.astype(np.int64) + 1).unsqueeze(0)  # item_idx + 1, 0 = padding
            scores = self.model.score_batch({"input_items": inputs})[0].float()
        else:
            scores = self.model.item_scores.float().clone()
        if not include_seen and len(history):
            scores[torch.from_numpy(np.unique(history))] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        items = []
        if k > 0:
            top = torch.topk(scores, k)
            for rank, (score, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
                items.append(
                    RecommendedItem(rank, self.catalogue.item_ids[i], i, float(score), self.item_texts[i])
                )
        return Recommendations(user_id, u is None, len(history), len(events), 0, items, [])


@torch.no_grad()
def export_sasrec(
    model: Any,
    data: PreparedData,
    out: str | Path,
    users: np.ndarray,
    model_dir: str | Path,
    overwrite: bool = False,
    batch_size: int = 256,
) -> Any:
    """`seqrec export` for a SASRec folder: the same files and manifest as a seqrec export, item
    vectors = SASRec's item embeddings, user vectors = its state after each user's whole history.
    SASRec's score is the plain dot product (no normalization, temperature 1)."""
    from datetime import datetime, timezone

    from seqrec import __version__
    from seqrec.baselines.sequences import _left_pad
    from seqrec.data.collate import data_fingerprint
    from seqrec.data.schema import atomic_directory
    from seqrec.serving import export as ex

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    model.eval()
    table = model.embedding_table()  # [N + 1, D]
    items = table[1:].float().cpu().numpy()
    rows = []
    for lo in range(0, len(users), batch_size):
        seqs = [data.sequence(int(u))[0][-model.cfg.max_len :] for u in users[lo : lo + batch_size]]
        hidden = model.encode(_left_pad(seqs, 0, shift=1), table)[:, -1]  # state after the newest event
        rows.append(hidden.float().cpu().numpy())
    user_vecs = np.concatenate(rows) if rows else np.zeros((0, items.shape[1]), dtype=np.float32)
    item_ids = data.items["item_id"].astype(str).tolist()
    user_ids = data.users["user_id"].astype(str).to_numpy()[users].tolist()
    with atomic_directory(out, overwrite=True) as tmp:
        np.save(tmp / ex.ITEMS_NPY, items, allow_pickle=False)
        np.save(tmp / ex.USERS_NPY, user_vecs, allow_pickle=False)
        ex._write_parquet(tmp / ex.ITEMS_PARQUET, "item_id", item_ids, items)
        ex._write_parquet(tmp / ex.USERS_PARQUET, "user_id", user_ids, user_vecs)
        index = "exact search (dot products over items.npy)"
        manifest = {
            "format_version": ex.FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seqrec_version": __version__,
            "model": {
                "folder": str(Path(model_dir).resolve()),
                "fingerprint": ex.model_fingerprint(model_dir),
                "base_model": "sasrec",
                "adapter": "none",
            },
            "data": {
                "folder": str(Path(data.path).resolve()) if data.path is not None else None,
                "fingerprint": data_fingerprint(data),
                "source": data.meta.get("source"),
            },
            "view": "serve: each user's whole history (newest sasrec.max_len events), no target held out",
            "dim": int(items.shape[1]),
            "normalization": "none",
            "temperature": 1.0,
            "score": "dot(user, item)",
            "counts": {"items": int(items.shape[0]), "users": int(user_vecs.shape[0])},
            "files": {
                "items": [ex.ITEMS_PARQUET, ex.ITEMS_NPY],
                "users": [ex.USERS_PARQUET, ex.USERS_NPY],
                "index": None,
            },
            "index": index,
        }
        (tmp / ex.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - t0
    rate = len(users) / seconds if seconds > 0 else 0.0
    return ex.ExportResult(
        out, int(items.shape[0]), int(user_vecs.shape[0]), int(items.shape[1]), seconds, 0.0, rate, index
    )
