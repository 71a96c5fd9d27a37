"""``seqrec data prepare``: raw log -> prepared directory (layout in seqrec.data.schema) + report.

Stages: read (named adapter or generic reader) -> order and dedupe -> minimum counts / k-core ->
indices -> splits -> profile features (fitted on train only) -> write. The output is written to a
temporary directory and renamed into place only when every stage succeeded, so a failed prepare
leaves nothing behind. ``report.json`` / ``report.md`` hold the counts, every dropped row by
reason (with examples pointing at file:line), length histograms, behaviour counts, the time range,
the split summary and the time each stage took.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from seqrec.config import DataConfig, save_config, validate
from seqrec.data import sequences
from seqrec.data.guard import check_replaceable
from seqrec.data.profiles import category_column, fit_profiles
from seqrec.data.render import detect_language
from seqrec.data.schema import DataError, ProfileSpec, atomic_directory, write_prepared
from seqrec.data.sources import read_source
from seqrec.data.sources.tables import EVENT_REASONS, REASONS, DropLog, Tables, distinct, isin
from seqrec.data.splits import SplitResult, cold_item_draw, make_splits, training_events_of

log = logging.getLogger(__name__)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFIG_FILE = "data_config.yaml"
USER_COLUMNS = ("user_idx", "user_id", "train_end", "valid_pos", "test_pos")


class Stages:
    """One progress bar over the pipeline's stages (a log line per stage when not on a terminal)."""

    def __init__(self, names: list[str], enabled: bool = True):
        self.timings: dict[str, float] = {}
        self.enabled = enabled
        interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=len(names), desc="prepare", unit="stage", disable=not interactive, leave=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.bar.update(1)
        # On a terminal the bar shows progress; elsewhere (CI, SLURM logs) one line per stage.
        level = logging.INFO if self.enabled and self.bar.disable else logging.DEBUG
        log.log(level, "prepare: %-8s %.2f s", name, self.timings[name])

    def close(self) -> None:
        self.bar.close()


@dataclass
class Prepared:
    """The prepared layout in memory (what write_prepared writes) plus the report."""

    meta: dict[str, Any]
    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    profiles: pd.DataFrame | None
    spec: ProfileSpec
    report: dict[str, Any] = field(default_factory=dict)


STAGES = ["read", "order", "filter", "index", "split", "profile", "write"]


def build(cfg: DataConfig, tables: Tables, drops: DropLog, stages: Stages) -> Prepared:
    """Canonical tables -> prepared tables (every stage after reading)."""
    with stages.stage("order"):
        events = sequences.dedupe(sequences.sort_events(tables.events), cfg.dedupe, drops)
    with stages.stage("filter"):
        events = sequences.filter_counts(events, cfg.min_user_events, cfg.min_item_events, cfg.kcore, drops)
    if len(events) == 0:
        dropped = ", ".join(f"{k} {v:,}" for k, v in drops.as_dict().items())
        raise DataError(
            f"no events left after reading and filtering (dropped: {dropped}); see data.* policies"
        )
    with stages.stage("index"):
        events, user_ids, item_ids = sequences.index_events(events)
        names, beh_codes = behavior_codes(events, cfg, tables.behavior_order)
        counts = np.bincount(events["user_idx"].to_numpy(), minlength=len(user_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        items = item_table(tables, item_ids, drops)
    times = events["timestamp"].to_numpy(np.int64)
    with stages.stage("split"):
        split = make_splits(cfg, times, beh_codes, names, offsets)
        cold: np.ndarray | None = None
        if cfg.cold_items > 0:
            keep, cold = hold_out_cold_items(cfg, events, offsets, split, drops)
            events, beh_codes = events.loc[keep].reset_index(drop=True), beh_codes[keep]
            counts = np.bincount(events["user_idx"].to_numpy(), minlength=len(user_ids))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            times = events["timestamp"].to_numpy(np.int64)
            split = make_splits(cfg, times, beh_codes, names, offsets)
    with stages.stage("profile"):
        profile_fields = user_profile_fields(tables, user_ids, drops)
        item_idx = events["item_idx"].to_numpy()
        profiles, spec = fit_profiles(
            cfg, profile_fields, items, item_idx, times, beh_codes, offsets, split.train_end, names
        )
    out_events = pd.DataFrame(
        {
            "user_idx": events["user_idx"].to_numpy(np.int32),
            "item_idx": item_idx.astype(np.int32),
            "timestamp": times,
            "behavior": beh_codes,
            "value": events["value"].to_numpy(np.float32),
            "row": events["row"].to_numpy(np.int64),  # original record number in the events file
        }
    )
    meta = make_meta(cfg, items, names, split.info, spec)
    if cold is not None:
        meta["cold_items"] = {"fraction": cfg.cold_items, "seed": cfg.cold_items_seed, "count": len(cold)}
    users = user_table(user_ids, split, profile_fields)
    prepared = Prepared(meta, items, users, out_events, profiles, spec)
    prepared.report = make_report(cfg, tables, drops, prepared, offsets)
    return prepared


def hold_out_cold_items(
    cfg: DataConfig, events: pd.DataFrame, offsets: np.ndarray, split: SplitResult, drops: DropLog
) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask [E], cold item indices): a seeded draw of data.cold_items of the items loses its
    training events. Only events before a user's training end go, so every later event (validation
    and test targets, and what precedes them) stays; the caller splits the kept events again, and
    with leave-one-out the same last two events remain each user's targets."""
    item_idx = events["item_idx"].to_numpy()
    n_items = int(item_idx.max()) + 1 if len(item_idx) else 0
    cold = cold_item_draw(n_items, cfg.cold_items, cfg.cold_items_seed)
    gone = training_events_of(cold, item_idx, offsets, split.train_end)
    drops.add("cold_items", int(gone.sum()))
    return ~gone, cold


