"""GPU check: the real training path (seqrec's run_training) on one GPU, in at most ~8 minutes.

    python benchmarks/gpu_check.py [--model PATH_OR_ALIAS] [--out benchmarks/results]
    python benchmarks/gpu_check.py --smoke --out /tmp/x     # tiny models on the CPU (tests use it)

UNTESTED ON A GPU so far: written and smoke-tested on CPUs only. Until this script has run on a
GPU and its gpu.json / gpu.md are committed, the bf16 / ZeRO / QLoRA / flash-attention path is
untested.

What it runs, each case in its own process (the environment a launcher gives one rank: RANK=0,
WORLD_SIZE=1, ...), through ``seqrec.training.run.run_training`` -- the function ``seqrec train``
and ``train/train.py`` call -- on synthetic data (``seqrec data synth``), joint stage, LoRA:

* randomly initialised backbones built from configs at real sizes (no weights can be downloaded):
  a Llama decoder of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536,
  vocab 49152), a Qwen2 decoder of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV
  heads, MLP 4864, vocab 151936: 494M parameters) and a BERT-base encoder (768 x 12, vocab 30522);
  ``--model`` runs one real backbone (folder or alias) instead;
* bf16 mixed precision under DeepSpeed ZeRO-2 and ZeRO-3 (ds_configs/zero{2,3}.json), a QLoRA
  run (4-bit, bitsandbytes; plain accelerate, no ZeRO) when bitsandbytes imports, and sdpa
  against flash-attention 2 when flash_attn imports;
* per case: tokens/s (non-pad tokens through the backbone per second, between the end of step
  ``--warmup`` and the end of the last step), model FLOPs utilisation, peak GPU memory
  (``torch.cuda.max_memory_allocated``), and a save/reload round trip: the scores of validation
  users from the live model against those of ``SeqRecModel.from_pretrained(best/)``.

MFU = achieved model FLOPs/s / the device's dense bf16 peak. Model FLOPs per non-pad token
= 4 x N (N = backbone parameters outside the embedding tables; forward 2N + backward through the
frozen weights to the activations 2N -- LoRA computes no gradient for the frozen weights, so the
6N of full fine-tuning would overstate the work) + 12 x layers x window tokens x hidden
(attention scores and values, forward + backward, at the configured window length). Padding
and the small recommendation head are not counted. Peaks (dense bf16, no sparsity), by device
name: H100 SXM / H200 989 TFLOPS, H100 NVL 835, H100 PCIe 756, A100 312, L40S 362, A10 125;
others need ``--peak-tflops``.

Running it on the lent GPU machine (no network; torch, transformers, peft, accelerate there;
deepspeed, datasets, pandas, pyarrow, gguf are not): build the bundle here first,

    .venv/bin/python benchmarks/gpu_bundle.py          # -> benchmarks/gpu_bundle/ (gitignored)

then give the device tool the command it prints (carry=["benchmarks/gpu_bundle"], timeout 540 s):

    bash benchmarks/gpu_bundle/run.sh

which installs the wheels into a scratch folder and runs this script with ``--out $OUT``; copy
the returned gpu.json / gpu.md into benchmarks/results/ and commit them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("gpu_check")

# Dense bf16 peaks in TFLOPS (vendor data sheets, without sparsity); matched against the CUDA
# device name, first hit wins.
PEAK_TFLOPS = [
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 (the "NVIDIA H100 80GB HBM3" name)
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10", 125.0),
]

# Real shapes (config.json of the public checkpoints), randomly initialised.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m-shape": {
        "arch": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "qwen2.5-0.5b-shape": {
        "arch": "qwen2",
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "bert-base-shape": {
        "arch": "bert",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
    },
}
SMOKE_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {"arch": "llama", "num_key_value_heads": 2},
    "tiny-bert": {"arch": "bert"},
}


# ---- the plan ---------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cases in priority order (the time budget cuts from the end)."""
    if args.smoke:
        return [
            {"name": "tiny-llama zero2 lora", "model": "tiny-llama", "zero": 2},
            {"name": "tiny-llama zero3 lora", "model": "tiny-llama", "zero": 3},
            {"name": "tiny-bert zero2 lora", "model": "tiny-bert", "zero": 2},
            {"name": "tiny-llama qlora", "model": "tiny-llama", "zero": 0, "method": "qlora"},
            {"name": "tiny-llama zero2 flash-attention-2", "model": "tiny-llama", "zero": 2, "attn": "fa2"},
        ]
    if args.model:
        m = args.model
        return [
            {"name": f"{m} zero2 lora", "model": m, "zero": 2},
            {"name": f"{m} zero3 lora", "model": m, "zero": 3},
            {"name": f"{m} qlora", "model": m, "zero": 0, "method": "qlora"},
            {"name": f"{m} zero2 flash-attention-2", "model": m, "zero": 2, "attn": "fa2"},
        ]
    big, small, bert = "qwen2.5-0.5b-shape", "smollm2-135m-shape", "bert-base-shape"
    return [
        {"name": f"{big} zero2 lora", "model": big, "zero": 2},
        {"name": f"{small} zero2 lora", "model": small, "zero": 2},
        {"name": f"{big} zero3 lora", "model": big, "zero": 3},
        {"name": f"{small} qlora", "model": small, "zero": 0, "method": "qlora"},
        {"name": f"{big} zero2 flash-attention-2", "model": big, "zero": 2, "attn": "fa2"},
        {"name": f"{bert} zero2 lora", "model": bert, "zero": 2},
        {"name": f"{small} zero3 lora", "model": small, "zero": 3},
        # Diagnostic: if the bf16 cases fail and this one runs, the fault is dtype handling.
        {"name": f"{small} zero2 lora fp32", "model": small, "zero": 2, "precision": "no"},
    ]


