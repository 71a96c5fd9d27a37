"""train/train.py -> run_training end to end on one process: SASRec on the tiny set."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.test_training_loop import fresh_accelerate_state  # noqa: F401  (autouse fixture)

REPO = Path(__file__).resolve().parents[1]


def _train_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def sasrec_config(tmp_path: Path) -> Path:
    path = tmp_path / "sasrec.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sasrec": {"d_model": 16, "layers": 1, "heads": 1, "max_len": 10},
                "train": {"model": "sasrec", "epochs": 2, "batch_size": 8, "lr": 0.01, "log_every": 2},
                "eval": {"batch_size": 16},
            }
        )
    )
    return path


def test_train_script_trains_sasrec_and_resume_auto_is_idempotent(
    tmp_path: Path, tiny_data_dir: Path, sasrec_config: Path
) -> None:
    from seqrec.baselines.sasrec import SASRec

    out = tmp_path / "run"
    argv = [
        "--config",
        str(sasrec_config),
        "--data",
        str(tiny_data_dir),
        "--output",
        str(out),
        "--resume",
        "auto",
    ]
    assert _train_script().main([*argv, "train.patience=0"]) == 0
    assert (out / "config.yaml").is_file() and list((out / "checkpoints").glob("step-*"))
    assert list((out / "logs" / "seqrec").glob("events.out.tfevents.*"))  # TensorBoard by default
    model = SASRec.from_pretrained(out / "best")
    assert model.n_items == 30

    # A requeued job that finds the run finished does nothing and succeeds.
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert _train_script().main([*argv, "train.patience=0"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_train_script_reports_user_errors_in_one_line(
    tmp_path: Path, tiny_data_dir: Path, sasrec_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _train_script()
    base = ["--config", str(sasrec_config), "--data", str(tiny_data_dir), "--output", str(tmp_path / "o")]
    assert script.main([*base, "train.no_such_key=1"]) == 2
    assert script.main([*base, "train.model=bpr"]) == 2
    assert script.main([*base, "train.deepspeed=ds_configs/missing.json"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("train.py: error:") for line in lines)
    assert "train.no_such_key" in lines[0] and "bpr" in lines[1] and "missing.json" in lines[2]
