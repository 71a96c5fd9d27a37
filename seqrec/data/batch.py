"""The batch contract between data loading, models, training and evaluation.

A batch is a ``dict[str, torch.Tensor]``. Keys every recommender's evaluation batch carries
(used by :mod:`seqrec.evaluation`):

    user_idx        [B]      long   row in PreparedData.users
    eval_target     [B]      long   held-out item (valid/test batches only)
    history_items   [B, H]   long   every item in the user's model input, -1 padded (masking)

Keys of a seqrec batch (produced by :class:`seqrec.data.collate.SeqRecCollator`, consumed by
:class:`seqrec.modeling.SeqRecModel`). Windows are flattened across the batch so the backbone sees
all of them in one call (N = total windows in the batch, ordered by token length when bucketing):

    window_input_ids       [N, L]     long   token ids of rendered windows        } joint stage
    window_attention_mask  [N, L]     long   1 = real token                        }
    window_features        [N, H]     float  cached pooled window embeddings         head stage
    window_index           [B, W]     long   row (in the N flattened windows) of slot w of user b;
                                             -1 = empty slot. Slots are chronological and
                                             left-aligned: slot 0 = oldest kept window.
    window_mask            [B, W]     bool   True where a window exists
    window_time            [B, W]     float64 unix time (s) of each window's last event; 0 if empty
                                             (float64: float32 would round times to ~2 minutes)
    window_items           [B, W, K]  long   item of each event in each window, -1 padded
    profile_cat            [B, C]     long   categorical profile codes (0 = unknown); C may be 0
    profile_num            [B, F]     float  standardized numeric profile features; F may be 0
    target_items           [B, W, P]  long   training positives for the state after window w, -1 pad
    target_weights         [B, W, P]  float  behaviour weight of each positive (0 where padded)
    item_live_idx          [M]        long   distinct items whose text is encoded live this step
                                             (joint stage, text/hybrid item tower): the positives
    item_input_ids         [M, Li]    long   their token ids
    item_attention_mask    [M, Li]    long

Keys of a SASRec batch (:mod:`seqrec.baselines.sasrec`):

    input_items    [B, T]  long  item indices + 1 (0 = padding), left padded, oldest first
    target_items   [B, T]  long  next item + 1 at each position (0 = no target)   (train)
"""

from __future__ import annotations

from collections.abc import Sequence

PAD = -1  # padding value for item / window index tensors (item index 0 is a real item)

EVAL_KEYS = ("user_idx", "eval_target", "history_items")


def tokenize_texts(
    tokenizer: object,
    texts: Sequence[str],
    prefix: str = "",
    max_tokens: int = 256,
    append_eos: bool = False,
) -> list[list[int]]:
    """Token ids for `texts`, the one way windows and items are tokenized (data cache and model).

    `prefix` is an instruction prepended to every text. Decoders pool the last token, so for them
    (`append_eos`) the EOS token is appended after truncation: the pooled token is always the
    same summary position, whether or not the text was cut.
    """
    full = [prefix + t for t in texts] if prefix else list(texts)
    limit = max_tokens - 1 if append_eos else max_tokens
    enc = tokenizer(full, add_special_tokens=True, truncation=True, max_length=limit)  # type: ignore[operator]
    ids: list[list[int]] = enc["input_ids"]
    if append_eos:
        eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
        if eos is None:
            raise ValueError("append_eos needs a tokenizer with an eos_token_id")
        ids = [x if x and x[-1] == eos else [*x, eos] for x in ids]
    return ids
