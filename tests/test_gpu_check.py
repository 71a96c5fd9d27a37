"""benchmarks/gpu_check.py cannot rot: its --smoke mode (tiny models, CPU, DeepSpeed's CPU
accelerator) runs the same code path as on a GPU -- run_training under ZeRO-2 and ZeRO-3, the
measurements, the save/reload round trip in a fresh process, the report -- in about a minute."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_table_and_plan() -> None:
    gc = _gpu_check()
    assert gc.device_peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.4, "table entry 'H100' (dense bf16)")
    assert gc.device_peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert gc.device_peak_tflops("NVIDIA H200", None)[0] == 989.4
    assert gc.device_peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert gc.device_peak_tflops("Some New GPU", None)[0] is None
    assert gc.device_peak_tflops("Some New GPU", 123.0) == (123.0, "--peak-tflops")
    names = [c["name"] for c in gc.plan(gc.argparse.Namespace(smoke=False, model=None))]
    assert names[0] == "qwen2.5-0.5b-shape zero2 lora"  # the MFU goal's case runs first
    assert {"qwen2.5-0.5b-shape zero3 lora", "smollm2-135m-shape qlora", "bert-base-shape zero2 lora"} <= set(
        names
    )
    # Real shapes: the 0.5B decoder really is ~0.5B parameters (tied embeddings).
    s = gc.SHAPES["qwen2.5-0.5b-shape"]
    h, L, f, v = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"], s["vocab_size"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * f
    assert 0.45e9 < L * per_layer + v * h < 0.55e9


@pytest.mark.slow
@pytest.mark.distributed
def test_smoke_mode_runs_the_training_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PET_", "RANK", "WORLD_SIZE"))
    }
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "benchmarks/gpu_check.py",
        "--smoke",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "w"),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    res = json.loads((out / "gpu.json").read_text())
    cases = {c["name"]: c for c in res["cases"]}
    ran = ["tiny-llama zero2 lora", "tiny-llama zero3 lora", "tiny-bert zero2 lora"]
    for name in ran:
        c = cases[name]
        assert c["status"] == "ok", c
        assert c["steps"] == 3 and c["timed_steps"] == 2 and c["padded_tokens_per_s"] >= c["tokens_per_s"] > 0
        assert c["flops_per_token"] > 4 * c["backbone"]["params_non_embedding"] > 0
        assert (
            c["backbone"]["layers"] == 2 and c["peak_memory_bytes"] > 0 and c["mfu"] is None
        )  # no peak on CPU
        trip = c["round_trip"]
        assert trip.get("equal_within_tolerance") is True and trip["max_abs_diff"] < 1e-4, trip  # fp32
    # ZeRO-3 really partitioned the backbone, and the round trip still matched (gathered weights).
    assert (
        cases["tiny-llama zero3 lora"]["backbone"]["params"]
        == cases["tiny-llama zero2 lora"]["backbone"]["params"]
    )
    assert cases["tiny-llama qlora"]["status"].startswith("skipped: QLoRA needs CUDA")
    assert cases["tiny-llama zero2 flash-attention-2"]["status"].startswith(
        "skipped: flash-attention 2 needs CUDA"
    )
    md = (out / "gpu.md").read_text()
    assert "SMOKE RUN" in md and "| tiny-llama zero3 lora | ok |" in md
