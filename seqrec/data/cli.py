"""``seqrec data prepare | show | synth``.

Configs: ``--config`` takes either a run config YAML (its ``data:`` section is used) or a bare
data config YAML (the fields of DataConfig at the top level). ``key=value`` overrides address the
data section (``min_user_events=5``, ``source.columns.user_id=uid``; a leading ``data.`` is
accepted too). ``--source`` / ``--input`` win over both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
    load_yaml,
    validate,
)
from seqrec.data.schema import DataError, PreparedData

SOURCES = ["generic", "movielens", "amazon", "taobao", "synthetic"]


def load_data_config(
    path: str | None, overrides: list[str], source: str | None = None, input_path: str | None = None
) -> DataConfig:
    """DataConfig from a run YAML's data section or a bare data YAML, plus overrides and flags."""
    raw: dict[str, Any] = load_yaml(path) if path else {}
    data_keys = {f.name for f in dataclasses.fields(DataConfig)}
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    if set(raw) <= data_keys:
        section = raw
    elif set(raw) <= run_keys:
        section = raw.get("data") or {}
    else:
        unknown = sorted(set(raw) - data_keys - run_keys)
        raise ConfigError(
            f"{path}: keys {unknown} are neither run config sections {sorted(run_keys)} "
            f"nor data config fields {sorted(data_keys)}"
        )
    section = apply_overrides(section, [o.removeprefix("data.") for o in overrides])
    if source or input_path:
        src = section.setdefault("source", {})
        if not isinstance(src, dict):
            raise ConfigError("data.source must be a mapping")
        if source:
            src["kind"] = source
        if input_path:
            src["input"] = input_path
    cfg = from_dict(DataConfig, section, "data")
    validate(cfg)
    return cfg


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="Prepare, inspect and synthesize behaviour data.")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True

    p = dsub.add_parser("prepare", help="Raw log -> prepared directory (tables, splits, profiles, report).")
    p.add_argument("--source", choices=SOURCES, help="Reader (default: data.source.kind, generic).")
    p.add_argument("--input", help="Folder of the data set, or the events file.")
    p.add_argument("--out", required=True, help="Prepared directory to create.")
    p.add_argument("--config", help="Run config YAML (its data: section) or a bare data config YAML.")
    p.add_argument("--overwrite", action="store_true", help="Replace --out if it exists (after success).")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_engine_arguments(p)
    p.add_argument(
        "overrides", nargs="*", help="Data config overrides, e.g. min_user_events=5 split=temporal."
    )
    p.set_defaults(handler=run_prepare)

    s = dsub.add_parser("show", help="Print a user's windows exactly as the model reads them.")
    s.add_argument("--data", required=True, help="Prepared directory.")
    s.add_argument("--user", required=True, help="User id (as in the raw log).")
    s.add_argument("--split", choices=["test", "valid", "train"], default="test", help="Which input to show.")
    s.add_argument("--config", help="Run config YAML (window and text sections).")
    s.add_argument("overrides", nargs="*", help="Run config overrides, e.g. window.size=3 text.time=gap.")
    s.set_defaults(handler=run_show)

    y = dsub.add_parser("synth", help="Generate a synthetic e-commerce log and prepare it.")
    y.add_argument("--out", required=True, help="Directory to create (raw files go to OUT/raw).")
    y.add_argument("--users", type=int, default=500, help="Number of users.")
    y.add_argument(
        "--items", type=int, default=None,
        help="Number of items (default 300; with --events: one per 24 events, at most 4,162,024).",
    )  # fmt: skip
    y.add_argument(
        "--events", type=int, default=None,
        help="Taobao-shaped log of exactly N events at scale (OUT/raw/UserBehavior.csv, streamed to disk), "
        "prepared with --engine (default duckdb); --users/--language/--funnel do not apply.",
    )  # fmt: skip
    y.add_argument("--raw-only", action="store_true", help="With --events: write the raw log only.")
    y.add_argument("--seed", type=int, default=0, help="Random seed (same seed, same files).")
    y.add_argument("--language", choices=["en", "zh"], default="en", help="Language of titles and profiles.")
    y.add_argument("--mean-events", type=float, default=20.0, help="Mean item visits per user.")
    y.add_argument(
        "--funnel", choices=["collapsed", "events"], default="collapsed",
        help="collapsed: one event per (user, item) with the deepest stage; events: one event per stage.",
    )  # fmt: skip
    y.add_argument("--config", help="Run or data config YAML for the prepare step (e.g. split: temporal).")
    y.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    y.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_engine_arguments(y)
    y.add_argument("overrides", nargs="*", help="Data config overrides for the prepare step.")
    y.set_defaults(handler=run_synth, engine=None)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=["pandas", "duckdb"], default=None,
        help="pandas (default): in memory, fast for small logs; duckdb: out of core, bounded memory, "
        "same tables (the default of synth --events).",
    )  # fmt: skip
    p.add_argument("--memory-limit", default="4GB", help="duckdb engine: DuckDB's memory_limit.")
    p.add_argument("--threads", type=int, default=0, help="duckdb engine: threads (0 = all cores).")
    p.add_argument(
        "--shards", type=int, default=1,
        help="duckdb engine: write events/part-NNNNN.parquet partitioned by user hash (1 = events.parquet).",
    )  # fmt: skip
    p.add_argument("--spill-dir", help="duckdb engine: where DuckDB spills (default: inside the output).")


