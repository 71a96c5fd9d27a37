"""The LoRA path as it was first run on real data (Beauty, benchmarks/bench_lora.py): joint stage
(MiniLM + LoRA tuned with the head) then the head on features re-encoded with the tuned adapter.
Regression tests for what that run needed or exposed, on tiny models."""

from __future__ import annotations

import logging

import pytest
import torch

from seqrec.training.trackers import Progress, StepMeter


def test_step_meter_reports_backbone_texts_per_second(caplog: pytest.LogCaptureFixture) -> None:
    """Joint-stage throughput in texts (windows + live items through the backbone) per second, not
    only users and tokens: the unit the encoder benchmarks use (benchmarks/results/encode.md)."""
    from accelerate import Accelerator

    meter = StepMeter(Accelerator(cpu=True))
    meter.add(torch.tensor(1.0), {"tokens": 100, "nonpad_tokens": 80, "texts": 12}, samples=4)
    meter.add(torch.tensor(3.0), {"tokens": 50, "nonpad_tokens": 40, "texts": 6}, samples=4)
    meter.t0 -= 2.0  # pretend the two steps took (at least) two seconds
    report = meter.report()
    assert report["loss"] == pytest.approx(2.0)
    assert 0 < report["texts_per_s"] <= 18 / 2.0
    assert report["tokens_per_s"] / report["texts_per_s"] == pytest.approx(120 / 18)
    with caplog.at_level(logging.INFO, logger="seqrec.training.trackers"):
        Progress(total=2, initial=0, enabled=True, memory_kind="cpu_peak_rss").show(2, 0, report)
    assert "texts/s" in caplog.text
    # A head-stage step (cached features, no backbone) has no texts: no rate is made up.
    meter.add(torch.tensor(1.0), {}, samples=4)
    assert "texts_per_s" not in meter.report()
