"""The paired profile-ablation statistics (benchmarks/profile_ablation.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _ablation() -> Any:
    spec = importlib.util.spec_from_file_location(
        "profile_ablation", REPO / "benchmarks" / "profile_ablation.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_t_is_mean_over_standard_error_of_the_differences() -> None:
    a = _ablation()
    f = a.paired([0.10, 0.112, 0.111], [0.09, 0.10, 0.10])  # diffs 0.010, 0.012, 0.011
    assert f["diff"] == pytest.approx([0.010, 0.012, 0.011])
    assert f["mean_diff"] == pytest.approx(0.011)
    std = float(np.std([0.010, 0.012, 0.011], ddof=1))
    assert f["std_diff"] == pytest.approx(std)
    assert f["t"] == pytest.approx(0.011 / (std / math.sqrt(3)))  # 19
    assert f["t95"] == pytest.approx(4.303)
    assert f["beyond_seed_noise"]
    assert not a.paired([0.10, 0.12, 0.11], [0.09, 0.10, 0.10])["beyond_seed_noise"]  # t = 4.0 < 4.30


def test_noisy_differences_are_within_seed_noise() -> None:
    a = _ablation()
    f = a.paired([0.10, 0.08, 0.11], [0.09, 0.10, 0.10])  # diffs +0.01, -0.02, +0.01
    assert abs(f["t"]) < f["t95"]
    assert not f["beyond_seed_noise"]


def test_user_bootstrap_interval_covers_the_mean_and_excludes_zero_for_a_clear_shift() -> None:
    a = _ablation()
    rng = np.random.default_rng(1)
    shifted = a.bootstrap(rng.normal(0.05, 0.1, size=2000), rounds=2000)
    low, high = shifted["ci95"]
    assert low < shifted["mean_diff"] < high
    assert low > 0
    centred = a.bootstrap(rng.normal(0.0, 0.1, size=2000), rounds=2000)
    assert centred["ci95"][0] < 0 < centred["ci95"][1]
