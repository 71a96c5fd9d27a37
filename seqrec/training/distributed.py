"""Processes, devices and precision: one `Accelerator` for every way seqrec trains.

`make_accelerator(cfg)` covers single process, DDP (GPU or CPU) and DeepSpeed ZeRO (GPU or CPU),
whether launched by `accelerate launch`, `torchrun`, SLURM's `srun` or plain `python`.

Three things accelerate does not get right on its own in a custom loop, fixed here:

* DeepSpeed on a machine without a GPU: accelerate only passes a process-group backend to
  DeepSpeed when a GPU backend was detected, so every rank believes it is rank 0 of 1. We pass
  ``InitProcessGroupKwargs(backend="gloo")`` and set ``DS_ACCELERATOR=cpu`` (read by DeepSpeed on
  first use, so it must be set before anything touches ``deepspeed.accelerator``).
* Plain multi-process CPU runs must be created with ``cpu=True`` or accelerate leaves the
  distributed type at NO and never wraps the model in DDP (gradients would not be averaged).
* "auto" values in the DeepSpeed JSON. In a custom loop accelerate fills ``gradient_clipping``
  with a hard-coded 1.0 (ignoring ``train.max_grad_norm``), fills the micro batch size only
  when a DataLoader is prepared in the same ``prepare()`` call, and cannot fill bucket sizes
  at all without ``model.config.hidden_size``. We resolve the run-dependent keys ourselves from
  ``TrainConfig`` (see :func:`load_deepspeed_config`) and the JSON files in ``ds_configs/`` spell
  out everything else.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.config import ConfigError, RunConfig, TrainConfig

if TYPE_CHECKING:
    import torch
    import torch.distributed
    from accelerate.accelerator import Accelerator

log = logging.getLogger(__name__)

# Keys of the DeepSpeed JSON that depend on the run; "auto" means "take it from TrainConfig".
_RUN_KEYS = {
    "train_micro_batch_size_per_gpu": ("batch_size", "train.batch_size"),
    "gradient_accumulation_steps": ("grad_accum", "train.grad_accum"),
    "gradient_clipping": ("max_grad_norm", "train.max_grad_norm"),
}


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_mixed_precision(setting: str) -> str:
    """auto -> bf16 on a GPU that supports it, else no (fp32). fp16 needs a GPU; bf16 also runs on
    CPU (torch autocast, or DeepSpeed's CPU accelerator: slow, but it tests the GPU path)."""
    import torch

    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use auto, no or bf16 on CPU")
    return setting


def check_run_config(cfg: RunConfig, gpu: bool | None = None, deepspeed: bool = False) -> None:
    """Settings this machine or this launch cannot honour, found before any process group starts
    (one ConfigError naming the setting; the entry points turn it into exit code 2)."""
    import importlib.util

    gpu = has_gpu() if gpu is None else gpu
    m, t = cfg.model, cfg.train
    if t.mixed_precision == "fp16" and not gpu:
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use auto, no or bf16 on CPU")
    if t.pin_memory and not gpu:
        raise ConfigError("train.pin_memory=true needs a GPU (pinned memory only speeds up copies to one)")
    if t.num_workers is not None and t.num_workers < 0:
        raise ConfigError(f"train.num_workers must be >= 0 or null (auto), got {t.num_workers}")
    if t.model != "seqrec":
        return
    if m.adapter.method == "qlora" and not gpu:
        raise ConfigError(
            "model.adapter.method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); use method=lora on CPU"
        )
    if m.adapter.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.adapter.method=qlora needs bitsandbytes: pip install bitsandbytes")
    if m.backbone.attn_implementation == "flash_attention_2":
        if not gpu:
            raise ConfigError(
                "model.backbone.attn_implementation=flash_attention_2 needs a CUDA GPU; use auto or sdpa"
            )
        if m.adapter.method == "full" and not deepspeed:
            raise ConfigError(
                "model.backbone.attn_implementation=flash_attention_2 runs only in fp16/bf16, and full "
                "fine-tuning without DeepSpeed keeps fp32 weights (the master copy); use DeepSpeed "
                "(train.deepspeed) with bf16, or auto/sdpa"
            )
        if m.backbone.dtype == "float32" or (
            m.backbone.dtype == "auto" and resolve_mixed_precision(t.mixed_precision) == "no"
        ):
            raise ConfigError(
                "model.backbone.attn_implementation=flash_attention_2 runs only in fp16/bf16; set "
                "train.mixed_precision=bf16 (or model.backbone.dtype=bfloat16), or use auto/sdpa"
            )
        from seqrec.modeling.backbone import flash_attn_installed

        if not flash_attn_installed():
            raise ConfigError(
                "model.backbone.attn_implementation=flash_attention_2 but flash_attn does not import "
                "(pip install flash-attn); use auto or sdpa"
            )


def loader_settings(train: TrainConfig, device_type: str) -> tuple[int, bool]:
    """(num_workers, pin_memory) of the training DataLoader: the config's values, or auto:
    4 workers (at most the CPUs per local process) and pinned memory on a GPU, 0 / off on CPU."""
    on_gpu = device_type == "cuda"
    workers = train.num_workers
    if workers is None:
        per_process = (os.cpu_count() or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
        workers = min(4, max(per_process - 1, 0)) if on_gpu else 0
    pin = on_gpu if train.pin_memory is None else train.pin_memory
    return workers, pin


@dataclass(frozen=True)
class Precision:
    """Compute dtype and device of a run: decided HERE, once, from the accelerate/DeepSpeed state.

    dtype: what the model's parameters are in while training (DeepSpeed bf16/fp16 casts the whole
        module to it and keeps fp32 master weights in its optimizer; without DeepSpeed parameters
        stay fp32 and accelerate's autocast runs the matmuls in bf16/fp16);
    backbone_dtype: what the backbone is loaded in (see :func:`compute_precision`);
    device: where batches and the model live.
    The model casts every float tensor entering it to its own parameters' dtype/device.
    """

    dtype: torch.dtype
    backbone_dtype: torch.dtype
    device: torch.device
    mixed_precision: str  # no | bf16 | fp16
    deepspeed_stage: int | None


def compute_precision(accelerator: Accelerator, cfg: RunConfig) -> Precision:
    """The run's :class:`Precision`.

    Backbone dtype: an explicit ``model.backbone.dtype`` is kept, except that full fine-tuning
    without DeepSpeed always loads fp32 weights (they ARE the master weights; autocast computes in
    bf16). ``auto``: DeepSpeed with bf16/fp16 -> that dtype (DeepSpeed casts to it anyway; loading
    in it avoids an fp32 copy, and under ZeRO-3 zero.Init partitions it while it loads);
    otherwise the mixed-precision dtype for a frozen / LoRA / DoRA / QLoRA base (its weights never
    change; peft keeps the adapters in fp32) and fp32 for full fine-tuning or mixed_precision=no.
    """
    import torch

    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
    mp = str(accelerator.mixed_precision)
    stage = None
    if accelerator.distributed_type.value == "DEEPSPEED":
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        if ds.get("bf16", {}).get("enabled") is True:
            mp = "bf16"
        elif ds.get("fp16", {}).get("enabled") is True:
            mp = "fp16"
        else:
            mp = "no"
    mp_dtype = names.get(mp, torch.float32)
    dtype = mp_dtype if stage is not None else torch.float32
    method, wanted = cfg.model.adapter.method, cfg.model.backbone.dtype
    if method == "full" and stage is None:
        backbone = torch.float32
        if wanted not in ("auto", "float32"):
            log.info(
                "full fine-tuning without DeepSpeed: backbone loaded in fp32 (master weights), "
                "model.backbone.dtype=%s ignored; %s autocast does the compute",
                wanted,
                mp,
            )
    elif wanted != "auto":
        from seqrec.modeling.backbone import resolve_dtype

        backbone = resolve_dtype(wanted)
    elif stage is not None:
        backbone = mp_dtype
    else:
        backbone = torch.float32 if method == "full" else mp_dtype
    precision = Precision(dtype, backbone, accelerator.device, mp, stage)
    log.info(
        "precision: %s (parameters %s, backbone loaded in %s, %s) on %s",
        mp,
        str(dtype).removeprefix("torch."),
        str(backbone).removeprefix("torch."),
        f"DeepSpeed ZeRO-{stage}" if stage is not None else "no DeepSpeed",
        accelerator.device,
    )
    return precision


def deepspeed_config_path(train: TrainConfig) -> Path | None:
    """The DeepSpeed JSON of this run: `train.deepspeed`, or the one an accelerate YAML points to.

    `accelerate launch --config_file train/accelerate/zero2.yaml` exports the JSON path as
    ACCELERATE_DEEPSPEED_CONFIG_FILE; both may be given only if they name the same file.
    """
    from_env = None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        env_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        if env_file == "none":
            raise ConfigError(
                "the accelerate config enables DeepSpeed without `deepspeed_config_file`; "
                "point it at a JSON in ds_configs/ (see train/accelerate/*.yaml)"
            )
        from_env = locate_config_file(Path(env_file))
    from_cfg = locate_config_file(Path(train.deepspeed)) if train.deepspeed else None
    if from_cfg and from_env and from_cfg.resolve() != from_env.resolve():
        raise ConfigError(
            f"train.deepspeed={from_cfg} but the accelerate config uses {from_env}; give only one or make them equal"
        )
    path = from_cfg or from_env
    if path is not None and not path.is_file():
        raise ConfigError(f"train.deepspeed: DeepSpeed config not found: {path}")
    return path


def load_deepspeed_config(
    path: Path, train: TrainConfig, mixed_precision: str | None = None, adapter_method: str | None = None
) -> dict[str, Any]:
    """Read a DeepSpeed JSON and resolve the run-dependent keys against `train`.

    "auto" (or absent) micro batch size, accumulation steps and gradient clipping take
    train.batch_size, train.grad_accum and train.max_grad_norm. An explicit value that
    disagrees is an error: DeepSpeed does the accumulation and the clipping, and the loop's
    data loader and step counting use TrainConfig, so the two must never silently differ.
    `train_batch_size` and bf16/fp16 "auto" are filled by accelerate (from the above and from
    train.mixed_precision), which it does correctly.
    """
    try:
        ds: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    zero = ds.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        raise ConfigError(f"{path}: needs a zero_optimization section with a stage")
    for key, (attr, name) in _RUN_KEYS.items():
        wanted = float(getattr(train, attr)) if key == "gradient_clipping" else getattr(train, attr)
        value = ds.get(key, "auto")
        if value == "auto":
            ds[key] = wanted
        elif value != wanted:
            raise ConfigError(
                f"{path}: {key}={value} but {name}={getattr(train, attr)}; they must agree "
                f'(or write "auto" in the JSON to take {name})'
            )
    if mixed_precision is not None:
        for key, mp in (("bf16", "bf16"), ("fp16", "fp16")):
            section = ds.get(key)
            enabled = section.get("enabled", "auto") if isinstance(section, dict) else "auto"
            if enabled == "auto":
                continue
            if bool(enabled) != (mixed_precision == mp):
                raise ConfigError(
                    f"{path}: {key}.enabled={str(enabled).lower()} but train.mixed_precision resolves to "
                    f'{mixed_precision}; they must agree (or write "auto" in the JSON)'
                )
    if adapter_method == "qlora" and zero["stage"] == 3:
        raise ConfigError(
            f"{path}: model.adapter.method=qlora cannot run under ZeRO-3 (4-bit weights are placed "
            "with a device_map, which zero.Init partitioning conflicts with); use ZeRO-0/1/2 "
            "(ds_configs/zero2.json) or DDP"
        )
    if zero["stage"] == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        # Without it accelerate cannot gather the sharded weights and the saved model is empty.
        raise ConfigError(
            f"{path}: ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true"
        )
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if zero.get(key) == "auto":
            raise ConfigError(
                f"{path}: zero_optimization.{key} is 'auto', which accelerate can only fill from "
                "model.config.hidden_size; seqrec models need an explicit number"
            )
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(
            f"{path}: remove the optimizer/scheduler sections; seqrec builds AdamW with parameter "
            "groups and the train.scheduler schedule itself"
        )
    return ds


def _skip_deepspeed_shm_build() -> None:
    """Stop DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce op.

    The op serves only inference tensor parallelism (`inference_all_reduce`), never training,
    yet building it costs about a minute of C++ compilation on the first CPU run.
    """
    import importlib

    try:
        # importlib, not `import ... as`: the package `deepspeed.comm` has an attribute `torch`
        # (the torch library) that shadows its submodule of the same name.
        module = importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        return
    module.build_shm_op = lambda: None  # type: ignore[attr-defined]


def _single_process_env() -> None:
    """The environment a launcher would give a world of one process (plain `python train.py`)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """The one Accelerator of a run: processes, device, precision, DeepSpeed, trackers.

    Create it before building the model: under ZeRO-3 accelerate enables `deepspeed.zero.Init`,
    so a `from_pretrained` backbone is partitioned while it loads instead of first materializing
    on every rank.
    """
    train = cfg.train
    gpu = has_gpu()
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed's first get_accelerator()
    from accelerate.accelerator import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        DeepSpeedPlugin,
        DistributedDataParallelKwargs,
        InitProcessGroupKwargs,
        ProjectConfiguration,
    )

    mixed_precision = resolve_mixed_precision(train.mixed_precision)
    ds_path = deepspeed_config_path(train)
    plugin = None
    if ds_path is not None:
        if not gpu:
            _skip_deepspeed_shm_build()
        ds_config = load_deepspeed_config(
            ds_path,
            train,
            mixed_precision,
            cfg.model.adapter.method if train.model == "seqrec" else None,
        )
        check_run_config(cfg, gpu, deepspeed=True)  # after the JSON's checks (QLoRA + ZeRO-3 names it)
        plugin = DeepSpeedPlugin(hf_ds_config=ds_config)
        log.info("DeepSpeed ZeRO-%s from %s", ds_config["zero_optimization"]["stage"], ds_path)
    else:
        check_run_config(cfg, gpu)
    # Everything above runs before any process group exists: a bad setting is one line, exit 2.
    if plugin is not None and "LOCAL_RANK" not in os.environ:
        _single_process_env()  # accelerate initializes DeepSpeed's comm only under a launcher
    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=train.find_unused_parameters)]
    if not gpu and "LOCAL_RANK" in os.environ:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))

    log_with = None if train.tracker == "none" else train.tracker
    if log_with == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "train.tracker=wandb needs `pip install wandb` (or use tensorboard / none)"
            ) from e

    return Accelerator(
        # DeepSpeed on CPU must not take accelerate's cpu=True path (that path ignores DeepSpeed).
        cpu=not gpu and plugin is None,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=train.grad_accum,
        deepspeed_plugin=plugin,
        kwargs_handlers=handlers,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=train.output_dir, logging_dir=str(Path(train.output_dir) / "logs")
        ),
        # The loop steps the scheduler once per optimizer step itself; accelerate's default
        # steps it num_processes times per step, which assumes a schedule sized for one process.
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )


def control_group(accelerator: Accelerator) -> torch.distributed.ProcessGroup | None:
    """A gloo process group for small host-side decisions (stop flags), or None on one process.

    Agreeing on a CPU tensor over gloo does not wait for queued GPU work, so the per-step
    stop check costs no device synchronisation. On CPU runs the default group already is gloo.
    Every rank must call this (creating a group is collective).
    """
    import torch.distributed as dist

    if accelerator.num_processes == 1 or not dist.is_initialized():
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


def locate_config_file(path: Path) -> Path:
    """A relative DeepSpeed JSON path as written in train/accelerate/*.yaml (ds_configs/...): from
    the working directory when it is there, else from the project root (the folder holding the
    seqrec package and ds_configs/), so a launch works from any directory."""
    if path.is_absolute() or path.is_file():
        return path
    root_relative = Path(__file__).resolve().parents[2] / path
    return root_relative if root_relative.is_file() else path
