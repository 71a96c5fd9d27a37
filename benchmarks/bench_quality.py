"""Quality benchmark: every row is a committed run config, trained on the same split, several seeds.

    python benchmarks/bench_quality.py --suite beauty [--seeds 0 1 2] [--runs runs/bench]

Each row of a suite is ``train/configs/<config>.yaml``; the benchmark adds only the data path, the
seed and the output folder (and a shared feature cache folder, which changes no result), so
``seqrec train --config train/configs/<config>.yaml --data DATA --output OUT train.seed=S`` reproduces
the row. Suites (data in ../shared/data, prepared into the runs folder, never copied here):

* beauty       Amazon Beauty 5-core, leave-one-out: results/beauty.{json,md,png}.
* beauty-cold  Beauty with 10% of the items (seed 0) removed from training entirely
               (data.cold_items=0.1); results/cold.{json,md}: warm and cold test slices.
* movielens    MovieLens-100K with and without profiles (the fusion ablation; the headline row is
               without, see results/movielens_profile_ablation.md).
* taobao       Taobao UserBehavior head, `buy` as the target behaviour.

Every model is trained with `seqrec train` and scored with `seqrec evaluate` on the test split
(full ranking over the catalogue, the user's history items masked, ties broken against the
target), each in its own process so its wall time and peak memory are its own. Rerunning the same
command skips finished runs and resumes unfinished ones (`--resume auto`), so a suite can be
finished later with the same command. Run folders are named after the config (the late-fusion
rows find their member runs beside them, see seqrec/training/late_fusion.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "train" / "configs"
METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")

BEAUTY_MODELS = {
    "popularity": "beauty-popularity",
    "sasrec": "beauty-sasrec",
    "seqrec-text": "beauty-text",
    "seqrec-hybrid": "beauty-hybrid",
    "seqrec-fusion": "beauty-fusion",
    "seqrec-fusion-hybrid": "beauty-fusion-hybrid",
    "seqrec-alphafuse": "beauty-alphafuse",
}

SUITES: dict[str, dict] = {
    "beauty": {
        "source": "amazon",
        "input": "amazon-beauty-2014",
        "prepare": [],
        "results": "beauty",
        "models": BEAUTY_MODELS,
        # The row held against SASRec-CE (the target) is chosen on VALIDATION among the seqrec rows.
        "seqrec": "select",
    },
    "beauty-cold": {
        "source": "amazon",
        "input": "amazon-beauty-2014",
        "prepare": ["cold_items=0.1", "cold_items_seed=0"],
        "results": "cold",
        "models": {
            "popularity": "beauty-popularity",
            "sasrec": "beauty-sasrec",
            "seqrec-text": "beauty-cold-text",
            "seqrec-hybrid": "beauty-cold-hybrid",
        },
        "seqrec": "seqrec-hybrid",
    },
    # The same data with a 10-epoch budget for the ID model and the hybrid (closer to convergence
    # than the 5-epoch rows); data and feature cache shared with the beauty suite.
    "beauty-10ep": {
        "source": "amazon",
        "input": "amazon-beauty-2014",
        "prepare": [],
        "data_of": "beauty",
        "results": "beauty_10ep",
        "models": {
            "sasrec": "beauty-sasrec-10ep",
            "seqrec-hybrid": "beauty-hybrid-10ep",
            "seqrec-hybrid-reg": "beauty-hybrid-reg-10ep",
            "seqrec-fusion-hybrid": "beauty-fusion-hybrid-10ep",
        },
        "seqrec": "select",
    },
    "beauty-30ep": {
        "source": "amazon",
        "input": "amazon-beauty-2014",
        "prepare": [],
        "data_of": "beauty",
        "results": "beauty_30ep",
        "models": {
            "sasrec": "beauty-sasrec-30ep",
            "seqrec-hybrid": "beauty-hybrid-30ep",
            "seqrec-fusion-hybrid": "beauty-fusion-hybrid-30ep",
            "seqrec-llminit": "beauty-llminit-30ep",
            "seqrec-fusion-llminit": "beauty-fusion-llminit-30ep",
            "seqrec-fusion3": "beauty-fusion3-30ep",
            "seqrec-sasrec-text": "beauty-sasrec-text-30ep",
            "seqrec-fusion-text3": "beauty-fusion-text3-30ep",
        },
        "seqrec": "select",
    },
    "movielens": {
        "source": "movielens",
        "input": "movielens-100k",
        "prepare": [],
        "results": "movielens",
        "models": {
            "popularity": "movielens-popularity",
            "sasrec": "movielens-sasrec",
            "seqrec": "movielens-seqrec",
            "seqrec-no-profile": "movielens-seqrec-no-profile",
        },
        # Profile fusion off is the MovieLens default: it did not help (results/movielens_profile_ablation.md).
        "seqrec": "seqrec-no-profile",
    },
    "taobao": {
        "source": "taobao",
        "input": "taobao-userbehavior-head",
        "prepare": ["target_behaviors=[buy]"],
        "results": "taobao",
        "models": {"popularity": "taobao-popularity", "sasrec": "taobao-sasrec", "seqrec": "taobao-seqrec"},
        "seqrec": "seqrec",
    },
}


def seqrec(*args: str) -> list[str]:
    local = ROOT / ".venv" / "bin" / "seqrec"
    return [str(local if local.is_file() else Path(sys.executable).parent / "seqrec"), *args]


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` in its own process; wall seconds and ITS peak RSS (MiB): from wait4 on that child,
    not RUSAGE_CHILDREN (the largest of every child so far: each row after a big one would report
    the big one's memory)."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"command failed ({code}), see {log}: {' '.join(cmd)}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": usage.ru_maxrss / 1024}


def prepare(suite: str, runs: Path) -> Path:
    spec = SUITES[suite]
    data = runs / spec.get("data_of", suite) / "data"
    src = SHARED / spec["input"]
    if not src.is_dir():
        raise SystemExit(f"{src} not found: this suite needs ../shared/data/{spec['input']}")
    if not (data / "meta.json").is_file():
        cmd = seqrec(
            "data",
            "prepare",
            "--source",
            spec["source"],
            "--input",
            str(src),
            "--out",
            str(data),
            *spec["prepare"],
        )
        subprocess.check_call(cmd)
    return data


def run_model(suite: str, name: str, seed: int, runs: Path, data: Path) -> dict:
    """Train (or resume) and evaluate one row; returns its test metrics, time and memory."""
    config = SUITES[suite]["models"][name]
    out = runs / suite / f"seed{seed}" / config  # named after the config: ensembles find members
    done = out / "result.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "valid_ndcg@10": _valid_ndcg(out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    # A cache location only (features are rebuilt when their settings differ): no result changes.
    cache = f"train.features_dir={runs / SUITES[suite].get('data_of', suite) / 'features'}"
    train_cmd = seqrec(
        "train", "--config", str(CONFIGS / f"{config}.yaml"), "--data", str(data), "--output", str(out),
        "--resume", "auto", f"train.seed={seed}", cache,
    )  # fmt: skip
    # Beside the run folder, not in it: `seqrec train` refuses a folder that holds other files.
    log = out.parent / f"{config}.bench.log"
    trained = out / "train.json"  # written once training ended: a rerun evaluates, never retrains
    if trained.is_file():
        train = json.loads(trained.read_text())
    else:
        train = run_measured(train_cmd, log)
        trained.write_text(json.dumps(train, indent=1))
    eval_cmd = seqrec("evaluate", "--checkpoint", str(out / "best"), "--data", str(data), "--split", "test")
    evaluation = run_measured(eval_cmd, log)
    metrics = json.loads((out / "best" / "eval-test" / "metrics.json").read_text())
    result = {
        "metrics": {k: metrics[k] for k in METRICS},
        "train_seconds": train["seconds"],
        "train_peak_rss_mib": train["peak_rss_mib"],
        "eval_seconds": evaluation["seconds"],
        "command": " ".join(train_cmd),
        "protocol": metrics.get("protocol"),
        "slices": metrics.get("slices"),
        "valid_ndcg@10": _valid_ndcg(out),
        "cold_boost": _cold_boost(out),
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def _valid_ndcg(out: Path) -> float | None:
    """The run's best validation NDCG@10 (what training or the fusion weight was selected on)."""
    best = out / "best_metrics.json"
    return json.loads(best.read_text())["metrics"]["ndcg@10"] if best.is_file() else None


