"""model.head.loss=auto: the full softmax up to model.head.sampled_above catalogue items, sampled
softmax with log-Q correction above (the same loss, draw for draw, as choosing it by hand)."""

from __future__ import annotations

import pytest
import torch

from tests.test_model_seqrec import _feature_batch, _head_stage
from tests.tiny_models import torch_single_thread_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _loss(tiny_data, **overrides) -> float:
    model = _head_stage(tiny_data, **{"model.head.num_negatives": 8, **overrides})
    batch = _feature_batch(model, tiny_data, list(range(8)))
    model.train()
    torch.manual_seed(1)
    return float(model(batch).loss.detach())


def test_auto_switches_at_the_catalogue_size(tiny_data):
    n = tiny_data.n_items
    full, sampled = (
        _loss(tiny_data, **{"model.head.loss": "full"}),
        _loss(tiny_data, **{"model.head.loss": "sampled"}),
    )
    assert full != sampled
    assert _loss(tiny_data, **{"model.head.loss": "auto", "model.head.sampled_above": n}) == full
    assert _loss(tiny_data, **{"model.head.loss": "auto", "model.head.sampled_above": n - 1}) == sampled
