"""The training loop, generic over models: accelerate (+ DeepSpeed ZeRO), resumable, preemptible.

What a model must offer (seqrec, SASRec, test models):

    forward(batch) -> output with `.loss` (scalar tensor) and optionally `.metrics`
                      (dict; `tokens` / `nonpad_tokens` feed tokens/s and the non-pad share,
                      `samples` overrides the batch size read from the batch)
    on_step_end(step)   optional, called on every rank after each optimizer step
                        (e.g. refresh an item-embedding cache on a schedule)
    on_resume(step)     optional, called on every rank after a checkpoint was loaded
                        (rebuild anything derived from the weights)
    checkpoint_tensors() -> dict[str, Tensor]
                        optional: training state outside the state dict (the same on every
                        rank), saved with each checkpoint by rank 0; e.g. an item-embedding cache
                        built from older weights than the checkpoint's, which a resumed run
                        could not rebuild
    load_checkpoint_tensors(tensors)
                        optional, called on every rank after a checkpoint was loaded (before
                        on_resume) with what checkpoint_tensors returned when it was saved

Under ZeRO-3 every rank must run the same forward calls (parameters are gathered collectively),
and a model should reach parameters through submodule calls, not by reading `.weight` of a
module it did not call.

One optimizer step:

    for each micro-batch:  forward -> backward (accumulate)      [accelerator.accumulate]
    at the boundary:       clip -> AdamW step -> LR step -> zero  [DeepSpeed: inside backward]
                           hooks -> log every log_every -> agree on stop -> validate ->
                           checkpoint every checkpoint_every

Loss and token counts stay on the device; `.item()`-like transfers happen only at log steps.
The one per-step collective is the stop agreement: one integer over gloo on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seqrec.config import ConfigError, RunConfig, save_config
from seqrec.data.schema import atomic_directory
from seqrec.training.checkpoint import (
    TrainerState,
    load_checkpoint,
    load_extra_tensors,
    resolve_resume,
    save_checkpoint,
    skip_frozen_parameters,
)
from seqrec.training.distributed import control_group, loader_settings, make_accelerator
from seqrec.training.preemption import PREEMPTED_EXIT_CODE, STOP_SIGNAL, STOP_TIME_BUDGET, StopFlag
from seqrec.training.sampler import EpochShuffleSampler, RankOwnedEpochSampler
from seqrec.training.trackers import Progress, StepMeter, batch_size_of, init_trackers, peak_memory_mb

if TYPE_CHECKING:
    from accelerate.accelerator import Accelerator

log = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module, "Accelerator"], Mapping[str, float]]
"""(unwrapped model, accelerator) -> validation metrics; runs on every rank, returns the same numbers."""
SaveModelFn = Callable[[nn.Module, Path, "dict[str, torch.Tensor] | None"], None]
"""(unwrapped model, empty folder, full state dict) -> writes the model; called on the main process."""
StepHook = Callable[[TrainerState], None]
"""Called on every rank after each optimizer step (tests, custom schedules)."""

BEST_DIR = "best"
BEST_METRICS_FILE = "best_metrics.json"
VALID_HISTORY_FILE = "valid_history.jsonl"


@dataclass
class TrainResult:
    global_step: int
    epoch: int
    stop_reason: str  # completed | max_steps | early_stopping | max_minutes | preempted
    exit_code: int  # 0, or PREEMPTED_EXIT_CODE when the run must be resumed
    best_metric: float | None
    best_step: int
    best_dir: Path | None
    last_checkpoint: Path | None
    resumed_from: Path | None
    train_seconds: float
    last_eval: dict[str, float] = field(default_factory=dict)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights (1-D tensors)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class Trainer:
    """Trains `model` on `train_dataset`; see the module docstring for what the model provides.

    Pass `accelerator` when the model was built after it (ZeRO-3 partitions large backbones while
    they load); otherwise one is made from `cfg`.
    """

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        train_dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None,
        evaluate_fn: EvaluateFn | None,
        save_model_fn: SaveModelFn,
        param_groups: list[dict[str, Any]] | None = None,
        accelerator: Accelerator | None = None,
        step_hooks: Sequence[StepHook] = (),
    ):
        self.cfg = cfg
        self.tc = cfg.train
        self.accelerator = accelerator or make_accelerator(cfg)
        self.evaluate_fn = evaluate_fn
        self.save_model_fn = save_model_fn
        self.step_hooks = list(step_hooks)
        self.output_dir = Path(self.tc.output_dir)
        if len(train_dataset) == 0:  # type: ignore[arg-type]
            raise ConfigError("the training set is empty (no user has enough training events)")
        self.train_dataset = train_dataset
        self._build(model, collate_fn, param_groups)

    # ---- setup ----------------------------------------------------------------------------------
    def _build(
        self,
        model: nn.Module,
        collate_fn: Callable[[list[Any]], Any] | None,
        groups: list[dict[str, Any]] | None,
    ) -> None:
        from transformers import get_scheduler

        acc, tc = self.accelerator, self.tc
        self.sampler = self._make_sampler()
        workers, pin = loader_settings(tc, acc.device.type)
        loader = DataLoader(
            self.train_dataset,
            batch_size=tc.batch_size,
            sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=workers,
            pin_memory=pin,
            # Each new iterator draws a worker seed; from its own generator, not the global RNG,
            # so a resumed run (whose RNG state was restored) draws dropout masks unchanged.
            generator=torch.Generator().manual_seed(tc.seed),
        )
        # Prepared alone first: its per-rank length sizes the LR schedule.
        self.loader = acc.prepare(loader)
        self.steps_per_epoch = math.ceil(len(self.loader) / tc.grad_accum)
        total = tc.epochs * self.steps_per_epoch
        self.total_steps = min(total, tc.max_steps) if tc.max_steps > 0 else total
        if self.total_steps < 1:
            raise ConfigError("nothing to train: train.epochs and train.max_steps give 0 optimizer steps")

        groups = groups if groups is not None else default_param_groups(model, tc.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        try:
            scheduler = get_scheduler(
                tc.scheduler,
                optimizer,
                num_warmup_steps=math.ceil(tc.warmup_ratio * self.total_steps),
                num_training_steps=self.total_steps,
            )
        except ValueError as e:
            raise ConfigError(f"train.scheduler={tc.scheduler!r}: {e}") from e
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        skip_frozen_parameters(acc)
        self.unwrapped = acc.unwrap_model(self.model)
        self.is_deepspeed = acc.distributed_type.value == "DEEPSPEED"

    def _make_sampler(self) -> EpochShuffleSampler | RankOwnedEpochSampler:
        """One global shuffle that accelerate deals out; or, with several processes and a dataset
        that names each example's owning rank (``owner_ranks(world)``), each rank's own examples
        (seqrec/training/sampler.py), so a rank needs only its own users' data."""
        acc, tc = self.accelerator, self.tc
        owner_ranks = getattr(self.train_dataset, "owner_ranks", None)
        if acc.num_processes > 1 and callable(owner_ranks):
            try:
                return RankOwnedEpochSampler(
                    owner_ranks(acc.num_processes), acc.num_processes, tc.batch_size, tc.seed
                )
            except ValueError as e:
                raise ConfigError(str(e)) from e
        return EpochShuffleSampler(len(self.train_dataset), tc.seed)  # type: ignore[arg-type]

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        from accelerate.utils import set_seed

        acc, tc = self.accelerator, self.tc
        set_seed(tc.seed)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.output_dir / "config.yaml")
        resumed_from = resolve_resume(acc, self.output_dir, tc.resume)
        state = TrainerState(world_size=acc.num_processes)
        if resumed_from is not None:
            state = load_checkpoint(acc, resumed_from)
            load_tensors = getattr(self.unwrapped, "load_checkpoint_tensors", None)
            if callable(load_tensors):
                load_tensors(load_extra_tensors(resumed_from))
            on_resume = getattr(self.unwrapped, "on_resume", None)
            if callable(on_resume):
                on_resume(state.global_step)
        self.state = state
        self.last_saved_step = state.global_step if resumed_from else -1
        self.last_checkpoint: Path | None = resumed_from
        self.last_eval: dict[str, float] = {}
        if state.finished and self._budget_raised(state):
            log.info(
                "the run stopped at its time budget (train.max_minutes) after %.1f min; continuing with "
                "train.max_minutes=%g",
                state.train_seconds / 60,
                tc.max_minutes,
            )
            state.finished, state.stop_reason = False, ""
        if state.finished:
            log.info("the run in %s already finished (%s); nothing to do", self.output_dir, state.stop_reason)
            return self._result(state, resumed_from)

        init_trackers(acc, self.cfg)
        with StopFlag(control_group(acc)) as stop:
            reason = self._run(state, stop)
            self._finish(state, reason)
        # Not accelerator.end_training(): it also destroys the process group, which the caller
        # may still need (test evaluation, export). run_training ends it last.
        for tracker in acc.trackers:
            tracker.finish()
        acc.trackers.clear()
        result = self._result(state, resumed_from)
        self._summary(result)
        return result

    def _budget_raised(self, state: TrainerState) -> bool:
        """A run stopped by train.max_minutes, resumed with a larger budget and steps left (a
        resume without a budget, max_minutes=0, leaves the finished run as it is)."""
        budget = self.tc.max_minutes
        more_time = budget > 0 and state.train_seconds < budget * 60
        return state.stop_reason == "max_minutes" and more_time and state.global_step < self.total_steps

    def _run(self, state: TrainerState, stop: StopFlag) -> str:
        """Train until a stop reason; returns it. Checkpoints along the way, not at the end."""
        acc, tc = self.accelerator, self.tc
        self.model.train()
        self.meter = StepMeter(acc)
        self.progress = Progress(
            self.total_steps, state.global_step, acc.is_main_process, peak_memory_mb(acc.device)[1]
        )
        self.clock = (time.perf_counter(), state.train_seconds)
        log.info(
            "training %d steps (%d per epoch, %d processes, batch %d x accum %d per process)",
            self.total_steps,
            self.steps_per_epoch,
            acc.num_processes,
            tc.batch_size,
            tc.grad_accum,
        )
        reason = ""
        try:
            while not reason:
                reason = self._run_epoch(state, stop)
        finally:
            self.progress.close()
        return reason

    def _run_epoch(self, state: TrainerState, stop: StopFlag) -> str:
        acc, tc = self.accelerator, self.tc
        self.loader.set_epoch(state.epoch)  # sets the sampler's epoch too
        set_epoch = getattr(self.train_dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(state.epoch)  # e.g. random training cuts per (seed, epoch)
        batches = self.loader
        if state.batch_in_epoch:  # mid-epoch resume: same order, skip what was consumed
            batches = acc.skip_first_batches(self.loader, state.batch_in_epoch)
        for batch in batches:
            with acc.accumulate(self.model):
                out = self.model(batch)
                acc.backward(out.loss)
                metrics = getattr(out, "metrics", None)
                samples = (
                    int(metrics["samples"]) if metrics and "samples" in metrics else batch_size_of(batch)
                )
                self.meter.add(out.loss, metrics, samples)
                state.batch_in_epoch += 1
                state.samples_seen += samples * acc.num_processes
                grad_norm = self._clip() if acc.sync_gradients else None
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            if acc.sync_gradients:
                reason = self._after_step(state, stop, grad_norm)
                if reason:
                    return reason
        state.epoch += 1
        state.batch_in_epoch = 0
        reason = ""
        if tc.eval_every == 0:
            reason = self._validate(state)
        if not reason and state.global_step >= self.total_steps:
            reason = self._limit_reason()
        if not reason and tc.checkpoint_every == 0:
            self._checkpoint(state)
        return reason

    def _clip(self) -> torch.Tensor | float | None:
        """Clip (outside DeepSpeed) and return the gradient norm when it will be logged."""
        tc = self.tc
        log_next = (self.state.global_step + 1) % tc.log_every == 0
        if self.is_deepspeed:  # DeepSpeed clipped inside backward (JSON gradient_clipping)
            return (
                self.accelerator.clip_grad_norm_(self.model.parameters(), tc.max_grad_norm)
                if log_next
                else None
            )
        if tc.max_grad_norm > 0:
            return self.accelerator.clip_grad_norm_(self.model.parameters(), tc.max_grad_norm)
        return self.accelerator.clip_grad_norm_(self.model.parameters(), math.inf) if log_next else None

    def _after_step(self, state: TrainerState, stop: StopFlag, grad_norm: torch.Tensor | float | None) -> str:
        """Everything at an optimizer-step boundary; returns a stop reason or ''."""
        tc = self.tc
        state.global_step += 1
        state.train_seconds = self.clock[1] + time.perf_counter() - self.clock[0]
        on_step_end = getattr(self.unwrapped, "on_step_end", None)
        if callable(on_step_end):
            on_step_end(state.global_step)
        for hook in self.step_hooks:
            hook(state)
        self.progress.update()
        if state.global_step % tc.log_every == 0:
            self._log(state, grad_norm)

        budget_spent = tc.max_minutes > 0 and state.train_seconds >= tc.max_minutes * 60
        agreed = stop.agree(budget_spent)
        if agreed == STOP_SIGNAL:
            return "preempted"
        reason = ""
        if tc.eval_every > 0 and state.global_step % tc.eval_every == 0:
            reason = self._validate(state)
        if not reason and agreed == STOP_TIME_BUDGET:
            reason = "max_minutes"
        done = state.global_step >= self.total_steps
        if not reason and done:
            # The epoch's last step ends the run only after the epoch-end validation.
            at_epoch_end = state.batch_in_epoch >= len(self.loader)
            if not (at_epoch_end and tc.eval_every == 0):
                reason = self._limit_reason()
        if not (reason or done) and tc.checkpoint_every > 0 and state.global_step % tc.checkpoint_every == 0:
            self._checkpoint(state)
        return reason

    def _limit_reason(self) -> str:
        capped = self.tc.max_steps > 0 and self.total_steps < self.tc.epochs * self.steps_per_epoch
        return "max_steps" if capped else "completed"

    # ---- logging, validation, saving --------------------------------------------------------------
    def _log(self, state: TrainerState, grad_norm: torch.Tensor | float | None) -> None:
        metrics = self.meter.report()
        lrs = self.scheduler.get_last_lr()
        metrics["lr"] = float(lrs[0])
        names = [g.get("name") for g in self.optimizer.param_groups]
        if len(set(lrs)) > 1:
            for i, (name, lr) in enumerate(zip(names, lrs)):
                metrics[f"lr/{name or i}"] = float(lr)
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        metrics["epoch"] = state.epoch + state.batch_in_epoch / max(len(self.loader), 1)
        self.accelerator.log({f"train/{k}": v for k, v in metrics.items()}, step=state.global_step)
        self.progress.show(state.global_step, state.epoch, metrics)

    def _validate(self, state: TrainerState) -> str:
        """Validate, keep the best model, count patience; returns 'early_stopping' or ''."""
        if self.evaluate_fn is None:
            return ""
        from accelerate.utils import broadcast_object_list

        acc, tc = self.accelerator, self.tc
        self.model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.evaluate_fn(self.unwrapped, acc).items()}
        self.model.train()
        if tc.best_metric not in metrics:
            raise ConfigError(
                f"train.best_metric={tc.best_metric!r} is not among the validation metrics {sorted(metrics)}"
            )
        value = metrics[tc.best_metric]
        # Rank 0 decides, so every rank takes the same branch (saving below is collective).
        decision = [state.best_metric is None or value > state.best_metric, value]
        if acc.num_processes > 1:
            broadcast_object_list(decision, from_process=0)
        improved, value = decision
        if improved:
            state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
            self._save_best(state, metrics)
        else:
            state.bad_evals += 1
        self.last_eval = metrics
        acc.log({f"valid/{k}": v for k, v in metrics.items()}, step=state.global_step)
        if acc.is_main_process:
            # One line per validation, for plots of validation quality over training.
            with open(self.output_dir / VALID_HISTORY_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **metrics}) + "\n")
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            log.info(
                "validation at step %d: %s (best %s %.4f at step %d)",
                state.global_step,
                shown,
                tc.best_metric,
                state.best_metric,
                state.best_step,
            )
        self.meter.restart_clock()
        if tc.patience > 0 and state.bad_evals >= tc.patience:
            log.info("early stopping: %d validations without improvement", state.bad_evals)
            return "early_stopping"
        return ""

    def _save_best(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        """Write the model to <output_dir>/best atomically. Collective (ZeRO-3 gathers weights)."""
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.model)  # the full weights, gathered under ZeRO-3
        if acc.is_main_process:
            with atomic_directory(self.output_dir / BEST_DIR, overwrite=True) as tmp:
                self.save_model_fn(self.unwrapped, tmp, state_dict)
            record = {"step": state.global_step, "epoch": state.epoch, "metrics": dict(metrics)}
            tmp_file = self.output_dir / f".{BEST_METRICS_FILE}.tmp"
            tmp_file.write_text(json.dumps(record, indent=1), encoding="utf-8")
            os.replace(tmp_file, self.output_dir / BEST_METRICS_FILE)
        acc.wait_for_everyone()
        self.meter.restart_clock()

    def _checkpoint(self, state: TrainerState) -> None:
        if state.global_step == self.last_saved_step:
            return
        tensors = getattr(self.unwrapped, "checkpoint_tensors", None)
        extra = tensors() if callable(tensors) and self.accelerator.is_main_process else None
        self.last_checkpoint = save_checkpoint(
            self.accelerator, self.output_dir, state, self.cfg, self.tc.keep_last, extra
        )
        self.last_saved_step = state.global_step
        self.meter.restart_clock()

    def _finish(self, state: TrainerState, reason: str) -> None:
        """Final validation (unless preempted), best model without validation, last checkpoint."""
        if reason != "preempted":
            if (
                self.evaluate_fn is not None
                and reason not in ("early_stopping",)
                and not self._validated_now(state)
            ):
                self._validate(state)
            if self.evaluate_fn is None:
                self._save_best(state, {})
                state.best_step = state.global_step
            state.finished = True
        state.stop_reason = reason
        if state.global_step > self.last_saved_step or state.finished:
            self.last_saved_step = -1  # the final state differs (finished flag) even at a saved step
            self._checkpoint(state)

    def _validated_now(self, state: TrainerState) -> bool:
        tc = self.tc
        if tc.eval_every > 0:
            return state.global_step % tc.eval_every == 0
        return state.batch_in_epoch == 0  # the epoch just ended and was validated

    def _result(self, state: TrainerState, resumed_from: Path | None) -> TrainResult:
        best = self.output_dir / BEST_DIR
        return TrainResult(
            global_step=state.global_step,
            epoch=state.epoch,
            stop_reason=state.stop_reason,
            exit_code=PREEMPTED_EXIT_CODE if state.stop_reason == "preempted" else 0,
            best_metric=state.best_metric,
            best_step=state.best_step,
            best_dir=best if best.is_dir() else None,
            last_checkpoint=self.last_checkpoint,
            resumed_from=resumed_from,
            train_seconds=state.train_seconds,
            last_eval=dict(self.last_eval),
        )

    def _summary(self, r: TrainResult) -> None:
        if not self.accelerator.is_main_process:
            return
        best = (
            f"best {self.tc.best_metric} {r.best_metric:.4f} at step {r.best_step}"
            if r.best_metric is not None
            else "no validation"
        )
        log.info(
            "training %s after %d steps (%d epochs, %.1f min): %s; best model %s; last checkpoint %s",
            r.stop_reason,
            r.global_step,
            r.epoch,
            r.train_seconds / 60,
            best,
            r.best_dir,
            r.last_checkpoint,
        )
        if r.exit_code == PREEMPTED_EXIT_CODE:
            log.info("resume with --resume auto (exit code %d)", r.exit_code)
