"""Read one data file (CSV/TSV/JSONL/Parquet) as a table of strings that remembers where rows came from.

Every cell is read as text; typing and validation happen later (seqrec.data.sources.canonical),
where a bad value can be reported as ``file:line: column 'x': ...``. Line numbers are 1-based
physical lines as an editor shows them (a quoted field with newlines spans several lines; blank
lines are skipped but counted). They are computed lazily, only when a message needs one, so the
fast path stays one vectorized pyarrow parse.

Problems found while reading (each is a DataError naming file, line and column, or, with
``bad_rows="drop"``, a counted drop):

* an empty file, or a header without rows;
* bytes that are not valid in the file's encoding (``invalid_encoding``);
* rows with the wrong number of fields, e.g. a truncated last line (``malformed_row``);
* an unterminated quote, which swallows the rest of the file: always an error, since where the
  row ends is unknowable (``source.quoting=false`` reads quotes literally);
* missing or misnamed columns (with a did-you-mean suggestion).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import gzip
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from seqrec.data.schema import DataError
from seqrec.data.sources.tables import DropLog

Policy = Literal["error", "drop"]
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


@dataclass
class RawTable:
    """A file's rows as strings. ``record[i]`` is row i's record number in the file (0-based)."""

    frame: pd.DataFrame
    record: np.ndarray  # [n] int64, ascending
    path: Path
    kind: Literal["delimited", "jsonl", "parquet"]
    _line_of: Callable[[int], int] = field(repr=False, default=lambda r: r + 1)

    def __len__(self) -> int:
        return len(self.frame)

    def line(self, i: int) -> int:
        """1-based line (or row, for Parquet) of frame row `i`."""
        return self._line_of(int(self.record[i]))

    def where(self, i: int, column: str | None = None) -> str:
        unit = "row " if self.kind == "parquet" else ""
        col = f": column {column!r}" if column else ""
        return f"{self.path}:{unit}{self.line(i)}{col}"

    def locate_record(self, record: int) -> str:
        unit = "row " if self.kind == "parquet" else ""
        return f"{self.path}:{unit}{self._line_of(int(record))}"


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = FORMATS.get(suffixes[-1].lower() if suffixes else "")
    if kind is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension; set data.source.format "
            f"(one of csv, tsv, jsonl, parquet)"
        )
    return kind


def read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from e
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    return raw


def decode(
    raw: bytes,
    path: Path,
    encoding: str,
    policy: Policy,
    log: DropLog | None,
    prefix: str,
    describe_column: Callable[[bytes, int], str] | None = None,
) -> tuple[str, bool]:
    """(text, changed): bytes decoded; undecodable lines are an error naming line and column, or
    (drop policy) blanked and counted, in which case `changed` is True."""
    try:
        text = raw.decode(encoding)
    except LookupError as e:
        raise DataError(f"{path}: unknown encoding {encoding!r} (data.source.encoding)") from e
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line_no = raw.count(b"\n", 0, e.start) + 1
        column = describe_column(raw[line_start : e.start], line_no) if describe_column else ""
        bad = raw[e.start : e.end]
        message = (
            f"{path}:{line_no}{column}: bytes {bad!r} are not valid {encoding} "
            f"(set data.source.encoding, e.g. latin-1, or data.bad_rows=drop)"
        )
        if policy == "error" or log is None:
            raise DataError(message) from None
        # Drop policy: blank every undecodable line (blank lines are skipped but keep numbering).
        lines = raw.split(b"\n")
        bad_lines = []
        for i, chunk in enumerate(lines):
            try:
                chunk.decode(encoding)
            except UnicodeDecodeError:
                bad_lines.append(i)
                lines[i] = b""
        log.add(
            f"{prefix}invalid_encoding",
            len(bad_lines),
            [f"{path}:{i + 1}: invalid {encoding}" for i in bad_lines],
        )
        return b"\n".join(lines).decode(encoding).removeprefix("\ufeff"), True
    return text.removeprefix("\ufeff"), False


def _first_record(text: str, delimiter: str, quoting: bool, strip: bool = True) -> list[str]:
    """Fields of the first non-blank record, read from the head of the text only."""
    head = io.StringIO(text[: 1 << 20])
    reader = csv.reader(head, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    for rec in reader:
        if rec:
            return [c.strip() for c in rec] if strip else rec
    return []


def _record_lines(text: str, delimiter: str, quoting: bool) -> np.ndarray:
    """Start line (1-based) of every non-blank record, the header included, as pyarrow counts them."""
    if not quoting or '"' not in text:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return np.array([i + 1 for i, s in enumerate(lines) if s not in ("", "\r")], dtype=np.int64)
    starts = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    prev = 0
    try:
        for rec in reader:
            if rec:
                starts.append(prev + 1)
            prev = reader.line_num
    except csv.Error:
        starts.append(prev + 1)
    return np.array(starts, dtype=np.int64)


_DELIMITER_NAMES = {"\t": "tab", ";": "semicolon", "|": "pipe", ",": "comma"}


def _delimiter_hint(found: list[str]) -> str:
    """A header read as one column that holds another delimiter: say which one to set."""
    if len(found) != 1:
        return ""
    for sep, name in _DELIMITER_NAMES.items():
        if sep in found[0]:
            if sep == "\t":
                return "the header looks tab-separated: pass data.source.format=tsv"
            return f"the header looks {name}-separated: pass data.source.delimiter='{sep}'"
    return ""


def suggest_columns(path: Path, missing: Iterable[str], found: list[str], hint: str = "") -> DataError:
    missing = list(missing)
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name, found, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    hints = [_delimiter_hint(found)]
    if not hints[0] and "behavior" in missing:
        hints.append(
            "a log with one kind of event needs no behaviour column: set data.source.columns.behavior=null "
            "(each event then gets data.source.default_behavior)"
        )
    hints.append(hint)
    return DataError(
        f"{path}: missing column(s) {', '.join(parts)}; the file has {found}"
        + "".join(f"; {h}" for h in hints if h)
    )


def read_delimited(
    path: Path,
    *,
    delimiter: str = ",",
    header: bool = True,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    policy: Policy = "error",
    log: DropLog | None = None,
    prefix: str = "",
    required: Iterable[str] = (),
    hint: str = "",
) -> RawTable:
    """A CSV/TSV (or any single-character-delimited) file as strings, every column kept.

    Without a header, columns are named by `names`, or by their 0-based position ("0", "1", ...).
    """
    raw = read_bytes(path)

    def column_at(prefix_bytes: bytes, _line: int) -> str:
        idx = prefix_bytes.count(delimiter.encode())
        cols = names or (header_names if header else None)
        name = cols[idx] if cols and idx < len(cols) else str(idx)
        return f": column {name!r}"

    # Multi-character delimiters (MovieLens 1M "::") become one control character pyarrow can split on.
    sep = delimiter if len(delimiter) == 1 else "\x1f"
    header_names: list[str] = []
    first_line = raw.split(b"\n", 1)[0].decode(encoding, errors="replace").removeprefix("\ufeff")
    if header:
        header_names = _first_record(first_line.replace(delimiter, sep), sep, quoting)
    text, changed = decode(raw, path, encoding, policy, log, prefix, column_at)
    if sep != delimiter:
        text = text.replace(delimiter, sep)
    # pyarrow parses UTF-8 bytes: reuse the file's own bytes when they already are exactly that.
    if not changed and sep == delimiter and codecs.lookup(encoding).name == "utf-8":
        data = raw.removeprefix(b"\xef\xbb\xbf")
    else:
        data = text.encode("utf-8")
    del raw
    if header:
        raw_names = _first_record(text, sep, quoting, strip=False)  # as pyarrow will name them
        header_names = [c.strip() for c in raw_names]
        columns = header_names
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise DataError(f"{path}:1: duplicate column name(s) {dup} in the header")
    else:
        columns = names or [str(i) for i in range(len(_first_record(text, sep, quoting)))]
        raw_names = columns
    missing = [c for c in required if c not in columns]
    if missing:
        raise suggest_columns(path, missing, columns, hint)

    invalid: list[tuple[int, str, int, int]] = []

    def on_invalid(row: Any) -> str:
        invalid.append((int(row.number), row.text, row.expected_columns, row.actual_columns))
        return "skip"

    lines_cache: dict[str, np.ndarray] = {}

    def line_of(record: int) -> int:
        if "lines" not in lines_cache:  # only when a message needs a line number
            lines_cache["lines"] = _record_lines(data.decode("utf-8"), sep, quoting)
        lines = lines_cache["lines"]
        k = record + (1 if header else 0)
        return int(lines[k]) if k < len(lines) else int(lines[-1]) if len(lines) else 1

    del text
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(
                use_threads=False,  # pyarrow only reports the row number of a bad row single-threaded
                column_names=None if header else columns,
                skip_rows=0,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=sep,
                quote_char='"' if quoting else False,
                newlines_in_values=quoting,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in raw_names}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: cannot parse as {'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from e
    first_data = 2 if header else 1  # pyarrow numbers non-blank records from 1, the header included
    bad_records = np.array([n - first_data for n, *_ in invalid], dtype=np.int64)
    if invalid:
        truncated = not data.endswith(b"\n")
        _report_invalid(path, truncated, invalid, bad_records, line_of, policy, log, prefix, quoting)
    n_total = table.num_rows + len(bad_records)
    record = np.setdiff1d(np.arange(n_total, dtype=np.int64), bad_records, assume_unique=True)
    frame = table.to_pandas()
    del table
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0 and not invalid:
        raise DataError(f"{path}: the file has {'a header but ' if header else ''}no data rows")
    return RawTable(frame, record, path, "delimited", line_of)


def _report_invalid(
    path: Path,
    no_final_newline: bool,
    invalid: list[tuple[int, str, int, int]],
    bad_records: np.ndarray,
    line_of: Callable[[int], int],
    policy: Policy,
    log: DropLog | None,
    prefix: str,
    quoting: bool,
) -> None:
    """Rows with a wrong field count: error at the first, or count them all as malformed."""
    messages = []
    for (_, row_text, expected, actual), rec in zip(invalid, bad_records.tolist()):
        line = line_of(rec)
        what = f"expected {expected} fields, found {actual}"
        if quoting and "\n" in row_text and row_text.count('"') % 2 == 1:
            raise DataError(
                f"{path}:{line}: unterminated quote: the quoted field opened on this line never closes "
                f"and swallows the lines after it; fix the quoting or set data.source.quoting=false"
            )
        if rec == bad_records[-1] and no_final_newline and actual < expected:
            what += " (truncated last line: the file does not end with a newline)"
        messages.append(f"{path}:{line}: {what}: {row_text[:80]!r}")
    if policy == "error" or log is None:
        raise DataError(messages[0] + "; set data.bad_rows=drop to skip such rows")
    log.add(f"{prefix}malformed_row", len(messages), messages)


def to_text(value: Any) -> str:
    """A JSON/Parquet cell as text: lists joined, nested dicts as JSON, missing as ''."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(t for t in (to_text(v) for v in value) if t)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_jsonl(
    path: Path,
    *,
    encoding: str = "utf-8",
    policy: Policy = "error",
    log: DropLog | None = None,
    prefix: str = "",
    required: Iterable[str] = (),
    parse: Callable[[str], Any] = json.loads,
    keep: Iterable[str] | None = None,
    hint: str = "",
) -> RawTable:
    """JSON lines (one object per line) as strings. `parse` may be a safe literal parser."""
    text, _ = decode(read_bytes(path), path, encoding, policy, log, prefix)
    keep_set = set(keep) if keep is not None else None
    rows: list[dict[str, str]] = []
    records: list[int] = []
    bad: list[str] = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            obj = parse(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected an object, found {type(obj).__name__}")
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            message = f"{path}:{i + 1}: not a JSON object ({str(e).splitlines()[0][:100]})"
            if policy == "error" or log is None:
                raise DataError(message + "; set data.bad_rows=drop to skip such lines") from None
            bad.append(message)
            continue
        rows.append({str(k): to_text(v) for k, v in obj.items() if keep_set is None or k in keep_set})
        records.append(i)
    if log is not None:
        log.add(f"{prefix}malformed_row", len(bad), bad)
    if not rows:
        raise DataError(f"{path}: no JSON objects in the file")
    frame = pd.DataFrame.from_records(rows).fillna("")
    frame = frame.astype(str)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise suggest_columns(path, missing, list(frame.columns), hint)
    return RawTable(frame, np.asarray(records, dtype=np.int64), path, "jsonl", lambda r: r + 1)


def read_parquet(path: Path, *, required: Iterable[str] = (), hint: str = "") -> RawTable:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: cannot read as Parquet: {e}") from e
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    frame.columns = [str(c) for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise suggest_columns(path, missing, list(frame.columns), hint)
    out = pd.DataFrame(
        {
            c: frame[c].map(to_text).astype(str) if frame[c].dtype == object else _column_text(frame[c])
            for c in frame.columns
        }
    )
    return RawTable(out, np.arange(len(out), dtype=np.int64), path, "parquet", lambda r: r + 1)


def _column_text(col: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(col):
        return col.map(to_text).astype(str)
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.strftime("%Y-%m-%dT%H:%M:%S%z").fillna("").astype(str)
    return col.astype(str).where(col.notna(), "")


def read_table(
    path: Path,
    *,
    fmt: str = "auto",
    delimiter: str | None = None,
    header: bool = True,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    policy: Policy = "error",
    log: DropLog | None = None,
    prefix: str = "",
    required: Iterable[str] = (),
    hint: str = "",
) -> RawTable:
    """Dispatch on the format (by extension unless given)."""
    kind = detect_format(path, fmt)
    if kind == "parquet":
        return read_parquet(path, required=required, hint=hint)
    if kind == "jsonl":
        return read_jsonl(
            path, encoding=encoding, policy=policy, log=log, prefix=prefix, required=required, hint=hint
        )
    sep = delimiter or ("\t" if kind == "tsv" else ",")
    return read_delimited(
        path,
        delimiter=sep,
        header=header,
        names=names,
        encoding=encoding,
        quoting=quoting,
        policy=policy,
        log=log,
        prefix=prefix,
        required=required,
        hint=hint,
    )
