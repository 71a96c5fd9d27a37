"""Taobao UserBehavior (Alibaba Tianchi): ``user,item,category,behavior,timestamp``, no header.

Behaviours ``pv/fav/cart/buy`` become ``view/favorite/cart/buy`` with the funnel order
view < favorite < cart < buy. There is no item text: each item renders as its category id,
``category 2520377``, the only content signal the data set has. Any other behaviour value is an
unknown behaviour (error, or dropped and counted with data.unknown_behavior=drop).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from seqrec.config import DataConfig
from seqrec.data.schema import DataError
from seqrec.data.sources.canonical import EventColumns, canonical_events
from seqrec.data.sources.files import read_delimited
from seqrec.data.sources.tables import DropLog, Tables, isin

BEHAVIORS = {"pv": "view", "fav": "favorite", "cart": "cart", "buy": "buy"}
FUNNEL = ["view", "favorite", "cart", "buy"]
COLUMNS = ["user_id", "item_id", "category_id", "behavior", "timestamp"]


def events_file(cfg: DataConfig) -> Path:
    root = Path(cfg.source.input)
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: input not found (data.source.input)")
    if cfg.source.events_file:
        return root / cfg.source.events_file
    found = sorted(root.glob("UserBehavior*.csv*")) or sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise DataError(
            f"{root}: expected one UserBehavior*.csv, found {[p.name for p in found]}; pass the file"
        )
    return found[0]


def read(cfg: DataConfig, log: DropLog) -> Tables:
    path = events_file(cfg)
    raw = read_delimited(
        path, header=False, names=COLUMNS, encoding=cfg.source.encoding, quoting=cfg.source.quoting,
        policy=cfg.bad_rows, log=log,
    )  # fmt: skip
    n_rows = len(raw) + log.event_total()
    cols = EventColumns("user_id", "item_id", "timestamp", "behavior")
    events = canonical_events(raw, cols, cfg.source, cfg, log, behavior_map=BEHAVIORS, known_behaviors=FUNNEL)
    # Items: the category of each item's first event (category ids are stable per item).
    category = raw.frame["category_id"].str.strip()
    first = pd.DataFrame({"item_id": raw.frame["item_id"].str.strip(), "category": "category " + category})
    first = first[category != ""].drop_duplicates("item_id", keep="first")
    items = first[isin(first["item_id"], events["item_id"])].reset_index(drop=True)
    tables = Tables(events, items, None, {"events": str(path)}, {"events": n_rows}, FUNNEL)
    tables.locate = raw.locate_record
    return tables
