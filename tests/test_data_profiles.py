"""Profile features are fitted on the training part only (vocabularies, means, behavioural stats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqrec.config import ConfigError, DataConfig
from seqrec.data.profiles import behavioural, demographics, fit_profiles

DAY = 86400


def test_demographics_fit_on_training_users_only() -> None:
    users = pd.DataFrame(
        {"gender": ["f", "m", "f", "x"], "age": [20.0, 40.0, np.nan, 1000.0], "city": ["a", None, "a", "b"]}
    )
    train_end = np.array([3, 2, 1, 0])  # the last user has no training events: fitted on nothing
    frame, spec = demographics(users, train_end)
    vocab = {c["name"]: c["vocab"] for c in spec.categorical}
    assert vocab["gender"] == ["f", "m"] and vocab["city"] == ["a"]  # 'x' and 'b' only in a test-only user
    assert frame["cat__gender"].tolist() == [1, 2, 1, 0]
    assert frame["cat__city"].tolist() == [1, 0, 1, 0]  # missing -> 0, unseen -> 0
    (age,) = spec.numeric
    assert age["mean"] == pytest.approx(30.0) and age["std"] == pytest.approx(10.0)  # not pulled by 1000
    assert frame["num__age"].tolist() == pytest.approx([-1.0, 1.0, 0.0, 97.0])
    assert spec.cardinalities == [3, 2]


def behavioural_inputs() -> dict:
    # user 0: view a, buy b | view c (test part); user 1: view a, view a, cart c
    items = np.array([0, 1, 2, 0, 0, 2])
    times = np.array([0, DAY, 9 * DAY, 0, 2 * DAY, 4 * DAY], dtype=np.int64)
    behaviors = np.array([0, 2, 0, 0, 0, 1], dtype=np.int8)
    offsets = np.array([0, 3, 6])
    train_end = np.array([2, 3])
    category = pd.Series(["shoes", "bags", "bags"])
    return dict(
        item_idx=items, times=times, behaviors=behaviors, offsets=offsets, train_end=train_end,
        behavior_names=["view", "cart", "buy"], item_category=category, top_n=2,
    )  # fmt: skip


def test_behavioural_features_from_the_train_part() -> None:
    frame, spec = behavioural(**behavioural_inputs())
    assert [c["name"] for c in spec.numeric] == [
        "log_events",
        "log_recency_days",
        "share_view",
        "share_cart",
        "share_buy",
    ]
    # Raw values before standardization, recovered with the stored mean/std.
    raw = {c["name"]: frame[f"num__{c['name']}"].to_numpy() * c["std"] + c["mean"] for c in spec.numeric}
    assert raw["log_events"] == pytest.approx(np.log1p([2, 3]))
    # Global train end = day 4 (user 1's cart); user 0's last train event is day 1.
    assert raw["log_recency_days"] == pytest.approx(np.log1p([3.0, 0.0]))
    assert raw["share_buy"] == pytest.approx([0.5, 0.0]) and raw["share_view"] == pytest.approx([0.5, 2 / 3])
    # Each slot is its own categorical feature. User 0 has shoes 1, bags 1 in training (its test-part
    # 'c' does not count): the tie goes to shoes, more frequent overall (3 vs 2). User 1: shoes 2, bags 1.
    vocab = {c["name"]: c["vocab"] for c in spec.categorical}
    assert vocab == {"top_category_1": ["shoes"], "top_category_2": ["bags"]}
    assert frame["cat__top_category_1"].tolist() == [1, 1]
    assert frame["cat__top_category_2"].tolist() == [1, 1]


def test_behavioural_ignores_everything_after_train_end() -> None:
    a = behavioural_inputs()
    b = {
        **a,
        "item_idx": a["item_idx"].copy(),
        "behaviors": a["behaviors"].copy(),
        "times": a["times"].copy(),
    }
    b["item_idx"][2], b["behaviors"][2], b["times"][2] = 0, 2, 100 * DAY  # user 0's test-part event
    fa, sa = behavioural(**a)
    fb, sb = behavioural(**b)
    pd.testing.assert_frame_equal(fa, fb)
    assert sa.to_json() == sb.to_json()


def test_profile_modes() -> None:
    inputs = behavioural_inputs()
    items = pd.DataFrame(
        {"item_idx": [0, 1, 2], "item_id": ["a", "b", "c"], "category": ["shoes", "bags", "bags"]}
    )
    args = (
        items,
        inputs["item_idx"],
        inputs["times"],
        inputs["behaviors"],
        inputs["offsets"],
        inputs["train_end"],
        inputs["behavior_names"],
    )
    users = pd.DataFrame({"gender": ["f", "m"]})
    assert fit_profiles(DataConfig(profile="auto"), users, *args)[1].source == "demographics"
    assert fit_profiles(DataConfig(profile="auto"), None, *args)[1].source == "behavioural"
    assert fit_profiles(DataConfig(profile="behavioural"), users, *args)[1].source == "behavioural"
    frame, spec = fit_profiles(DataConfig(profile="none"), users, *args)
    assert frame is None and spec.source == "none"
    with pytest.raises(ConfigError, match="demographics"):
        fit_profiles(DataConfig(profile="demographics"), None, *args)
    with pytest.raises(ConfigError, match="category_field"):
        fit_profiles(DataConfig(profile="behavioural", category_field="colour"), None, *args)
