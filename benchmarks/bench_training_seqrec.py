"""Step time of the real SeqRecModel under DeepSpeed bf16 on this CPU: 2 processes vs 1, same batches.

The worker is the one of tests/test_training_distributed_seqrec.py (joint stage, LoRA, bf16, the
real seqrec_setup + Trainer), which records the wall time of every optimizer step (a step hook).
For each ZeRO stage (2 and 3, the test's JSONs: ZeRO-3 with persistence threshold 0 and reuse
distance 0), it runs

* 2 processes (DS_ACCELERATOR=cpu, gloo), train.batch_size=B per rank, and
* 1 process, the same JSON, train.batch_size=2B,

so both see the same 2B users per optimizer step (the same users: the epoch permutation is the
seed's, and a rank's share is every other batch of it). The default 5 steps are one epoch of the
tiny data set (40 training users, 8 per step), so the only validation comes after the last step,
outside the timed span; the first step (warm-up) is dropped. Rounds alternate the 2-process and the
1-process run (``--rounds``, default 2), so load drift on a shared machine hits both; the ratio is
median(all timed steps, 2 processes) / median(all timed steps, 1 process): below 1 means the
second process pays off.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_training_seqrec.py [--backbone minilm-l6]

Writes benchmarks/results/training_seqrec.json and replaces its section in training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BEGIN, END = "<!-- bench_training_seqrec:begin -->", "<!-- bench_training_seqrec:end -->"


def run(
    n: int, stage: int, backbone: str, data: Path, root: Path, batch: int, steps: int, round_: int = 0
) -> dict[str, Any]:
    from tests.test_training_distributed import _logs, wait_all
    from tests.test_training_distributed_seqrec import start_ranks, zero_config

    tag = f"z{stage}-n{n}-r{round_}"
    out, logs = root / tag / "run", root / tag / "logs"
    out.mkdir(parents=True)
    logs.mkdir(parents=True)
    args = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--backbone",
        backbone,
        "--deepspeed",
        str(zero_config(root / tag, stage)),
        "--steps",
        str(steps),
        "--eval-every",
        "0",
        "--batch-size",
        str(batch),
    ]
    start = time.perf_counter()
    codes = wait_all(start_ranks(n, args, logs), logs, timeout=900)
    if codes != [0] * n:
        raise SystemExit(f"{tag} failed:\n{_logs(logs)}")
    report = json.loads((out / "report-0.json").read_text())
    times = report["step_times"][1:]  # the first step includes warm-up
    return {
        "processes": n,
        "zero": stage,
        "round": round_,
        "batch_per_process": batch,
        "users_per_step": batch * n,
        "steps_timed": len(times),
        "median_step_s": round(statistics.median(times), 3),
        "step_s": [round(t, 3) for t in times],
        "param_dtype": report["param_dtype"],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## SeqRecModel under DeepSpeed bf16: 2 processes vs 1 on the same batches",
        "",
        f"`{result['command']}`",
        "",
        f"Joint stage, `{result['backbone']}` + LoRA (r=4), hybrid item tower, bf16 (DeepSpeed's CPU "
        f"accelerator), the tiny test data set (40 users, 30 items; windows of 3 events, at most 4 "
        f"windows, 48 window tokens), {result['steps']} optimizer steps, the first dropped. Both runs "
        f"see the same {result['users_per_step']} users per optimizer step. DeepSpeed JSONs: "
        f"ds_configs/zero2.json, and ds_configs/zero3.json with stage3_param_persistence_threshold 0 "
        f"and stage3_max_reuse_distance 0 (the tests' settings). Load average at start "
        f"{result['load_start']}, at end {result['load_end']} (2 CPU cores, shared with other work).",
        "",
        f"Rounds alternate 2 processes and 1 process ({result['rounds']} round(s) per stage); the "
        "ratio is the median of all timed steps of the 2-process runs over that of the 1-process runs.",
        "",
        "| ZeRO | round | processes | users per process per step | median step (s) | steps (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        steps = ", ".join(f"{t:.2f}" for t in r["step_s"])
        lines.append(
            f"| {r['zero']} | {r['round']} | {r['processes']} | {r['batch_per_process']} | "
            f"{r['median_step_s']:.2f} | {steps} |"
        )
    lines.append("")
    for stage, ratio in result["ratios"].items():
        two, one = (
            result["median_step_s"][f"zero{stage}-2proc"],
            result["median_step_s"][f"zero{stage}-1proc"],
        )
        lines.append(
            f"**ZeRO-{stage}: step time 2 processes / 1 process = {ratio:.2f}** ({two:.2f} s vs {one:.2f} s)  "
        )
    lines += ["", result["note"], END, ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="minilm-l6")
    p.add_argument("--batch", type=int, default=4, help="users per process with 2 processes")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    p.add_argument("--rounds", type=int, default=2, help="alternating 2-process / 1-process rounds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from seqrec.data.schema import write_prepared
    from tests.conftest import make_tiny_frames  # the tests' tiny data set, with a learnable signal

    load_start = [round(x, 2) for x in os.getloadavg()]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-seqrec-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        write_prepared(data, **make_tiny_frames())
        for stage in args.stages:
            for round_ in range(args.rounds):
                for n, batch in ((2, args.batch), (1, 2 * args.batch)):
                    r = run(n, stage, args.backbone, data, root, batch, args.steps, round_)
                    print(json.dumps(r))
                    runs.append(r)

    def pooled(stage: int, n: int) -> float:
        return statistics.median(
            t for r in runs if r["zero"] == stage and r["processes"] == n for t in r["step_s"]
        )

    ratios = {str(stage): round(pooled(stage, 2) / pooled(stage, 1), 3) for stage in args.stages}
    result = {
        "command": "PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_training_seqrec.py "
        + " ".join(sys.argv[1:]),
        "backbone": args.backbone,
        "steps": args.steps,
        "users_per_step": 2 * args.batch,
        "rounds": args.rounds,
        "median_step_s": {
            f"zero{stage}-{n}proc": round(pooled(stage, n), 3) for stage in args.stages for n in (2, 1)
        },
        "runs": runs,
        "ratios": ratios,
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "note": (
            "Each process runs one intra-op thread. Two processes on two cores halve each rank's "
            "encoder work but add gloo collectives (ZeRO-2: one gradient reduce-scatter per step; "
            "ZeRO-3: an all-gather before and a release after every submodule call, forward and "
            "backward, plus one call-count all-reduce per encoder call), so a ratio near or above 1 "
            "on this CPU says the collectives cost what the second core saves (and with other jobs "
            "keeping the load average above 2 there is no idle second core to gain); on GPUs with "
            "NVLink the balance is different and this figure does not predict it."
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_seqrec.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    md = args.out / "training.md"
    text = md.read_text(encoding="utf-8") if md.is_file() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + text[text.index(END) + len(END) + 1 :]
    md.write_text(text.rstrip("\n") + "\n\n" + markdown(result), encoding="utf-8")
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
