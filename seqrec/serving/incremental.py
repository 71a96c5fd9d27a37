"""Incremental user updates: re-encode only the windows a new event changes.

A user vector is backbone(windows) -> aggregator -> fusion. The backbone is the expensive part;
the aggregator and fusion are a few small matrix products. With the default window grid
(``window.align: start``) appending events changes only the newest window (it grows, or a new one
opens), so a user's window embeddings are cached and a new event costs ONE backbone call on one
window, plus the light aggregator and fusion over the cached embeddings (batched through the model
as ``window_features``, exactly the path the head stage uses).

Each cached window is keyed by its position range ``(start, end)`` and the hash of its rendered
text; an update re-renders the windows (string work), reuses every embedding whose key is
unchanged and encodes the rest. ``align: end`` shifts every window per event, so every window is
re-encoded: still correct, not cheap.

    enc = IncrementalEncoder(model, data)
    first = enc.encode("U001")                              # all windows encoded, then cached
    after = enc.update("U001", [Event(item_idx=3, behavior=1, timestamp=1700000000)])
    after.encoded                                           # 1: only the newest window
    after.vector                                            # [D] unit-length user vector

Profiles are the user's stored profile features (a cold-start user has the "unknown" profile);
new events do not change them. The events file format (``--events`` of ``seqrec recommend``) is
read by :func:`read_events`.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.data.batch import PAD
from seqrec.data.causal_profiles import CausalProfiles
from seqrec.data.examples import make_renderer
from seqrec.data.schema import DataError, PreparedData
from seqrec.data.windows import Window, make_windows
from seqrec.errors import CheckpointError

# ---- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One new event in the prepared data's indices: item row, behaviour index, unix seconds."""

    item_idx: int
    behavior: int
    timestamp: int


class Catalogue:
    """Id <-> index lookups of a prepared data set (items, behaviours, users)."""

    def __init__(self, data: PreparedData, behavior_map: dict[str, str] | None = None):
        self.item_ids = data.items["item_id"].astype(str).tolist()
        self.item_index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.behaviors = data.behaviors
        self.behavior_index = {b: i for i, b in enumerate(self.behaviors)}
        self.behavior_map = dict(behavior_map or {})  # raw name -> canonical (the data config's map)
        self.user_ids = data.users["user_id"].astype(str).tolist()
        self.user_index = {user_id: u for u, user_id in enumerate(self.user_ids)}

    def item(self, item_id: Any) -> int | None:
        return self.item_index.get(str(item_id))

    def behavior(self, name: Any) -> int | None:
        name = str(name)
        return self.behavior_index.get(name, self.behavior_index.get(self.behavior_map.get(name, "")))

    def user(self, user_id: Any) -> int | None:
        return self.user_index.get(str(user_id))


def parse_timestamp(value: Any) -> int:
    """Unix seconds (int or float) or an ISO 8601 date-time (naive = UTC) -> int unix seconds."""
    if isinstance(value, bool):
        raise ValueError(f"timestamp {value!r} is not a number or an ISO date-time")
    if isinstance(value, (int, float)):
        if not np.isfinite(value):
            raise ValueError(f"timestamp {value!r} is not finite")
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not unix seconds or an ISO date-time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp())
    raise ValueError(f"timestamp {value!r} is not a number or an ISO date-time")


