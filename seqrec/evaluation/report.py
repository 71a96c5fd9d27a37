"""Evaluation reports: metrics.json (machine-readable), metrics.md (for people), per-user rows.

metrics.json holds the overall metrics at the top level (``"ndcg@10": 0.0812``), then ``split``,
``n_users``, ``protocol`` (name, candidates, masking, tie rule, negatives or candidates file),
``slices`` and whatever context the caller adds (model, checkpoint, data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqrec.evaluation.evaluator import EvalResult

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"


def markdown_table(result: EvalResult, title: str | None = None) -> str:
    """The overall row and one row per slice, as a Markdown table with a protocol header."""
    names = list(result.metrics)
    p = result.protocol
    lines = [f"## {title}", ""] if title else []
    lines += [
        f"Split: {result.split} · users: {result.n_users} · protocol: {p.get('protocol')} ({p.get('label')})",
        f"Candidates: {p.get('candidates')} · masking: {p.get('masking')} · ties: {p.get('tie_rule')}",
        "",
        "| slice | users | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
        "| **all** | "
        + str(result.n_users)
        + " | "
        + " | ".join(f"{result.metrics[n]:.4f}" for n in names)
        + " |",
    ]
    for family, buckets in result.slices.items():
        for label, row in buckets.items():
            cells = " | ".join(f"{row[n]:.4f}" for n in names)
            lines.append(f"| {family} {label} | {int(row['users'])} | {cells} |")
    return "\n".join(lines) + "\n"


def write_report(
    result: EvalResult,
    out_dir: str | Path,
    context: dict[str, Any] | None = None,
    per_user_format: str = "csv",
    title: str | None = None,
) -> list[Path]:
    """Write metrics.json, metrics.md and (when the result has them) per-user rows; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**result.to_json(), **(context or {})}
    written = [out / METRICS_JSON, out / METRICS_MD]
    written[0].write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written[1].write_text(markdown_table(result, title), encoding="utf-8")
    if result.per_user is not None:
        if per_user_format == "parquet":
            path = out / "per_user.parquet"
            result.per_user.to_parquet(path, index=False)
        else:
            path = out / "per_user.csv"
            result.per_user.to_csv(path, index=False)
        written.append(path)
    return written
