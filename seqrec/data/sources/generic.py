"""The generic reader: events (+ optional items and users files) in CSV/TSV/JSONL/Parquet.

`data.source.input` is a folder or the events file itself. In a folder, files are found by name:
``events_file`` / ``items_file`` / ``users_file`` when set, else ``events.*``, ``items.*`` and
``users.*`` with a known extension (.csv, .tsv, .jsonl, .json, .parquet, optionally .gz).
Columns are mapped with ``data.source.columns``.
"""

from __future__ import annotations

from pathlib import Path

from seqrec.config import DataConfig
from seqrec.data.schema import DataError
from seqrec.data.sources.canonical import (
    EventColumns,
    apply_catalogue,
    canonical_events,
    canonical_items,
    canonical_users,
)
from seqrec.data.sources.files import FORMATS, RawTable, read_table
from seqrec.data.sources.tables import DropLog, Tables

HINT = "map the file's columns with data.source.columns.<field>=<column name>"


def find_file(root: Path, name: str | None, stem: str, required: bool) -> Path | None:
    """`root/name` when given, else the one `root/<stem>.<known extension>[.gz]`."""
    if name:
        path = root / name
        if not path.is_file():
            raise DataError(f"{path}: file not found (data.source.{stem}_file)")
        return path
    found = sorted(
        p
        for p in root.glob(f"{stem}.*")
        if any(p.name.endswith(e) or p.name.endswith(e + ".gz") for e in FORMATS)
    )
    if len(found) > 1:
        raise DataError(
            f"{root}: several {stem} files {[p.name for p in found]}; set data.source.{stem}_file"
        )
    if not found:
        if required:
            raise DataError(
                f"{root}: no {stem} file (looked for {stem}.csv/.tsv/.jsonl/.parquet); set data.source.{stem}_file"
            )
        return None
    return found[0]


def resolve_files(cfg: DataConfig) -> tuple[Path, Path | None, Path | None]:
    src = cfg.source
    if not src.input:
        raise DataError("no input given: pass --input PATH or set data.source.input")
    root = Path(src.input)
    if root.is_file():
        folder = root.parent
        items = find_file(folder, src.items_file, "items", False) if src.items_file else None
        users = find_file(folder, src.users_file, "users", False) if src.users_file else None
        return root, items, users
    if not root.is_dir():
        raise DataError(f"{root}: input not found (data.source.input)")
    events = find_file(root, src.events_file, "events", True)
    assert events is not None
    return (
        events,
        find_file(root, src.items_file, "items", False),
        find_file(root, src.users_file, "users", False),
    )


def read(cfg: DataConfig, log: DropLog) -> Tables:
    src, cols = cfg.source, cfg.source.columns
    events_path, items_path, users_path = resolve_files(cfg)

    def read_file(path: Path, prefix: str, required: list[str]) -> RawTable:
        return read_table(
            path, fmt=src.format, delimiter=src.delimiter, header=src.has_header, encoding=src.encoding,
            quoting=src.quoting, policy=cfg.bad_rows, log=log, prefix=prefix, required=required, hint=HINT,
        )  # fmt: skip

    columns = EventColumns(cols.user_id, cols.item_id, cols.timestamp, cols.behavior, cols.value)
    raw = read_file(events_path, "", columns.required)
    n_rows = len(raw) + log.event_total()  # rows read, counting those dropped while parsing
    events = canonical_events(raw, columns, src, cfg, log)
    tables = Tables(events, files={"events": str(events_path)}, raw_rows={"events": n_rows})
    tables.locate, tables.item_column = raw.locate_record, cols.item_id
    if items_path is not None:
        raw_items = read_file(items_path, "items_", [cols.item_key])
        tables.items = canonical_items(raw_items, cols.item_key, src.item_text_fields, log)
        tables.files["items"] = str(items_path)
        tables.raw_rows["items"] = len(raw_items)
    if users_path is not None:
        raw_users = read_file(users_path, "users_", [cols.user_key])
        tables.users = canonical_users(
            raw_users, cols.user_key, src.user_fields, src.numeric_user_fields, log
        )
        tables.files["users"] = str(users_path)
        tables.raw_rows["users"] = len(raw_users)
    return apply_catalogue(tables, cfg.missing_item, log, str(items_path))
