"""Peak memory of one training rank's data load from a sharded prepared directory.

For each world size W, rank 0 of W loads ``PreparedData.load(DIR, rank=0, world=W)`` in a fresh
child process (W=1: the whole data, as every rank did before shard-aware loading); the child reports
its users, events, load time and peak RSS (and the RSS after its imports, so the load's own share
shows). Results: benchmarks/results/rank_load.md.

    seqrec data synth --out WORK --events 10000000 --raw-only
    seqrec data prepare --source taobao --input WORK/raw/UserBehavior.csv --out WORK/four \\
        --engine duckdb --shards 4
    python benchmarks/bench_rank_load.py WORK/four --worlds 1 2 4
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(data: str, rank: int, world: int) -> None:
    import numpy as np  # noqa: F401  (imported before the baseline, as training has them)
    import pandas as pd  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from seqrec.data.schema import PreparedData

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    d = PreparedData.load(data, rank=rank, world=world)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    users = d.n_users if d.loaded is None else int(d.loaded.sum())
    print(json.dumps({"world": world, "rank": rank, "users": users, "events": d.n_events,
                      "load_s": round(seconds, 1), "peak_rss_mib": round(peak), "imports_rss_mib": round(base)}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--child", nargs=2, type=int, metavar=("RANK", "WORLD"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rank_load.md"))
    args = p.parse_args()
    if args.child:
        child(args.data, *args.child)
        return
    rows = []
    for world in args.worlds:
        cmd = [sys.executable, __file__, args.data, "--child", "0", str(world)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    shards = json.loads((Path(args.data) / "shards.json").read_text())["shards"]
    lines = [
        "# One rank's data load from a sharded prepared directory",
        "",
        f"Command: `python benchmarks/bench_rank_load.py {shlex.join(sys.argv[1:])}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC), {shards} user-hash shards; rank 0 of each "
        "world size in a fresh process. World 1 loads the whole data (every rank did before "
        "shard-aware loading: events read whole, all columns, then merged); W > 1 reads only the "
        "rank's own part files (4 columns). Peak RSS includes the global tables (users, items, "
        "profiles) and the imports. Data: a Taobao-shaped log made and prepared by the commands in the "
        "script's docstring. World 1's figure is more than twice world 2's because the whole-data "
        "path also reads the value and row columns and re-sorts the merged parts.",
        "",
        "| world | users loaded | events loaded | load (s) | peak RSS (MiB) | of which the load (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['users']:,} | {r['events']:,} | {r['load_s']} | {r['peak_rss_mib']:,} | "
            f"{r['peak_rss_mib'] - r['imports_rss_mib']:,} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
