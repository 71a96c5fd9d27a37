"""Every bad input and fault we know of, run for real; the table in tests/README.md is its output.

Each case runs the `seqrec` command a user would type (``python -m seqrec.cli ...`` in a fresh
process, imports included) against a scratch folder: a synthetic log, tiny models trained for a
few steps (a tiny BERT backbone built from a config, as in the tests), and copies of them
damaged on purpose. For each case the script records the exit code, what happened to the user's
files or the run (checked after the command, not assumed), and the first line of the message,
then rewrites the table between the ``faults`` markers in tests/README.md and
benchmarks/results/faults.json. Nothing here is written by hand.

    .venv/bin/python benchmarks/faults.py                 # all cases (a few minutes on 2 CPU cores)
    .venv/bin/python benchmarks/faults.py --skip-launch   # without the `accelerate launch` case
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
README = ROOT / "tests" / "README.md"
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


@dataclass
class Outcome:
    exit_code: int
    outcome: str
    message: str


@dataclass
class Case:
    area: str
    fault: str
    expected_exit: int
    run: Callable[[Path], Outcome]
    command: str = ""
    result: Outcome | None = field(default=None)


class Work:
    """The scratch folder: data, a tiny backbone, trained runs; helpers to run seqrec."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
        self.env.pop("HF_HUB_OFFLINE", None)  # observe the real behaviour (seqrec sets it for local files)
        self.env["SEQREC_CACHE"] = str(root / "cache")
        self.env["OMP_NUM_THREADS"] = "1"

    def seqrec(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "seqrec.cli", *args]
        return subprocess.run(
            cmd, cwd=cwd or self.root, env=self.env, capture_output=True, text=True, timeout=600
        )

    def outcome(self, proc: subprocess.CompletedProcess[str], what: str) -> Outcome:
        return Outcome(proc.returncode, what, first_message(proc, self.root))

    # ---- fixtures ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from tests.tiny_models import tiny_backbone_dir

        self.backbone = tiny_backbone_dir("bert", self.root)
        self.data = self.root / "data"
        check(
            self.seqrec("data", "synth", "--out", str(self.data), "--users", "60", "--items", "40", "--quiet")
        )
        self.config = self.root / "tiny.yaml"
        self.config.write_text(
            f"model:\n  backbone: {{name: {self.backbone}}}\n  adapter: {{r: 4, alpha: 8, dropout: 0.0}}\n"
            "  encoder: {micro_batch_size: 16}\n"
            "  aggregator: {d_model: 16, layers: 1, heads: 2, dropout: 0.0, time_buckets: 8}\n"
            "  profile: {dim: 8, cat_dim: 4}\n  fusion: {hidden: 32, dropout: 0.0}\n  head: {dim: 16}\n"
            "window: {size: 3, max_windows: 4}\ntext: {max_window_tokens: 64, max_item_tokens: 24}\n"
            "train: {epochs: 1, batch_size: 16, tracker: none}\n",
            encoding="utf-8",
        )
        self.runs = {name: self.root / "runs" / name for name in ("head", "joint", "head_init", "sasrec")}
        check(self.train(self.runs["head"], "--stage", "head"))
        check(self.train(self.runs["joint"], "train.max_steps=2"))
        check(
            self.train(
                self.runs["head_init"], "--stage", "head", f"train.init_from={self.runs['joint'] / 'best'}"
            )
        )
        check(self.train(self.runs["sasrec"], "--model", "sasrec", "sasrec.d_model=8", "train.epochs=2"))

    def train(self, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.seqrec(
            "train", "--config", str(self.config), "--data", str(self.data), "--output", str(out), *extra
        )

    def copy_model(self, run: str, name: str) -> Path:
        dst = self.root / "damaged" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.runs[run] / "best", dst)
        return dst


def check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"setup failed ({proc.args}):\n{proc.stderr[-3000:]}")


_LOG_PREFIX = re.compile(r"^\d\d:\d\d:\d\d (WARNING|ERROR|INFO) [\w.]+: ")


