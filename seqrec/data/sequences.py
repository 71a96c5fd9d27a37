"""Canonical events -> per-user sequences: order, dedupe, minimum counts, k-core, integer indices.

Order: per user by timestamp, ties broken by the ORIGINAL ROW ORDER of the log (a stable sort on
``row``). Never by item id: with day-resolution timestamps many events tie, and sorting ties by
item id would put the target in a predictable place (a leak that inflates offline metrics).

Indices: ``user_idx`` / ``item_idx`` number the kept users / items in their id order, compared as
integers when every id is an integer (MovieLens: ``item_idx = movie_id - 1``) and as strings
otherwise (Amazon ASINs: the order of the TiCoSeRec / SASRec benchmark files). The order depends
only on the ids, never on the file's row order or on the split. Only items with at least one kept
event get an index: catalogue items nobody interacted with cannot be targets and would only add
noise to full ranking; they are counted in the report (``items_without_events``). Items that
appear only in validation/test events (cold items) keep their index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from seqrec.data.schema import DataError
from seqrec.data.sources.tables import DropLog


def codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 codes, categories) of a string column; free for Categoricals (see sources.tables)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy().astype(np.int64), np.asarray(values.cat.categories, dtype=object)
    c, uniques = pd.factorize(values)
    return c.astype(np.int64), np.asarray(uniques, dtype=object)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Stable order by (user, timestamp, original row); users grouped in first-appearance order."""
    user, _ = codes(events["user_id"])
    order = np.lexsort((events["row"].to_numpy(), events["timestamp"].to_numpy(), user))
    return events.iloc[order].reset_index(drop=True)


def dedupe(events: pd.DataFrame, policy: str, log: DropLog) -> pd.DataFrame:
    """Drop duplicates per `policy` (events must be sorted by sort_events); counted as 'duplicate'.

    exact: identical (user, item, timestamp, behaviour), first row kept. consecutive: the same item
    and behaviour as the user's previous event. first: only a user's first event per item.
    """
    if policy == "none" or len(events) == 0:
        return events
    user, _ = codes(events["user_id"])
    item, _ = codes(events["item_id"])
    if policy == "exact":
        beh, _ = codes(events["behavior"])
        # Exact duplicates share (user, timestamp), so they sit in the same run of the sorted
        # events: only rows whose run has several events need hashing (few, even with ties).
        t = events["timestamp"].to_numpy()
        same = (user[1:] == user[:-1]) & (t[1:] == t[:-1])
        candidate = np.zeros(len(events), dtype=bool)
        candidate[1:] |= same
        candidate[:-1] |= same
        key = pd.DataFrame({"u": user, "i": item, "t": t, "b": beh})[candidate]
        dup = np.zeros(len(events), dtype=bool)
        dup[np.flatnonzero(candidate)] = key.duplicated(keep="first").to_numpy()
    elif policy == "consecutive":
        beh, _ = codes(events["behavior"])
        dup = np.zeros(len(events), dtype=bool)
        dup[1:] = (user[1:] == user[:-1]) & (item[1:] == item[:-1]) & (beh[1:] == beh[:-1])
    elif policy == "first":
        dup = pd.Series(user * (int(item.max()) + 1) + item).duplicated(keep="first").to_numpy()
    else:
        raise DataError(f"unknown dedupe policy {policy!r}")
    log.add("duplicate", int(dup.sum()))
    return events[~dup].reset_index(drop=True)


