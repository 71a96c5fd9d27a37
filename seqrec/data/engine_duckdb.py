"""Out-of-core ``seqrec data prepare`` on DuckDB (``--engine duckdb``).

Same stages, same rules and the same prepared tables as the in-memory pandas path
(:mod:`seqrec.data.prepare`), but every step that grows with the number of EVENTS runs inside
DuckDB with a memory limit, spilling to a temporary folder: reading and validating the log,
ordering with the tie rule (timestamp, then the log's record number), dedupe, minimum counts /
k-core, indices, splits, behavioural profiles, the report's counts and the writing of the events.
Python only ever holds arrays that grow with users or items (split positions, profile features,
the users and items tables), never one value per event.

Why DuckDB (and not Polars' streaming engine or hand-written chunking): a sort on (user, time,
record) over 100M rows, window functions for positions, group-bys for counts and joins all
spill to disk under ``memory_limit``; its CSV reader reports rejected rows with their physical
line number (``store_rejects``), which keeps "file:line" in every message; and it streams query
results as Arrow batches, so the events are written with the same pyarrow writer as today.

Reading: CSV/TSV (optionally .gz) and Parquet event files are read natively by DuckDB (the
``generic``/``synthetic`` sources and ``taobao``); the other sources (MovieLens, Amazon, JSON
lines) are read by their pandas readers -- their files are small -- and everything after reading
runs here. Catalogue and profile side tables are read by the pandas readers (they grow with
items / users, not events).

Line numbers of good rows are derived from their ordinal among the parsed rows and the line
numbers DuckDB reports for rejected rows; they are exact unless the file has blank lines or
quoted fields spanning lines before the row (then they can be early by that many lines).

Output: the prepared layout of :mod:`seqrec.data.schema`. With ``shards > 1`` the events are
written as ``events/part-NNNNN.parquet`` (one file per user-hash shard, each sorted by user_idx,
timestamp, record) plus ``shards.json``; ``shard = int.from_bytes(md5(user_id)[:8], "big") %
shards``, so a user always lands in the same shard whatever else the log holds.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec.config import DataConfig, save_config, validate
from seqrec.data import sequences
from seqrec.data.profiles import DAY, _Builder, category_column, demographics, profile_kind
from seqrec.data.schema import (
    EVENTS_FILE,
    META_FILE,
    DataError,
    ProfileSpec,
    write_prepared,
)
from seqrec.data.shards import owner_ranks, user_hashes
from seqrec.data.sources import read_source
from seqrec.data.sources.canonical import TIME_UNITS, canonical_items, canonical_users
from seqrec.data.sources.files import FORMATS, _first_record, detect_format, read_table, suggest_columns
from seqrec.data.sources.tables import DropLog, Tables
from seqrec.data.splits import SplitResult

SHARDS_FILE = "shards.json"
EVENTS_DIR = "events"
ROW_GROUP = 1024 * 1024  # pyarrow's default row group, as DataFrame.to_parquet writes it
NATIVE_SOURCES = ("generic", "synthetic", "taobao")
INT_ID = "0|[1-9][0-9]{0,17}"  # sequences.id_order: canonical integers sort as numbers
WS = " \t\r\n\x0b\x0c"  # str.strip()'s ASCII whitespace


@dataclass
class EngineOptions:
    """DuckDB settings for one prepare."""

    memory_limit: str = "4GB"
    threads: int = 0  # 0 = DuckDB's default (all cores)
    shards: int = 1  # >1: events/part-NNNNN.parquet partitioned by user hash
    temp_dir: str | None = None  # where DuckDB spills (default: inside the temporary output)


def _q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def connect(work: Path, opts: EngineOptions) -> Any:
    import duckdb

    con = duckdb.connect(str(work / "prepare.duckdb"))
    spill = Path(opts.temp_dir) if opts.temp_dir else work / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET memory_limit={_q(opts.memory_limit)}")
    con.execute(f"SET temp_directory={_q(str(spill))}")
    con.execute("SET preserve_insertion_order=true")
    con.execute("SET enable_progress_bar=false")
    if opts.threads:
        con.execute(f"SET threads={int(opts.threads)}")
    return con


def _scalar(con: Any, sql: str) -> Any:
    rows = con.execute(sql).fetchall()
    return rows[0][0] if rows else None


# ---- reading --------------------------------------------------------------------------------


@dataclass
class Located:
    """Maps a parsed row's ordinal (0-based among the rows that parsed) to file lines / records."""

    path: Path
    header: bool
    kind: str  # delimited | parquet | memory
    reject_pos: np.ndarray  # [R] good rows before each rejected line (ascending)
    reject_malformed: np.ndarray  # [R] bool: a malformed record (not an encoding blank)
    where_row: Callable[[int], str] | None = None  # for the pandas-read sources

    def line(self, k: int) -> int:
        if self.kind == "parquet":
            return k + 1
        return k + (2 if self.header else 1) + int(np.searchsorted(self.reject_pos, k, side="right"))

    def where(self, k: int, column: str | None = None) -> str:
        unit = "row " if self.kind == "parquet" else ""
        col = f": column {column!r}" if column else ""
        return f"{self.path}:{unit}{self.line(k)}{col}"


def _text_head(path: Path, encoding: str) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(1 << 20)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if not head.strip():
        raise DataError(f"{path}: the file is empty")
    return head.decode(encoding, errors="replace").removeprefix("\ufeff")


DUCK_ENCODINGS = {"utf-8": "utf-8", "utf-8-sig": "utf-8", "latin-1": "latin-1", "iso8859-1": "latin-1"}


