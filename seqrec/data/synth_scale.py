"""A Taobao-shaped behaviour log at scale (``seqrec data synth --events N [--items M]``).

Shaped like Alibaba's UserBehavior.csv (100,150,807 events, 987,994 users, 4,162,024 items,
9,439 categories, 2017-11-25 .. 2017-12-03 China time) and written in its layout, so ``--source taobao``
reads it: ``user,item,category,behavior,timestamp`` without a header, rows grouped by user (a
user's rows are NOT in time order, as in the real file; prepare orders them).

* Users: about 101 events each (the real ratio), a geometric number per user, scaled to exactly N.
* Items: power-law popularity (Zipf, exponent ``zipf``) over a random permutation of the item ids,
  drawn by inverse CDF; each item has one category, categories themselves power-law sized.
  Default catalogue: one item per 24 events (the real ratio), at most 4,162,024.
* Behaviour funnel: pv 89.5%, fav 2.9%, cart 5.5%, buy 2.0% (the real shares); a fav/cart/buy
  acts on the item of the user's event just before it (in time) and follows it within 0..600 s,
  so purchases come after views of the same item. Timestamps are whole seconds, so ties occur.

Streaming: users are generated in chunks of about ``chunk_events`` events, vectorised with numpy
(no Python object per event), each chunk appended to the CSV with pyarrow's writer; memory is
bounded by the chunk and the [n_items] popularity table (32 MB at 4M items), never by N. The file
is written under a temporary name and renamed when complete. A seed gives the same file.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

log = logging.getLogger(__name__)

TAOBAO_START = 1_511_539_200  # 2017-11-25 00:00:00 UTC+8
TAOBAO_END = 1_512_316_799  # 2017-12-03 23:59:59 UTC+8
BEHAVIORS = ["pv", "fav", "cart", "buy"]
SHARES = [0.895, 0.029, 0.055, 0.021]
EVENTS_PER_USER = 101.4
EVENTS_PER_ITEM = 24.06
ITEMS_PER_CATEGORY = 441
MAX_ITEMS = 4_162_024
FILE_NAME = "UserBehavior.csv"


@dataclass
class ScaleConfig:
    n_events: int
    n_items: int | None = None  # None: n_events / 24, at most MAX_ITEMS
    seed: int = 0
    zipf: float = 1.0  # item popularity exponent
    chunk_events: int = 2_000_000

    def items(self) -> int:
        if self.n_items is not None:
            return int(self.n_items)
        return int(min(MAX_ITEMS, max(100, round(self.n_events / EVENTS_PER_ITEM))))


def _user_counts(n_events: int, rng: np.random.Generator) -> np.ndarray:
    """Events per user: geometric with the Taobao mean, adjusted to sum to exactly n_events."""
    n_users = max(1, round(n_events / EVENTS_PER_USER))
    counts = rng.geometric(1.0 / EVENTS_PER_USER, n_users).astype(np.int64)
    diff = n_events - int(counts.sum())
    # Spread the difference over random users, never below one event each.
    while diff != 0:
        pick = rng.integers(0, n_users, min(abs(diff), n_users))
        if diff > 0:
            np.add.at(counts, pick, 1)
            diff -= len(pick)
        else:
            can = pick[counts[pick] > 1]
            can = np.unique(can)[:-diff]
            counts[can] -= 1
            diff += len(can)
    return counts


def generate_csv(path: str | Path, cfg: ScaleConfig, progress: bool = True) -> dict[str, Any]:
    """Write the log to `path` (atomically). Returns counts and timing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.n_events < 1:
        raise ValueError(f"--events must be >= 1, got {cfg.n_events}")
    n_items = cfg.items()
    if n_items < 1:
        raise ValueError(f"--items must be >= 1, got {n_items}")
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    counts = _user_counts(cfg.n_events, rng)
    n_users = len(counts)
    user_ids = rng.permutation(np.arange(1, n_users + 1, dtype=np.int64) * 7 + rng.integers(0, 7))
    # Popularity: rank r has weight 1 / (r + 1)^zipf; ranks map to random item ids.
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** cfg.zipf)
    cdf /= cdf[-1]
    item_of_rank = rng.permutation(n_items).astype(np.int64) + 1
    n_cats = max(1, n_items // ITEMS_PER_CATEGORY)
    cat_cdf = np.cumsum(1.0 / np.arange(1, n_cats + 1, dtype=np.float64) ** 0.8)
    cat_cdf /= cat_cdf[-1]
    category = np.searchsorted(cat_cdf, rng.random(n_items + 1), side="right").astype(np.int64) * 13 + 1000
    beh_cdf = np.cumsum(SHARES)
    beh_names = pa.array(BEHAVIORS, pa.string())
    schema = pa.schema(
        [("user", pa.int64()), ("item", pa.int64()), ("category", pa.int64()), ("behavior", pa.string()),
         ("timestamp", pa.int64())]
    )  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    bounds = np.searchsorted(np.cumsum(counts), np.arange(cfg.chunk_events, cfg.n_events, cfg.chunk_events))
    starts = [0, *sorted(set((bounds + 1).tolist()) - {0, n_users}), n_users]
    written = 0
    try:
        with pacsv.CSVWriter(
            str(tmp), schema, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")
        ) as writer:
            for a, b in itertools.pairwise(starts):
                c = counts[a:b]
                n = int(c.sum())
                user = np.repeat(np.arange(a, b), c)
                times = rng.integers(TAOBAO_START, TAOBAO_END + 1, n)
                order = np.lexsort((times, user))  # by user, then time
                times = times[order]
                item = item_of_rank[
                    np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), n_items - 1)
                ]
                beh = np.searchsorted(beh_cdf, rng.random(n) * beh_cdf[-1], side="right").clip(0, 3)
                first = np.ones(n, dtype=bool)
                first[1:] = user[1:] != user[:-1]
                beh[first] = 0  # a user's first event is a view
                # Funnel: fav/cart/buy act on the item of the previous event, shortly after it.
                # Runs of actions chain back to the last view (a vectorised forward fill).
                act = beh > 0
                last_view = np.where(~act, np.arange(n), 0)
                np.maximum.accumulate(last_view, out=last_view)
                item[act] = item[last_view[act]]
                gap = rng.integers(0, 601, n)
                times[act] = np.minimum(times[last_view[act]] + gap[act], TAOBAO_END)
                # Rows of a user in random order (as in the real file), users in id order.
                shuffle = np.lexsort((rng.random(n), user))
                table = pa.Table.from_arrays(
                    [
                        pa.array(user_ids[user[shuffle]]),
                        pa.array(item[shuffle]),
                        pa.array(category[item[shuffle]]),
                        beh_names.take(pa.array(beh[shuffle])),
                        pa.array(times[shuffle]),
                    ],
                    schema=schema,
                )
                writer.write_table(table)
                written += n
                if progress:
                    log.info("synth: %d / %d events written", written, cfg.n_events)
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": str(path),
        "events": written,
        "users": n_users,
        "items_catalogue": n_items,
        "categories": n_cats,
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
