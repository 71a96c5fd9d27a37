"""Prepare on the real data sets in ../shared/data (skipped with a reason when they are absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.config import DataConfig
from seqrec.data.prepare import prepare
from seqrec.data.schema import PreparedData
from tests.conftest import shared_dataset

pytestmark = pytest.mark.shared_data


def prepared(kind: str, name: str, out: Path) -> tuple[PreparedData, dict, Path]:
    src = shared_dataset(name)
    cfg = DataConfig()
    cfg.source.kind = kind  # type: ignore[assignment]
    cfg.source.input = str(src)
    report = prepare(cfg, out, progress=False)
    return PreparedData.load(out), report, src


def test_amazon_beauty(tmp_path: Path) -> None:
    data, report, src = prepared("amazon", "amazon-beauty-2014", tmp_path / "beauty")
    assert (report["users"], report["interactions"], report["items"]) == (22363, 198502, 12101)
    assert report["dropped"] == {}
    assert data.items["item_id"].is_monotonic_increasing  # ASIN order, as in the benchmark files
    # Same-day ties (77,402 of them) keep the file's order: every user's sequence is the file's.
    raw = pd.read_csv(src / "interactions.csv", dtype=str)
    user_idx = pd.Index(data.users["user_id"]).get_indexer(raw["user_id"])
    expected = raw["item_id"].to_numpy()[np.argsort(user_idx, kind="stable")]
    assert np.array_equal(data.items["item_id"].to_numpy()[data.seq_items], expected)
    assert report["split"]["test_users"] == 22363 and data.profile_spec.source == "behavioural"


def test_movielens_100k(tmp_path: Path) -> None:
    data, report, _ = prepared("movielens", "movielens-100k", tmp_path / "ml")
    assert (report["users"], report["interactions"], report["items"]) == (943, 100000, 1682)
    assert data.profile_spec.source == "demographics"
    names = {c["name"] for c in data.profile_spec.categorical} | {
        c["name"] for c in data.profile_spec.numeric
    }
    assert names == {"age", "gender", "occupation", "zip_region"}
    assert (data.profile_cat > 0).all()  # every user has known demographics
    assert data.items["item_id"].tolist()[:3] == ["1", "2", "3"] and "genres" in data.text_fields
    assert "é" in "".join(data.items["title"])  # latin-1 decoded, not mangled


def test_taobao(tmp_path: Path) -> None:
    data, report, _ = prepared("taobao", "taobao-userbehavior-head", tmp_path / "tb")
    assert data.behaviors == ["view", "favorite", "cart", "buy"]
    assert all(report["behaviors"][b] > 0 for b in data.behaviors)
    assert report["interactions"] == 84475 and report["users"] == 815
    assert data.items["category"].str.match(r"^category \d+$").all()
    spec = json.loads((tmp_path / "tb" / "profile_spec.json").read_text())
    assert spec["source"] == "behavioural" and any(c["name"] == "share_buy" for c in spec["numeric"])
