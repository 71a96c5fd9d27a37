"""Windows: cover a history exactly once, keep the most recent, respect sessions and alignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seqrec.config import WindowConfig
from seqrec.data.windows import make_windows


def positions(windows: list) -> list[int]:
    return [p for w in windows for p in range(w.start, w.end)]


@pytest.mark.parametrize("align", ["start", "end"])
def test_fixed_windows_cover_the_history_exactly_once(align: str) -> None:
    for n in range(0, 31):
        for size in range(1, 8):
            cfg = WindowConfig(size=size, max_windows=10**6, align=align)  # type: ignore[arg-type]
            windows = make_windows(np.arange(n), cfg)
            assert positions(windows) == list(range(n))
            assert all(1 <= len(w) <= size for w in windows)
            # Only the oldest (align=end) or the newest (align=start) window may be partial.
            partial = [i for i, w in enumerate(windows) if len(w) < size]
            assert partial in ([], [len(windows) - 1] if align == "start" else [0])


def test_session_windows_cover_once_and_split_at_gaps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        gaps = rng.choice([10, 60, 5000], size=int(rng.integers(0, 40)))
        times = np.cumsum(gaps).astype(np.int64)
        cfg = WindowConfig(mode="session", size=4, session_gap=1800, max_windows=10**6)
        windows = make_windows(times, cfg)
        assert positions(windows) == list(range(len(times)))
        for w in windows:
            assert len(w) <= 4 and np.all(np.diff(times[w.start : w.end]) <= 1800)  # one session per window
        breaks = set(np.flatnonzero(np.diff(times) > 1800) + 1)
        assert breaks <= {w.start for w in windows}


def test_cap_keeps_the_most_recent_windows() -> None:
    windows = make_windows(np.arange(23), WindowConfig(size=5, max_windows=2))
    assert [(w.start, w.end) for w in windows] == [(15, 20), (20, 23)]
    windows = make_windows(np.arange(23), WindowConfig(size=5, max_windows=2, align="end"))
    assert [(w.start, w.end) for w in windows] == [(13, 18), (18, 23)]


def test_overlapping_stride_covers_every_event_and_ends_at_the_newest() -> None:
    for n in range(1, 25):
        windows = make_windows(np.arange(n), WindowConfig(size=5, stride=2, max_windows=10**6))
        assert set(positions(windows)) == set(range(n)) and windows[-1].end == n
        assert all(b.end > a.end for a, b in itertools.pairwise(windows))  # no window inside another


def test_start_alignment_changes_only_the_newest_window_when_an_event_arrives() -> None:
    cfg = WindowConfig(size=4, max_windows=10**6)
    for n in range(1, 20):
        before, after = make_windows(np.arange(n), cfg), make_windows(np.arange(n + 1), cfg)
        assert after[: len(before) - 1] == before[:-1]
