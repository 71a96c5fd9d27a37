"""Evaluation throughput: the ranking step of `seqrec evaluate`, and whole checkpoints.

    python benchmarks/bench_eval.py [--checkpoints DIR ...] [--data DIR]

1. Ranking step, synthetic scores. For catalogues of 12,101 items (Amazon Beauty), 100k and 1M
   items, a batch of 256 users with 50 history items each: the full-ranking protocol's work after
   the model has scored every item (history mask, pessimistic rank of the target, all metrics),
   in users/s, against a reference measured in the same run on the same scores: `torch.topk(k=20)`,
   the least any top-K evaluator must do. Median of --repeats runs, one thread.
2. Whole checkpoints (optional): `seqrec evaluate --split test` on each --checkpoints folder, in
   its own process; users/s from the evaluator's own count and the process wall time (model
   loading and item-embedding build included).

Writes benchmarks/results/eval.json and eval.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqrec.evaluation.metrics import metrics_from_ranks, target_ranks  # noqa: E402
from seqrec.evaluation.protocols import FullRanking  # noqa: E402


def ranking_case(n_items: int, batch: int, history: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, n_items, generator=g)  # [B, N]
    hist = torch.randint(0, n_items, (batch, history), generator=g)  # [B, H]
    target = torch.randint(0, n_items, (batch,), generator=g)  # [B]
    inputs = {"eval_target": target, "history_items": hist}
    protocol = FullRanking(mask_history=True)

    def seqrec_rank() -> None:
        r = protocol.rank_input(scores, inputs)
        ranks, others = target_ranks(r.scores, r.target_col, r.exclude, r.exclude_cols)
        metrics_from_ranks(ranks, (5, 10, 20), others)

    def topk_only() -> None:
        scores.topk(20, dim=1)

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    ours, ref = timed(seqrec_rank), timed(topk_only)
    return {
        "n_items": n_items,
        "batch_users": batch,
        "history_items": history,
        "seqrec_users_per_s": batch / ours,
        "topk_users_per_s": batch / ref,
        "ratio_seqrec_over_topk_time": ours / ref,
    }


def checkpoint_case(checkpoint: Path, data: Path | None) -> dict:
    cmd = [
        str(ROOT / ".venv" / "bin" / "seqrec"),
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--split",
        "test",
    ]
    if data is not None:
        cmd += ["--data", str(data)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    metrics = json.loads((checkpoint / "eval-test" / "metrics.json").read_text())
    users = int(metrics["n_users"])
    return {
        "checkpoint": str(checkpoint),
        "model": json.loads((checkpoint / "config.json").read_text()).get("train", {}).get("model", "?")
        if (checkpoint / "config.json").is_file()
        else checkpoint.parent.name,
        "users": users,
        "wall_seconds": wall,
        "users_per_s_wall": users / wall,
        "ndcg@10": metrics["ndcg@10"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[12101, 100_000, 1_000_000])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--checkpoints", type=Path, nargs="*", default=[])
    p.add_argument("--data", type=Path, default=None, help="Prepared data for the checkpoints.")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    torch.set_num_threads(1)
    ranking = [ranking_case(n, args.batch, args.history, args.repeats) for n in args.items]
    checkpoints = [checkpoint_case(c, args.data) for c in args.checkpoints]
    command = "python benchmarks/bench_eval.py " + " ".join(sys.argv[1:])
    result = {"command": command, "threads": 1, "ranking": ranking, "checkpoints": checkpoints}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Evaluation throughput",
        "",
        f"Command: `{command}` (one torch thread, shared 2-core CPU).",
        "",
        f"## Ranking step (full ranking, history masked, {args.batch} users x {args.history} history items)",
        "",
        "| catalogue | seqrec rank + metrics, users/s | reference topk(20), users/s | time ratio |",
        "|---:|---:|---:|---:|",
    ]
    for r in ranking:
        lines.append(
            f"| {r['n_items']:,} | {r['seqrec_users_per_s']:,.0f} | {r['topk_users_per_s']:,.0f} "
            f"| {r['ratio_seqrec_over_topk_time']:.2f} |"
        )
    if checkpoints:
        lines += [
            "",
            "## Whole checkpoints (`seqrec evaluate --split test`, own process, loading included)",
            "",
            "| checkpoint | users | wall s | users/s | ndcg@10 |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in checkpoints:
            lines.append(
                f"| {c['checkpoint']} | {c['users']} | {c['wall_seconds']:.1f} | {c['users_per_s_wall']:.0f} "
                f"| {c['ndcg@10']:.4f} |"
            )
    (args.out / "eval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
