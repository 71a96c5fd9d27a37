"""Benchmark ``seqrec data prepare``: wall time and peak memory per data set, and how time scales.

Data sets: Amazon Beauty, MovieLens-100K and the Taobao head from ../shared/data (skipped when
absent), and synthetic logs of 1x, 5x and 10x Beauty's size (198,502 events), generated once
into a temporary folder. Every prepare runs in its own subprocess (``python -m seqrec.cli data
prepare ...``, the same path a user runs, interpreter start and imports included); wall time is
measured around it and peak RSS is that child's own ``ru_maxrss`` (os.wait4). The median over
``--runs`` runs is reported, with the pipeline's own time from report.json beside it.

    .venv/bin/python benchmarks/bench_prepare.py            # writes benchmarks/results/prepare.{json,md}
    .venv/bin/python benchmarks/bench_prepare.py --runs 1 --scales 1 5   # quicker

Out of core (``--events``): Taobao-shaped logs of N events (``seqrec data synth --events N
--raw-only``, generated outside the timing into ``--work``, deleted after each size), each
prepared once with ``--engine duckdb`` (``--memory-limit``) in a child process; wall time,
events/s and the child's peak RSS go to ``prepare_scale.json`` and a section of prepare.md:

    .venv/bin/python benchmarks/bench_prepare.py --events 1000000 10000000 100000000 --work /big/disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEQREC_SHARED_DATA", ROOT.parent / "shared" / "data"))
BEAUTY_EVENTS = 198_502
REAL = [
    ("amazon-beauty", "amazon", "amazon-beauty-2014"),
    ("movielens-100k", "movielens", "movielens-100k"),
    ("taobao-head", "taobao", "taobao-userbehavior-head"),
]


def run_child(cmd: list[str], log: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, the child's peak RSS in MiB, stderr) of one command; with `log`, stderr is
    written to that file as it comes (to follow a long run) and read back at the end."""
    start = time.perf_counter()
    if log is not None:
        with log.open("wb") as f:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)
        stderr = log.read_text(errors="replace")
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"failed: {shlex.join(cmd)}\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stderr


def bench_scale(n_events: int, work: Path, memory_limit: str, threads: int) -> dict[str, Any]:
    """Generate a Taobao-shaped log of n_events, prepare it with the duckdb engine, delete both."""
    import shutil

    folder = work / f"taobao-{n_events}"
    shutil.rmtree(folder, ignore_errors=True)
    seqrec = [sys.executable, "-m", "seqrec.cli", "data"]
    gen_s, gen_rss, _ = run_child(
        [*seqrec, "synth", "--out", str(folder), "--events", str(n_events), "--raw-only", "--quiet"]
    )
    raw = folder / "raw" / "UserBehavior.csv"
    csv_bytes = raw.stat().st_size
    out = folder / "prepared"
    cmd = [*seqrec, "prepare", "--source", "taobao", "--input", str(raw), "--out", str(out), "--quiet"]
    cmd += ["--engine", "duckdb", "--memory-limit", memory_limit, "--threads", str(threads)]
    wall, rss, _ = run_child(cmd)
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    row = {
        "events": n_events,
        "csv_mib": round(csv_bytes / 2**20, 1),
        "generate_s": round(gen_s, 1),
        "generate_peak_rss_mib": round(gen_rss, 1),
        "users": report["users"],
        "items": report["items"],
        "interactions": report["interactions"],
        "wall_s": round(wall, 1),
        "pipeline_s": report["total_s"],
        "events_per_s": round(n_events / wall),
        "peak_rss_mib": round(rss, 1),
        "stages_s": report["timings_s"],
        "memory_limit": memory_limit,
        "command": "python benchmarks/bench_prepare.py " + shlex.join(sys.argv[1:]),
    }
    print(
        f"{n_events:>12,} events  wall {wall:8.1f} s  {row['events_per_s']:>9,} ev/s  peak RSS {rss:8.1f} MiB",
        flush=True,
    )
    return row