def _cold_boost(out: Path) -> dict | None:
    """The new-item boost chosen on validation (model.items.cold_boost_grid), with its cost."""
    path = out / "best" / "cold_boost.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    rows = {r["boost"]: r for r in spec["grid"]}
    chosen, off = rows[spec["chosen"]], rows.get(0.0)
    return {
        "chosen": spec["chosen"],
        "valid_ndcg@10": chosen["metrics"]["ndcg@10"],
        "valid_cold_over_warm": chosen["cold_over_warm"],
        "valid_ndcg@10_without": off["metrics"]["ndcg@10"] if off else None,
        "valid_cold_over_warm_without": off["cold_over_warm"] if off else None,
    }


def select_main(suite: str, results: dict[str, list[dict]]) -> str | None:
    """The suite's seqrec row: fixed, or ("select") the seqrec-* row with the best mean VALIDATION
    NDCG@10 -- never test, so the headline row is not picked by its test figure."""
    main = SUITES[suite]["seqrec"]
    if main != "select":
        return main
    valid = {
        name: statistics.fmean(r["valid_ndcg@10"] for r in runs)
        for name, runs in results.items()
        if name.startswith("seqrec") and runs and all(r.get("valid_ndcg@10") is not None for r in runs)
    }
    return max(valid, key=lambda n: valid[n]) if valid else None