def filter_counts(
    events: pd.DataFrame, min_user_events: int, min_item_events: int, kcore: int, log: DropLog
) -> pd.DataFrame:
    """Minimum events per item and per user; with kcore > 0, iterate both until stable.

    Without k-core the item minimum is applied once, then the user minimum (so the user minimum
    always holds in the output; an item may fall below its minimum after users are removed).
    With k-core, thresholds are max(kcore, min_*) and both filters repeat until nothing changes.
    """
    user, _ = codes(events["user_id"])
    item, _ = codes(events["item_id"])
    keep = np.ones(len(events), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> bool:
        newly = keep & mask
        log.add(reason, int(newly.sum()))
        keep[newly] = False
        return bool(newly.any())

    def below(ids: np.ndarray, minimum: int) -> np.ndarray:
        counts = np.bincount(ids[keep], minlength=ids.max() + 1 if len(ids) else 0)
        return counts[ids] < minimum

    if kcore > 0:
        u_min, i_min = max(kcore, min_user_events), max(kcore, min_item_events)
        changed = True
        while changed and keep.any():
            changed = drop(below(item, i_min), "kcore")
            changed = drop(below(user, u_min), "kcore") or changed
    else:
        if min_item_events > 1:
            drop(below(item, min_item_events), "min_item_events")
        if min_user_events > 1:
            drop(below(user, min_user_events), "min_user_events")
    return events[keep].reset_index(drop=True)


def id_order(ids: np.ndarray) -> np.ndarray:
    """Permutation sorting distinct string ids: as integers when every id is a canonical integer
    (no sign, no leading zeros, so "007" and "7" never collide), else as strings."""
    text = pd.Series(ids, dtype=object).astype(str)
    canonical_int = text.str.fullmatch(r"0|[1-9][0-9]{0,17}")
    if len(text) and canonical_int.all():
        return np.argsort(text.astype(np.int64).to_numpy(), kind="stable")
    return np.argsort(text.to_numpy(dtype=object), kind="stable")


def index_events(events: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Add user_idx / item_idx (see module docstring) and sort by (user_idx, timestamp, row).

    Returns (events, user ids in index order, item ids in index order).
    """
    if len(events) == 0:
        raise DataError("no events left after filtering (check data.min_user_events / kcore / dedupe)")

    def assign(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        code, categories = codes(column)
        used = np.flatnonzero(np.bincount(code, minlength=len(categories)))  # categories with events
        order = id_order(categories[used])
        lookup = np.full(len(categories), -1, dtype=np.int64)
        lookup[used[order]] = np.arange(len(used))
        return lookup[code].astype(np.int32), categories[used[order]]

    user_idx, user_ids = assign(events["user_id"])
    item_idx, item_ids = assign(events["item_id"])
    out = events.assign(user_idx=user_idx, item_idx=item_idx)
    order = np.lexsort((out["row"].to_numpy(), out["timestamp"].to_numpy(), user_idx))
    return out.iloc[order].reset_index(drop=True), user_ids, item_ids


def behavior_order(found: list[str], configured: list[str], adapter: list[str]) -> list[str]:
    """Canonical behaviours weakest first: data.behaviors, else the adapter's funnel, else by FUNNEL rank.

    Behaviours not in the known funnel go first (weakest), alphabetically; the found ones in a
    configured list keep the configured order (unused configured names are kept too, so indices
    stay stable across data sets prepared with the same config).
    """
    if configured:
        return list(configured)
    if adapter and set(found) <= set(adapter):
        return list(adapter)
    rank = {b: r for r, b in enumerate(FUNNEL)}
    return sorted(set(found), key=lambda b: (rank.get(b, -1), b))


FUNNEL = ["view", "pv", "click", "favorite", "fav", "cart", "buy", "purchase"]


def length_histogram(counts: np.ndarray) -> dict[str, int]:
    """Users per sequence-length bucket (1, 2, 3, 4, 5, 6-10, 11-20, 21-50, 51-100, 101-200, 201-500, >500)."""
    edges = [1, 2, 3, 4, 5, 6, 11, 21, 51, 101, 201, 501]
    out: dict[str, int] = {}
    for lo, hi in zip(edges, [*edges[1:], None]):
        name = str(lo) if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f">{lo - 1}")
        n = int(((counts >= lo) & (counts < hi)).sum()) if hi else int((counts >= lo).sum())
        out[name] = n
    return out
