"""Sharded training data: each rank reads only its own users' event shards, and a prepared
directory split into user-hash shards trains exactly like the unsharded one on two processes.

The rank rule (seqrec/data/shards.py) is ``md5(user_id) % world``, the same for sharded and
unsharded data; each rank draws batches of its own users (seqrec/training/sampler.py
RankOwnedEpochSampler) and validates its own users, the evaluator gathering the per-user rows.
The two-process tests run real workers (`python -m tests.test_training_sharded ...`) over gloo on
the CPU through `run_training`, on a small log prepared twice by the DuckDB engine: once as one
events file and once with ``--shards 4``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seqrec.data.schema import DataError, PreparedData
from seqrec.data.shards import rank_shard_files, shard_manifest
from seqrec.training.sampler import RankOwnedEpochSampler

REPO = Path(__file__).resolve().parents[1]
SHARDS = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic log prepared by the DuckDB engine unsharded and with 4 user-hash shards."""
    pytest.importorskip("duckdb")
    from seqrec.data.cli import load_data_config
    from seqrec.data.engine_duckdb import EngineOptions
    from seqrec.data.prepare import prepare
    from seqrec.data.synth import SynthConfig, generate, write_raw

    root = tmp_path_factory.mktemp("sharded")
    write_raw(
        generate(SynthConfig(n_users=90, n_items=60, seed=5, funnel="events", mean_events=10)), root / "raw"
    )
    cfg = load_data_config(None, [], "generic", str(root / "raw"))
    prepare(cfg, root / "one", progress=False, engine="duckdb")
    prepare(cfg, root / "four", progress=False, engine="duckdb", options=EngineOptions(shards=SHARDS))
    assert (root / "one" / "events.parquet").is_file() and not (root / "four" / "events.parquet").exists()
    return {"one": root / "one", "four": root / "four"}


# ---- one process: what a rank loads -------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
def test_rank_loads_only_its_own_shards_and_users(
    prepared: dict[str, Path], tmp_path: Path, world: int
) -> None:
    """Each rank's shard files are the only ones present in its copy of the directory (so opening
    any other would fail); it holds exactly its own users' events, equal to the unsharded data's;
    its per-rank item counts sum to the global counts. world=3 does not divide the 4 shards, so a
    rank reads every shard that can hold its users and keeps only those users."""
    full = PreparedData.load(prepared["one"])
    manifest = shard_manifest(prepared["four"])
    assert manifest is not None
    owner = full.owner_ranks(world)
    counts = np.zeros(full.n_items, dtype=np.int64)
    for rank in range(world):
        files = rank_shard_files(manifest, rank, world)
        if world == 2:
            assert files == [f"events/part-{s:05d}.parquet" for s in range(SHARDS) if s % 2 == rank]
        else:
            assert len(files) == SHARDS  # gcd(4, 3) = 1: any shard may hold this rank's users
        copy = tmp_path / f"rank{rank}"
        shutil.copytree(prepared["four"], copy)
        for part in manifest["parts"]:
            if part["file"] not in files:
                (copy / part["file"]).unlink()  # another rank's shard: must not be needed
        data = PreparedData.load(copy, rank=rank, world=world)
        assert data.loaded is not None
        np.testing.assert_array_equal(data.loaded, owner == rank)
        assert data.n_events == int(np.diff(full.offsets)[owner == rank].sum()) > 0
        for u in np.flatnonzero(owner == rank):
            for a, b in zip(data.sequence(int(u)), full.sequence(int(u))):
                np.testing.assert_array_equal(a, b)
        other = int(np.flatnonzero(owner != rank)[0])
        with pytest.raises(DataError, match="not loaded"):
            data.sequence(other)
        with pytest.raises(DataError, match="item_counts"):
            data.train_item_counts()  # partial: needs the sum over ranks
        counts += data.local_item_counts()
    np.testing.assert_array_equal(counts, full.train_item_counts())
    # Unsharded data or one process: the whole data, whatever the rank.
    assert PreparedData.load(prepared["one"], rank=1, world=2).loaded is None
    assert PreparedData.load(prepared["four"]).loaded is None


