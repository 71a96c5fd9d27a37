"""Model inputs and training targets for one user: the leakage-safe heart of the data path.

An *input* is a user's history cut at an exclusive end position ``end`` and cut into windows:

* valid split: ``end = valid_pos`` (the validation target is the event at ``valid_pos``);
* test split:  ``end = test_pos``;
* serve view:  ``end = len(history)`` (everything we know; no target; export and recommendations);
* train split: ``end = cut`` with ``cut < train_end``, so every input and every target lies in the
  training part ``[0, train_end)``. ``train_cut="last"`` uses ``cut = train_end - 1`` (the last
  training event is a target only); ``"random"`` draws a cut per epoch (augmentation).

Training targets: the causal aggregator gives a state after every window; the state after window
``j`` (ending at position ``e_j``) is trained to predict the events that follow it — the next
event (``next_event``) or the next ``window.size`` events (``next_window``) — clipped to
``train_end``. No target is ever inside the input that predicts it: targets start at ``e_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqrec.config import RunConfig, WindowConfig
from seqrec.data.render import Renderer
from seqrec.data.schema import PreparedData, View
from seqrec.data.windows import Window, make_windows


@dataclass(frozen=True)
class UserInput:
    """A user's history cut at `end` (exclusive) and cut into windows (positions in the sequence)."""

    user_idx: int
    end: int
    windows: tuple[Window, ...]


def make_input(data: PreparedData, user_idx: int, end: int, cfg: WindowConfig) -> UserInput:
    _, times, _ = data.sequence(user_idx)
    return UserInput(user_idx, end, tuple(make_windows(times[:end], cfg)))


def split_end(data: PreparedData, user_idx: int, split: View, train_cut: str = "last", rng=None) -> int:
    """Exclusive end of the model input for a split (see the module docstring); "serve" = everything."""
    if split == "serve":
        return int(data.offsets[user_idx + 1] - data.offsets[user_idx])
    if split != "train":
        return data.input_end(user_idx, split)
    train_end = data.input_end(user_idx, "train")
    if train_cut == "random" and rng is not None and train_end > 2:
        return int(rng.integers(1, train_end))
    return train_end - 1


def make_renderer(data: PreparedData, cfg: RunConfig) -> Renderer:
    return Renderer(data.items, data.behaviors, cfg.text, data.language)


def render_windows(
    data: PreparedData, renderer: Renderer, user_idx: int, windows: tuple[Window, ...]
) -> list[str]:
    """The exact text of each window (the previous event's time gives the first event's gap)."""
    items, times, behs = data.sequence(user_idx)
    texts = []
    for w in windows:
        prev = int(times[w.start - 1]) if w.start > 0 else None
        texts.append(
            renderer.render_window(
                items[w.start : w.end], times[w.start : w.end], behs[w.start : w.end], prev
            )
        )
    return texts


def render_history(
    data: PreparedData, user_idx: int, split: View, cfg: RunConfig, renderer: Renderer | None = None
) -> list[tuple[Window, str]]:
    """The windows of a user's `split` input with their texts, exactly as the model reads them."""
    renderer = renderer or make_renderer(data, cfg)
    end = split_end(data, user_idx, split, "last")
    if end < 0:
        return []
    inp = make_input(data, user_idx, end, cfg.window)
    return list(zip(inp.windows, render_windows(data, renderer, user_idx, inp.windows)))


def window_targets(
    data: PreparedData, inp: UserInput, horizon: int, train_end: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(target items, target behaviours) per window: events in [e_j, min(e_j + horizon, train_end))."""
    items, _, behs = data.sequence(inp.user_idx)
    tgt_items, tgt_behs = [], []
    for w in inp.windows:
        hi = min(w.end + horizon, train_end)
        tgt_items.append(items[w.end : hi])
        tgt_behs.append(behs[w.end : hi])
    return tgt_items, tgt_behs


def behavior_weight_table(behaviors: list[str], weights: dict[str, float]) -> np.ndarray:
    """[n_behaviors] loss weight per behaviour index (unlisted behaviours weigh 1)."""
    return np.array([float(weights.get(b, 1.0)) for b in behaviors], dtype=np.float32)