def skip_reason(case: dict[str, Any], cuda: bool) -> str | None:
    """Why a case cannot run here, or None."""
    import importlib.util

    if case.get("method") == "qlora":
        if not cuda:
            return "QLoRA needs CUDA (bitsandbytes 4-bit kernels)"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (its wheel does not fit the 64 MiB bundle)"
    if case.get("attn") == "fa2":
        if not cuda:
            return "flash-attention 2 needs CUDA"
        if importlib.util.find_spec("flash_attn") is None:
            return "flash_attn is not installed"
    return None


# ---- inputs: data and backbones -----------------------------------------------------------------


def make_data(out: Path, users: int, items: int) -> Path:
    from seqrec.data.synth import SynthConfig, synth

    if not (out / "meta.json").is_file():
        synth(out, SynthConfig(n_users=users, n_items=items, seed=0, mean_events=40.0), progress=False)
    return out


def tokenizer_for(arch: str, out: Path, bundle: Path | None) -> Any:
    """A real tokenizer from the bundle (SmolLM2's BPE for decoders, MiniLM's WordPiece for BERT),
    else the tests' tiny offline tokenizer (smoke mode, or no bundle)."""
    from transformers import AutoTokenizer

    sub = "bert" if arch == "bert" else "decoder"
    if bundle is not None and (bundle / "tokenizers" / sub).is_dir():
        tok = AutoTokenizer.from_pretrained(str(bundle / "tokenizers" / sub))
        tok.save_pretrained(str(out))
        return tok
    from tests.tiny_models import build_tokenizer

    return build_tokenizer(arch, out)


