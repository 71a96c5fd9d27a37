"""Ranking metrics: the one implementation every model, protocol and report uses.

Everything starts from the *rank* of the held-out target among the candidates a protocol lets
compete (0 = first place). Ties are broken against the target (pessimistic): every other
candidate whose score equals the target's counts as ranked above it. A model that gives many
items the same score (popularity counts, a collapsed embedding, an all-zero output) therefore
cannot look better than it is. NaN scores are treated the same way: a NaN candidate counts above
the target, and a NaN target is ranked last.

From a 0-based rank r and a cut-off K:

* HR@K   = 1 if r < K else 0   (= Recall@K with one target per user)
* NDCG@K = 1 / log2(r + 2) if r < K else 0   (the ideal DCG of one relevant item is 1)
* MRR    = 1 / (r + 1)   (over the full candidate list, not truncated at K)
* AUC    = share of the other candidates scored strictly below the target = 1 - r / n_others
           (a tied pair counts 0, never 1/2: the pessimistic rule again)

K larger than the number of candidates is allowed: then HR@K = 1 for every user.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def target_ranks(
    scores: Tensor, targets: Tensor, exclude: Tensor | None = None, exclude_cols: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """0-based pessimistic rank of each target, and how many other candidates competed.

    scores        [B, C] float, higher = better
    targets       [B]    long, column of the target in `scores`
    exclude       [B, C] bool, True = not a candidate (masked history, padding); never counts
                  above the target. The target's own column is never excluded, whatever it says.
    exclude_cols  [B, H] long, the same as a short list of columns (-1 = padding; repeats and the
                  target's own column are ignored). Full ranking masks a few dozen history items
                  out of up to millions: subtracting them costs O(B*H) instead of building and
                  combining [B, C] masks (bench_eval.py measures the difference).

    Returns (ranks [B] long, n_others [B] long): n_others = candidates other than the target.
    """
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [B, C] and targets [B]; got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if exclude is not None and exclude_cols is not None:
        raise ValueError("target_ranks: give exclude or exclude_cols, not both")
    cols = targets.long().unsqueeze(1)  # [B, 1]
    target_score = scores.gather(1, cols)  # [B, 1]
    # "Not strictly below" = above, tied, or NaN on either side (any comparison with NaN is False).
    # It includes the target's own column, which is subtracted below.
    if exclude is None:
        ranks = scores.shape[1] - _count_strictly_below(scores, target_score) - 1  # [B]
        n_others = torch.full_like(ranks, scores.shape[1] - 1)  # [B]
        if exclude_cols is None:
            return ranks, n_others
        masked = _distinct_non_target(exclude_cols.long(), cols, scores.shape[1])  # [B, H] bool
        masked_above = ~(scores.gather(1, exclude_cols.long().clamp(min=0)) < target_score)  # [B, H]
        return ranks - (masked & masked_above).count_nonzero(dim=1), n_others - masked.count_nonzero(dim=1)
    above = ~(scores < target_score)  # [B, C]
    competing = ~exclude  # [B, C]
    target_competes = competing.gather(1, cols).squeeze(1).long()  # [B], 0 when the caller masked it
    ranks = (above & competing).count_nonzero(dim=1) - target_competes  # [B]
    n_others = competing.count_nonzero(dim=1) - target_competes  # [B]
    return ranks, n_others


# Elements per chunk when counting over a whole catalogue: a [B, chunk] comparison result that stays
# in cache. One [B, 1M] pass writes and re-reads a 256 MB temporary and ran ~4x slower than chunks
# of 2^18 elements on one thread (measured with B = 64 and 256, 12k to 1M items).
_COUNT_CHUNK = 1 << 18


def _count_strictly_below(scores: Tensor, target_score: Tensor) -> Tensor:
    """[B, C] scores, [B, 1] target scores -> [B] long: columns scoring strictly below the target."""
    width = max(1, _COUNT_CHUNK // max(1, scores.shape[0]))
    if scores.device.type != "cpu":  # a GPU streams one pass fine; a thousand tiny kernels would not
        width = scores.shape[1]
    below = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    for start in range(0, scores.shape[1], width):
        below += (scores[:, start : start + width] < target_score).sum(dim=1)
    return below


def _distinct_non_target(columns: Tensor, target_cols: Tensor, n_columns: int) -> Tensor:
    """[B, H] column lists -> [B, H] bool: True at the first occurrence of each real column that is
    not the target (so every masked candidate is subtracted exactly once)."""
    if columns.numel() and int(columns.max()) >= n_columns:
        raise ValueError(f"exclude_cols holds column {int(columns.max())}, but scores have {n_columns}")
    ordered, order = columns.sort(dim=1)  # [B, H]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep_sorted = first & (ordered >= 0) & (ordered != target_cols)  # [B, H]
    # Back to the callers' column order, so it lines up with scores.gather(1, columns).
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int], n_others: Tensor | None = None) -> dict[str, Tensor]:
    """Per-user metric values [B] (float64) from 0-based ranks, keyed and ordered as metric_names().

    `auc` is included only when `n_others` (candidates other than the target) is given; a user with
    no other candidate gets AUC 1.
    """
    r = ranks.double()
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"hr@{k}"] = (r < k).double()
    for k in ks:
        out[f"ndcg@{k}"] = torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))
    out["mrr"] = 1.0 / (r + 1.0)
    if n_others is not None:
        n = n_others.double()
        out["auc"] = torch.where(n > 0, 1.0 - r / n.clamp(min=1.0), torch.ones_like(r))
    return out


def metric_names(ks: Sequence[int], with_auc: bool = True) -> list[str]:
    """Metric keys in report order: hr@K for each K, ndcg@K for each K, mrr, auc."""
    names = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    return [*names, "auc"] if with_auc else names


def pointwise_auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC of pointwise scores against binary labels, ties counted against the positives.

    AUC = P(score of a random positive > score of a random negative); a tied (positive, negative)
    pair counts 0 rather than the usual 1/2, matching the pessimistic rank rule. NaN scores are an
    error (no honest ordering exists). Returns NaN when there are no positives or no negatives.
    """
    scores, labels = scores.reshape(-1).double(), labels.reshape(-1).bool()
    if scores.isnan().any():
        raise ValueError("pointwise_auc: scores contain NaN")
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg_sorted, _ = torch.sort(neg)
    # For each positive, the negatives strictly below it (side="left" stops before equal values).
    below = torch.searchsorted(neg_sorted, pos, side="left")  # [P]
    return float(below.sum().item()) / (len(pos) * len(neg))
