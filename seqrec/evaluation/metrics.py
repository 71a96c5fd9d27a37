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


def target_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """0-based pessimistic rank of each target, and how many other candidates competed.

    scores   [B, C] float, higher = better
    targets  [B]    long, column of the target in `scores`
    exclude  [B, C] bool, True = not a candidate (masked history, padding); never counts above
             the target. The target's own column is never excluded, whatever `exclude` says.

    Returns (ranks [B] long, n_others [B] long): n_others = candidates other than the target.
    """
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [B, C] and targets [B]; got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    cols = targets.long().unsqueeze(1)  # [B, 1]
    target_score = scores.gather(1, cols)  # [B, 1]
    # "Not strictly below" = above, tied, or NaN on either side (any comparison with NaN is False).
    # It includes the target's own column, which is subtracted below.
    above = ~(scores < target_score)  # [B, C]
    if exclude is None:
        n_others = torch.full_like(targets, scores.shape[1] - 1, dtype=torch.long)
        return above.count_nonzero(dim=1) - 1, n_others
    competing = ~exclude  # [B, C]
    target_competes = competing.gather(1, cols).squeeze(1).long()  # [B], 0 when the caller masked it
    ranks = (above & competing).count_nonzero(dim=1) - target_competes  # [B]
    n_others = competing.count_nonzero(dim=1) - target_competes  # [B]
    return ranks, n_others


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
