"""Precision, device and kernel choices, and the settings a run refuses before any process starts.

* compute_precision: the one place the compute dtype and the backbone's load dtype are decided;
* the model casts what enters it to its own parameters' dtype (a bf16 model fed fp32 batches);
* attention kernel chosen by capability, with an error for an explicit kernel that cannot run;
* bad input: a DeepSpeed JSON that disagrees with the run config, QLoRA under ZeRO-3,
  flash-attention or another GPU-only option on CPU -> one line naming the setting, exit code 2,
  before any process group exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from seqrec.config import ConfigError, RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU refuses")


# ---- compute_precision -------------------------------------------------------------------------


def fake_accelerator(mixed: str, ds: dict[str, Any] | None = None) -> Any:
    kind = "DEEPSPEED" if ds is not None else "NO"
    return SimpleNamespace(
        mixed_precision=mixed,
        distributed_type=SimpleNamespace(value=kind),
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds) if ds else None),
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize(
    ("mixed", "ds", "method", "params", "backbone"),
    [
        # DeepSpeed casts the module to bf16 (fp32 master weights live in its optimizer).
        ("bf16", {"bf16": {"enabled": True}, "zero_optimization": {"stage": 3}}, "lora", "bf16", "bf16"),
        ("bf16", {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}, "full", "bf16", "bf16"),
        ("no", {"bf16": {"enabled": False}, "zero_optimization": {"stage": 2}}, "lora", "fp32", "fp32"),
        # Without DeepSpeed: autocast; full fine-tuning keeps fp32 weights (the master copy).
        ("bf16", None, "full", "fp32", "fp32"),
        ("bf16", None, "lora", "fp32", "bf16"),
        ("no", None, "lora", "fp32", "fp32"),
    ],
)
def test_compute_precision(mixed: str, ds: Any, method: str, params: str, backbone: str) -> None:
    from seqrec.training.distributed import compute_precision

    names = {"bf16": torch.bfloat16, "fp32": torch.float32}
    cfg = load_config(None, [f"model.adapter.method={method}"])
    p = compute_precision(fake_accelerator(mixed, ds), cfg)
    assert (p.dtype, p.backbone_dtype) == (names[params], names[backbone])
    assert p.device == torch.device("cpu")


def test_full_finetuning_without_deepspeed_ignores_a_bf16_weight_dtype() -> None:
    from seqrec.training.distributed import compute_precision

    cfg = load_config(None, ["model.adapter.method=full", "model.backbone.dtype=bfloat16"])
    assert compute_precision(fake_accelerator("bf16"), cfg).backbone_dtype == torch.float32
    cfg.model.adapter.method = "lora"
    assert compute_precision(fake_accelerator("bf16"), cfg).backbone_dtype == torch.bfloat16


# ---- the model boundary ------------------------------------------------------------------------


def test_bf16_head_stage_model_takes_float32_batches(tiny_data: Any) -> None:
    """What DeepSpeed bf16 does to the module (all parameters and buffers bf16); the batch's
    window features, profile numerics and the item feature cache stay float32."""
    import numpy as np

    from seqrec.data.collate import SeqRecCollator
    from seqrec.data.examples import make_input, split_end
    from seqrec.data.features import FeatureStore
    from seqrec.modeling import SeqRecModel
    from tests.tiny_models import tiny_run_config

    hidden = 12
    cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": hidden, "model.head.loss": "sampled"})
    feats = torch.nn.functional.normalize(torch.randn(tiny_data.n_items, hidden), dim=-1)
    model = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False, item_features=feats)
    users = list(range(6))
    inputs = [make_input(tiny_data, u, split_end(tiny_data, u, "train"), cfg.window) for u in users]
    index = {(u, w.start, w.end): i for i, (u, inp) in enumerate(zip(users, inputs)) for w in inp.windows}
    rows = torch.randn(len(index) + 1, hidden)
    store = FeatureStore.from_keys(rows, feats, list(index), list(index.values()))
    examples = [{"input": inp, "feature_rows": store.rows(u, inp.windows)} for u, inp in zip(users, inputs)]
    batch = SeqRecCollator(tiny_data, cfg, "train", features=store)(examples)
    assert batch["window_features"].dtype == torch.float32

    model.to(torch.bfloat16)  # as DeepSpeed's engine does (module.bfloat16())
    assert model.dtype == torch.bfloat16 and model.item_features.dtype == torch.bfloat16
    model.set_item_features(feats)  # float32 in: stored in the model's dtype
    assert model.item_features.dtype == torch.bfloat16
    out = model(batch)
    assert out.loss is not None and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert out.user_emb.dtype == torch.bfloat16
    model.eval()
    scores = model.score_batch(batch)
    assert scores.shape == (len(users), tiny_data.n_items) and torch.isfinite(scores.float()).all()
    assert np.isfinite(model.item_log_prior.float().numpy()).all()


def test_bf16_joint_model_with_a_float32_backbone_output(tiny_data: Any, tiny_backbones: Any) -> None:
    """The encoder returns the backbone's dtype; the model casts it to its own at the boundary."""
    from seqrec.modeling import SeqRecModel
    from tests.tiny_models import item_tokens, make_batch, tiny_run_config

    model = SeqRecModel.from_data(tiny_run_config(tiny_backbones("llama")), tiny_data)
    model.build_item_cache(item_tokens(model, tiny_data))
    batch = make_batch(model, tiny_data, [0, 1, 2])
    # Head layers in bf16, backbone fp32: every float tensor crossing between them is cast.
    for part in (model.item_tower, model.aggregator, model.profile, model.fusion, model.head):
        if part is not None:
            part.to(torch.bfloat16)
    out = model(batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and all(p.grad is not None for p in lora)


# ---- attention by capability -------------------------------------------------------------------


def test_attention_choice(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from transformers import BertConfig, LlamaConfig

    from seqrec.modeling import backbone

    llama = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64)
    with caplog.at_level(logging.INFO, logger="seqrec.modeling.backbone"):
        assert backbone.resolve_attn("auto", llama, torch.bfloat16) == (
            "flash_attention_2" if torch.cuda.is_available() and backbone.flash_attn_installed() else "sdpa"
        )
    assert "attention: " in caplog.text  # the choice and its reason are logged

    # A CUDA machine with flash_attn: only fp16/bf16 and a supporting architecture get it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backbone, "flash_attn_installed", lambda: True)
    assert backbone.resolve_attn("auto", llama, torch.bfloat16) == "flash_attention_2"
    assert backbone.resolve_attn("auto", llama, torch.float32) == "sdpa"
    assert backbone.resolve_attn("auto", BertConfig(), torch.float16) == "flash_attention_2"
    monkeypatch.setattr(
        backbone, "_model_class", lambda config: type("NoFlash", (), {"_supports_sdpa": True})
    )
    assert backbone.resolve_attn("auto", llama, torch.bfloat16) == "sdpa"
    monkeypatch.setattr(backbone, "_model_class", lambda config: type("Old", (), {}))
    assert backbone.resolve_attn("auto", llama, torch.bfloat16) == "eager"
    with pytest.raises(ConfigError, match="no flash-attention 2 support"):
        backbone.resolve_attn("flash_attention_2", llama, torch.bfloat16)
    with pytest.raises(ConfigError, match="only in fp16/bf16"):
        monkeypatch.setattr(backbone, "_model_class", lambda config: None)
        backbone.resolve_attn("flash_attention_2", llama, torch.float32)
    # No flash_attn importable.
    monkeypatch.setattr(backbone, "flash_attn_installed", lambda: False)
    assert backbone.resolve_attn("auto", llama, torch.bfloat16) == "sdpa"
    with pytest.raises(ConfigError, match="flash_attn package does not import"):
        backbone.resolve_attn("flash_attention_2", llama, torch.bfloat16)


# ---- data loader defaults ----------------------------------------------------------------------


def test_loader_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from seqrec.training.distributed import loader_settings

    train = RunConfig().train
    assert loader_settings(train, "cpu") == (0, False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_settings(train, "cuda") == (4, True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_settings(train, "cuda") == (1, True)  # 16 CPUs / 8 processes, one left for the main
    train.num_workers, train.pin_memory = 2, False
    assert loader_settings(train, "cuda") == (2, False)


# ---- bad input ---------------------------------------------------------------------------------


def ds_json(tmp_path: Path, stage: int = 2, **changes: Any) -> Path:
    ds = json.loads((REPO / "ds_configs" / f"zero{stage}.json").read_text())
    ds.update(changes)
    path = tmp_path / f"ds{stage}-{'-'.join(sorted(changes)) or 'plain'}.json"
    path.write_text(json.dumps(ds))
    return path


def bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides, the setting the one-line error must name)."""
    return {
        "precision": (
            [f"train.deepspeed={ds_json(tmp_path, bf16={'enabled': True})}", "train.mixed_precision='no'"],
            "bf16.enabled=true but train.mixed_precision",
        ),
        "clipping": (
            [f"train.deepspeed={ds_json(tmp_path, gradient_clipping=0.5)}", "train.max_grad_norm=1.0"],
            "gradient_clipping=0.5 but train.max_grad_norm=1.0",
        ),
        "micro_batch": (
            [f"train.deepspeed={ds_json(tmp_path, train_micro_batch_size_per_gpu=8)}", "train.batch_size=4"],
            "train_micro_batch_size_per_gpu=8 but train.batch_size=4",
        ),
        "qlora_zero3": (
            [f"train.deepspeed={ds_json(tmp_path, 3)}", "model.adapter.method=qlora"],
            "model.adapter.method=qlora cannot run under ZeRO-3",
        ),
        "flash_on_cpu": (
            ["model.backbone.attn_implementation=flash_attention_2"],
            "model.backbone.attn_implementation=flash_attention_2 needs a CUDA GPU",
        ),
        "fp16_on_cpu": (["train.mixed_precision=fp16"], "train.mixed_precision=fp16 needs a GPU"),
        "pin_memory_on_cpu": (["train.pin_memory=true"], "train.pin_memory=true needs a GPU"),
        "qlora_on_cpu": (["model.adapter.method=qlora"], "model.adapter.method=qlora needs a CUDA GPU"),
    }


CASES = [
    "precision",
    "clipping",
    "micro_batch",
    "qlora_zero3",
    "flash_on_cpu",
    "fp16_on_cpu",
    "pin_memory_on_cpu",
    "qlora_on_cpu",
]


@cpu_only
@pytest.mark.parametrize("case", CASES)
def test_bad_setting_is_refused_before_any_process_group(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist

    from seqrec.training.distributed import make_accelerator

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(key, raising=False)
    started: list[Any] = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: started.append(a))
    overrides, message = bad_cases(tmp_path)[case]
    cfg = load_config(None, [*overrides, f"train.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError) as err:
        make_accelerator(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not started and not dist.is_initialized()


@cpu_only
@pytest.mark.slow
@pytest.mark.parametrize("case", ["precision", "qlora_zero3"])
def test_train_script_exits_2_with_one_line(case: str, tmp_path: Path, tiny_data_dir: Path) -> None:
    """The entry script under a launcher's environment: exit code 2, one line on stderr."""
    from tests.test_training_distributed import _env, _free_port

    overrides, message = bad_cases(tmp_path)[case]
    env = _env()
    env.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
    )
    cmd = [
        sys.executable,
        "train/train.py",
        "--data",
        str(tiny_data_dir),
        "--output",
        str(tmp_path / "out"),
        *overrides,
    ]
    # WORLD_SIZE=2 and no second rank: reaching init_process_group would block until the timeout.
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_model_built_from_its_own_config_section(tiny_data: Any, tmp_path: Path) -> None:
    """The model needs only its section plus a few sizes; such a model saves and reloads."""
    from seqrec.modeling import SeqRecModel
    from seqrec.modeling.model import SeqRecModelConfig
    from tests.tiny_models import tiny_run_config

    run = tiny_run_config("unused", **{"model.backbone.hidden_size": 12, "window.max_windows": 3})
    spec = SeqRecModelConfig(run.model, max_windows=3)
    feats = torch.nn.functional.normalize(torch.randn(tiny_data.n_items, 12), dim=-1)
    model = SeqRecModel(
        spec,
        tiny_data.n_items,
        tiny_data.profile_spec,
        tiny_data.behaviors,
        load_backbone=False,
        item_counts=tiny_data.train_item_counts(),
        item_features=feats,
    )
    assert model.spec.max_windows == 3 and model.aggregator.max_windows == 3
    assert model.item_features.shape == (tiny_data.n_items, 12)
    model.save_pretrained(tmp_path / "m")
    loaded = SeqRecModel.from_pretrained(tmp_path / "m", load_backbone=False)
    assert loaded.spec == model.spec
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        if name != "item_features":  # derived data, never saved
            torch.testing.assert_close(a, b, msg=name)


def test_flash_attention_checks_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a CUDA machine still refuses: fp32 weights (no mixed precision, or full fine-tuning
    without DeepSpeed) and a flash_attn that does not import."""
    from seqrec.modeling import backbone
    from seqrec.training.distributed import check_run_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(backbone, "flash_attn_installed", lambda: True)
    flash = "model.backbone.attn_implementation=flash_attention_2"
    check_run_config(load_config(None, [flash, "train.mixed_precision=bf16"]), gpu=True)
    with pytest.raises(ConfigError, match="runs only in fp16/bf16"):
        check_run_config(load_config(None, [flash, "train.mixed_precision='no'"]), gpu=True)
    full = load_config(None, [flash, "train.mixed_precision=bf16", "model.adapter.method=full"])
    with pytest.raises(ConfigError, match="full fine-tuning without DeepSpeed"):
        check_run_config(full, gpu=True)
    check_run_config(full, gpu=True, deepspeed=True)
    monkeypatch.setattr(backbone, "flash_attn_installed", lambda: False)
    with pytest.raises(ConfigError, match="flash_attn does not import"):
        check_run_config(load_config(None, [flash, "train.mixed_precision=bf16"]), gpu=True)
