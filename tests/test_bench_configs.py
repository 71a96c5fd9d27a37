"""Every quality-table row is a committed run config that loads and validates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "train" / "configs").glob("*.yaml")))
def test_run_configs_load(config: str) -> None:
    from seqrec.training.run import resolve_config

    resolve_config(REPO / "train" / "configs" / config)


def test_every_benchmark_row_names_a_committed_config() -> None:
    from seqrec.training.run import resolve_config

    suites = _bench().SUITES  # type: ignore[attr-defined]
    for suite in suites.values():
        for config in suite["models"].values():
            cfg = resolve_config(REPO / "train" / "configs" / f"{config}.yaml")
            for member in cfg.ensemble.members:  # late fusion: its members are committed too
                assert (REPO / member).is_file(), member


def test_headline_row_is_chosen_on_validation_not_test() -> None:
    bench = _bench()
    row = {"metrics": {"ndcg@10": 0.0}}
    results = {
        "sasrec": [{**row, "valid_ndcg@10": 0.9}],  # not a seqrec row: never the headline
        "seqrec-text": [{"metrics": {"ndcg@10": 0.05}, "valid_ndcg@10": 0.02}],  # best on TEST
        "seqrec-hybrid": [{"metrics": {"ndcg@10": 0.01}, "valid_ndcg@10": 0.03}],  # best on VALID
        "seqrec-fusion": [{"metrics": {"ndcg@10": 0.02}, "valid_ndcg@10": None}],  # unknown: skipped
    }
    assert bench.select_main("beauty", results) == "seqrec-hybrid"  # type: ignore[attr-defined]
    assert bench.select_main("taobao", results) == "seqrec"  # a fixed row stays fixed  # type: ignore[attr-defined]
