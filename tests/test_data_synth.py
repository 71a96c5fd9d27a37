"""The synthetic generator: deterministic, learnable from titles, profiles with signal, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.cli import main
from seqrec.config import RunConfig
from seqrec.data.examples import render_history
from seqrec.data.schema import PreparedData
from seqrec.data.synth import BEHAVIORS, SynthConfig, generate, synth


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth(out, SynthConfig(), progress=False)
    return PreparedData.load(out)


def hit_rates(data: PreparedData, k: int = 10) -> dict[str, float]:
    """HR@k on the valid split of global popularity vs a title-word overlap heuristic."""
    words = [set(str(t).lower().split()) for t in data.items["title"]]
    pop = data.train_item_counts().astype(float)
    tie = pop / (pop.max() + 1)  # popularity breaks ties, below one shared word
    hits = {"popularity": 0, "title_words": 0}
    users = data.eval_users("valid")
    for u in users:
        items, _, _ = data.sequence(u)
        history = items[: data.input_end(u, "valid")]
        target = data.target(u, "valid")
        recent = set().union(*(words[i] for i in history[-3:]))
        for name, score in (
            ("popularity", pop.copy()),
            ("title_words", np.array([len(recent & w) for w in words]) + tie),
        ):
            score[history] = -np.inf
            hits[name] += int(target in np.argsort(-score, kind="stable")[:k])
    return {name: h / len(users) for name, h in hits.items()}


def test_title_words_predict_the_next_item(synth_data: PreparedData) -> None:
    rates = hit_rates(synth_data)
    assert rates["title_words"] > 2 * rates["popularity"]


def test_profiles_carry_signal(synth_data: PreparedData) -> None:
    """Gender shifts category interest: the category mix differs clearly between genders."""
    gender = synth_data.users["gender"].to_numpy()
    cats = synth_data.items["category"].to_numpy()[synth_data.seq_items]
    user_of = np.repeat(np.arange(synth_data.n_users), np.diff(synth_data.offsets))
    mix = pd.crosstab(gender[user_of], cats, normalize="index")
    assert (mix.loc["female"] - mix.loc["male"]).abs().max() > 0.1
    assert synth_data.profile_spec.source == "demographics"
    assert {c["name"] for c in synth_data.profile_spec.categorical} == {"gender", "city_tier"}


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = generate(SynthConfig(seed=1)), generate(SynthConfig(seed=1)), generate(SynthConfig(seed=2))
    for name in ("events", "items", "users"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["events"].equals(c["events"])


def test_shape_of_the_log() -> None:
    tables = generate(SynthConfig(n_users=200, n_items=100, seed=3))
    ev = tables["events"]
    assert set(ev["behavior"]) == set(BEHAVIORS)
    assert not ev.duplicated(["user_id", "item_id"]).any()  # a user meets an item once (collapsed)
    assert ev["timestamp"].is_monotonic_increasing  # written in time order, users interleaved
    assert ev["item_id"].isin(tables["items"]["item_id"]).all() and ev["user_id"].nunique() == 200
    counts = ev["behavior"].value_counts()
    assert counts["view"] > counts["click"] > counts["cart"] > counts["buy"] > 0  # a funnel
    assert tables["items"]["title"].str.split().str.len().min() >= 4  # brand style colour noun


def test_funnel_events_mode_orders_stages_per_item() -> None:
    ev = generate(SynthConfig(n_users=50, n_items=60, seed=5, funnel="events"))["events"]
    order = {b: i for i, b in enumerate(BEHAVIORS)}
    for _, group in ev.groupby(["user_id", "item_id"]):
        stages = [order[b] for b in group.sort_values("timestamp", kind="stable")["behavior"]]
        assert stages == list(range(len(stages)))  # view, then click, cart, buy: one step at a time
    per_user = ev.sort_values(["user_id", "timestamp"], kind="stable")
    assert per_user.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


def test_chinese_variant(tmp_path: Path) -> None:
    report = synth(tmp_path / "zh", SynthConfig(n_users=60, n_items=40, language="zh"), progress=False)
    data = PreparedData.load(tmp_path / "zh")
    assert data.language == "zh" and report["language"] == "zh"
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in data.items["title"])
    raw = pd.read_csv(tmp_path / "zh" / "raw" / "items.csv")
    assert (
        raw["title"].tolist()
        == generate(SynthConfig(n_users=60, n_items=40, language="zh"))["items"]["title"].tolist()
    )


def test_sizes_scale_and_default_is_fast() -> None:
    import time

    start = time.perf_counter()
    small = generate(SynthConfig())
    assert time.perf_counter() - start < 1.0
    big = generate(SynthConfig(n_users=2000, n_items=1000))
    assert len(big["events"]) > 3 * len(small["events"]) and len(big["items"]) == 1000


def test_cli_synth_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert (
        main(["data", "synth", "--out", str(out), "--users", "80", "--items", "50", "--seed", "3", "--quiet"])
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert f"{report['users']} users" in printed and 70 <= report["users"] <= 80
    assert report["input"] == str(out / "raw")
    assert "raw" in (out / "data_config.yaml").read_text() and ".tmp-" not in (out / "meta.json").read_text()
    data = PreparedData.load(out)
    user = str(data.users["user_id"].iloc[0])
    assert main(["data", "show", "--data", str(out), "--user", user, "window.size=3"]) == 0
    shown = capsys.readouterr().out
    assert f"user {user}" in shown and "--- window 1/" in shown and "held-out test target" in shown
    target = data.input_end(0, "test")
    assert f"event {target}, NOT part of the input" in shown
    cfg = RunConfig()
    cfg.window.size = 3
    for _, text in render_history(data, 0, "test", cfg):
        assert text in shown  # exactly the model's text
    assert main(["data", "show", "--data", str(out), "--user", "nobody"]) == 2
    assert "not in" in capsys.readouterr().err
