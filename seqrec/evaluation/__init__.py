"""Ranking metrics, evaluation protocols (full / sampled / candidates), the evaluator and reports.

Names are imported lazily, so `seqrec --help` (which imports seqrec.evaluation.cli) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalResult": "evaluator",
    "evaluate": "evaluator",
    "metrics_from_ranks": "metrics",
    "pointwise_auc": "metrics",
    "target_ranks": "metrics",
    "CandidateFile": "protocols",
    "FullRanking": "protocols",
    "Protocol": "protocols",
    "SampledRanking": "protocols",
    "make_protocol": "protocols",
    "markdown_table": "report",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seqrec.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"seqrec.evaluation.{_EXPORTS[name]}"), name)