def engine_options(args: argparse.Namespace) -> Any:
    from seqrec.data.engine_duckdb import EngineOptions

    if args.engine != "duckdb" and (args.shards != 1 or args.spill_dir):
        raise ConfigError("--shards and --spill-dir need --engine duckdb")
    if args.shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {args.shards}")
    return EngineOptions(args.memory_limit, args.threads, args.shards, args.spill_dir)


def run_prepare(args: argparse.Namespace) -> int:
    from seqrec.data.prepare import prepare, summary

    cfg = load_data_config(args.config, args.overrides, args.source, args.input)
    report = prepare(
        cfg, args.out, overwrite=args.overwrite, progress=not args.quiet, engine=args.engine or "pandas",
        options=engine_options(args),
    )  # fmt: skip
    print(summary(report))
    print(f"wrote {args.out} (report: {Path(args.out) / 'report.md'})")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from seqrec.data.prepare import summary
    from seqrec.data.synth import SynthConfig, synth

    if args.events is not None:
        return run_synth_events(args)
    if args.raw_only or args.engine is not None or args.shards != 1:
        raise ConfigError("--raw-only, --engine and --shards apply to synth --events only")
    base = load_data_config(args.config, args.overrides) if (args.config or args.overrides) else None
    cfg = SynthConfig(
        n_users=args.users, n_items=300 if args.items is None else args.items, seed=args.seed, language=args.language,
        mean_events=args.mean_events, funnel=args.funnel,
    )  # fmt: skip
    try:
        report = synth(args.out, cfg, base, overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as e:
        if isinstance(e, (ConfigError, DataError)):
            raise
        raise ConfigError(f"synth: {e}") from e
    print(summary(report))
    print(f"wrote {args.out} (raw files in {Path(args.out) / 'raw'}, report: {Path(args.out) / 'report.md'})")
    return 0


def run_synth_events(args: argparse.Namespace) -> int:
    """synth --events N: the Taobao-shaped log at scale, then (unless --raw-only) prepare it."""
    from seqrec.data.prepare import prepare_with, summary
    from seqrec.data.schema import atomic_directory
    from seqrec.data.synth_scale import FILE_NAME, ScaleConfig, generate_csv

    if args.events < 1 or (args.items is not None and args.items < 1):
        raise ConfigError("synth: --events and --items must be >= 1")
    out = Path(args.out)
    raw = out / "raw" / FILE_NAME
    if args.raw_only:
        if raw.exists() and not args.overwrite:
            raise FileExistsError(f"{raw} already exists (pass --overwrite to replace it)")
        info = generate_csv(raw, ScaleConfig(args.events, args.items, args.seed), progress=not args.quiet)
        print(f"wrote {raw}: {info['events']:,} events, {info['users']:,} users, "
              f"{info['items_catalogue']:,} catalogue items, {info['bytes'] / 2**20:,.0f} MiB in {info['seconds']} s")  # fmt: skip
        return 0
    if args.overwrite:  # as prepare: only an earlier prepared data set may be replaced
        from seqrec.data.guard import check_replaceable

        check_replaceable(out)
    engine = args.engine or "duckdb"
    if engine != "duckdb" and (args.shards != 1 or args.spill_dir):
        raise ConfigError("--shards and --spill-dir need --engine duckdb")
    cfg = load_data_config(args.config, args.overrides, "taobao", str(raw))
    scratch = out.with_name(f".{out.name}.raw-{os.getpid()}")
    try:
        # The raw log goes to a scratch folder first; prepare writes OUT atomically, then the
        # raw folder moves into it (a failure leaves neither behind).
        info = generate_csv(
            scratch / FILE_NAME, ScaleConfig(args.events, args.items, args.seed), not args.quiet
        )
        cfg.source.input = str(scratch / FILE_NAME)
        with atomic_directory(out, overwrite=args.overwrite) as tmp:
            report = prepare_with(cfg, tmp, not args.quiet, engine, engine_options(args))
            (tmp / "raw").mkdir()
            (scratch / FILE_NAME).rename(tmp / "raw" / FILE_NAME)
            for name in ("report.json", "report.md", "meta.json", "data_config.yaml"):
                path = tmp / name
                path.write_text(
                    path.read_text(encoding="utf-8").replace(str(scratch), str(raw.parent)), "utf-8"
                )
        report["input"] = str(raw)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"generated {info['events']:,} events in {info['seconds']} s")
    print(summary(report))
    print(f"wrote {out} (raw log in {raw}, report: {out / 'report.md'})")
    return 0


