"""Training-loop speed and ZeRO memory: issue 4's "Measure" section, on this machine's CPUs.

Two suites (``--suite overhead zero``, both by default):

* overhead: tokens/s of the full seqrec loop (``run_training`` -> ``Trainer``, joint stage,
  ``minilm-l6`` + LoRA, text item tower, synthetic data) against a bare loop over the SAME
  collated batches with the SAME model object: ``model(batch).loss.backward()``, plain
  ``torch.optim.AdamW`` over the same parameter groups, ``zero_grad`` -- no accelerate, no
  clipping, no scheduler, no logging, no stop agreement. Tokens/s is the loop's own definition
  (seqrec/training/trackers.py: non-pad tokens the backbone processed, from the model's
  ``metrics["nonpad_tokens"]``, per second of wall time). The loop runs with validation and
  checkpoints pushed past the end (``train.eval_every`` / ``train.checkpoint_every`` = 10**9,
  ``train.tracker=none``), and its span is timed from the end of optimizer step ``--warmup`` to
  the end of the last step (a step hook), so the final validation, best-model save and checkpoint
  that run_training does after the last step fall outside it; the bare loop is timed over the same
  step range. Rounds alternate loop, bare, loop, bare, ... in one process (load drift on a shared
  machine hits both); the ratio is median(bare seconds) / median(loop seconds) (target >= 0.9).
  The loop's own logged ``train/tokens_per_s`` (its StepMeter reports) is recorded beside it.
* zero: ``accelerate launch --num_processes 2 --config_file train/accelerate/zero{0,2,3}.yaml``
  of train/train.py's ``main`` (DS_ACCELERATOR=cpu, gloo) on a BERT backbone built offline
  (tests/tiny_models.py's tokenizer, a wider config), fully fine-tuned (``model.adapter.method=
  full``) so there is something to shard. Each rank reports, from the live DeepSpeed engine,
  the bytes it holds of parameters (ZeRO-3: its ``ds_tensor`` shard; else the full tensor),
  gradients (just before the optimizer step: ``.grad`` tensors and ZeRO's partition buffers),
  the fp32 master partition and the Adam state, plus its peak RSS. The worker is this file
  (``--zero-worker``), which wraps run_training's Trainer with a measuring step hook and then
  calls train/train.py's ``main`` unchanged.

    .venv/bin/python benchmarks/bench_training.py     # writes benchmarks/results/training.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_training")

MIB = 2**20
NEVER = 10**9  # eval_every / checkpoint_every past the end of the run


# ---- shared helpers -------------------------------------------------------------------------------


def machine(threads: int) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def make_synth(out: Path, users: int, items: int, seed: int) -> Path:
    from seqrec.data.synth import SynthConfig, synth

    synth(out, SynthConfig(n_users=users, n_items=items, seed=seed), progress=False)
    return out


@contextlib.contextmanager
def patched_trainer(on_build: Any) -> Iterator[None]:
    """run_training builds `seqrec.training.loop.Trainer`; hand each new one to `on_build` first
    (to add step hooks or wrap the engine), so the measured run is run_training itself."""
    import seqrec.training.loop as loop

    real = loop.Trainer

    def build(*args: Any, **kwargs: Any) -> Any:
        trainer = real(*args, **kwargs)
        on_build(trainer)
        return trainer

    with mock.patch.object(loop, "Trainer", build):
        yield


# ---- suite 1: trainer overhead ------------------------------------------------------------------


def overhead_config(data_dir: Path, out: Path, args: argparse.Namespace) -> Any:
    from seqrec.training.run import resolve_config

    overrides = [
        "train.model=seqrec",
        "train.stage=joint",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}",
        "train.epochs=1000",
        f"train.eval_every={NEVER}",
        f"train.checkpoint_every={NEVER}",
        f"train.log_every={args.log_every}",
        "train.eval_max_users=8",  # the final validation (outside the timed span) stays short
        "train.tracker=none",
        "train.patience=0",
        f"model.backbone.name={args.backbone}",
        "model.adapter.method=lora",
        "model.items.mode=text",
        "model.items.cache_refresh_steps=0",  # a refresh is model work; keep it out of both paths
        f"model.encoder.micro_batch_size={args.micro_batch}",
        "window.size=1",
        f"window.max_windows={args.max_windows}",
        "text.item_fields=[title,category]",
        "text.time=gap",
        "text.max_window_tokens=64",
        "text.max_item_tokens=24",
    ]
    return resolve_config(None, data=str(data_dir), output=str(out), overrides=overrides)


class Recorder:
    """Hooks on the model (forward) and the loop (step end): batches, token counts, step times."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.nonpad: list[int] = []
        self.step_times: list[float] = []
        self.logged: list[dict[str, float]] = []
        self.keep_batches = False

    def attach(self, model: torch.nn.Module) -> None:
        def pre(_: Any, inputs: tuple[Any, ...]) -> None:
            if self.keep_batches:
                self.batches.append(inputs[0])

        def post(_: Any, __: Any, out: Any) -> None:
            self.nonpad.append(int(out.metrics["nonpad_tokens"]))

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)

    def step_hook(self, state: Any) -> None:
        self.step_times.append(time.perf_counter())