def stage_csv(
    con: Any,
    path: Path,
    *,
    delimiter: str,
    header: bool,
    names: list[str] | None,
    encoding: str,
    quoting: bool,
    policy: str,
    drops: DropLog,
    required: list[str],
    keys: dict[str, str],
    hint: str = "",
) -> tuple[Located, int]:
    """CSV/TSV -> table ``raw`` (k = ordinal, then the `select` expressions over the text columns).

    Rejected rows (wrong field count, invalid encoding) are counted or reported with their line.
    Returns (locator, number of rejected records).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError as e:
        raise DataError(f"{path}: unknown encoding {encoding!r} (data.source.encoding)") from e
    if codec not in DUCK_ENCODINGS:
        raise DataError(f"{path}: encoding {encoding!r} is not supported by --engine duckdb (use pandas)")
    head = _text_head(path, encoding)
    if header:
        columns = [c.strip() for c in _first_record(head, delimiter, quoting, strip=False)]
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise DataError(f"{path}:1: duplicate column name(s) {dup} in the header")
    else:
        columns = names or [str(i) for i in range(len(_first_record(head, delimiter, quoting)))]
    missing = [c for c in required if c not in columns]
    if missing:
        raise suggest_columns(path, missing, columns, hint)
    spec = "{" + ", ".join(f"{_q(c)}: 'VARCHAR'" for c in columns) + "}"
    quote = '"' if quoting else ""
    con.execute("DROP TABLE IF EXISTS rejects; DROP TABLE IF EXISTS rejects_scan")
    source = (
        f"read_csv({_q(str(path))}, columns={spec}, header={str(header).lower()}, auto_detect=false, "
        f"delim={_q(delimiter)}, quote={_q(quote)}, escape={_q(quote)}, encoding={_q(DUCK_ENCODINGS[codec])}, "
        "strict_mode=true, null_padding=false, max_line_size=16777216, store_rejects=true, "
        "rejects_table='rejects', rejects_scan='rejects_scan')"
    )
    try:
        con.execute(f"CREATE OR REPLACE TABLE raw AS SELECT {_select(keys, 'src.{}')} FROM {source} AS src")
    except Exception as e:  # duckdb.Error subclasses
        raise DataError(f"{path}: cannot parse as {'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from e
    summary = con.execute(
        "SELECT line, bool_or(error_type = 'INVALID ENCODING') AS enc, bool_or(error_type LIKE '%QUOTE%') AS quote "
        "FROM rejects GROUP BY line ORDER BY line"
    ).fetchnumpy()
    lines = np.asarray(summary["line"], dtype=np.int64)
    encoding_bad = np.asarray(summary["enc"], dtype=bool)
    malformed = ~encoding_bad
    pos = lines - (2 if header else 1) - np.arange(len(lines))
    loc = Located(path, header, "delimited", pos, malformed)
    n_good = int(_scalar(con, "SELECT count(*) FROM raw"))
    if len(lines):
        if np.asarray(summary["quote"], dtype=bool).any():
            line = int(lines[np.asarray(summary["quote"], dtype=bool)][0])
            raise DataError(
                f"{path}:{line}: unterminated quote: the quoted field opened on this line never closes "
                "and swallows the lines after it; fix the quoting or set data.source.quoting=false"
            )
        enc_lines = lines[encoding_bad]
        if policy == "error" and len(enc_lines):
            column = _scalar(con, f"SELECT min(column_name) FROM rejects WHERE line = {int(enc_lines[0])}")
            raise DataError(
                f"{path}:{int(enc_lines[0])}: column {column!r}: bytes are not valid {encoding} "
                "(set data.source.encoding, e.g. latin-1, or data.bad_rows=drop)"
            )
        row_msgs = _malformed_messages(con, path, lines[malformed][:3])
        if policy == "error":
            raise DataError(row_msgs[0] + "; set data.bad_rows=drop to skip such rows")
        drops.add(
            "invalid_encoding",
            len(enc_lines),
            [f"{path}:{int(n)}: invalid {encoding}" for n in enc_lines[:3]],
        )
        drops.add("malformed_row", int(malformed.sum()), row_msgs)
    if n_good == 0 and not len(lines):
        raise DataError(f"{path}: the file has {'a header but ' if header else ''}no data rows")
    return loc, len(lines)


def _malformed_messages(con: Any, path: Path, lines: np.ndarray) -> list[str]:
    """files._report_invalid's messages for rejected lines with a wrong number of fields."""
    if not len(lines):
        return []
    rows = con.execute(
        "SELECT line, min(csv_line), min(error_message), max(error_message), min(line_byte_position) "
        f"FROM rejects WHERE line IN ({', '.join(str(int(n)) for n in lines)}) GROUP BY line ORDER BY line"
    ).fetchall()
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(size - 1, 0))
        no_final_newline = path.suffix != ".gz" and f.read(1) != b"\n"
    out = []
    for line, text, low, high, start in rows:
        numbers = [re.findall(r"Columns: (\d+) Found: (\d+)", m) for m in (low, high)]
        found = [(int(e), int(a)) for n in numbers for e, a in n]
        if not found:
            out.append(f"{path}:{line}: {low}: {str(text)[:80]!r}")
            continue
        expected = found[0][0]
        actual = max(a for _, a in found) if any(a > expected for _, a in found) else min(a for _, a in found)
        what = f"expected {expected} fields, found {actual}"
        if no_final_newline and actual < expected and start + len(str(text).encode()) >= size:
            what += " (truncated last line: the file does not end with a newline)"
        out.append(f"{path}:{line}: {what}: {str(text)[:80]!r}")
    return out


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(keys: dict[str, str], column: str) -> str:
    """SELECT list: each alias from its raw text column ('' for NULL); ids and behaviours stripped."""
    parts = []
    for alias, name in keys.items():
        text = f"coalesce(CAST({column.format(_ident(name))} AS VARCHAR), '')"
        parts.append(f"{text if alias in ('ts', 'val') else f'trim({text}, {_q(WS)})'} AS {alias}")
    return ", ".join(parts)


def stage_parquet(con: Any, path: Path, required: list[str], keys: dict[str, str], hint: str) -> Located:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
    except Exception as e:
        raise DataError(f"{path}: cannot read as Parquet: {e}") from e
    columns = [str(c) for c in schema.names]
    missing = [c for c in required if c not in columns]
    if missing:
        raise suggest_columns(path, missing, columns, hint)
    con.execute(
        f"CREATE OR REPLACE TABLE raw AS SELECT {_select(keys, 'src.{}')} FROM read_parquet({_q(str(path))}) AS src"
    )
    if not _scalar(con, "SELECT count(*) FROM raw"):
        raise DataError(f"{path}: the file has no rows")
    return Located(path, True, "parquet", np.zeros(0, np.int64), np.zeros(0, bool))


@dataclass
class Source:
    """What reading produced: the staged events (table ``ev``) and the side tables."""

    files: dict[str, str]
    raw_rows: dict[str, int]
    loc: Located
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    behavior_order: list[str] | None = None
    item_column: str = "item_id"


def _record_column(con: Any, loc: Located) -> str:
    """SQL for the record number of ordinal `k` (malformed records before it counted in)."""
    keep = loc.reject_malformed
    if not keep.any():
        return "k"
    pos = loc.reject_pos[keep]
    cum = np.arange(1, len(pos) + 1)
    frame = pd.DataFrame({"p": pos, "c": cum}).groupby("p", as_index=False)["c"].max()
    con.register("reject_cum_df", frame)
    con.execute("CREATE OR REPLACE TABLE reject_cum AS SELECT * FROM reject_cum_df")
    con.unregister("reject_cum_df")
    return "(k + coalesce((SELECT max(c) FROM reject_cum WHERE p <= k), 0))"


