"""The training loop on one process: training, validation, best model, checkpoints, resume, signals.

Also home of the tiny recommender the multi-process tests (test_training_distributed.py) train:
an item-embedding + MLP next-item model over the `tiny_data` fixture, with dropout so that
resuming must restore RNG state too.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import ModelOutput

from seqrec.config import RunConfig, TrainConfig, validate
from seqrec.data.schema import PreparedData

# ---- the tiny recommender ---------------------------------------------------------------------

HISTORY = 5


class NextItemDataset(Dataset):
    """One example per user: up to HISTORY items before the target (train: last train event)."""

    def __init__(self, data: PreparedData, split: str):
        self.examples = []
        users = data.train_users(2) if split == "train" else data.eval_users(split)  # type: ignore[arg-type]
        for u in users:
            items, _, _ = data.sequence(int(u))
            end = data.input_end(int(u), "train") - 1 if split == "train" else data.input_end(int(u), split)  # type: ignore[arg-type]
            self.examples.append((int(u), items[max(0, end - HISTORY) : end].tolist(), int(items[end])))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[int, list[int], int]:
        return self.examples[i]


def collate(examples: list[tuple[int, list[int], int]]) -> dict[str, torch.Tensor]:
    history = torch.zeros(len(examples), HISTORY, dtype=torch.long)  # item + 1, 0 = padding
    for row, (_, items, _) in enumerate(examples):
        if items:
            history[row, -len(items) :] = torch.tensor(items) + 1
    return {
        "user_idx": torch.tensor([u for u, _, _ in examples]),
        "history": history,  # [B, H]
        "target": torch.tensor([t for _, _, t in examples]),  # [B]
    }


@dataclass
class TinyOutput(ModelOutput):
    """A dict-like output: ZeRO-3's backward hooks can find the tensors inside (not in a plain object)."""

    loss: torch.Tensor | None = None
    metrics: dict[str, Any] | None = None


class TinyRec(nn.Module):
    """`norm` is frozen, standing in for a LoRA model's frozen backbone."""

    def __init__(self, n_items: int, dim: int = 16, hidden: int = 32):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim).requires_grad_(False)
        self.head = nn.Linear(dim, n_items)
        self.steps_seen: list[int] = []

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        mask = (history > 0).float().unsqueeze(-1)  # [B, H, 1]
        h = (self.item_emb(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, D]
        return self.head(self.norm(h + self.mlp(h)))  # [B, n_items]

    def forward(self, batch: dict[str, torch.Tensor]) -> TinyOutput:
        history = batch["history"]
        loss = F.cross_entropy(self.scores(history), batch["target"])
        return TinyOutput(loss, {"tokens": history.numel(), "nonpad_tokens": (history > 0).sum()})

    def on_step_end(self, step: int) -> None:
        self.steps_seen.append(step)


def evaluate_ndcg(model: nn.Module, accelerator: Any, data: PreparedData) -> dict[str, float]:
    """NDCG@10 / HR@10 on the validation users (every rank evaluates all of them)."""
    batch = collate(NextItemDataset(data, "valid").examples)
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    scores = model.scores(batch["history"].to(device)).float().cpu()  # type: ignore[operator]
    rank = (scores > scores.gather(1, batch["target"][:, None])).sum(1)  # [U], 0 = top
    hit = rank < 10
    return {"ndcg@10": float((hit / torch.log2(rank.float() + 2)).mean()), "hr@10": float(hit.float().mean())}


def save_safetensors(model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
    from safetensors.torch import save_file

    sd = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))


def load_tiny(folder: Path, n_items: int) -> TinyRec:
    from safetensors.torch import load_file

    model = TinyRec(n_items)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def full_train_loss(model: nn.Module, data: PreparedData, device: torch.device) -> float:
    batch = {k: v.to(device) for k, v in collate(NextItemDataset(data, "train").examples).items()}
    model.eval()
    with torch.no_grad():
        loss = float(model(batch).loss)
    model.train()
    return loss


