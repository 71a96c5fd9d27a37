"""The canonical tables every reader produces, and the ledger of rows dropped on the way.

Canonical tables (pandas, in memory)::

    events  user_id:str, item_id:str, timestamp:int64 (unix seconds), behavior:str,
            value:float64 (NaN if absent), row:int64 (0-based record number in the events file,
            the tie-breaker that keeps the log's order for events with the same timestamp).
            The string columns are pandas Categoricals (strings stored once, rows as integer
            codes), so sorting, dedupe and filters never hash millions of strings again.
    items   item_id:str, then text fields (str or None), in render order; None = no catalogue
    users   user_id:str, then profile fields: float64 columns are numeric, str columns categorical;
            None = no profile table

Nothing is dropped silently: every reader and every later stage that removes a row records it in
a :class:`DropLog` under a named reason (see ``REASONS``), with a few examples pointing at
``file:line``. The report lists them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# reason -> (table the rows come from, what it means). Event reasons add up with the kept
# interactions to the raw event rows; the others count catalogue / profile rows.
REASONS: dict[str, tuple[str, str]] = {
    "malformed_row": ("events", "wrong number of fields (broken line, truncated last line)"),
    "invalid_encoding": ("events", "bytes that are not valid in the file's encoding"),
    "empty_id": ("events", "empty user or item id"),
    "bad_timestamp": ("events", "timestamp that is not a number / date"),
    "timestamp_out_of_range": ("events", "timestamp outside [source.min_timestamp, source.max_timestamp]"),
    "bad_value": ("events", "value column that is not a number"),
    "unknown_behavior": ("events", "behaviour not in data.behaviors (data.unknown_behavior=drop)"),
    "missing_item": ("events", "item absent from the catalogue (data.missing_item=drop)"),
    "duplicate": ("events", "duplicate per data.dedupe"),
    "min_item_events": ("events", "events of items with fewer than data.min_item_events events"),
    "min_user_events": ("events", "events of users with fewer than data.min_user_events events"),
    "kcore": ("events", "events removed by the iterated data.kcore filter"),
    "cold_items": ("events", "training events of the items held out by data.cold_items"),
    "items_malformed_row": ("items", "catalogue rows with a wrong number of fields"),
    "items_invalid_encoding": ("items", "catalogue rows with bytes invalid in the file's encoding"),
    "items_duplicate_id": ("items", "catalogue rows repeating an item id (the first row is kept)"),
    "items_without_events": ("items", "catalogue items with no kept event (not in items.parquet)"),
    "users_malformed_row": ("users", "profile rows with a wrong number of fields"),
    "users_invalid_encoding": ("users", "profile rows with bytes invalid in the file's encoding"),
    "users_duplicate_id": ("users", "profile rows repeating a user id (the first row is kept)"),
    "users_bad_value": ("users", "numeric profile values that are not numbers (set to unknown)"),
    "users_without_events": ("users", "profile rows of users with no kept event"),
}
EVENT_REASONS = tuple(r for r, (table, _) in REASONS.items() if table == "events")
MAX_EXAMPLES = 3


@dataclass
class DropLog:
    """Counts of dropped rows per reason, with up to MAX_EXAMPLES 'file:line: detail' examples."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, count: int, examples: list[str] | None = None) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown drop reason {reason!r}")
        if count <= 0:
            return
        self.counts[reason] += int(count)
        kept = self.examples.setdefault(reason, [])
        kept.extend((examples or [])[: MAX_EXAMPLES - len(kept)])

    def as_dict(self) -> dict[str, int]:
        """Reasons in REASONS order, only those that dropped something."""
        return {r: int(self.counts[r]) for r in REASONS if self.counts.get(r)}

    def event_total(self) -> int:
        return int(sum(self.counts.get(r, 0) for r in EVENT_REASONS))


@dataclass
class Tables:
    """Canonical events / items / users plus where they came from (for messages and the report)."""

    events: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)  # role (events/items/users) -> path
    raw_rows: dict[str, int] = field(default_factory=dict)  # role -> data rows read
    behavior_order: list[str] = field(default_factory=list)  # the adapter's funnel order, if any
    locate: Callable[[int], str] | None = None  # events row -> "file:line" (for error messages)
    item_column: str = "item_id"  # the events file's item column (for error messages)

    def where(self, row: int) -> str:
        return self.locate(row) if self.locate else f"{self.files.get('events', 'events')} row {row + 1}"


def distinct(values: pd.Series) -> np.ndarray:
    """The distinct string values of a (categorical or plain) column, as an object array."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        return np.asarray(values.cat.categories, dtype=object)[np.unique(codes[codes >= 0])]
    return np.asarray(pd.unique(values.astype(str)), dtype=object)


def isin(values: pd.Series, universe: pd.Series) -> np.ndarray:
    """[len(values)] bool: membership of string ids. Categorical columns are checked once per
    category; plain ones with pyarrow (pandas' isin on Arrow strings loops in Python)."""
    value_set = pa.array(distinct(universe), type=pa.string())
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = pa.array(np.asarray(values.cat.categories, dtype=object), type=pa.string())
        member = np.asarray(pc.is_in(cats, value_set=value_set).to_numpy(zero_copy_only=False), dtype=bool)
        codes = values.cat.codes.to_numpy()
        return (codes >= 0) & member[np.maximum(codes, 0)] if len(member) else np.zeros(len(values), bool)
    found = pc.is_in(pa.array(values.astype(str), type=pa.string()), value_set=value_set)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)
