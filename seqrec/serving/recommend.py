"""Top-K recommendations for one user, with an explanation (``seqrec recommend``).

A :class:`Recommender` holds a model, its data and the catalogue's item vectors (computed once, or
read from a ``seqrec export`` folder). A request encodes the user through the
:class:`~seqrec.serving.incremental.IncrementalEncoder` (so repeated requests and new events are
cheap), scores every item as ``dot(user, item) / temperature`` (the model's own score), drops the
items the user has already interacted with (unless ``include_seen``) and returns the top K.

The explanation is the aggregator's attention from the user's latest state over the windows: each
window's rendered text with its weight, and the events of the most weighted window(s).

Unknown users: without new events a request for a user absent from the data is an error; with
new events the user is a cold start (history = those events only, "unknown" profile).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.render import format_time
from seqrec.data.schema import PreparedData
from seqrec.serving.incremental import Event, IncrementalEncoder, UserStateCache

log = logging.getLogger(__name__)


@dataclass
class RecommendedItem:
    rank: int
    item_id: str
    item_idx: int
    score: float  # dot(user, item) / temperature
    text: str  # the item as the model reads it


@dataclass
class ExplainedEvent:
    position: int  # in the user's history (0 = oldest)
    item_id: str
    behavior: str
    timestamp: int
    time: str  # the timestamp as rendered (UTC)
    text: str
    new: bool  # came with this request (--events), not from the data


@dataclass
class ExplainedWindow:
    index: int  # 1-based, oldest first
    start: int  # first event position (inclusive)
    end: int  # last event position (exclusive)
    weight: float  # attention of the latest state on this window
    text: str
    top: bool  # one of the most weighted windows (its events are listed)
    events: list[ExplainedEvent] = field(default_factory=list)


@dataclass
class Recommendations:
    user_id: str
    cold_start: bool
    n_events: int
    new_events: int
    windows_encoded: int  # windows sent through the backbone for this request
    items: list[RecommendedItem]
    windows: list[ExplainedWindow]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self, width: int = 72) -> str:
        """A plain-text report: the ranked items, then the windows and their attention."""
        head = (
            f"Top {len(self.items)} items for user {self.user_id}"
            f"{' (cold start: history = the new events only)' if self.cold_start else ''}: "
            f"{self.n_events} events ({self.new_events} new), {len(self.windows)} windows "
            f"({self.windows_encoded} encoded for this request)"
        )
        id_w = max([len("item_id"), *(len(r.item_id) for r in self.items)])
        lines = [head, "", f"{'rank':>4}  {'item_id':<{id_w}}  {'score':>8}  item"]
        for r in self.items:
            lines.append(f"{r.rank:>4}  {r.item_id:<{id_w}}  {r.score:>8.3f}  {_clip(r.text, width)}")
        if not self.windows:  # a baseline model: no windows to explain
            return "\n".join(lines) + "\n"
        lines += ["", "Why: attention of the latest user state over the windows (* = most weight)"]
        lines.append(f"    {'window':>7}  {'events':<12}  {'weight':>6}  first line")
        n = len(self.windows)
        for w in self.windows:
            mark = "*" if w.top else " "
            span = f"[{w.start}, {w.end})"
            lines.append(
                f"  {mark} {f'{w.index}/{n}':>7}  {span:<12}  {w.weight:>6.3f}  {_clip(w.text.splitlines()[0], 48)}"
            )
        for w in self.windows:
            if not w.top:
                continue
            lines += ["", f"Window {w.index}/{n} (weight {w.weight:.3f}), events {w.start}-{w.end - 1}:"]
            for e in w.events:
                new = " (new)" if e.new else ""
                lines.append(f"  {e.time}  {e.behavior:<8} {e.item_id}{new}  {_clip(e.text, width - 20)}")
        return "\n".join(lines) + "\n"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


class Recommender:
    """Answers top-K requests for a loaded model; item vectors are computed once per instance."""

    def __init__(
        self,
        model: Any,
        data: PreparedData,
        item_vectors: torch.Tensor | np.ndarray | None = None,
        cache: UserStateCache | None = None,
    ):
        self.model = model.eval()
        self.data = data
        model.set_item_prior(data.train_item_counts())  # which items are new (model.items.cold_boost)
        self.encoder = IncrementalEncoder(model, data, cache)
        if item_vectors is None:
            item_vectors = self._catalogue_vectors()
        vectors = torch.as_tensor(item_vectors)
        if tuple(vectors.shape) != (data.n_items, model.cfg.model.head.dim):
            raise ValueError(
                f"item vectors must be [{data.n_items}, {model.cfg.model.head.dim}], got {list(vectors.shape)}"
            )
        self.item_vectors = vectors.float().cpu()  # [n_items, D]
        self.scale = float(model.head.scale())  # 1 / temperature
        self.item_texts = self.encoder.renderer.item_texts

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, data_dir: str | Path | None = None, embeddings: str | Path | None = None
    ) -> Recommender:
        """Load a model folder, its data (default: the data_dir saved in its config) and, when
        given, the item vectors of a ``seqrec export`` folder made from the same weights."""
        from seqrec.config import ConfigError
        from seqrec.modeling import SeqRecModel
        from seqrec.serving.export import load_item_vectors

        model = SeqRecModel.from_pretrained(checkpoint)
        data_dir = data_dir or model.cfg.data_dir
        if not data_dir:
            raise ConfigError("--data is required: the model's config has no data_dir")
        data = PreparedData.load(data_dir)
        vectors = load_item_vectors(embeddings, checkpoint)[0] if embeddings else None
        return cls(model, data, vectors)

    @torch.no_grad()
    def _catalogue_vectors(self) -> torch.Tensor:
        """[n_items, D] item vectors of the model (encodes the catalogue's text once)."""
        from seqrec.data.collate import TextTokens, item_token_ids

        model = self.model
        if model.item_tower.uses_text and model.item_features.shape[0] != model.n_items:
            tokens = TextTokens.for_model(model.tokenizer, model.cfg, model.is_decoder)
            model.build_item_cache(item_token_ids(self.data, model.cfg, tokens))
        return model.item_embeddings().float().cpu()

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        events: Sequence[Event] = (),
        include_seen: bool = False,
        explain_top: int = 1,
    ) -> Recommendations:
        """Top `k` items for `user_id` after appending `events`; an unknown user with events is a
        cold start, without events an error (DataError)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        user_id = str(user_id)
        enc = self.encoder.update(user_id, events, allow_new=bool(events))
        state = self.encoder.history(user_id)
        scores = (self.item_vectors @ enc.vector) * self.scale  # [n_items]
        scores = self.model.boost_cold(scores.unsqueeze(0))[0].to(self.item_vectors.device)
        if not include_seen:
            scores[torch.from_numpy(np.unique(state.items))] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k) if k > 0 else None
        items = []
        if top is not None:
            for rank, (score, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
                items.append(
                    RecommendedItem(
                        rank, self.encoder.catalogue.item_ids[i], i, float(score), self.item_texts[i]
                    )
                )
        n_old = state.n_events - len(events)
        weights = enc.attention.tolist()
        top_windows = set(np.argsort(weights)[::-1][: max(explain_top, 0)].tolist())
        windows = []
        for j, (w, text) in enumerate(zip(enc.windows, enc.texts)):
            explained = ExplainedWindow(j + 1, w.start, w.end, float(weights[j]), text, j in top_windows)
            if explained.top:
                explained.events = [self._event(state, pos, pos >= n_old) for pos in range(w.start, w.end)]
            windows.append(explained)
        return Recommendations(
            user_id, enc.cold_start, state.n_events, len(events), enc.encoded, items, windows
        )

    def _event(self, state: Any, pos: int, new: bool) -> ExplainedEvent:
        item, ts = int(state.items[pos]), int(state.times[pos])
        behavior = self.encoder.catalogue.behaviors[int(state.behaviors[pos])]
        return ExplainedEvent(
            pos,
            self.encoder.catalogue.item_ids[item],
            behavior,
            ts,
            format_time(ts),
            self.item_texts[item],
            new,
        )
