"""Feature build before/after corpus-wide deduplication, on Amazon Beauty (head stage, MiniLM).

    python benchmarks/bench_features.py --data data/beauty [--sample 512]

Before: every window text was encoded per 2048-window chunk (duplicates merged only inside a chunk),
with the previous Beauty text settings (date gap + behaviour verb in each window, 256-token
windows), and the item texts separately. After: identical texts are encoded once across the whole
corpus, and with one event per window and no date in the text (beauty-text.yaml) a window's text
is its item's text, so windows and items share the 12k encodings.

Counts of texts sent to the backbone are exact for both. Times: both schemes encode a random
sample of ``--sample`` of their own texts back to back in this process (same load, one thread);
each total is its per-text time times its text count. Results: results/features.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OLD = ["window.size=1", "window.max_windows=20", "text.time=gap"]
CHUNK = 2048


def texts_for(data, overrides: list[str], config: str | None):  # type: ignore[no-untyped-def]
    from seqrec.data.collate import iter_windows
    from seqrec.data.examples import make_renderer, render_windows
    from seqrec.training.run import resolve_config

    base = ["train.stage=head", "model.backbone.name=minilm-l6", "model.adapter.method=frozen"]
    cfg = resolve_config(config, str(data.path), "unused", None, [*base, *overrides])
    renderer = make_renderer(data, cfg)
    windows = list(iter_windows(data, cfg, ["train", "valid", "test"]))
    texts = [render_windows(data, renderer, u, (w,))[0] for u, w in windows]
    return cfg, texts, renderer.item_texts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Prepared Beauty data.")
    p.add_argument("--sample", type=int, default=512, help="Texts timed per scheme.")
    args = p.parse_args()
    import torch

    from seqrec.data.features import dedupe_texts
    from seqrec.data.schema import PreparedData
    from seqrec.modeling import SeqRecModel

    torch.set_num_threads(1)
    data = PreparedData.load(args.data)
    old_cfg, old_windows, old_items = texts_for(data, OLD, None)
    before = sum(len(set(old_windows[i : i + CHUNK])) for i in range(0, len(old_windows), CHUNK))
    new_cfg, new_windows, new_items = texts_for(data, [], str(ROOT / "train/configs/beauty-text.yaml"))
    _, distinct = dedupe_texts([*new_windows, *new_items])
    models = {"before": SeqRecModel.from_data(old_cfg, data), "after": SeqRecModel.from_data(new_cfg, data)}
    rng = random.Random(0)
    timing = {}
    for name, pool, kind in (("before", old_windows, "window"), ("after", distinct, "window")):
        model = models[name].eval()
        sample = rng.sample(sorted(set(pool)), args.sample)
        model.encode_texts(sample[:16], kind)  # warm-up
        start = time.perf_counter()
        model.encode_texts(sample, kind)
        timing[name] = (time.perf_counter() - start) / len(sample)
    result = {
        "data": str(data.path),
        "windows": len(old_windows),
        "before": {"window_texts_encoded": before, "item_texts_encoded": len(old_items),
                   "texts_encoded": before + len(old_items), "seconds_per_text": timing["before"]},
        "after": {"windows": len(new_windows), "texts_encoded": len(distinct),
                  "seconds_per_text": timing["after"]},
        "sample": args.sample,
        "command": "python benchmarks/bench_features.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    result["before"]["estimated_seconds"] = result["before"]["texts_encoded"] * timing["before"]
    result["after"]["estimated_seconds"] = len(distinct) * timing["after"]
    result["texts_ratio"] = result["before"]["texts_encoded"] / len(distinct)
    result["time_ratio"] = result["before"]["estimated_seconds"] / result["after"]["estimated_seconds"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    b, a = result["before"], result["after"]
    md = [
        "# Feature build on Beauty: before / after corpus-wide deduplication",
        "",
        f"Command: `{result['command']}` (one thread; both schemes timed on {args.sample} of their own texts "
        "back to back, so under the same load).",
        "",
        "| scheme | windows | texts encoded | s / text | estimated build s |",
        "|---|---:|---:|---:|---:|",
        f"| before (per-chunk dedup, gap + verb in text, items apart) | {result['windows']:,} | "
        f"{b['texts_encoded']:,} | {b['seconds_per_text']:.4f} | {b['estimated_seconds']:.0f} |",
        f"| after (corpus-wide dedup, window text = item text) | {a['windows']:,} | {a['texts_encoded']:,} | "
        f"{a['seconds_per_text']:.4f} | {a['estimated_seconds']:.0f} |",
        "",
        f"Texts encoded: {result['texts_ratio']:.1f}x fewer; estimated build time: {result['time_ratio']:.1f}x shorter.",
    ]
    (RESULTS / "features.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
