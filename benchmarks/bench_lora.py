"""The LoRA path on real data: Beauty, stage 1 (joint LoRA + head) then stage 2 (the head on tuned features).

    python benchmarks/bench_lora.py --runs runs/bench [--seed 0]

A suite of its own beside bench_quality.py's ``beauty`` suite, sharing its prepared data
(``<runs>/beauty/data``) and reading its frozen reference row (``<runs>/beauty/seed<S>/beauty-text``,
trained first by ``bench_quality.py --suite beauty``). Two committed configs, the benchmark adding
only the data path, seed, output and the two run paths the configs cannot know:

1. ``train/configs/beauty-lora-joint.yaml`` (train.stage=joint: MiniLM + LoRA tuned with the head on a
   subset of one epoch), ``train.init_from=<runs>/beauty/seed<S>/beauty-text/best`` (its head starts
   from the frozen model's). Validated once at the end on a small fixed user sample; no test
   evaluation (that would push every test user's windows through the backbone: hours on this CPU).
2. ``train/configs/beauty-lora-head.yaml`` (the beauty-text head recipe) with
   ``train.init_from=<stage 1>/best``: its windows and items are re-encoded once with the tuned
   adapter into the run's own feature folder (never the frozen beauty cache), the head trains on
   them, then ``seqrec evaluate --split test``.

Writes results/lora_beauty.{json,md} from the runs' own files (train.json, best_metrics.json,
result.json, the training log's step lines). Kept or dropped is decided on validation NDCG@10 only
(4,000 fixed validation users, the same as beauty-text's). Rerunning skips finished stages.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import CONFIGS, METRICS, RESULTS, run_measured, seqrec

JOINT, HEAD, REFERENCE = "beauty-lora-joint", "beauty-lora-head", "beauty-text"
LOSS_LINE = re.compile(r"step (\d+)/\d+ \| epoch \d+ \| loss ([\d.]+)")
STEP_LINE = re.compile(r"step (\d+)/\d+ .*?([\d.]+) samples/s \| ([\d.]+) tok/s .*?([\d.]+) texts/s")


def train(config: str, data: Path, out: Path, seed: int, extra: list[str]) -> dict:
    """Train one stage in its own process (skipped when train.json says it finished)."""
    trained = out / "train.json"
    if trained.is_file():
        return json.loads(trained.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = seqrec(
        "train", "--config", str(CONFIGS / f"{config}.yaml"), "--data", str(data), "--output", str(out),
        "--resume", "auto", f"train.seed={seed}", *extra,
    )  # fmt: skip
    result = {**run_measured(cmd, out.parent / f"{config}.bench.log"), "command": " ".join(cmd)}
    trained.write_text(json.dumps(result, indent=1))
    return result


def evaluate_test(data: Path, out: Path) -> dict:
    metrics_file = out / "best" / "eval-test" / "metrics.json"
    if not metrics_file.is_file():
        cmd = seqrec("evaluate", "--checkpoint", str(out / "best"), "--data", str(data), "--split", "test")
        run_measured(cmd, out.parent / f"{out.name}.bench.log")
    metrics = json.loads(metrics_file.read_text())
    return {k: metrics[k] for k in METRICS}


def reference_on_sample(data: Path, reference: Path, out: Path, n_users: int, seed: int) -> dict:
    """The frozen reference on stage 1's own validation users (train.eval_max_users, fixed by the
    seed): stage 1 starts from exactly this model (its LoRA adapter starts at zero), so this is its
    step-0 figure on the same users. From `seqrec evaluate --split valid --per-user`."""
    import pandas as pd

    from seqrec.data.schema import PreparedData
    from seqrec.training.run import validation_users

    rows = out / "per_user.csv"
    if not rows.is_file():
        cmd = seqrec(
            "evaluate", "--checkpoint", str(reference / "best"), "--data", str(data), "--split", "valid",
            "--per-user", "--out", str(out),
        )  # fmt: skip
        run_measured(cmd, out.parent / f"{out.name}.bench.log")
    table = pd.read_csv(rows)
    users = validation_users(PreparedData.load(data), n_users, seed)
    if users is not None:
        table = table[table["user_idx"].isin(users)]
    return {"users": len(table), **{k: float(table[k].mean()) for k in ("hr@10", "ndcg@10")}}


def valid_history(out: Path) -> list[dict]:
    f = out / "valid_history.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []
    return [
        {"step": r["step"], "epoch": r["epoch"], "ndcg@10": r["ndcg@10"], "hr@10": r["hr@10"]} for r in rows
    ]


def train_losses(log: Path) -> list[tuple[int, float]]:
    """(step, logged training loss) from a run's log lines."""
    found = (LOSS_LINE.search(x) for x in log.read_text(encoding="utf-8", errors="replace").splitlines())
    return [(int(m.group(1)), float(m.group(2))) for m in found if m]


