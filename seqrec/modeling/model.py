"""SeqRecModel: windows -> backbone (+ adapters) -> aggregator -> profile fusion -> ranking head.

One training step (joint stage, batch keys in seqrec/data/batch.py):

1. the batch's windows and the distinct texts of its positive items go through the backbone in
   ONE encoder call (length-sorted micro-batches): window_emb [N, H], live item features [M, H];
2. window_emb is placed into slots [B, W, H]; the causal aggregator gives a state after every
   window [B, W, d_model]; each state is fused with the user's profile into a unit-length user
   vector [B, W, D];
3. item vectors come from the item tower over the catalogue's cached text features (refreshed
   every ``items.cache_refresh_steps`` steps); with ``items.live_positives`` the batch's positives
   are also encoded live and reach the adapters through items too (straight-through: values from
   the cache, gradients from the live rows), and/or learned ID embeddings;
4. every state with targets is scored against the catalogue (full softmax) or against in-batch
   plus sampled candidates (sampled softmax with log-Q correction); see losses.py.

Head stage (``load_backbone=False``): no backbone; batches carry ``window_features`` and the item
features are given at construction (``item_features=``) or set once with :meth:`set_item_features`.

Precision and device: the model never decides them. Whoever runs it (the training setup, from the
accelerate/DeepSpeed state; serving, from the backbone config) places and casts its parameters;
every float tensor that ENTERS the model (window features, the encoder's pooled output, the item
feature cache, profile numerics) is cast at this boundary to the dtype and device of the model's
own parameters (:meth:`SeqRecModel.to_model`). Only the losses compute in float32, for a
numerically safe log-softmax.

Configuration: the model reads :class:`SeqRecModelConfig`, its own section (``model``) plus the few
sizes it needs from the rest of the run (``window.max_windows`` and the text token limits). Given a
whole RunConfig, it keeps a copy only as the record saved beside its weights (``self.cfg``).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from seqrec.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from seqrec.data.batch import tokenize_texts
from seqrec.data.schema import PreparedData, ProfileSpec
from seqrec.modeling.adapters import apply_adapters
from seqrec.modeling.aggregator import WindowAggregator, gather_slots, mean_item_embedding
from seqrec.modeling.backbone import load_backbone as load_backbone_weights
from seqrec.modeling.backbone import real_base_name
from seqrec.modeling.encoder import TextEncoder, concat_padded
from seqrec.modeling.fusion import Fusion
from seqrec.modeling.head import RankingHead
from seqrec.modeling.item_tower import ItemTower
from seqrec.modeling.losses import (
    multi_positive_softmax_loss,
    pointwise_bce,
    positives_mask_candidates,
    positives_mask_full,
    resolve_loss,
    sample_negatives,
)
from seqrec.modeling.profile import ProfileEncoder

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass
class SeqRecOutput:
    loss: torch.Tensor | None  # scalar; None when the batch has no targets
    user_emb: torch.Tensor  # [B, D] user vector after the last window (unit length)
    window_states: torch.Tensor  # [B, W, D] user vector after each window
    window_emb: torch.Tensor  # [N, H] pooled, normalized window embeddings
    attn: torch.Tensor  # [B, W, W] aggregator attention (last layer, mean over heads)
    metrics: dict[str, float] = field(default_factory=dict)  # tokens, nonpad_tokens (ints), losses


@dataclass
class SeqRecModelConfig:
    """What SeqRecModel reads: the run's ``model`` section and the few sizes it needs elsewhere."""

    model: ModelConfig
    max_windows: int  # window.max_windows: aggregator positions
    max_window_tokens: int = 256  # text.max_window_tokens: encode_texts("window")
    max_item_tokens: int = 64  # text.max_item_tokens: encode_texts("item")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> SeqRecModelConfig:
        return cls(cfg.model, cfg.window.max_windows, cfg.text.max_window_tokens, cfg.text.max_item_tokens)

    def to_run(self) -> RunConfig:
        """A RunConfig (defaults elsewhere) carrying this section, for models built without one."""
        cfg = RunConfig(model=self.model)
        cfg.window.max_windows = self.max_windows
        cfg.text.max_window_tokens, cfg.text.max_item_tokens = self.max_window_tokens, self.max_item_tokens
        return cfg


