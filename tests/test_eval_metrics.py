"""Ranking metrics against hand-computed cases and a naive reference loop (ties, masks, K > catalogue)."""

from __future__ import annotations

import math

import pytest
import torch

from seqrec.evaluation import metrics as metrics_module
from seqrec.evaluation.metrics import metric_names, metrics_from_ranks, pointwise_auc, target_ranks

KS = [1, 2, 5, 10]


def naive_rank(scores: list[float], target: int, excluded: set[int]) -> tuple[int, int]:
    """Pessimistic rank by definition: other competing items scoring >= the target (NaN counts above)."""
    t = scores[target]
    rank = others = 0
    for i, s in enumerate(scores):
        if i == target or i in excluded:
            continue
        others += 1
        if math.isnan(t) or math.isnan(s) or s >= t:
            rank += 1
    return rank, others


def naive_metrics(rank: int, others: int, ks: list[int]) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"hr@{k}"] = 1.0 if rank < k else 0.0
        out[f"ndcg@{k}"] = 1.0 / math.log2(rank + 2) if rank < k else 0.0
    out["mrr"] = 1.0 / (rank + 1)
    out["auc"] = 1.0 - rank / others if others else 1.0
    return out


def test_hand_computed_ties_count_against_the_target() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5], [0.1, 0.5, 0.3, 0.5]])
    ranks, others = target_ranks(scores, torch.tensor([1, 0]))
    # Target 1 (0.5) ties with item 3 (0.5): the tie goes against it -> rank 1, not 0.
    # Target 0 (0.1) is below everything -> rank 3.
    assert ranks.tolist() == [1, 3]
    assert others.tolist() == [3, 3]
    m = metrics_from_ranks(ranks, [1, 2], others)
    assert m["hr@1"].tolist() == [0.0, 0.0]
    assert m["hr@2"].tolist() == [1.0, 0.0]
    assert m["ndcg@2"][0].item() == pytest.approx(1 / math.log2(3))
    assert m["mrr"].tolist() == pytest.approx([1 / 2, 1 / 4])
    assert m["auc"].tolist() == pytest.approx([2 / 3, 0.0])


def test_all_equal_scores_rank_the_target_last() -> None:
    scores = torch.zeros(1, 6)
    ranks, _ = target_ranks(scores, torch.tensor([2]))
    assert ranks.item() == 5  # a constant model is ranked as badly as possible, never first


def test_masked_items_never_count_and_target_is_never_masked() -> None:
    scores = torch.tensor([[9.0, 1.0, 5.0, 7.0, float("-inf")]])
    exclude = torch.tensor([[True, False, True, True, True]])  # everything but item 1 (and the target)
    ranks, others = target_ranks(scores, torch.tensor([2]), exclude)
    assert ranks.item() == 0  # items 0 and 3 score higher but are masked; the target's own mask is ignored
    assert others.item() == 1
    # A masked -inf item must not tie with a -inf target either.
    ranks, _ = target_ranks(scores, torch.tensor([4]), torch.tensor([[False, True, True, True, True]]))
    assert ranks.item() == 1  # only item 0 competes (and is above)


def test_nan_is_never_in_the_targets_favour() -> None:
    nan = float("nan")
    ranks, _ = target_ranks(torch.tensor([[1.0, nan, 0.0], [nan, 2.0, 3.0]]), torch.tensor([0, 0]))
    assert ranks.tolist() == [1, 2]  # a NaN candidate counts above; a NaN target is ranked last


