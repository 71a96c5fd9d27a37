"""Late fusion of two rankers, text-initialised ID tables, and cold item IDs."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from seqrec.config import ItemTowerConfig
from seqrec.modeling.item_tower import ItemTower
from seqrec.modeling.text_init import init_ids_from_text, text_pca
from seqrec.training.late_fusion import LateFusion, ZippedBatches, standardize


class _Fixed:
    def __init__(self, scores: torch.Tensor):
        self.scores, self.n_items = scores, scores.shape[1]

    def score_batch(self, batch: dict) -> torch.Tensor:
        return self.scores[batch["user_idx"]]


def test_standardize_is_per_user_and_handles_masked_scores() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0], [10.0, float("-inf"), 30.0]])
    z = standardize(s)
    assert torch.isfinite(z).all()
    assert torch.allclose(z[0], torch.tensor([-1.0, 0.0, 1.0]))
    assert z[1, 1] == z[1, 0]  # -inf counts as the row's minimum


def test_late_fusion_weights_move_the_ranking_between_members() -> None:
    a = _Fixed(torch.tensor([[3.0, 2.0, 1.0]]))  # prefers item 0
    b = _Fixed(torch.tensor([[0.0, 1.0, 50.0]]))  # prefers item 2
    batches = ZippedBatches([[{"user_idx": torch.tensor([0])}], [{"user_idx": torch.tensor([0])}]])
    batch = next(iter(batches))
    assert LateFusion([a, b], [1.0, 0.0]).score_batch(batch).argmax().item() == 0
    assert LateFusion([a, b], [0.0, 1.0]).score_batch(batch).argmax().item() == 2
    mixed = LateFusion([a, b], [0.5, 0.5]).score_batch(batch)
    assert torch.allclose(mixed, 0.5 * standardize(a.scores) + 0.5 * standardize(b.scores))


def test_zipped_batches_refuse_misaligned_users() -> None:
    zipped = ZippedBatches([[{"user_idx": torch.tensor([0, 1])}], [{"user_idx": torch.tensor([0, 2])}]])
    try:
        next(iter(zipped))
    except RuntimeError as e:
        assert "disagree" in str(e)
    else:
        raise AssertionError("misaligned member batches were accepted")


def test_text_pca_init_keeps_text_geometry_at_the_random_init_scale() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, 3, generator=gen)
    feats = base @ torch.randn(3, 16, generator=gen)  # rank-3 "text" features
    table = nn.Embedding(40, 8)
    init_ids_from_text(table, feats)
    w = table.weight.detach()
    assert math.isclose(float(w.norm(dim=1).mean()), 0.02 * math.sqrt(8), rel_tol=1e-4)
    assert float(w[:, 3:].abs().max()) < 1e-6  # only 3 directions carry variance
    # Pairwise distances follow the centred features' (up to the global scale).
    centred = feats - feats.mean(0)
    ratio = torch.cdist(w, w)[0, 1:] / torch.cdist(centred, centred)[0, 1:]
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-3)
    assert text_pca(feats, 20).shape == (40, 20)  # wider than the features: zero-padded


def test_cold_ids_zero_scores_unseen_items_from_text_alone() -> None:
    cfg = ItemTowerConfig(mode="hybrid", cold_ids="zero")
    tower = ItemTower(3, 4, cfg, dim=4)
    tower.set_seen(torch.tensor([5, 0, 2]))
    tower.eval()
    feats = torch.randn(3, 4)
    with_ids = tower(torch.arange(3), feats)
    text_only = nn.functional.normalize(tower.text_proj(feats), dim=-1)  # type: ignore[misc]
    assert torch.allclose(with_ids[1], text_only[1], atol=1e-6)
    assert not torch.allclose(with_ids[0], text_only[0], atol=1e-3)
    assert "seen" in tower.state_dict()  # saved with the weights
    assert "seen" not in ItemTower(3, 4, ItemTowerConfig(mode="hybrid"), dim=4).state_dict()


def test_train_items_seen_keeps_never_trained_items_out_of_the_softmax(tiny_data) -> None:
    from seqrec.modeling import SeqRecModel
    from tests.test_model_seqrec import _feature_batch
    from tests.tiny_models import tiny_run_config

    losses = {}
    for mode in ("all", "seen"):
        torch.manual_seed(0)
        cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": 12, "model.head.train_items": mode})
        model = SeqRecModel.from_data(cfg, tiny_data, load_backbone=False)
        model.set_item_features(nn.functional.normalize(torch.randn(tiny_data.n_items, 12), dim=-1))
        counts = tiny_data.train_item_counts().copy()
        unseen = int(counts.argmin())
        model.set_item_prior(counts * (np.arange(len(counts)) != unseen))  # one item never trained
        batch = _feature_batch(model, tiny_data, [0, 1, 2])
        batch["target_items"] = batch["target_items"].masked_fill(batch["target_items"] == unseen, -1)
        model.train()
        loss = model(batch).loss
        assert loss is not None
        loss.backward()
        losses[mode] = float(loss)
        assert model.item_seen.tolist() == (np.arange(len(counts)) != unseen).tolist()
    assert losses["seen"] < losses["all"]  # one negative fewer in every softmax