def init_head_weights(module: nn.Module) -> None:
    """GPT-style init for everything outside the backbone: N(0, 0.02) weights, zero biases.

    PyTorch's default N(0, 1) embeddings would give position and time-gap vectors a norm of about
    sqrt(d_model), drowning the projected window features (norm < 1) before the first LayerNorm;
    measured on the synthetic set, this alone cost a third of validation NDCG@10.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class SeqRecModel(nn.Module):
    """The whole recommender. Training: ``forward(batch).loss``, ``param_groups``, ``on_step_end``.
    Evaluation: ``prepare_eval`` then ``score_batch``. Serving: ``user_embeddings``,
    ``item_embeddings``, ``encode_texts``. Persistence: ``save_pretrained`` / ``from_pretrained``.

    ``self.spec`` is what the model reads (a copy, with ``model.backbone.hidden_size`` filled in);
    ``self.cfg`` is the run config saved with the model (``self.cfg.model is self.spec.model``).
    Build data-pipeline tokens with ``self.tokenizer`` and ``self.is_decoder`` (decoders get EOS
    appended; see seqrec.data.batch.tokenize_texts).

    Everything the model needs from the data is a construction input, never set by the data layer:
    ``item_counts`` (training counts per item: the sampled-softmax prior), ``item_tokens`` (the
    catalogue's token ids, joint stage) and ``item_features`` (cached catalogue features, head
    stage). ``backbone_dtype`` overrides ``model.backbone.dtype`` (the training setup passes the one
    its precision needs; see seqrec.training.distributed.compute_precision).
    """

    def __init__(
        self,
        cfg: RunConfig | SeqRecModelConfig,
        n_items: int,
        profile_spec: ProfileSpec,
        behaviors: Sequence[str],
        load_backbone: bool = True,
        backbone_weights_dir: str | Path | None = None,
        *,
        item_counts: np.ndarray | None = None,
        item_tokens: list[list[int]] | None = None,
        item_features: torch.Tensor | None = None,
        backbone_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        # Copies: hidden_size is filled in below; the caller's config is untouched.
        run_cfg = cfg if isinstance(cfg, RunConfig) else cfg.to_run()
        self.cfg = copy.deepcopy(run_cfg)
        self.spec = SeqRecModelConfig.from_run(self.cfg)
        m = self.spec.model
        self.n_items = int(n_items)
        self.profile_spec = profile_spec
        self.behaviors = list(behaviors)
        self.encoder: TextEncoder | None = None
        self.tokenizer: Any = None
        self.is_decoder = m.backbone.kind == "decoder"
        self.base_name = real_base_name(m.backbone.name)
        if load_backbone:
            bb = load_backbone_weights(
                m.backbone, m.adapter.method == "qlora", backbone_weights_dir, dtype=backbone_dtype
            )
            module = apply_adapters(
                bb.model, m.adapter, bb.model_type, bb.base_name, m.backbone.gradient_checkpointing
            )
            self.encoder = TextEncoder(
                module, bb.is_decoder, m.encoder, bb.tokenizer.pad_token_id, bb.hidden_size
            )
            self.tokenizer, self.is_decoder, self.base_name = bb.tokenizer, bb.is_decoder, bb.base_name
            m.backbone.hidden_size = bb.hidden_size
        elif m.backbone.hidden_size <= 0:
            raise ConfigError(
                "model.backbone.hidden_size must be the width of the cached features when the model is "
                "built without a backbone (head stage)"
            )
        feat_dim, dim = m.backbone.hidden_size, m.head.dim
        self.item_tower = ItemTower(self.n_items, feat_dim, m.items, dim, need_ids=m.aggregator.use_item_ids)
        self.aggregator = WindowAggregator(
            feat_dim, m.aggregator, self.spec.max_windows, dim if m.aggregator.use_item_ids else None
        )
        use_profile = m.profile.enabled and ProfileEncoder.has_features(profile_spec)
        self.profile = ProfileEncoder(profile_spec, m.profile) if use_profile else None
        self.fusion = Fusion(m.aggregator.d_model, self.profile.dim if self.profile else 0, m.fusion, dim)
        self.head = RankingHead(m.head, dim)
        for part in (self.item_tower, self.aggregator, self.profile, self.fusion, self.head):
            if part is not None:
                part.apply(init_head_weights)
        # Catalogue text features: derived data (re-encoded from text), so never saved with weights.
        self.register_buffer("item_features", torch.zeros(0, feat_dim), persistent=False)
        self.register_buffer(
            "item_log_prior", torch.full((self.n_items,), -math.log(max(self.n_items, 1))), persistent=False
        )
        self.register_buffer("item_seen", torch.ones(self.n_items, dtype=torch.bool), persistent=False)
        self._item_tokens: list[list[int]] | None = None
        self._cache_fresh = False  # the cache matches the current backbone weights
        self._step = 0  # optimizer steps done (on_step_end / on_resume)
        self._cache_step = -1  # the step the cache was built at (-1: none built in training)
        self._eval_items: torch.Tensor | None = None
        if item_counts is not None:
            self.set_item_prior(item_counts)
        if item_tokens is not None:
            self.set_item_tokens(item_tokens)
        if item_features is not None:
            self.set_item_features(item_features)

    @classmethod
    def from_data(
        cls, cfg: RunConfig | SeqRecModelConfig, data: PreparedData, load_backbone: bool = True, **kwargs: Any
    ) -> SeqRecModel:
        """A fresh model for `data` (sizes, profile spec, behaviours, item prior); `kwargs` go to
        the constructor (item_tokens, item_features, backbone_dtype)."""
        return cls(
            cfg,
            data.n_items,
            data.profile_spec,
            data.behaviors,
            load_backbone,
            item_counts=data.train_item_counts(),
            **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return self.item_log_prior.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the layers outside the backbone (what DeepSpeed/accelerate made them)."""
        for p in self.aggregator.parameters():
            if p.is_floating_point():
                shard = getattr(p, "ds_tensor", None)  # ZeRO-3: the partition holds the real dtype
                return shard.dtype if shard is not None else p.dtype
        return torch.float32

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """A tensor entering the model: onto its device; float tensors also to its compute dtype."""
        if x.is_floating_point():
            return x.to(self.device, self.dtype)
        return x.to(self.device)

    @property
    def feature_dim(self) -> int:
        return int(self.spec.model.backbone.hidden_size)

    def train(self, mode: bool = True) -> SeqRecModel:
        if mode:
            self._eval_items = None  # item vectors change as soon as training resumes
        return super().train(mode)

    # ---- encoding ------------------------------------------------------------------------------
    def _encode(
        self, batch: Batch, live_items: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """-> window_emb [N, H], live item features [M, H] or None, token counts."""
        if "window_input_ids" not in batch:
            if "window_features" not in batch:
                raise KeyError(
                    "batch has neither window_input_ids (joint stage) nor window_features (head stage)"
                )
            return self.to_model(batch["window_features"]), None, {}
        if self.encoder is None:
            raise ValueError("this model has no backbone (head stage): batches must carry window_features")
        ids, mask = batch["window_input_ids"], batch["window_attention_mask"]
        n_windows = ids.shape[0]
        # Live item encoding only matters when gradients can flow into the backbone.
        live = (
            live_items
            and self.spec.model.items.live_positives
            and "item_input_ids" in batch
            and self.item_tower.uses_text
            and self.encoder.trainable()
        )
        if live:
            ids, mask = concat_padded(
                (ids, mask),
                (batch["item_input_ids"], batch["item_attention_mask"]),
                self.encoder.pad_token_id,
            )
        out = self.encoder(ids, mask)
        emb = self.to_model(out.emb)  # the backbone's dtype (bf16 on a GPU) -> the head's
        stats = {"tokens": out.tokens, "nonpad_tokens": out.nonpad_tokens, "texts": ids.shape[0]}
        return emb[:n_windows], (emb[n_windows:] if live else None), stats

    def encode_windows(self, batch: Batch) -> torch.Tensor:
        """[N, H] pooled, normalized window embeddings (backbone, or the batch's window_features)."""
        return self._encode(batch, live_items=False)[0]

    def encode_texts(
        self, texts: Sequence[str], kind: Literal["window", "item"] = "window", batch_size: int = 64
    ) -> torch.Tensor:
        """[N, H] float32 on the CPU for raw texts (no grad, eval mode; each distinct text encoded once).
        Applies the configured prefix and token limit of `kind`, exactly like the data pipeline."""
        if self.encoder is None:
            raise RuntimeError("encode_texts needs the backbone; this model was built without one")
        if kind not in ("window", "item"):
            raise ValueError(f"kind must be 'window' or 'item', got {kind!r}")
        enc = self.spec.model.encoder
        prefix, limit = (
            (enc.window_prefix, self.spec.max_window_tokens)
            if kind == "window"
            else (enc.item_prefix, self.spec.max_item_tokens)
        )
        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return torch.zeros((0, self.feature_dim))
        ids = tokenize_texts(self.tokenizer, distinct, prefix, limit, append_eos=self.is_decoder)
        emb = self.encoder.encode_token_lists(ids, batch_size, desc=f"Encoding {kind}s").cpu().float()
        row = {t: i for i, t in enumerate(distinct)}
        return emb[torch.tensor([row[t] for t in texts])]

    # ---- item tower and its cache ------------------------------------------------------------
    @property
    def item_tokens(self) -> list[list[int]] | None:
        """Catalogue token ids set by set_item_tokens / build_item_cache (None until then)."""
        return self._item_tokens

    def set_item_tokens(self, item_input_ids: list[list[int]]) -> None:
        """Catalogue token ids (item order), used to (re)build the item feature cache."""
        if len(item_input_ids) != self.n_items:
            raise ValueError(f"got token ids for {len(item_input_ids)} items, the model has {self.n_items}")
        self._item_tokens = item_input_ids
        self._cache_fresh = False

    def build_item_cache(
        self, item_input_ids: list[list[int]] | None = None, batch_size: int | None = None
    ) -> None:
        """Encode the whole catalogue (no grad, eval mode) into the item feature cache. Runs the same
        backbone calls on every rank (same catalogue, same order), as ZeRO-3 requires."""
        if item_input_ids is not None:
            self.set_item_tokens(item_input_ids)
        if not self.item_tower.uses_text:
            return
        if self.encoder is None or self._item_tokens is None:
            raise RuntimeError("build_item_cache needs the backbone and the catalogue token ids")
        feats = self.encoder.encode_token_lists(
            self._item_tokens, batch_size or self.spec.model.encoder.micro_batch_size, desc="Encoding items"
        )
        self.set_item_features(feats)

    def set_item_features(self, feats: torch.Tensor) -> None:
        """Set the catalogue's text features [n_items, H] (cached features in the head stage)."""
        if tuple(feats.shape) != (self.n_items, self.feature_dim):
            raise ValueError(
                f"item features must be [{self.n_items}, {self.feature_dim}], got {list(feats.shape)}"
            )
        self.item_features = self.to_model(feats.detach())
        self.item_tower.fit_text_basis(feats)  # alphafuse: once, from the first catalogue features
        self._cache_fresh = True
        self._cache_step = self._step
        self._eval_items = None

    def _ensure_item_cache(self) -> None:
        if self.item_features.shape[0] == self.n_items:
            return
        if self.encoder is not None and self._item_tokens is not None:
            log.info("item feature cache is empty: encoding the catalogue")
            self.build_item_cache()
            return
        raise RuntimeError(
            "the item feature cache is empty: call build_item_cache(item_token_ids) (joint stage) or "
            "set_item_features(features) (head stage) first"
        )

    def _item_vectors(
        self, idx: torch.Tensor, live_idx: torch.Tensor | None = None, live_feats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Item vectors [M, D] for ids [M]; rows encoded live this step replace their cached rows."""
        feats = None
        if self.item_tower.uses_text:
            self._ensure_item_cache()
            feats = self.to_model(self.item_features[idx])  # [M, H] (a cast module may hold another dtype)
            if live_idx is not None and live_feats is not None and len(live_idx):
                order = torch.argsort(live_idx)
                live_sorted, feats_sorted = live_idx[order], live_feats[order]
                at = torch.searchsorted(live_sorted, idx).clamp(max=len(live_sorted) - 1)
                hit = live_sorted[at] == idx
                # Straight-through: the forward VALUES stay the cache's, so every candidate comes
                # from the same encoder state; the gradient reaches the encoder through the live
                # rows. Substituting live values let the head tell live positives from stale cached
                # negatives (a shortcut: on Beauty the joint loss fell from 8.1 to 4.1 in 15 steps
                # while nothing was learnt, see benchmarks/results/lora_beauty.md).
                live = feats_sorted[at].to(feats.dtype)
                feats = torch.where(hit.unsqueeze(-1), feats + (live - live.detach()), feats)
        return self.item_tower(idx, feats)

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, D] unit-length item vectors of the whole catalogue (from the cache and/or IDs)."""
        return self._item_vectors(torch.arange(self.n_items, device=self.device))

    def set_item_prior(self, train_item_counts: np.ndarray) -> None:
        """Item prior q = (training count + 1) / total: the sampled-softmax proposal and its log-Q."""
        counts = torch.as_tensor(np.asarray(train_item_counts), dtype=torch.float64)
        if counts.shape != (self.n_items,):
            raise ValueError(f"train_item_counts must have {self.n_items} entries, got {tuple(counts.shape)}")
        prior = (counts + 1.0) / (counts + 1.0).sum()
        # float32 whatever the model's dtype: it only enters the (float32) loss; see _loss.
        self.item_log_prior = prior.log().to(self.device, torch.float32)
        self.item_tower.set_seen(counts)
        self.item_seen = (counts > 0).to(self.device)

    # ---- users ---------------------------------------------------------------------------------
    def _user_states(self, batch: Batch, window_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> unit-length user vectors after each window [B, W, D], attention [B, W, W]."""
        dev = self.device
        window_index = batch["window_index"].to(dev)
        mask = batch["window_mask"].to(dev)
        slots = gather_slots(window_emb, window_index)  # [B, W, H]
        ids_emb = None
        if self.aggregator.id_proj is not None:
            assert self.item_tower.ids is not None
            ids_emb = mean_item_embedding(batch["window_items"].to(dev), self.item_tower.ids)  # [B, W, D]
        states, attn = self.aggregator(slots, mask, batch["window_time"].to(dev), ids_emb)  # [B, W, d]
        profile = None
        if self.profile is not None:
            cat, num = batch["profile_cat"].to(dev), self.to_model(batch["profile_num"])
            if cat.dim() == 3:  # causal: one profile per state [B, W, C] (data/causal_profiles.py)
                b, w = cat.shape[:2]
                profile = self.profile(cat.flatten(0, 1), num.flatten(0, 1)).view(b, w, -1)  # [B, W, p]
            else:
                profile = self.profile(cat, num)  # [B, p]
                profile = profile.unsqueeze(1).expand(-1, states.shape[1], -1)  # [B, W, p]
        return self.fusion(states, profile), attn

    @staticmethod
    def _last_state(user_states: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
        last = (window_mask.sum(dim=1) - 1).clamp(min=0)  # slots are left-aligned
        return user_states[torch.arange(user_states.shape[0], device=user_states.device), last]

    def forward(self, batch: Batch) -> SeqRecOutput:
        window_emb, live_feats, stats = self._encode(batch, live_items=True)
        user_states, attn = self._user_states(batch, window_emb)
        user_emb = self._last_state(user_states, batch["window_mask"].to(self.device))
        metrics: dict[str, float] = {"tokens": 0, "nonpad_tokens": 0, **stats}
        loss = None
        if "target_items" in batch:
            loss, parts = self._loss(user_states, batch, live_feats)
            metrics.update(parts)
        return SeqRecOutput(loss, user_emb, user_states, window_emb, attn, metrics)

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """[B, D] user vectors after each user's last window."""
        window_emb, _, _ = self._encode(batch, live_items=False)
        user_states, _ = self._user_states(batch, window_emb)
        return self._last_state(user_states, batch["window_mask"].to(self.device))

    # ---- loss ----------------------------------------------------------------------------------
    def _loss(
        self, user_states: torch.Tensor, batch: Batch, live_feats: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        head_cfg = self.spec.model.head
        targets = batch["target_items"].to(self.device)  # [B, W, P]
        valid = (targets >= 0) & batch["window_mask"].to(self.device).unsqueeze(-1)
        has_target = valid.any(dim=-1)  # [B, W]
        users = user_states[has_target]  # [S, D]
        if users.shape[0] == 0:
            return user_states.sum() * 0.0, {"loss_ce": 0.0}
        pos, pos_valid = targets[has_target], valid[has_target]  # [S, P]
        weights = batch["target_weights"].to(self.device, torch.float32)[has_target] * pos_valid  # loss: fp32
        pos_ids = pos.clamp(min=0)
        live_idx = batch["item_live_idx"].to(self.device) if live_feats is not None else None

        if resolve_loss(head_cfg.loss, self.n_items, head_cfg.sampled_above) == "full":
            items = self._item_vectors(torch.arange(self.n_items, device=self.device), live_idx, live_feats)
            logits = self.head.logits(users, items)  # [S, n_items]
            if head_cfg.train_items == "seen":  # never-trained items are not even negatives
                logits = logits.masked_fill(~self._seen_items(), float("-inf"))
            pos_logits = logits.gather(1, pos_ids)  # [S, P]
            mask = positives_mask_full(pos, pos_valid, self.n_items)
            pos_vectors = items[pos_ids]  # [S, P, D]
        else:
            in_batch = torch.unique(pos[pos_valid])  # sorted distinct positives
            log_prior = self.item_log_prior.float()  # a module cast to bf16 casts buffers too
            candidates = torch.cat([in_batch, sample_negatives(log_prior, head_cfg.num_negatives)])
            items = self._item_vectors(candidates, live_idx, live_feats)  # [C, D]
            # log-Q correction, in float32 like the loss it feeds
            logits = self.head.logits(users, items).float() - log_prior[candidates]
            if head_cfg.train_items == "seen":
                logits = logits.masked_fill(~self._seen_items()[candidates], float("-inf"))
            column = torch.searchsorted(in_batch, pos_ids).clamp(
                max=len(in_batch) - 1
            )  # positive -> its column
            pos_logits = logits.gather(1, column)
            mask = positives_mask_candidates(pos, pos_valid, candidates)
            pos_vectors = items[column]
        loss = multi_positive_softmax_loss(logits, mask, pos_logits, weights)
        parts = {"loss_ce": float(loss.detach())}
        if self.head.pointwise is not None:
            k = head_cfg.pointwise_negatives
            neg_ids = sample_negatives(self.item_log_prior.float(), users.shape[0] * k)
            neg_vectors = self._item_vectors(neg_ids, live_idx, live_feats).view(users.shape[0], k, -1)
            bce = pointwise_bce(
                self.head.pointwise(users, pos_vectors), weights, self.head.pointwise(users, neg_vectors)
            )
            loss = loss + head_cfg.pointwise_weight * bce
            parts["loss_pointwise"] = float(bce.detach())
        return loss, parts

    def _seen_items(self) -> torch.Tensor:
        """[n_items] bool: items with training events (all True until set_item_prior is called)."""
        return self.item_seen

    # ---- scoring (evaluation, serving) -------------------------------------------------------
    def prepare_eval(self) -> None:
        """Rebuild the item cache if training changed the backbone since it was built, then compute
        the catalogue's item vectors once for the following score_batch calls."""
        can_encode = self.item_tower.uses_text and self.encoder is not None and self._item_tokens is not None
        if can_encode and (not self._cache_fresh or self.item_features.shape[0] != self.n_items):
            self.build_item_cache()
        was_training = self.training
        self.eval()
        with torch.no_grad():
            items = self.item_embeddings()
        self.train(was_training)
        self._eval_items = None if was_training else items

    def _catalogue(self) -> torch.Tensor:
        if self.training:
            return self.item_embeddings()
        if self._eval_items is None:
            self.prepare_eval()
        assert self._eval_items is not None
        return self._eval_items

    def raw_scores(self, batch: Batch) -> torch.Tensor:
        """[B, n_items] user . item / temperature, before the new-item boost."""
        return self.head.logits(self.user_embeddings(batch), self._catalogue())

    def score_batch(self, batch: Batch) -> torch.Tensor:
        """[B, n_items] scores: raw_scores with new items boosted (no history masking here)."""
        return self.boost_cold(self.raw_scores(batch))

    def boost_cold(self, scores: torch.Tensor, boost: float | None = None) -> torch.Tensor:
        """scores [B, n_items] + boost x each row's std on items without training events
        (``model.items.cold_boost`` unless `boost` is given; see seqrec/training/cold_boost.py).
        Scaled by the row's spread so one value means the same for every user and temperature."""
        boost = self.spec.model.items.cold_boost if boost is None else boost
        if boost == 0:
            return scores
        cold = (~self.item_seen).to(scores.device, scores.dtype)  # [n_items]
        spread = scores.float().std(dim=-1, keepdim=True).to(scores.dtype)  # [B, 1]
        return scores + boost * spread * cold

    def pointwise_scores(self, user_emb: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Re-ranking logits [B, C] of the pointwise scorer for candidates item_idx [B, C] (or [C])."""
        if self.head.pointwise is None:
            raise RuntimeError("this model has no pointwise scorer (model.head.pointwise is false)")
        if item_idx.dim() == 1:
            item_idx = item_idx.unsqueeze(0).expand(user_emb.shape[0], -1)
        return self.head.pointwise(user_emb, self._catalogue()[item_idx.to(self.device)])

    # ---- training hooks --------------------------------------------------------------------------
    def _cache_follows_training(self) -> bool:
        """The item cache is derived from weights that training changes (trainable text encoder)."""
        return self.encoder is not None and self.encoder.trainable() and self.item_tower.uses_text

    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step (on every rank): refresh the item cache on schedule."""
        self._eval_items = None
        self._step = step
        if not self._cache_follows_training():
            return
        self._cache_fresh = False
        every = self.spec.model.items.cache_refresh_steps
        if every > 0 and step % every == 0 and self._item_tokens is not None:
            self.build_item_cache()

    def on_resume(self, step: int) -> None:
        """Called after a checkpoint was loaded (on every rank): continue counting steps from it."""
        self._step = step

    # The item cache between refreshes was built from older weights than the checkpoint's, so a
    # resumed run cannot rebuild it: it is saved with every checkpoint (rank 0 writes; every rank
    # holds the same full cache and reads it back).
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Training state outside the state dict that a resumed run needs (the training loop saves
        it with each checkpoint): the item feature cache, whether it is fresh and its build step.
        Empty when the cache can be rebuilt from the weights (frozen or no text encoder) or none
        was built yet."""
        if not self._cache_follows_training() or self.item_features.shape[0] != self.n_items:
            return {}
        return {
            "item_features": self.item_features.detach(),
            "item_cache_fresh": torch.tensor(int(self._cache_fresh)),
            "item_cache_step": torch.tensor(self._cache_step, dtype=torch.int64),
        }

    def load_checkpoint_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what checkpoint_tensors returned, exactly (no re-encoding, same dtype)."""
        if "item_features" not in tensors:
            return
        feats = tensors["item_features"]
        if tuple(feats.shape) != (self.n_items, self.feature_dim):
            raise ValueError(
                f"the checkpoint's item cache is {list(feats.shape)}, the model needs "
                f"[{self.n_items}, {self.feature_dim}]"
            )
        self.item_features = feats.to(self.device)
        self._cache_fresh = bool(int(tensors["item_cache_fresh"]))
        self._cache_step = int(tensors["item_cache_step"])
        self._eval_items = None

    def param_groups(self, train_cfg: TrainConfig) -> list[dict[str, Any]]:
        """AdamW groups: backbone/adapters at backbone_lr, the rest at lr; no weight decay for biases,
        norms, other 1-D parameters and embedding tables."""
        backbone = {id(p) for p in self.encoder.backbone.parameters()} if self.encoder is not None else set()
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2 and id(p) not in embeddings
            groups.setdefault((id(p) in backbone, decay), []).append(p)
        out = []
        for (is_backbone, decay), params in sorted(groups.items()):
            out.append(
                {
                    "name": f"{'backbone' if is_backbone else 'head'}{'' if decay else '_no_decay'}",
                    "params": params,
                    "lr": train_cfg.backbone_lr if is_backbone else train_cfg.lr,
                    "weight_decay": train_cfg.weight_decay if decay else 0.0,
                }
            )
        return out

    # ---- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write adapter, head, config and metadata to `path` atomically (see seqrec/modeling/io.py)."""
        from seqrec.modeling.io import save_model

        return save_model(self, path, state_dict)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, load_backbone: bool = True, trust_remote_code: bool = False
    ) -> SeqRecModel:
        """Load a saved model (local folder or hub repo id); only JSON and safetensors are read."""
        from seqrec.modeling.io import load_model

        return load_model(cls, name_or_path, load_backbone=load_backbone, trust_remote_code=trust_remote_code)
