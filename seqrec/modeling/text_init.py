"""ID embeddings initialised from item text (LLMInit; Harte et al., arXiv 2309.09261).

The catalogue's cached text features [n_items, H] are centred and projected on their first D
principal components; the result is rescaled so that rows have the mean norm of the default random
init (N(0, 0.02) in D dims, i.e. 0.02 * sqrt(D)), then copied into the ID table. Training then moves
the IDs of items it sees; an item it never sees keeps a text-derived vector instead of noise.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def text_pca(features: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """[n, H] -> [n, dim]: projection on the top `dim` principal components (zero-padded if H < dim)."""
    x = features.double() - features.double().mean(dim=0, keepdim=True)
    k = min(dim, x.shape[1], x.shape[0])
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # pca_lowrank is randomized; fix it so the init is reproducible
    try:
        _, _, v = torch.pca_lowrank(x, q=k, center=False, niter=6)
    finally:
        torch.random.set_rng_state(gen_state)
    out = torch.zeros(x.shape[0], dim, dtype=torch.float64)
    out[:, :k] = x @ v[:, :k]
    return out.float()


def text_init_rows(features: torch.Tensor, dim: int, std: float = 0.02) -> torch.Tensor:
    """[n_items, H] -> [n_items, dim]: the PCA of `features`, rows scaled to the mean norm of an
    N(0, std) init in `dim` dimensions."""
    pcs = text_pca(features.detach().cpu(), dim)
    mean_norm = pcs.norm(dim=1).mean().clamp(min=1e-12)
    return pcs * (std * math.sqrt(dim) / mean_norm)


def init_ids_from_text(
    table: nn.Embedding, features: torch.Tensor, std: float = 0.02, offset: int = 0
) -> None:
    """Overwrite rows `offset:` of `table` [offset + n_items, D] with the scaled PCA of `features`
    [n_items, H] (offset=1 for a table whose row 0 is padding, as SASRec's)."""
    n, dim = table.weight.shape[0] - offset, table.weight.shape[1]
    if features.shape[0] != n:
        raise ValueError(f"text features have {features.shape[0]} rows, the ID table {n} items")
    rows = text_init_rows(features, dim, std)
    with torch.no_grad():
        table.weight[offset:].copy_(rows.to(table.weight.device, table.weight.dtype))
