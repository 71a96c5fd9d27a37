"""Cut a user's time-ordered history into windows of events.

A window is a half-open range ``[start, end)`` of positions in the user's history. Windows are
returned oldest first; the newest window always ends at the newest event, and at most
``max_windows`` of the most recent windows are kept.

Why the default grid is anchored at the *start* of the history: with a fixed grid, appending an
event changes only the newest window (it grows, or a new one opens), so serving can re-encode one
window per new event and cached window embeddings stay valid. ``align="end"`` makes the newest
window always full instead, at the price of shifting every window when an event arrives.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from seqrec.config import WindowConfig


@dataclass(frozen=True)
class Window:
    start: int  # first position (inclusive)
    end: int  # last position (exclusive)

    def __len__(self) -> int:
        return self.end - self.start


def _grid(lo: int, hi: int, size: int, stride: int, align: str) -> list[Window]:
    """Fixed-size windows over positions [lo, hi), every window's end clipped to hi."""
    n = hi - lo
    if n <= 0:
        return []
    if align == "start":
        starts = range(lo, hi, stride)
        windows = [Window(s, min(s + size, hi)) for s in starts]
        # With overlap (stride < size), drop windows that are fully contained in the previous one's tail.
        return [w for i, w in enumerate(windows) if i == 0 or w.end > windows[i - 1].end]
    # align == "end": the newest window is [hi - size, hi); step back by stride.
    out: list[Window] = []
    end = hi
    while end > lo:
        out.append(Window(max(lo, end - size), end))
        if end - size <= lo:
            break
        end -= stride
    return out[::-1]


def make_windows(timestamps: np.ndarray, cfg: WindowConfig) -> list[Window]:
    """Windows over a history of ``len(timestamps)`` events (timestamps ascending, unix seconds).

    fixed mode: windows of ``cfg.size`` events, stepping by ``cfg.stride`` (default: size).
    session mode: a new session starts after a gap longer than ``cfg.session_gap`` seconds; each
    session is cut into windows of at most ``cfg.size`` events on its own grid.
    """
    n = len(timestamps)
    stride = cfg.stride or cfg.size
    if cfg.mode == "fixed":
        windows = _grid(0, n, cfg.size, stride, cfg.align)
    else:
        breaks = np.flatnonzero(np.diff(np.asarray(timestamps, dtype=np.int64)) > cfg.session_gap) + 1
        bounds = [0, *breaks.tolist(), n] if n else [0]
        windows = []
        for lo, hi in itertools.pairwise(bounds):
            windows.extend(_grid(lo, hi, cfg.size, stride, cfg.align))
    return windows[-cfg.max_windows :]