def validate_events(
    con: Any,
    cfg: DataConfig,
    loc: Located,
    drops: DropLog,
    col_names: dict[str, str | None],
    behavior_map: dict[str, str] | None,
    known: list[str] | None,
) -> None:
    """Table ``raw`` (k, u, i, ts, val, beh) -> table ``ev`` with the checks of canonical_events."""
    src = cfg.source
    if src.timestamp_unit == "iso":
        con.execute("SET TimeZone='UTC'")
        secs = f"floor(epoch(TRY_CAST(trim(ts, {_q(WS)}) AS TIMESTAMPTZ)))"
    else:
        secs = f"floor(TRY_CAST(trim(ts, {_q(WS)}) AS DOUBLE) / {TIME_UNITS[src.timestamp_unit]})"
    has_value = col_names.get("value") is not None
    value = f"TRY_CAST(trim(val, {_q(WS)}) AS DOUBLE)" if has_value else "CAST('nan' AS DOUBLE)"
    bad_value = (
        f"(s.value IS NULL OR isnan(s.value)) AND trim(raw.val, {_q(WS)}) <> ''" if has_value else "false"
    )
    # Behaviours: few distinct values -> mapped and checked in Python, joined as a small table.
    mapping = {**(behavior_map or {}), **src.behavior_map}
    allowed = cfg.behaviors or known or []
    if col_names.get("behavior"):
        raw_names = [r[0] for r in con.execute("SELECT DISTINCT beh FROM raw").fetchall()]
    else:
        raw_names = [src.default_behavior]
        con.execute(f"ALTER TABLE raw ADD COLUMN beh VARCHAR DEFAULT {_q(src.default_behavior)}")
    names = [mapping.get(b, b) for b in raw_names]
    ok = [not (n == "" or (bool(allowed) and n not in allowed)) for n in names]
    good_names = sorted({n for n, g in zip(names, ok) if g})
    beh_frame = pd.DataFrame(
        {
            "beh": pd.Series(raw_names, dtype=object),
            "name": pd.Series(names, dtype=object),
            "ok": np.array(ok, dtype=bool),
            "code": np.array([good_names.index(n) if g else -1 for n, g in zip(names, ok)], dtype=np.int16),
        }
    )
    con.register("beh_df", beh_frame)
    con.execute("CREATE OR REPLACE TABLE behmap AS SELECT * FROM beh_df")
    con.unregister("beh_df")
    con.execute(
        f"""CREATE OR REPLACE TABLE checked AS
        SELECT raw.k, raw.u, raw.i, s.secs, s.value, behmap.code AS beh,
          CASE WHEN raw.u = '' THEN 'empty_user' WHEN raw.i = '' THEN 'empty_item'
               WHEN s.secs IS NULL OR isnan(s.secs) THEN 'bad_timestamp'
               WHEN s.secs < {int(src.min_timestamp)} OR s.secs > {int(src.max_timestamp)}
                 THEN 'timestamp_out_of_range'
               WHEN {bad_value}
                 THEN 'bad_value'
               WHEN NOT behmap.ok THEN 'unknown_behavior' END AS reason
        FROM rawk AS raw JOIN behmap USING (beh),
        LATERAL (SELECT {secs} AS secs, {value} AS value) s"""
    )
    checks = [
        ("empty_user", "empty_id", col_names["user"], cfg.bad_rows),
        ("empty_item", "empty_id", col_names["item"], cfg.bad_rows),
        ("bad_timestamp", "bad_timestamp", col_names["timestamp"], cfg.bad_rows),
        ("timestamp_out_of_range", "timestamp_out_of_range", col_names["timestamp"], cfg.bad_rows),
        ("bad_value", "bad_value", col_names.get("value"), cfg.bad_rows),
        ("unknown_behavior", "unknown_behavior", col_names.get("behavior"), cfg.unknown_behavior),
    ]
    counts = dict(
        con.execute("SELECT reason, count(*) FROM checked WHERE reason IS NOT NULL GROUP BY 1").fetchall()
    )
    unit = "a date-time" if src.timestamp_unit == "iso" else f"a number ({src.timestamp_unit})"
    fix = "set data.bad_rows=drop to skip such rows"
    for code, reason, column, policy in checks:
        n = int(counts.get(code, 0))
        if not n:
            continue
        rows = con.execute(
            f"SELECT raw.k, raw.ts, raw.val, raw.beh FROM checked JOIN rawk AS raw USING (k) "
            f"WHERE reason = {_q(code)} ORDER BY k LIMIT 3"
        ).fetchall()

        def problem(r: tuple[Any, ...], code: str = code) -> str:
            if code.startswith("empty"):
                return "empty id"
            if code == "bad_timestamp":
                return f"timestamp {r[1]!r} is not {unit}"
            if code == "timestamp_out_of_range":
                return (
                    f"timestamp {r[1]!r} is outside [{src.min_timestamp}, {src.max_timestamp}] unix seconds "
                    f"(data.source.min_timestamp/max_timestamp; is timestamp_unit={src.timestamp_unit!r} right?)"
                )
            if code == "bad_value":
                return f"value {r[2]!r} is not a number"
            return f"behaviour {r[3]!r} is not one of {allowed}" if r[3] else "empty behaviour"

        if policy == "error":
            more = f" ({n - 1} more row(s) like it)" if n > 1 else ""
            how = {
                "bad_timestamp": "fix the value, set data.source.timestamp_unit, or set data.bad_rows=drop",
                "unknown_behavior": "add it to data.behaviors or data.source.behavior_map, "
                "or set data.unknown_behavior=drop",
            }.get(code, fix)
            raise DataError(f"{loc.where(int(rows[0][0]), column)}: {problem(rows[0])}{more}; {how}")
        drops.add(reason, n, [f"{loc.where(int(r[0]), column)}: {problem(r)}" for r in rows])
    record = _record_column(con, loc)
    con.execute(
        f"""CREATE OR REPLACE TABLE ev AS
        SELECT k, {record} AS row, u AS user_id, i AS item_id, CAST(secs AS BIGINT) AS timestamp,
               CAST(beh AS SMALLINT) AS beh, value
        FROM checked WHERE reason IS NULL ORDER BY k"""
    )
    con.execute("DROP TABLE checked")
    con.execute(f"CREATE OR REPLACE TABLE behnames AS SELECT * FROM (VALUES {_values(good_names)}) t(name)")
    _BEH_NAMES[id(con)] = good_names


_BEH_NAMES: dict[int, list[str]] = {}


def _values(names: list[str]) -> str:
    return ", ".join(f"({_q(n)})" for n in names) if names else "(NULL)"


