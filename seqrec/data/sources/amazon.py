"""Amazon reviews, in the three layouts people have on disk.

* ``interactions.csv`` (header ``user_id,item_id,timestamp[,rating]``) + ``items.csv``
  (``item_id,title,...``): the processed benchmark layout of ../shared/data/amazon-beauty-2014.
* A ratings CSV without header (``ratings_<Category>.csv``): 2014 files are
  ``user,item,rating,timestamp``, 2018 files ``item,user,rating,timestamp``; the order is told
  apart by the ASIN pattern of the item column (or ``data.source.amazon_ratings_order``).
* Review JSON lines (``reviews_<Category>_5.json[.gz]`` / ``<Category>_5.json[.gz]``) with
  ``reviewerID, asin, overall, unixReviewTime``.

Item text comes from ``items.csv`` (joined with ``item_categories.csv``, ``item_id,categories``
with one `` > ``-joined category path per item, when that file lies beside it) or from metadata JSON lines (``meta_<Category>.json[.gz]``):
title, brand, the first category path (joined with " > ") and price. The 2014 metadata is not
JSON but Python dict literals; those lines are parsed with ``ast.literal_eval`` (literals only,
never ``eval``). HTML entities in text (``&amp;``) are unescaped. Every event is a ``review``
(a review is the benchmark's proxy for a purchase); the rating, when present, is its value.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from seqrec.config import DataConfig
from seqrec.data.schema import DataError
from seqrec.data.sources.canonical import EventColumns, apply_catalogue, canonical_events, canonical_items
from seqrec.data.sources.files import RawTable, read_delimited, read_jsonl, to_text
from seqrec.data.sources.tables import DropLog, Tables

ASIN = re.compile(r"^(B[0-9A-Z]{9}|[0-9]{9}[0-9X])$")
META_FIELDS = ["title", "brand", "category", "price"]


def parse_meta_line(line: str) -> dict[str, Any]:
    """One metadata line: JSON (2018) or a Python dict literal (2014), as canonical item fields."""
    try:
        obj = json.loads(line)
    except ValueError:
        obj = ast.literal_eval(line)  # literals only: safe on untrusted input
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, found {type(obj).__name__}")
    cats = obj.get("categories") or obj.get("category") or []
    if cats and isinstance(cats[0], (list, tuple)):  # 2014: a list of category paths
        cats = cats[0]
    price = obj.get("price")
    if isinstance(price, (int, float)):
        price = f"${price:.2f}"
    out = {
        "item_id": obj.get("asin", ""),
        "title": obj.get("title", ""),
        "brand": obj.get("brand", ""),
        "category": " > ".join(html.unescape(to_text(c)) for c in cats if to_text(c)),
        "price": price or "",
    }
    return {k: html.unescape(to_text(v)) if k != "category" else v for k, v in out.items()}


def _events(raw: RawTable, cols: EventColumns, cfg: DataConfig, log: DropLog, n_rows: int) -> Tables:
    events = canonical_events(raw, cols, cfg.source, cfg, log)
    events["behavior"] = "review"
    tables = Tables(
        events, files={"events": str(raw.path)}, raw_rows={"events": n_rows}, behavior_order=["review"]
    )
    tables.locate = raw.locate_record
    return tables


def _ratings_order(raw: RawTable, setting: str) -> tuple[str, str]:
    if setting != "auto":
        first = setting.split(",")[0]
        return ("0", "1") if first == "user" else ("1", "0")
    sample = raw.frame.head(2000)
    share = [sample[c].str.strip().str.match(ASIN).mean() for c in ("0", "1")]
    if share[1] >= 0.9 > share[0]:
        return "0", "1"  # user, item (2014)
    if share[0] >= 0.9 > share[1]:
        return "1", "0"  # item, user (2018)
    raise DataError(
        f"{raw.path}: cannot tell which column holds the item (ASIN share {share[0]:.0%} / {share[1]:.0%}); "
        "set data.source.amazon_ratings_order to 'user,item' or 'item,user'"
    )


def read_ratings_csv(path: Path, cfg: DataConfig, log: DropLog) -> Tables:
    raw = read_delimited(path, header=False, encoding=cfg.source.encoding, policy=cfg.bad_rows, log=log)
    if raw.frame.shape[1] != 4:
        raise DataError(
            f"{path}: expected 4 columns (user,item,rating,timestamp), found {raw.frame.shape[1]}"
        )
    user, item = _ratings_order(raw, cfg.source.amazon_ratings_order)
    n_rows = len(raw) + log.event_total()
    return _events(raw, EventColumns(user, item, "3", None, "2"), cfg, log, n_rows)


def read_reviews_json(path: Path, cfg: DataConfig, log: DropLog) -> Tables:
    keep = ["reviewerID", "asin", "overall", "unixReviewTime"]
    raw = read_jsonl(
        path,
        encoding=cfg.source.encoding,
        policy=cfg.bad_rows,
        log=log,
        required=keep[:2] + keep[3:],
        keep=keep,
    )
    if "overall" not in raw.frame.columns:
        raw.frame["overall"] = ""
    n_rows = len(raw) + log.event_total()
    return _events(
        raw, EventColumns("reviewerID", "asin", "unixReviewTime", None, "overall"), cfg, log, n_rows
    )


def read_interactions_csv(path: Path, cfg: DataConfig, log: DropLog) -> Tables:
    raw = read_delimited(
        path, encoding=cfg.source.encoding, policy=cfg.bad_rows, log=log,
        required=["user_id", "item_id", "timestamp"],
    )  # fmt: skip
    value = "rating" if "rating" in raw.frame.columns else None
    n_rows = len(raw) + log.event_total()
    return _events(raw, EventColumns("user_id", "item_id", "timestamp", None, value), cfg, log, n_rows)


def _has_header(path: Path) -> bool:
    """A processed CSV names its columns (user_id,item_id,...); raw ratings CSVs start with data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        first = fh.readline(4096).lower()
    return b"user" in first and b"item" in first


