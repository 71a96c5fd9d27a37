"""Collation speed: SeqRecCollator over synthetic training and evaluation batches (CPU, one thread).

Token ids are random lists of realistic lengths (no tokenizer: this times the collator, not the
tokenizer); the training batches also carry the catalogue's token ids (live item encoding). Every
round collates every batch of one epoch; the figure is the median over rounds of the mean
milliseconds per batch.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_collate.py --out /tmp/collate.json

Run it once per code version (e.g. before and after a change, on the same machine) and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args()
    torch.set_num_threads(1)

    from seqrec.config import load_config
    from seqrec.data.collate import SeqRecCollator
    from seqrec.data.examples import make_input, split_end
    from seqrec.data.schema import PreparedData
    from seqrec.data.synth import SynthConfig, synth

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        synth(Path(tmp) / "d", SynthConfig(n_users=args.users, n_items=400, mean_events=40), progress=False)
        data = PreparedData.load(Path(tmp) / "d")
        cfg = load_config(None, ["window.size=4", "window.max_windows=16"])
        item_tokens = [rng.integers(5, 1000, int(rng.integers(8, 40))).tolist() for _ in range(data.n_items)]
        results: dict[str, Any] = {}
        for split in ("train", "valid"):
            users = data.train_users(2) if split == "train" else data.eval_users("valid")
            examples = []
            for u in users.tolist():
                end = split_end(data, u, split)
                inp = make_input(data, u, end, cfg.window)
                ids = [rng.integers(5, 1000, int(rng.integers(20, 80))).tolist() for _ in inp.windows]
                examples.append({"input": inp, "window_ids": ids})
            collate = SeqRecCollator(
                data, cfg, split, item_tokens=item_tokens if split == "train" else None, pad_token_id=0
            )
            batches = [examples[i : i + args.batch_size] for i in range(0, len(examples), args.batch_size)]
            collate(batches[0])  # warm-up
            per_round = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                for b in batches:
                    collate(b)
                per_round.append((time.perf_counter() - start) / len(batches) * 1000)
            windows = sum(len(ex["input"].windows) for ex in examples) / len(examples)
            results[split] = {
                "ms_per_batch": round(statistics.median(per_round), 3),
                "batches": len(batches),
                "batch_size": args.batch_size,
                "windows_per_user": round(windows, 2),
            }
            print(f"{split}: {results[split]}")
    report = {
        "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "load_average": os.getloadavg(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
