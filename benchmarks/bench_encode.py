"""Window-encoding throughput of seqrec's encoder against a bare Hugging Face call.

For each backbone (minilm-l6, smollm2-135m by default) this renders real Amazon Beauty windows
(../shared/data/amazon-beauty-2014; the tiny test fixture when that is absent), tokenizes them
exactly like the data pipeline, and measures on this machine:

* forward (no grad) and forward+backward (LoRA adapters, training mode) through
  ``TextEncoder`` — seqrec's path: length sorting, micro-batching, re-packing, pooling,
  normalization — against the SAME adapted backbone called directly on the SAME micro-batches
  (already sorted and padded): the ratio ours/bare is seqrec's overhead (target >= 0.9);
* the share of non-pad tokens the backbone processes with length bucketing vs without
  (target >= 85%), over every rendered window;
* peak resident memory of a process that loads the backbone and runs one pass (each case in its
  own child process, so the peaks do not mix).

Timings are medians of --repeats runs, ours and bare interleaved in the same process.

    .venv/bin/python benchmarks/bench_encode.py            # writes benchmarks/results/encode.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqrec.config import AdapterConfig, BackboneConfig, EncoderConfig, TextConfig, WindowConfig  # noqa: E402
from seqrec.data.batch import tokenize_texts  # noqa: E402
from seqrec.modeling.adapters import apply_adapters  # noqa: E402
from seqrec.modeling.backbone import load_backbone  # noqa: E402
from seqrec.modeling.encoder import TextEncoder, pad_token_lists, plan_micro_batches, repack_right  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "amazon-beauty-2014"


# ---- data -----------------------------------------------------------------------------------


def render_windows(n: int, size: int) -> tuple[list[str], str]:
    """`n` rendered windows of `size` events from Amazon Beauty (or the tiny fixture)."""
    import numpy as np
    import pandas as pd

    from seqrec.data.render import Renderer
    from seqrec.data.windows import make_windows

    if SHARED.is_dir():
        events = pd.read_csv(SHARED / "interactions.csv", nrows=60_000)
        items = pd.read_csv(SHARED / "items.csv", dtype=str)
        source = "amazon-beauty-2014"
        behaviors = ["review"]
    else:
        from tests.conftest import make_tiny_frames

        frames = make_tiny_frames(n_users=200)
        items = frames["items"].drop(columns=["item_idx"])
        events = frames["events"].rename(columns={"user_idx": "user_id", "item_idx": "item_id"})
        events["item_id"] = items["item_id"].to_numpy()[events["item_id"].to_numpy()]
        source = "tiny fixture"
        behaviors = ["view"]
    items = items.reset_index(drop=True)
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int32))
    row_of = {item: i for i, item in enumerate(items["item_id"])}
    renderer = Renderer(items, behaviors, TextConfig(), "en")
    texts: list[str] = []
    for _, user in events.groupby("user_id", sort=False):
        idx = np.array([row_of[i] for i in user["item_id"] if i in row_of])
        times = user["timestamp"].to_numpy()[: len(idx)]
        behs = np.zeros(len(idx), dtype=np.int64)
        for w in make_windows(times, WindowConfig(size=size)):
            prev = int(times[w.start - 1]) if w.start else None
            texts.append(
                renderer.render_window(
                    idx[w.start : w.end], times[w.start : w.end], behs[w.start : w.end], prev
                )
            )
            if len(texts) == n:
                return texts, source
    return texts, source


# ---- the two paths ----------------------------------------------------------------------------


def build(name: str, micro_batch: int, bucket: bool = True) -> tuple[TextEncoder, Any, bool]:
    bb = load_backbone(BackboneConfig(name=name))
    module = apply_adapters(bb.model, AdapterConfig(method="lora"), bb.model_type, bb.base_name)
    enc = TextEncoder(
        module,
        bb.is_decoder,
        EncoderConfig(micro_batch_size=micro_batch, bucket_by_length=bucket),
        bb.tokenizer.pad_token_id,
    )
    return enc, bb.tokenizer, bb.is_decoder


def bare_batches(
    enc: TextEncoder, ids: torch.Tensor, mask: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The exact micro-batches seqrec's encoder feeds the backbone, prepared ahead of time."""
    plan = plan_micro_batches(
        mask.sum(1), enc.cfg.micro_batch_size, enc.cfg.micro_batch_tokens, enc.cfg.bucket_by_length
    )
    return [repack_right(ids, mask, rows, enc.pad_token_id) for rows in plan]