def earlier_try(label: str, folder: str) -> dict:
    """An earlier stage-1 run kept for the record: its loss curve and, if it validated, its figure."""
    path = Path(folder)
    logs = sorted(path.glob("*.bench.log"))
    best = path / "best_metrics.json"
    return {
        "label": label,
        "folder": str(path),
        "train_loss": train_losses(logs[0]) if logs else [],
        "valid": best_valid(path) if best.is_file() else None,
        "valid_auc": json.loads(best.read_text())["metrics"].get("auc") if best.is_file() else None,
    }


def decide(head: list[dict], reference: list[dict]) -> dict:
    """Kept or dropped, on validation only, at equal training: the best validation NDCG@10 of each
    over the steps both validated (same batch, data and cosine schedule, so the same steps are the
    same epochs); the head stage may stop early at its time cap, the reference ran 5 epochs."""
    ref_at = {r["step"]: r["ndcg@10"] for r in reference}
    steps = [r["step"] for r in head if r["step"] in ref_at]
    if not steps:
        return {"status": "undecided (no validation at a common step)"}
    hv = max(r["ndcg@10"] for r in head if r["step"] in ref_at)
    rv = max(ref_at[s] for s in steps)
    return {
        "on": "best validation NDCG@10 over the steps both runs validated (4,000 fixed users)",
        "steps": steps,
        "head_valid": hv,
        "reference_valid": rv,
        "ratio": hv / max(rv, 1e-12),
        "status": "kept" if hv > rv else "dropped",
    }


def best_valid(out: Path) -> dict:
    record = json.loads((out / "best_metrics.json").read_text())
    return {"step": record["step"], **{k: record["metrics"][k] for k in METRICS if k in record["metrics"]}}


def step_throughput(log: Path) -> dict:
    """Users/s, tokens/s and texts/s (windows + live positives through MiniLM, forward + backward) of
    the training steps, from the run's own log lines: the mean over its log windows except the first,
    which also holds the initial catalogue encoding (the item cache is built inside step 1)."""
    users, tokens, texts, steps = [], [], [], 0
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = STEP_LINE.search(line)
        if not m:
            continue
        first = steps == 0
        steps = max(steps, int(m.group(1)))
        if not first:  # the first window is skipped
            users.append(float(m.group(2)))
            tokens.append(float(m.group(3)))
            texts.append(float(m.group(4)))
    if not users:
        return {}
    return {
        "last_step_logged": steps,
        "log_windows_averaged": len(users),
        "users_per_s": statistics.fmean(users),
        "tokens_per_s": statistics.fmean(tokens),
        "texts_per_s": statistics.fmean(texts),
    }


def joint_scale(out: Path, n_train_users: int) -> dict:
    """How much of an epoch stage 1 saw: its resolved config's steps x batch."""
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    t = cfg["train"]
    users = int(t["max_steps"]) * int(t["batch_size"]) * int(t.get("grad_accum", 1))
    return {
        "max_steps": t["max_steps"],
        "batch_size": t["batch_size"],
        "users_seen": users,
        "train_users": n_train_users,
        "epoch_share": users / n_train_users,
        "eval_max_users": t["eval_max_users"],
        "cache_refresh_steps": cfg["model"]["items"]["cache_refresh_steps"],
        "live_positives": bool(cfg["model"]["items"].get("live_positives", False)),
        "lora": cfg["model"]["adapter"],
    }


