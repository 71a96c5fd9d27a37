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


def init_ids_from_text(table: nn.Embedding, features: torch.Tensor, std: float = 0.02) -> None:
    """Overwrite `table` [n_items, D] with the scaled PCA of `features` [n_items, H]."""
    n, dim = table.weight.shape
    if features.shape[0] != n:
        raise ValueError(f"text features have {features.shape[0]} rows, the ID table {n}")
    pcs = text_pca(features.detach().cpu(), dim)
    mean_norm = pcs.norm(dim=1).mean().clamp(min=1e-12)
    pcs = pcs * (std * math.sqrt(dim) / mean_norm)
    with torch.no_grad():
        table.weight.copy_(pcs.to(table.weight.device, table.weight.dtype))
