"""Behavioural profile features AS OF each model state (causal), identical in training and serving.

``profiles.py`` fits a behavioural profile on each user's whole training part; given to every
training state, it would tell an early state about the user's later events (activity, top
categories of later targets), while at test time the profile stops at the input. Here the profile
of a state is computed from the events BEFORE that state's end only, with the vocabularies and
standardization constants that preparation fitted on the training part (fixed numbers, so training
and serving transform the same prefix identically):

* ``log_events``: log1p(number of events in the prefix);
* ``log_recency_days``: log1p(days between the prefix's last two events) -- recency as of the state
  (the whole-history version measured the distance to the data set's end, which no state knows);
* ``share_<behaviour>``: behaviour mix of the prefix;
* ``top_category_k``: the prefix's k-th most frequent category, ties to the category more frequent
  in the training data overall; a category outside the k-th vocabulary is code 0 (unknown).

Demographic profiles do not change with time and are returned as stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqrec.data.profiles import DAY
from seqrec.data.schema import PreparedData


class CausalProfiles:
    """profile(user, ends) -> ([W, C] int64 codes, [W, F] float32 values) for prefixes [0, end)."""

    def __init__(self, data: PreparedData):
        self.data = data
        spec = data.profile_spec
        self.behavioural = spec.source == "behavioural"
        self.numeric = [(c["name"], float(c["mean"]), float(c["std"])) for c in spec.numeric]
        self.n_cat = len(spec.categorical)
        self.item_rank: np.ndarray | None = None  # [n_items] overall category rank (-1 = none)
        self.rank_code: list[np.ndarray] = []  # per slot k: category rank -> code in vocab k
        field = data.meta.get("category_field")
        if self.behavioural and self.n_cat and field and field in data.items.columns:
            cats = data.items[field].astype(object).to_numpy()
            counts = data.train_item_counts()
            total: dict[str, int] = {}
            for c, n in zip(cats.tolist(), counts.tolist()):
                if c is not None and c == c:  # not None / NaN
                    total[str(c)] = total.get(str(c), 0) + int(n)
            order = sorted(total, key=lambda c: (-total[c], c))
            rank = {c: r for r, c in enumerate(order)}
            self.item_rank = np.array(
                [rank.get(str(c), -1) if c is not None and c == c else -1 for c in cats.tolist()],
                dtype=np.int64,
            )
            for slot in spec.categorical:
                lookup = {v: i + 1 for i, v in enumerate(slot["vocab"])}
                self.rank_code.append(np.array([lookup.get(c, 0) for c in order], dtype=np.int64))

    def profile(self, user_idx: int, ends: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profiles of a prepared user's prefixes [0, end) for each of `ends`."""
        if not self.behavioural:
            w = len(ends)
            cat = np.repeat(self.data.profile_cat[user_idx][None].astype(np.int64), w, axis=0)
            num = np.repeat(self.data.profile_num[user_idx][None].astype(np.float32), w, axis=0)
            return cat, num
        return self.profile_of(*self.data.sequence(user_idx), ends)

    def profile_of(
        self, items: np.ndarray, times: np.ndarray, behaviors: np.ndarray, ends: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Behavioural profiles of the prefixes [0, end) of any history (e.g. one grown in serving)."""
        ends = np.asarray(ends, dtype=np.int64)
        w = len(ends)
        raw: dict[str, np.ndarray] = {"log_events": np.log1p(ends.astype(np.float64))}
        prev = np.where(ends >= 2, times[np.maximum(ends - 2, 0)], np.nan)
        last = np.where(ends >= 1, times[np.maximum(ends - 1, 0)], np.nan)
        raw["log_recency_days"] = np.log1p(np.maximum(last - prev, 0.0) / DAY)
        names = self.data.behaviors
        if len(names) > 1:
            onehot = np.zeros((len(items) + 1, len(names)))
            onehot[np.arange(1, len(items) + 1), behaviors.astype(np.int64)] = 1.0
            cum = onehot.cumsum(axis=0)[ends]  # [W, B] counts in the prefix
            shares = cum / np.maximum(ends, 1)[:, None]
            for j, name in enumerate(names):
                raw[f"share_{name}"] = np.where(ends > 0, shares[:, j], np.nan)
        num = np.zeros((w, len(self.numeric)), dtype=np.float32)
        for j, (name, mean, std) in enumerate(self.numeric):
            v = raw.get(name)
            if v is not None:
                num[:, j] = np.nan_to_num((v - mean) / std, nan=0.0)
        cat = np.zeros((w, self.n_cat), dtype=np.int64)
        if self.item_rank is not None:
            ranks = self.item_rank[items]
            for i, end in enumerate(ends.tolist()):
                r = ranks[:end]
                r = r[r >= 0]
                if not len(r):
                    continue
                values, counts = np.unique(r, return_counts=True)
                top = values[np.lexsort((values, -counts))][: self.n_cat]  # most frequent, then rank
                for k, rank in enumerate(top.tolist()):
                    cat[i, k] = self.rank_code[k][rank]
        return cat, num
