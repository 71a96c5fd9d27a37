"""Causal behavioural profiles: no state's profile depends on events after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqrec.config import DataConfig, RunConfig
from seqrec.data.causal_profiles import CausalProfiles
from seqrec.data.collate import SeqRecCollator
from seqrec.data.examples import make_input, split_end
from seqrec.data.schema import PreparedData
from seqrec.data.synth import SynthConfig, synth


@pytest.fixture(scope="module")
def behavioural_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    out: Path = tmp_path_factory.mktemp("causal") / "data"
    synth(
        out,
        SynthConfig(n_users=60, n_items=40, mean_events=12),
        DataConfig(profile="behavioural"),
        progress=False,
    )
    return PreparedData.load(out)


def test_prefix_profiles_ignore_later_events(behavioural_data: PreparedData) -> None:
    data = behavioural_data
    causal = CausalProfiles(data)
    assert causal.behavioural and causal.item_rank is not None
    rng = np.random.default_rng(0)
    checked = 0
    for u in range(data.n_users):
        items, times, behs = (a.copy() for a in data.sequence(u))
        if len(items) < 4:
            continue
        ends = np.arange(1, len(items) + 1)
        cat, num = causal.profile_of(items, times, behs, ends)
        for e in ends.tolist():
            # Scramble everything at and after position e: rows for prefixes ending <= e stay put.
            it, tm, bh = items.copy(), times.copy(), behs.copy()
            it[e:] = rng.integers(0, data.n_items, len(it) - e)
            bh[e:] = rng.integers(0, len(data.behaviors), len(bh) - e)
            tm[e:] = tm[e - 1] + rng.integers(0, 10**7, len(tm) - e)
            cat2, num2 = causal.profile_of(it, tm, bh, ends[:e])
            np.testing.assert_array_equal(cat2, cat[:e])
            np.testing.assert_allclose(num2, num[:e])
            checked += 1
        # Activity grows with the prefix: the log_events feature is increasing.
        j = [c[0] for c in causal.numeric].index("log_events")
        assert (np.diff(num[:, j]) > 0).all()
    assert checked > 50


def test_collator_gives_each_state_its_own_prefix_profile(behavioural_data: PreparedData) -> None:
    data = behavioural_data
    cfg = RunConfig()
    cfg.window.size, cfg.window.max_windows = 2, 8
    causal = CausalProfiles(data)
    users = data.train_users(6)[:5].tolist()
    inputs = [make_input(data, u, split_end(data, u, "train"), cfg.window) for u in users]
    batch = SeqRecCollator(data, cfg, "train")(
        [{"input": inp, "window_ids": [[1]] * len(inp.windows)} for inp in inputs]
    )
    assert batch["profile_cat"].dim() == 3 and batch["profile_num"].dim() == 3
    for bi, inp in enumerate(inputs):
        ends = [w.end for w in inp.windows]
        cat, num = causal.profile(inp.user_idx, ends)
        np.testing.assert_array_equal(batch["profile_cat"][bi, : len(ends)].numpy(), cat)
        # States differ as the prefix grows (the stored whole-training-part profile would not).
        assert len(ends) < 2 or not np.allclose(num[0], num[-1])
    # The old behaviour stays available.
    cfg.model.profile.as_of = "train_end"
    old = SeqRecCollator(data, cfg, "train")(
        [{"input": inputs[0], "window_ids": [[1]] * len(inputs[0].windows)}]
    )
    assert old["profile_cat"].dim() == 2