def behavior_codes(
    events: pd.DataFrame, cfg: DataConfig, adapter_order: list[str]
) -> tuple[list[str], np.ndarray]:
    """(behaviour names weakest first, [E] int8 index of each event's behaviour into them)."""
    found = sorted(str(b) for b in distinct(events["behavior"]))
    names = sequences.behavior_order(found, cfg.behaviors, adapter_order)
    raw_codes, categories = sequences.codes(events["behavior"])
    return names, pd.Index(names).get_indexer(pd.Index(categories))[raw_codes].astype(np.int8)


def user_table(user_ids: np.ndarray, split: SplitResult, profile_fields: pd.DataFrame | None) -> pd.DataFrame:
    """users.parquet: ids, split positions, and the raw profile values (for inspection and slices)."""
    users = pd.DataFrame(
        {
            "user_idx": np.arange(len(user_ids), dtype=np.int32),
            "user_id": user_ids.astype(str),
            "train_end": split.train_end,
            "valid_pos": split.valid_pos,
            "test_pos": split.test_pos,
        }
    )
    if profile_fields is not None:
        for name in profile_fields.columns:
            users[f"profile_{name}" if name in USER_COLUMNS else name] = profile_fields[name].to_numpy()
    return users


def make_meta(
    cfg: DataConfig, items: pd.DataFrame, names: list[str], split_info: dict[str, Any], spec: ProfileSpec
) -> dict[str, Any]:
    text_fields = [c for c in items.columns if c not in ("item_idx", "item_id")]
    language: str = cfg.source.language
    if language == "auto":
        sample = items[text_fields[0]].dropna().astype(str).tolist() if text_fields else []
        language = detect_language(sample)
    return {
        "source": cfg.source.kind,
        "input": cfg.source.input,
        "behaviors": names,
        "language": language,
        "text_fields": text_fields,
        "split": cfg.split,
        "target_behaviors": list(cfg.target_behaviors),
        **split_info,  # valid_time / test_time of a temporal split
        "category_field": category_column(items, cfg.category_field),
        "profile": spec.source,
    }


def item_table(tables: Tables, item_ids: np.ndarray, drops: DropLog) -> pd.DataFrame:
    """items.parquet: the kept items in index order with their catalogue text (None where absent)."""
    frame = pd.DataFrame(
        {"item_idx": np.arange(len(item_ids), dtype=np.int32), "item_id": item_ids.astype(str)}
    )
    if tables.items is None:
        return frame
    catalogue = tables.items.set_index("item_id")
    drops.add(
        "items_without_events", len(catalogue) - int(isin(tables.items["item_id"], frame["item_id"]).sum())
    )
    text = catalogue.reindex(frame["item_id"].to_numpy())
    for col in catalogue.columns:
        frame[col] = text[col].to_numpy(dtype=object)
    return frame


