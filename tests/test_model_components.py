"""Aggregator, losses, profile fusion and item tower, without a backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqrec.config import AggregatorConfig, FusionConfig, ItemTowerConfig, ProfileConfig
from seqrec.data.schema import ProfileSpec
from seqrec.modeling.aggregator import WindowAggregator, gather_slots, time_gap_buckets
from seqrec.modeling.fusion import Fusion
from seqrec.modeling.item_tower import ItemTower
from seqrec.modeling.losses import (
    multi_positive_softmax_loss,
    positives_mask_candidates,
    positives_mask_full,
)
from seqrec.modeling.profile import ProfileEncoder
from tests.tiny_models import torch_single_thread_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _aggregator(**kw) -> WindowAggregator:
    torch.manual_seed(0)
    cfg = AggregatorConfig(d_model=16, layers=2, heads=2, dropout=0.0, time_buckets=8, **kw)
    return WindowAggregator(in_dim=8, cfg=cfg, max_windows=6).eval()


def _inputs(b: int = 2, w: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    slots = torch.randn(b, w, 8)
    mask = torch.ones(b, w, dtype=torch.bool)
    times = torch.cumsum(torch.rand(b, w, dtype=torch.float64) * 86400 * 5, dim=1) + 1.6e9
    return slots, mask, times


def test_state_j_never_sees_later_windows():
    agg = _aggregator()
    slots, mask, times = _inputs()
    states, attn = agg(slots, mask, times)
    for j in range(slots.shape[1] - 1):
        changed_slots, changed_times = slots.clone(), times.clone()
        changed_slots[:, j + 1 :] = torch.randn_like(changed_slots[:, j + 1 :]) * 3
        changed_times[:, j + 1 :] += 12345.0
        other, _ = agg(changed_slots, mask, changed_times)
        torch.testing.assert_close(other[:, : j + 1], states[:, : j + 1])
        assert not torch.allclose(other[:, j + 1 :], states[:, j + 1 :])
    # Attention: rows sum to one and put no weight on the future.
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    assert torch.all(attn.triu(diagonal=1) == 0)


def test_empty_slots_are_masked_and_do_not_change_real_states():
    agg = _aggregator()
    slots, mask, times = _inputs(b=1, w=5)
    short_mask = mask.clone()
    short_mask[:, 3:] = False
    full, _ = agg(slots, mask, times)
    padded_slots = slots.clone()
    padded_slots[:, 3:] = 0.0
    masked, attn = agg(padded_slots, short_mask, times)
    torch.testing.assert_close(masked[:, :3], full[:, :3])
    assert torch.isfinite(masked).all()
    assert torch.all(attn[:, :, 3:][:, :3] == 0)  # real windows never attend to empty slots


def test_time_gap_buckets_are_log_scaled_and_zero_for_first_and_empty_slots():
    t = torch.tensor([[0.0, 0.0, 1.0, 4.0, 1e9]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])
    b = time_gap_buckets(t, mask, n_buckets=8)
    assert b.tolist() == [[0, 1, 2, 3, 0]]  # bucket = 1 + floor(log2(1 + gap)): gaps 0, 1, 3
    far = time_gap_buckets(
        torch.tensor([[0.0, 1e9]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool), 8
    )
    assert far.tolist() == [[0, 7]]


def test_gather_slots_places_windows_and_zeros_empty_slots():
    emb = torch.arange(6, dtype=torch.float).view(3, 2)
    index = torch.tensor([[2, 0, -1], [1, -1, -1]])
    slots = gather_slots(emb, index)
    assert slots.tolist() == [[[4, 5], [0, 1], [0, 0]], [[2, 3], [0, 0], [0, 0]]]


# ---- losses ---------------------------------------------------------------------------------------


def test_multi_positive_loss_matches_the_documented_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 6)
    pos = torch.tensor([[1, 4, -1], [0, -1, -1]])
    valid = pos >= 0
    weights = torch.tensor([[1.0, 4.0, 0.0], [2.0, 0.0, 0.0]])
    mask = positives_mask_full(pos, valid, 6)
    got = multi_positive_softmax_loss(logits, mask, logits.gather(1, pos.clamp(min=0)), weights)
    # By hand: each positive competes with itself plus the non-positives of its state.
    terms = []
    for s, row in enumerate(pos.tolist()):
        positives = [p for p in row if p >= 0]
        negatives = [c for c in range(6) if c not in positives]
        for k, p in enumerate(positives):
            denom = torch.logsumexp(logits[s, [p, *negatives]], dim=0)
            terms.append((weights[s, k], denom - logits[s, p]))
    expected = sum(w * t for w, t in terms) / sum(w for w, _ in terms)
    torch.testing.assert_close(got, expected)


def test_other_positives_never_act_as_negatives():
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    one = positives_mask_full(torch.tensor([[1]]), torch.tensor([[True]]), 4)
    two = positives_mask_full(torch.tensor([[1, 0]]), torch.tensor([[True, True]]), 4)
    alone = multi_positive_softmax_loss(logits, one, logits[:, [1]], torch.ones(1, 1))
    with_strong_copositive = multi_positive_softmax_loss(logits, two, logits[:, [1]], torch.ones(1, 1))
    assert with_strong_copositive < alone  # item 0 (logit 5) left the denominator


def test_sampled_loss_with_uniform_prior_and_all_items_equals_full_softmax():
    torch.manual_seed(0)
    n = 7
    logits = torch.randn(3, n)
    pos = torch.tensor([[2, 5], [0, -1], [6, 6]])
    valid = pos >= 0
    w = valid.float()
    full = multi_positive_softmax_loss(
        logits, positives_mask_full(pos, valid, n), logits.gather(1, pos.clamp(min=0)), w
    )
    candidates = torch.randperm(n)
    log_q = torch.full((n,), -math.log(n))
    sampled_logits = logits[:, candidates] - log_q[candidates]
    column = torch.argsort(candidates)[pos.clamp(min=0)]
    sampled = multi_positive_softmax_loss(
        sampled_logits, positives_mask_candidates(pos, valid, candidates), sampled_logits.gather(1, column), w
    )
    torch.testing.assert_close(sampled, full)


def test_loss_gradient_is_finite_when_every_candidate_is_a_positive():
    logits = torch.zeros(1, 2, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = multi_positive_softmax_loss(logits, mask, logits[:, :2], torch.ones(1, 2))
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ---- profile, fusion, item tower ------------------------------------------------------------------


def test_profile_and_fusion_give_unit_user_vectors_and_use_the_profile():
    spec = ProfileSpec(
        "demographics", [{"name": "g", "vocab": ["f", "m"]}], [{"name": "age", "mean": 0, "std": 1}]
    )
    torch.manual_seed(0)
    prof = ProfileEncoder(spec, ProfileConfig(dim=8, cat_dim=4))
    fusion = Fusion(16, 8, FusionConfig(hidden=32, dropout=0.0), out_dim=12).eval()
    state = torch.randn(3, 16)
    p = prof(torch.tensor([[0], [1], [2]]), torch.tensor([[0.5], [0.5], [0.5]]))
    user = fusion(state, p)
    assert user.shape == (3, 12)
    torch.testing.assert_close(user.norm(dim=-1), torch.ones(3))
    other = fusion(state, prof(torch.tensor([[2], [2], [1]]), torch.tensor([[0.5], [0.5], [0.5]])))
    assert not torch.allclose(user, other)
    assert not ProfileEncoder.has_features(ProfileSpec())


def test_item_tower_modes_and_cold_items():
    feats = F.normalize(torch.randn(5, 8), dim=-1)
    idx = torch.arange(5)
    for mode in ("text", "id", "hybrid"):
        tower = ItemTower(5, 8, ItemTowerConfig(mode=mode, id_dropout=0.5), dim=4)  # type: ignore[arg-type]
        out = tower(idx, feats if mode != "id" else None)
        assert out.shape == (5, 4) and torch.isfinite(out).all()
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    # Text mode: two items with the same text get the same vector, whatever their ids (cold start).
    text = ItemTower(5, 8, ItemTowerConfig(mode="text"), dim=4)
    same = text(torch.tensor([0, 4]), feats[[1, 1]])
    torch.testing.assert_close(same[0], same[1])


def test_model_code_imports_neither_accelerate_nor_deepspeed():
    import ast
    from pathlib import Path

    import seqrec.modeling

    for file in Path(seqrec.modeling.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("accelerate", "deepspeed"), f"{file.name} imports {name}"