def _pick(root: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if not p.name.startswith("meta_"))
        if len(found) > 1:
            raise DataError(
                f"{root}: several files match {pattern}: {[p.name for p in found]}; pass one as --input"
            )
        if found:
            return found[0]
    return None


def events_file(root: Path) -> Path:
    """The events file: `root` itself, or the one file of a known layout inside it."""
    if not root.exists():
        raise DataError(f"{root}: input not found (data.source.input)")
    patterns = ["interactions.csv", "reviews_*.json*", "*_5.json*", "ratings_*.csv*", "*.json*", "*.csv*"]
    path = root if root.is_file() else _pick(root, patterns)
    if path is None or path.name == "items.csv":
        raise DataError(
            f"{root}: no Amazon events file (interactions.csv, reviews JSON lines or ratings CSV)"
        )
    if path.name.startswith("meta_"):
        raise DataError(f"{path}: this is item metadata; pass the reviews or ratings file (or the folder)")
    return path


def items_file(folder: Path, configured: str | None) -> Path | None:
    """data.source.items_file, else items.csv, else the first meta_*.json[.gz] beside the events."""
    if configured:
        return folder / configured
    if (folder / "items.csv").is_file():
        return folder / "items.csv"
    metas = sorted(folder.glob("meta_*.json*"))
    return metas[0] if metas else None


def read_items(path: Path, cfg: DataConfig, log: DropLog) -> tuple[pd.DataFrame, int]:
    """(canonical items, rows read). Metadata fields empty for every item are left out of the text."""
    src = cfg.source
    if ".json" in path.name:
        raw = read_jsonl(
            path, encoding=src.encoding, policy=cfg.bad_rows, log=log, prefix="items_", parse=parse_meta_line
        )
        fields = src.item_text_fields or META_FIELDS
    else:
        raw = read_delimited(
            path, encoding=src.encoding, policy=cfg.bad_rows, log=log, prefix="items_", required=["item_id"]
        )
        fields = src.item_text_fields
    items = canonical_items(raw, "item_id", fields, log)
    empty = [c for c in items.columns[1:] if items[c].isna().all()]
    return items.drop(columns=empty), len(raw)


CATEGORIES_FILE = "item_categories.csv"


def join_categories(items: pd.DataFrame, path: Path, cfg: DataConfig, log: DropLog) -> pd.DataFrame:
    """Add a ``category`` column from `path` (``item_id,categories``). A first path element shared
    by every item (``Beauty`` in the Beauty set) says nothing about the item and is dropped. Items
    without a row get no category; rows for unknown items are ignored."""
    if "category" in items.columns:
        return items
    raw = read_delimited(
        path, encoding=cfg.source.encoding, policy=cfg.bad_rows, log=log, prefix="categories_",
        required=["item_id", "categories"],
    )  # fmt: skip
    frame = raw.frame.drop_duplicates("item_id", keep="first")
    paths = frame["categories"].str.strip().map(html.unescape)
    parts = paths.str.split(" > ")
    firsts = parts.map(lambda p: p[0] if len(p) > 1 else None)
    if len(firsts) and firsts.notna().all() and firsts.nunique() == 1:
        paths = parts.map(lambda p: " > ".join(p[1:]))
    lookup = dict(zip(frame["item_id"].str.strip(), paths))
    category = items["item_id"].map(lookup)
    out = items.copy()
    out["category"] = category.where(category.fillna("") != "", None)
    return out


def read(cfg: DataConfig, log: DropLog) -> Tables:
    root = Path(cfg.source.input)
    path = events_file(root)
    if ".json" in path.name:
        tables = read_reviews_json(path, cfg, log)
    elif _has_header(path):
        tables = read_interactions_csv(path, cfg, log)
    else:
        tables = read_ratings_csv(path, cfg, log)
    items_path = items_file(root if root.is_dir() else root.parent, cfg.source.items_file)
    if items_path is not None:
        tables.items, tables.raw_rows["items"] = read_items(items_path, cfg, log)
        tables.files["items"] = str(items_path)
        categories = items_path.parent / CATEGORIES_FILE
        if ".json" not in items_path.name and categories.is_file():
            tables.items = join_categories(tables.items, categories, cfg, log)
            tables.files["categories"] = str(categories)
    return apply_catalogue(tables, cfg.missing_item, log, tables.files.get("items", "items"))