def summarize(suite: str, seeds: list[int], results: dict[str, list[dict]], command: str) -> dict:
    table = {}
    for name, runs in results.items():
        row = {}
        for m in METRICS:
            values = [r["metrics"][m] for r in runs]
            row[m] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        row["train_seconds"] = {"mean": statistics.fmean(r["train_seconds"] for r in runs)}
        row["train_peak_rss_mib"] = {"mean": statistics.fmean(r["train_peak_rss_mib"] for r in runs)}
        row["seeds_done"] = len(runs)
        valid = [r["valid_ndcg@10"] for r in runs if r.get("valid_ndcg@10") is not None]
        row["valid_ndcg@10"] = {"mean": statistics.fmean(valid) if valid else None}
        table[name] = row
    protocol = next(iter(results.values()))[0]["protocol"]
    target = {}
    main = select_main(suite, results)
    if main in table and "sasrec" in table:  # seqrec NDCG@10 >= 1.10 x SASRec-CE's
        ratio = table[main]["ndcg@10"]["mean"] / max(table["sasrec"]["ndcg@10"]["mean"], 1e-12)
        target = {
            "quality_target": {
                "row": main, "seqrec_over_sasrec_ndcg@10": ratio, "target": 1.10, "met": ratio >= 1.10,
                "row_chosen_by": "fixed" if SUITES[suite]["seqrec"] != "select" else "best mean validation NDCG@10",
            }
        }  # fmt: skip
    slices = {name: _slices(runs) for name, runs in results.items()}
    return {
        "suite": suite,
        "data": SUITES[suite]["input"],
        "split": "leave-one-out (last eligible event = test, the one before = valid)",
        "protocol": protocol,
        "tie_rule": "pessimistic: items scoring equal to the target rank above it",
        "seeds": seeds,
        "command": command,
        "configs": {name: f"train/configs/{SUITES[suite]['models'][name]}.yaml" for name in results},
        "per_model_commands": {name: runs[0]["command"] for name, runs in results.items()},
        "slices": slices,
        "runs": {name: [{"cold_boost": r.get("cold_boost")} for r in runs] for name, runs in results.items()},
        **target,
        **table,
    }


