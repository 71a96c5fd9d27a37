"""A small causal Transformer over a user's sequence of window embeddings.

Input slot w holds the embedding of the user's w-th kept window (oldest first, left-aligned,
empty slots after the last window). Each slot gets:

* a projection of the window embedding (H -> d_model),
* a learned position embedding (the slot index),
* a time-gap embedding: the gap between this window's end time and the previous window's, in
  log2-scaled buckets (bucket 1 + floor(log2(1 + gap seconds)), capped; bucket 0 = first slot),
* optionally the projected mean ID embedding of the window's items (hybrid input).

Pre-LN blocks with a causal mask give a state after every window; state j never sees windows after
j. Empty slots are masked as keys. The last layer's attention weights (averaged over heads) are
returned for explanations ("which past windows drove this recommendation").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import AggregatorConfig
from seqrec.data.batch import PAD


def gather_slots(window_emb: torch.Tensor, window_index: torch.Tensor) -> torch.Tensor:
    """[N, H] flattened window embeddings -> [B, W, H] slots (zeros where window_index is -1)."""
    valid = window_index >= 0
    slots = window_emb[window_index.clamp(min=0)]  # [B, W, H]
    return slots * valid.unsqueeze(-1).to(slots.dtype)


def time_gap_buckets(window_time: torch.Tensor, window_mask: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """[B, W] bucket ids of the gap to the previous window (0 for the first slot and empty slots)."""
    gaps = (window_time[:, 1:] - window_time[:, :-1]).clamp(min=0)  # [B, W-1], float64 seconds
    buckets = 1 + torch.floor(torch.log2(1.0 + gaps)).long().clamp(max=n_buckets - 2)
    buckets = F.pad(buckets, (1, 0), value=0)  # slot 0 has no previous window
    return torch.where(window_mask, buckets, torch.zeros_like(buckets))


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, W, d], allowed [B, W, W] (query, key) -> ([B, W, d], weights [B, heads, W, W])."""
        b, w, d = x.shape
        q, k, v = (
            self.qkv(x).view(b, w, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # 3 x [B, h, W, dh]
        # W is at most a few dozen windows, so explicit weights are cheap and give explanations.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)  # [B, h, W, W]
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        weights = scores.softmax(dim=-1)
        y = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, w, d)
        return self.out(y), weights


class Block(nn.Module):
    """Pre-LN Transformer block."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, weights = self.attn(self.ln1(x), allowed)
        x = x + self.dropout(a)
        x = x + self.mlp(self.ln2(x))
        return x, weights


class WindowAggregator(nn.Module):
    def __init__(self, in_dim: int, cfg: AggregatorConfig, max_windows: int, id_dim: int | None = None):
        super().__init__()
        d = cfg.d_model
        self.max_windows = max_windows
        self.n_buckets = max(cfg.time_buckets, 2)
        self.proj = nn.Linear(in_dim, d)
        self.pos = nn.Embedding(max_windows, d)
        self.gap = nn.Embedding(self.n_buckets, d)
        self.id_proj = nn.Linear(id_dim, d, bias=False) if id_dim else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(d)

    def forward(
        self,
        slots: torch.Tensor,
        window_mask: torch.Tensor,
        window_time: torch.Tensor,
        item_ids_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """slots [B, W, H], mask [B, W], times [B, W] (float64 s), item-ID means [B, W, D] or None
        -> (states [B, W, d_model], attention [B, W, W] of the last layer, averaged over heads)."""
        b, w, _ = slots.shape
        if w > self.max_windows:
            raise ValueError(
                f"{w} window slots but the aggregator was built for window.max_windows={self.max_windows}"
            )
        positions = torch.arange(w, device=slots.device)
        x = (
            self.proj(slots)
            + self.pos(positions)[None]
            + self.gap(time_gap_buckets(window_time, window_mask, self.n_buckets))
        )
        if self.id_proj is not None and item_ids_emb is not None:
            x = x + self.id_proj(item_ids_emb)
        x = self.drop(x)
        causal = torch.ones((w, w), dtype=torch.bool, device=slots.device).tril()
        # Keys must be real windows; each slot may always see itself so an empty row is not all -inf.
        allowed = (
            causal[None] & window_mask[:, None, :] | torch.eye(w, dtype=torch.bool, device=slots.device)[None]
        )
        weights = torch.zeros((b, 1, w, w), device=slots.device)
        for block in self.blocks:
            x, weights = block(x, allowed)
        return self.ln_f(x), weights.mean(dim=1)


def mean_item_embedding(window_items: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
    """[B, W, K] item ids (-1 padded) -> [B, W, D] mean ID embedding of each window's items."""
    valid = (window_items != PAD).unsqueeze(-1)
    emb = table(window_items.clamp(min=0)) * valid  # [B, W, K, D]
    return emb.sum(dim=2) / valid.sum(dim=2).clamp(min=1)
