"""What the loop reports: running metrics, experiment trackers, progress bar or log lines.

Metrics accumulate on the device between log steps and cross to the host once per log interval
(one gather of a few numbers), so logging adds no per-step synchronisation.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seqrec.config import RunConfig, to_dict

if TYPE_CHECKING:
    from accelerate.accelerator import Accelerator
    from tqdm import tqdm

log = logging.getLogger(__name__)


# ---- trackers ------------------------------------------------------------------------------


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Dotted scalar keys, as TensorBoard hparams want them (lists and None become strings)."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, ensure_ascii=False)
    return flat


def init_trackers(accelerator: Accelerator, cfg: RunConfig) -> None:
    """TensorBoard logs go to <output_dir>/logs/seqrec; W&B runs are named after the output dir."""
    if cfg.train.tracker == "none":
        return
    run_name = Path(cfg.train.output_dir).resolve().name
    accelerator.init_trackers(
        "seqrec", config=flatten_config(to_dict(cfg)), init_kwargs={"wandb": {"name": run_name}}
    )


# ---- metrics -------------------------------------------------------------------------------


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak MB, what was measured): CUDA max allocated on a GPU, process peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"  # Linux: KiB


def batch_size_of(batch: Any) -> int:
    """Examples in a batch: `user_idx` when present, else the first tensor's first dimension."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        if "user_idx" in batch:
            return batch_size_of(batch["user_idx"])
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
                return batch_size_of(item)
    return 0


class StepMeter:
    """Sums of loss, samples and token counts since the last report, kept on the device.

    Models may put `tokens` (positions processed, padding included) and `nonpad_tokens` in
    their output's `metrics`; tokens/s counts the non-pad tokens, the real work.
    """

    _TOKEN_KEYS = ("tokens", "nonpad_tokens", "texts")  # texts: backbone inputs (windows + live items)

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.device = accelerator.device
        self.restart()

    def restart(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.tokens = torch.zeros(3, device=self.device)  # [tokens, nonpad_tokens, texts]
        self.micro_batches = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def restart_clock(self) -> None:
        """Exclude time spent elsewhere (validation, checkpoints) from the rates."""
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, metrics: Mapping[str, Any] | None, samples: int) -> None:
        self.loss_sum += loss.detach().float()
        self.micro_batches += 1
        self.samples += samples
        if metrics:
            for j, key in enumerate(self._TOKEN_KEYS):
                if key in metrics:
                    value = metrics[key]
                    self.tokens[j] += (
                        value.detach().float() if isinstance(value, torch.Tensor) else float(value)
                    )

    def report(self) -> dict[str, float]:
        """Totals over all ranks since the last report (collective: call on every rank)."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        mem, _ = peak_memory_mb(self.device)
        local = torch.stack(
            [
                self.loss_sum,
                torch.tensor(float(self.micro_batches), device=self.device),
                torch.tensor(float(self.samples), device=self.device),
                self.tokens[0],
                self.tokens[1],
                torch.tensor(mem, device=self.device),
                self.tokens[2],
            ]
        )
        rows = self.accelerator.gather(local.unsqueeze(0)).reshape(-1, local.numel()).cpu()  # [ranks, 7]
        loss_sum, micro, samples, tokens, nonpad = rows[:, :5].sum(0).tolist()
        out = {
            "loss": loss_sum / max(micro, 1.0),
            "samples_per_s": samples / elapsed,
            "peak_memory_mb": float(rows[:, 5].max()),
        }
        if tokens > 0:
            out["tokens_per_s"] = nonpad / elapsed
            out["nonpad_share"] = nonpad / tokens
        if float(rows[:, 6].sum()) > 0:
            out["texts_per_s"] = float(rows[:, 6].sum()) / elapsed
        self.restart()
        return out


# ---- progress ------------------------------------------------------------------------------


class Progress:
    """A tqdm bar on a terminal; one log line per report otherwise (SLURM logs, CI)."""

    def __init__(self, total: int, initial: int, enabled: bool, memory_kind: str):
        self.total = total
        self.enabled = enabled
        self.memory_kind = memory_kind
        self.bar: tqdm | None = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.4f}", lr=f"{metrics.get('lr', 0.0):.2e}", refresh=False
            )
            return
        parts = [f"step {step}/{self.total}", f"epoch {epoch}", f"loss {metrics['loss']:.4f}"]
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        if "grad_norm" in metrics:
            parts.append(f"grad {metrics['grad_norm']:.3g}")
        parts.append(f"{metrics['samples_per_s']:.1f} samples/s")
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:.0f} tok/s (nonpad {100 * metrics['nonpad_share']:.0f}%)")
        if "texts_per_s" in metrics:
            parts.append(f"{metrics['texts_per_s']:.1f} texts/s")
        parts.append(f"peak mem {metrics['peak_memory_mb']:.0f} MB ({self.memory_kind})")
        log.info(" | ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