def read_native(con: Any, cfg: DataConfig, drops: DropLog) -> Source:
    """generic / synthetic / taobao with DuckDB reading the events file."""
    src, cols = cfg.source, cfg.source.columns
    from seqrec.data.sources import generic, taobao

    if src.kind == "taobao":
        path = taobao.events_file(cfg)
        fmt = "csv"
        names = dict(user="user_id", item="item_id", timestamp="timestamp", behavior="behavior", value=None)
        items_path = users_path = None
    else:
        path, items_path, users_path = generic.resolve_files(cfg)
        fmt = detect_format(path, src.format)
        names = dict(
            user=cols.user_id, item=cols.item_id, timestamp=cols.timestamp, behavior=cols.behavior,
            value=cols.value,
        )  # fmt: skip
    if fmt == "jsonl":
        raise _Fallback()
    required = [c for c in names.values() if c]
    keys = {"u": str(names["user"]), "i": str(names["item"]), "ts": str(names["timestamp"])}
    if names.get("value"):
        keys["val"] = str(names["value"])
    if names.get("behavior"):
        keys["beh"] = str(names["behavior"])
    if src.kind == "taobao":
        keys["cat"] = "category_id"
    if fmt == "parquet":
        loc = stage_parquet(con, path, required, keys, generic.HINT)
        n_rejected = 0
    else:
        delimiter = src.delimiter or ("\t" if fmt == "tsv" else ",")
        loc, n_rejected = stage_csv(
            con, path, delimiter=delimiter,
            header=False if src.kind == "taobao" else src.has_header,
            names=taobao.COLUMNS if src.kind == "taobao" else None,
            encoding=src.encoding, quoting=src.quoting, policy=cfg.bad_rows, drops=drops,
            required=required, keys=keys, hint=generic.HINT,
        )  # fmt: skip
    # k = the ordinal of each parsed row: the table's rowid (the scan preserves insertion order).
    if "val" not in keys:
        con.execute("ALTER TABLE raw ADD COLUMN val VARCHAR DEFAULT ''")
    con.execute("CREATE OR REPLACE VIEW rawk AS SELECT rowid AS k, * FROM raw")
    n_rows = int(_scalar(con, "SELECT count(*) FROM raw")) + n_rejected
    validate_events(
        con, cfg, loc, drops, names,
        taobao.BEHAVIORS if src.kind == "taobao" else None,
        taobao.FUNNEL if src.kind == "taobao" else None,
    )  # fmt: skip
    out = Source({"events": str(path)}, {"events": n_rows}, loc)
    if src.kind == "taobao":
        out.behavior_order = list(taobao.FUNNEL)
        out.items = con.execute(
            """SELECT item_id, 'category ' || arg_min(cat, k) AS category
               FROM (SELECT i AS item_id, cat, k FROM rawk WHERE cat <> '')
               WHERE item_id IN (SELECT DISTINCT item_id FROM ev) GROUP BY item_id"""
        ).df()
        out.items["item_id"] = out.items["item_id"].astype(object)
        out.items["category"] = out.items["category"].astype(object)
        con.execute("DROP VIEW rawk; DROP TABLE raw")
        return out
    con.execute("DROP VIEW rawk; DROP TABLE raw")
    out.item_column = cols.item_id

    def read_side(p: Path, prefix: str, required: list[str]) -> Any:
        return read_table(
            p, fmt=src.format, delimiter=src.delimiter, header=src.has_header, encoding=src.encoding,
            quoting=src.quoting, policy=cfg.bad_rows, log=drops, prefix=prefix, required=required,
            hint=generic.HINT,
        )  # fmt: skip

    if items_path is not None:
        raw_items = read_side(items_path, "items_", [cols.item_key])
        out.items = canonical_items(raw_items, cols.item_key, src.item_text_fields, drops)
        out.files["items"] = str(items_path)
        out.raw_rows["items"] = len(raw_items)
        apply_catalogue(con, out, cfg.missing_item, drops, str(items_path))
    if users_path is not None:
        raw_users = read_side(users_path, "users_", [cols.user_key])
        out.users = canonical_users(raw_users, cols.user_key, src.user_fields, src.numeric_user_fields, drops)
        out.files["users"] = str(users_path)
        out.raw_rows["users"] = len(raw_users)
    return out


def apply_catalogue(con: Any, source: Source, policy: str, drops: DropLog, items_path: str) -> None:
    """canonical.apply_catalogue on the staged events."""
    assert source.items is not None
    if policy == "keep":
        return
    con.register("cat_df", pd.DataFrame({"item_id": source.items["item_id"].astype(str).to_numpy(object)}))
    con.execute("CREATE OR REPLACE TABLE catalogue AS SELECT DISTINCT item_id FROM cat_df")
    con.unregister("cat_df")
    unknown = "FROM ev WHERE item_id NOT IN (SELECT item_id FROM catalogue)"
    n = int(_scalar(con, f"SELECT count(*) {unknown}"))
    if n == 0:
        return
    rows = con.execute(f"SELECT k, item_id {unknown} ORDER BY k LIMIT 3").fetchall()
    if policy == "error":
        n_items = int(_scalar(con, f"SELECT count(DISTINCT item_id) {unknown}"))
        raise DataError(
            f"{source.loc.where(int(rows[0][0]))}: column {source.item_column!r}: item {rows[0][1]!r} "
            f"is not in the catalogue {items_path} "
            f"({n} event(s) reference {n_items} unknown item(s)); set data.missing_item=drop or keep"
        )
    drops.add(
        "missing_item", n, [f"{source.loc.where(int(k))}: item {i!r} not in {items_path}" for k, i in rows]
    )
    con.execute("DELETE FROM ev WHERE item_id NOT IN (SELECT item_id FROM catalogue)")


class _Fallback(Exception):
    """The events file is read by the pandas reader (JSON lines)."""


def read_memory(con: Any, cfg: DataConfig, drops: DropLog) -> Source:
    """Any source through its pandas reader, then handed to DuckDB as table ``ev``."""
    tables: Tables = read_source(cfg, drops)
    ev = tables.events
    names = sorted(str(b) for b in np.asarray(ev["behavior"].astype(str).unique(), dtype=object))
    frame = pd.DataFrame(
        {
            "k": np.arange(len(ev), dtype=np.int64),
            "row": ev["row"].to_numpy(np.int64),
            "user_id": ev["user_id"].astype(str).to_numpy(object),
            "item_id": ev["item_id"].astype(str).to_numpy(object),
            "timestamp": ev["timestamp"].to_numpy(np.int64),
            "beh": pd.Index(names).get_indexer(pd.Index(ev["behavior"].astype(str))).astype(np.int16),
            "value": ev["value"].to_numpy(np.float64),
        }
    )
    con.register("ev_df", frame)
    con.execute("CREATE OR REPLACE TABLE ev AS SELECT * FROM ev_df")
    con.unregister("ev_df")
    del frame
    con.execute(f"CREATE OR REPLACE TABLE behnames AS SELECT * FROM (VALUES {_values(names)}) t(name)")
    _BEH_NAMES[id(con)] = names
    loc = Located(Path(tables.files.get("events", "events")), True, "memory", np.zeros(0), np.zeros(0, bool))
    out = Source(dict(tables.files), dict(tables.raw_rows), loc, tables.items, tables.users)
    out.behavior_order = list(tables.behavior_order)
    return out