def run_ours(enc: TextEncoder, ids: torch.Tensor, mask: torch.Tensor, backward: bool) -> None:
    if backward:
        enc.train()
        enc(ids, mask).emb.sum().backward()
        enc.zero_grad(set_to_none=True)
    else:
        enc.eval()
        with torch.no_grad():
            enc(ids, mask)


def run_bare(enc: TextEncoder, batches: list[tuple[torch.Tensor, torch.Tensor]], backward: bool) -> None:
    kwargs = {"use_cache": False} if enc.is_decoder else {}
    if backward:
        enc.train()
        total = sum(
            enc.backbone(input_ids=i, attention_mask=m, **kwargs).last_hidden_state.sum() for i, m in batches
        )
        total.backward()
        enc.zero_grad(set_to_none=True)
    else:
        enc.eval()
        with torch.no_grad():
            for i, m in batches:
                enc.backbone(input_ids=i, attention_mask=m, **kwargs)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- memory (child processes) --------------------------------------------------------------------


def rss_bytes() -> int:
    """Current resident memory of this process (Linux /proc; the benchmark targets Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory every 2 ms in a thread: the peak of one pass, not of model loading."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def child_main(spec_file: str) -> None:
    from safetensors.torch import load_file

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    enc, _, _ = build(spec["name"], spec["micro_batch"])
    t = load_file(spec["tensors"])
    batches = bare_batches(enc, t["ids"], t["mask"])
    # Fault the (memory-mapped) weights in first, so the peak below is the pass's own memory.
    with torch.no_grad():
        for p in enc.parameters():
            p.sum()
    with PeakRSS() as mem:
        if spec["path"] == "ours":
            run_ours(enc, t["ids"], t["mask"], spec["backward"])
        else:
            run_bare(enc, batches, spec["backward"])
    mib = 1024 * 1024
    print(
        json.dumps(
            {
                "before_mib": mem.start / mib,
                "peak_mib": mem.peak / mib,
                "extra_mib": (mem.peak - mem.start) / mib,
            }
        )
    )


def peak_memory(
    name: str, ids: torch.Tensor, mask: torch.Tensor, micro_batch: int, threads: int, runs: int
) -> dict[str, Any]:
    """Per case, the median over `runs` fresh processes (allocator noise is about +-10% run to run)."""
    from safetensors.torch import save_file

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tensors = str(Path(tmp) / "batch.safetensors")
        save_file({"ids": ids.contiguous(), "mask": mask.contiguous()}, tensors)
        for path in ("ours", "bare"):
            for backward in (False, True):
                spec = {
                    "name": name,
                    "micro_batch": micro_batch,
                    "threads": threads,
                    "tensors": tensors,
                    "path": path,
                    "backward": backward,
                }
                spec_file = Path(tmp) / "spec.json"
                spec_file.write_text(json.dumps(spec))
                samples = []
                for _ in range(runs):
                    res = subprocess.run(
                        [sys.executable, __file__, "--child", str(spec_file)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    samples.append(json.loads(res.stdout.strip().splitlines()[-1]))
                out[f"{path}_{'fwd_bwd' if backward else 'fwd'}"] = {
                    "before_mib": statistics.median(x["before_mib"] for x in samples),
                    "extra_mib": statistics.median(x["extra_mib"] for x in samples),
                    "extra_mib_runs": [x["extra_mib"] for x in samples],
                }
    return out


# ---- one backbone ------------------------------------------------------------------------------------


def bench_backbone(
    name: str,
    texts: list[str],
    n_timed: int,
    max_tokens: int,
    micro_batch: int,
    repeats: int,
    threads: int,
    mem_runs: int,
) -> dict[str, Any]:
    enc, tok, is_decoder = build(name, micro_batch)
    lists = tokenize_texts(tok, texts, "", max_tokens, append_eos=is_decoder)
    all_lengths = torch.tensor([len(x) for x in lists])

    def share(sort: bool) -> float:
        plan = plan_micro_batches(all_lengths, micro_batch, sort=sort)
        return float(all_lengths.sum()) / sum(len(p) * int(all_lengths[p].max()) for p in plan)

    ids, mask = pad_token_lists(
        lists[:n_timed], tok.pad_token_id
    )  # right-padded, input order (collator layout)
    batches = bare_batches(enc, ids, mask)
    n_tokens = int(mask.sum())
    padded = sum(int(i.numel()) for i, _ in batches)
    result: dict[str, Any] = {
        "backbone": name,
        "is_decoder": is_decoder,
        "windows_for_share": len(texts),
        "mean_tokens_per_window": float(all_lengths.float().mean()),
        "nonpad_share_bucketed": share(True),
        "nonpad_share_unbucketed": share(False),
        "timed_windows": n_timed,
        "timed_tokens": n_tokens,
        "timed_padded_tokens": padded,
    }
    # Warm-up (first calls allocate and pick kernels), then interleaved repeats.
    for backward in (False, True):
        run_ours(enc, ids, mask, backward)
        run_bare(enc, batches, backward)
    runs: dict[str, list[float]] = {k: [] for k in ("ours_fwd", "bare_fwd", "ours_fwd_bwd", "bare_fwd_bwd")}
    cases = {
        "ours_fwd": lambda: run_ours(enc, ids, mask, False),
        "bare_fwd": lambda: run_bare(enc, batches, False),
        "ours_fwd_bwd": lambda: run_ours(enc, ids, mask, True),
        "bare_fwd_bwd": lambda: run_bare(enc, batches, True),
    }
    for r in range(repeats):
        # Alternate the order each repeat so neither path always runs right after the other.
        for key in list(cases) if r % 2 == 0 else list(cases)[::-1]:
            runs[key].append(timed(cases[key]))
        print(
            f"  {name} repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()),
            flush=True,
        )
    for key, values in runs.items():
        med = statistics.median(values)
        result[key] = {
            "seconds": values,
            "median_s": med,
            "windows_per_s": n_timed / med,
            "tokens_per_s": n_tokens / med,
        }
    result["ratio_fwd"] = result["bare_fwd"]["median_s"] / result["ours_fwd"]["median_s"]
    result["ratio_fwd_bwd"] = result["bare_fwd_bwd"]["median_s"] / result["ours_fwd_bwd"]["median_s"]
    print(f"  {name}: measuring peak memory in child processes", flush=True)
    result["peak_rss_mib"] = peak_memory(name, ids, mask, micro_batch, threads, mem_runs)
    return result


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Window-encoding throughput",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']['cpus']} CPU cores, torch {results['machine']['torch']}, "
        f"{results['machine']['threads']} intra-op thread(s), load average at start {results['machine']['loadavg']} "
        "(a shared machine: absolute speeds are noisy; the ratios interleave both paths in one process).",
        f"Windows: {results['source']}, window size {results['window_size']}, at most {results['max_tokens']} tokens, "
        f"micro-batches of {results['micro_batch']}, median of {results['repeats']} runs, LoRA r=8 on attention+MLP; "
        f"memory: median of {results['mem_runs']} fresh processes per case.",
        "",
        "| backbone | path | fwd windows/s | fwd tokens/s | fwd+bwd windows/s | fwd+bwd tokens/s | peak extra RSS fwd / fwd+bwd (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["backbones"]:
        mem = r["peak_rss_mib"]
        for path in ("ours", "bare"):
            f, b = r[f"{path}_fwd"], r[f"{path}_fwd_bwd"]
            lines.append(
                f"| {r['backbone']} | {'seqrec TextEncoder' if path == 'ours' else 'bare HF (same micro-batches)'} "
                f"| {f['windows_per_s']:.1f} | {f['tokens_per_s']:.0f} | {b['windows_per_s']:.2f} | {b['tokens_per_s']:.0f} "
                f"| {mem[f'{path}_fwd']['extra_mib']:.0f} / {mem[f'{path}_fwd_bwd']['extra_mib']:.0f} |"
            )
    lines += [
        "",
        "| backbone | ratio fwd (bare/ours) | ratio fwd+bwd | non-pad share bucketed | unbucketed | timed windows (their non-pad share) | RSS with model loaded (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["backbones"]:
        lines.append(
            f"| {r['backbone']} | {r['ratio_fwd']:.3f} | {r['ratio_fwd_bwd']:.3f} | {100 * r['nonpad_share_bucketed']:.1f}% "
            f"| {100 * r['nonpad_share_unbucketed']:.1f}% | {r['timed_windows']} ({100 * r['timed_tokens'] / r['timed_padded_tokens']:.1f}%) | {r['peak_rss_mib']['ours_fwd']['before_mib']:.0f} |"
        )
    lines += [
        "",
        "Ratio = bare time / seqrec time on identical token micro-batches (>= 0.9 is the target; 1.0 = no overhead). "
        "Non-pad share = real tokens / tokens processed, over all rendered windows. Peak extra RSS: resident memory "
        "sampled every 2 ms during one pass in a fresh process, minus the resident memory just before it (model "
        "loaded); the last column is that starting point (Python, libraries and weights).",
        "",
    ]
    (out / "encode.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["minilm-l6", "smollm2-135m"])
    parser.add_argument("--windows", type=int, default=384, help="windows rendered (non-pad share)")
    parser.add_argument("--timed", nargs="+", type=int, default=[32, 6], help="windows timed, per backbone")
    parser.add_argument("--window-size", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mem-runs", type=int, default=2, help="fresh processes per memory case")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 on a shared 2-core box)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    torch.set_num_threads(args.threads)
    texts, source = render_windows(args.windows, args.window_size)
    results: dict[str, Any] = {
        "command": " ".join(["python benchmarks/bench_encode.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "source": source,
        "window_size": args.window_size,
        "max_tokens": args.max_tokens,
        "micro_batch": args.micro_batch,
        "repeats": args.repeats,
        "mem_runs": args.mem_runs,
        "backbones": [],
    }
    timed_counts = args.timed + [args.timed[-1]] * (len(args.backbones) - len(args.timed))
    for name, n_timed in zip(args.backbones, timed_counts):
        print(f"{name}: {n_timed} timed windows of {len(texts)} rendered", flush=True)
        results["backbones"].append(
            bench_backbone(
                name,
                texts,
                min(n_timed, len(texts)),
                args.max_tokens,
                args.micro_batch,
                args.repeats,
                args.threads,
                args.mem_runs,
            )
        )
    write_report(results, args.out)
    for r in results["backbones"]:
        print(
            f"{r['backbone']}: ratio fwd {r['ratio_fwd']:.3f}, fwd+bwd {r['ratio_fwd_bwd']:.3f}; non-pad share "
            f"{100 * r['nonpad_share_bucketed']:.1f}% bucketed vs {100 * r['nonpad_share_unbucketed']:.1f}%"
        )
    print(f"wrote {args.out / 'encode.json'} and {args.out / 'encode.md'}")


if __name__ == "__main__":
    main()