def event_from_json(record: Any, catalogue: Catalogue, user_id: str | None = None) -> Event:
    """One JSON object ``{"item_id", "behavior", "timestamp"}`` -> Event; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("item_id", "behavior", "timestamp") if k not in record]
    if missing:
        raise ValueError(f"missing field(s) {missing}; each line needs item_id, behavior, timestamp")
    if user_id is not None and "user_id" in record and str(record["user_id"]) != str(user_id):
        raise ValueError(f"user_id {record['user_id']!r} differs from the requested user {user_id!r}")
    item = catalogue.item(record["item_id"])
    if item is None:
        raise ValueError(f"unknown item_id {record['item_id']!r} (not in the catalogue)")
    behavior = catalogue.behavior(record["behavior"])
    if behavior is None:
        raise ValueError(f"unknown behavior {record['behavior']!r}; known: {catalogue.behaviors}")
    return Event(item, behavior, parse_timestamp(record["timestamp"]))


def read_events(
    path: str | Path, catalogue: Catalogue, user_id: str | None = None, after: int | None = None
) -> list[Event]:
    """Events of a JSONL file, one ``{"item_id", "behavior", "timestamp"}`` object per line (blank
    lines skipped). They must be in time order and not earlier than `after` (the user's last known
    event). DataError names the file and line of the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"events file not found: {path}")
    events: list[Event] = []
    last = after
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = event_from_json(json.loads(line), catalogue, user_id)
            except (json.JSONDecodeError, ValueError) as e:
                raise DataError(f"{path} line {lineno}: {e}") from None
            if last is not None and event.timestamp < last:
                raise DataError(
                    f"{path} line {lineno}: timestamp {event.timestamp} is earlier than the user's "
                    f"last known event ({last}); events must be appended in time order"
                )
            last = event.timestamp
            events.append(event)
    return events


# ---- per-user state ----------------------------------------------------------------------------


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class CachedWindow:
    """A window of the user's history with its rendered text and pooled embedding."""

    start: int
    end: int
    text: str
    text_hash: str
    embedding: torch.Tensor  # [H] float32, CPU

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.start, self.end, self.text_hash)


@dataclass
class UserState:
    """Everything needed to update one user cheaply: history, windows with embeddings, profile."""

    user_id: str
    user_idx: int | None  # row in the prepared data; None for a cold-start user
    items: np.ndarray  # [n] int64 item rows, oldest first
    times: np.ndarray  # [n] int64 unix seconds
    behaviors: np.ndarray  # [n] int64 behaviour indices
    profile_cat: np.ndarray  # [C] int64 (0 = unknown)
    profile_num: np.ndarray  # [F] float32
    windows: list[CachedWindow] = field(default_factory=list)
    vector: torch.Tensor | None = None  # [D] user vector after the last window
    attention: torch.Tensor | None = None  # [W] attention of the last state over the windows

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def last_time(self) -> int | None:
        return int(self.times[-1]) if len(self.times) else None


class UserStateCache:
    """Per-user states, least recently used dropped beyond `max_users` (a plain in-process LRU)."""

    def __init__(self, max_users: int = 100_000):
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        self.max_users = max_users
        self._states: OrderedDict[str, UserState] = OrderedDict()

    def get(self, user_id: str) -> UserState | None:
        state = self._states.get(user_id)
        if state is not None:
            self._states.move_to_end(user_id)
        return state

    def put(self, state: UserState) -> None:
        self._states[state.user_id] = state
        self._states.move_to_end(state.user_id)
        while len(self._states) > self.max_users:
            self._states.popitem(last=False)

    def pop(self, user_id: str) -> UserState | None:
        return self._states.pop(user_id, None)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._states

    def __len__(self) -> int:
        return len(self._states)


@dataclass
class UserEncoding:
    """The result of encoding a user: vector, explanation material and what it cost."""

    user_id: str
    vector: torch.Tensor  # [D] unit length
    attention: torch.Tensor  # [W] last state's attention over the windows (sums to 1)
    windows: list[Window]
    texts: list[str]
    encoded: int  # windows sent through the backbone by this call
    cold_start: bool


# ---- the encoder -------------------------------------------------------------------------------