def build_backbone(name: str, shape: dict[str, Any], out: Path, bundle: Path | None, smoke: bool) -> Path:
    """Save a randomly initialised model of `shape` (bf16 on CUDA) and a tokenizer into `out`."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shape = dict(shape)
    arch = shape.pop("arch")
    tok = tokenizer_for(arch, out, bundle)
    if smoke:
        shape = {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "vocab_size": len(tok),
            "max_position_embeddings": 512,
            **shape,
        }
    shape["vocab_size"] = max(shape["vocab_size"], len(tok))
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        if arch == "bert":
            model: Any = BertModel(BertConfig(**shape, pad_token_id=tok.pad_token_id or 0))
        else:
            ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
            cls, cfg_cls = (
                (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
            )
            model = cls(cfg_cls(**shape, **ids))
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.save_pretrained(str(out))
    log.info("built %s: %.1fM parameters -> %s", name, sum(p.numel() for p in model.parameters()) / 1e6, out)
    del model
    return out


def backbone_shape(model: Any) -> dict[str, Any]:
    """Parameter counts and sizes for the FLOPs formula, from the live model's backbone (the first
    submodule with a transformers config); ZeRO-3 partitioned parameters count by ds_numel."""
    backbone = next(m for m in model.modules() if hasattr(getattr(m, "config", None), "num_hidden_layers"))
    total = embed = 0
    for name, p in backbone.named_parameters():
        if "lora_" in name:
            continue
        n = int(getattr(p, "ds_numel", p.numel()))
        total += n
        embed += n if "embed" in name else 0
    cfg = backbone.config
    return {
        "params": total,
        "params_non_embedding": total - embed,
        "layers": int(cfg.num_hidden_layers),
        "hidden": int(cfg.hidden_size),
        "model_type": str(cfg.model_type),
    }


# ---- one case (in its own process) -------------------------------------------------------------


def device_peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops, f"table entry {key!r} (dense bf16)"
    return None, "unknown device: pass --peak-tflops"


def case_config(case: dict[str, Any], args: argparse.Namespace, data: Path, backbone: str, out: Path) -> Any:
    from seqrec.training.run import resolve_config

    never = 10**9
    precision = case.get("precision", args.precision)
    ds = "null" if case["zero"] == 0 else f"ds_configs/zero{case['zero']}.json"
    attn = "flash_attention_2" if case.get("attn") == "fa2" else "sdpa"
    overrides = [
        "train.model=seqrec",
        "train.stage=joint",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.warmup + args.steps}",
        "train.epochs=1000",
        f"train.eval_every={never}",  # one validation, after the last step: best/ = final weights
        f"train.checkpoint_every={never}",
        f"train.log_every={max(1, args.steps // 2)}",
        f"train.eval_max_users={args.eval_users}",
        "train.tracker=none",
        "train.patience=0",
        f"train.mixed_precision='{precision}'",  # quoted: YAML reads a bare no as false
        f"train.deepspeed={ds}",
        f"model.backbone.name={backbone}",
        f"model.backbone.attn_implementation={attn}",
        f"model.adapter.method={case.get('method', 'lora')}",
        "model.items.mode=text",
        "model.items.cache_refresh_steps=0",  # a catalogue refresh would land in the timed span
        f"model.encoder.micro_batch_size={args.micro_batch}",
        f"window.size={args.window_events}",
        f"window.max_windows={args.max_windows}",
        "text.item_fields=[title,category]",
        "text.time=gap",
        f"text.max_window_tokens={args.window_tokens}",
        "text.max_item_tokens=32",
    ]
    if precision != "no":
        overrides.append(f"model.backbone.dtype={'bfloat16' if precision == 'bf16' else 'float16'}")
    return resolve_config(None, data=str(data), output=str(out), overrides=overrides)


def peak_memory_bytes(cuda: bool) -> int:
    import torch

    if cuda:
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def live_scores(live: Any, cfg: Any, data: Any, n_users: int, path: Path) -> None:
    """Save validation batches and the live (just trained) model's scores for them to `path`."""
    import numpy as np
    import torch

    from seqrec.data.collate import eval_batches

    users = np.asarray(data.eval_users("valid"))[:n_users]
    device = next(p for p in live.parameters()).device
    dtype = next(p for p in live.parameters() if p.is_floating_point()).dtype
    gathered: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in live.parameters()):  # ZeRO-3: whole weights for scoring
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(live.parameters()))
    live.eval()
    saved = []
    with torch.no_grad(), gathered:
        for batch in eval_batches(live, data, cfg, "valid", users=users, batch_size=16):
            on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            saved.append((batch, live.score_batch(on_device).float().cpu()))
    torch.save({"batches": saved, "dtype": str(dtype).removeprefix("torch.")}, path)


