"""Readers: turn a raw log into the canonical tables (see :mod:`seqrec.data.sources.tables`).

``read_source(cfg, log)`` dispatches on ``cfg.source.kind``: ``generic`` (CSV/TSV/JSONL/Parquet
with a column mapping), or a named adapter for a public data set (``movielens``, ``amazon``,
``taobao``). ``synthetic`` data is written by ``seqrec data synth`` in the generic layout.
"""

from __future__ import annotations

from collections.abc import Callable

from seqrec.config import DataConfig
from seqrec.data.sources import amazon, generic, movielens, taobao
from seqrec.data.sources.tables import REASONS, DropLog, Tables

Reader = Callable[[DataConfig, DropLog], Tables]
READERS: dict[str, Reader] = {
    "generic": generic.read,
    "synthetic": generic.read,
    "movielens": movielens.read,
    "amazon": amazon.read,
    "taobao": taobao.read,
}


def read_source(cfg: DataConfig, log: DropLog) -> Tables:
    """The canonical tables of `cfg.source`, with rejected rows counted in `log` (or a DataError)."""
    return READERS[cfg.source.kind](cfg, log)


__all__ = ["READERS", "REASONS", "DropLog", "Tables", "read_source"]
