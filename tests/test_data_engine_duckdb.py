"""`prepare --engine duckdb` (out of core) writes the same prepared tables as the pandas path.

Same bytes for every prepared file (events/items/users/profiles parquet, profile_spec.json,
meta.json) and the same report, on synthetic logs under several configs, on bad input with
drop policies, and on the shared data sets; errors name the same file, line and column; an
interrupted prepare leaves nothing behind; user-hash shards hold exactly the unsharded events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from seqrec.data import engine_duckdb
from seqrec.data.cli import load_data_config
from seqrec.data.engine_duckdb import EngineOptions, user_shards
from seqrec.data.prepare import prepare
from seqrec.data.schema import DataError, PreparedData
from seqrec.data.synth import SynthConfig, generate, write_raw
from tests.conftest import shared_dataset

pytest.importorskip("duckdb")

FILES = [
    "events.parquet",
    "items.parquet",
    "users.parquet",
    "profiles.parquet",
    "profile_spec.json",
    "meta.json",
]


def both(
    tmp: Path, source: str, inp: Path | str, overrides: list[str], **kw: Any
) -> dict[str, dict[str, Any]]:
    cfg = load_data_config(None, overrides, source, str(inp))
    reports = {}
    for engine in ("pandas", "duckdb"):
        reports[engine] = prepare(cfg, tmp / engine, progress=False, engine=engine, **kw)
    return reports


def assert_same(tmp: Path, reports: dict[str, dict[str, Any]]) -> None:
    for name in FILES:
        a, b = tmp / "pandas" / name, tmp / "duckdb" / name
        assert a.is_file() == b.is_file(), name
        if a.is_file():
            assert a.read_bytes() == b.read_bytes(), f"{name} differs"
    skip = {"timings_s", "total_s", "engine"}
    pa_, du = reports["pandas"], reports["duckdb"]
    assert {k: v for k, v in pa_.items() if k not in skip} == {k: v for k, v in du.items() if k not in skip}


@pytest.fixture(scope="module")
def raw_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("synth") / "raw"
    write_raw(generate(SynthConfig(n_users=120, n_items=90, seed=3, funnel="events", mean_events=12)), raw)
    return raw


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["split=temporal", "profile=behavioural"],
        ["target_behaviors=[buy]", "kcore=3"],
        ["dedupe=first", "min_user_events=5"],
        ["dedupe=consecutive", "min_item_events=3", "profile=behavioural", "top_categories=2"],
        ["dedupe=none", "split=temporal", "target_behaviors=[cart,buy]"],
    ],
)
def test_same_bytes_as_pandas(raw_synth: Path, tmp_path: Path, overrides: list[str]) -> None:
    assert_same(tmp_path, both(tmp_path, "generic", raw_synth, overrides))


def test_parquet_and_tsv_inputs(raw_synth: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(raw_synth / "events.csv", dtype=str, keep_default_na=False)
    for fmt in ("parquet", "tsv"):
        folder = tmp_path / fmt / "raw"
        folder.mkdir(parents=True)
        if fmt == "parquet":
            frame.to_parquet(folder / "events.parquet")
        else:
            frame.to_csv(folder / "events.tsv", sep="\t", index=False)
        assert_same(tmp_path / fmt, both(tmp_path / fmt, "generic", folder, []))


HEADER = "user_id,item_id,timestamp,behavior\n"
LINES = [f"u{u},i{i},{1000 + 10 * (i % 3)},view\n" for u in range(4) for i in range(5)]
HEAD, TAIL = "".join(LINES[:6]), "".join(LINES[6:])  # 6 good lines, then the bad ones


def test_bad_rows_dropped_and_counted_alike(tmp_path: Path) -> None:
    body = (
        HEADER
        + HEAD
        + "u9,i1,abc,view\n"  # bad timestamp
        + "u1,i1,5,view,extra\n"  # malformed
        + ",i2,1000,view\n"  # empty user id
        + "u2,i3,1000,jump\n"  # unknown behaviour
        + TAIL
        + "u3,i4,99999999999999,view\n"  # out of range
        + "u3,i4\n"  # truncated last line
    )
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_text(body, encoding="utf-8")
    overrides = ["bad_rows=drop", "unknown_behavior=drop", "behaviors=[view]", "min_user_events=2"]
    reports = both(tmp_path, "generic", folder, overrides)
    assert_same(tmp_path, reports)
    dropped = reports["duckdb"]["dropped"]
    for reason in (
        "bad_timestamp",
        "malformed_row",
        "empty_id",
        "unknown_behavior",
        "timestamp_out_of_range",
    ):
        assert dropped[reason] >= 1, reason
    assert reports["duckdb"]["raw_rows"]["events"] == body.count("\n") - 1


def test_invalid_encoding_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_bytes((HEADER + HEAD).encode() + b"u1,i\xff9,1000,view\n" + TAIL.encode())
    reports = both(tmp_path, "generic", folder, ["bad_rows=drop"])
    assert reports["duckdb"]["dropped"]["invalid_encoding"] == 1
    assert reports["duckdb"]["dropped_examples"]["invalid_encoding"][0].endswith(":8: invalid utf-8")
    for name in ("users.parquet", "items.parquet"):
        assert (tmp_path / "pandas" / name).read_bytes() == (tmp_path / "duckdb" / name).read_bytes()


@pytest.mark.parametrize(
    ("line", "column"),
    [("u9,i1,abc,view\n", "timestamp"), ("u9,i1,1000,jump\n", "behavior"), ("u9,,1000,view\n", "item_id")],
)
def test_errors_name_the_same_line(tmp_path: Path, line: str, column: str) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_text(HEADER + HEAD + line + TAIL, encoding="utf-8")
    cfg = load_data_config(None, ["behaviors=[view]"], "generic", str(folder))
    messages = []
    for engine in ("pandas", "duckdb"):
        with pytest.raises(DataError) as err:
            prepare(cfg, tmp_path / engine, progress=False, engine=engine)
        messages.append(str(err.value))
        assert not (tmp_path / engine).exists()
    line_no = 2 + 6
    assert f"events.csv:{line_no}: column {column!r}" in messages[1]
    assert messages[0] == messages[1]


def test_malformed_row_error_names_line(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_text(HEADER + HEAD + "u1,i1,5\n" + TAIL, encoding="utf-8")
    cfg = load_data_config(None, [], "generic", str(folder))
    with pytest.raises(DataError, match=rf"events.csv:{2 + 6}: .*bad_rows=drop"):
        prepare(cfg, tmp_path / "out", progress=False, engine="duckdb")


def test_interrupted_prepare_leaves_nothing_and_reruns(
    raw_synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_data_config(None, [], "generic", str(raw_synth))
    real = engine_duckdb.write_events

    def interrupted(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_duckdb, "write_events", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tmp_path / "out", progress=False, engine="duckdb")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(engine_duckdb, "write_events", real)
    prepare(cfg, tmp_path / "out", progress=False, engine="duckdb")
    assert PreparedData.load(tmp_path / "out").n_events > 0
    assert not (tmp_path / "out" / ".duckdb-work").exists()


def test_user_hash_shards_hold_the_same_events(raw_synth: Path, tmp_path: Path) -> None:
    cfg = load_data_config(None, [], "generic", str(raw_synth))
    prepare(cfg, tmp_path / "one", progress=False, engine="duckdb")
    report = prepare(
        cfg, tmp_path / "sharded", progress=False, engine="duckdb", options=EngineOptions(shards=3)
    )
    manifest = json.loads((tmp_path / "sharded" / "shards.json").read_text())
    assert report["shards"]["shards"] == 3 and len(manifest["parts"]) == 3
    assert not (tmp_path / "sharded" / "events.parquet").exists()
    users = pd.read_parquet(tmp_path / "sharded" / "users.parquet")
    expected_shard = user_shards(users["user_id"].to_numpy(object), 3)
    for s, part in enumerate(manifest["parts"]):
        ev = pd.read_parquet(tmp_path / "sharded" / part["file"])
        assert set(np.unique(ev["user_idx"])) <= set(np.flatnonzero(expected_shard == s))
        key = ev[["user_idx", "timestamp", "row"]].to_numpy()
        assert (np.diff(key[:, 0]) >= 0).all() and part["events"] == len(ev)
    one, sharded = PreparedData.load(tmp_path / "one"), PreparedData.load(tmp_path / "sharded")
    for name in ("seq_items", "seq_times", "seq_behaviors", "offsets"):
        np.testing.assert_array_equal(getattr(one, name), getattr(sharded, name))


def test_taobao_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    table = pa.table(
        {
            "u": rng.integers(1, 60, n),
            "i": rng.integers(1, 200, n),
            "c": rng.integers(1, 9, n),
            "b": pa.array(rng.choice(["pv", "pv", "pv", "cart", "fav", "buy"], n)),
            "t": rng.integers(1_511_539_200, 1_512_316_799, n),
        }
    )
    path = tmp_path / "UserBehavior.csv"
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    assert_same(tmp_path, both(tmp_path, "taobao", path, []))


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("movielens", "movielens-100k"),
        ("amazon", "amazon-beauty-2014"),
        ("taobao", "taobao-userbehavior-head"),
    ],
)
def test_shared_data_same_bytes(tmp_path: Path, source: str, name: str) -> None:
    assert_same(tmp_path, both(tmp_path, source, shared_dataset(name), []))


@pytest.mark.parametrize("unit", ["iso", "ms"])
def test_timestamp_units_values_and_mapped_columns(tmp_path: Path, unit: str) -> None:
    rng = np.random.default_rng(0)
    n = 1500
    secs = 1_600_000_000 + rng.integers(0, 10**7, n)
    when = (
        pd.to_datetime(secs, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        if unit == "iso"
        else pd.Series(secs * 1000 + rng.integers(0, 1000, n)).astype(str)
    )
    frame = pd.DataFrame(
        {
            "uid": [f"u{x}" for x in rng.integers(0, 50, n)],
            "iid": rng.integers(0, 90, n).astype(str),
            "when": np.asarray(when, dtype=object),
            "beh": rng.choice(["click", "buy", "view"], n),
            "rating": rng.choice(["1", "2.5", "", " 4 "], n),
        }
    )
    frame.loc[5, "when"] = "2020-13-45T00:00:00" if unit == "iso" else "12x"
    frame.loc[9, "rating"] = "abc"
    folder = tmp_path / "raw"
    folder.mkdir()
    frame.to_csv(folder / "events.csv", index=False)
    overrides = [
        f"source.timestamp_unit={unit}", "source.columns.user_id=uid", "source.columns.item_id=iid",
        "source.columns.timestamp=when", "source.columns.behavior=beh", "source.columns.value=rating",
        "bad_rows=drop",
    ]  # fmt: skip
    reports = both(tmp_path, "generic", folder, overrides)
    assert_same(tmp_path, reports)
    assert reports["duckdb"]["dropped"] == {"bad_timestamp": 1, "bad_value": 1}
    assert reports["duckdb"]["dropped_examples"]["bad_value"] == [
        f"{folder / 'events.csv'}:11: column 'rating': value 'abc' is not a number"
    ]


@pytest.mark.parametrize(
    "body",
    [
        HEADER + 'u1,"i2,200,view\n' + TAIL,  # unterminated quote
        "",  # empty file
        "user_id,item,timestamp,behavior\n" + TAIL,  # misnamed column (did you mean)
        HEADER,  # a header without rows
    ],
)
def test_file_level_errors_match(tmp_path: Path, body: str) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "events.csv").write_text(body, encoding="utf-8")
    cfg = load_data_config(None, [], "generic", str(folder))
    messages = []
    for engine in ("pandas", "duckdb"):
        with pytest.raises(DataError) as err:
            prepare(cfg, tmp_path / engine, progress=False, engine=engine)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert list(tmp_path.iterdir()) == [folder]
