"""Strings -> canonical tables: typed, validated, every rejected row named or counted.

Shared by every reader: the generic one and the named adapters only decide which raw column is
which canonical field; the checks (empty ids, timestamps, values, behaviours, catalogue
membership, duplicate ids in side tables) and their error messages live here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.config import DataConfig, SourceConfig
from seqrec.data.schema import DataError
from seqrec.data.sources.files import RawTable
from seqrec.data.sources.tables import DropLog, Tables, isin

TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass(frozen=True)
class EventColumns:
    """Which raw column holds each canonical event field (None = absent)."""

    user_id: str
    item_id: str
    timestamp: str
    behavior: str | None = None
    value: str | None = None

    @property
    def required(self) -> list[str]:
        return [c for c in (self.user_id, self.item_id, self.timestamp, self.behavior, self.value) if c]


def reject(
    raw: RawTable,
    keep: np.ndarray,
    bad: np.ndarray,
    column: str,
    problem: Callable[[int], str],
    policy: str,
    reason: str,
    log: DropLog,
    fix: str,
) -> np.ndarray:
    """Rows where `bad` (among those still kept) either fail (first one named) or are dropped and counted."""
    bad = bad & keep
    if not bad.any():
        return keep
    idx = np.flatnonzero(bad)
    if policy == "error":
        i = int(idx[0])
        more = f" ({len(idx) - 1} more row(s) like it)" if len(idx) > 1 else ""
        raise DataError(f"{raw.where(i, column)}: {problem(i)}{more}; {fix}")
    log.add(reason, len(idx), [f"{raw.where(int(i), column)}: {problem(int(i))}" for i in idx[:3]])
    return keep & ~bad


def to_numbers(values: pd.Series) -> np.ndarray:
    """Strings -> float64, NaN where not a number. One vectorized Arrow cast when all parse."""
    try:
        return np.asarray(
            pc.cast(pa.array(values), pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pd.to_numeric(values.str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def parse_timestamps(values: pd.Series, unit: str) -> np.ndarray:
    """Raw strings -> float unix seconds (NaN where unparseable)."""
    if unit == "iso":
        parsed = pd.to_datetime(values.str.strip(), utc=True, errors="coerce", format="ISO8601")
        stamps = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[s]")
        valid = ~np.isnat(stamps)
        secs = np.full(len(values), np.nan)
        secs[valid] = stamps[valid].astype(np.int64)
        return secs
    return np.floor(to_numbers(values) / TIME_UNITS[unit])


def categorical(values: pd.Series) -> pd.Categorical[Any]:
    """String ids as a Categorical (categories in first-appearance order): later stages work on
    integer codes instead of hashing millions of strings again."""
    codes, uniques = pd.factorize(values)
    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(pd.Index(uniques, dtype=object)))


def canonical_events(
    raw: RawTable,
    cols: EventColumns,
    source: SourceConfig,
    data: DataConfig,
    log: DropLog,
    behavior_map: dict[str, str] | None = None,
    known_behaviors: list[str] | None = None,
) -> pd.DataFrame:
    """Typed, validated events (see seqrec.data.sources.tables for the columns).

    Behaviours are mapped (adapter map, then data.source.behavior_map) and checked against
    data.behaviors, or the adapter's `known_behaviors` when data.behaviors is empty.
    """
    f = raw.frame
    keep = np.ones(len(f), dtype=bool)
    users = f[cols.user_id].str.strip()
    items = f[cols.item_id].str.strip()
    fix = "set data.bad_rows=drop to skip such rows"
    for name, ids in ((cols.user_id, users), (cols.item_id, items)):
        empty = (ids == "").to_numpy()
        keep = reject(raw, keep, empty, name, lambda i: "empty id", data.bad_rows, "empty_id", log, fix)

    stamp_text = f[cols.timestamp]
    secs = parse_timestamps(stamp_text, source.timestamp_unit)
    unit = "a date-time" if source.timestamp_unit == "iso" else f"a number ({source.timestamp_unit})"
    keep = reject(
        raw, keep, np.isnan(secs), cols.timestamp,
        lambda i: f"timestamp {stamp_text.iloc[i]!r} is not {unit}", data.bad_rows, "bad_timestamp", log,
        "fix the value, set data.source.timestamp_unit, or set data.bad_rows=drop",
    )  # fmt: skip
    with np.errstate(invalid="ignore"):
        out_of_range = (secs < source.min_timestamp) | (secs > source.max_timestamp)
    keep = reject(
        raw, keep, out_of_range, cols.timestamp,
        lambda i: (
            f"timestamp {stamp_text.iloc[i]!r} is outside [{source.min_timestamp}, {source.max_timestamp}] "
            f"unix seconds (data.source.min_timestamp/max_timestamp; is timestamp_unit={source.timestamp_unit!r} right?)"
        ),
        data.bad_rows, "timestamp_out_of_range", log, fix,
    )  # fmt: skip

    values = np.full(len(f), np.nan)
    if cols.value:
        text = f[cols.value]
        values = to_numbers(text)
        bad_value = np.isnan(values) & (text.str.strip() != "").to_numpy()
        keep = reject(
            raw, keep, bad_value, cols.value, lambda i: f"value {text.iloc[i]!r} is not a number",
            data.bad_rows, "bad_value", log, fix,
        )  # fmt: skip

    if cols.behavior:
        # Behaviours have few distinct values: map and check the categories, not every row.
        raw_beh = categorical(f[cols.behavior].str.strip())
        mapping = {**(behavior_map or {}), **source.behavior_map}
        names = np.array([mapping.get(c, c) for c in raw_beh.categories], dtype=object)
        allowed = data.behaviors or known_behaviors or []
        bad_name = np.array([n == "" or (bool(allowed) and n not in allowed) for n in names], dtype=bool)
        codes = raw_beh.codes
        keep = reject(
            raw, keep, bad_name[codes] if len(names) else np.zeros(len(f), bool), cols.behavior,
            lambda i: (
                f"behaviour {f[cols.behavior].iloc[i]!r} is not one of {allowed}"
                if names[codes[i]]
                else "empty behaviour"
            ),
            data.unknown_behavior, "unknown_behavior", log,
            "add it to data.behaviors or data.source.behavior_map, or set data.unknown_behavior=drop",
        )  # fmt: skip
        behavior = pd.Series(names[codes[keep]], dtype=object) if len(names) else pd.Series([], dtype=object)
    else:
        behavior = pd.Series(np.full(int(keep.sum()), source.default_behavior, dtype=object))

    return pd.DataFrame(
        {
            "user_id": categorical(users[keep]),
            "item_id": categorical(items[keep]),
            "timestamp": secs[keep].astype(np.int64),
            "behavior": categorical(behavior),
            "value": values[keep],
            "row": raw.record[keep],
        }
    )


def dedupe_ids(raw: RawTable, key: str, log: DropLog, reason: str, empty_reason: str) -> pd.DataFrame:
    """Side-table rows keyed by `key` (stripped); empty keys and repeated keys are counted and dropped."""
    frame = raw.frame.copy()
    frame[key] = frame[key].str.strip()
    empty = (frame[key] == "").to_numpy()
    if empty.any():
        idx = np.flatnonzero(empty)
        log.add(empty_reason, len(idx), [f"{raw.where(int(i), key)}: empty id" for i in idx[:3]])
    dup = frame[key].duplicated(keep="first").to_numpy() & ~empty
    if dup.any():
        idx = np.flatnonzero(dup)
        log.add(
            reason,
            len(idx),
            [f"{raw.where(int(i), key)}: repeated id {frame[key].iloc[i]!r}" for i in idx[:3]],
        )
    return frame[~(empty | dup)].reset_index(drop=True)


def check_fields(raw: RawTable, wanted: list[str], key: str, what: str) -> list[str]:
    """The requested side-table fields (all but the key when `wanted` is empty), checked to exist."""
    columns = [c for c in raw.frame.columns if c != key]
    if not wanted:
        return columns
    from seqrec.data.sources.files import suggest_columns

    missing = [c for c in wanted if c not in raw.frame.columns]
    if missing:
        raise suggest_columns(raw.path, missing, list(raw.frame.columns), f"check data.source.{what}")
    return list(wanted)


def canonical_items(raw: RawTable, key: str, text_fields: list[str], log: DropLog) -> pd.DataFrame:
    """item_id + text fields (str; empty -> None), one row per item id."""
    fields = check_fields(raw, text_fields, key, "item_text_fields")
    frame = dedupe_ids(raw, key, log, "items_duplicate_id", "items_malformed_row")
    out = pd.DataFrame({"item_id": frame[key].astype(str)})
    for name in fields:
        col = frame[name].str.strip()
        out[name] = col.where(col != "", None)
    return out


def canonical_users(
    raw: RawTable, key: str, fields: list[str], numeric: list[str] | None, log: DropLog
) -> pd.DataFrame:
    """user_id + profile fields: numeric ones as float64 (NaN = unknown), categorical as str."""
    fields = check_fields(raw, fields, key, "user_fields")
    frame = dedupe_ids(raw, key, log, "users_duplicate_id", "users_malformed_row")
    out = pd.DataFrame({"user_id": frame[key].astype(str)})
    for name in fields:
        text = frame[name].str.strip()
        number = pd.to_numeric(text, errors="coerce")
        filled = (text != "").to_numpy()
        invalid = number.isna().to_numpy() & filled
        is_numeric = (name in numeric) if numeric is not None else bool(filled.any()) and not invalid.any()
        if is_numeric:
            if invalid.any():
                idx = np.flatnonzero(invalid)
                log.add(
                    "users_bad_value",
                    len(idx),
                    [f"{raw.where(int(i), name)}: {text.iloc[i]!r} is not a number" for i in idx[:3]],
                )
            out[name] = number.to_numpy(dtype=np.float64)
        else:
            out[name] = text.where(text != "", None)
    return out


def apply_catalogue(tables: Tables, policy: str, log: DropLog, items_path: str) -> Tables:
    """Events whose item is not in the catalogue: error, drop (counted) or keep (rendered by id)."""
    if tables.items is None:
        return tables
    known = isin(tables.events["item_id"], tables.items["item_id"])
    if known.all() or policy == "keep":
        return tables
    idx = np.flatnonzero(~known)
    ev = tables.events
    n_items = ev["item_id"].iloc[idx].nunique()
    if policy == "error":
        row = int(ev["row"].iloc[idx[0]])
        raise DataError(
            f"{tables.where(row)}: column {tables.item_column!r}: item {ev['item_id'].iloc[idx[0]]!r} "
            f"is not in the catalogue {items_path} "
            f"({len(idx)} event(s) reference {n_items} unknown item(s)); set data.missing_item=drop or keep"
        )
    log.add(
        "missing_item",
        len(idx),
        [
            f"{tables.where(int(ev['row'].iloc[i]))}: item {ev['item_id'].iloc[i]!r} not in {items_path}"
            for i in idx[:3]
        ],
    )
    tables.events = ev[known].reset_index(drop=True)
    return tables
