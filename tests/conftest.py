"""Shared fixtures: a tiny prepared data set built in memory, and paths to the shared real data.

The tiny set is built directly in the prepared layout (independent of the pipeline under test), so
every area (models, training, evaluation, serving) can be tested on its own. Its sequences carry a
learnable signal: users prefer one of three categories, and items of that category follow each
other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.data.schema import PreparedData, ProfileSpec, write_prepared
from tests.tiny_models import tiny_backbones_fixture, torch_single_thread_fixture  # noqa: F401

SHARED_DATA = Path(
    os.environ.get("SEQREC_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tests use tiny models: one intra-op thread is faster, and far faster on a busy machine
    (measured on this 2-core box: 5 tiny training steps took 9.8 s with 2 threads, 0.15 s with 1)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shared_dataset(name: str) -> Path:
    """Path to ../shared/data/<name>, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data set {name!r} not found at {path} (tests on real data skip without it)")
    return path


def make_tiny_frames(n_users: int = 40, n_items: int = 30, seed: int = 0) -> dict:
    """Prepared-layout tables with a learnable category signal and leave-one-out splits."""
    rng = np.random.default_rng(seed)
    cats = ["Skin care", "Makeup", "Fragrance"]
    colors = ["red", "blue", "green", "black", "white"]
    item_cat = np.arange(n_items) % 3
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items, dtype=np.int32),
            "item_id": [f"I{i:03d}" for i in range(n_items)],
            "title": [f"{colors[i % 5]} {cats[item_cat[i]].lower()} product {i}" for i in range(n_items)],
            "category": [cats[c] for c in item_cat],
            "brand": [f"Brand{i % 4}" for i in range(n_items)],
        }
    )
    behaviors = ["view", "click", "cart", "buy"]
    rows = []
    users = []
    t0 = 1_600_000_000
    for u in range(n_users):
        pref = u % 3
        length = int(rng.integers(6, 16))
        pool = np.flatnonzero(item_cat == pref)
        seq = rng.choice(pool, size=length, replace=True)
        noise = rng.random(length) < 0.2
        seq[noise] = rng.integers(0, n_items, noise.sum())
        times = t0 + np.cumsum(rng.integers(60, 86400 * 3, length))
        behs = rng.integers(0, 4, length)
        for pos in range(length):
            rows.append((u, int(seq[pos]), int(times[pos]), int(behs[pos]), np.nan))
        users.append(
            (u, f"U{u:03d}", length - 2, length - 2, length - 1, ["f", "m"][u % 2], float(20 + u % 30))
        )
    events = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "behavior", "value"]).astype(
        {
            "user_idx": "int32",
            "item_idx": "int32",
            "timestamp": "int64",
            "behavior": "int8",
            "value": "float32",
        }
    )
    users_df = pd.DataFrame(
        users, columns=["user_idx", "user_id", "train_end", "valid_pos", "test_pos", "gender", "age"]
    ).astype({"user_idx": "int32", "train_end": "int32", "valid_pos": "int32", "test_pos": "int32"})
    spec = ProfileSpec(
        source="demographics",
        categorical=[{"name": "gender", "vocab": ["f", "m"]}],
        numeric=[{"name": "age", "mean": 34.5, "std": 8.6}],
    )
    profiles = pd.DataFrame(
        {
            "user_idx": users_df["user_idx"],
            "cat__gender": (users_df["gender"].map({"f": 1, "m": 2})).astype("int32"),
            "num__age": ((users_df["age"] - 34.5) / 8.6).astype("float32"),
        }
    )
    meta = {
        "behaviors": behaviors,
        "language": "en",
        "text_fields": ["title", "category", "brand"],
        "source": "tiny-fixture",
        "split": "loo",
        "target_behaviors": [],
    }
    return {
        "meta": meta,
        "items": items,
        "users": users_df,
        "events": events,
        "profiles": profiles,
        "spec": spec,
    }


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared directory on disk holding the tiny set."""
    out = tmp_path_factory.mktemp("tiny_data")
    write_prepared(out, **make_tiny_frames())
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir: Path) -> PreparedData:
    return PreparedData.load(tiny_data_dir)