def user_profile_fields(tables: Tables, user_ids: np.ndarray, drops: DropLog) -> pd.DataFrame | None:
    """Profile fields aligned with user_idx (users missing from the profile table get NaN / None)."""
    if tables.users is None:
        return None
    table = tables.users.set_index("user_id")
    kept = isin(tables.users["user_id"], pd.Series(user_ids.astype(str)))
    drops.add("users_without_events", len(table) - int(kept.sum()))
    aligned = table.reindex(user_ids.astype(str))
    return aligned.reset_index(drop=True)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": round(float(values.mean()), 3),
        "max": int(values.max()),
    }


def make_report(
    cfg: DataConfig, tables: Tables, drops: DropLog, p: Prepared, offsets: np.ndarray
) -> dict[str, Any]:
    lengths = np.diff(offsets)
    ev = p.events
    item_counts = np.bincount(ev["item_idx"].to_numpy(), minlength=len(p.items))
    names = p.meta["behaviors"]
    beh_counts = np.bincount(ev["behavior"].to_numpy().astype(np.int64), minlength=len(names))
    users = p.users
    train_end = users["train_end"].to_numpy()
    pos = np.arange(len(ev)) - np.repeat(offsets[:-1], lengths)
    in_train = pos < np.repeat(train_end, lengths)
    train_items = np.bincount(ev["item_idx"].to_numpy()[in_train], minlength=len(p.items))
    test_users = np.flatnonzero(users["test_pos"].to_numpy() >= 0)
    test_items = ev["item_idx"].to_numpy()[offsets[test_users] + users["test_pos"].to_numpy()[test_users]]
    text_fields = p.meta["text_fields"]
    no_text = int(p.items[text_fields].isna().all(axis=1).sum()) if text_fields else len(p.items)
    split: dict[str, Any] = {
        "kind": cfg.split,
        "target_behaviors": list(cfg.target_behaviors),
        "train_events": int(in_train.sum()),
        "users_with_train_events": int((train_end > 0).sum()),
        "valid_users": int((users["valid_pos"] >= 0).sum()),
        "test_users": len(test_users),
        "cold_test_targets": int((train_items[test_items] == 0).sum()),
    }
    for key in ("valid_time", "test_time"):
        if key in p.meta:
            split[key] = _iso(p.meta[key])
    profile: dict[str, Any] = {
        "source": p.spec.source,
        "categorical": {c["name"]: len(c["vocab"]) for c in p.spec.categorical},
        "numeric": [c["name"] for c in p.spec.numeric],
    }
    if tables.users is not None:
        profile["users_without_profile"] = int((~isin(users["user_id"], tables.users["user_id"])).sum())
    times = ev["timestamp"].to_numpy()
    return {
        "source": cfg.source.kind,
        "input": cfg.source.input,
        "files": tables.files,
        "users": len(users),
        "items": len(p.items),
        "interactions": len(ev),
        "raw_rows": tables.raw_rows,
        "dropped": drops.as_dict(),
        "dropped_events": drops.event_total(),
        "dropped_examples": {k: v for k, v in drops.examples.items() if v},
        "behaviors": {n: int(c) for n, c in zip(names, beh_counts)},
        "time_range": {
            "first": _iso(times.min()),
            "last": _iso(times.max()),
            "first_ts": int(times.min()),
            "last_ts": int(times.max()),
        },
        "sequence_length": {**_stats(lengths), "histogram": sequences.length_histogram(lengths)},
        "item_frequency": {**_stats(item_counts), "histogram": sequences.length_histogram(item_counts)},
        "split": split,
        "items_without_text": no_text,
        "language": p.meta["language"],
        "profile": profile,
    }


