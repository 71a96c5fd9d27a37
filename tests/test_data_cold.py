"""Cold-start preparation: a seeded share of items loses every training event."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqrec.config import DataConfig
from seqrec.data.schema import PreparedData
from seqrec.data.splits import cold_item_draw
from seqrec.data.synth import SynthConfig, synth


def test_cold_item_draw_is_seeded() -> None:
    a, b = cold_item_draw(100, 0.1, 3), cold_item_draw(100, 0.1, 3)
    assert len(a) == 10 and np.array_equal(a, b) and not np.array_equal(a, cold_item_draw(100, 0.1, 4))


def test_cold_items_have_no_training_event_but_keep_their_targets(tmp_path: Path) -> None:
    scfg = SynthConfig(n_users=120, n_items=60, mean_events=10)
    synth(tmp_path / "warm", scfg, DataConfig(), progress=False)
    synth(tmp_path / "cold", scfg, DataConfig(cold_items=0.2, cold_items_seed=1), progress=False)
    warm, cold = PreparedData.load(tmp_path / "warm"), PreparedData.load(tmp_path / "cold")
    held = cold_item_draw(warm.n_items, 0.2, 1)
    assert cold.meta["cold_items"]["count"] == len(held)
    assert (cold.train_item_counts()[held] == 0).all()
    assert (warm.train_item_counts()[held] > 0).any()
    # Every user keeps the same test target (only events before the training end were dropped).
    assert cold.n_users == warm.n_users
    assert [warm.target(u, "test") for u in range(warm.n_users)] == [
        cold.target(u, "test") for u in range(cold.n_users)
    ]
