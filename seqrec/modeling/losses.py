"""Ranking losses over multi-positive targets.

The state after window j has P positives (the items of the next window, or the next event), each
with a behaviour weight w (buy > cart > click > view, filled in by the collator). For state s
and positive p the loss is a softmax cross-entropy whose denominator holds p itself and every
candidate that is NOT a positive of s:

    loss(s, p) = -log( exp(l_sp) / (exp(l_sp) + sum_{c in C, c not in Pos(s)} exp(l_sc)) )
               = softplus( logsumexp_{c not in Pos(s)} l_sc - l_sp )

so the other positives of the same state never act as negatives (they are right answers too).
The batch loss is the weighted mean over all (state, positive) pairs: sum(w * loss) / sum(w).

Full softmax: C = the whole catalogue and l_sc = u_s . v_c / T.

Sampled softmax: C = the batch's distinct positives (in-batch negatives for the other states)
plus K negatives shared by all states, drawn with replacement from the item prior q (training
counts + 1, normalized). Every candidate logit, the positive's included, is corrected by log-Q:

    l_sc = u_s . v_c / T - log q_c

(the exact form is - log(K q_c), the expected number of draws of c; log K is the same for every
candidate and cancels). Both sampled negatives and in-batch positives appear roughly in proportion
to q, so the correction removes the popularity bias of the candidate set and the sampled loss
estimates the full softmax. A sampled negative that is a positive of s ("accidental hit") is
excluded from s's denominator by the same Pos(s) mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Masked logits use a large finite value rather than -inf: logsumexp over a row that is all -inf
# has a NaN gradient.
_MASKED = -1e9


def positives_mask_full(positives: torch.Tensor, valid: torch.Tensor, n_items: int) -> torch.Tensor:
    """[S, P] item ids + validity -> [S, n_items] True where the item is a positive of the state."""
    index = torch.where(valid, positives, torch.full_like(positives, n_items))  # padding -> spare column
    mask = torch.zeros((positives.shape[0], n_items + 1), dtype=torch.bool, device=positives.device)
    return mask.scatter_(1, index, True)[:, :n_items]


def positives_mask_candidates(
    positives: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """[S, P] item ids + validity, [C] candidate ids -> [S, C] True where the candidate is a positive."""
    hits = (positives.unsqueeze(-1) == candidates.view(1, 1, -1)) & valid.unsqueeze(-1)  # [S, P, C]
    return hits.any(dim=1)


def multi_positive_softmax_loss(
    logits: torch.Tensor, positive_mask: torch.Tensor, pos_logits: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """logits [S, C], positive_mask [S, C], pos_logits [S, P], weights [S, P] (0 = padding) -> scalar."""
    negatives = logits.float().masked_fill(positive_mask, _MASKED)
    lse_neg = torch.logsumexp(negatives, dim=1, keepdim=True)  # [S, 1]
    per_pair = F.softplus(lse_neg - pos_logits.float())  # [S, P]
    return (per_pair * weights).sum() / weights.sum().clamp(min=1e-12)


def sample_negatives(log_prior: torch.Tensor, k: int) -> torch.Tensor:
    """[k] item ids drawn with replacement from exp(log_prior)."""
    return torch.multinomial(log_prior.exp(), k, replacement=True)


def pointwise_bce(pos_logits: torch.Tensor, weights: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a pointwise scorer: positives [S, P] (weighted, 0 = padding) are 1,
    sampled negatives [S, K] are 0; the two halves are averaged separately, then equally."""
    pos = F.binary_cross_entropy_with_logits(
        pos_logits.float(), torch.ones_like(pos_logits, dtype=torch.float), reduction="none"
    )
    neg = F.binary_cross_entropy_with_logits(
        neg_logits.float(), torch.zeros_like(neg_logits, dtype=torch.float)
    )
    return 0.5 * (pos * weights).sum() / weights.sum().clamp(min=1e-12) + 0.5 * neg


def resolve_loss(loss: str, n_items: int, sampled_above: int) -> str:
    """model.head.loss with "auto" decided by the catalogue size: "full" up to `sampled_above`
    items, "sampled" (sampled softmax with log-Q correction) above; the [S, n_items] logits of a
    full softmax over millions of items do not fit in memory."""
    if loss == "auto":
        return "sampled" if n_items > sampled_above else "full"
    return loss