def timed_span(step_times: list[float], nonpad: list[int], warmup: int) -> tuple[float, int]:
    """(seconds, non-pad tokens) from the end of step `warmup` to the end of the last step."""
    return step_times[-1] - step_times[warmup - 1], sum(nonpad[warmup:])


def loop_round(cfg: Any, rec: Recorder, warmup: int, keep_batches: bool) -> tuple[float, int, Any]:
    """One run_training call; returns (seconds, tokens) of the timed span and the trained model."""
    from seqrec.training.run import run_training
    from seqrec.training.trackers import StepMeter

    rec.nonpad, rec.step_times, rec.keep_batches = [], [], keep_batches
    built: list[Any] = []

    def on_build(trainer: Any) -> None:
        trainer.step_hooks.append(rec.step_hook)
        rec.attach(trainer.unwrapped)
        built.append(trainer)

    real_report = StepMeter.report

    def report(meter: StepMeter) -> dict[str, float]:
        out = real_report(meter)
        rec.logged.append(out)
        return out

    with patched_trainer(on_build), mock.patch.object(StepMeter, "report", report):
        result = run_training(cfg, end_process_group=False, overwrite=True)
    assert result.global_step == cfg.train.max_steps, result
    seconds, tokens = timed_span(rec.step_times, rec.nonpad, warmup)
    return seconds, tokens, built[0].unwrapped


