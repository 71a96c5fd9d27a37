"""The vectorised SeqRecCollator against a plain per-window reference (the batch contract)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from seqrec.config import load_config
from seqrec.data.batch import PAD
from seqrec.data.collate import SeqRecCollator
from seqrec.data.examples import behavior_weight_table, make_input, split_end, window_targets


def reference(data: Any, cfg: Any, split: str, examples: list[dict[str, Any]], item_tokens: Any) -> dict:
    """One window at a time, as the batch contract (seqrec/data/batch.py) describes it."""
    inputs = [ex["input"] for ex in examples]
    flat = [(b, w) for b, inp in enumerate(inputs) for w in range(len(inp.windows))]
    ids = [examples[b]["window_ids"][w] for b, w in flat]
    order = (
        sorted(range(len(flat)), key=lambda j: len(ids[j])) if cfg.model.encoder.bucket_by_length else None
    )
    order = order if order is not None else list(range(len(flat)))
    w_max = max(len(inp.windows) for inp in inputs)
    k_max = max(len(w) for inp in inputs for w in inp.windows)
    width = max(len(x) for x in ids)
    out: dict[str, torch.Tensor] = {
        "window_input_ids": torch.zeros((len(flat), width), dtype=torch.long),
        "window_attention_mask": torch.zeros((len(flat), width), dtype=torch.long),
        "window_index": torch.full((len(inputs), w_max), PAD),
        "window_time": torch.zeros((len(inputs), w_max), dtype=torch.float64),
        "window_items": torch.full((len(inputs), w_max, k_max), PAD),
    }
    for row, j in enumerate(order):
        b, w = flat[j]
        out["window_input_ids"][row, : len(ids[j])] = torch.tensor(ids[j])
        out["window_attention_mask"][row, : len(ids[j])] = 1
        out["window_index"][b, w] = row
        items, times, _ = data.sequence(inputs[b].user_idx)
        win = inputs[b].windows[w]
        out["window_time"][b, w] = float(times[win.end - 1])
        out["window_items"][b, w, : len(win)] = torch.from_numpy(items[win.start : win.end].astype(np.int64))
    if split == "train":
        horizon = 1 if cfg.model.head.target == "next_event" else cfg.window.size
        weights = behavior_weight_table(data.behaviors, cfg.model.head.behavior_weights)
        per_user = [
            window_targets(data, inp, horizon, data.input_end(inp.user_idx, "train")) for inp in inputs
        ]
        p_max = max(max((len(t) for t in ti), default=1) for ti, _ in per_user) or 1
        out["target_items"] = torch.full((len(inputs), w_max, p_max), PAD)
        out["target_weights"] = torch.zeros((len(inputs), w_max, p_max))
        for b, (titems, tbehs) in enumerate(per_user):
            for w, (it, bh) in enumerate(zip(titems, tbehs)):
                out["target_items"][b, w, : len(it)] = torch.from_numpy(it.astype(np.int64))
                out["target_weights"][b, w, : len(it)] = torch.from_numpy(weights[bh.astype(np.int64)])
        live = torch.unique(out["target_items"][out["target_items"] >= 0])
        live_ids = [item_tokens[i] for i in live.tolist()]
        width = max(len(x) for x in live_ids)
        out["item_live_idx"] = live
        out["item_input_ids"] = torch.zeros((len(live_ids), width), dtype=torch.long)
        out["item_attention_mask"] = torch.zeros((len(live_ids), width), dtype=torch.long)
        for r, x in enumerate(live_ids):
            out["item_input_ids"][r, : len(x)] = torch.tensor(x)
            out["item_attention_mask"][r, : len(x)] = 1
    return out


@pytest.mark.parametrize("split", ["train", "valid"])
@pytest.mark.parametrize("target", ["next_window", "next_event"])
@pytest.mark.parametrize("bucket", [True, False])
def test_collator_matches_the_per_window_reference(
    tiny_data: Any, split: str, target: str, bucket: bool
) -> None:
    cfg = load_config(
        None,
        [
            "window.size=3",
            "window.max_windows=4",
            f"model.head.target={target}",
            f"model.encoder.bucket_by_length={bucket}",
        ],
    )
    rng = np.random.default_rng(0)
    item_tokens = [rng.integers(5, 100, int(rng.integers(1, 9))).tolist() for _ in range(tiny_data.n_items)]
    users = tiny_data.train_users(2) if split == "train" else tiny_data.eval_users("valid")
    examples = []
    for u in users.tolist()[:9]:
        inp = make_input(tiny_data, u, split_end(tiny_data, u, split), cfg.window)
        examples.append(
            {
                "input": inp,
                "window_ids": [rng.integers(5, 100, int(rng.integers(1, 20))).tolist() for _ in inp.windows],
            }
        )
    collate = SeqRecCollator(tiny_data, cfg, split, item_tokens=item_tokens, pad_token_id=0)  # type: ignore[arg-type]
    got = collate(examples)
    want = reference(tiny_data, cfg, split, examples, item_tokens)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        torch.testing.assert_close(got[key], value, msg=key)
    assert torch.equal(got["window_mask"], want["window_index"] >= 0)