def prepare_into(cfg: DataConfig, directory: Path, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline and write the prepared layout into the existing `directory`."""
    validate(cfg)
    start = time.perf_counter()
    stages = Stages(STAGES, progress)
    drops = DropLog()
    try:
        with stages.stage("read"):
            tables = read_source(cfg, drops)
        prepared = build(cfg, tables, drops, stages)
        with stages.stage("write"):
            write_prepared(
                directory, prepared.meta, prepared.items, prepared.users, prepared.events,
                prepared.profiles, prepared.spec,
            )  # fmt: skip
            save_config(cfg, directory / CONFIG_FILE)
    finally:
        stages.close()
    report = prepared.report
    report["timings_s"] = stages.timings
    report["total_s"] = round(time.perf_counter() - start, 3)
    (directory / REPORT_JSON).write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (directory / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    return report


def prepare(
    cfg: DataConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    engine: str = "pandas",
    options: Any = None,
) -> dict[str, Any]:
    """Prepare `cfg.source` into `out` atomically (nothing appears at `out` if any stage fails).

    `engine`: "pandas" (in memory) or "duckdb" (out of core, seqrec.data.engine_duckdb, with
    `options` an EngineOptions); both write the same prepared tables.
    """
    if overwrite:  # only ever replace an earlier prepared data set, never the input or other data
        check_replaceable(out, [cfg.source.input])
    with atomic_directory(out, overwrite=overwrite) as tmp:
        return prepare_with(cfg, tmp, progress, engine, options)


def prepare_with(
    cfg: DataConfig, directory: Path, progress: bool = True, engine: str = "pandas", options: Any = None
) -> dict[str, Any]:
    """prepare_into on the chosen engine (into an existing, normally temporary, directory)."""
    if engine == "duckdb":
        from seqrec.data import engine_duckdb

        return engine_duckdb.prepare_into(cfg, directory, progress, options)
    if engine != "pandas":
        raise ValueError(f"unknown prepare engine {engine!r} (pandas or duckdb)")
    return prepare_into(cfg, directory, progress)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def report_markdown(r: dict[str, Any]) -> str:
    """The human version of report.json."""
    out = [
        f"# Data report: {r['source']}",
        "",
        f"Input: `{r['input']}`",
        "",
        f"**{r['users']:,} users, {r['items']:,} items, {r['interactions']:,} interactions** "
        f"({r['time_range']['first']} to {r['time_range']['last']}; language {r['language']}).",
        "",
        "## Rows read",
        "",
        *_table(
            [(k, f"{v:,}", r["files"].get(k, "")) for k, v in r["raw_rows"].items()],
            ("table", "rows", "file"),
        ),
        "",
        "## Dropped",
        "",
    ]
    if r["dropped"]:
        rows = [
            (reason, REASONS[reason][0], f"{n:,}", REASONS[reason][1]) for reason, n in r["dropped"].items()
        ]
        out += _table(rows, ("reason", "table", "rows", "meaning"))
        out += ["", f"Events dropped in total: {r['dropped_events']:,} (kept {r['interactions']:,}).", ""]
        for reason, examples in r["dropped_examples"].items():
            out += [f"- `{reason}` e.g. " + "; ".join(f"`{e}`" for e in examples)]
    else:
        out += ["Nothing was dropped."]
    out += [
        "",
        "## Behaviours",
        "",
        *_table([(b, f"{n:,}") for b, n in r["behaviors"].items()], ("behaviour", "events")),
    ]
    for key, title in (("sequence_length", "Events per user"), ("item_frequency", "Events per item")):
        s = r[key]
        out += [
            "",
            f"## {title}",
            "",
            f"min {s['min']}, median {s['median']}, mean {s['mean']}, max {s['max']}",
            "",
            *_table([(k, f"{v:,}") for k, v in s["histogram"].items()], ("events", "count")),
        ]
    sp = r["split"]
    out += ["", "## Split", "", *_table([(k, v) for k, v in sp.items()], ("", "value"))]
    pr = r["profile"]
    out += [
        "",
        "## Profile features",
        "",
        f"Source: {pr['source']}. Categorical (vocabulary size): "
        + (", ".join(f"{k} ({v})" for k, v in pr["categorical"].items()) or "none")
        + ". Numeric: "
        + (", ".join(pr["numeric"]) or "none")
        + ".",
    ]
    if "timings_s" in r:
        out += [
            "",
            "## Timings",
            "",
            *_table([(k, f"{v:.2f} s") for k, v in r["timings_s"].items()], ("stage", "time")),
        ]
        out += ["", f"Total: {r['total_s']:.2f} s"]
    return "\n".join(out) + "\n"


def summary(r: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    dropped = ", ".join(f"{k} {v:,}" for k, v in r["dropped"].items()) or "nothing"
    sp = r["split"]
    return (
        f"{r['users']:,} users, {r['items']:,} items, {r['interactions']:,} interactions "
        f"({r['time_range']['first'][:10]} .. {r['time_range']['last'][:10]})\n"
        f"dropped: {dropped}\n"
        f"split {sp['kind']}: {sp['valid_users']:,} valid / {sp['test_users']:,} test users, "
        f"{sp['train_events']:,} training events; profile: {r['profile']['source']}; "
        f"took {r.get('total_s', 0):.1f} s"
    )


__all__ = ["EVENT_REASONS", "Prepared", "build", "prepare", "prepare_into", "report_markdown", "summary"]
