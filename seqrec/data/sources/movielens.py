"""MovieLens: 100K (``u.data``, ``u.item``, ``u.user``) and 1M (``ratings.dat``, ``movies.dat``, ``users.dat``).

Both are latin-1 text without quoting. Every rating is one ``rate`` event with the rating as its
value. Items render as the title (with year) and the genres as words; users carry age (100K: a
number; 1M: the age band), gender, occupation (1M codes are mapped to their names) and the zip
code's first character (the US zip region; other countries' codes keep their first character).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from seqrec.config import DataConfig
from seqrec.data.schema import DataError
from seqrec.data.sources.canonical import (
    EventColumns,
    apply_catalogue,
    canonical_events,
    canonical_items,
    canonical_users,
)
from seqrec.data.sources.files import RawTable, read_delimited
from seqrec.data.sources.tables import DropLog, Tables

ENCODING = "latin-1"
GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
AGES_1M = {
    "1": "under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
OCCUPATIONS_1M = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip


def _folder(cfg: DataConfig) -> Path:
    root = Path(cfg.source.input)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise DataError(f"{root}: MovieLens folder not found (data.source.input)")
    return root


def _read(
    path: Path, names: list[str], delimiter: str, cfg: DataConfig, log: DropLog, prefix: str
) -> RawTable:
    return read_delimited(
        path, delimiter=delimiter, header=False, names=names, encoding=ENCODING, quoting=False,
        policy=cfg.bad_rows, log=log, prefix=prefix,
    )  # fmt: skip


def _events(raw: RawTable, cfg: DataConfig, log: DropLog) -> Tables:
    n_rows = len(raw) + log.event_total()
    events = canonical_events(
        raw, EventColumns("user_id", "item_id", "timestamp", None, "rating"), cfg.source, cfg, log
    )
    events["behavior"] = "rate"
    tables = Tables(
        events, files={"events": str(raw.path)}, raw_rows={"events": n_rows}, behavior_order=["rate"]
    )
    tables.locate = raw.locate_record
    return tables


def _zip_region(zips: pd.Series) -> pd.Series:
    return zips.fillna("").str.strip().str[:1].str.upper()


def read_100k(root: Path, cfg: DataConfig, log: DropLog) -> Tables:
    tables = _events(
        _read(root / "u.data", ["user_id", "item_id", "rating", "timestamp"], "\t", cfg, log, ""), cfg, log
    )
    if (root / "u.item").is_file():
        names = GENRES_100K
        if (root / "u.genre").is_file():
            lines = (root / "u.genre").read_text(encoding=ENCODING).splitlines()
            names = [ln.split("|")[0] for ln in lines if ln.strip()]
        raw = _read(
            root / "u.item", ["item_id", "title", "release_date", "video_release_date", "imdb_url", *names],
            "|", cfg, log, "items_",
        )  # fmt: skip
        flags = raw.frame[names].to_numpy() == "1"
        raw.frame["genres"] = [
            ", ".join(g for g, on in zip(names, row) if on and g != "unknown") for row in flags
        ]  # fmt: skip
        tables.items = canonical_items(
            raw, "item_id", cfg.source.item_text_fields or ["title", "genres"], log
        )
        tables.files["items"], tables.raw_rows["items"] = str(raw.path), len(raw)
    if (root / "u.user").is_file():
        raw = _read(
            root / "u.user", ["user_id", "age", "gender", "occupation", "zip"], "|", cfg, log, "users_"
        )
        raw.frame["zip_region"] = _zip_region(raw.frame["zip"])
        fields = cfg.source.user_fields or ["age", "gender", "occupation", "zip_region"]
        tables.users = canonical_users(raw, "user_id", fields, cfg.source.numeric_user_fields or ["age"], log)
        tables.files["users"], tables.raw_rows["users"] = str(raw.path), len(raw)
    return tables


def read_1m(root: Path, cfg: DataConfig, log: DropLog) -> Tables:
    tables = _events(
        _read(root / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"], "::", cfg, log, ""),
        cfg,
        log,
    )
    if (root / "movies.dat").is_file():
        raw = _read(root / "movies.dat", ["item_id", "title", "genres"], "::", cfg, log, "items_")
        raw.frame["genres"] = raw.frame["genres"].str.replace("|", ", ", regex=False)
        tables.items = canonical_items(
            raw, "item_id", cfg.source.item_text_fields or ["title", "genres"], log
        )
        tables.files["items"], tables.raw_rows["items"] = str(raw.path), len(raw)
    if (root / "users.dat").is_file():
        raw = _read(
            root / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], "::", cfg, log, "users_"
        )
        frame = raw.frame
        frame["age_band"] = frame["age"].str.strip().map(AGES_1M).fillna("")
        codes = pd.to_numeric(frame["occupation"], errors="coerce")
        valid = codes.between(0, len(OCCUPATIONS_1M) - 1)
        frame["occupation"] = np.where(
            valid, [OCCUPATIONS_1M[int(c)] if ok else "" for c, ok in zip(codes, valid)], ""
        )
        frame["zip_region"] = _zip_region(frame["zip"])
        fields = cfg.source.user_fields or ["age_band", "gender", "occupation", "zip_region"]
        tables.users = canonical_users(raw, "user_id", fields, cfg.source.numeric_user_fields or [], log)
        tables.files["users"], tables.raw_rows["users"] = str(raw.path), len(raw)
    return tables


def read(cfg: DataConfig, log: DropLog) -> Tables:
    root = _folder(cfg)
    if (root / "u.data").is_file():
        tables = read_100k(root, cfg, log)
    elif (root / "ratings.dat").is_file():
        tables = read_1m(root, cfg, log)
    else:
        raise DataError(f"{root}: not a MovieLens folder (expected u.data for 100K or ratings.dat for 1M)")
    return apply_catalogue(tables, cfg.missing_item, log, tables.files.get("items", "items"))
