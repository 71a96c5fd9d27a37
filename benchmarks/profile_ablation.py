"""Paired profile-fusion ablation over runs that bench_quality.py already trained.

    python benchmarks/profile_ablation.py --runs runs/bench --suite movielens --seeds 0 1 2

For each seed, the run with profiles (``--with``, default ``seqrec``) and the one without
(``--without``, default ``seqrec-no-profile``) were trained on the same split with the same seed, so
their difference is paired. Reported, for validation (the best epoch's figures, which the runs were
selected on) and test NDCG@10 / HR@10:

* per seed: with, without and the difference (with - without);
* the mean difference, the standard deviation of the per-seed differences, and the paired t
  statistic (mean / (std / sqrt(n))); |t| below about 4.3 (two-sided 95%, 2 degrees of freedom for
  3 seeds) is within seed noise;
* a paired bootstrap over test users (each user's difference averaged over the seeds, users
  resampled with replacement): the 95% interval of the mean difference. This needs each run's
  per-user test ranks, which the script writes with ``seqrec evaluate --per-user`` into
  ``RUNS/SUITE/seedS/CONFIG-per-user/`` (cheap: one scoring pass).

Profile fusion "helps beyond seed noise" when the mean test difference is positive, the paired t
statistic exceeds the two-sided 95% critical value and the user-bootstrap interval excludes 0.
Writes ``benchmarks/results/<results>_profile_ablation.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("ndcg@10", "hr@10")
# Two-sided 95% critical values of Student's t by degrees of freedom (n seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paired(with_values: list[float], without_values: list[float]) -> dict:
    """Mean, std and paired t statistic of the per-seed differences (with - without)."""
    diffs = [a - b for a, b in zip(with_values, without_values, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if n > 1 else 0.0
    t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else math.copysign(math.inf, mean) if mean else 0.0
    return {
        "with": with_values,
        "without": without_values,
        "diff": diffs,
        "mean_diff": mean,
        "std_diff": std,
        "t": t,
        "t95": T95.get(n - 1),
        "beyond_seed_noise": bool(n > 1 and n - 1 in T95 and abs(t) > T95[n - 1]),
    }


def bootstrap(diff_per_user: np.ndarray, rounds: int = 10000, seed: int = 0) -> dict:
    """95% interval of the mean of `diff_per_user`, users resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(diff_per_user)
    means = diff_per_user[rng.integers(0, n, size=(rounds, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"users": n, "mean_diff": float(diff_per_user.mean()), "ci95": [float(low), float(high)]}


def per_user(run: Path, data: Path, seqrec: list[str]) -> pd.DataFrame:
    """The run's per-user test results (written once with `seqrec evaluate --per-user`)."""
    out = run.parent / f"{run.name}-per-user"
    path = out / "per_user.csv"
    if not path.is_file():
        cmd = [*seqrec, "evaluate", "--checkpoint", str(run / "best"), "--data", str(data), "--split", "test"]
        subprocess.check_call([*cmd, "--per-user", "--out", str(out)], stdout=subprocess.DEVNULL)
    return pd.read_csv(path).set_index("user_idx").sort_index()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench"), help="bench_quality.py's --runs folder.")
    p.add_argument("--suite", default="movielens")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--with", dest="with_", default="seqrec", help="The suite's row with profiles.")
    p.add_argument("--without", default="seqrec-no-profile", help="The suite's row without profiles.")
    args = p.parse_args()
    bench = _bench()
    spec = bench.SUITES[args.suite]
    runs = Path(args.runs) / args.suite
    folders = {name: spec["models"][name] for name in (args.with_, args.without)}

    def run_dir(name: str, seed: int) -> Path:
        return runs / f"seed{seed}" / folders[name]

    figures: dict[str, dict] = {}
    for split in ("valid", "test"):
        for m in METRICS:
            values = {}
            for name in (args.with_, args.without):
                vals = []
                for seed in args.seeds:
                    run = run_dir(name, seed)
                    if split == "test":
                        vals.append(json.loads((run / "result.json").read_text())["metrics"][m])
                    else:
                        vals.append(json.loads((run / "best_metrics.json").read_text())["metrics"][m])
                values[name] = vals
            figures[f"{split} {m}"] = paired(values[args.with_], values[args.without])

    seqrec = bench.seqrec()
    data = runs / "data"
    users: dict[str, dict] = {}
    for m in METRICS:
        diffs = []
        for seed in args.seeds:
            a = per_user(run_dir(args.with_, seed), data, seqrec)
            b = per_user(run_dir(args.without, seed), data, seqrec)
            if not a.index.equals(b.index):
                raise SystemExit(f"seed {seed}: the two runs were scored on different users")
            diffs.append((a[m] - b[m]).to_numpy())
        users[f"test {m}"] = bootstrap(np.mean(diffs, axis=0))

    test = figures["test ndcg@10"]
    ci = users["test ndcg@10"]["ci95"]
    helps = test["mean_diff"] > 0 and test["beyond_seed_noise"] and ci[0] > 0
    summary = {
        "suite": args.suite,
        "with": f"train/configs/{folders[args.with_]}.yaml",
        "without": f"train/configs/{folders[args.without]}.yaml",
        "seeds": args.seeds,
        "command": "python benchmarks/profile_ablation.py " + " ".join(sys.argv[1:]),
        "paired_over_seeds": figures,
        "user_bootstrap": users,
        "profile_helps_beyond_noise": helps,
    }
    stem = f"{spec['results']}_profile_ablation"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_markdown(summary, args.with_, args.without, RESULTS / f"{stem}.md")
    print((RESULTS / f"{stem}.md").read_text())
    return 0


def write_markdown(summary: dict, with_: str, without: str, path: Path) -> None:
    seeds = summary["seeds"]
    lines = [
        f"# Profile-fusion ablation: {summary['suite']}",
        "",
        f"Command: `{summary['command']}` (after `bench_quality.py --suite {summary['suite']}` trained the runs).",
        "",
        f"{with_}: `{summary['with']}`; {without}: `{summary['without']}`. Difference = with - without, "
        "paired by seed (same split, same seed).",
        "",
        "| figure | " + " | ".join(f"seed {s}: with / without / diff" for s in seeds)
        + " | mean diff | std of diffs | paired t (95% crit.) |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]  # fmt: skip
    for key, f in summary["paired_over_seeds"].items():
        cells = [
            f"{a:.4f} / {b:.4f} / {d:+.4f}"
            for a, b, d in zip(f["with"], f["without"], f["diff"], strict=True)
        ]
        crit = f"{f['t95']:.2f}" if f["t95"] else "n/a"
        lines.append(
            f"| {key} | " + " | ".join(cells) + f" | {f['mean_diff']:+.4f} | {f['std_diff']:.4f} | "
            f"{f['t']:+.2f} ({crit}) |"
        )
    lines += [
        "",
        "Paired bootstrap over test users (each user's difference averaged over the seeds; 10,000 resamples):",
        "",
        "| figure | users | mean diff | 95% interval |",
        "|---|---:|---:|---|",
    ]
    for key, u in summary["user_bootstrap"].items():
        lines.append(
            f"| {key} | {u['users']} | {u['mean_diff']:+.4f} | [{u['ci95'][0]:+.4f}, {u['ci95'][1]:+.4f}] |"
        )
    test = summary["paired_over_seeds"]["test ndcg@10"]
    if summary["profile_helps_beyond_noise"]:
        verdict = "helps beyond seed noise"
    elif test["mean_diff"] < 0 and test["beyond_seed_noise"]:
        verdict = "does NOT help: it lowers test NDCG@10 beyond seed noise"
    else:
        verdict = "does NOT help beyond noise"
    lines += ["", f"Verdict (test NDCG@10, paired t and user bootstrap): profile fusion {verdict}."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