def bare_round(model: Any, batches: list[Any], train_cfg: Any, warmup: int) -> tuple[float, int]:
    """The same batches through the same model with a plain PyTorch loop."""
    nonpad: list[int] = []
    times: list[float] = []
    optimizer = torch.optim.AdamW(
        model.param_groups(train_cfg), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
    )
    model.train()
    for batch in batches:
        out = model(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        nonpad.append(int(out.metrics["nonpad_tokens"]))
        times.append(time.perf_counter())
    return timed_span(times, nonpad, warmup)


def run_overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data_dir = make_synth(work / "synth", args.users, args.items, args.seed)
    rec = Recorder()
    loop_s: list[float] = []
    bare_s: list[float] = []
    tokens: set[int] = set()
    batches: list[Any] = []
    for r in range(args.rounds):
        cfg = overhead_config(data_dir, work / f"run-{r}", args)
        seconds, n_tok, model = loop_round(cfg, rec, args.warmup, keep_batches=(r == 0))
        if r == 0:
            batches = list(rec.batches)
            rec.keep_batches = False
        loop_s.append(seconds)
        tokens.add(n_tok)
        # The recorder's forward hook stays on the model: the bare loop pays for it too.
        rec.nonpad = []
        b_seconds, b_tok = bare_round(model, batches, cfg.train, args.warmup)
        bare_s.append(b_seconds)
        tokens.add(b_tok)
        log.info(
            "overhead round %d/%d: loop %.2fs, bare %.2fs (%d tokens), load %s",
            r + 1,
            args.rounds,
            seconds,
            b_seconds,
            n_tok,
            os.getloadavg()[0],
        )
        del model
    if len(tokens) != 1:
        raise RuntimeError(f"the two paths processed different token counts: {sorted(tokens)}")
    n_tokens = tokens.pop()
    loop_med, bare_med = statistics.median(loop_s), statistics.median(bare_s)
    timed_steps = args.steps - args.warmup
    logged = [x["tokens_per_s"] for x in rec.logged if "tokens_per_s" in x]
    return {
        "backbone": args.backbone,
        "data": f"synthetic, {args.users} users / {args.items} items, seed {args.seed}",
        "batch_size": args.batch_size,
        "max_windows": args.max_windows,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "timed_steps": timed_steps,
        "timed_nonpad_tokens": n_tokens,
        "rounds": args.rounds,
        "loop_seconds": loop_s,
        "bare_seconds": bare_s,
        "loop_tokens_per_s": n_tokens / loop_med,
        "bare_tokens_per_s": n_tokens / bare_med,
        "loop_steps_per_s": timed_steps / loop_med,
        "bare_steps_per_s": timed_steps / bare_med,
        "ratio": bare_med / loop_med,
        "loop_logged_tokens_per_s": logged,
        "log_every": args.log_every,
    }


# ---- suite 2: ZeRO memory (2 processes) ------------------------------------------------------------


def build_bert_backbone(out: Path, hidden: int, layers: int) -> Path:
    """A randomly initialized BERT of the given width/depth with the tests' offline tokenizer."""
    from transformers import BertConfig, BertModel

    from tests.tiny_models import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer("bert", out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(config).save_pretrained(str(out))
    return out


def _tensor_bytes(tensors: Any) -> int:
    """Bytes of distinct storages among `tensors` (views of one buffer count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _tensors_in(x: Any) -> list[torch.Tensor]:
    """Tensors inside nested dicts/lists/tuples. A tensor is a leaf: iterating it would split a
    flat ZeRO buffer into millions of 0-d tensors (ZeRO-3 keeps its bucket buffer as one tensor,
    ZeRO-2 as a list; iterating the former once ran this benchmark out of memory)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors_in(item)]
    return []


def _grad_tensors(engine: Any) -> list[torch.Tensor]:
    """Every gradient buffer the rank holds: .grad of model parameters and ZeRO's own buffers."""
    out = [p.grad for p in engine.module.parameters() if p.grad is not None]
    opt = engine.optimizer
    for name in ("grads_in_partition", "grad_partitions_flat_buffer"):
        t = getattr(opt, name, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    out.extend(_tensors_in(getattr(opt, "averaged_gradients", None)))
    for bucket in (getattr(opt, "ipg_buckets", None) or {}).values():  # ZeRO-2/3 reduce buckets
        out.extend(_tensors_in(getattr(bucket, "buffer", None)))
    inner = getattr(opt, "optimizer", opt)
    out.extend(p.grad for g in inner.param_groups for p in g["params"] if p.grad is not None)
    return out


def rank_memory(engine: Any, grad_bytes_before_step: int) -> dict[str, Any]:
    """What this rank holds, by kind, after an optimizer step (gradients: just before it)."""
    params = list(engine.module.parameters())
    # ZeRO-3: every parameter has its shard in `ds_tensor`; one kept whole (under the persistence
    # threshold) or still gathered also holds its full `.data`, counted as well.
    local = [getattr(p, "ds_tensor", p) for p in params]
    local += [p.data for p in params if hasattr(p, "ds_tensor") and p.numel() > 0]
    full_numel = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    trainable_full = sum(int(getattr(p, "ds_numel", p.numel())) for p in params if p.requires_grad)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    model_ptrs = {t.untyped_storage().data_ptr() for t in local if t.numel()}
    opt_params = [p for g in inner.param_groups for p in g["params"]]
    master = [p for p in opt_params if p.numel() and p.untyped_storage().data_ptr() not in model_ptrs]
    states = [v for s in inner.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {
        "zero_stage": int(engine.zero_optimization_stage()),
        "param_numel_full": full_numel,
        "trainable_numel_full": trainable_full,
        "param_numel_local": sum(int(t.numel()) for t in local),  # storage elements this rank holds
        "param_bytes": _tensor_bytes(local),
        "grad_bytes": grad_bytes_before_step,
        "master_bytes": _tensor_bytes(master),
        "optimizer_state_bytes": _tensor_bytes(states),
        "optimizer_param_numel": sum(int(p.numel()) for p in opt_params),
        "partitioned_params": sum(1 for p in params if hasattr(p, "ds_tensor") and p.numel() == 0),
        "params": len(params),
    }


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def zero_worker(report_path: str, train_argv: list[str]) -> int:
    """One rank under `accelerate launch`: train/train.py's main with a measuring step hook."""
    rank = int(os.environ.get("RANK", "0"))
    measured: dict[str, Any] = {"rss_start": rss_bytes()}  # Python + torch imported, nothing else
    grads = {"bytes": 0}

    def on_build(trainer: Any) -> None:
        engine = trainer.model
        real_step = engine.step

        def step(*a: Any, **kw: Any) -> Any:  # accelerate calls engine.step() right after backward
            grads["bytes"] = max(grads["bytes"], _tensor_bytes(_grad_tensors(engine)))
            return real_step(*a, **kw)

        engine.step = step
        measured["rss_after_build"] = rss_bytes()

        def hook(state: Any) -> None:
            measured.update(rank_memory(engine, grads["bytes"]))
            measured["rss_at_step"] = rss_bytes()
            measured["global_step"] = state.global_step

        trainer.step_hooks.append(hook)

    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train" / "train.py")
    assert spec is not None and spec.loader is not None
    train_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_entry)
    with patched_trainer(on_build):
        code = int(train_entry.main(train_argv))
    measured["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured["rank"] = rank
    measured["exit_code"] = code
    Path(f"{report_path}.rank{rank}.json").write_text(json.dumps(measured))
    return code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(stage: int, report: Path, train_argv: list[str]) -> list[str]:
    return [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--num_processes",
        "2",
        "--config_file",
        f"train/accelerate/zero{stage}.yaml",
        "--main_process_port",
        str(_free_port()),
        str(Path(__file__).relative_to(ROOT)),
        "--zero-worker",
        str(report),
        "--",
        *train_argv,
    ]


def run_zero(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data_dir = make_synth(work / "synth-zero", args.zero_users, args.zero_items, args.seed)
    backbone = build_bert_backbone(work / "bert", args.zero_hidden, args.zero_layers)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PET_"))}
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS=str(args.threads),
        PYTHONPATH=str(ROOT),
        TOKENIZERS_PARALLELISM="false",
        SEQREC_CACHE=str(work / "cache"),
    )
    results = []
    for stage in args.zero_stages:
        out = work / f"zero{stage}"
        train_argv = [
            "--data",
            str(data_dir),
            "--output",
            str(out),
            "train.model=seqrec",
            "train.stage=joint",
            f"train.max_steps={args.zero_steps}",
            "train.epochs=1000",
            "train.batch_size=4",
            f"train.eval_every={NEVER}",
            f"train.checkpoint_every={NEVER}",
            "train.eval_max_users=8",
            "train.tracker=none",
            "train.log_every=1",
            f"model.backbone.name={backbone}",
            "model.adapter.method=full",
            "model.items.mode=text",
            "model.items.cache_refresh_steps=0",
            "window.size=1",
            "window.max_windows=4",
            "text.item_fields=[title,category]",
            "text.time=gap",
            "text.max_window_tokens=32",
            "text.max_item_tokens=16",
        ]
        report = work / f"zero{stage}-report"
        cmd = launch_command(stage, report, train_argv)
        log.info("ZeRO-%d: %s", stage, " ".join(cmd))
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.zero_timeout
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"ZeRO-{stage} launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        ranks = [json.loads(Path(f"{report}.rank{r}.json").read_text()) for r in range(2)]
        results.append({"stage": stage, "wall_seconds": wall, "ranks": ranks})
        log.info("ZeRO-%d done in %.0fs", stage, wall)
    return {
        "backbone": f"BERT hidden {args.zero_hidden}, {args.zero_layers} layers (random init, offline tokenizer)",
        "adapter": "full",
        "data": f"synthetic, {args.zero_users} users / {args.zero_items} items",
        "steps": args.zero_steps,
        "accelerate_command": "accelerate launch --num_processes 2 --config_file train/accelerate/zero{0,2,3}.yaml "
        "benchmarks/bench_training.py --zero-worker REPORT -- --data DIR --output DIR model.adapter.method=full ...",
        "stages": results,
    }


# ---- report -------------------------------------------------------------------------------------------


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    m = results["machine"]
    lines = [
        "# Training loop: overhead and ZeRO memory",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cpus']} CPU cores (shared), torch {m['torch']}, {m['threads']} intra-op thread(s), "
        f"load average at start {m['loadavg']}, at end {results['loadavg_end']}. Total runtime {results['seconds']:.0f} s.",
        "",
    ]
    ov = results.get("overhead")
    if ov:
        lines += [
            "## Trainer overhead",
            "",
            f"Joint stage, `{ov['backbone']}` + LoRA (r=8), text item tower, {ov['data']}, window size 1, "
            f"at most {ov['max_windows']} windows per user, batch {ov['batch_size']} users. "
            f"Each round: `run_training` for {ov['steps']} steps, then a bare loop over the same "
            f"{ov['steps']} collated batches with the same model object; timed over steps "
            f"{ov['warmup_steps'] + 1}-{ov['steps']} ({ov['timed_nonpad_tokens']} non-pad tokens, identical in both). "
            f"Validation and checkpoints: none inside the span (`train.eval_every` and `train.checkpoint_every` "
            f"= {NEVER}, tracker none; run_training's final validation and save come after the last step). "
            f"Median of {ov['rounds']} alternating rounds.",
            "",
            "| path | tokens/s (non-pad) | steps/s | seconds per round |",
            "|---|---|---|---|",
            f"| seqrec loop (run_training -> Trainer) | {ov['loop_tokens_per_s']:.0f} | {ov['loop_steps_per_s']:.3f} "
            f"| {', '.join(f'{s:.2f}' for s in ov['loop_seconds'])} |",
            f"| bare PyTorch loop (same batches, AdamW) | {ov['bare_tokens_per_s']:.0f} | {ov['bare_steps_per_s']:.3f} "
            f"| {', '.join(f'{s:.2f}' for s in ov['bare_seconds'])} |",
            "",
            f"**Ratio loop / bare = {ov['ratio']:.3f}** (target >= 0.9). The loop's own logged `train/tokens_per_s` "
            f"(every {ov['log_every']} steps, first report includes the warm-up steps): "
            f"{', '.join(f'{x:.0f}' for x in ov['loop_logged_tokens_per_s'])}.",
            "",
        ]
    zero = results.get("zero")
    if zero:
        lines += [
            "## Per-rank memory, ZeRO-0 / 2 / 3, 2 processes on CPU (gloo)",
            "",
            f"`{zero['accelerate_command']}`",
            "",
            f"Backbone: {zero['backbone']}, `model.adapter.method={zero['adapter']}`; {zero['data']}; "
            f"{zero['steps']} optimizer steps; fp32. DeepSpeed JSONs as committed in ds_configs/ "
            "(ZeRO-3 keeps parameters under `stage3_param_persistence_threshold` = 100000 elements whole).",
            "",
            "| ZeRO | rank | params held (MiB) | local / full elements | partitioned tensors | grads before step (MiB) "
            "| fp32 master (MiB) | Adam state (MiB) | sum (MiB) | RSS start / built / last step / peak (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for st in zero["stages"]:
            for r in st["ranks"]:
                total = r["param_bytes"] + r["grad_bytes"] + r["master_bytes"] + r["optimizer_state_bytes"]
                lines.append(
                    f"| {st['stage']} | {r['rank']} | {r['param_bytes'] / MIB:.1f} | "
                    f"{r['param_numel_local'] / 1e6:.2f}M / {r['param_numel_full'] / 1e6:.2f}M | "
                    f"{r['partitioned_params']} of {r['params']} | {r['grad_bytes'] / MIB:.1f} | "
                    f"{r['master_bytes'] / MIB:.1f} | {r['optimizer_state_bytes'] / MIB:.1f} | {total / MIB:.1f} | "
                    f"{r['rss_start'] / MIB:.0f} / {r['rss_after_build'] / MIB:.0f} / {r['rss_at_step'] / MIB:.0f} "
                    f"/ {r['peak_rss'] / MIB:.0f} |"
                )
        lines += [
            "",
            "Params held: this rank's parameter storage (ZeRO-3: its `ds_tensor` shards). Grads: the largest "
            "gradient storage held just before an optimizer step (`.grad` tensors plus ZeRO's partition and "
            "bucket buffers). fp32 master: the optimizer's own copy of the parameters where it is not the "
            "model's storage (ZeRO-1/2/3 keep one per partition, even in fp32 training). Adam state: "
            "`exp_avg` + `exp_avg_sq` (+ step). RSS (resident memory of the rank): at worker start "
            "(Python + torch), once the Trainer is built (model, DeepSpeed engine, data), at the last "
            "step, and the process peak; it includes the libraries and DeepSpeed's own buffers, so the "
            "sharding shows most clearly in the byte columns.",
            "",
        ]
    (out / "training.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", nargs="+", choices=["overhead", "zero"], default=["overhead", "zero"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 on a shared 2-core box)"
    )
    parser.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("overhead")
    g.add_argument("--backbone", default="minilm-l6")
    g.add_argument("--users", type=int, default=200)
    g.add_argument("--items", type=int, default=200)
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--max-windows", type=int, default=4, help="window.max_windows (window.size is 1)")
    g.add_argument("--micro-batch", type=int, default=16, help="model.encoder.micro_batch_size")
    g.add_argument("--steps", type=int, default=12, help="optimizer steps per round")
    g.add_argument("--warmup", type=int, default=2, help="steps excluded from the timed span")
    g.add_argument("--log-every", type=int, default=5, help="train.log_every (logging is part of the loop)")
    g.add_argument("--rounds", type=int, default=3)
    z = parser.add_argument_group("zero")
    z.add_argument("--zero-stages", nargs="+", type=int, default=[0, 2, 3])
    z.add_argument("--zero-hidden", type=int, default=384)
    z.add_argument("--zero-layers", type=int, default=4)
    z.add_argument("--zero-users", type=int, default=64)
    z.add_argument("--zero-items", type=int, default=60)
    z.add_argument("--zero-steps", type=int, default=3)
    z.add_argument("--zero-timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--zero-worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.zero_worker:
        sys.exit(zero_worker(args.zero_worker, [a for a in rest if a != "--"]))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "seqrec", "datasets", "transformers", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "command": " ".join(["python benchmarks/bench_training.py", *sys.argv[1:]]),
        "machine": machine(torch.get_num_threads()),
    }
    with tempfile.TemporaryDirectory(prefix="bench_training-") as tmp:
        work = Path(tmp)
        os.environ["SEQREC_CACHE"] = str(work / "cache")  # token caches of this run only
        if "overhead" in args.suite:
            results["overhead"] = run_overhead(args, work)
        if "zero" in args.suite:
            results["zero"] = run_zero(args, work)
    results["seconds"] = time.perf_counter() - start
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(results, args.out)
    if "overhead" in results:
        ov = results["overhead"]
        print(
            f"overhead: loop {ov['loop_tokens_per_s']:.0f} tok/s, bare {ov['bare_tokens_per_s']:.0f} tok/s, "
            f"ratio {ov['ratio']:.3f}"
        )
    for st in results.get("zero", {}).get("stages", []):
        r = st["ranks"][0]
        total = r["param_bytes"] + r["grad_bytes"] + r["master_bytes"] + r["optimizer_state_bytes"]
        print(f"ZeRO-{st['stage']}: rank 0 holds {total / MIB:.1f} MiB of params+grads+master+Adam state")
    print(f"wrote {args.out / 'training.json'} and {args.out / 'training.md'}")


if __name__ == "__main__":
    main()