def first_message(proc: subprocess.CompletedProcess[str], root: Path) -> str:
    """The error line (exit != 0), else the first warning seqrec printed; work paths shortened."""
    lines = proc.stderr.splitlines()
    if proc.returncode != 0:
        found = [ln for ln in lines if ": error: " in ln] or lines[-1:]
    else:
        found = [_LOG_PREFIX.sub("warning: ", ln) for ln in lines if " WARNING seqrec" in ln]
    text = found[0] if found else ""
    text = text.replace(str(root), "$WORK")
    return text if len(text) <= 220 else text[:217] + "..."


def newest_state(run: Path) -> dict[str, Any]:
    """trainer_state.json of the newest checkpoint (by step number) of a run folder."""
    steps = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]
    newest = max(steps, key=lambda p: int(p.name.split("-")[1]))
    return dict(json.loads((newest / "trainer_state.json").read_text()))


def flip_bytes(path: Path, count: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(count):
        raw[len(raw) - 4 * count + 4 * i] ^= 0x5A
    path.write_bytes(bytes(raw))


# ---- the cases ----------------------------------------------------------------------------------------


def data_cases(w: Work) -> list[Case]:
    raw = w.data / "raw"

    def out_contains_input(_: Path) -> Outcome:
        d = w.root / "D"
        shutil.rmtree(d, ignore_errors=True)
        check(w.seqrec("data", "synth", "--out", str(d), "--users", "30", "--items", "20", "--quiet"))
        before = sorted(p.name for p in (d / "raw").iterdir())
        proc = w.seqrec(
            "data", "prepare", "--input", str(d / "raw"), "--out", str(d), "--overwrite", "--quiet"
        )
        kept = (d / "raw").is_dir() and sorted(p.name for p in (d / "raw").iterdir()) == before
        return w.outcome(proc, "raw input kept" if kept else "RAW INPUT DELETED")

    def out_is_parent(_: Path) -> Outcome:
        proc = w.seqrec("data", "prepare", "--input", str(raw), "--out", str(w.data.parent), "--overwrite")
        return w.outcome(
            proc, "scratch folder kept" if (w.data / "events.parquet").is_file() else "FOLDER WIPED"
        )

    def unrelated(_: Path) -> Outcome:
        folder = w.root / "my-project"
        folder.mkdir(exist_ok=True)
        (folder / "notes.txt").write_text("mine")
        proc = w.seqrec(
            "data", "prepare", "--input", str(raw), "--out", str(folder), "--overwrite", "--quiet"
        )
        return w.outcome(proc, "folder kept" if (folder / "notes.txt").is_file() else "FOLDER WIPED")

    def replace_prepared(_: Path) -> Outcome:
        out = w.root / "prepared"
        check(w.seqrec("data", "prepare", "--input", str(raw), "--out", str(out), "--overwrite", "--quiet"))
        (out / "stale.txt").write_text("old")
        proc = w.seqrec("data", "prepare", "--input", str(raw), "--out", str(out), "--overwrite", "--quiet")
        return w.outcome(proc, "replaced" if not (out / "stale.txt").exists() else "not replaced")

    def tab_csv(_: Path) -> Outcome:
        f = w.root / "tabs.csv"
        f.write_text(
            "user_id\titem_id\ttimestamp\tbehavior\nu1\ti1\t1600000000\tview\nu1\ti2\t1600000100\tview\n"
        )
        proc = w.seqrec("data", "prepare", "--input", str(f), "--out", str(w.root / "tabs"), "--quiet")
        return w.outcome(proc, "refused with a delimiter hint" if "tsv" in proc.stderr else "refused")

    def no_behavior(_: Path) -> Outcome:
        f = w.root / "nobehavior.csv"
        f.write_text("user_id,item_id,timestamp\n" + "".join(f"u1,i{i},{1600000000 + i}\n" for i in range(4)))
        proc = w.seqrec("data", "prepare", "--input", str(f), "--out", str(w.root / "nob"), "--quiet")
        return w.outcome(proc, "refused; names the setting" if "behavior=null" in proc.stderr else "refused")

    def broken_quote(_: Path) -> Outcome:
        f = w.root / "quote.csv"
        f.write_text('user_id,item_id,timestamp,behavior\nu1,"i1,1600000000,view\nu1,i2,1600000100,view\n')
        proc = w.seqrec("data", "prepare", "--input", str(f), "--out", str(w.root / "q"), "--quiet")
        return w.outcome(proc, "refused" if proc.returncode else "accepted")

    def newline_title(_: Path) -> Outcome:
        folder = w.root / "nl"
        folder.mkdir(exist_ok=True)
        (folder / "events.csv").write_text(
            "user_id,item_id,timestamp,behavior\n"
            + "".join(f"u1,i{i % 2},{1600000000 + 60 * i},view\n" for i in range(4))
        )
        (folder / "items.csv").write_text('item_id,title\ni0,"red\nshoes"\ni1,blue hat\n')
        out = w.root / "nl-out"
        check(w.seqrec("data", "prepare", "--input", str(folder), "--out", str(out), "--overwrite", "--quiet",
                       "min_user_events=1"))  # fmt: skip
        proc = w.seqrec(
            "data", "show", "--data", str(out), "--user", "u1", "--split", "train", "text.time=none"
        )
        lines = [ln for ln in proc.stdout.splitlines() if "viewed" in ln]
        ok = lines and all("shoes" in ln or "hat" in ln for ln in lines)
        return w.outcome(proc, "one line per event" if ok else f"event text split over lines: {lines}")

    return [
        Case("data", "`prepare --overwrite` with --out = the folder holding the input (`D/raw` into `D`)", 2,
             out_contains_input, "data prepare --input D/raw --out D --overwrite"),
        Case("data", "`prepare --overwrite` with --out = a parent of the input", 2, out_is_parent,
             "data prepare --input $WORK/data/raw --out $WORK --overwrite"),
        Case("data", "`prepare --overwrite` into an unrelated non-empty folder", 2, unrelated,
             "data prepare --out my-project --overwrite"),
        Case("data", "`prepare --overwrite` over an earlier prepared data set", 0, replace_prepared,
             "data prepare --out prepared --overwrite"),
        Case("data", "tab-separated file named `.csv`", 2, tab_csv, "data prepare --input tabs.csv"),
        Case("data", "one kind of event, no `behavior` column", 2, no_behavior, "data prepare --input nobehavior.csv"),
        Case("data", "unterminated quote in the events file", 2, broken_quote, "data prepare --input quote.csv"),
        Case("data", "line break inside a quoted item title", 0, newline_title, "data show --user u1"),
    ]  # fmt: skip


def model_cases(w: Work) -> list[Case]:
    def serve(run: str, *extra: str) -> Callable[[Path], Outcome]:
        def go(_: Path) -> Outcome:
            best = str(w.runs[run] / "best")
            cmd = extra[0]
            if cmd == "recommend":
                args = ["recommend", "--checkpoint", best, "--user", "u01", "--json", *extra[1:]]
            elif cmd == "export":
                out = w.root / f"export-{run}"
                args = ["export", "--checkpoint", best, "--out", str(out), "--overwrite", "--quiet"]
            elif cmd == "evaluate":
                args = ["evaluate", "--checkpoint", best, "--split", "test"]
            else:
                out = w.root / f"publish-{run}"
                args = ["publish", "--checkpoint", best, "--repo-id", "me/tiny", "--dry-run", "--out", str(out),
                        "--overwrite", "--base-model", "me/tiny-bert"]  # fmt: skip
            proc = w.seqrec(*args)
            return w.outcome(proc, "served" if proc.returncode == 0 else "failed")

        return go

    def damaged(
        run: str, name: str, damage: Callable[[Path], None], command: str
    ) -> Callable[[Path], Outcome]:
        def go(_: Path) -> Outcome:
            folder = w.copy_model(run, f"{run}-{name}-{command}")
            damage(folder)
            if command == "recommend":
                proc = w.seqrec("recommend", "--checkpoint", str(folder), "--user", "u01")
            elif command == "evaluate":
                proc = w.seqrec("evaluate", "--checkpoint", str(folder), "--split", "test")
            else:
                proc = w.seqrec("publish", "--checkpoint", str(folder), "--repo-id", "me/x", "--dry-run",
                                "--out", str(folder.parent / f"pub-{name}"), "--base-model", "me/tiny-bert")  # fmt: skip
            return w.outcome(proc, "refused" if proc.returncode else "ACCEPTED")

        return go

    def nan_weight(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        from seqrec.manifest import seal_model_folder

        head = load_file(str(folder / "head.safetensors"))
        head[sorted(head)[0]].view(-1)[0] = float("nan")
        save_file(head, str(folder / "head.safetensors"))
        seal_model_folder(folder)  # a consistent manifest: only the finite check can tell

    def edit_config(folder: Path) -> None:
        cfg = folder / "seqrec_config.json"
        cfg.write_text(cfg.read_text().replace('"temperature": 0.05', '"temperature": 0.07'))

    def pickle_adapter(folder: Path) -> None:
        (folder / "adapter_model.safetensors").unlink()
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")

    def truncate(folder: Path) -> None:
        f = folder / "head.safetensors"
        f.write_bytes(f.read_bytes()[:-100])

    def old_folder(_: Path) -> Outcome:
        folder = w.copy_model("head", "pre-manifest")
        (folder / "manifest.json").unlink()
        proc = w.seqrec("evaluate", "--checkpoint", str(folder), "--split", "test")
        return w.outcome(proc, "loads, with a warning" if "manifest" in proc.stderr else "loads")

    def baseline(command: str, *extra: str) -> Callable[[Path], Outcome]:
        def go(_: Path) -> Outcome:
            best = str(w.runs["sasrec"] / "best")
            if command == "recommend":
                proc = w.seqrec("recommend", "--checkpoint", best, "--user", "u01", *extra)
            elif command == "export":
                proc = w.seqrec("export", "--checkpoint", best, "--out", str(w.root / "export-sasrec"))
            else:
                out = str(w.root / "publish-sasrec")
                proc = w.seqrec(
                    "publish", "--checkpoint", best, "--repo-id", "me/sasrec", "--dry-run", "--out", out
                )
            return w.outcome(proc, "served" if proc.returncode == 0 else "refused, says what it is")

        return go

    events = w.root / "new-events.jsonl"
    events.write_text('{"item_id": "i03", "behavior": "buy", "timestamp": 1900000000}\n')
    cases = []
    for run, label in (
        ("head", "head-stage model (frozen base)"),
        ("head_init", "head-stage model (train.init_from)"),
    ):
        cases += [
            Case("serving", f"`recommend` on a {label}", 0, serve(run, "recommend"), "recommend --checkpoint RUN/best"),
            Case("serving", f"`recommend --events` on a {label}", 0, serve(run, "recommend", "--events", str(events)),
                 "recommend --events new.jsonl"),
            Case("serving", f"`export` on a {label}", 0, serve(run, "export"), "export --checkpoint RUN/best"),
            Case("serving", f"`publish --dry-run` on a {label}", 0, serve(run, "publish"), "publish --dry-run"),
        ]  # fmt: skip
    cases += [
        Case("serving", "`evaluate` on a head-stage model", 0, serve("head", "evaluate"), "evaluate --split test"),
        Case("serving", "`recommend` on a SASRec folder", 0, baseline("recommend"), "recommend --checkpoint sasrec/best"),
        Case("serving", "`recommend --events` on a SASRec folder", 0, baseline("recommend", "--events", str(events)),
             "recommend --events new.jsonl"),
        Case("serving", "`export` on a SASRec folder", 0, baseline("export"), "export --checkpoint sasrec/best"),
        Case("serving", "`publish --dry-run` on a SASRec folder", 0, baseline("publish"), "publish --dry-run"),
        Case("model folder", "64 flipped bytes in `head.safetensors`", 2,
             damaged("head", "head.safetensors", lambda f: flip_bytes(f / "head.safetensors"), "recommend"), "recommend"),
        Case("model folder", "64 flipped bytes in `adapter_model.safetensors`", 2,
             damaged("head_init", "adapter", lambda f: flip_bytes(f / "adapter_model.safetensors"), "recommend"),
             "recommend"),
        Case("model folder", "64 flipped bytes in `head.safetensors`", 2,
             damaged("head", "head-publish", lambda f: flip_bytes(f / "head.safetensors"), "publish"), "publish --dry-run"),
        Case("model folder", "64 flipped bytes in SASRec `model.safetensors`", 2,
             damaged("sasrec", "sasrec", lambda f: flip_bytes(f / "model.safetensors"), "evaluate"), "evaluate"),
        Case("model folder", "NaN weight, manifest rewritten to match", 2,
             damaged("head", "nan", nan_weight, "evaluate"), "evaluate"),
        Case("model folder", "NaN weight, manifest rewritten to match", 2,
             damaged("head", "nan-pub", nan_weight, "publish"), "publish --dry-run"),
        Case("model folder", "edited `seqrec_config.json`", 2, damaged("joint", "config", edit_config, "recommend"),
             "recommend"),
        Case("model folder", "pickle `adapter_model.bin` in place of safetensors", 2,
             damaged("joint", "pickle", pickle_adapter, "recommend"), "recommend"),
        Case("model folder", "truncated `head.safetensors`", 2, damaged("head", "trunc", truncate, "evaluate"), "evaluate"),
        Case("model folder", "folder saved before manifests (none)", 0, old_folder, "evaluate"),
    ]  # fmt: skip
    return cases


def training_cases(w: Work, skip_launch: bool) -> list[Case]:
    def locked(_: Path) -> Outcome:
        out = w.root / "runs" / "locked"
        code = (
            "import sys, time; from pathlib import Path; from seqrec.training.run_folder import run_folder_lock\n"
            f"with run_folder_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(120)\n"
        )
        holder = subprocess.Popen([sys.executable, "-c", code], env=w.env, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            proc = w.train(out, "--model", "popularity")
        finally:
            holder.send_signal(signal.SIGTERM)
            holder.wait()
        named = f"pid {holder.pid}" in proc.stderr
        return w.outcome(proc, "refused at once, names the holder's pid" if named else "refused")

    def rerun(*extra: str) -> Callable[[Path], Outcome]:
        def go(_: Path) -> Outcome:
            out = w.root / "runs" / f"rerun{''.join(extra)}"
            shutil.rmtree(out, ignore_errors=True)
            check(w.train(out, "--model", "sasrec", "sasrec.d_model=8"))
            (out / "best" / "marker").write_text("first run")
            proc = w.train(out, "--model", "sasrec", "sasrec.d_model=8", *extra)
            kept = (out / "best" / "marker").exists()
            return w.outcome(proc, "first run kept" if kept else "first run replaced")

        return go

    def all_bad(_: Path) -> Outcome:
        out = w.root / "runs" / "allbad"
        shutil.rmtree(out, ignore_errors=True)
        check(w.train(out, "--model", "sasrec", "sasrec.d_model=8", "train.epochs=2"))
        for step in (out / "checkpoints").iterdir():
            flip_bytes(next(p for p in sorted(step.iterdir()) if p.suffix == ".safetensors"), 8)
        proc = w.train(out, "--model", "sasrec", "sasrec.d_model=8", "train.epochs=1", "--resume", "auto")
        aside = sorted(p.name for p in out.glob("valid_history.jsonl.old-*"))
        lines = len((out / "valid_history.jsonl").read_text().splitlines())
        what = (
            f"started fresh; old history set aside, new history {lines} line(s)" if aside else "history mixed"
        )
        return w.outcome(proc, what)

    def budget(_: Path) -> Outcome:
        out = w.root / "runs" / "budget"
        shutil.rmtree(out, ignore_errors=True)
        args = ["--model", "sasrec", "sasrec.d_model=8", "train.epochs=3"]
        check(w.train(out, *args, "train.max_minutes=0.000001"))
        first = newest_state(out)
        proc = w.train(out, *args, "train.max_minutes=30", "--resume", "auto")
        state = newest_state(out)
        what = f"continued: step {first['global_step']} -> {state['global_step']} ({state['stop_reason']})"
        return w.outcome(proc, what)

    def mistake(*extra: str, outcome: str = "refused before any work") -> Callable[[Path], Outcome]:
        def go(_: Path) -> Outcome:
            out = w.root / "runs" / "mistake"
            shutil.rmtree(out, ignore_errors=True)
            proc = w.train(out, *extra)
            return w.outcome(proc, outcome if not (out / "config.yaml").exists() else "run started")

        return go

    def custom_code(_: Path) -> Outcome:
        folder = w.root / "custom-model"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(
            json.dumps({"model_type": "my_lm", "auto_map": {"AutoModel": "m.M"}})
        )
        return mistake(f"model.backbone.name={folder}")(_)

    def recommend_k(k: str) -> Callable[[Path], Outcome]:
        def go(_: Path) -> Outcome:
            proc = w.seqrec(
                "recommend", "--checkpoint", str(w.runs["joint"] / "best"), "--user", "u01", "--k", k
            )
            return w.outcome(proc, "refused")

        return go

    def options_after(_: Path) -> Outcome:
        out = w.root / "runs" / "mixed"
        shutil.rmtree(out, ignore_errors=True)
        proc = w.seqrec("train", "--data", str(w.data), "train.seed=3", "--output", str(out), "train.epochs=2",
                        "--model", "popularity")  # fmt: skip
        cfg = json.loads((out / "best" / "seqrec_config.json").read_text()) if proc.returncode == 0 else {}
        ok = cfg.get("train", {}).get("seed") == 3 and cfg.get("train", {}).get("epochs") == 2
        return w.outcome(proc, "both overrides applied" if ok else "rejected")

    def launch(_: Path) -> Outcome:
        out = w.root / "runs" / "launched"
        shutil.rmtree(out, ignore_errors=True)
        yaml = ROOT / "train" / "accelerate" / "zero2.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(yaml), "--num_processes", "1",
               str(ROOT / "train" / "train.py"), "--config", str(w.config), "--data", str(w.data), "--output", str(out),
               "--model", "sasrec", "sasrec.d_model=8", "train.max_steps=2"]  # fmt: skip
        elsewhere = w.root / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        proc = subprocess.run(cmd, cwd=elsewhere, env=w.env, capture_output=True, text=True, timeout=600)
        return w.outcome(proc, "trained" if (out / "best").is_dir() else "failed")

    cases = [
        Case("training", "second run into a folder another run holds", 2, locked, "train --output RUN (locked)"),
        Case("training", "rerun into a finished run without --resume", 2, rerun(), "train --output RUN"),
        Case("training", "rerun with --overwrite", 0, rerun("--overwrite"), "train --output RUN --overwrite"),
        Case("training", "every checkpoint corrupted, then --resume auto", 0, all_bad, "train --resume auto"),
        Case("training", "stopped by train.max_minutes, resumed with a larger budget", 0, budget,
             "train --resume auto train.max_minutes=30"),
        Case("config", "`train.lr=-1`", 2, mistake("train.lr=-1"), "train train.lr=-1"),
        Case("config", "`model.backbone.name=does-not-exist`", 2, mistake("model.backbone.name=does-not-exist"),
             "train model.backbone.name=does-not-exist"),
        Case("config", "hub id not in the cache while offline", 2,
             mistake("model.backbone.name=someorg/not-cached"), "HF_HUB_OFFLINE=1 train model.backbone.name=ORG/NAME"),
        Case("config", "backbone with custom code, remote code off", 2, custom_code, "train model.backbone.name=DIR"),
        Case("config", "`train.best_metric=ndcg@7` (not in eval.ks)", 2, mistake("train.best_metric=ndcg@7"),
             "train train.best_metric=ndcg@7"),
        Case("config", "unknown key `train.lrr=1`", 2, mistake("train.lrr=1"), "train train.lrr=1"),
        Case("config", "options after key=value overrides", 0, options_after,
             "train train.seed=3 --output RUN train.epochs=2 --model popularity"),
        Case("serving", "`recommend --k 0`", 2, recommend_k("0"), "recommend --k 0"),
        Case("serving", "`recommend --k -5`", 2, recommend_k("-5"), "recommend --k -5"),
    ]  # fmt: skip
    offline = cases[7]
    original = offline.run

    def offline_run(p: Path) -> Outcome:
        w.env["HF_HUB_OFFLINE"] = "1"
        try:
            return original(p)
        finally:
            w.env.pop("HF_HUB_OFFLINE", None)

    offline.run = offline_run
    if not skip_launch:
        cases.append(
            Case("training", "`accelerate launch --config_file /abs/zero2.yaml` from another folder", 0, launch,
                 "cd elsewhere && accelerate launch --config_file ABS/train/accelerate/zero2.yaml train/train.py")
        )  # fmt: skip
    return cases


# ---- report ----------------------------------------------------------------------------------------


def table(cases: list[Case]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| # | area | fault or bad input | command | exit | as expected | observed outcome | first line of the message |",
            "|---:|---|---|---|---:|---|---|---|"]  # fmt: skip
    for i, c in enumerate(cases, 1):
        r = c.result
        assert r is not None
        ok = "yes" if r.exit_code == c.expected_exit else f"**no** (expected {c.expected_exit})"
        rows.append(
            f"| {i} | {c.area} | {cell(c.fault)} | `{cell(c.command)}` | {r.exit_code} | {ok} | {cell(r.outcome)} | "
            f"{cell(r.message) if r.message else ''} |"
        )
    return "\n".join(rows)


def write_readme(cases: list[Case], seconds: float) -> None:
    text = README.read_text(encoding="utf-8") if README.is_file() else ""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"{BEGIN}\n<!-- generated by `python benchmarks/faults.py` ({stamp}, {seconds:.0f} s); do not edit -->\n\n"
        f"{table(cases)}\n{END}"
    )
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", help="Scratch folder (default: a temporary one, removed after).")
    parser.add_argument("--skip-launch", action="store_true", help="Leave out the accelerate launch case.")
    parser.add_argument(
        "--only", help="Run only cases whose fault text matches this regex (no files written)."
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqrec-faults-") as tmp:
        root = Path(args.work) if args.work else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        work = Work(root)
        print(f"setting up in {root} (synthetic data, tiny models) ...", flush=True)
        work.setup()
        cases = data_cases(work) + model_cases(work) + training_cases(work, args.skip_launch)
        if args.only:
            cases = [c for c in cases if re.search(args.only, c.fault)]
        for i, case in enumerate(cases, 1):
            t0 = time.perf_counter()
            case.result = case.run(root)
            mark = "ok " if case.result.exit_code == case.expected_exit else "BAD"
            print(f"[{i:2d}/{len(cases)}] {mark} exit {case.result.exit_code} {time.perf_counter() - t0:5.1f}s  "
                  f"{case.area}: {case.fault} -> {case.result.outcome}", flush=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if args.only:
        return 0
    write_readme(cases, seconds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "cases": [
            {"area": c.area, "fault": c.fault, "command": c.command, "expected_exit": c.expected_exit,
             "exit": c.result.exit_code, "outcome": c.result.outcome, "message": c.result.message}
            for c in cases if c.result is not None
        ],
    }  # fmt: skip
    RESULTS.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    bad = [c for c in cases if c.result is not None and c.result.exit_code != c.expected_exit]
    print(
        f"{len(cases) - len(bad)}/{len(cases)} as expected in {seconds:.0f} s; wrote {README} and {RESULTS}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
