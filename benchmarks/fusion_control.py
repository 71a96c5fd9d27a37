"""Control for the late-fusion rows: what does fusing two ID-only runs gain, with no text at all?

    python benchmarks/fusion_control.py --runs runs/bench --suite beauty-30ep --seeds 0 1 2

A late fusion of two models usually beats either alone, text or no text (an ensemble averages out
each run's noise). So a fusion row that uses text (SASRec-CE + a seqrec model) shows that text helps
only if it beats the same fusion of two SASRec-CE runs that differ by their seed. For each seed s
this fuses the finished SASRec-CE run of seed s with the ones of the next ``--size`` - 1 seeds
(cyclically over ``--seeds``; compare a K-member text fusion with ``--size K``) exactly as ``train.model=ensemble`` fuses any members (per-user z-scores, the
weight chosen on validation NDCG@10; the members are given as finished run folders, so nothing is
retrained), evaluates the fusion on test, and compares it with the single run of seed s.

Needs the SASRec rows of ``bench_quality.py --suite SUITE`` for every seed. Writes
``benchmarks/results/<results>_fusion_control.{json,md}`` (``<results>`` is the suite's results stem).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))  # run as a script or imported: bench_quality beside it


def fuse_runs(bench: Any, members: list[Path], out: Path, data: Path, seed: int) -> dict:
    """Fuse finished run folders into ``out`` (resumable: a finished fusion is read back)."""
    done = out.parent / f"{out.name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train": {"model": "ensemble", "eval_max_users": 4000, "tracker": "none"},
                "ensemble": {"members": [str(m) for m in members], "normalize": "zscore"},
            }
        )
    )
    log = out.parent / f"{out.name}.bench.log"
    args = ["--config", str(config), "--data", str(data), "--output", str(out), f"train.seed={seed}"]
    bench.run_measured(bench.seqrec("train", *args, "--overwrite"), log)
    bench.run_measured(
        bench.seqrec("evaluate", "--checkpoint", str(out / "best"), "--data", str(data), "--split", "test"),
        log,
    )
    test = json.loads((out / "best" / "eval-test" / "metrics.json").read_text())
    best = json.loads((out / "best_metrics.json").read_text())
    result = {
        "members": [str(m) for m in members],
        "weights": best.get("weights", [1.0 - best["weight"], best["weight"]]),
        "valid_ndcg@10": best["metrics"]["ndcg@10"],
        "test_ndcg@10": test["ndcg@10"],
        "test_hr@10": test["hr@10"],
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="bench_quality.py's --runs folder")
    p.add_argument("--suite", default="beauty-30ep")
    p.add_argument("--model", default="sasrec", help="the suite's row to pair with itself")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=2, help="runs per fusion (at most the number of seeds)")
    args = p.parse_args()
    if not 2 <= args.size <= len(args.seeds):
        raise SystemExit(f"--size must be between 2 and the number of seeds ({len(args.seeds)})")
    import bench_quality as bench

    spec = bench.SUITES[args.suite]
    config = spec["models"][args.model]
    data = args.runs / spec.get("data_of", args.suite) / "data"
    rows = []
    for i, seed in enumerate(args.seeds):
        others = [args.seeds[(i + k) % len(args.seeds)] for k in range(1, args.size)]
        folders = [args.runs / args.suite / f"seed{s}" / config for s in [seed, *others]]
        for folder in folders:
            if not (folder / "result.json").is_file():
                raise SystemExit(f"{folder} is not finished: run bench_quality.py --suite {args.suite} first")
        alone = json.loads((folders[0] / "result.json").read_text())
        tag = "-".join(f"seed{s}" for s in others)
        out = args.runs / args.suite / f"seed{seed}" / f"control-{config}-with-{tag}"
        fused = fuse_runs(bench, folders, out, data, seed)
        rows.append({"seed": seed, "other_seeds": others, "single_test_ndcg@10": alone["metrics"]["ndcg@10"],
                     "single_valid_ndcg@10": alone.get("valid_ndcg@10"), **fused})  # fmt: skip
    ratios = [r["test_ndcg@10"] / r["single_test_ndcg@10"] for r in rows]
    summary = {
        "suite": args.suite,
        "model": args.model,
        "size": args.size,
        "command": f"python benchmarks/fusion_control.py --suite {args.suite} --model {args.model} "
        f"--seeds {' '.join(map(str, args.seeds))} --size {args.size}",
        "rows": rows,
        "mean_ratio": statistics.fmean(ratios),
        "mean_fused_test_ndcg@10": statistics.fmean(r["test_ndcg@10"] for r in rows),
        "mean_single_test_ndcg@10": statistics.fmean(r["single_test_ndcg@10"] for r in rows),
    }
    stem = f"{spec['results']}_fusion_control{'' if args.size == 2 else args.size}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"# Fusion control: {args.size} ID-only {args.model} runs fused ({args.suite})",
        "",
        f"Command: `{summary['command']}` (after `bench_quality.py --suite {args.suite}` trained every seed).",
        "",
        "Each row fuses the run of `seed` with the runs of `other seeds` (no text anywhere), weights "
        "chosen on validation as in `train.model=ensemble`. A fusion of as many members that uses text "
        "must beat this to show that the text, not the ensembling, helps.",
        "",
        "| seed | other seeds | weights | single valid | single test NDCG@10 | fused valid | fused test NDCG@10 | fused / single |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, ratio in zip(rows, ratios):
        lines.append(
            f"| {r['seed']} | {', '.join(map(str, r['other_seeds']))} | {', '.join(f'{w:.1f}' for w in r['weights'])} | {r['single_valid_ndcg@10']:.4f} | "
            f"{r['single_test_ndcg@10']:.4f} | {r['valid_ndcg@10']:.4f} | {r['test_ndcg@10']:.4f} | {ratio:.3f} |"
        )
    lines += [
        "",
        f"Mean test NDCG@10: single {summary['mean_single_test_ndcg@10']:.4f}, fused "
        f"{summary['mean_fused_test_ndcg@10']:.4f}; mean ratio {summary['mean_ratio']:.3f}.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