def test_k_larger_than_the_catalogue() -> None:
    scores = torch.tensor([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    ranks, others = target_ranks(scores, torch.tensor([2, 2]))
    m = metrics_from_ranks(ranks, [5, 1000], others)
    assert m["hr@5"].tolist() == [1.0, 1.0]
    assert m["hr@1000"].tolist() == [1.0, 1.0]
    assert m["ndcg@1000"].tolist() == pytest.approx([1 / math.log2(4), 1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_loop_on_random_tied_scores(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b, c = 64, 25
    scores = torch.randint(0, 4, (b, c), generator=g).float()  # few distinct values: many ties
    scores[torch.rand(b, c, generator=g) < 0.05] = float("-inf")
    exclude = torch.rand(b, c, generator=g) < 0.3
    targets = torch.randint(0, c, (b,), generator=g)
    ranks, others = target_ranks(scores, targets, exclude)
    got = metrics_from_ranks(ranks, KS, others)
    for i in range(b):
        excluded = {j for j in range(c) if exclude[i, j] and j != targets[i]}
        r, o = naive_rank(scores[i].tolist(), int(targets[i]), excluded)
        assert (ranks[i].item(), others[i].item()) == (r, o)
        for name, value in naive_metrics(r, o, KS).items():
            assert got[name][i].item() == pytest.approx(value), name


def test_metric_names_order_and_keys_are_lower_case() -> None:
    names = metric_names([5, 10])
    assert names == ["hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "auc"]
    m = metrics_from_ranks(torch.tensor([0]), [5, 10], torch.tensor([3]))
    assert list(m) == names


def naive_pointwise_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum(1.0 for p in pos for n in neg if p > n) / (len(pos) * len(neg))  # ties count 0


def test_pointwise_auc_matches_naive_with_ties() -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (300,), generator=g).float()
    labels = torch.rand(300, generator=g) < 0.3
    assert pointwise_auc(scores, labels) == pytest.approx(
        naive_pointwise_auc(scores.tolist(), labels.long().tolist())
    )


def test_pointwise_auc_hand_cases() -> None:
    assert pointwise_auc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 1, 0])) == 1.0
    assert pointwise_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.0  # a tie is not a win
    assert math.isnan(pointwise_auc(torch.tensor([0.5, 0.4]), torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="NaN"):
        pointwise_auc(torch.tensor([float("nan"), 0.1]), torch.tensor([1, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_list_masking_equals_the_dense_mask_and_the_naive_loop(seed: int) -> None:
    # History lists as full ranking gets them: repeats, -1 padding, sometimes the target itself.
    g = torch.Generator().manual_seed(seed)
    b, c, h = 64, 30, 12
    scores = torch.randint(0, 4, (b, c), generator=g).float()  # many ties
    scores[torch.rand(b, c, generator=g) < 0.05] = float("nan")
    targets = torch.randint(0, c, (b,), generator=g)
    cols = torch.randint(0, c // 2, (b, h), generator=g)  # half the catalogue: many repeats
    cols[torch.rand(b, h, generator=g) < 0.25] = -1
    cols[::3, 0] = targets[::3]  # the target in its own history: still ranked
    dense = torch.zeros(b, c + 1, dtype=torch.bool).scatter_(1, cols.where(cols >= 0, c), True)[:, :c]
    got = target_ranks(scores, targets, exclude_cols=cols)
    assert [t.tolist() for t in got] == [t.tolist() for t in target_ranks(scores, targets, dense)]
    for i in range(b):
        excluded = {int(j) for j in cols[i] if j >= 0 and j != targets[i]}
        assert (got[0][i].item(), got[1][i].item()) == naive_rank(
            scores[i].tolist(), int(targets[i]), excluded
        )


def test_column_list_masking_rejects_bad_input() -> None:
    scores, targets = torch.zeros(1, 4), torch.tensor([0])
    with pytest.raises(ValueError, match="column 4"):
        target_ranks(scores, targets, exclude_cols=torch.tensor([[1, 4]]))
    with pytest.raises(ValueError, match="not both"):
        target_ranks(scores, targets, torch.zeros(1, 4, dtype=torch.bool), torch.tensor([[1]]))


def test_chunked_counting_over_the_catalogue_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # Large catalogues are counted in column chunks; chunk edges must neither drop nor repeat a column.
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (6, 101), generator=g).float()
    scores[0, 50] = float("nan")
    targets = torch.randint(0, 101, (6,), generator=g)
    one_pass = target_ranks(scores, targets, torch.zeros_like(scores, dtype=torch.bool))  # dense path
    for chunk in (1, 6, 7, 606, 10_000):
        monkeypatch.setattr(metrics_module, "_COUNT_CHUNK", chunk)
        assert [t.tolist() for t in target_ranks(scores, targets)] == [t.tolist() for t in one_pass]
