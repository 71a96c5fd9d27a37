"""Two processes on the CPU (gloo): DeepSpeed ZeRO-2 / ZeRO-3 and DDP, signals, crashes, resume.

Each test starts real worker processes running this file (`python -m tests.test_training_distributed
--worker ...`), either through `accelerate launch` with a YAML from train/accelerate/ or with the
environment a launcher gives (RANK, WORLD_SIZE, MASTER_ADDR, ...), so single ranks can be signalled
or killed. Workers train the tiny recommender of test_training_loop.py and write a JSON report.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


# ---- the worker (runs in each launched process) ------------------------------------------------


def worker(argv: list[str]) -> int:
    import torch

    from seqrec.data.schema import PreparedData
    from seqrec.training.distributed import make_accelerator
    from seqrec.training.loop import Trainer
    from tests.test_training_loop import (
        NextItemDataset,
        TinyRec,
        collate,
        evaluate_ndcg,
        full_train_loss,
        save_safetensors,
        tiny_config,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--deepspeed", default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step, so tests can signal mid-run")
    p.add_argument(
        "--save-final", action="store_true", help="also save the final gathered weights to OUT/final"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = tiny_config(
        Path(args.out),
        epochs=args.epochs,
        deepspeed=args.deepspeed,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        grad_accum=args.grad_accum,
        log_every=1,
    )
    accelerator = make_accelerator(cfg)  # before the model, as run_training does
    rank = accelerator.process_index
    data = PreparedData.load(args.data)
    torch.manual_seed(cfg.train.seed)
    model = TinyRec(data.n_items)

    seen: list[int] = []

    def recording_collate(examples: list[Any]) -> dict[str, torch.Tensor]:
        batch = collate(examples)
        seen.extend(batch["user_idx"].tolist())
        return batch

    progress = Path(args.out) / f"progress-{rank}"

    def hook(state: Any) -> None:
        progress.write_text(str(state.global_step))
        time.sleep(args.sleep)

    trainer = Trainer(
        cfg,
        model,
        NextItemDataset(data, "train"),
        recording_collate,
        lambda m, acc: evaluate_ndcg(m, acc, data),
        save_safetensors,
        accelerator=accelerator,
        step_hooks=[hook],
    )
    head = trainer.unwrapped.head.weight
    device = accelerator.device
    loss_before = full_train_loss(trainer.unwrapped, data, device)  # every rank: ZeRO-3 gathers
    result = trainer.train()
    if args.save_final:
        state_dict = accelerator.get_state_dict(trainer.model)  # collective under ZeRO-3
        if accelerator.is_main_process:
            (Path(args.out) / "final").mkdir()
            save_safetensors(trainer.unwrapped, Path(args.out) / "final", state_dict)
    loss_after = full_train_loss(trainer.unwrapped, data, device)
    trainer.unwrapped.eval()
    with torch.no_grad():
        live_scores = trainer.unwrapped.scores(collate(NextItemDataset(data, "valid").examples)["history"])
    report = {
        "rank": rank,
        "world": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "seen": seen,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "head_numel": int(getattr(head, "ds_numel", head.numel())),
        "head_local_numel": int(head.numel()),
        "live_scores": live_scores.tolist(),
        "stop_reason": result.stop_reason,
        "global_step": result.global_step,
        "best_step": result.best_step,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "exit_code": result.exit_code,
    }
    (Path(args.out) / f"report-{rank}.json").write_text(json.dumps(report))
    # An orderly end, as run_training's: every rank done, then the process group destroyed. Exiting
    # with it alive let a rank that finished first tear down gloo while the other was still leaving
    # its last collective ("terminate called without an active exception", exit -6, once under load).
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result.exit_code


# ---- launching ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PET_"))}
    env.update(
        DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false"
    )
    return env


def start_ranks(n: int, args: list[str], log_dir: Path) -> list[subprocess.Popen]:
    """n worker processes with the environment a launcher would give them."""
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
        cmd = [sys.executable, "-m", "tests.test_training_distributed", "--worker", *args]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], log_dir: Path, timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("workers timed out:\n" + _logs(log_dir))


def _logs(log_dir: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(log_dir.glob("*.log"))
    )


def wait_for(predicate: Any, procs: list[subprocess.Popen], log_dir: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail("workers ended or stalled before the expected point:\n" + _logs(log_dir))
        time.sleep(0.1)


def reports(out: Path, n: int = 2) -> list[dict[str, Any]]:
    return [json.loads((out / f"report-{r}.json").read_text()) for r in range(n)]


def progress(out: Path, rank: int) -> int:
    path = out / f"progress-{rank}"
    return int(path.read_text() or 0) if path.is_file() else 0


def zero3_config(tmp_path: Path) -> Path:
    """ds_configs/zero3.json with persistence threshold 0, so tiny parameters are really sharded."""
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3_tiny.json"
    path.write_text(json.dumps(ds))
    return path


def assert_trained_on_two_ranks(reps: list[dict[str, Any]], n_train: int | None) -> None:
    assert [r["rank"] for r in reps] == [0, 1] and {r["world"] for r in reps} == {2}
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" for r in reps)
    first, second = set(reps[0]["seen"]), set(reps[1]["seen"])
    assert first and second and first != second  # each rank sees its own shard...
    if n_train is not None:
        assert first | second == set(range(n_train))  # ...and together they see everything
    for r in reps:
        assert math.isfinite(r["loss_after"])


# ---- tests --------------------------------------------------------------------------------------


def accelerate_launch(config: str, args: list[str], log: Path) -> subprocess.Popen:
    """`accelerate launch --config_file train/accelerate/<config>` of the worker, as SLURM runs it."""
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        f"train/accelerate/{config}",
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "tests.test_training_distributed",
        "--worker",
        *args,
    ]
    env = _env()
    # As in slurm/*.sbatch: torchrun's agent forwards SIGUSR1 to the workers instead of dying.
    env.update(
        PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="60"
    )
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_zero2_accelerate_launch_usr1_then_resume(
    tmp_path: Path, tiny_data_dir: Path, tiny_data: Any
) -> None:
    """The real entry (`accelerate launch` + train/accelerate/zero2.yaml, gradient accumulation 2):
    SIGUSR1 to the launcher (what the SLURM script forwards) checkpoints every rank and exits 143;
    `--resume auto` then finishes with ranks 0 and 1 of 2 seeing different data, the loss falling."""
    from seqrec.training.checkpoint import verify_checkpoint

    out, logs = tmp_path / "run", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    args = ["--data", str(tiny_data_dir), "--out", str(out), "--grad-accum", "2"]
    launcher = accelerate_launch("zero2.yaml", [*args, "--sleep", "0.3"], logs / "first.log")
    wait_for(lambda: progress(out, 0) >= 3, [launcher], logs)
    launcher.send_signal(signal.SIGUSR1)
    assert wait_all([launcher], logs) != [0]  # torchrun reports stopped workers as a failure
    stopped = reports(out)
    assert [r["exit_code"] for r in stopped] == [143, 143], _logs(logs)
    assert stopped[0]["global_step"] == stopped[1]["global_step"] >= 3
    ckpt = out / "checkpoints" / f"step-{stopped[0]['global_step']}"
    assert verify_checkpoint(ckpt) is None

    resumed = accelerate_launch("zero2.yaml", [*args, "--resume", "auto"], logs / "second.log")
    assert wait_all([resumed], logs) == [0], _logs(logs)
    done = reports(out)
    assert {r["resumed_from"] for r in done} == {str(ckpt)}
    assert {r["stop_reason"] for r in done} == {"completed"}
    assert_trained_on_two_ranks(done, len(tiny_data.train_users(2)))
    assert all(r["loss_after"] < stopped[0]["loss_before"] for r in done)


def test_zero3_sigterm_to_one_rank_and_saved_model(
    tmp_path: Path, tiny_data_dir: Path, tiny_data: Any
) -> None:
    """ZeRO-3 really shards the parameters; SIGTERM to ONE rank stops both at the same step with a
    complete checkpoint and exit 143; the saved models (best/ and the final gathered weights) are
    never empty and reload to the live model's scores."""
    import torch

    from seqrec.training.checkpoint import read_state, verify_checkpoint
    from tests.test_training_loop import NextItemDataset, collate, evaluate_ndcg, load_tiny

    out, logs = tmp_path / "run", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    args = ["--data", str(tiny_data_dir), "--out", str(out), "--deepspeed", str(zero3_config(tmp_path))]
    procs = start_ranks(2, [*args, "--sleep", "0.2", "--epochs", "6", "--save-final"], logs)
    wait_for(lambda: progress(out, 1) >= 7, procs, logs)
    procs[1].send_signal(signal.SIGTERM)  # rank 0 is never signalled: the ranks must agree
    assert wait_all(procs, logs) == [143, 143], _logs(logs)
    stopped = reports(out)
    assert_trained_on_two_ranks(stopped, None)
    assert stopped[0]["global_step"] == stopped[1]["global_step"] >= 7
    assert {r["stop_reason"] for r in stopped} == {"preempted"}
    assert all(r["loss_after"] < r["loss_before"] for r in stopped)
    assert all(0 == r["head_local_numel"] < r["head_numel"] for r in stopped)  # partitioned
    ckpt = out / "checkpoints" / f"step-{stopped[0]['global_step']}"
    assert verify_checkpoint(ckpt) is None and read_state(ckpt).stop_reason == "preempted"

    valid = collate(NextItemDataset(tiny_data, "valid").examples)
    final = load_tiny(out / "final", tiny_data.n_items)
    # load_tiny loads strictly (every key, every shape); matrices must hold real values, not zeros.
    assert all(v.abs().sum() > 0 for v in final.state_dict().values() if v.ndim == 2)
    with torch.no_grad():
        torch.testing.assert_close(final.scores(valid["history"]), torch.tensor(stopped[0]["live_scores"]))
    best = load_tiny(out / "best", tiny_data.n_items)  # saved by the loop at its best validation
    recorded = json.loads((out / "best_metrics.json").read_text())["metrics"]["ndcg@10"]
    assert evaluate_ndcg(best, None, tiny_data)["ndcg@10"] == pytest.approx(recorded)