def reload_check(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: SeqRecModel.from_pretrained(best/), the live model's dtype and device,
    the saved batches scored again and compared."""
    import torch

    from seqrec.data.schema import PreparedData
    from seqrec.evaluation.cli import attach_catalogue
    from seqrec.modeling import SeqRecModel

    saved = torch.load(Path(case["work"]) / "live_scores.pt", weights_only=False)
    cfg = case_config(case, args, Path(case["data"]), case["backbone"], Path(case["work"]) / "run")
    model = SeqRecModel.from_pretrained(Path(case["work"]) / "run" / "best")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = getattr(torch, saved["dtype"])
    backbone = next(m for m in model.modules() if hasattr(getattr(m, "config", None), "num_hidden_layers"))
    backbone.to(dtype)  # the live backbone's dtype (bf16 under DeepSpeed bf16)
    model.to(device).eval()
    data = PreparedData.load(cfg.data_dir)
    attach_catalogue(model, data, cfg)  # the catalogue's token ids (the data layer never sets them)
    diffs, scale, exact = [], [], True
    with torch.no_grad():
        for batch, want in saved["batches"]:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            got = model.score_batch(batch).float().cpu()
            exact = exact and bool(torch.equal(got, want))
            diffs.append((got - want).abs().max().item())
            scale.append(want.abs().max().item())
    max_diff, max_score = max(diffs), max(scale)
    return {
        "users": sum(len(b["user_idx"]) for b, _ in saved["batches"]),
        "dtype": saved["dtype"],
        "exact": exact,
        "max_abs_diff": max_diff,
        "max_abs_score": max_score,
        "equal_within_tolerance": max_diff <= 1e-2 * max(1.0, max_score),
    }


def worker(case: dict[str, Any], args: argparse.Namespace, report: Path) -> int:
    """Run one case with run_training and write its measurements to `report`."""
    import torch

    import seqrec.training.loop as loop
    from seqrec.data.schema import PreparedData
    from seqrec.training.run import run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available()
    out = Path(case["work"]) / "run"
    cfg = case_config(case, args, Path(case["data"]), case["backbone"], out)
    step_times: list[float] = []
    nonpad: list[int] = []
    padded: list[int] = []
    built: list[Any] = []
    real_trainer = loop.Trainer

    def build(*a: Any, **kw: Any) -> Any:
        trainer = real_trainer(*a, **kw)

        def step_end(state: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter())

        trainer.step_hooks.append(step_end)

        def counted(_m: Any, _i: Any, o: Any) -> None:
            if trainer.unwrapped.training:  # training forwards only (validation scores differently)
                nonpad.append(int(o.metrics["nonpad_tokens"]))
                padded.append(int(o.metrics["tokens"]))

        trainer.unwrapped.register_forward_hook(counted)
        built.append(trainer)
        return trainer

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with mock.patch.object(loop, "Trainer", build):
        result = run_training(cfg, end_process_group=False)
    total_s = time.perf_counter() - t0
    w = args.warmup
    span = step_times[-1] - step_times[w - 1]
    tokens = sum(nonpad[w : len(step_times)])
    tokens_per_s = tokens / span
    trainer = built[0]
    shape = backbone_shape(trainer.unwrapped)
    flops_per_token = (
        4 * shape["params_non_embedding"] + 12 * shape["layers"] * args.window_tokens * shape["hidden"]
    )
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak, peak_source = (
        device_peak_tflops(device_name, args.peak_tflops) if cuda or args.peak_tflops else (None, "CPU")
    )
    achieved_tflops = tokens_per_s * flops_per_token / 1e12
    rec: dict[str, Any] = {
        "status": "ok",
        "steps": result.global_step,
        "timed_steps": len(step_times) - w,
        "timed_seconds": span,
        "tokens_per_s": tokens_per_s,
        "nonpad_tokens_per_step": tokens / max(1, len(step_times) - w),
        "padded_tokens_per_s": sum(padded[w : len(step_times)]) / span,
        "flops_per_token": flops_per_token,
        "achieved_tflops": achieved_tflops,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": achieved_tflops / peak if peak else None,
        "peak_memory_bytes": peak_memory_bytes(cuda),
        "case_seconds": total_s,
        "backbone": shape,
        "device": device_name,
    }
    if result.best_dir is not None:
        data = PreparedData.load(cfg.data_dir)
        live_scores(trainer.unwrapped, cfg, data, args.eval_users, Path(case["work"]) / "live_scores.pt")
    report.write_text(json.dumps(rec, indent=1))
    return 0


# ---- the driver --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_case(case: dict[str, Any], args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    report = Path(case["work"]) / "report.json"
    logf = Path(case["work"]) / "log.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PET_"))}
    env.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    if args.smoke or not args.cuda:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    start = time.perf_counter()

    def run(mode: str) -> int | None:
        cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(case), *args.passthrough]
        left = max(5.0, timeout - (time.perf_counter() - start))
        with logf.open("ab") as fh:
            try:
                return subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=left
                ).returncode
            except subprocess.TimeoutExpired:
                return None

    rc = run("--worker")
    if rc != 0 or not report.is_file():
        status = "timeout" if rc is None else f"failed (exit {rc})"
        tail = logf.read_text(errors="replace")[-4000:]
        return {"status": status, "case_seconds": time.perf_counter() - start, "log_tail": tail}
    rec = json.loads(report.read_text())
    # The save/reload round trip in a fresh process, as a user loads a trained model.
    trip = Path(case["work"]) / "round_trip.json"
    if not (Path(case["work"]) / "live_scores.pt").is_file():
        rec["round_trip"] = {"error": "training saved no best/ model"}
    elif run("--reload") == 0 and trip.is_file():
        rec["round_trip"] = json.loads(trip.read_text())
    else:
        rec["round_trip"] = {"error": "reload failed", "log_tail": logf.read_text(errors="replace")[-3000:]}
    rec["case_seconds"] = time.perf_counter() - start
    return rec


def fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def write_report(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(res, indent=1))
    a = res["settings"]
    lines = [
        "# GPU check (benchmarks/gpu_check.py)",
        "",
        f"Device: {res['device']}; torch {res['versions'].get('torch')}, deepspeed "
        f"{res['versions'].get('deepspeed')}; {'SMOKE RUN (tiny models on CPU), not a GPU measurement; ' if a['smoke'] else ''}precision {a['precision']}.",
        f"Command: `{res['command']}`",
        "",
        f"Joint stage, LoRA, synthetic data ({a['users']} users, {a['items']} items); batch {a['batch_size']} users x "
        f"up to {a['max_windows']} windows of {a['window_events']} events, <= {a['window_tokens']} tokens per window; "
        f"{a['steps']} timed steps after {a['warmup']} warm-up steps. Tokens/s: non-pad tokens through the backbone per "
        "second. MFU: 4 x non-embedding parameters + 12 x layers x window tokens x hidden FLOPs per token, "
        "over the peak named in the table.",
        "",
        "| case | status | tokens/s | TFLOPS | MFU | peak | peak memory GiB | save/reload | case s |",
        "|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for c in res["cases"]:
        rt = c.get("round_trip") or {}
        trip = (
            "-"
            if not rt
            else rt.get("error", "")[:60]
            if "error" in rt
            else ("exact" if rt["exact"] else f"max diff {rt['max_abs_diff']:.2e}")
            + ("" if rt.get("equal_within_tolerance", True) else " (NOT equal)")
        )
        peak = (
            f"{fmt(c.get('peak_tflops'), '.0f')} ({c.get('peak_source', '-')})"
            if c.get("peak_tflops")
            else "-"
        )
        mem = c.get("peak_memory_bytes")
        lines.append(
            f"| {c['name']} | {c['status']} | {fmt(c.get('tokens_per_s'), '.0f')} | {fmt(c.get('achieved_tflops'), '.2f')} "
            f"| {fmt(None if c.get('mfu') is None else 100 * c['mfu'], '.1f')}{'%' if c.get('mfu') is not None else ''} "
            f"| {peak} | {fmt(None if mem is None else mem / 2**30, '.2f')} | {trip} | {fmt(c.get('case_seconds'), '.0f')} |"
        )
    lines.append("")
    goal = next((c for c in res["cases"] if c["name"] == "qwen2.5-0.5b-shape zero2 lora"), None)
    if goal is not None and goal.get("mfu") is not None:
        verdict = "met" if goal["mfu"] >= 0.30 else "NOT met"
        lines += [
            f"Goal MFU >= 30% on the ~0.5B decoder under ZeRO-2, bf16 (issue 10): {verdict} "
            f"({100 * goal['mfu']:.1f}% at {a['window_tokens']} tokens per window, batch {a['batch_size']} users).",
            "",
        ]
    for c in res["cases"]:
        if c["status"] not in ("ok",) and not c["status"].startswith("skipped"):
            lines += [f"## {c['name']}: {c['status']}", "", "```", c.get("log_tail", "")[-1500:], "```", ""]
    (out / "gpu.md").write_text("\n".join(lines))


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "deepspeed",
        "datasets",
        "pandas",
        "pyarrow",
        "bitsandbytes",
        "flash_attn",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", help="A real backbone (folder, hub id in the cache, or alias) instead of the shapes."
    )
    p.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results"), help="Folder for gpu.json and gpu.md."
    )
    p.add_argument("--smoke", action="store_true", help="Tiny models on the CPU, few steps (tests use it).")
    p.add_argument(
        "--bundle", default=str(ROOT / "benchmarks" / "gpu_bundle"), help="Tokenizers from gpu_bundle.py."
    )
    p.add_argument("--peak-tflops", type=float, help="The device's dense peak when it is not in the table.")
    p.add_argument("--budget-s", type=float, default=450.0, help="Total seconds; later cases are skipped.")
    p.add_argument("--work", help="Scratch folder (default: a temporary one, removed at the end).")
    p.add_argument("--cases", help="Run only the cases whose name contains this text.")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--reload", help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, default=1200)
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--window-events", type=int, default=4)
    p.add_argument("--window-tokens", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=64, help="Windows per backbone forward.")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--eval-users", type=int, default=64)
    p.add_argument(
        "--precision", choices=["bf16", "fp16", "no"], default=None, help="Default bf16 (smoke: no)."
    )
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in (
            ("users", 40),
            ("items", 30),
            ("batch_size", 4),
            ("max_windows", 3),
            ("window_events", 2),
            ("window_tokens", 32),
            ("micro_batch", 8),
            ("warmup", 1),
            ("steps", 2),
            ("eval_users", 8),
        ):
            if f"--{name.replace('_', '-')}" not in (argv if argv is not None else sys.argv):
                setattr(args, name, value)
    if args.precision is None:
        args.precision = "no" if args.smoke else "bf16"
    # What the worker processes need to rebuild `args`.
    args.passthrough = [
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith(("--worker", "--reload"))
    ]
    if args.reload:
        case = json.loads(args.reload)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        trip = reload_check(case, args)
        (Path(case["work"]) / "round_trip.json").write_text(json.dumps(trip, indent=1))
        return 0
    if args.worker:
        # The worker gets the parent's argv (including the smoke defaults' trigger) plus its case.
        return worker(json.loads(args.worker), args, Path(json.loads(args.worker)["work"]) / "report.json")

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.cuda = torch.cuda.is_available() and not args.smoke
    bundle = Path(args.bundle) if Path(args.bundle).is_dir() else None
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = (
            Path(args.work)
            if args.work
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check-")))
        )
        work.mkdir(parents=True, exist_ok=True)
        data = make_data(work / "data", args.users, args.items)
        shapes = SMOKE_SHAPES if args.smoke else SHAPES
        cases = []
        chosen = [c for c in plan(args) if not args.cases or args.cases in c["name"]]
        for i, case in enumerate(chosen):
            case = {**case, "work": str(work / f"case{i}"), "data": str(data)}
            Path(case["work"]).mkdir(parents=True, exist_ok=True)
            reason = skip_reason(case, args.cuda)
            left = args.budget_s - (time.perf_counter() - start)
            if reason is None and left < 30:
                reason = f"time budget ({args.budget_s:.0f} s) spent"
            if reason is not None:
                log.info("%s: skipped: %s", case["name"], reason)
                cases.append({"name": case["name"], "status": f"skipped: {reason}"})
                continue
            model = case["model"]
            if model in shapes:
                case["backbone"] = str(
                    build_backbone(model, shapes[model], work / "backbones" / model, bundle, args.smoke)
                )
            else:
                case["backbone"] = model
            log.info("%s: running (%.0f s of the budget left)", case["name"], left)
            rec = run_case(case, args, timeout=left)
            log.info(
                "%s: %s %s", case["name"], rec["status"], {k: rec.get(k) for k in ("tokens_per_s", "mfu")}
            )
            cases.append(
                {
                    "name": case["name"],
                    **{
                        k: v for k, v in case.items() if k in ("model", "zero", "method", "attn", "precision")
                    },
                    **rec,
                }
            )
        res = {
            "device": torch.cuda.get_device_name()
            if args.cuda
            else f"CPU ({platform.processor() or platform.machine()})",
            "command": shlex.join(["python", "benchmarks/gpu_check.py", *args.passthrough]),
            "versions": versions(),
            "settings": {
                k: getattr(args, k)
                for k in (
                    "smoke",
                    "users",
                    "items",
                    "batch_size",
                    "max_windows",
                    "window_events",
                    "window_tokens",
                    "micro_batch",
                    "warmup",
                    "steps",
                    "precision",
                    "budget_s",
                )
            },
            "total_seconds": time.perf_counter() - start,
            "cases": cases,
        }
        write_report(res, Path(args.out))
        print((Path(args.out) / "gpu.md").read_text())
    return 0 if all(c["status"] == "ok" or c["status"].startswith("skipped") for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