def write_markdown(summary: dict, path: Path) -> None:
    j, h, r, s = summary["joint"], summary["head"], summary["reference"], summary["joint"]["scale"]
    n = s["cache_refresh_steps"]
    cache = f"refreshed every {n} steps" if n else "encoded at the start only"
    lines = [
        f"# Beauty: the LoRA-tuned window encoder on real data (seed {summary['seed']})",
        "",
        f"Command: `{summary['command']}` (numbers below are read from the runs' own files).",
        "",
        f"Scale (this shared 2-core CPU): stage 1 ran {s['max_steps']} optimizer steps of {s['batch_size']} "
        f"users = {s['users_seen']} users, {100 * s['epoch_share']:.1f}% of one epoch of the "
        f"{s['train_users']:,} training users; LoRA r={s['lora']['r']} alpha={s['lora']['alpha']} on MiniLM-L6; "
        f"item cache {cache}; "
        f"positives encoded live: {s['live_positives']}; validated once at the "
        f"end on {s['eval_max_users']} fixed users. Stage 2 is the beauty-text head recipe on features "
        "re-encoded with the tuned adapter, validated on the same 4,000 users as beauty-text.",
        "",
        "| run | config | valid users | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 | train s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row, users in (
        ("stage 1: joint LoRA + head", j, s["eval_max_users"]),
        ("stage 2: head on tuned features", h, 4000),
        ("reference: beauty-text (frozen features)", r, 4000),
    ):
        test = row.get("test") or {}
        t_ndcg = f"{test['ndcg@10']:.4f}" if test else "not run"
        t_hr = f"{test['hr@10']:.4f}" if test else ""
        lines.append(
            f"| {name} | `{row['config']}` | {users} | {row['valid']['ndcg@10']:.4f} | {row['valid']['hr@10']:.4f} "
            f"| {t_ndcg} | {t_hr} | {row['train_seconds']:.0f} | {row['train_peak_rss_mib']:.0f} |"
        )
    z = j["valid_step0_same_users"]
    lines += [
        "",
        f"Stage 1 on its {z['users']} validation users: NDCG@10 {j['valid']['ndcg@10']:.4f} after the LoRA steps vs "
        f"{z['ndcg@10']:.4f} for the frozen beauty-text model on the same users (stage 1's step 0: same head, "
        "adapter at zero); HR@10 {:.4f} vs {:.4f}.".format(j["valid"]["hr@10"], z["hr@10"]),
    ]
    tp = j.get("throughput") or {}
    if tp:
        lines += [
            "",
            f"Stage 1 throughput (mean of its logged step windows after the first, which includes the initial catalogue encoding): {tp['users_per_s']:.2f} users/s, "
            f"{tp['tokens_per_s']:.0f} tokens/s, {tp['texts_per_s']:.1f} texts/s through MiniLM forward + backward "
            f"({'windows and the batch positives' if s['live_positives'] else 'windows'}).",
        ]
    ref_hist = {x["step"]: x for x in r["valid_history"]}
    lines += ["", "Validation NDCG@10 (4,000 users) by step, stage 2 vs beauty-text:", ""]
    lines += ["| step | epoch | stage 2 (tuned features) | beauty-text (frozen) |", "|---:|---:|---:|---:|"]
    for x in h["valid_history"]:
        ref = ref_hist.get(x["step"])
        shown = f"{ref['ndcg@10']:.4f}" if ref else "(no validation at this step)"
        lines.append(f"| {x['step']} | {x['epoch']} | {x['ndcg@10']:.4f} | {shown} |")
    losses = j["train_loss"]
    if losses:
        last_ref = r.get("last_train_loss")
        lines += [
            "",
            "Stage 1 training loss (full softmax over 12,101 items) by logged step: "
            + ", ".join(f"{st}: {v:.2f}" for st, v in losses)
            + (f"; beauty-text's last logged loss after 5 epochs: {last_ref[1]:.2f}." if last_ref else "."),
        ]
    for t in summary.get("earlier_tries", []):
        v = t["valid"]
        shown = (
            f"validation NDCG@10 {v['ndcg@10']:.4f}, HR@10 {v['hr@10']:.4f}, AUC {t['valid_auc']:.3f} "
            f"on {s['eval_max_users']} users"
            if v
            else "stopped before its validation"
        )
        curve = ", ".join(f"{st}: {x:.2f}" for st, x in t["train_loss"])
        lines += ["", f"Earlier try, dropped: {t['label']}. Loss by step: {curve}; {shown}."]
    d = summary["decision"]
    if "head_valid" in d:
        lines += [
            "",
            f"Decision ({d['on']}, steps {d['steps']}): stage 2 {d['head_valid']:.4f} vs beauty-text "
            f"{d['reference_valid']:.4f} ({d['ratio']:.3f}x, {d['head_valid'] - d['reference_valid']:+.4f}): "
            f"**{d['status']}**. One seed and 4,000 users: a difference of this size is no evidence of a gain.",
        ]
    else:
        lines += ["", f"Decision: {d['status']}."]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--runs", default="runs/bench", help="bench_quality.py's working folder (beauty suite there)."
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--earlier",
        nargs="*",
        default=[],
        metavar="LABEL=FOLDER",
        help="Earlier stage-1 tries to record too (a run folder holding its *.bench.log; its "
        "validation from best_metrics.json when it got that far).",
    )
    args = p.parse_args()
    runs = Path(args.runs).resolve()
    data = runs / "beauty" / "data"
    reference = runs / "beauty" / f"seed{args.seed}" / REFERENCE
    if not (reference / "result.json").is_file():
        raise SystemExit(f"{reference} has no result.json: run bench_quality.py --suite beauty first")
    seed_dir = runs / "beauty-lora" / f"seed{args.seed}"
    joint_out, head_out = seed_dir / JOINT, seed_dir / HEAD

    joint = train(JOINT, data, joint_out, args.seed, [f"train.init_from={reference / 'best'}"])
    meta = json.loads((data / "meta.json").read_text())
    scale = joint_scale(joint_out, int(meta["n_users"]))
    step0 = reference_on_sample(
        data, reference, seed_dir / "beauty-text-valid", scale["eval_max_users"], args.seed
    )
    head = train(
        HEAD, data, head_out, args.seed,
        [f"train.init_from={joint_out / 'best'}", f"train.features_dir={seed_dir / 'features-tuned'}"],
    )  # fmt: skip
    head_test = evaluate_test(data, head_out)

    ref_result = json.loads((reference / "result.json").read_text())
    throughput = step_throughput(joint_out.parent / f"{JOINT}.bench.log")
    summary = {
        "suite": "beauty-lora",
        "seed": args.seed,
        "command": "python benchmarks/bench_lora.py " + shlex.join(sys.argv[1:]),
        "joint": {
            "config": f"train/configs/{JOINT}.yaml",
            "valid": best_valid(joint_out),
            "valid_step0_same_users": step0,
            "test": None,
            "train_seconds": joint["seconds"],
            "train_peak_rss_mib": joint["peak_rss_mib"],
            "throughput": throughput,
            "scale": scale,
            "command": joint["command"],
        },
        "head": {
            "config": f"train/configs/{HEAD}.yaml",
            "valid": best_valid(head_out),
            "test": head_test,
            "train_seconds": head["seconds"],
            "train_peak_rss_mib": head["peak_rss_mib"],
            "command": head["command"],
        },
        "reference": {
            "config": f"train/configs/{REFERENCE}.yaml",
            "valid": best_valid(reference),
            "test": ref_result["metrics"],
            "train_seconds": ref_result["train_seconds"],
            "train_peak_rss_mib": ref_result["train_peak_rss_mib"],
        },
    }
    summary["head"]["valid_history"] = valid_history(head_out)
    summary["reference"]["valid_history"] = valid_history(reference)
    summary["decision"] = decide(summary["head"]["valid_history"], summary["reference"]["valid_history"])
    summary["joint"]["train_loss"] = train_losses(joint_out.parent / f"{JOINT}.bench.log")
    ref_losses = train_losses(reference / "bench.log") if (reference / "bench.log").is_file() else []
    summary["reference"]["last_train_loss"] = ref_losses[-1] if ref_losses else None
    summary["earlier_tries"] = [earlier_try(*item.split("=", 1)) for item in args.earlier]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lora_beauty.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    write_markdown(summary, RESULTS / "lora_beauty.md")
    print((RESULTS / "lora_beauty.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
