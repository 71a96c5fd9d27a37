"""Training: the accelerate loop, DeepSpeed ZeRO, resumable checkpoints, preemption, entry point.

    distributed.py   make_accelerator(cfg): processes, device, precision, DeepSpeed JSON, trackers
    loop.py          Trainer(...).train() -> TrainResult, generic over models
    checkpoint.py    atomic, verified, resumable checkpoints (`--resume auto`)
    preemption.py    SIGTERM / SIGUSR1 -> agreed stop -> checkpoint -> exit 143
    sampler.py       the (seed, epoch) shuffle that makes mid-epoch resume exact
    trackers.py      metrics, TensorBoard / W&B, progress bar or log lines
    run.py           run_training(cfg): what `train/train.py` and `seqrec train` call

Imports are lazy so `import seqrec.training` (the CLI does it) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seqrec.training.loop import Trainer, TrainResult
    from seqrec.training.run import run_training

__all__ = ["TrainResult", "Trainer", "run_training"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "TrainResult"):
        from seqrec.training import loop

        return getattr(loop, name)
    if name == "run_training":
        from seqrec.training.run import run_training

        return run_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