def scale_markdown(scale: dict[str, Any]) -> str:
    rows = scale["rows"]
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", scale["command"]) for r in rows))
    lines = [
        "",
        "## Out of core: `--engine duckdb` on Taobao-shaped logs",
        "",
        f"Commands: {commands} "
        f"(last run {scale['date']}); DuckDB {scale['duckdb']}, spilling to the output disk. Logs from "
        "`seqrec data synth --events N --raw-only` (generated outside the timing); one run per size; wall time "
        "includes the interpreter start; peak RSS is the prepare child's own maximum resident set size. The "
        "machine (2 cores) was shared with other jobs during these runs, so times are pessimistic.",
        "",
        "| events | CSV (MiB) | users | items | memory limit | wall (s) | events/s | peak RSS (MiB) | read / order / filter / index / split / profile / write (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        st = r["stages_s"]
        stages = " / ".join(
            f"{st.get(k, 0):.1f}" for k in ("read", "order", "filter", "index", "split", "profile", "write")
        )
        lines.append(
            f"| {r['events']:,} | {r['csv_mib']:,.0f} | {r['users']:,} | {r['items']:,} | {r['memory_limit']} "
            f"| {r['wall_s']:,.1f} "
            f"| {r['events_per_s']:,} | {r['peak_rss_mib']:,.0f} | {stages} |"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        lines += [
            "",
            f"{b['events'] / a['events']:.0f}x the events took {b['wall_s'] / a['wall_s']:.1f}x the wall time "
            f"and {b['peak_rss_mib'] / a['peak_rss_mib']:.1f}x the peak RSS.",
        ]
    for note in scale.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def run_prepare(source: str, input_path: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """One prepare in a child process: wall seconds, the child's peak RSS (MiB), its report."""
    cmd = [
        sys.executable,
        "-m",
        "seqrec.cli",
        "data",
        "prepare",
        "--source",
        source,
        "--input",
        str(input_path),
    ]
    cmd += ["--out", str(out), "--overwrite", "--quiet", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"prepare failed: {shlex.join(cmd)}\n{stderr}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "report": report}


def bench(
    name: str, source: str, input_path: Path, runs: int, work: Path, extra: list[str] | None = None
) -> dict[str, Any]:
    results = [run_prepare(source, input_path, work / "prepared" / name, extra or []) for _ in range(runs)]
    report = results[-1]["report"]
    row = {
        "name": name,
        "source": source,
        "events_read": report["raw_rows"]["events"],
        "users": report["users"],
        "items": report["items"],
        "interactions": report["interactions"],
        "runs": runs,
        "wall_s_median": round(statistics.median(r["wall_s"] for r in results), 3),
        "wall_s_all": [round(r["wall_s"], 3) for r in results],
        "pipeline_s_median": round(statistics.median(r["report"]["total_s"] for r in results), 3),
        "peak_rss_mib_median": round(statistics.median(r["peak_rss_mib"] for r in results), 1),
        "stages_s": report["timings_s"],
    }
    print(
        f"{name:18s} {row['interactions']:>10,} events  wall {row['wall_s_median']:6.2f} s  "
        f"pipeline {row['pipeline_s_median']:6.2f} s  peak RSS {row['peak_rss_mib_median']:7.1f} MiB",
        flush=True,
    )
    return row


def make_synthetic(scale: int, folder: Path) -> Path:
    """Raw synthetic files of about scale x Beauty's events (generated once, outside the timing)."""
    from seqrec.data.synth import SynthConfig, generate, write_raw

    # ~16.7 events per user after the generator removes repeats (mean_events=17).
    cfg = SynthConfig(
        n_users=int(scale * BEAUTY_EVENTS / 16.7), n_items=6000 * scale, seed=scale, mean_events=17
    )
    raw = folder / f"synthetic-{scale}x"
    write_raw(generate(cfg), raw)
    return raw


def linear_fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares wall time = a + b * events; R^2 near 1 and a small intercept mean linear."""
    x = np.array([r["interactions"] for r in rows], dtype=float)
    y = np.array([r["wall_s_median"] for r in rows])
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    yp = np.array([r["pipeline_s_median"] for r in rows])
    bp, ap = np.polyfit(x, yp, 1)
    return {
        "wall_intercept_s": round(float(a), 3),
        "wall_s_per_million_events": round(float(b * 1e6), 3),
        "wall_r2": round(float(r2), 4),
        "pipeline_intercept_s": round(float(ap), 3),
        "pipeline_s_per_million_events": round(float(bp * 1e6), 3),
        "ratio_largest_to_smallest_events": round(float(x[-1] / x[0]), 2),
        "ratio_largest_to_smallest_pipeline_s": round(float(yp[-1] / yp[0]), 2),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pandas": version("pandas"),
        "pyarrow": version("pyarrow"),
        "numpy": version("numpy"),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# `seqrec data prepare` benchmark",
        "",
        f"Command: `{result['command']}` ({result['date']}).",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; Python "
        f"{result['machine']['python']}, pandas {result['machine']['pandas']}, pyarrow {result['machine']['pyarrow']}.",
        "",
        "Each prepare runs in a fresh subprocess (interpreter start and imports included in *wall*; "
        "*pipeline* is the prepare's own time from report.json). Median of the runs; peak RSS is the "
        "child's own maximum resident set size.",
        "",
        "| data set | events kept | users | items | wall (s) | pipeline (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['wall_s_median']:.2f} "
            f"| {r['pipeline_s_median']:.2f} | {r['peak_rss_mib_median']:.0f} |"
        )
    if "scaling" in result:
        s = result["scaling"]
        lines += [
            "",
            "## Scaling (synthetic 1x / 5x / 10x Beauty)",
            "",
            f"Least squares over the synthetic runs: wall = {s['wall_intercept_s']:.2f} s + "
            f"{s['wall_s_per_million_events']:.2f} s per million events (R² = {s['wall_r2']:.3f}); the pipeline alone "
            f"takes {s['pipeline_s_per_million_events']:.2f} s per million events. "
            f"{s['ratio_largest_to_smallest_events']:.1f}x the events took "
            f"{s['ratio_largest_to_smallest_pipeline_s']:.1f}x the pipeline time.",
        ]
    if result["skipped"]:
        lines += ["", "Skipped (not found): " + ", ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="Runs per data set (median reported).")
    parser.add_argument(
        "--scales", type=int, nargs="+", default=[1, 5, 10], help="Synthetic sizes, x Beauty."
    )
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results"), help="Where prepare.{json,md} go."
    )
    parser.add_argument("--events", type=int, nargs="+", help="Out-of-core sizes (duckdb engine) instead.")
    parser.add_argument("--work", default=tempfile.gettempdir(), help="Folder for the generated logs.")
    parser.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit for --events.")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads for --events (0 = all).")
    args = parser.parse_args()
    command = "python benchmarks/bench_prepare.py " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    if args.events:
        scale_path = out / "prepare_scale.json"
        previous = json.loads(scale_path.read_text()) if scale_path.is_file() else {"rows": []}
        rows = {r["events"]: r for r in previous["rows"]}
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        for n in sorted(args.events):
            rows[n] = bench_scale(n, work, args.memory_limit, args.threads)
            scale = {
                "command": command.strip(),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "duckdb": version("duckdb"),
                "machine": machine(),
                "rows": [rows[k] for k in sorted(rows)],
                "notes": previous.get("notes", []),
            }
            scale_path.write_text(
                json.dumps(scale, indent=2) + "\n"
            )  # after each size: partial results survive
        main_result = json.loads((out / "prepare.json").read_text())
        (out / "prepare.md").write_text(markdown(main_result) + scale_markdown(scale))
        return
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="seqrec-bench-") as tmp:
        work = Path(tmp)
        for name, source, folder in REAL:
            if (SHARED / folder).is_dir():
                rows.append(bench(name, source, SHARED / folder, args.runs, work))
            else:
                skipped.append(f"{name} ({SHARED / folder})")
        synthetic = []
        for scale in sorted(args.scales):
            raw = make_synthetic(scale, work)
            row = bench(
                f"synthetic-{scale}x", "generic", raw, args.runs, work, ["source.numeric_user_fields=[age]"]
            )
            synthetic.append(row)
            rows.append(row)
    result: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "rows": rows,
        "skipped": skipped,
    }
    if len(synthetic) >= 2:
        result["scaling"] = linear_fit(synthetic)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").write_text(json.dumps(result, indent=2) + "\n")
    scale_path = out / "prepare_scale.json"
    extra = scale_markdown(json.loads(scale_path.read_text())) if scale_path.is_file() else ""
    (out / "prepare.md").write_text(markdown(result) + extra)
    print(markdown(result))


if __name__ == "__main__":
    main()
