"""`seqrec data synth --events N`: a Taobao-shaped log of exactly N events, deterministic, with the
behaviour funnel and power-law popularity, written in chunks, readable by the taobao reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.cli import main
from seqrec.data.schema import PreparedData
from seqrec.data.synth_scale import FILE_NAME, ScaleConfig, generate_csv

pytest.importorskip("duckdb")
COLUMNS = ["user", "item", "category", "behavior", "timestamp"]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, header=None, names=COLUMNS)


def test_exact_count_deterministic_and_chunked(tmp_path: Path) -> None:
    a = generate_csv(tmp_path / "a.csv", ScaleConfig(20_000, seed=5, chunk_events=3_000), progress=False)
    b = generate_csv(tmp_path / "b.csv", ScaleConfig(20_000, seed=5, chunk_events=7_000), progress=False)
    assert a["events"] == b["events"] == 20_000
    # Chunk size changes the random stream, not the shape; the same chunking gives the same bytes.
    c = generate_csv(tmp_path / "c.csv", ScaleConfig(20_000, seed=5, chunk_events=3_000), progress=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()
    assert c["users"] == a["users"] == round(20_000 / 101.4)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_taobao_shape(tmp_path: Path) -> None:
    info = generate_csv(tmp_path / FILE_NAME, ScaleConfig(60_000, n_items=3_000, seed=1), progress=False)
    ev = read(tmp_path / FILE_NAME)
    assert len(ev) == 60_000 and ev["item"].between(1, 3_000).all()
    shares = ev["behavior"].value_counts(normalize=True)
    assert (
        shares["pv"] > 0.85
        and 0.01 < shares["buy"] < 0.04
        and set(shares.index) == {"pv", "fav", "cart", "buy"}
    )
    # Funnel: every fav/cart/buy acts on an item the same user viewed at or before that time.
    views = ev[ev["behavior"] == "pv"].groupby(["user", "item"])["timestamp"].min()
    acts = ev[ev["behavior"] != "pv"].join(views.rename("first_view"), on=["user", "item"])
    assert acts["first_view"].notna().all() and (acts["first_view"] <= acts["timestamp"]).all()
    # Power law: the top 1% of items take far more than 1% of the events; one category per item.
    counts = np.sort(ev["item"].value_counts().to_numpy())[::-1]
    assert counts[: len(counts) // 100].sum() > 0.15 * len(ev)
    assert (ev.groupby("item")["category"].nunique() == 1).all()
    # Rows are grouped by user, but not in time order within a user (prepare must sort them).
    assert (np.diff(ev["user"].to_numpy()) != 0).sum() == info["users"] - 1
    assert not ev.groupby("user")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


def test_cli_synth_events_prepares_with_duckdb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "big"
    assert main(["data", "synth", "--out", str(out), "--events", "30000", "--items", "2000", "--quiet"]) == 0
    data = PreparedData.load(out)
    report = json.loads((out / "report.json").read_text())
    assert report["engine"]["name"] == "duckdb" and report["raw_rows"]["events"] == 30_000
    assert report["files"]["events"] == str(out / "raw" / FILE_NAME) and (out / "raw" / FILE_NAME).is_file()
    assert data.n_events == report["interactions"] and data.behaviors == ["view", "favorite", "cart", "buy"]
    assert [p.name for p in tmp_path.iterdir()] == ["big"]  # the scratch raw folder is gone
    raw_only = tmp_path / "raw-only"
    assert main(["data", "synth", "--out", str(raw_only), "--events", "500", "--raw-only", "--quiet"]) == 0
    assert len(read(raw_only / "raw" / FILE_NAME)) == 500
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--events", "0"]) == 2
