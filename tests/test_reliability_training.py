"""Run folders are guarded (lock, no silent reuse, history set aside on a fresh start), a run stopped
by its time budget can be continued, and user mistakes end in one line with exit code 2."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from seqrec.cli import main
from seqrec.config import BackboneConfig
from seqrec.data.schema import PreparedData
from seqrec.training.run_folder import run_folder_lock
from tests.test_training_loop import make_trainer, tiny_config


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--output", str(out), "--model", "popularity", *extra])


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_second_run_into_a_locked_folder_fails_at_once_naming_the_holder(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with run_folder_lock(out):
        assert _train(tiny_data_dir, out) == 2
        _one_line(capsys, "is in use by another training run", f"pid {os.getpid()}")
        assert not (out / "best").exists()
    assert _train(tiny_data_dir, out) == 0  # released with its holder


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_data_dir, out) == 0
    (out / "best" / "marker").write_text("first run")
    capsys.readouterr()
    assert _train(tiny_data_dir, out) == 2
    _one_line(capsys, "already holds a run", "--resume auto", "--overwrite")
    assert (out / "best" / "marker").is_file()
    assert _train(tiny_data_dir, out, "--overwrite") == 0
    assert not (out / "best" / "marker").exists()
    other = tmp_path / "project"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _train(tiny_data_dir, other, "--overwrite") == 2
    _one_line(capsys, "is not a seqrec run folder")
    assert (other / "notes.txt").read_text() == "mine"


def test_a_fresh_start_after_only_bad_checkpoints_sets_the_old_history_aside(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_data_dir), "--output", str(out), "--model", "sasrec"]
    small = ["sasrec.d_model=8", "sasrec.layers=1", "train.epochs=2", "train.tracker=none"]
    assert main([*argv, *small]) == 0
    old_lines = (out / "valid_history.jsonl").read_text().splitlines()
    assert len(old_lines) == 2
    for step in (out / "checkpoints").iterdir():
        state = step / "trainer_state.json"
        state.write_text(state.read_text().replace('"global_step"', '"global_steps"'))  # corrupted
    assert main([*argv, *small, "train.epochs=1", "--resume", "auto"]) == 0
    assert len((out / "valid_history.jsonl").read_text().splitlines()) == 1  # only the new run
    aside = sorted(out.glob("valid_history.jsonl.old-*"))
    assert len(aside) == 1 and aside[0].read_text().splitlines() == old_lines
    assert sorted(out.glob("best.old-*")) and (out / "best").is_dir()


def test_a_run_stopped_by_its_time_budget_continues_with_a_larger_one(tmp_path, tiny_data: PreparedData):
    first = make_trainer(tiny_config(tmp_path / "run", epochs=2, max_minutes=1e-9), tiny_data).train()
    assert (first.stop_reason, first.global_step) == ("max_minutes", 1)
    cfg = tiny_config(tmp_path / "run", epochs=2, max_minutes=60, resume="auto")
    again = make_trainer(cfg, tiny_data).train()
    assert again.resumed_from is not None and again.stop_reason == "completed"
    assert again.global_step > first.global_step


# ---- one line and exit code 2 for user mistakes ------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Records every attempt to open a network connection (and refuses it)."""
    attempts: list[object] = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: connect(None, a[:2]))  # DNS lookups too
    return attempts


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lr=-1", "train.lr must be >= 0, got -1"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio must be >= 0 and <= 1"),
        ("train.keep_last=0", "train.keep_last must be >= 1"),
        ("model.aggregator.dropout=1.0", "dropout values must be < 1"),
        ("train.best_metric=ndcg@7", "train.best_metric='ndcg@7' is not one of"),
        ("train.scheduler=cosinus", "train.scheduler='cosinus' is not one of"),
        ("model.backbone.name=does-not-exist", "model.backbone.name='does-not-exist' is not an alias"),
        ("model.backbone.name=./no/such/folder", "no such file or folder"),
        ("model.backbone.name=someorg/not-cached-anywhere", "not in the local Hugging Face cache"),
        ("train.init_from=/no/such/model", "is not a seqrec model folder"),
    ],
)
def test_config_mistakes_fail_before_any_work(tiny_data_dir, tmp_path, capsys, no_network, override, needle):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data_dir), "--output", str(out), override]) == 2
    _one_line(capsys, needle)
    assert not no_network  # nothing tried the Hub
    assert not (out / "config.yaml").exists()


def test_a_custom_code_backbone_with_remote_code_off(tiny_data_dir, tmp_path, capsys):
    custom = tmp_path / "custom"
    custom.mkdir()
    config = {"model_type": "my_custom_lm", "auto_map": {"AutoModel": "modeling_custom.CustomModel"}}
    (custom / "config.json").write_text(json.dumps(config))
    argv = [
        "train",
        "--data",
        str(tiny_data_dir),
        "--output",
        str(tmp_path / "run"),
        f"model.backbone.name={custom}",
    ]
    assert main(argv) == 2
    _one_line(capsys, "needs its own Python code", "trust_remote_code")


def test_a_missing_data_dir_and_a_non_prepared_one(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 2
    _one_line(capsys, "does not exist")
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    _one_line(capsys, "is not a prepared data directory")


def test_options_after_overrides_and_help_defaults(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_data_dir), "train.seed=5", "--output", str(out), "train.epochs=2"]
    assert main([*argv, "--model", "popularity"]) == 0
    saved = json.loads((out / "best" / "seqrec_config.json").read_text())
    assert (saved["train"]["seed"], saved["train"]["epochs"]) == (5, 2)
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    assert "(default: 10)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "synthetic e-commerce log" in capsys.readouterr().out


@pytest.mark.parametrize("k", ["0", "-3"])
def test_recommend_k_must_be_positive(k, capsys):
    assert main(["recommend", "--checkpoint", "anything", "--user", "u", "--k", k]) == 2
    _one_line(capsys, "--k must be a positive number of items")


def test_local_backbones_switch_the_hub_off(tiny_backbones, monkeypatch):
    from huggingface_hub import constants

    from seqrec.modeling.availability import offline_if_local

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert offline_if_local(BackboneConfig(name="someorg/remote-model")) is False
    assert "HF_HUB_OFFLINE" not in os.environ
    assert offline_if_local(BackboneConfig(name=str(tiny_backbones("bert")))) is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


def test_ds_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    from seqrec.config import TrainConfig
    from seqrec.training.distributed import deepspeed_config_path

    monkeypatch.chdir(tmp_path)  # the accelerate YAMLs name ds_configs/zero2.json relative to the repo
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds_configs/zero2.json")
    found = deepspeed_config_path(TrainConfig())
    assert found is not None and found.is_absolute() and found.is_file()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert (
        deepspeed_config_path(TrainConfig(deepspeed="ds_configs/zero3.json")) == found.parent / "zero3.json"
    )
