"""Benchmark one training epoch on Taobao-shaped logs of N events: peak RSS and samples/s.

Models: ``sasrec`` (the ID baseline) and ``seqrec-head`` (the seqrec head stage on frozen
``minilm-l6`` features: one event per window, the item's text only -- a Taobao item's text is its
category -- so the corpus-wide deduplicated feature build encodes one text per category, and a text
item tower over the whole catalogue with the sampled softmax above 100,000 items).

For each size: ``seqrec data synth --events N --raw-only`` and ``seqrec data prepare --engine
duckdb`` (outside the timing), then ``seqrec train --model sasrec train.epochs=1`` in a child
process (sampled softmax: the catalogue is above sasrec.sampled_above for the larger sizes;
validation on ``--eval-users`` users), whose peak RSS (os.wait4) and logged samples/s are
recorded; everything generated is deleted afterwards. Results: benchmarks/results/train_scale.{json,md}
(rows of other sizes already there are kept). ``--max-minutes M`` bounds the training time
(train.max_minutes): the row then records the steps done and is marked as a partial epoch.

    .venv/bin/python benchmarks/bench_train_scale.py --events 1000000 10000000 --work /big/disk
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import ROOT, machine, run_child

MODELS = {
    "sasrec": ["--model", "sasrec"],
    "seqrec-head": [
        "--model", "seqrec", "--stage", "head", "model.backbone.name=minilm-l6", "model.adapter.method=frozen",
        "model.items.mode=text", "model.profile.enabled=false", "window.size=1", "window.max_windows=20",
        "text.time=none", "text.show_behavior=false", "model.encoder.micro_batch_size=64",
    ],
}  # fmt: skip


def bench(n_events: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = work / f"train-{n_events}"
    shutil.rmtree(folder, ignore_errors=True)
    seqrec = [sys.executable, "-m", "seqrec.cli"]
    run_child(
        [*seqrec, "data", "synth", "--out", str(folder), "--events", str(n_events), "--raw-only", "--quiet"]
    )
    raw = folder / "raw" / "UserBehavior.csv"
    data = folder / "prepared"
    run_child([*seqrec, "data", "prepare", "--source", "taobao", "--input", str(raw), "--out", str(data),
               "--engine", "duckdb", "--threads", "1", "--quiet"])  # fmt: skip
    raw.unlink()
    report = json.loads((data / "report.json").read_text())
    cmd = [
        *seqrec, "train", "--data", str(data), "--output", str(folder / "run"),
        "train.epochs=1", f"train.batch_size={args.batch_size}", f"train.eval_max_users={args.eval_users}",
        "train.tracker=none", "train.log_every=20", "train.num_workers=0", *MODELS[args.model],
    ]  # fmt: skip
    if args.max_minutes > 0:
        cmd.append(f"train.max_minutes={args.max_minutes}")
    wall, rss, stderr = run_child(cmd, log=work / f"train-{n_events}.log")
    rates = [float(x) for x in re.findall(r"([0-9.]+) samples/s", stderr)]
    planned = re.search(r"training (\d+) steps \((\d+) per epoch", stderr)
    done = re.search(r"training (\w+) after (\d+) steps", stderr)
    shutil.rmtree(folder, ignore_errors=True)
    row = {
        "model": args.model,
        "events": n_events,
        "users": report["users"],
        "items": report["items"],
        "train_users": report["split"]["users_with_train_events"],
        "wall_s": round(wall, 1),
        "samples_per_s_median": round(statistics.median(rates), 1) if rates else None,
        "peak_rss_mib": round(rss, 1),
        "batch_size": args.batch_size,
        "eval_users": args.eval_users,
        "steps": int(done.group(2)) if done else None,
        "steps_per_epoch": int(planned.group(2)) if planned else None,
        "stop_reason": done.group(1) if done else None,
        "max_minutes": args.max_minutes,
    }
    print(json.dumps(row), flush=True)
    return row


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# One training epoch on Taobao-shaped logs",
        "",
        f"Command: `{result['command']}` ({result['date']}); machine: {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores (shared with other jobs, so times are noisy).",
        "",
        "`seqrec train ... train.epochs=1` in a child process (interpreter start, data loading, the "
        "head stage's feature build, the epoch and one validation included in *wall*); samples/s is the "
        "median of the training log's figures; peak RSS is the child's maximum resident set size. Above "
        "100,000 items both models use their sampled softmax (sasrec.loss=auto, model.head.loss=auto). "
        "Models: see the docstring of benchmarks/bench_train_scale.py.",
        "",
        "| model | events | users | items | steps (of the epoch) | wall (s) | samples/s | peak RSS (MiB) | command |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        steps = (
            "all"
            if r.get("stop_reason") in (None, "completed")
            else f"{r['steps']:,} of {r['steps_per_epoch']:,}"
        )
        lines.append(
            f"| {r.get('model', 'sasrec')} | {r['events']:,} | {r['users']:,} | {r['items']:,} | {steps} | {r['wall_s']:,.1f} | "
            f"{r['samples_per_s_median']} | {r['peak_rss_mib']:,.0f} | `{r.get('command', result['command'])}` "
            f"({r.get('date', result['date'])}) |"
        )
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work", default="/tmp", help="Folder for the generated data.")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument(
        "--max-minutes", type=float, default=0.0, help="Bound the training time (0: a full epoch)."
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="sasrec")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_train_scale.py " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    old = json.loads((out / "train_scale.json").read_text()) if (out / "train_scale.json").is_file() else {}
    kept = {(r.get("model", "sasrec"), r["events"]): r for r in old.get("rows", [])}
    for r in kept.values():  # rows of earlier commands keep theirs
        r.setdefault("command", old.get("command"))
        r.setdefault("date", old.get("date"))
    for n in sorted(args.events):
        row = bench(n, work, args)
        row["command"] = command
        row["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        kept[(args.model, n)] = row
    result = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "rows": [kept[k] for k in sorted(kept)],
        "notes": old.get("notes", []),
    }
    (out / "train_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "train_scale.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
