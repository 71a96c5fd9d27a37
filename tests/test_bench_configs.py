"""Every quality-table row is a committed run config that loads and validates."""

from __future__ import annotations

import importlib.util
import json
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


def test_run_measured_reports_each_commands_own_peak_memory(tmp_path: Path) -> None:
    """A small command run after a big one reports its own peak RSS, not the big one's (found when
    the LoRA head stage, run after the joint stage in one benchmark process, 'used' the joint's).
    Measured from a fresh small parent: Linux counts a child's RSS from before its exec (the
    parent's, at fork) into its peak, and this test process may be large."""
    import subprocess
    import sys

    script = f"""
import json, sys
sys.path.insert(0, {str(REPO / "benchmarks")!r})
from bench_quality import run_measured
log = {str(tmp_path / "log")!r}
big = [sys.executable, "-c", "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
first = run_measured(big, log)
second = run_measured([sys.executable, "-c", "pass"], log)
try:
    run_measured([sys.executable, "-c", "raise SystemExit(3)"], log)
    failed = False
except SystemExit as e:
    failed = "command failed (3)" in str(e)
print(json.dumps([first["peak_rss_mib"], second["peak_rss_mib"], failed]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second, failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert first > 400
    assert second < 150
    assert failed