# ---- order, dedupe, filter, index -----------------------------------------------------------


def encode_ids(con: Any) -> None:
    """String ids -> integer codes (any order) so that sorts, windows and joins work on integers."""
    con.execute("CREATE OR REPLACE TABLE udict AS SELECT user_id, (row_number() OVER () - 1)::INTEGER AS uc "
                "FROM (SELECT DISTINCT user_id FROM ev)")  # fmt: skip
    con.execute("CREATE OR REPLACE TABLE idict AS SELECT item_id, (row_number() OVER () - 1)::INTEGER AS ic "
                "FROM (SELECT DISTINCT item_id FROM ev)")  # fmt: skip
    con.execute(
        """CREATE OR REPLACE TABLE e AS
        SELECT udict.uc, idict.ic, ev.timestamp, ev.beh, ev.value, ev.row, ev.k
        FROM ev JOIN udict USING (user_id) JOIN idict USING (item_id)"""
    )
    con.execute("DROP TABLE ev")


def dedupe(con: Any, policy: str, drops: DropLog) -> None:
    """sequences.dedupe on table ``e``."""
    if policy == "none":
        return
    if policy == "exact":
        dup = "row_number() OVER (PARTITION BY uc, ic, timestamp, beh ORDER BY row) > 1"
    elif policy == "consecutive":
        dup = (
            "coalesce(lag(ic) OVER w = ic AND lag(beh) OVER w = beh, false)"
            " WINDOW w AS (PARTITION BY uc ORDER BY timestamp, row)"
        )
    elif policy == "first":
        dup = "row_number() OVER (PARTITION BY uc, ic ORDER BY timestamp, row) > 1"
    else:
        raise DataError(f"unknown dedupe policy {policy!r}")
    if "WINDOW" in dup:
        expr, window = dup.split(" WINDOW ")
        sql = f"SELECT *, {expr} AS dup FROM e WINDOW {window}"
    else:
        sql = f"SELECT *, {dup} AS dup FROM e"
    con.execute(f"CREATE OR REPLACE TABLE e2 AS {sql}")
    n = int(_scalar(con, "SELECT count(*) FROM e2 WHERE dup"))
    drops.add("duplicate", n)
    con.execute("CREATE OR REPLACE TABLE e AS SELECT * EXCLUDE (dup) FROM e2 WHERE NOT dup")
    con.execute("DROP TABLE e2")


def filter_counts(con: Any, min_user: int, min_item: int, kcore: int, drops: DropLog) -> None:
    """sequences.filter_counts on table ``e``."""

    def drop(column: str, minimum: int, reason: str) -> bool:
        before = int(_scalar(con, "SELECT count(*) FROM e"))
        con.execute(
            f"CREATE OR REPLACE TABLE e AS SELECT * FROM e WHERE {column} IN "
            f"(SELECT {column} FROM e GROUP BY {column} HAVING count(*) >= {int(minimum)})"
        )
        n = before - int(_scalar(con, "SELECT count(*) FROM e"))
        drops.add(reason, n)
        return n > 0

    if kcore > 0:
        u_min, i_min = max(kcore, min_user), max(kcore, min_item)
        changed = True
        while changed and _scalar(con, "SELECT count(*) FROM e"):
            changed = drop("ic", i_min, "kcore")
            changed = drop("uc", u_min, "kcore") or changed
    else:
        if min_item > 1:
            drop("ic", min_item, "min_item_events")
        if min_user > 1:
            drop("uc", min_user, "min_user_events")


def index_ids(con: Any, code: str, table: str, id_col: str, idx_col: str) -> np.ndarray:
    """Kept ids in index order (sequences.index_events' order), and table ``<idx_col>map``."""
    kept = f"(SELECT {id_col}, {code} FROM {table} WHERE {code} IN (SELECT DISTINCT {code} FROM e))"
    all_int = _scalar(
        con, f"SELECT coalesce(bool_and(regexp_full_match({id_col}, {_q(INT_ID)})), false) FROM {kept}"
    )
    key = f"CAST({id_col} AS BIGINT)" if all_int else id_col
    con.execute(
        f"CREATE OR REPLACE TABLE {idx_col}map AS SELECT {code}, {id_col}, "
        f"(row_number() OVER (ORDER BY {key}) - 1)::INTEGER AS {idx_col} FROM {kept}"
    )
    ids = con.execute(f"SELECT {id_col} FROM {idx_col}map ORDER BY {idx_col}").fetchnumpy()[id_col]
    return np.asarray(ids, dtype=object)


def build_final(con: Any, codes: np.ndarray) -> None:
    """Table ``fe``: prepared events sorted by (user_idx, timestamp, row) with in-user positions."""
    case = " ".join(f"WHEN {i} THEN {int(c)}" for i, c in enumerate(codes))
    con.execute(
        f"""CREATE OR REPLACE TABLE fe AS
        SELECT u.user_idx, i.item_idx, e.timestamp,
               CAST(CASE e.beh {case} END AS TINYINT) AS behavior,
               CASE WHEN isnan(e.value) THEN NULL ELSE CAST(e.value AS FLOAT) END AS value, e.row,
               (row_number() OVER (PARTITION BY u.user_idx ORDER BY e.timestamp, e.row) - 1)::INTEGER AS pos
        FROM e JOIN user_idxmap u USING (uc) JOIN item_idxmap i USING (ic)
        ORDER BY u.user_idx, e.timestamp, e.row"""
    )
    con.execute("DROP TABLE e")


# ---- splits ---------------------------------------------------------------------------------


def per_user(con: Any, sql: str, n_users: int, columns: list[str], fill: Any = 0) -> dict[str, np.ndarray]:
    """Columns of a query keyed by user_idx as dense [U] arrays (missing users get `fill`)."""
    res = con.execute(sql).fetchnumpy()
    idx = np.asarray(res["user_idx"], dtype=np.int64)
    out = {}
    for c in columns:
        values = np.asarray(res[c])
        arr = np.full(n_users, fill, dtype=values.dtype if values.dtype != object else object)
        arr[idx] = values
        out[c] = arr
    return out