def describe_profile(data: PreparedData, user_idx: int) -> str:
    """Decoded profile features of one user: name=value pairs (categorical as their vocab value)."""
    spec = data.profile_spec
    parts = []
    for j, c in enumerate(spec.categorical):
        code = int(data.profile_cat[user_idx, j])
        parts.append(f"{c['name']}={c['vocab'][code - 1] if code > 0 else '<unknown>'}")
    for j, c in enumerate(spec.numeric):
        z = float(data.profile_num[user_idx, j])
        value = round(z * c["std"] + c["mean"], 6) + 0.0  # undo standardization; +0.0 turns -0 into 0
        parts.append(f"{c['name']}={value:.4g} (z={z:+.2f})")
    return ", ".join(parts) if parts else "none"


def show_user(data: PreparedData, user_id: str, split: str, cfg: RunConfig) -> str:
    """The text `seqrec data show` prints (also used by tests)."""
    from seqrec.data.examples import make_renderer, render_history

    matches = np.flatnonzero(data.users["user_id"].astype(str).to_numpy() == str(user_id))
    if len(matches) == 0:
        sample = ", ".join(data.users["user_id"].astype(str).head(5))
        raise DataError(f"user {user_id!r} is not in {data.path} ({data.n_users} users, e.g. {sample})")
    u = int(matches[0])
    row = data.users.iloc[u]
    items, times, behaviors = data.sequence(u)
    renderer = make_renderer(data, cfg)
    lines = [
        f"user {user_id} (user_idx {u}): {len(items)} events; "
        f"train_end {row['train_end']}, valid_pos {row['valid_pos']}, test_pos {row['test_pos']}",
        f"profile ({data.profile_spec.source}): {describe_profile(data, u)}",
    ]
    history = render_history(data, u, split, cfg, renderer)  # type: ignore[arg-type]
    end = data.input_end(u, split)  # type: ignore[arg-type]
    if split != "train" and end < 0:
        lines.append(f"no {split} target for this user (nothing is held out)")
        return "\n".join(lines)
    w = cfg.window
    input_end = history[-1][0].end if history else 0
    lines.append(
        f"{split} input: {len(history)} window(s) over events up to position {input_end} "
        f"(window.mode={w.mode}, size={w.size}, stride={w.stride or w.size}, align={w.align}, "
        f"max_windows={w.max_windows})"
    )
    for k, (window, text) in enumerate(history, 1):
        lines += ["", f"--- window {k}/{len(history)}: events [{window.start}, {window.end}) ---", text]
    target = end if split != "train" else input_end
    if 0 <= target < len(items):
        prev = int(times[target - 1]) if target > 0 else None
        text = renderer.render_window(
            items[target : target + 1], times[target : target + 1], behaviors[target : target + 1], prev
        )
        label = f"held-out {split} target" if split != "train" else "training target (next event)"
        lines += ["", f"--- {label}: event {target}, NOT part of the input ---", text]
    later = len(items) - target - 1
    if later > 0:
        lines.append(f"({later} later event(s) are not part of this input)")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    cfg: RunConfig = load_config(args.config, args.overrides)
    data = PreparedData.load(args.data)
    print(show_user(data, args.user, args.split, cfg))
    return 0
