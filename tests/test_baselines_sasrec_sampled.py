"""SASRec on large catalogues: sasrec.loss=auto switches to a sampled softmax (uniform negatives)
above sasrec.sampled_above items; it learns, and equals the explicit choice draw for draw."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from seqrec.baselines.sasrec import SASRec
from seqrec.baselines.sequences import TrainSequences, collate_train
from seqrec.config import SASRecConfig
from seqrec.data.schema import PreparedData

TINY = SASRecConfig(d_model=32, layers=1, heads=2, dropout=0.0, max_len=20, num_negatives=16)


def _batch(data: PreparedData) -> dict:
    ds = TrainSequences(data, TINY.max_len)
    return collate_train([ds[i] for i in range(min(16, len(ds)))])


def _loss(data: PreparedData, cfg: SASRecConfig, batch: dict) -> float:
    torch.manual_seed(0)
    model = SASRec(data.n_items, cfg)
    torch.manual_seed(1)
    return float(model(batch).loss.detach())


def test_auto_picks_sampled_above_the_threshold(tiny_data: PreparedData) -> None:
    batch = _batch(tiny_data)
    n = tiny_data.n_items
    full = _loss(tiny_data, dataclasses.replace(TINY, loss="full"), batch)
    sampled = _loss(tiny_data, dataclasses.replace(TINY, loss="sampled"), batch)
    assert full != sampled and sampled < full  # fewer competitors than the whole catalogue
    assert _loss(tiny_data, dataclasses.replace(TINY, sampled_above=n), batch) == full
    assert _loss(tiny_data, dataclasses.replace(TINY, sampled_above=n - 1), batch) == sampled


def test_sampled_loss_learns_the_fixed_batch(tiny_data: PreparedData) -> None:
    torch.manual_seed(0)
    model = SASRec(tiny_data.n_items, dataclasses.replace(TINY, loss="sampled"))
    batch = _batch(tiny_data)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