def _slices(runs: list[dict]) -> dict:
    """Warm / cold test slices (target item with / without training events), mean over seeds."""
    out: dict = {}
    for label in ("warm", "cold"):
        rows = [r for r in (_slice(run, label) for run in runs) if r]
        if rows:
            out[label] = {
                "users": rows[0].get("users"),
                **{m: statistics.fmean(r[m] for r in rows) for m in METRICS if m in rows[0]},
            }
    if "warm" in out and "cold" in out:  # cold-start target: cold NDCG@10 >= 0.5 x warm NDCG@10
        out["cold_over_warm_ndcg@10"] = out["cold"]["ndcg@10"] / max(out["warm"]["ndcg@10"], 1e-12)
    return out


def _slice(run: dict, label: str) -> dict | None:
    found = ((run.get("slices") or {}).get("target_item") or {}).get(label)
    return found if isinstance(found, dict) else None


def _ablation_lines(suite: str, results: Path) -> list[str]:
    """The profile-fusion ablation's figures (benchmarks/profile_ablation.py's JSON), when present."""
    found = results / f"{SUITES[suite]['results']}_profile_ablation.json"
    if not found.is_file():
        return []
    a = json.loads(found.read_text())
    t = a["paired_over_seeds"]["test ndcg@10"]
    ci = a["user_bootstrap"]["test ndcg@10"]["ci95"]
    v = a["paired_over_seeds"]["valid ndcg@10"]
    return [
        "",
        f"Profile-fusion ablation (`{a['command']}`, {found.name}), with - without profile, paired by seed "
        f"{a['seeds']}: test NDCG@10 " + ", ".join(f"{d:+.4f}" for d in t["diff"])
        + f" (mean {t['mean_diff']:+.4f}, paired t {t['t']:+.2f}, 95% critical {t['t95']:.2f}; "
        f"user bootstrap 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}]); validation NDCG@10 mean "
        f"{v['mean_diff']:+.4f} (t {v['t']:+.2f}). Profile fusion helps beyond noise: "
        f"{'yes' if a['profile_helps_beyond_noise'] else 'no'}. The suite's headline seqrec row: "
        f"{SUITES[suite]['seqrec']}.",
    ]  # fmt: skip


