"""model.items.mode=alphafuse: frozen, standardised text coordinates beside IDs learned in their
null space (AlphaFuse, arXiv 2504.19218): the text side is fitted once and never trained, new items
score from their text alone, and the fitted basis survives save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import ConfigError, validate
from seqrec.modeling import SeqRecModel
from tests.test_model_seqrec import USERS, _feature_batch, _head_stage
from tests.tiny_models import tiny_run_config

HIDDEN = 24  # text feature width: more than the 16 - 6 = 10 semantic coordinates kept
AF = {"model.items.mode": "alphafuse", "model.items.null_dims": 6, "model.aggregator.use_item_ids": False}


def _model(tiny_data, **overrides) -> SeqRecModel:
    return _head_stage(tiny_data, hidden=HIDDEN, **{**AF, "train.stage": "head", **overrides})


def test_semantic_part_is_the_whitened_top_principal_directions(tiny_data) -> None:
    model = _model(tiny_data)
    tower = model.item_tower
    assert tower.text_proj is None and tower.ids is not None and tower.ids.weight.shape[1] == 6
    sem = tower._semantic(model.item_features.double())  # [n_items, 10]
    assert sem.shape == (tiny_data.n_items, 10)
    cov = torch.cov(sem.T)
    torch.testing.assert_close(sem.mean(dim=0), torch.zeros(10, dtype=sem.dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(cov, torch.eye(10, dtype=cov.dtype), atol=1e-4, rtol=0)  # standardised
    # The basis is fitted once: other features later do not move it.
    basis = tower.text_basis.clone()
    model.set_item_features(torch.randn(tiny_data.n_items, HIDDEN))
    assert torch.equal(tower.text_basis, basis)


def test_only_ids_train_and_new_items_score_from_text_alone(tiny_data) -> None:
    counts = np.arange(tiny_data.n_items) % 4  # every fourth item has no training event
    model = _model(tiny_data, **{"model.items.cold_ids": "zero"})
    model.set_item_prior(counts)
    out = model(_feature_batch(model, tiny_data, USERS))
    out.loss.backward()
    tower = model.item_tower
    assert tower.ids.weight.grad is not None and tower.ids.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in (tower.text_mean, tower.text_basis))
    model.eval()
    with torch.no_grad():
        vectors = model.item_embeddings()  # [n_items, 16]
        sem = tower._semantic(model.item_features)
    new = torch.from_numpy(counts == 0)
    torch.testing.assert_close(vectors[new, 10:], torch.zeros(int(new.sum()), 6))  # no ID part
    torch.testing.assert_close(vectors[new, :10], torch.nn.functional.normalize(sem[new], dim=-1))
    assert vectors[~new, 10:].abs().sum() > 0


def test_save_load_keeps_the_fitted_basis_and_the_scores(tiny_data, tmp_path: Path) -> None:
    model = _model(tiny_data).eval()
    batch = _feature_batch(model, tiny_data, USERS)
    with torch.no_grad():
        before = model.score_batch(batch)
    model.save_pretrained(tmp_path / "m")
    loaded = SeqRecModel.from_pretrained(tmp_path / "m", load_backbone=False).eval()
    assert bool(loaded.item_tower.basis_fitted)
    assert torch.equal(loaded.item_tower.text_basis, model.item_tower.text_basis)
    loaded.set_item_features(model.item_features)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score_batch(batch), before)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.items.null_dims": 16}, "null_dims"),
        ({"model.aggregator.use_item_ids": True}, "use_item_ids"),
        ({"train.stage": "joint", "model.adapter.method": "lora"}, "frozen text features"),
    ],
)
def test_bad_alphafuse_configs_are_refused(overrides: dict, message: str) -> None:
    cfg = tiny_run_config("unused", **{"model.backbone.hidden_size": HIDDEN, "train.stage": "head"})
    for key, value in {**AF, **overrides}.items():
        section, *rest = key.split(".")
        node = getattr(cfg, section)
        for part in rest[:-1]:
            node = getattr(node, part)
        setattr(node, rest[-1], value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
