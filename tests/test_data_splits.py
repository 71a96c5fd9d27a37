"""Splits: leave-one-out and global temporal, target behaviours, and no leakage for any user."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.config import ConfigError, DataConfig
from seqrec.data.schema import DataError
from seqrec.data.splits import make_splits

NAMES = ["view", "cart", "buy"]


def random_log(seed: int = 0, n_users: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, behaviours, offsets) sorted by user then time, with many same-time ties."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, n_users)
    times = np.concatenate([np.sort(rng.integers(0, 50, n)) * 86400 for n in lengths]).astype(np.int64)
    behaviors = rng.choice(3, lengths.sum(), p=[0.7, 0.2, 0.1]).astype(np.int8)
    return times, behaviors, np.concatenate([[0], np.cumsum(lengths)])


def check_no_leakage(
    times: np.ndarray, behaviors: np.ndarray, offsets: np.ndarray, split, targets: list[str]
) -> None:
    allowed = [NAMES.index(t) for t in targets] if targets else list(range(len(NAMES)))
    for u in range(len(offsets) - 1):
        n = offsets[u + 1] - offsets[u]
        train_end, valid, test = int(split.train_end[u]), int(split.valid_pos[u]), int(split.test_pos[u])
        assert 0 <= train_end <= n
        for pos in (valid, test):
            if pos >= 0:
                # The target is outside its input [0, pos), the input is non-empty, behaviour allowed.
                assert 1 <= pos < n and behaviors[offsets[u] + pos] in allowed
                assert train_end <= pos  # nothing at or after a target is trained on
        if valid >= 0 and test >= 0:
            assert valid < test


@pytest.mark.parametrize("targets", [[], ["buy"], ["cart", "buy"]])
def test_leave_one_out(targets: list[str]) -> None:
    times, behaviors, offsets = random_log()
    cfg = DataConfig(split="loo", target_behaviors=targets)
    split = make_splits(cfg, times, behaviors, NAMES, offsets)
    check_no_leakage(times, behaviors, offsets, split, targets)
    allowed = [NAMES.index(t) for t in targets] if targets else [0, 1, 2]
    for u in range(len(offsets) - 1):
        beh = behaviors[offsets[u] : offsets[u + 1]]
        eligible = [p for p in range(1, len(beh)) if beh[p] in allowed]
        assert split.test_pos[u] == (eligible[-1] if eligible else -1)
        assert split.valid_pos[u] == (eligible[-2] if len(eligible) > 1 else -1)
        if split.valid_pos[u] >= 0:
            assert split.train_end[u] == split.valid_pos[u]


def test_leave_one_out_plain_is_last_and_second_to_last() -> None:
    offsets = np.array([0, 5])
    split = make_splits(DataConfig(), np.arange(5, dtype=np.int64), np.zeros(5, np.int8), NAMES, offsets)
    assert (split.train_end[0], split.valid_pos[0], split.test_pos[0]) == (3, 3, 4)


@pytest.mark.parametrize("targets", [[], ["buy"]])
def test_temporal(targets: list[str]) -> None:
    times, behaviors, offsets = random_log(seed=3)
    cfg = DataConfig(split="temporal", valid_quantile=0.7, test_quantile=0.85, target_behaviors=targets)
    split = make_splits(cfg, times, behaviors, NAMES, offsets)
    check_no_leakage(times, behaviors, offsets, split, targets)
    t_valid, t_test = split.info["valid_time"], split.info["test_time"]
    assert t_valid < t_test
    for u in range(len(offsets) - 1):
        t = times[offsets[u] : offsets[u + 1]]
        assert np.all(t[: split.train_end[u]] < t_valid) and np.all(t[split.train_end[u] :] >= t_valid)
        if split.valid_pos[u] >= 0:
            assert t_valid <= t[split.valid_pos[u]] < t_test
        if split.test_pos[u] >= 0:
            assert t[split.test_pos[u]] >= t_test


def test_splits_are_deterministic() -> None:
    times, behaviors, offsets = random_log(seed=5)
    for split in ("loo", "temporal"):
        cfg = DataConfig(split=split)  # type: ignore[arg-type]
        a = make_splits(cfg, times, behaviors, NAMES, offsets)
        b = make_splits(cfg, times.copy(), behaviors.copy(), NAMES, offsets.copy())
        assert np.array_equal(a.test_pos, b.test_pos) and np.array_equal(a.valid_pos, b.valid_pos)


def test_unknown_target_behaviour_is_a_config_error() -> None:
    times, behaviors, offsets = random_log()
    with pytest.raises(ConfigError, match="target_behaviors"):
        make_splits(DataConfig(target_behaviors=["purchase"]), times, behaviors, NAMES, offsets)


def test_no_target_anywhere_is_an_error() -> None:
    offsets = np.array([0, 3])
    with pytest.raises(DataError, match="no user has a test target"):
        make_splits(
            DataConfig(target_behaviors=["buy"]),
            np.arange(3, dtype=np.int64),
            np.zeros(3, np.int8),
            NAMES,
            offsets,
        )


def test_temporal_quantiles_on_one_timestamp_is_an_error() -> None:
    offsets = np.array([0, 4])
    with pytest.raises(DataError, match="quantile"):
        make_splits(
            DataConfig(split="temporal"), np.full(4, 7, np.int64), np.zeros(4, np.int8), NAMES, offsets
        )
