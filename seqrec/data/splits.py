"""Leakage-safe splits as positions into each user's time-ordered history (see seqrec.data.schema).

Every user gets ``train_end``, ``valid_pos`` and ``test_pos``; a target's model input is the events
strictly before it, so a target is never inside its own input. Eligible targets are events whose
behaviour is in ``data.target_behaviors`` (all when empty) and that have at least one event before
them (an empty input carries no sequence to learn from).

* ``loo`` (leave-one-out): test = the last eligible event, valid = the eligible event before it,
  ``train_end = valid_pos`` (or ``test_pos`` without a valid target, or the whole history without
  either). Events after the test target (possible with target_behaviors) are future: they belong
  to no input.
* ``temporal`` (global cut): ``t_valid`` / ``t_test`` are the ``valid_quantile`` / ``test_quantile``
  quantiles of all event times (``method="lower"``: an actual event time). Valid target = the
  user's first eligible event in ``[t_valid, t_test)``; test target = the first eligible event at
  ``>= t_test``; ``train_end`` = the position of the user's first event at ``>= t_valid``. So
  nothing at or after ``t_valid`` is ever trained on, for any user.

Users without a target get -1. Everything is vectorized over users; the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seqrec.config import ConfigError, DataConfig
from seqrec.data.schema import DataError

NONE = -1


@dataclass
class SplitResult:
    train_end: np.ndarray  # [U] int32
    valid_pos: np.ndarray  # [U] int32, -1 = no valid target
    test_pos: np.ndarray  # [U] int32, -1 = no test target
    info: dict = field(default_factory=dict)  # cut times etc. for meta.json / the report


def _positions(offsets: np.ndarray) -> np.ndarray:
    """[E] position of each event inside its user's history."""
    counts = np.diff(offsets)
    return np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], counts)


def _per_user_max(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Max of `values` over each user's slice (users are never empty)."""
    return np.maximum.reduceat(values, offsets[:-1]) if len(values) else np.zeros(0, np.int64)


def _per_user_min(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.minimum.reduceat(values, offsets[:-1]) if len(values) else np.zeros(0, np.int64)


def eligible_events(
    behaviors: np.ndarray, names: list[str], targets: list[str], offsets: np.ndarray
) -> np.ndarray:
    """[E] bool: may be a target (behaviour allowed, and not a user's first event)."""
    if targets:
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise ConfigError(f"data.target_behaviors {unknown} not among the behaviours {names}")
        allowed = np.isin(behaviors, [names.index(t) for t in targets])
    else:
        allowed = np.ones(len(behaviors), dtype=bool)
    return allowed & (_positions(offsets) >= 1)


def leave_one_out(eligible: np.ndarray, offsets: np.ndarray) -> SplitResult:
    pos = _positions(offsets)
    counts = np.diff(offsets)
    test = _per_user_max(np.where(eligible, pos, NONE), offsets)
    before_test = eligible & (pos < np.repeat(test, counts))
    valid = _per_user_max(np.where(before_test, pos, NONE), offsets)
    train_end = np.where(valid >= 0, valid, np.where(test >= 0, test, counts))
    return SplitResult(train_end.astype(np.int32), valid.astype(np.int32), test.astype(np.int32))


def temporal(
    eligible: np.ndarray, times: np.ndarray, offsets: np.ndarray, q_valid: float, q_test: float
) -> SplitResult:
    pos = _positions(offsets)
    big = np.iinfo(np.int64).max
    t_valid = int(np.quantile(times, q_valid, method="lower"))
    t_test = int(np.quantile(times, q_test, method="lower"))
    if t_test <= t_valid:
        raise DataError(
            f"temporal split: the {q_valid} and {q_test} time quantiles are the same time ({t_valid}); "
            "too many events share a timestamp for these quantiles: move data.valid_quantile / test_quantile apart"
        )
    in_valid = eligible & (times >= t_valid) & (times < t_test)
    in_test = eligible & (times >= t_test)
    valid = _per_user_min(np.where(in_valid, pos, big), offsets)
    test = _per_user_min(np.where(in_test, pos, big), offsets)
    train_end = np.add.reduceat((times < t_valid).astype(np.int64), offsets[:-1]) if len(times) else test
    return SplitResult(
        train_end.astype(np.int32),
        np.where(valid == big, NONE, valid).astype(np.int32),
        np.where(test == big, NONE, test).astype(np.int32),
        {"valid_time": t_valid, "test_time": t_test},
    )


def make_splits(
    cfg: DataConfig, times: np.ndarray, behaviors: np.ndarray, names: list[str], offsets: np.ndarray
) -> SplitResult:
    """Split positions for every user (events sorted by user, then time, then original row)."""
    eligible = eligible_events(behaviors, names, cfg.target_behaviors, offsets)
    if cfg.split == "loo":
        result = leave_one_out(eligible, offsets)
    else:
        result = temporal(eligible, times, offsets, cfg.valid_quantile, cfg.test_quantile)
    if not (result.test_pos >= 0).any():
        want = f" with behaviour in {cfg.target_behaviors}" if cfg.target_behaviors else ""
        raise DataError(f"no user has a test target{want} (split={cfg.split}); nothing to evaluate on")
    return result


def cold_item_draw(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted item indices held out as cold: round(fraction * n_items), drawn with `seed`."""
    k = round(fraction * n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, size=k, replace=False)).astype(np.int64)


def training_events_of(
    items: np.ndarray, item_idx: np.ndarray, offsets: np.ndarray, train_end: np.ndarray
) -> np.ndarray:
    """[E] bool: events of `items` that lie in their user's training part (position < train_end)."""
    pos = _positions(offsets)
    counts = np.diff(offsets)
    in_train = pos < np.repeat(train_end.astype(np.int64), counts)
    return in_train & np.isin(item_idx, items)