def make_splits(con: Any, cfg: DataConfig, names: list[str], n_users: int) -> tuple[SplitResult, np.ndarray]:
    """splits.make_splits on ``fe``: (split, [U] event counts)."""
    if cfg.target_behaviors:
        unknown = [t for t in cfg.target_behaviors if t not in names]
        if unknown:
            from seqrec.config import ConfigError

            raise ConfigError(f"data.target_behaviors {unknown} not among the behaviours {names}")
        codes = ", ".join(str(names.index(t)) for t in cfg.target_behaviors)
        elig = f"(behavior IN ({codes}) AND pos >= 1)"
    else:
        elig = "(pos >= 1)"
    info: dict[str, Any] = {}
    if cfg.split == "loo":
        res = per_user(
            con,
            f"""SELECT user_idx, count(*) AS n,
                   coalesce(list_extract(max(pos, 2) FILTER (WHERE {elig}), 1), -1) AS test,
                   coalesce(list_extract(max(pos, 2) FILTER (WHERE {elig}), 2), -1) AS valid
                FROM fe GROUP BY user_idx""",
            n_users,
            ["n", "test", "valid"],
        )
        counts, test, valid = res["n"].astype(np.int64), res["test"], res["valid"]
        train_end = np.where(valid >= 0, valid, np.where(test >= 0, test, counts))
    else:
        n = int(_scalar(con, "SELECT count(*) FROM fe"))
        t_valid = _quantile_lower(con, n, cfg.valid_quantile)
        t_test = _quantile_lower(con, n, cfg.test_quantile)
        if t_test <= t_valid:
            raise DataError(
                f"temporal split: the {cfg.valid_quantile} and {cfg.test_quantile} time quantiles are the same "
                f"time ({t_valid}); too many events share a timestamp for these quantiles: move "
                "data.valid_quantile / test_quantile apart"
            )
        res = per_user(
            con,
            f"""SELECT user_idx, count(*) AS n,
                   coalesce(min(pos) FILTER (WHERE {elig} AND timestamp >= {t_valid} AND timestamp < {t_test}), -1)
                     AS valid,
                   coalesce(min(pos) FILTER (WHERE {elig} AND timestamp >= {t_test}), -1) AS test,
                   count(*) FILTER (WHERE timestamp < {t_valid}) AS train_end
                FROM fe GROUP BY user_idx""",
            n_users,
            ["n", "valid", "test", "train_end"],
        )
        counts, test, valid, train_end = (
            res["n"].astype(np.int64),
            res["test"],
            res["valid"],
            res["train_end"],
        )
        info = {"valid_time": t_valid, "test_time": t_test}
    split = SplitResult(train_end.astype(np.int32), valid.astype(np.int32), test.astype(np.int32), info)
    if not (split.test_pos >= 0).any():
        want = f" with behaviour in {cfg.target_behaviors}" if cfg.target_behaviors else ""
        raise DataError(f"no user has a test target{want} (split={cfg.split}); nothing to evaluate on")
    return split, counts


def _quantile_lower(con: Any, n: int, q: float) -> int:
    """np.quantile(times, q, method="lower") without loading the times."""
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1  # numpy's _compute_virtual_index, alpha = beta = 1
    index = int(np.clip(np.floor(virtual), 0, n - 1))
    return int(_scalar(con, f"SELECT timestamp FROM fe ORDER BY timestamp LIMIT 1 OFFSET {index}"))


# ---- profiles -------------------------------------------------------------------------------


def behavioural_profiles(
    con: Any,
    n_users: int,
    train_end: np.ndarray,
    names: list[str],
    item_category: pd.Series | None,
    top_n: int,
) -> tuple[pd.DataFrame, ProfileSpec]:
    """profiles.behavioural from per-user aggregates (same arrays, same encoders, same order)."""
    con.register("te_df", pd.DataFrame({"user_idx": np.arange(n_users, dtype=np.int32), "te": train_end}))
    con.execute("CREATE OR REPLACE TABLE te AS SELECT * FROM te_df")
    con.unregister("te_df")
    fit = train_end > 0
    b = _Builder(n_users, "behavioural")
    b.numeric("log_events", np.log1p(train_end.astype(np.float64)), fit)
    last_ts = per_user(
        con,
        "SELECT fe.user_idx, fe.timestamp FROM fe JOIN te USING (user_idx) WHERE fe.pos = te.te - 1",
        n_users,
        ["timestamp"],
    )["timestamp"]
    last = np.full(n_users, np.nan)
    last[fit] = last_ts[fit]
    global_end = np.nanmax(last) if fit.any() else 0.0
    b.numeric("log_recency_days", np.log1p((global_end - last) / DAY), fit)
    train = "FROM fe JOIN te USING (user_idx) WHERE fe.pos < te.te"
    if len(names) > 1:
        mix = np.zeros((n_users, len(names)))
        res = con.execute(f"SELECT user_idx, behavior, count(*) AS n {train} GROUP BY 1, 2").fetchnumpy()
        mix[np.asarray(res["user_idx"], np.int64), np.asarray(res["behavior"], np.int64)] = np.asarray(
            res["n"], np.float64
        )
        shares = mix / np.maximum(train_end, 1)[:, None]
        shares[~fit] = np.nan
        for j, name in enumerate(names):
            b.numeric(f"share_{name}", shares[:, j], fit)
    if item_category is not None and top_n > 0:
        cats = pd.DataFrame(
            {"item_idx": np.arange(len(item_category), dtype=np.int32), "cat": item_category.to_numpy(object)}
        ).dropna()
        cats["cat"] = cats["cat"].astype(str)
        con.register("cat_df", cats)
        con.execute("CREATE OR REPLACE TABLE itemcat AS SELECT * FROM cat_df")
        con.unregister("cat_df")
        pairs = f"SELECT user_idx, cat, count(*) AS n {train.replace('WHERE', 'JOIN itemcat USING (item_idx) WHERE')} GROUP BY 1, 2"
        con.execute(f"CREATE OR REPLACE TABLE ucat AS {pairs}")
        overall = con.execute("SELECT cat, sum(n) AS n FROM ucat GROUP BY 1").fetchall()
        order = sorted(overall, key=lambda r: (-int(r[1]), str(r[0])))
        rank = pd.DataFrame({"cat": [r[0] for r in order], "rank": np.arange(len(order), dtype=np.int64)})
        con.register("rank_df", rank)
        top = con.execute(
            f"""SELECT user_idx, cat, k FROM (
                  SELECT user_idx, cat, row_number() OVER (PARTITION BY user_idx ORDER BY n DESC, rank) - 1 AS k
                  FROM ucat JOIN rank_df USING (cat)) WHERE k < {int(top_n)}"""
        ).df()
        con.unregister("rank_df")
        for k in range(top_n):
            sel = top[top["k"] == k]
            values = pd.Series([None] * n_users, dtype=object)
            values.iloc[sel["user_idx"].to_numpy()] = sel["cat"].to_numpy(object)
            b.categorical(f"top_category_{k + 1}", values, fit)
    return b.result()


