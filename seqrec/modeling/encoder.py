"""Token ids -> pooled, normalized text embeddings, with little padding.

All texts of a step (the batch's windows and its live item texts) go through one encoder call.
Inside, texts are sorted by length and cut into micro-batches (``encoder.micro_batch_size`` texts,
optionally ``encoder.micro_batch_tokens`` padded tokens), and every micro-batch is re-packed to
RIGHT padding at its own longest length. Re-packing makes the result independent of the padding
side the caller used (position ids start at 0 for every text whatever the architecture) and keeps
the padded share small; the step reports both counts so the non-pad share can be monitored.

Pooling: decoders read the last real token (the appended EOS, see seqrec.data.batch.tokenize_texts),
encoders average over real tokens. Then L2 normalization, a parameter-free LayerNorm
(standardization, so cached features stay valid), or nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from seqrec.config import EncoderConfig

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    emb: torch.Tensor  # [N, H] in the backbone's dtype, in input order
    tokens: int  # tokens the backbone processed, padding included
    nonpad_tokens: int  # real tokens among them


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool [n, L, H] hidden states over real tokens (mask [n, L]), for any padding side.

    last: the last position whose mask is 1 (found from the mask, not from the padding side).
    mean: the average over positions whose mask is 1.
    """
    if mode == "last":
        length = mask.shape[1]
        last = length - 1 - torch.flip(mask.long(), dims=[1]).argmax(dim=1)  # [n]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    # A batched matmul sums over tokens with float32 accumulation, even for bf16 hidden states;
    # the mean stays in the hidden states' dtype (the model casts what enters it, see model.py).
    summed = torch.bmm(mask.to(hidden.dtype).unsqueeze(1), hidden).squeeze(1)  # [n, H]
    return summed / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)


def normalize(x: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "l2":
        return F.normalize(x, dim=-1)
    if norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],))
    return x