def write_markdown(summary: dict, models: list[str], path: Path) -> None:
    lines = [
        f"# Quality: {summary['suite']}",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Data: `../shared/data/{summary['data']}`; split: {summary['split']}; protocol: full ranking over "
        f"the catalogue with the user's history masked; ties: {summary['tie_rule']}; seeds: {summary['seeds']}.",
        "",
        "| model | valid ndcg@10 | " + " | ".join(METRICS) + " | train s | peak RSS MiB | seeds |",
        "|---|" + "---:|" * (len(METRICS) + 4),
    ]
    for name in models:
        r = summary[name]
        cells = [f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in METRICS]
        valid = r["valid_ndcg@10"]["mean"]
        lines.append(
            f"| {name} | {'' if valid is None else f'{valid:.4f}'} | "
            + " | ".join(cells)
            + f" | {r['train_seconds']['mean']:.0f} | "
            f"{r['train_peak_rss_mib']['mean']:.0f} | {r['seeds_done']} |"
        )
    if "quality_target" in summary:
        t = summary["quality_target"]
        lines += [
            "",
            f"{t['row']} (row chosen by {t['row_chosen_by']}) / SASRec-CE test NDCG@10 = "
            f"{t['seqrec_over_sasrec_ndcg@10']:.3f} "
            f"(target {t['target']:.2f}: {'met' if t['met'] else 'NOT met'}"
            + (
                f" on {len(summary['seeds'])} seed(s); the target asks for the mean of 3)."
                if len(summary["seeds"]) < 3
                else ")."
            ),
        ]
    if any(SUITES[summary["suite"]]["models"].get(n, "").endswith("fusion") for n in models):
        lines += [
            "",
            "A late-fusion row's train time is the weight selection only; its members' runs are their own rows.",
        ]
    if any(summary["slices"].get(n) for n in models):
        lines += ["", "Test slices by target item (cold = no training event):", ""]
        lines += ["| model | slice | users | hr@10 | ndcg@10 |", "|---|---|---:|---:|---:|"]
        for name in models:
            for label, r in summary["slices"].get(name, {}).items():
                if not isinstance(r, dict):
                    continue
                lines.append(
                    f"| {name} | {label} | {r.get('users')} | {r.get('hr@10', float('nan')):.4f} | "
                    f"{r.get('ndcg@10', float('nan')):.4f} |"
                )
    ratios = {n: summary["slices"].get(n, {}).get("cold_over_warm_ndcg@10") for n in models}
    if any(v is not None for v in ratios.values()):
        lines += ["", "Cold / warm NDCG@10 per model (target for seqrec: >= 0.5, and above popularity on cold): "
                  + ", ".join(f"{n} {v:.2f}" for n, v in ratios.items() if v is not None) + "."]  # fmt: skip
    boosts = {n: runs[0].get("cold_boost") for n, runs in summary["runs"].items()}
    if any(boosts.values()):
        lines += [
            "",
            "New-item boost (`model.items.cold_boost`, chosen on validation; seed 0): what it costs and gives on VALIDATION:",
            "",
        ]
        lines += [
            "| model | boost | valid NDCG@10 without -> with | valid cold/warm without -> with |",
            "|---|---:|---:|---:|",
        ]
        for n, b in boosts.items():
            if b:
                lines.append(
                    f"| {n} | {b['chosen']:g} | {b['valid_ndcg@10_without']:.4f} -> {b['valid_ndcg@10']:.4f} | "
                    f"{b['valid_cold_over_warm_without']:.2f} -> {b['valid_cold_over_warm']:.2f} |"
                )
    lines += _ablation_lines(summary["suite"], path.parent)
    missing = [n for n in SUITES[summary["suite"]]["models"] if n not in models]
    if missing:
        lines += ["", "Rows of this suite not run by this command: " + ", ".join(missing) + "."]
    lines += ["", "Configs: " + ", ".join(f"{n}: `{summary['configs'][n]}`" for n in models)]
    lines += ["", "Per-model training commands (seed 0):", ""]
    lines += [f"- {name}: `{summary['per_model_commands'][name]}`" for name in models]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(summary: dict, models: list[str], runs: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in models:
        folder = SUITES[summary["suite"]]["models"][name]
        hist = runs / summary["suite"] / f"seed{summary['seeds'][0]}" / folder / "valid_history.jsonl"
        if hist.is_file():
            rows = [json.loads(x) for x in hist.read_text().splitlines() if x.strip()]
            left.plot([r["epoch"] + 1 for r in rows], [r["ndcg@10"] for r in rows], label=name)
    left.set_xlabel("epoch")
    left.set_ylabel("validation NDCG@10")
    left.set_title(f"Validation NDCG@10 during training (seed {summary['seeds'][0]})")
    left.legend()
    names = list(models)
    means = [summary[n]["ndcg@10"]["mean"] for n in names]
    stds = [summary[n]["ndcg@10"]["std"] for n in names]
    right.bar(names, means, yerr=stds, capsize=4)
    right.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    right.set_title(f"{summary['suite']}: full ranking, history masked")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", help="Subset of the suite's models (default: all).")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench"), help="Working folder (data, models).")
    p.add_argument("--no-plot", action="store_true", help="Skip the validation-curve figure.")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="Shared data sets.")
    args = p.parse_args()
    runs = Path(args.runs)
    global SHARED
    SHARED = Path(args.shared)
    models = args.models or list(SUITES[args.suite]["models"])
    data = prepare(args.suite, runs)
    results: dict[str, list[dict]] = {m: [] for m in models}
    for seed in args.seeds:  # seed-major: a partial run still gives every model one seed
        for name in models:
            r = run_model(args.suite, name, seed, runs, data)
            results[name].append(r)
            print(
                f"{args.suite} seed {seed} {name}: ndcg@10 {r['metrics']['ndcg@10']:.4f} ({r['train_seconds']:.0f} s)",
                flush=True,
            )
    command = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])
    summary = summarize(args.suite, args.seeds, results, command)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = SUITES[args.suite]["results"]
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_markdown(summary, models, RESULTS / f"{stem}.md")
    if not args.no_plot:
        plot(summary, models, runs, RESULTS / f"{stem}.png")
    print((RESULTS / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