def fit_profiles(
    con: Any,
    cfg: DataConfig,
    users: pd.DataFrame | None,
    items: pd.DataFrame,
    n_users: int,
    train_end: np.ndarray,
    names: list[str],
) -> tuple[pd.DataFrame | None, ProfileSpec]:
    """profiles.fit_profiles with the event-level work in DuckDB."""
    kind = profile_kind(cfg, users)
    if kind == "none":
        return None, ProfileSpec()
    if kind == "demographics":
        assert users is not None
        return demographics(users, train_end)
    field = category_column(items, cfg.category_field)
    return behavioural_profiles(
        con, n_users, train_end, names, items[field] if field else None, cfg.top_categories
    )


# ---- report and writing ---------------------------------------------------------------------


def dense(con: Any, sql: str, key: str, n: int, value: str = "n") -> np.ndarray:
    res = con.execute(sql).fetchnumpy()
    out = np.zeros(n, dtype=np.int64)
    out[np.asarray(res[key], np.int64)] = np.asarray(res[value], np.int64)
    return out


def make_report(
    con: Any,
    cfg: DataConfig,
    source: Source,
    drops: DropLog,
    meta: dict[str, Any],
    items: pd.DataFrame,
    users: pd.DataFrame,
    spec: ProfileSpec,
    lengths: np.ndarray,
) -> dict[str, Any]:
    """prepare.make_report from aggregates over ``fe``."""
    from seqrec.data.prepare import _iso, _stats
    from seqrec.data.sources.tables import isin

    n_items = len(items)
    item_counts = dense(con, "SELECT item_idx, count(*) AS n FROM fe GROUP BY 1", "item_idx", n_items)
    names = meta["behaviors"]
    beh = dense(con, "SELECT behavior, count(*) AS n FROM fe GROUP BY 1", "behavior", len(names))
    train_items = dense(
        con,
        "SELECT item_idx, count(*) AS n FROM fe JOIN users_split USING (user_idx) WHERE pos < train_end GROUP BY 1",
        "item_idx",
        n_items,
    )
    train_events = int(
        _scalar(con, "SELECT count(*) FROM fe JOIN users_split USING (user_idx) WHERE pos < train_end")
    )
    test_items = np.asarray(
        con.execute(
            "SELECT item_idx FROM fe JOIN users_split USING (user_idx) WHERE pos = test_pos ORDER BY user_idx"
        ).fetchnumpy()["item_idx"],
        dtype=np.int64,
    )
    train_end = users["train_end"].to_numpy()
    text_fields = meta["text_fields"]
    no_text = int(items[text_fields].isna().all(axis=1).sum()) if text_fields else len(items)
    split: dict[str, Any] = {
        "kind": cfg.split,
        "target_behaviors": list(cfg.target_behaviors),
        "train_events": train_events,
        "users_with_train_events": int((train_end > 0).sum()),
        "valid_users": int((users["valid_pos"] >= 0).sum()),
        "test_users": len(test_items),
        "cold_test_targets": int((train_items[test_items] == 0).sum()),
    }
    for key in ("valid_time", "test_time"):
        if key in meta:
            split[key] = _iso(meta[key])
    profile: dict[str, Any] = {
        "source": spec.source,
        "categorical": {c["name"]: len(c["vocab"]) for c in spec.categorical},
        "numeric": [c["name"] for c in spec.numeric],
    }
    if source.users is not None:
        profile["users_without_profile"] = int((~isin(users["user_id"], source.users["user_id"])).sum())
    first, last = con.execute("SELECT min(timestamp), max(timestamp) FROM fe").fetchall()[0]
    return {
        "source": cfg.source.kind,
        "input": cfg.source.input,
        "files": source.files,
        "users": len(users),
        "items": n_items,
        "interactions": int(lengths.sum()),
        "raw_rows": source.raw_rows,
        "dropped": drops.as_dict(),
        "dropped_events": drops.event_total(),
        "dropped_examples": {k: v for k, v in drops.examples.items() if v},
        "behaviors": {n: int(c) for n, c in zip(names, beh)},
        "time_range": {
            "first": _iso(first),
            "last": _iso(last),
            "first_ts": int(first),
            "last_ts": int(last),
        },
        "sequence_length": {**_stats(lengths), "histogram": sequences.length_histogram(lengths)},
        "item_frequency": {**_stats(item_counts), "histogram": sequences.length_histogram(item_counts)},
        "split": split,
        "items_without_text": no_text,
        "language": meta["language"],
        "profile": profile,
    }


EVENT_SCHEMA = pa.Schema.from_pandas(
    pd.DataFrame(
        {
            "user_idx": np.zeros(0, np.int32),
            "item_idx": np.zeros(0, np.int32),
            "timestamp": np.zeros(0, np.int64),
            "behavior": np.zeros(0, np.int8),
            "value": np.zeros(0, np.float32),
            "row": np.zeros(0, np.int64),
        }
    ),
    preserve_index=False,
)


def write_events(con: Any, query: str, path: Path) -> int:
    """Stream a query's rows into one Parquet file laid out as DataFrame.to_parquet writes it
    (pandas schema metadata, row groups of ROW_GROUP rows)."""
    reader = con.sql(query).to_arrow_reader(ROW_GROUP)
    pending: list[pa.RecordBatch] = []
    n_pending = total = 0
    with pq.ParquetWriter(path, EVENT_SCHEMA) as writer:
        for batch in reader:
            batch = pa.RecordBatch.from_arrays(
                [batch.column(i).cast(EVENT_SCHEMA.field(i).type) for i in range(len(EVENT_SCHEMA))],
                schema=EVENT_SCHEMA,
            )
            pending.append(batch)
            n_pending += batch.num_rows
            while n_pending >= ROW_GROUP:
                table = pa.Table.from_batches(pending, EVENT_SCHEMA)
                # One chunk per column, as from_pandas makes it (pages split at chunk boundaries).
                writer.write_table(table.slice(0, ROW_GROUP).combine_chunks(), row_group_size=ROW_GROUP)
                rest = table.slice(ROW_GROUP)
                pending, n_pending = rest.to_batches(), rest.num_rows
                total += ROW_GROUP
        if n_pending or total == 0:
            last = pa.Table.from_batches(pending, EVENT_SCHEMA).combine_chunks()
            writer.write_table(last, row_group_size=ROW_GROUP)
            total += n_pending
    return total