def plan_micro_batches(
    lengths: torch.Tensor, max_rows: int, max_tokens: int = 0, sort: bool = True
) -> list[torch.Tensor]:
    """Row indices of each micro-batch: shortest texts first (when `sort`), at most `max_rows` rows
    and, when `max_tokens` > 0, at most `max_tokens` padded tokens (rows x longest)."""
    order = torch.argsort(lengths, stable=True) if sort else torch.arange(len(lengths))
    sizes = lengths[order].tolist()
    batches: list[torch.Tensor] = []
    start = 0
    while start < len(sizes):
        end = start + 1
        longest = sizes[start]
        while end < len(sizes) and end - start < max_rows:
            longest_next = max(longest, sizes[end])
            if max_tokens and (end - start + 1) * longest_next > max_tokens:
                break
            longest = longest_next
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def repack_right(
    ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `rows` of a padded batch, re-padded on the right to their own longest length."""
    sub_ids, sub_mask = ids[rows], mask[rows]  # [m, L]
    lengths = sub_mask.sum(dim=1)
    width = max(int(lengths.max()), 1)
    # A stable sort on "is padding" lists each row's real tokens first, in their original order.
    src = torch.sort((sub_mask == 0).to(torch.int8), dim=1, stable=True).indices[:, :width]  # [m, width]
    new_mask = (torch.arange(width, device=ids.device)[None, :] < lengths[:, None]).long()
    new_ids = torch.where(new_mask.bool(), sub_ids.gather(1, src), torch.full_like(src, pad_id))
    return new_ids, new_mask


def pad_token_lists(lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [n, L] ids and mask for token-id lists (L = the longest, at least 1)."""
    width = max(max((len(x) for x in lists), default=1), 1)
    ids = torch.full((len(lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lists), width), dtype=torch.long)
    for i, x in enumerate(lists):
        ids[i, : len(x)] = torch.as_tensor(list(x), dtype=torch.long)
        mask[i, : len(x)] = 1
    return ids, mask


def concat_padded(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack two padded (ids, mask) batches of different widths (re-packing strips the extra padding)."""
    width = max(a[0].shape[1], b[0].shape[1])

    def widen(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = width - ids.shape[1]
        return F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)

    (ia, ma), (ib, mb) = widen(*a), widen(*b)
    return torch.cat([ia, ib]), torch.cat([ma, mb])


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class TextEncoder(nn.Module):
    """The (adapted) backbone plus pooling and normalization."""

    def __init__(
        self,
        backbone: nn.Module,
        is_decoder: bool,
        cfg: EncoderConfig,
        pad_token_id: int,
        hidden_size: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        self.is_decoder = is_decoder
        self.hidden_size = hidden_size
        self.cfg = cfg
        self.pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if is_decoder else "mean")
        self.pad_token_id = int(pad_token_id)
        self._sync = True
        # Dummy calls made so far to match the busiest rank, by mode (monitoring and tests).
        self.padded_calls = {"train": 0, "eval": 0}

    @contextlib.contextmanager
    def local_only(self) -> Iterator[None]:
        """Encode on this rank alone (no call-count sync); only valid when the backbone is not
        ZeRO-3 partitioned (e.g. serving, or one process)."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def partitioned(self) -> bool:
        """Whether DeepSpeed ZeRO-3 shards the backbone's parameters (they carry a ``ds_id``)."""
        first = next(self.backbone.parameters(), None)
        return first is not None and hasattr(first, "ds_id")

    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One backbone call on a right-padded micro-batch -> pooled [m, H] in the backbone's dtype."""
        kwargs = {"use_cache": False} if self.is_decoder else {}
        out = self.backbone(input_ids=ids, attention_mask=mask, **kwargs)
        return pool_hidden(out.last_hidden_state, mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Encode [N, L] token ids (any padding side) -> Encoded with emb [N, H] in input order."""
        device = self.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        lengths = attention_mask.sum(dim=1)
        if len(lengths) and int(lengths.min()) == 0:
            raise ValueError("encoder got an empty text (attention mask all zero)")
        plan = plan_micro_batches(
            lengths.cpu(), self.cfg.micro_batch_size, self.cfg.micro_batch_tokens, self.cfg.bucket_by_length
        )
        # A frozen backbone needs no autograd graph: skipping it saves most of the activation memory.
        grad = contextlib.nullcontext() if self.trainable() else torch.no_grad()
        pooled: list[torch.Tensor] = []
        tokens = 0
        # Agree on the call count BEFORE the first call: a rank that finished its calls and then
        # entered a count all-reduce would meet the busier rank's ZeRO-3 all-gather instead.
        missing = self._missing_calls(len(plan), device)
        with grad:
            for rows in plan:
                ids, mask = repack_right(input_ids, attention_mask, rows.to(device), self.pad_token_id)
                tokens += ids.numel()
                pooled.append(self._run(ids, mask))
            anchor = self._dummy_calls(missing, device)
        hidden = pooled[0].shape[1] if pooled else self.hidden_size
        dtype = pooled[0].dtype if pooled else (anchor.dtype if anchor is not None else torch.float32)
        emb = torch.zeros((len(lengths), hidden), device=device, dtype=dtype)
        if pooled:
            emb = emb.index_copy(0, torch.cat(plan).to(device), torch.cat(pooled))
        if anchor is not None:
            emb = emb + anchor.to(emb.dtype)
        return Encoded(normalize(emb, self.cfg.norm), tokens, int(lengths.sum()))

    def _missing_calls(self, n_calls: int, device: torch.device) -> int:
        """Under torch.distributed, how many dummy calls this rank must add to make as many backbone
        calls as the busiest one: ZeRO-3 gathers each layer's parameters collectively, so ranks with fewer
        micro-batches would leave the others waiting forever. The dummies contribute 0 x output,
        so every parameter sees the same (zero) gradient path on every rank.

        In training always; in evaluation too when the backbone is ZeRO-3 partitioned (validation
        batches differ in windows per rank just as training batches do). Every rank must then call
        forward() equally often, which the training loop, validation (even batches) and the
        catalogue encode (same catalogue, or equal padded shares, on every rank) all do.
        ``local_only()`` turns the sync off for work that runs on one rank alone."""
        if not (self.cfg.sync_micro_batches and self._sync and _world_size() > 1):
            return 0
        if not self.training and not self.partitioned():
            return 0
        count = torch.tensor([n_calls], device=device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        return int(count.item()) - n_calls

    def _dummy_calls(self, missing: int, device: torch.device) -> torch.Tensor | None:
        """`missing` one-token backbone calls; returns 0 x their outputs (None when none)."""
        anchor = None
        one = torch.ones((1, 1), dtype=torch.long, device=device)
        self.padded_calls["train" if self.training else "eval"] += missing
        for _ in range(missing):
            out = self._run(one * self.pad_token_id, one).sum() * 0.0
            anchor = out if anchor is None else anchor + out
        return anchor

    @torch.no_grad()
    def encode_token_lists(
        self, token_lists: Sequence[Sequence[int]], batch_size: int, desc: str = "Encoding"
    ) -> torch.Tensor:
        """[N, H] (backbone dtype) for token-id lists, in eval mode (no dropout), shortest first."""
        was_training = self.training
        self.eval()
        try:
            lengths = torch.tensor([len(x) for x in token_lists], dtype=torch.long)
            plan = plan_micro_batches(lengths, batch_size, self.cfg.micro_batch_tokens, sort=True)
            out: torch.Tensor | None = None
            with tqdm(total=len(token_lists), desc=desc, unit="text", disable=len(plan) < 2) as bar:
                for rows in plan:
                    ids, mask = pad_token_lists([token_lists[i] for i in rows.tolist()], self.pad_token_id)
                    emb = self.forward(ids, mask).emb
                    if out is None:
                        out = torch.zeros(
                            (len(token_lists), emb.shape[1]), device=emb.device, dtype=emb.dtype
                        )
                    out[rows.to(emb.device)] = emb
                    bar.update(len(rows))
            return out if out is not None else torch.zeros((0, self.hidden_size))
        finally:
            self.train(was_training)