def test_rank_owned_sampler_deals_each_rank_its_own_users() -> None:
    """Through accelerate's own batch dealing: each process gets only its examples, the same
    number of full batches, every example at least once per epoch; the order depends only on
    (seed, epoch), so a resumed run draws the same batches."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    owner = np.random.default_rng(0).integers(0, 2, size=23)
    owner[:2] = [0, 1]
    sampler = RankOwnedEpochSampler(owner, world=2, batch_size=4, seed=7)
    longest = int(np.bincount(owner).max())
    assert sampler.batches_per_rank == -(-longest // 4)
    dealt = []
    for rank in range(2):
        shard = BatchSamplerShard(BatchSampler(sampler, 4, False), num_processes=2, process_index=rank)
        batches = list(shard)
        assert len(batches) == sampler.batches_per_rank and all(len(b) == 4 for b in batches)
        flat = np.concatenate(batches)
        assert set(owner[flat]) == {rank} and set(flat) == set(np.flatnonzero(owner == rank))
        np.testing.assert_array_equal(flat, sampler.rank_order(rank))
        dealt.append(flat)
    again = RankOwnedEpochSampler(owner, world=2, batch_size=4, seed=7)
    assert list(again) == list(sampler)
    again.set_epoch(1)
    assert list(again) != list(sampler)
    with pytest.raises(ValueError, match="own no training examples"):
        RankOwnedEpochSampler(np.zeros(5, dtype=np.int64), world=2, batch_size=4, seed=0)


# ---- two processes: sharded == unsharded --------------------------------------------------------


def worker(argv: list[str]) -> int:
    import torch

    from seqrec.training.run import resolve_config, run_training

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="sasrec")
    p.add_argument("--backbone", default="")
    p.add_argument("--set", action="append", default=[], help="more key=value overrides")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    overrides = [
        "train.epochs=3",
        "train.batch_size=8",
        "train.lr=0.01",
        "train.log_every=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.tracker=none",
        "eval.batch_size=8",
        *args.set,
    ]
    if args.model == "sasrec":
        overrides += [
            "train.model=sasrec",
            "sasrec.d_model=16",
            "sasrec.layers=1",
            "sasrec.heads=1",
            "sasrec.max_len=10",
        ]
        cfg = resolve_config(None, args.data, args.out, overrides=overrides)
    else:
        from seqrec.config import RunConfig, apply_overrides, from_dict, to_dict
        from tests.tiny_models import tiny_run_config

        base = tiny_run_config(
            args.backbone, **{"train.stage": "head", "model.backbone.hidden_size": 0, "data_dir": args.data}
        )
        overrides += ["train.model=seqrec", f"train.output_dir={args.out}"]
        cfg = from_dict(RunConfig, apply_overrides(to_dict(base), overrides))
    result = run_training(cfg)
    return result.exit_code


def launch(tmp_path: Path, name: str, data: Path, extra: list[str], fresh: bool = True) -> Path:
    import subprocess

    from tests.test_training_distributed import _env, _free_port, _logs, wait_all

    out, logs = tmp_path / name, tmp_path / f"{name}-logs"
    logs.mkdir(exist_ok=not fresh)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _env()
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        log = (logs / f"rank{rank}.log").open("ab")
        cmd = [
            sys.executable,
            "-m",
            "tests.test_training_sharded",
            "--data",
            str(data),
            "--out",
            str(out),
            *extra,
        ]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = wait_all(procs, logs, timeout=240)
    assert codes == [0, 0], _logs(logs)
    return out


def tensors_of(folder: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    assert out, f"no weights in {folder}"
    return out


def assert_same_training(one: Path, four: Path, tmp_path: Path) -> None:
    history = [
        [json.loads(line) for line in (run / "valid_history.jsonl").read_text().splitlines()]
        for run in (one, four)
    ]
    assert len(history[0]) == 3 and history[0] == history[1]  # every epoch's validation metrics
    # The best model and the final weights (the last checkpoint).
    last = max((one / "checkpoints").glob("step-*"), key=lambda d: int(d.name.split("-")[1]))
    for folder in ("best", f"checkpoints/{last.name}"):
        a, b = tensors_of(one / folder), tensors_of(four / folder)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{folder} {k}")  # bit-equal
    # Each rank of the sharded run read only its own shards; the unsharded run read events.parquet.
    for rank in range(2):
        text = (tmp_path / f"four-logs/rank{rank}.log").read_text(errors="replace")
        own = ", ".join(f"part-{s:05d}.parquet" for s in range(SHARDS) if s % 2 == rank)
        assert f"rank {rank} of 2 reads 2 of {SHARDS} event shards ({own})" in text, text[-3000:]


@pytest.mark.distributed
@pytest.mark.slow
def test_sasrec_sharded_trains_like_unsharded_on_two_processes(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    """SASRec, 2 ranks, DDP over gloo: the 4-shard directory (each rank reading only its 2 parts)
    and the unsharded one give bit-equal weights and the same validation every epoch; a mid-epoch
    resume of the sharded run is bit-equal; the gathered validation equals one process's."""
    from seqrec.baselines.sasrec import SASRec
    from seqrec.baselines.sequences import eval_loader
    from seqrec.config import EvalConfig
    from seqrec.evaluation.evaluator import evaluate

    extra = ["--model", "sasrec", "--set", "train.checkpoint_every=5", "--set", "train.keep_last=10"]
    one = launch(tmp_path, "one", prepared["one"], extra)
    four = launch(tmp_path, "four", prepared["four"], extra)
    assert_same_training(one, four, tmp_path)

    # Mid-epoch resume on the sharded data (7 steps per epoch: step 10 is the 3rd batch of epoch
    # 2): the sharded run cut back to its step-10 checkpoint and resumed ends bit-equal.
    cut = tmp_path / "resumed"
    shutil.copytree(four, cut)
    for ckpt in (cut / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > 10:
            shutil.rmtree(ckpt)
    shutil.rmtree(cut / "best")
    (cut / "best_metrics.json").unlink()
    lines = (cut / "valid_history.jsonl").read_text().splitlines()
    (cut / "valid_history.jsonl").write_text("".join(f"{x}\n" for x in lines if json.loads(x)["step"] <= 10))
    (tmp_path / "resumed-logs").mkdir()
    launch(tmp_path, "resumed", prepared["four"], [*extra, "--set", "train.resume=auto"], fresh=False)
    log = (tmp_path / "resumed-logs" / "rank0.log").read_text(errors="replace")
    assert "(step 10, epoch 1, batch 3)" in log, log[-3000:]  # really resumed mid-epoch
    a, b = tensors_of(four / "checkpoints" / "step-21"), tensors_of(cut / "checkpoints" / "step-21")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"resumed {k}")
    assert (cut / "valid_history.jsonl").read_text() == (four / "valid_history.jsonl").read_text()
    # The ranks' gathered validation is one process's evaluation of every validation user.
    data = PreparedData.load(prepared["one"])
    model = SASRec.from_pretrained(one / "best")
    best = json.loads((one / "best_metrics.json").read_text())["metrics"]
    alone = evaluate(model, eval_loader(data, "valid", 10, 8), data, "valid", EvalConfig(), progress=False)
    assert alone.n_users == len(data.eval_users("valid"))
    assert alone.metrics == pytest.approx(best, rel=1e-6)


@pytest.mark.distributed
@pytest.mark.slow
def test_seqrec_head_stage_sharded_trains_like_unsharded(
    prepared: dict[str, Path], tmp_path: Path, tiny_backbones: Any
) -> None:
    """The head stage (features cached by both ranks, then aggregator + fusion + head trained):
    identical runs, and on the sharded directory each rank trains and validates from its own
    shards only (the one-off feature build reads the whole data; it covers every user's windows)."""
    extra = ["--model", "seqrec", "--backbone", str(tiny_backbones("llama"))]
    one = launch(tmp_path, "one", prepared["one"], extra)
    four = launch(tmp_path, "four", prepared["four"], extra)
    assert_same_training(one, four, tmp_path)


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
