"""Most-popular baseline: training-part counts only, a strict order, save/load, evaluation by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.baselines.popularity import PopularityModel
from seqrec.baselines.sasrec import SASRec
from seqrec.baselines.sequences import eval_loader
from seqrec.config import EvalConfig, SASRecConfig
from seqrec.data.schema import PreparedData
from seqrec.errors import CheckpointError
from seqrec.evaluation.evaluator import evaluate


def test_counts_come_from_the_training_part_only(tiny_data: PreparedData) -> None:
    expected = np.zeros(tiny_data.n_items, dtype=np.int64)
    for u in range(tiny_data.n_users):
        items, _, _ = tiny_data.sequence(u)
        for i in items[: tiny_data.input_end(u, "train")]:
            expected[i] += 1
    model = PopularityModel.fit(tiny_data)
    assert model.counts.tolist() == expected.tolist()
    assert model.counts.sum() < tiny_data.n_events  # valid and test events are not counted


def test_scores_order_by_count_then_item_index() -> None:
    model = PopularityModel(torch.tensor([3, 7, 3, 0, 7]))
    assert model.top_items(5).tolist() == [1, 4, 0, 2, 3]
    scores = model.score_batch({"user_idx": torch.tensor([0, 1])})
    assert scores.shape == (2, 5)
    assert torch.equal(scores[0], scores[1])
    assert len(set(scores[0].tolist())) == 5  # a strict order: no ties for the pessimistic rule to punish


def test_full_ranking_matches_a_hand_count(tiny_data: PreparedData) -> None:
    model = PopularityModel.fit(tiny_data)
    place = {int(item): rank for rank, item in enumerate(model.top_items(tiny_data.n_items))}
    cfg = EvalConfig(ks=[10], per_user=True)
    result = evaluate(model, eval_loader(tiny_data, "valid", 1), tiny_data, "valid", cfg, progress=False)
    assert result.per_user is not None
    for u, rank in zip(result.per_user["user_idx"], result.per_user["rank"]):
        items, _, _ = tiny_data.sequence(u)
        target = tiny_data.target(u, "valid")
        history = set(items[: tiny_data.input_end(u, "valid")].tolist()) - {target}
        above = [i for i in range(tiny_data.n_items) if place[i] < place[target] and i not in history]
        assert rank == len(above)


def test_save_and_load(tiny_data: PreparedData, tmp_path: Path) -> None:
    model = PopularityModel.fit(tiny_data)
    model.save_pretrained(tmp_path / "pop")
    loaded = PopularityModel.from_pretrained(tmp_path / "pop")
    batch = {"user_idx": torch.arange(3)}
    assert torch.equal(model.score_batch(batch), loaded.score_batch(batch))
    assert torch.equal(model.counts, loaded.counts)

    SASRec(tiny_data.n_items, SASRecConfig(d_model=8, layers=1)).save_pretrained(tmp_path / "sasrec")
    with pytest.raises(CheckpointError, match="holds a 'sasrec' model"):
        PopularityModel.from_pretrained(tmp_path / "sasrec")
    with pytest.raises(CheckpointError, match="not found"):
        PopularityModel.from_pretrained(tmp_path / "absent")
    (tmp_path / "pop" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        PopularityModel.from_pretrained(tmp_path / "pop")
