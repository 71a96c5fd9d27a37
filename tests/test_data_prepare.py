"""The prepare pipeline end to end: layout, report, determinism, configs, atomic output, no leakage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from seqrec.cli import main
from seqrec.config import ConfigError, RunConfig
from seqrec.data.cli import load_data_config
from seqrec.data.examples import render_history
from seqrec.data.schema import PreparedData
from seqrec.data.synth import SynthConfig, synth


def write_log(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id,item_id,timestamp,behavior"]
    # user 10: three events at the same second, logged in reverse item order (ties keep this order)
    rows += ["10,c,500,view", "10,b,500,view", "10,a,500,cart", "10,d,600,buy"]
    rows += ["9,a,100,view", "9,b,200,view", "9,e,300,buy", "9,a,400,view"]
    rows += ["8,a,100,view", "8,b,100,view"]  # too short: dropped by min_user_events=3
    (folder / "events.csv").write_text("\n".join(rows) + "\n")
    items = "item_id,title,category\na,Tasse à café,Küche\nb,连衣裙,女装\nc,Gamme,Küche\nd,Dé,Jeux\ne,Œuf,Küche\nz,Never seen,Misc\n"
    (folder / "items.csv").write_text(items, encoding="utf-8")
    (folder / "users.csv").write_text("user_id,age,gender\n9,30,f\n10,50,m\n11,20,f\n")
    return folder


def run(folder: Path, out: Path, *args: str) -> int:
    return main(["data", "prepare", "--input", str(folder), "--out", str(out), "--quiet", *args])


def test_prepare_layout_and_report(tmp_path: Path) -> None:
    out = tmp_path / "prep"
    assert run(write_log(tmp_path / "raw"), out) == 0
    data = PreparedData.load(out)
    report = json.loads((out / "report.json").read_text())
    assert {k: report[k] for k in ("users", "items", "interactions")} == {
        "users": 2,
        "items": 5,
        "interactions": 8,
    }
    assert all(isinstance(report[k], int) for k in ("users", "items", "interactions"))
    assert report["dropped"] == {"min_user_events": 2, "items_without_events": 1, "users_without_events": 1}
    assert report["behaviors"] == {"view": 5, "cart": 1, "buy": 2}
    assert sum(report["sequence_length"]["histogram"].values()) == 2
    assert set(report["timings_s"]) >= {"read", "split", "profile", "write"}
    md = (out / "report.md").read_text()
    assert "min_user_events" in md and "2 users, 5 items, 8 interactions" in md
    # Users and items in id order (integers compared as numbers: 9 before 10).
    assert data.users["user_id"].tolist() == ["9", "10"]
    assert data.items["item_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert data.items["title"].tolist()[:2] == ["Tasse à café", "连衣裙"]  # non-ASCII untouched
    # Ties keep the log's row order: c, b, a (all at t=500), then d.
    items, _, behaviors = data.sequence(1)
    assert data.items["item_id"].to_numpy()[items].tolist() == ["c", "b", "a", "d"]
    assert [data.behaviors[b] for b in behaviors] == ["view", "view", "cart", "buy"]
    assert data.behaviors == ["view", "cart", "buy"]
    assert (data.users["test_pos"].tolist(), data.users["valid_pos"].tolist()) == ([3, 3], [2, 2])
    assert data.profile_spec.source == "demographics" and data.profile_cat.shape == (2, 1)
    assert data.users["gender"].tolist() == ["f", "m"]  # raw profile values kept for inspection
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split"] == "loo" and meta["category_field"] == "category"


def test_prepare_is_deterministic(tmp_path: Path) -> None:
    folder = write_log(tmp_path / "raw")
    assert run(folder, tmp_path / "a") == 0 and run(folder, tmp_path / "b") == 0
    for name in (
        "events.parquet",
        "users.parquet",
        "items.parquet",
        "profiles.parquet",
        "meta.json",
        "profile_spec.json",
    ):
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(tmp_path / "a" / name), pd.read_parquet(tmp_path / "b" / name)
            )
        else:
            assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, out = write_log(tmp_path / "raw"), tmp_path / "prep"
    assert run(folder, out) == 0
    assert run(folder, out) == 2 and "--overwrite" in capsys.readouterr().err
    assert run(folder, out, "--overwrite", "split=temporal", "valid_quantile=0.3", "test_quantile=0.6") == 0
    assert "valid_time" in json.loads((out / "meta.json").read_text())


def test_run_yaml_and_bare_data_yaml(tmp_path: Path) -> None:
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump({"data": {"min_user_events": 2, "source": {"kind": "taobao"}}, "train": {"epochs": 1}})
    )
    bare = tmp_path / "data.yaml"
    bare.write_text(yaml.safe_dump({"min_user_events": 4, "dedupe": "first"}))
    cfg = load_data_config(str(run_yaml), ["data.kcore=2"], None, "/x")
    assert (cfg.min_user_events, cfg.kcore, cfg.source.kind, cfg.source.input) == (2, 2, "taobao", "/x")
    cfg = load_data_config(str(bare), ["source.columns.user_id=uid"], "amazon")
    assert (cfg.min_user_events, cfg.dedupe, cfg.source.kind, cfg.source.columns.user_id) == (
        4,
        "first",
        "amazon",
        "uid",
    )
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump({"min_user_events": 4, "colour": 1}))
    with pytest.raises(ConfigError, match="colour"):
        load_data_config(str(mixed), [])
    with pytest.raises(ConfigError, match=r"data\.min_user_events"):
        load_data_config(None, ["min_user_events=0"])


@pytest.fixture(scope="module")
def buy_targets(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """Synthetic funnel log (every stage an event) with buy-only targets: the hardest leakage case."""
    out = tmp_path_factory.mktemp("buy") / "data"
    data_cfg = load_data_config(None, ["target_behaviors=[buy]", "min_user_events=2"])
    synth(
        out,
        SynthConfig(n_users=150, n_items=200, seed=4, funnel="events", mean_events=40),
        data_cfg,
        progress=False,
    )
    return PreparedData.load(out)


@pytest.mark.parametrize("mode", ["fixed", "session"])
def test_no_target_inside_any_model_input(buy_targets: PreparedData, mode: str) -> None:
    data = buy_targets
    cfg = RunConfig()
    cfg.window.mode = mode  # type: ignore[assignment]
    cfg.window.max_windows = 1000
    buy = data.behaviors.index("buy")
    checked = 0
    for u in range(data.n_users):
        _, _, behaviors = data.sequence(u)
        train_end = data.input_end(u, "train")
        for split in ("valid", "test"):
            pos = data.input_end(u, split)  # type: ignore[arg-type]
            if pos < 0:
                continue
            assert behaviors[pos] == buy
            windows = [w for w, _ in render_history(data, u, split, cfg)]  # type: ignore[arg-type]
            covered = [p for w in windows for p in range(w.start, w.end)]
            assert covered == list(range(pos))  # exactly the events before the target, once each
            assert train_end <= pos
            checked += 1
        train = [w for w, _ in render_history(data, u, "train", cfg)]
        assert all(w.end <= train_end for w in train)
    assert checked >= data.n_users  # on average a valid and a test buy per user


def test_later_events_after_the_test_target_exist_but_are_not_input(buy_targets: PreparedData) -> None:
    data = buy_targets
    later = [len(data.sequence(u)[0]) - 1 - data.input_end(u, "test") for u in data.eval_users("test")]
    assert max(later) > 0  # views after the last buy: future, outside every input
    assert np.all(
        data.users["train_end"].to_numpy()
        <= np.where(data.users["valid_pos"] >= 0, data.users["valid_pos"], 10**9)
    )
