"""Every Beauty method tried, kept or dropped, with its VALIDATION NDCG@10 (selection never uses test).

    python benchmarks/collect_tries.py --runs runs/bench [--seed 0]

Reads the run folders bench_quality.py wrote (``<runs>/<suite>/seed<S>/<config>/``): each run's best
validation metrics (best_metrics.json), how far it trained (valid_history.jsonl), and for the late
fusion every weight of its grid (best/late_fusion.json). Methods listed in NOT_RUN were not run on
this machine; they are recorded with the reason. Writes results/beauty_tries.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

TRIES = [
    ("beauty", "beauty-sasrec", "SASRec-CE (ID only), the baseline"),
    ("beauty", "beauty-text", "seqrec, text item tower only (frozen MiniLM of title + category path)"),
    (
        "beauty",
        "beauty-hybrid",
        "seqrec hybrid: text + IDs initialised from text PCA (LLMInit), ID dropout 0.2, cold IDs zeroed",
    ),
    (
        "beauty",
        "beauty-fusion",
        "late fusion SASRec-CE + seqrec text, z-scored scores, weight on validation (EnsRec)",
    ),
    (
        "beauty",
        "beauty-fusion-hybrid",
        "late fusion SASRec-CE + seqrec hybrid, z-scored scores, weight on validation (EnsRec)",
    ),
    (
        "beauty",
        "beauty-alphafuse",
        "seqrec AlphaFuse-style: frozen whitened text (top 64 principal directions) + IDs in the null space",
    ),
    ("beauty-10ep", "beauty-sasrec-10ep", "10-epoch budget: SASRec-CE"),
    ("beauty-10ep", "beauty-hybrid-10ep", "10-epoch budget: seqrec hybrid"),
    ("beauty-10ep", "beauty-fusion-hybrid-10ep", "10-epoch budget: late fusion SASRec-CE + hybrid"),
    (
        "beauty-10ep",
        "beauty-hybrid-reg-10ep",
        "10-epoch budget: seqrec hybrid regularised (ID dropout 0.5, weight decay 0.05)",
    ),
    ("beauty-30ep", "beauty-sasrec-30ep", "30-epoch budget: SASRec-CE"),
    ("beauty-30ep", "beauty-hybrid-30ep", "30-epoch budget: seqrec hybrid"),
    ("beauty-30ep", "beauty-fusion-hybrid-30ep", "30-epoch budget: late fusion SASRec-CE + hybrid"),
    (
        "beauty-30ep",
        "beauty-llminit-30ep",
        "30-epoch budget: SASRec with IDs initialised from the text PCA (LLMInit)",
    ),
    (
        "beauty-30ep",
        "beauty-sasrec-text-30ep",
        "30-epoch budget: SASRec with a text item tower (ID + projected frozen text) and LLMInit IDs",
    ),
    ("beauty-30ep", "beauty-fusion-llminit-30ep", "30-epoch budget: late fusion LLMInit SASRec + hybrid"),
    (
        "beauty-30ep",
        "beauty-fusion3-30ep",
        "30-epoch budget: late fusion SASRec-CE + LLMInit SASRec + hybrid",
    ),
    (
        "beauty-30ep",
        "beauty-fusion-text3-30ep",
        "30-epoch budget: late fusion of text-reading models only: LLMInit SASRec + SASRec text items + hybrid",
    ),
    ("beauty-cold", "beauty-sasrec", "cold suite: SASRec-CE"),
    (
        "beauty-cold",
        "beauty-text",
        "cold suite: seqrec text, held-out items still negatives in the softmax (dropped: cold slice near 0)",
    ),
    (
        "beauty-cold",
        "beauty-cold-text",
        "cold suite: seqrec text, training softmax over seen items only, new-item boost chosen on validation",
    ),
    (
        "beauty-cold",
        "beauty-cold-hybrid",
        "cold suite: seqrec hybrid, training softmax over seen items only, new-item boost chosen on validation",
    ),
]
NOT_RUN = [
    ("LLM-ESR dual view + self-distillation", "not implemented"),
]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def collect(runs: Path, seed: int) -> list[dict]:
    rows = []
    for suite, config, what in TRIES:
        folder = runs / suite / f"seed{seed}" / config
        best = folder / "best_metrics.json"
        if not best.is_file():
            rows.append({"suite": suite, "config": config, "what": what, "status": "not finished"})
            continue
        b = json.loads(best.read_text())
        hist = _jsonl(folder / "valid_history.jsonl")
        row = {
            "suite": suite, "config": f"train/configs/{config}.yaml", "what": what,
            "valid_ndcg@10": b["metrics"].get("ndcg@10"), "valid_hr@10": b["metrics"].get("hr@10"),
            "best_step": b.get("step"), "epochs_validated": len(hist),
            "valid_curve_ndcg@10": [round(h.get("ndcg@10", float("nan")), 4) for h in hist],
        }  # fmt: skip
        fusion = folder / "best" / "late_fusion.json"
        if fusion.is_file():
            spec = json.loads(fusion.read_text())
            row["fusion_weights"] = spec["weights"]
            row["fusion_grid"] = [
                {"weights": r.get("weights", [1.0 - r["weight"], r["weight"]]), "valid_ndcg@10": r["ndcg@10"]}
                for r in spec["validation"]
            ]
        boost = folder / "best" / "cold_boost.json"
        if boost.is_file():
            spec = json.loads(boost.read_text())
            row["cold_boost"] = spec["chosen"]
            row["cold_boost_grid"] = [
                {
                    "boost": r["boost"],
                    "valid_ndcg@10": r["metrics"]["ndcg@10"],
                    "valid_cold_over_warm": r["cold_over_warm"],
                }
                for r in spec["grid"]
            ]
        result = folder / "result.json"
        if result.is_file():
            res = json.loads(result.read_text())
            row["train_seconds"] = res.get("train_seconds")
            sl = (res.get("slices") or {}).get("target_item") or {}
            if "cold" in sl and "warm" in sl:  # test slices, reported, never used to select
                row["test_ndcg@10_warm"], row["test_ndcg@10_cold"] = (
                    sl["warm"]["ndcg@10"],
                    sl["cold"]["ndcg@10"],
                )
        rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = collect(Path(args.runs), args.seed)
    warm = [
        r
        for r in rows
        if r["suite"] == "beauty" and "train_seconds" in r and r.get("valid_ndcg@10") is not None
    ]
    best = max(warm, key=lambda r: r["valid_ndcg@10"]) if warm else None
    for r in rows:
        if r.get("valid_ndcg@10") is not None and "train_seconds" not in r:  # no test result: stopped
            r["status"] = f"unfinished (stopped after {r['epochs_validated']} epoch(s); resumes)"
            continue
        if r["suite"] == "beauty" and r.get("valid_ndcg@10") is not None:
            r["status"] = "kept (best on validation)" if r is best else "dropped (lower validation NDCG@10)"
            if r["config"].endswith("beauty-sasrec.yaml"):
                r["status"] = "baseline"
        elif r["suite"] in ("beauty-10ep", "beauty-30ep") and r.get("valid_ndcg@10") is not None:
            baseline = r["config"].endswith(("beauty-sasrec-10ep.yaml", "beauty-sasrec-30ep.yaml"))
            rivals = [x for x in rows if x["suite"] == r["suite"] and x.get("valid_ndcg@10") is not None
                      and "train_seconds" in x and not x["config"].endswith("sasrec-10ep.yaml")
                      and not x["config"].endswith("beauty-sasrec-30ep.yaml")]  # fmt: skip
            top = max(rivals, key=lambda x: x["valid_ndcg@10"]) if rivals else None
            r["status"] = "longer-budget row" + (
                " (baseline)" if baseline else " (kept: best seqrec row on validation)" if r is top else ""
            )
        elif r.get("valid_ndcg@10") is not None:
            r["status"] = "cold-start benchmark row"
    out = {"seed": args.seed, "selection": "validation NDCG@10 (4,000 fixed validation users)", "tries": rows,
           "not_run": [{"method": m, "why": w} for m, w in NOT_RUN],
           "command": "python benchmarks/collect_tries.py " + " ".join(sys.argv[1:])}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "beauty_tries.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    md = [
        "# Beauty: methods tried (selected on validation only)",
        "",
        f"Command: `{out['command']}`; seed {args.seed}; selection: {out['selection']}.",
        "",
        "| suite | config | method | valid NDCG@10 | epochs validated | status |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        v = r.get("valid_ndcg@10")
        md.append(
            f"| {r['suite']} | `{r['config']}` | {r['what']} | {'' if v is None else f'{v:.4f}'} | "
            f"{r.get('epochs_validated', '')} | {r.get('status', '')} |"
        )
    for r in rows:
        if "fusion_grid" in r:
            grid = r["fusion_grid"]
            many = len(grid[0]["weights"]) > 2
            if many:  # a simplex grid: the ten best rows
                grid = sorted(grid, key=lambda g: -g["valid_ndcg@10"])[:10]
            md += [
                "",
                f"Late fusion grid (`{r['config']}`), members' weights -> validation NDCG@10"
                + (" (the ten best of the grid):" if many else ":"),
                "",
            ]
            md += ["| weights | valid NDCG@10 |", "|---|---:|"]
            md += [
                f"| {', '.join(f'{w:.1f}' for w in g['weights'])} | {g['valid_ndcg@10']:.4f} |" for g in grid
            ]
        if "cold_boost_grid" in r:
            md += ["", f"New-item boost grid (`{r['config']}`; chosen: {r['cold_boost']:g}, the best validation "
                   "NDCG@10 with validation cold/warm >= 0.5):", ""]  # fmt: skip
            md += ["| boost | valid NDCG@10 | valid cold/warm NDCG@10 |", "|---:|---:|---:|"]
            md += [
                f"| {g['boost']:g} | {g['valid_ndcg@10']:.4f} | "
                + ("" if g["valid_cold_over_warm"] is None else f"{g['valid_cold_over_warm']:.2f}")
                + " |"
                for g in r["cold_boost_grid"]
            ]
    md += ["", "LoRA-tuned window encoder (train.stage=joint, then the head on tuned features), run at a small "
           "scale by its own runner (benchmarks/bench_lora.py): see lora_beauty.md."]  # fmt: skip
    md += ["", "Not run:", ""] + [f"- {m}: {w}" for m, w in NOT_RUN]
    (RESULTS / "beauty_tries.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