def test_sigkill_loses_only_steps_since_last_checkpoint(tmp_path: Path, tiny_data_dir: Path) -> None:
    """Plain DDP over gloo: SIGKILL one rank mid-run; --resume auto continues from the newest
    complete checkpoint, at most checkpoint_every steps behind the crash."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    every = 2
    args = [
        "--data",
        str(tiny_data_dir),
        "--out",
        str(out),
        "--checkpoint-every",
        str(every),
        "--epochs",
        "4",
    ]
    procs = start_ranks(2, [*args, "--sleep", "0.2"], logs)
    wait_for(lambda: progress(out, 1) >= 5, procs, logs)
    procs[1].send_signal(signal.SIGKILL)
    reached = max(progress(out, 0), progress(out, 1))
    procs[0].send_signal(signal.SIGKILL)  # what the launcher does when a rank dies
    wait_all(procs, logs)

    codes = wait_all(start_ranks(2, [*args, "--resume", "auto"], logs), logs)
    assert codes == [0, 0], _logs(logs)
    done = reports(out)
    resumed = Path(done[0]["resumed_from"])
    assert done[1]["resumed_from"] == str(resumed)  # all ranks loaded the same checkpoint
    step = int(resumed.name.split("-")[1])
    assert reached - every <= step <= reached
    assert {r["stop_reason"] for r in done} == {"completed"}
    assert {r["distributed_type"] for r in done} == {"DistributedType.MULTI_CPU"}
    assert not list((out / "checkpoints").glob(".tmp-*"))  # leftovers of the killed save are gone


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m tests.test_training_distributed --worker --data DIR --out DIR [...]")