class IncrementalEncoder:
    """User vectors from cached window embeddings; new events re-encode only changed windows.

    `model` is a SeqRecModel with a backbone (new windows must be encoded), `data` the prepared
    data set it was trained on (catalogue text, histories, profiles). ``texts_encoded`` counts the
    windows sent through the backbone over the encoder's lifetime.
    """

    def __init__(self, model: Any, data: PreparedData, cache: UserStateCache | None = None):
        if model.encoder is None:
            raise CheckpointError(
                "incremental updates encode new windows, so the model needs its backbone; this one was "
                "loaded without it (head stage without the stage-1 adapter?)"
            )
        if model.n_items != data.n_items:
            raise CheckpointError(
                f"the model was trained on {model.n_items} items but {data.path} has {data.n_items}"
            )
        self.model = model.eval()
        self.data = data
        self.cfg = model.cfg
        self.catalogue = Catalogue(data, model.cfg.data.source.behavior_map)
        self.renderer = make_renderer(data, model.cfg)
        self.cache = cache if cache is not None else UserStateCache()
        self.texts_encoded = 0
        causal = model.cfg.model.profile.as_of == "state" and data.profile_spec.source == "behavioural"
        self.causal = CausalProfiles(data) if causal else None

    # ---- public API ----------------------------------------------------------------------------
    def encode(self, user_id: str) -> UserEncoding:
        """The user's current vector (cached after the first call; encodes all windows then)."""
        state = self._state(user_id, allow_new=False)
        if state.vector is not None and state.attention is not None:
            return self._result(state, encoded=0)
        return self._refresh(state)

    def update(self, user_id: str, events: Sequence[Event], allow_new: bool = False) -> UserEncoding:
        """Append `events` (time order, not before the last known event) and re-encode what changed.
        A user unknown to the data is a DataError unless `allow_new` (cold start from events only)."""
        state = self._state(str(user_id), allow_new=allow_new)
        self._check_events(state, events)
        if events:
            state.items = np.concatenate([state.items, [e.item_idx for e in events]]).astype(np.int64)
            state.times = np.concatenate([state.times, [e.timestamp for e in events]]).astype(np.int64)
            state.behaviors = np.concatenate([state.behaviors, [e.behavior for e in events]]).astype(np.int64)
        elif state.vector is not None and state.attention is not None:
            return self._result(state, encoded=0)
        return self._refresh(state)

    def recompute(self, user_id: str) -> UserEncoding:
        """Encode every window of the user's current history from scratch (no cached embedding)."""
        state = self._state(str(user_id), allow_new=False)
        state.windows = []
        return self._refresh(state)

    def last_time(self, user_id: str) -> int | None:
        """Time of the user's last known event; None for a user the data and cache do not know."""
        state = self.cache.get(str(user_id))
        if state is not None:
            return state.last_time
        u = self.catalogue.user(user_id)
        if u is None:
            return None
        times = self.data.sequence(u)[1]
        return int(times[-1]) if len(times) else None

    def history(self, user_id: str) -> UserState:
        """The user's state (history and windows); built from the data on first use."""
        return self._state(str(user_id), allow_new=False)

    # ---- internals -------------------------------------------------------------------------------
    def _state(self, user_id: str, allow_new: bool) -> UserState:
        state = self.cache.get(user_id)
        if state is not None:
            return state
        u = self.catalogue.user(user_id)
        if u is None and not allow_new:
            sample = ", ".join(self.catalogue.user_ids[:5])
            raise DataError(
                f"user {user_id!r} is not in {self.data.path or 'the data'} "
                f"({self.data.n_users} users, e.g. {sample}); give new events to start a cold-start user"
            )
        if u is None:
            n_cat, n_num = self.data.profile_cat.shape[1], self.data.profile_num.shape[1]
            empty = np.zeros(0, dtype=np.int64)
            state = UserState(
                user_id,
                None,
                empty,
                empty.copy(),
                empty.copy(),
                np.zeros(n_cat, np.int64),
                np.zeros(n_num, np.float32),
            )
        else:
            items, times, behs = self.data.sequence(u)
            state = UserState(
                user_id,
                u,
                items.astype(np.int64),
                times.astype(np.int64),
                behs.astype(np.int64),
                self.data.profile_cat[u].astype(np.int64),
                self.data.profile_num[u].astype(np.float32),
            )
        self.cache.put(state)
        return state

    def _check_events(self, state: UserState, events: Sequence[Event]) -> None:
        last = state.last_time
        for i, e in enumerate(events):
            if not 0 <= e.item_idx < self.data.n_items:
                raise DataError(f"event {i}: item_idx {e.item_idx} is outside the catalogue")
            if not 0 <= e.behavior < len(self.catalogue.behaviors):
                raise DataError(f"event {i}: behaviour index {e.behavior} is unknown")
            if last is not None and e.timestamp < last:
                raise DataError(
                    f"event {i}: timestamp {e.timestamp} is earlier than the user's last event ({last})"
                )
            last = e.timestamp

    def _render(self, state: UserState, windows: Iterable[Window]) -> list[str]:
        texts = []
        for w in windows:
            prev = int(state.times[w.start - 1]) if w.start > 0 else None
            texts.append(
                self.renderer.render_window(
                    state.items[w.start : w.end],
                    state.times[w.start : w.end],
                    state.behaviors[w.start : w.end],
                    prev,
                )
            )
        return texts

    def _refresh(self, state: UserState) -> UserEncoding:
        """Recompute windows, encode those whose (start, end, text hash) is not cached, re-run the
        aggregator and fusion, and store the result in the state."""
        if state.n_events == 0:
            raise DataError(f"user {state.user_id!r} has no events: nothing to build a user vector from")
        windows = make_windows(state.times, self.cfg.window)
        texts = self._render(state, windows)
        cached = {w.key: w.embedding for w in state.windows}
        keys = [(w.start, w.end, text_hash(t)) for w, t in zip(windows, texts)]
        todo = [i for i, key in enumerate(keys) if key not in cached]
        fresh: dict[int, torch.Tensor] = {}
        if todo:
            emb = self.model.encode_texts([texts[i] for i in todo], "window")  # [len(todo), H]
            self.texts_encoded += len(todo)
            fresh = {i: emb[j] for j, i in enumerate(todo)}
        state.windows = [
            CachedWindow(w.start, w.end, t, key[2], fresh[i] if i in fresh else cached[key])
            for i, (w, t, key) in enumerate(zip(windows, texts, keys))
        ]
        vector, attention = self._aggregate(state)
        state.vector, state.attention = vector, attention
        return self._result(state, encoded=len(todo))

    @torch.no_grad()
    def _aggregate(self, state: UserState) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregator + fusion over the cached window embeddings -> ([D] vector, [W] attention)."""
        out = self.model(single_user_batch(state, self.causal))
        w = len(state.windows)
        return out.user_emb[0].float().cpu(), out.attn[0, w - 1, :w].float().cpu()

    def _result(self, state: UserState, encoded: int) -> UserEncoding:
        assert state.vector is not None and state.attention is not None
        return UserEncoding(
            state.user_id,
            state.vector,
            state.attention,
            [Window(w.start, w.end) for w in state.windows],
            [w.text for w in state.windows],
            encoded,
            state.user_idx is None,
        )


def single_user_batch(state: UserState, causal: CausalProfiles | None = None) -> dict[str, torch.Tensor]:
    """A one-user seqrec batch (seqrec/data/batch.py) carrying cached `window_features` [W, H];
    with `causal`, one profile per window from the events before its end, as in training."""
    windows = state.windows
    profile_cat = torch.from_numpy(state.profile_cat).unsqueeze(0)  # [1, C]
    profile_num = torch.from_numpy(state.profile_num).unsqueeze(0)  # [1, F]
    if causal is not None:
        cat, num = causal.profile_of(state.items, state.times, state.behaviors, [cw.end for cw in windows])
        profile_cat, profile_num = torch.from_numpy(cat).unsqueeze(0), torch.from_numpy(num).unsqueeze(0)
    w = len(windows)
    k = max(cw.end - cw.start for cw in windows)
    window_items = torch.full((1, w, k), PAD, dtype=torch.long)
    for j, cw in enumerate(windows):
        window_items[0, j, : cw.end - cw.start] = torch.from_numpy(state.items[cw.start : cw.end])
    return {
        "user_idx": torch.tensor([state.user_idx if state.user_idx is not None else -1]),
        "window_features": torch.stack([cw.embedding for cw in windows]),  # [W, H]
        "window_index": torch.arange(w).unsqueeze(0),  # [1, W]
        "window_mask": torch.ones((1, w), dtype=torch.bool),
        "window_time": torch.tensor(
            [[float(state.times[cw.end - 1]) for cw in windows]], dtype=torch.float64
        ),
        "window_items": window_items,  # [1, W, K]
        "profile_cat": profile_cat,
        "profile_num": profile_num,
    }
