"""Ordering (ties keep the log's row order), dedupe policies, minimum counts, k-core, id order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqrec.data import sequences
from seqrec.data.sources.tables import DropLog


def events(rows: list[tuple[str, str, int, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "behavior"])
    frame["value"] = np.nan
    frame["row"] = np.arange(len(frame), dtype=np.int64)
    return frame


def test_ties_keep_original_row_order_never_item_id() -> None:
    # Same timestamp; items deliberately in reverse id order in the log.
    log = events([("u", "z", 5, "view"), ("u", "m", 5, "view"), ("u", "a", 5, "view"), ("u", "b", 1, "view")])
    out = sequences.sort_events(log)
    assert out["item_id"].tolist() == ["b", "z", "m", "a"]
    indexed, _, _ = sequences.index_events(out)
    assert indexed["item_id"].tolist() == ["b", "z", "m", "a"]


def test_sort_is_stable_under_shuffled_users() -> None:
    rng = np.random.default_rng(0)
    rows = [
        (f"u{rng.integers(0, 5)}", f"i{rng.integers(0, 9)}", int(rng.integers(0, 4)), "view")
        for _ in range(300)
    ]
    out = sequences.sort_events(events(rows))
    for _, group in out.groupby("user_id", sort=False):
        keys = list(zip(group["timestamp"], group["row"]))
        assert keys == sorted(keys)


@pytest.mark.parametrize(
    "policy,expected",
    [
        ("none", ["a@1", "a@1", "a@1", "a@2", "b@3", "a@4"]),
        ("exact", ["a@1", "a@2", "b@3", "a@4"]),  # identical (user, item, time, behaviour) rows
        ("consecutive", ["a@1", "b@3", "a@4"]),  # back-to-back same item and behaviour
        ("first", ["a@1", "b@3"]),  # a user's first event per item
    ],
)
def test_dedupe_policies(policy: str, expected: list[str]) -> None:
    log = events(
        [
            ("u", "a", 1, "view"),
            ("u", "a", 1, "view"),
            ("u", "a", 2, "view"),
            ("u", "b", 3, "view"),
            ("u", "a", 4, "view"),
        ]
    )
    log.loc[len(log)] = ["u", "a", 1, "view", np.nan, 99]  # an exact duplicate far down the file
    drops = DropLog()
    out = sequences.dedupe(sequences.sort_events(log), policy, drops)
    assert [f"{i}@{t}" for i, t in zip(out["item_id"], out["timestamp"])] == expected
    assert out["row"].iloc[0] == 0  # the first row of a duplicate group is the one kept
    assert drops.counts.get("duplicate", 0) == len(log) - len(expected)


def test_consecutive_keeps_a_different_behaviour() -> None:
    log = events([("u", "a", 1, "view"), ("u", "a", 2, "cart")])
    assert len(sequences.dedupe(log, "consecutive", DropLog())) == 2


def test_min_counts_user_minimum_always_holds() -> None:
    rows = [
        ("u1", "a", 1, "view"),
        ("u1", "b", 2, "view"),
        ("u1", "c", 3, "view"),
        ("u2", "a", 1, "view"),
        ("u2", "b", 2, "view"),
    ]
    drops = DropLog()
    out = sequences.filter_counts(events(rows), 3, 2, 0, drops)
    # Item c (1 event) goes first, then u1 has 2 < 3 events and goes too, then u2.
    assert len(out) == 0
    assert drops.counts["min_item_events"] == 1 and drops.counts["min_user_events"] == 4


def test_kcore_is_iterated_to_a_fixed_point() -> None:
    rng = np.random.default_rng(1)
    rows = [(f"u{rng.integers(0, 40)}", f"i{int(rng.zipf(1.6)) % 60}", t, "view") for t in range(800)]
    drops = DropLog()
    out = sequences.filter_counts(
        events(rows).drop_duplicates(["user_id", "item_id"]).reset_index(drop=True), 1, 1, 3, drops
    )
    assert len(out) > 0
    assert out.groupby("user_id").size().min() >= 3 and out.groupby("item_id").size().min() >= 3
    assert drops.counts["kcore"] == 800 - len(out) - (
        800 - len(events(rows).drop_duplicates(["user_id", "item_id"]))
    )


def test_id_order_numeric_when_all_integers_else_strings() -> None:
    def ordered(ids: list[str]) -> list[str]:
        array = np.array(ids, dtype=object)
        return array[sequences.id_order(array)].tolist()

    assert ordered(["10", "9", "100"]) == ["9", "10", "100"]
    assert ordered(["b10", "b9", "a"]) == ["a", "b10", "b9"]
    # Leading zeros are not integers in disguise: string order, so "007" and "7" stay distinct.
    assert ordered(["7", "007", "10"]) == ["007", "10", "7"]


def test_behavior_order() -> None:
    assert sequences.behavior_order(["buy", "view", "cart"], [], []) == ["view", "cart", "buy"]
    assert sequences.behavior_order(["rate"], [], ["rate"]) == ["rate"]
    assert sequences.behavior_order(["buy", "zap"], [], []) == ["zap", "buy"]
    assert sequences.behavior_order(["view"], ["view", "buy"], []) == ["view", "buy"]


def test_length_histogram_counts_every_user() -> None:
    lengths = np.array([1, 3, 5, 6, 10, 11, 600])
    hist = sequences.length_histogram(lengths)
    assert sum(hist.values()) == len(lengths)
    assert hist["6-10"] == 2 and hist[">500"] == 1