def user_shards(user_ids: np.ndarray, shards: int) -> np.ndarray:
    """[U] shard of each user: int.from_bytes(md5(user_id)[:8], "big") % shards (seqrec/data/shards.py)."""
    return owner_ranks(user_hashes(user_ids), shards).astype(np.int32)


EVENT_COLUMNS = "user_idx, item_idx, timestamp, behavior, value, row"


def write_sharded(con: Any, directory: Path, user_ids: np.ndarray, shards: int) -> dict[str, Any]:
    shard = user_shards(user_ids, shards)
    con.register(
        "shard_df", pd.DataFrame({"user_idx": np.arange(len(user_ids), dtype=np.int32), "shard": shard})
    )
    con.execute("CREATE OR REPLACE TABLE shard_of AS SELECT * FROM shard_df")
    con.unregister("shard_df")
    folder = directory / EVENTS_DIR
    folder.mkdir()
    parts = []
    for s in range(shards):
        name = f"part-{s:05d}.parquet"
        n = write_events(
            con,
            f"SELECT {EVENT_COLUMNS} FROM fe JOIN shard_of USING (user_idx) WHERE shard = {s} "
            "ORDER BY user_idx, timestamp, row",
            folder / name,
        )
        parts.append({"file": f"{EVENTS_DIR}/{name}", "events": n, "users": int((shard == s).sum())})
    manifest = {
        "shards": shards,
        "hash": "int.from_bytes(md5(user_id.encode('utf-8')).digest()[:8], 'big') % shards",
        "order": "each part sorted by user_idx, timestamp, row; a user's events are all in one part",
        "parts": parts,
    }
    (directory / SHARDS_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ---- the pipeline ---------------------------------------------------------------------------


def prepare_into(
    cfg: DataConfig, directory: Path, progress: bool = True, options: EngineOptions | None = None
) -> dict[str, Any]:
    """The whole pipeline on DuckDB, writing the prepared layout into the existing `directory`."""
    from seqrec.data.prepare import (
        CONFIG_FILE,
        REPORT_JSON,
        REPORT_MD,
        STAGES,
        Stages,
        item_table,
        make_meta,
        report_markdown,
        user_profile_fields,
        user_table,
    )

    opts = options or EngineOptions()
    validate(cfg)
    for name in ("cold_items",):  # options of the pandas path this engine does not implement yet
        if getattr(cfg, name, 0):
            from seqrec.config import ConfigError

            raise ConfigError(f"data.{name} is not supported by --engine duckdb yet; use --engine pandas")
    start = time.perf_counter()
    stages = Stages(STAGES, progress)
    drops = DropLog()
    work = directory / ".duckdb-work"
    work.mkdir()
    con = connect(work, opts)
    try:
        with stages.stage("read"):
            try:
                if cfg.source.kind not in NATIVE_SOURCES:
                    raise _Fallback()
                source = read_native(con, cfg, drops)
            except _Fallback:
                source = read_memory(con, cfg, drops)
            prov_names = _BEH_NAMES.pop(id(con))
        with stages.stage("order"):
            encode_ids(con)
            dedupe(con, cfg.dedupe, drops)
        with stages.stage("filter"):
            filter_counts(con, cfg.min_user_events, cfg.min_item_events, cfg.kcore, drops)
        if not _scalar(con, "SELECT count(*) FROM e"):
            dropped = ", ".join(f"{k} {v:,}" for k, v in drops.as_dict().items())
            raise DataError(
                f"no events left after reading and filtering (dropped: {dropped}); see data.* policies"
            )
        with stages.stage("index"):
            user_ids = index_ids(con, "uc", "udict", "user_id", "user_idx")
            item_ids = index_ids(con, "ic", "idict", "item_id", "item_idx")
            found_codes = [r[0] for r in con.execute("SELECT DISTINCT beh FROM e ORDER BY 1").fetchall()]
            found = sorted(prov_names[c] for c in found_codes)
            names = sequences.behavior_order(found, cfg.behaviors, source.behavior_order or [])
            final = pd.Index(names).get_indexer(pd.Index(prov_names))
            build_final(con, final)
            tables = Tables(pd.DataFrame(), source.items, source.users)
            items = item_table(tables, item_ids, drops)
        n_users = len(user_ids)
        with stages.stage("split"):
            split, lengths = make_splits(con, cfg, names, n_users)
        with stages.stage("profile"):
            profile_fields = user_profile_fields(tables, user_ids, drops)
            profiles, spec = fit_profiles(con, cfg, profile_fields, items, n_users, split.train_end, names)
        meta = make_meta(cfg, items, names, split.info, spec)
        users = user_table(user_ids, split, profile_fields)
        con.register("us_df", users[["user_idx", "train_end", "valid_pos", "test_pos"]])
        con.execute("CREATE OR REPLACE TABLE users_split AS SELECT * FROM us_df")
        con.unregister("us_df")
        report = make_report(con, cfg, source, drops, meta, items, users, spec, lengths)
        with stages.stage("write"):
            empty_events = pd.DataFrame({f.name: np.zeros(0, f.type.to_pandas_dtype()) for f in EVENT_SCHEMA})
            write_prepared(directory, meta, items, users, empty_events, profiles, spec)
            (directory / EVENTS_FILE).unlink()
            written = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            written["n_events"] = int(lengths.sum())  # write_prepared counted the empty frame
            (directory / META_FILE).write_text(
                json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            if opts.shards > 1:
                report["shards"] = write_sharded(con, directory, user_ids, opts.shards)
            else:
                write_events(con, f"SELECT {EVENT_COLUMNS} FROM fe ORDER BY user_idx, timestamp, row",
                             directory / EVENTS_FILE)  # fmt: skip
            save_config(cfg, directory / CONFIG_FILE)
    finally:
        stages.close()
        con.close()
        shutil.rmtree(work, ignore_errors=True)
        if opts.temp_dir:
            shutil.rmtree(Path(opts.temp_dir), ignore_errors=True)
    report["timings_s"] = stages.timings
    report["total_s"] = round(time.perf_counter() - start, 3)
    report["engine"] = {
        "name": "duckdb",
        "memory_limit": opts.memory_limit,
        "threads": opts.threads or os.cpu_count(),
    }
    (directory / REPORT_JSON).write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (directory / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    return report


__all__ = ["FORMATS", "EngineOptions", "prepare_into", "user_shards"]
