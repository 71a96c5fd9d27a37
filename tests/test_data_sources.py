"""Readers: generic files in every format, the named adapters on tiny hand-written copies."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.config import DataConfig
from seqrec.data.schema import DataError
from seqrec.data.sources import DropLog, read_source
from seqrec.data.sources.amazon import parse_meta_line


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def config(kind: str, path: Path, **source: object) -> DataConfig:
    cfg = DataConfig()
    cfg.source.kind = kind  # type: ignore[assignment]
    cfg.source.input = str(path)
    for key, value in source.items():
        setattr(cfg.source, key, value)
    return cfg


EVENTS = [
    ("u1", "a", 100, "view"),
    ("u1", "b", 100, "buy"),
    ("u2", "a", 50, "view"),
]


def test_generic_csv_folder_with_items_and_users(tmp_path: Path) -> None:
    write(
        tmp_path,
        "events.csv",
        "user_id,item_id,timestamp,behavior\n" + "\n".join(",".join(map(str, e)) for e in EVENTS) + "\n",
    )
    write(tmp_path, "items.csv", 'item_id,title,category\na,"Red, big mug",Kitchen\nb,连衣裙 女装,女装\n')
    write(tmp_path, "users.csv", "user_id,age,city\nu1,30,Paris\nu2,,Lyon\n")
    log = DropLog()
    t = read_source(config("generic", tmp_path), log)
    assert t.events["user_id"].tolist() == ["u1", "u1", "u2"]
    assert t.events["timestamp"].dtype == np.int64
    assert t.events["row"].tolist() == [0, 1, 2]
    assert (
        t.items is not None and t.items.set_index("item_id").loc["b", "title"] == "连衣裙 女装"
    )  # untouched
    assert t.items.set_index("item_id").loc["a", "title"] == "Red, big mug"  # quoted comma
    assert t.users is not None and t.users["age"].dtype == np.float64 and np.isnan(t.users["age"].iloc[1])
    assert t.users["city"].tolist() == ["Paris", "Lyon"]  # categorical stays text
    assert log.as_dict() == {}


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet", "csv.gz"])
def test_generic_formats_read_the_same_events(tmp_path: Path, fmt: str) -> None:
    frame = pd.DataFrame(EVENTS, columns=["uid", "iid", "ts", "kind"])
    path = tmp_path / f"log.{fmt}"
    if fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")) + "\n")
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        path.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    cfg = config("generic", path)
    cfg.source.columns.user_id, cfg.source.columns.item_id = "uid", "iid"
    cfg.source.columns.timestamp, cfg.source.columns.behavior = "ts", "kind"
    t = read_source(cfg, DropLog())
    assert t.events[["user_id", "item_id", "timestamp", "behavior"]].values.tolist() == [
        list(e) for e in EVENTS
    ]


def test_timestamp_units_and_iso(tmp_path: Path) -> None:
    write(tmp_path, "ms.csv", "user_id,item_id,timestamp\nu,a,1511544070123\n")
    write(
        tmp_path,
        "iso.csv",
        "user_id,item_id,timestamp\nu,a,2017-11-24T17:21:10Z\nu,b,2017-11-24 18:21:10+01:00\n",
    )
    ms = config("generic", tmp_path / "ms.csv", timestamp_unit="ms")
    ms.source.columns.behavior = None
    assert read_source(ms, DropLog()).events["timestamp"].tolist() == [1511544070]
    iso = config("generic", tmp_path / "iso.csv", timestamp_unit="iso")
    iso.source.columns.behavior = None
    events = read_source(iso, DropLog()).events
    assert events["timestamp"].tolist() == [1511544070, 1511544070]
    assert events["behavior"].tolist() == ["interact", "interact"]  # source.default_behavior


def test_headerless_generic_uses_positions(tmp_path: Path) -> None:
    write(tmp_path, "e.csv", "7,x,100\n8,y,200\n")
    cfg = config("generic", tmp_path / "e.csv", has_header=False)
    cfg.source.columns.user_id, cfg.source.columns.item_id, cfg.source.columns.timestamp = "0", "1", "2"
    cfg.source.columns.behavior = None
    assert read_source(cfg, DropLog()).events["user_id"].tolist() == ["7", "8"]


def movielens_100k(folder: Path) -> Path:
    write(folder, "u.data", "1\t10\t4\t881250949\n2\t20\t3\t891717742\n1\t20\t5\t881250950\n")
    item = "10|Amélie (2001)|01-Jan-2001||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0|0|0|0\n"
    item += "20|Heat (1995)|01-Jan-1995||http://y|0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0\n"
    write(folder, "u.item", item.encode("latin-1"))
    write(folder, "u.user", "1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    return folder


def test_movielens_100k(tmp_path: Path) -> None:
    t = read_source(config("movielens", movielens_100k(tmp_path)), DropLog())
    assert t.events["behavior"].unique().tolist() == ["rate"]
    assert t.events["value"].tolist() == [4.0, 3.0, 5.0]
    assert t.items is not None
    items = t.items.set_index("item_id")
    assert items.loc["10", "title"] == "Amélie (2001)"  # latin-1 decoded
    assert items.loc["10", "genres"] == "Comedy, Romance"
    assert items.loc["20", "genres"] == "Action, Crime, Thriller"
    assert t.users is not None
    users = t.users.set_index("user_id")
    assert users.loc["1", "age"] == 24.0 and users.loc["2", "zip_region"] == "T"
    assert users.loc["2", "gender"] == "F"


def test_movielens_1m(tmp_path: Path) -> None:
    write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    write(
        tmp_path,
        "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n".encode(
            "latin-1"
        ),
    )
    write(tmp_path, "users.dat", "1::F::1::10::48067\n")
    t = read_source(config("movielens", tmp_path), DropLog())
    assert t.events["item_id"].tolist() == ["1193", "661"]
    assert (
        t.items is not None
        and t.items.set_index("item_id").loc["661", "genres"] == "Animation, Children's, Musical"
    )
    assert t.users is not None
    user = t.users.iloc[0]
    assert (user["age_band"], user["occupation"], user["zip_region"]) == ("under 18", "K-12 student", "4")


def test_amazon_processed_layout(tmp_path: Path) -> None:
    write(
        tmp_path,
        "interactions.csv",
        "user_id,item_id,timestamp\nA1,B000000001,1318896000\nA1,B000000002,1318896000\n",
    )
    write(
        tmp_path,
        "items.csv",
        'item_id,title\nB000000001,"Lash, Mascara"\nB000000002,Gel\nB000000003,Unused\n',
    )
    t = read_source(config("amazon", tmp_path), DropLog())
    assert t.events["behavior"].unique().tolist() == ["review"]
    assert t.items is not None and len(t.items) == 3


def test_amazon_processed_layout_joins_category_paths(tmp_path: Path) -> None:
    write(
        tmp_path,
        "interactions.csv",
        "user_id,item_id,timestamp\nA1,B000000001,1318896000\nA1,B000000002,1318896000\n",
    )
    write(tmp_path, "items.csv", "item_id,title\nB000000001,Mascara\nB000000002,Gel\nB000000003,Cream\n")
    write(
        tmp_path,
        "item_categories.csv",
        "item_id,categories\r\nB000000001,Beauty > Makeup > Eyes\r\n"
        'B000000002,"Beauty > Skin Care > Creams, Gels & Lotions"\r\nB000000009,Beauty > Other\r\n',
    )
    t = read_source(config("amazon", tmp_path), DropLog())
    assert t.items is not None
    cats = t.items.set_index("item_id")["category"]
    # The root shared by every path ("Beauty") is dropped; an item without a row has no category.
    assert cats["B000000001"] == "Makeup > Eyes"
    assert cats["B000000002"] == "Skin Care > Creams, Gels & Lotions"
    assert pd.isna(cats["B000000003"])


@pytest.mark.parametrize("order", ["user,item", "item,user"])
def test_amazon_ratings_csv_and_metadata(tmp_path: Path, order: str) -> None:
    rows = [
        ("A2SUAM1J3GNN3B", "0000013714", "5.0", "1382659200"),
        ("A3UJRNI8UR4871", "B00004TMFE", "4.0", "1382659300"),
    ]
    lines = [",".join((u, i, r, ts) if order == "user,item" else (i, u, r, ts)) for u, i, r, ts in rows]
    write(tmp_path, "ratings_Beauty.csv", "\n".join(lines) + "\n")
    meta_2014 = "{'asin': '0000013714', 'title': 'Tea &amp; Honey', 'categories': [['Beauty', 'Skin Care']], 'price': 12.5}\n"
    meta_2018 = json.dumps(
        {
            "asin": "B00004TMFE",
            "title": "Soap",
            "category": ["Beauty", "Bath"],
            "brand": "Dove",
            "price": "$3.99",
        }
    )
    write(tmp_path, "meta_Beauty.json.gz", gzip.compress((meta_2014 + meta_2018 + "\n").encode()))
    t = read_source(config("amazon", tmp_path), DropLog())
    assert t.events["user_id"].tolist() == ["A2SUAM1J3GNN3B", "A3UJRNI8UR4871"]
    assert t.events["item_id"].tolist() == ["0000013714", "B00004TMFE"]
    assert t.events["value"].tolist() == [5.0, 4.0]
    assert t.items is not None
    items = t.items.set_index("item_id")
    assert items.loc["0000013714", "title"] == "Tea & Honey"
    assert items.loc["0000013714", "category"] == "Beauty > Skin Care"
    assert items.loc["0000013714", "price"] == "$12.50"
    assert items.loc["B00004TMFE", "brand"] == "Dove"


def test_amazon_reviews_json(tmp_path: Path) -> None:
    reviews = [
        {
            "reviewerID": "A1",
            "asin": "B000000001",
            "overall": 5.0,
            "unixReviewTime": 1400000000,
            "reviewText": "nice",
        }
    ]
    write(tmp_path, "reviews_Beauty_5.json", "\n".join(json.dumps(r) for r in reviews) + "\n")
    t = read_source(config("amazon", tmp_path), DropLog())
    assert t.events[["user_id", "item_id", "timestamp"]].values.tolist() == [["A1", "B000000001", 1400000000]]


def test_meta_parser_never_evaluates_code() -> None:
    with pytest.raises(ValueError):
        parse_meta_line("__import__('os').system('echo pwned')")


def test_taobao(tmp_path: Path) -> None:
    write(
        tmp_path,
        "UserBehavior.csv",
        "1,100,7,pv,1511544070\n1,100,7,fav,1511544071\n1,101,8,cart,1511544072\n1,101,8,buy,1511544073\n",
    )
    t = read_source(config("taobao", tmp_path), DropLog())
    assert t.events["behavior"].tolist() == ["view", "favorite", "cart", "buy"]
    assert t.behavior_order == ["view", "favorite", "cart", "buy"]
    assert t.items is not None and t.items["category"].tolist() == ["category 7", "category 8"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_source(config("generic", tmp_path / "nope"), DropLog())
    with pytest.raises(DataError, match="no events file"):
        read_source(config("generic", tmp_path), DropLog())


def test_header_names_and_values_are_stripped(tmp_path: Path) -> None:
    write(tmp_path, "e.csv", "user_id, item_id , timestamp,behavior\nu1, 1 ,100,view\nu2,2,200, buy\n")
    events = read_source(config("generic", tmp_path / "e.csv"), DropLog()).events
    assert events[["user_id", "item_id", "behavior"]].values.tolist() == [
        ["u1", "1", "view"],
        ["u2", "2", "buy"],
    ]


def test_bom_is_removed(tmp_path: Path) -> None:
    write(tmp_path, "e.csv", "\ufeffuser_id,item_id,timestamp,behavior\nu1,1,100,view\n")
    assert read_source(config("generic", tmp_path / "e.csv"), DropLog()).events["user_id"].tolist() == ["u1"]
