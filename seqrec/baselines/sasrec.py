"""SASRec (Kang & McAuley, 2018) trained with full softmax cross-entropy over the catalogue.

Above ``sasrec.sampled_above`` catalogue items (``sasrec.loss=auto``) the full softmax's
[positions, n_items] logits do not fit, and a sampled softmax against uniform negatives is used.

The strong variant: the original paper's loss (binary cross-entropy against one sampled negative
per position) under-trains SASRec badly; a softmax over every item (Klenitskiy & Vasilev, 2023;
Petrov & Macdonald, 2023) is what a fair baseline uses.

Architecture: item embeddings (index 0 = padding, item_idx + 1 otherwise) plus learned position
embeddings, dropout, ``layers`` pre-LayerNorm causal self-attention blocks, a final LayerNorm.
The item embedding matrix doubles as the output layer (scores = hidden · item embedding).

Text-aware variants (LLMInit and a text item tower; ``sasrec.item_init`` / ``sasrec.item_text``):
item embeddings start from the PCA of the items' language-model features, and/or every item's
embedding adds a learned projection of its frozen text feature, at input and output alike.

Positions count back from the newest event (0 = newest), so the newest event always gets the
same position embedding whatever the padding. Batches: see seqrec/baselines/sequences.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from seqrec.baselines.folder import WEIGHTS_FILE, read_run_config, read_weights, write_run_config
from seqrec.config import RunConfig, SASRecConfig
from seqrec.data.schema import atomic_directory
from seqrec.errors import CheckpointError
from seqrec.modeling.losses import resolve_loss


@dataclass
class SASRecOutput:
    loss: Tensor  # scalar: mean cross-entropy over every position that has a target
    n_targets: Tensor  # scalar long: positions that contributed (a tensor: no device sync per step)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"sasrec.d_model ({d_model}) must be divisible by sasrec.heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, t, d = x.shape  # [B, T, D]
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v)
        )  # [B, H, T, Dh]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, T, Dh]
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, cfg.heads, cfg.dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig, text_dim: int = 0):
        super().__init__()
        if n_items < 1:
            raise ValueError("SASRec needs at least one item")
        if cfg.item_text == "add" and text_dim < 1:
            raise ValueError("sasrec.item_text=add needs the width of the item text features (text_dim)")
        self.cfg = copy.deepcopy(cfg)
        self.item_emb = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)  # row 0 = padding
        # item_text=add: frozen text features [N + 1, H] (row 0 = padding, zeros), saved with the
        # weights so a loaded model needs no feature cache; a bias-free projection keeps padding at 0.
        self.item_text: Tensor | None
        self.register_buffer(
            "item_text", torch.zeros(n_items + 1, text_dim) if cfg.item_text == "add" else None
        )
        self.text_proj = nn.Linear(text_dim, cfg.d_model, bias=False) if cfg.item_text == "add" else None
        self.register_buffer("all_ids", torch.arange(n_items + 1), persistent=False)  # [N + 1]
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)  # 0 = newest event
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])

    @property
    def n_items(self) -> int:
        return self.item_emb.num_embeddings - 1

    def set_item_text(self, features: Tensor) -> None:
        """item_text=add: the catalogue's text features [n_items, H] (rows in item_idx order)."""
        if self.item_text is None:
            raise ValueError("set_item_text needs sasrec.item_text=add")
        if tuple(features.shape) != (self.n_items, self.item_text.shape[1]):
            raise ValueError(
                f"item text features are {tuple(features.shape)}, the model expects "
                f"({self.n_items}, {self.item_text.shape[1]})"
            )
        with torch.no_grad():
            self.item_text[1:].copy_(features.to(self.item_text.device, self.item_text.dtype))

    def embedding_table(self) -> Tensor:
        """[N + 1, D] every item's embedding (row 0 = padding), through one call of the module.

        Input lookups and output scores both index this table instead of reading
        ``item_emb.weight`` directly: under ZeRO-3 a weight is only materialized inside its
        module's call, so reading ``.weight`` elsewhere would see an empty shard.
        """
        table = self.item_emb(self.all_ids)
        if self.text_proj is not None and self.item_text is not None:
            table = table + self.text_proj(self.item_text.to(table.dtype))  # [N + 1, D]
        return table

    def encode(self, input_items: Tensor, table: Tensor | None = None) -> Tensor:
        """[B, T] item_idx + 1 (left padded) -> [B, T, D] hidden states; T is cut to max_len."""
        table = self.embedding_table() if table is None else table  # [N + 1, D]
        items = input_items[:, -self.cfg.max_len :]  # keep the newest max_len events
        t = items.shape[1]
        valid = items > 0  # [B, T]
        pos = torch.arange(t - 1, -1, -1, device=items.device)  # [T] distance from the newest slot
        x = self.drop(table[items] + self.pos_emb(pos)) * valid.unsqueeze(-1)  # [B, T, D]
        # Causal, and no attending to padding; each slot may always see itself, so a padding
        # row (ignored later) never has an empty softmax (NaN).
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=items.device))  # [T, T]
        eye = torch.eye(t, dtype=torch.bool, device=items.device)
        allowed = (causal & (valid.unsqueeze(1) | eye)).unsqueeze(1)  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    def forward(self, batch: dict[str, Tensor]) -> SASRecOutput:
        """Full softmax cross-entropy of the next item at every position with a target."""
        inputs = batch["input_items"][:, -self.cfg.max_len :]
        targets = batch["target_items"][:, -self.cfg.max_len :]  # [B, T], 0 = no target
        table = self.embedding_table()  # [N + 1, D], input and output embeddings are shared
        hidden = self.encode(inputs, table)  # [B, T, D]
        has_target = targets > 0
        if resolve_loss(self.cfg.loss, self.n_items, self.cfg.sampled_above) == "sampled":
            loss = self.sampled_loss(hidden[has_target], targets[has_target], table)
            return SASRecOutput(loss=loss, n_targets=has_target.sum())
        logits = hidden[has_target] @ table[1:].T  # [M, N], only positions with a target
        loss = F.cross_entropy(logits, targets[has_target] - 1)
        return SASRecOutput(loss=loss, n_targets=has_target.sum())

    def sampled_loss(self, hidden: Tensor, targets: Tensor, table: Tensor) -> Tensor:
        """Sampled softmax for large catalogues: each target against `num_negatives` items drawn
        uniformly (shared by the batch; a negative equal to the target is masked). With a uniform
        proposal the log-Q correction is the same constant for every candidate and cancels.
        hidden [M, D], targets [M] (item_idx + 1), table [N + 1, D]."""
        negatives = torch.randint(1, self.n_items + 1, (self.cfg.num_negatives,), device=hidden.device)  # [K]
        pos = (hidden * table[targets]).sum(-1, keepdim=True)  # [M, 1]
        neg = hidden @ table[negatives].T  # [M, K]
        neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        logits = torch.cat([pos, neg], dim=1)  # the target is column 0
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    @torch.no_grad()
    def score_batch(self, batch: dict[str, Tensor]) -> Tensor:
        """[B, n_items] scores of every item as the next one (higher = better)."""
        table = self.embedding_table()  # [N + 1, D]
        hidden = self.encode(batch["input_items"], table)[:, -1]  # [B, D] state after the newest event
        return hidden @ table[1:].T

    # ---- persistence -----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, run_config: RunConfig | None = None) -> None:
        """A folder with seqrec_config.json (the run config, sasrec section = this model's) and
        model.safetensors."""
        cfg = copy.deepcopy(run_config) if run_config is not None else RunConfig()
        cfg.sasrec = copy.deepcopy(self.cfg)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_directory(path, overwrite=True) as tmp:
            write_run_config(tmp, cfg, "sasrec")
            save_file(state, str(tmp / WEIGHTS_FILE))
            from seqrec.manifest import seal_model_folder

            seal_model_folder(tmp)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SASRec:
        cfg = read_run_config(path, "sasrec")
        state = read_weights(path)
        if "item_emb.weight" not in state:
            raise CheckpointError(f"{path}/{WEIGHTS_FILE}: no item_emb.weight; not a SASRec model")
        text_dim = state["item_text"].shape[1] if "item_text" in state else 0
        model = cls(state["item_emb.weight"].shape[0] - 1, cfg.sasrec, text_dim)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not match its sasrec config ({e})") from e
        return model