def tiny_config(output_dir: Path, **train: Any) -> RunConfig:
    base: dict[str, Any] = {
        "output_dir": str(output_dir),
        "batch_size": 4,
        "epochs": 2,
        "lr": 1e-2,
        "warmup_ratio": 0.1,
        "tracker": "none",
        "log_every": 2,
        "patience": 0,
        "seed": 3,
    }
    base.update(train)
    cfg = RunConfig(train=TrainConfig(**base))
    validate(cfg)
    return cfg


def make_trainer(cfg: RunConfig, data: PreparedData, **kw: Any) -> Any:
    from seqrec.training.loop import Trainer

    torch.manual_seed(cfg.train.seed)
    model = TinyRec(data.n_items)
    return Trainer(
        cfg,
        model,
        NextItemDataset(data, "train"),
        collate,
        kw.pop("evaluate_fn", lambda m, acc: evaluate_ndcg(m, acc, data)),
        save_safetensors,
        **kw,
    )


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Any:
    """accelerate keeps process-wide singletons; each in-process run starts from a clean slate."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def params_of(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}


# ---- tests --------------------------------------------------------------------------------------


def test_trains_validates_and_keeps_best_model(tmp_path: Path, tiny_data: PreparedData) -> None:
    cfg = tiny_config(tmp_path / "run", epochs=4, keep_last=2)
    trainer = make_trainer(cfg, tiny_data)
    before = full_train_loss(trainer.unwrapped, tiny_data, trainer.accelerator.device)
    result = trainer.train()
    after = full_train_loss(trainer.unwrapped, tiny_data, trainer.accelerator.device)

    assert result.exit_code == 0 and result.stop_reason == "completed"
    assert result.global_step == trainer.total_steps == 4 * trainer.steps_per_epoch
    assert after < before
    assert trainer.unwrapped.steps_seen == list(range(1, result.global_step + 1))  # on_step_end
    out = Path(cfg.train.output_dir)
    assert (out / "config.yaml").is_file()
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert len(steps) == 2 and steps[-1] == result.global_step  # keep_last
    best = json.loads((out / "best_metrics.json").read_text())
    assert best["step"] == result.best_step and best["metrics"]["ndcg@10"] == pytest.approx(
        result.best_metric
    )
    reloaded = load_tiny(out / "best", tiny_data.n_items)
    assert evaluate_ndcg(reloaded, trainer.accelerator, tiny_data)["ndcg@10"] == pytest.approx(
        result.best_metric
    )


def test_early_stopping_counts_validations(tmp_path: Path, tiny_data: PreparedData) -> None:
    cfg = tiny_config(tmp_path / "run", epochs=20, eval_every=1, patience=3)
    trainer = make_trainer(cfg, tiny_data, evaluate_fn=lambda m, acc: {"ndcg@10": 0.5})  # never improves
    result = trainer.train()
    assert result.stop_reason == "early_stopping"
    assert result.best_step == 1 and result.global_step == 4


def test_time_budget_stops_cleanly_and_counts_across_resumes(tmp_path: Path, tiny_data: PreparedData) -> None:
    cfg = tiny_config(tmp_path / "run", epochs=5, max_minutes=1e-9)
    result = make_trainer(cfg, tiny_data).train()
    assert (result.stop_reason, result.exit_code, result.global_step) == ("max_minutes", 0, 1)
    assert result.best_step == 1  # validated before stopping
    again = make_trainer(tiny_config(tmp_path / "run", epochs=5, resume="auto"), tiny_data).train()
    assert again.global_step == 1  # the budget is spent, and the run is finished


def test_missing_best_metric_is_a_clear_error(tmp_path: Path, tiny_data: PreparedData) -> None:
    from seqrec.config import ConfigError

    cfg = tiny_config(tmp_path / "run", epochs=1)
    trainer = make_trainer(cfg, tiny_data, evaluate_fn=lambda m, acc: {"recall@10": 0.5})
    with pytest.raises(ConfigError, match=r"best_metric='ndcg@10'.*recall@10"):
        trainer.train()


def _stop_at(step: int) -> Any:
    """A step hook that sends this process SIGUSR1 after optimizer step `step`."""

    def hook(state: Any) -> None:
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGUSR1)

    return hook


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path: Path, tiny_data: PreparedData) -> None:
    from safetensors.torch import load_file

    from seqrec.training.checkpoint import read_state
    from seqrec.training.preemption import PREEMPTED_EXIT_CODE

    # 40 train users, batch 3, accum 4 -> 14 micro-batches = 4 steps per epoch, the last of
    # only 2 micro-batches; stopping at step 6 stops in the middle of epoch 1.
    kw = {"epochs": 3, "batch_size": 3, "grad_accum": 4, "checkpoint_every": 100}
    full = make_trainer(tiny_config(tmp_path / "full", **kw), tiny_data)
    full_result = full.train()
    expected = params_of(full)

    first = make_trainer(tiny_config(tmp_path / "split", **kw), tiny_data, step_hooks=[_stop_at(6)])
    stopped = first.train()
    assert stopped.exit_code == PREEMPTED_EXIT_CODE and stopped.stop_reason == "preempted"
    assert stopped.global_step == 6 and stopped.last_checkpoint is not None
    assert stopped.last_checkpoint.name == "step-6"
    position = read_state(stopped.last_checkpoint)
    assert (position.epoch, position.batch_in_epoch) == (1, 8)  # mid-epoch
    saved = load_file(str(stopped.last_checkpoint / "model.safetensors"))
    assert "head.weight" in saved and "norm.weight" not in saved  # frozen weights are not checkpointed

    second = make_trainer(tiny_config(tmp_path / "split", resume="auto", **kw), tiny_data)
    resumed = second.train()
    assert resumed.resumed_from == stopped.last_checkpoint
    assert resumed.exit_code == 0 and resumed.global_step == full_result.global_step
    for name, value in params_of(second).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.best_metric == pytest.approx(full_result.best_metric)

    # A finished run resumed again does nothing.
    third = make_trainer(tiny_config(tmp_path / "split", resume="auto", **kw), tiny_data)
    again = third.train()
    assert again.global_step == resumed.global_step and again.stop_reason == "completed"


def test_sigterm_saves_a_complete_checkpoint(tmp_path: Path, tiny_data: PreparedData) -> None:
    from seqrec.training.checkpoint import read_state, verify_checkpoint

    def term(state: Any) -> None:
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_config(tmp_path / "run", epochs=5, checkpoint_every=100)
    previous = signal.getsignal(signal.SIGTERM)
    result = make_trainer(cfg, tiny_data, step_hooks=[term]).train()
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored
    assert result.exit_code == 143 and result.global_step == 3
    assert result.last_checkpoint is not None and verify_checkpoint(result.last_checkpoint) is None
    state = read_state(result.last_checkpoint)
    assert state.global_step == 3 and not state.finished and state.stop_reason == "preempted"


def test_corrupted_newest_checkpoint_falls_back_to_previous(
    tmp_path: Path, tiny_data: PreparedData, caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec.training.checkpoint import find_resumable, verify_checkpoint

    cfg = tiny_config(tmp_path / "run", epochs=2, checkpoint_every=2, keep_last=3)
    make_trainer(cfg, tiny_data, step_hooks=[_stop_at(6)]).train()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-2", "step-4", "step-6"]

    # Flip one byte in the newest checkpoint's model file, truncate the one before it.
    model_file = root / "step-6" / "model.safetensors"
    raw = bytearray(model_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model_file.write_bytes(bytes(raw))
    assert "model.safetensors does not match its sha256" in (verify_checkpoint(root / "step-6") or "")
    state_file = root / "step-4" / "trainer_state.json"
    state_file.write_bytes(state_file.read_bytes()[:10])
    assert "truncated" in (verify_checkpoint(root / "step-4") or "")

    with caplog.at_level("WARNING"):
        assert find_resumable(tmp_path / "run") == root / "step-2"
    assert "step-6/model.safetensors" in caplog.text and "step-4/trainer_state.json" in caplog.text
    assert (root / ".bad-step-6").is_dir() and not (root / "step-6").exists()

    result = make_trainer(tiny_config(tmp_path / "run", resume="auto", epochs=2), tiny_data).train()
    assert result.resumed_from == root / "step-2" and result.exit_code == 0


def test_explicit_resume_of_an_incomplete_checkpoint_is_an_error(
    tmp_path: Path, tiny_data: PreparedData
) -> None:
    from seqrec.errors import CheckpointError

    cfg = tiny_config(tmp_path / "run", epochs=1, checkpoint_every=2, keep_last=5)
    make_trainer(cfg, tiny_data).train()
    ckpt = tmp_path / "run" / "checkpoints" / "step-2"
    (ckpt / "COMPLETE").unlink()
    cfg = tiny_config(tmp_path / "run", epochs=1, resume=str(ckpt))
    with pytest.raises(CheckpointError, match="COMPLETE is missing"):
        make_trainer(cfg, tiny_data).train()


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    from seqrec.training.sampler import EpochShuffleSampler

    a, b = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    list(a)  # iterating does not advance anything
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)


def test_deepspeed_config_resolution(tmp_path: Path) -> None:
    from seqrec.config import ConfigError
    from seqrec.training.distributed import load_deepspeed_config

    repo = Path(__file__).resolve().parents[1]
    train = TrainConfig(batch_size=8, grad_accum=4, max_grad_norm=1.0)
    for name in ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"):
        ds = load_deepspeed_config(repo / "ds_configs" / f"{name}.json", train)
        assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 4
        assert ds["gradient_clipping"] == 1.0
    bad = json.loads((repo / "ds_configs" / "zero3.json").read_text())
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=re.escape("gradient_clipping=1.0 but train.max_grad_norm=0.5")):
        load_deepspeed_config(path, TrainConfig(max_grad_norm=0.5))
    bad["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        load_deepspeed_config(path, train)


def test_param_groups_split_decay(tiny_data: PreparedData) -> None:
    from seqrec.training.loop import default_param_groups

    model = TinyRec(tiny_data.n_items)
    groups = {g["name"]: g for g in default_param_groups(model, 0.1)}
    assert {p.ndim for p in groups["decay"]["params"]} == {2}
    assert {p.ndim for p in groups["no_decay"]["params"]} == {1} and groups["no_decay"]["weight_decay"] == 0.0
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len([p for p in model.parameters() if p.requires_grad])  # frozen ones excluded
    assert np.isclose(groups["decay"]["weight_decay"], 0.1)


def test_accelerate_yamls_name_a_ds_config_and_repeat_none_of_its_keys() -> None:
    import yaml

    repo = Path(__file__).resolve().parents[1]
    yamls = sorted((repo / "train" / "accelerate").glob("*.yaml"))
    assert {p.stem for p in yamls} == {
        "ddp",
        "zero0",
        "zero1",
        "zero2",
        "zero3",
        "zero2_offload",
        "zero3_offload",
    }
    for path in yamls:
        cfg = yaml.safe_load(path.read_text())
        assert "mixed_precision" not in cfg and "num_processes" not in cfg  # run config / command line
        if path.stem == "ddp":
            assert cfg["distributed_type"] == "MULTI_GPU" and "deepspeed_config" not in cfg
            continue
        ds = cfg["deepspeed_config"]
        # With deepspeed_config_file, accelerate rejects zero_stage, gradient_clipping, offload_* ...
        assert set(ds) == {"deepspeed_config_file", "deepspeed_multinode_launcher", "zero3_init_flag"}
        assert ds["deepspeed_config_file"] == f"ds_configs/{path.stem}.json"
        assert (repo / ds["deepspeed_config_file"]).is_file()
        assert ds["zero3_init_flag"] == path.stem.startswith("zero3")


# ---- the seqrec model: its item feature cache is part of the checkpoint ------------------------


def _seqrec_trainer(tmp_path: Path, out: Path, data_dir: Path, backbone: Path, **train: Any) -> Any:
    """A joint-stage seqrec Trainer: tiny BERT + LoRA, text item tower whose catalogue cache is
    refreshed every 5 steps, checkpoints every 3 steps."""
    from accelerate.utils import set_seed

    from seqrec.data.schema import PreparedData
    from seqrec.training.distributed import make_accelerator
    from seqrec.training.seqrec_setup import seqrec_setup
    from tests.tiny_models import tiny_run_config

    overrides: dict[str, Any] = {
        "data_dir": str(data_dir),
        "model.adapter.method": "lora",
        "model.items.mode": "text",
        "model.items.cache_refresh_steps": 5,
        "model.encoder.micro_batch_size": 8,
        "train.output_dir": str(out),
        "train.stage": "joint",
        "train.batch_size": 4,
        "train.epochs": 2,
        "train.max_steps": 12,
        "train.checkpoint_every": 3,
        "train.eval_every": 0,  # validates at the end of epoch 1 (step 10): that rebuilds the cache too
        "train.eval_max_users": 4,
        "train.lr": 3e-3,
        "train.backbone_lr": 3e-2,  # the LoRA weights move enough for a stale cache to matter
        "train.log_every": 4,
        "train.tracker": "none",
        "train.mixed_precision": "'no'",
        "text.max_window_tokens": 32,
        "text.max_item_tokens": 12,
    }
    overrides.update({f"train.{k}": v for k, v in train.items()})
    cfg = tiny_run_config(backbone, **overrides)
    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed)  # as run_training does: the same initial weights in every run
    setup = seqrec_setup(cfg, PreparedData.load(cfg.data_dir), accelerator)
    return setup.trainer(cfg, accelerator)


def test_seqrec_resume_between_cache_refreshes_matches_uninterrupted_run(
    tmp_path: Path, tiny_data_dir: Path, tiny_backbones: Any
) -> None:
    """A run killed after the step-6 checkpoint (the item cache was last built at step 5, from
    older weights) and resumed continues with that cache, not one re-encoded from the checkpoint's
    weights, and ends with exactly the weights of a run that was never interrupted."""
    from seqrec.training.checkpoint import EXTRA_STATE_FILE, load_extra_tensors, read_state
    from seqrec.training.loop import TrainResult

    backbone = tiny_backbones("bert")
    full = _seqrec_trainer(tmp_path, tmp_path / "full", tiny_data_dir, backbone, keep_last=10)
    assert full.train().global_step == 12
    expected = {k: v.detach().clone() for k, v in full.unwrapped.state_dict().items()}
    _reset_accelerate()

    class Killed(Exception):
        pass

    def kill_at_8(state: Any) -> None:
        if state.global_step == 8:  # after the step-6 checkpoint, before the next one
            raise Killed

    first = _seqrec_trainer(tmp_path, tmp_path / "split", tiny_data_dir, backbone)
    first.step_hooks.append(kill_at_8)
    with pytest.raises(Killed):
        first.train()
    ckpt = tmp_path / "split" / "checkpoints" / "step-6"
    assert read_state(ckpt).global_step == 6 and (ckpt / EXTRA_STATE_FILE).is_file()
    saved = load_extra_tensors(ckpt)
    assert int(saved["item_cache_step"]) == 5 and int(saved["item_cache_fresh"]) == 0
    # The checkpointed cache is the uninterrupted run's at step 6 (before anything rebuilt it).
    reference = load_extra_tensors(tmp_path / "full" / "checkpoints" / "step-6")
    assert torch.equal(saved["item_features"], reference["item_features"])
    _reset_accelerate()

    second = _seqrec_trainer(tmp_path, tmp_path / "split", tiny_data_dir, backbone, resume="auto")
    resumed: TrainResult = second.train()
    assert resumed.resumed_from == ckpt and resumed.global_step == 12
    got = second.unwrapped.state_dict()
    assert got.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, f"weights differ after resume: {differ[:5]}"


def _reset_accelerate() -> None:
    """What the fresh_accelerate_state fixture does, between the runs of one test."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
