"""Feature store: identical texts encoded once across the corpus, memory-mapped rows, vectorised index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.data.features import FeatureStore, WindowIndex, build_feature_store, dedupe_texts
from seqrec.data.schema import DataError
from seqrec.data.windows import Window


def _encoder(calls: list[list[str]]):
    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(list(texts))
        # A deterministic "embedding" of each text: its length and first character code.
        return torch.tensor([[len(t), ord(t[0]), 1.0] for t in texts], dtype=torch.float32)

    return encode


def test_dedupe_texts_keeps_first_occurrence_order() -> None:
    codes, distinct = dedupe_texts(["b", "a", "b", "c", "a"])
    assert distinct == ["b", "a", "c"]
    assert codes.tolist() == [0, 1, 0, 2, 1]


def test_window_index_lookup_is_vectorised_and_reports_misses() -> None:
    idx = WindowIndex(np.array([0, 0, 3]), np.array([0, 1, 0]), np.array([1, 2, 5]), np.array([7, 8, 9]))
    rows = idx.lookup(np.array([3, 0, 0, 1, 0]), np.array([0, 1, 0, 0, 9]), np.array([5, 2, 1, 1, 10]))
    assert rows.tolist() == [9, 8, 7, -1, -1]
    with pytest.raises(DataError):
        WindowIndex(np.array([0, 0]), np.array([0, 0]), np.array([1, 1]), np.array([0, 1]))


@pytest.mark.parametrize("shared", [False, True])
def test_identical_texts_are_encoded_once_across_chunks(tmp_path: Path, shared: bool) -> None:
    # Window texts repeat across users and across chunk boundaries (chunk=2); items repeat windows.
    windows = [(u, Window(s, s + 1)) for u in range(3) for s in range(3)]
    text_of = {0: "alpha", 1: "beta", 2: "alpha"}  # start -> text: "alpha" twice per user
    calls: list[list[str]] = []
    store = build_feature_store(
        tmp_path / "feats",
        windows,
        lambda ws: [text_of[w.start] for _, w in ws],
        ["alpha", "gamma"],
        _encoder(calls),
        _encoder(calls),
        {"k": 1},
        chunk=2,
        shared=shared,
    )
    encoded = [t for c in calls for t in c]
    assert sorted(encoded) == (["alpha", "beta", "gamma"] if shared else ["alpha", "alpha", "beta", "gamma"])
    assert store.windows.shape == (2, 3)  # two distinct window texts for nine windows
    assert isinstance(store.windows, np.memmap)  # memory-mapped, not read into RAM
    assert store.manifest["n_windows"] == 9 and store.manifest["n_window_texts"] == 2
    for u in range(3):
        rows = store.rows(u, [w for uu, w in windows if uu == u])
        feats = store.gather(rows)
        assert feats[:, 0].tolist() == [5.0, 4.0, 5.0]  # len("alpha"), len("beta"), len("alpha")
        assert rows[0] == rows[2]  # both "alpha" windows read the same row
    assert store.items[:, 0].tolist() == [5.0, 5.0]
    with pytest.raises(DataError, match="not in the feature cache"):
        store.rows(0, [Window(7, 8)])
    loaded = FeatureStore.load(tmp_path / "feats")
    assert loaded.rows(2, [Window(1, 2)]) == store.rows(2, [Window(1, 2)])


def test_from_keys_builds_an_in_memory_store() -> None:
    store = FeatureStore.from_keys(torch.eye(2), torch.zeros(1, 2), [(0, 0, 1), (1, 0, 1)], rows=[1, 0])
    assert store.gather(store.rows(1, [Window(0, 1)])).tolist() == [[1.0, 0.0]]
