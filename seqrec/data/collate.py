"""Datasets and collation for the seqrec model (the batch contract is in seqrec/data/batch.py).

Two ways a window reaches the model:

* tokens (joint stage): windows are rendered and tokenized once per (data, window/text config,
  tokenizer) and cached as an Arrow dataset with `datasets`, so repeated runs start instantly;
  random training cuts (augmentation) are rendered on the fly instead.
* features (head stage): windows were encoded once into a FeatureStore (seqrec/data/features.py);
  batches carry rows of cached embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seqrec.config import RunConfig, to_dict
from seqrec.data.batch import PAD, tokenize_texts
from seqrec.data.causal_profiles import CausalProfiles
from seqrec.data.examples import (
    UserInput,
    behavior_weight_table,
    make_input,
    make_renderer,
    render_windows,
    split_end,
    window_targets,
)
from seqrec.data.features import FeatureStore
from seqrec.data.render import Renderer
from seqrec.data.schema import PreparedData, View
from seqrec.data.windows import Window

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where derived caches live: $SEQREC_CACHE, else ~/.cache/seqrec."""
    return Path(os.environ.get("SEQREC_CACHE", Path.home() / ".cache" / "seqrec"))


def data_fingerprint(data: PreparedData) -> str:
    """Identifies a prepared data set's content cheaply (meta + file sizes and times)."""
    h = hashlib.sha256(json.dumps(data.meta, sort_keys=True, default=str).encode())
    if data.path is not None:
        for name in ("events.parquet", "items.parquet", "users.parquet"):
            st = (data.path / name).stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(data.seq_items.tobytes())
        h.update(data.seq_times.tobytes())
    return h.hexdigest()[:16]


@dataclass
class TextTokens:
    """How texts become token ids for one backbone (tokenizer, prefixes, limits)."""

    tokenizer: Any
    window_prefix: str = ""
    item_prefix: str = ""
    max_window_tokens: int = 256
    max_item_tokens: int = 64
    append_eos: bool = False

    @classmethod
    def for_model(cls, tokenizer: Any, cfg: RunConfig, is_decoder: bool) -> TextTokens:
        enc = cfg.model.encoder
        return cls(
            tokenizer,
            enc.window_prefix,
            enc.item_prefix,
            cfg.text.max_window_tokens,
            cfg.text.max_item_tokens,
            append_eos=is_decoder,
        )

    def windows(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize_texts(
            self.tokenizer, texts, self.window_prefix, self.max_window_tokens, self.append_eos
        )

    def items(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize_texts(self.tokenizer, texts, self.item_prefix, self.max_item_tokens, self.append_eos)

    def fingerprint(self) -> str:
        tok = self.tokenizer
        desc = [
            getattr(tok, "name_or_path", ""),
            len(tok),
            self.window_prefix,
            self.item_prefix,
            self.max_window_tokens,
            self.max_item_tokens,
            self.append_eos,
        ]
        # Two tokenizers with the same name can differ (tiny test tokenizers): hash a vocab sample.
        vocab = tok.get_vocab()
        sample = sorted(vocab.items())[:: max(1, len(vocab) // 512)]
        return hashlib.sha256(json.dumps([desc, sample], default=str).encode()).hexdigest()[:16]


def _cached_arrow(path: Path, build: Any) -> Any:
    """Load an Arrow dataset cached at `path`, or build it with `build()` and save it atomically."""
    import datasets

    if (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    ds = build()
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    try:
        tmp.rename(path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def item_token_ids(data: PreparedData, cfg: RunConfig, tokens: TextTokens) -> list[list[int]]:
    """Token ids of every item text (catalogue order), cached with `datasets`."""
    import datasets

    renderer = make_renderer(data, cfg)
    key = _fingerprint("items", data, cfg, tokens)
    path = cache_root() / "items" / key
    path.parent.mkdir(parents=True, exist_ok=True)

    def build() -> datasets.Dataset:
        ds = datasets.Dataset.from_dict({"text": renderer.item_texts})
        return ds.map(
            lambda b: {"input_ids": tokens.items(b["text"])},
            batched=True,
            batch_size=1024,
            desc="Tokenizing items",
            new_fingerprint=key,
        )

    return list(_cached_arrow(path, build)["input_ids"])


def _fingerprint(
    kind: str, data: PreparedData, cfg: RunConfig, tokens: TextTokens | None, *extra: Any
) -> str:
    desc = [kind, data_fingerprint(data), to_dict(cfg.window), to_dict(cfg.text), *extra]
    if tokens is not None:
        desc.append(tokens.fingerprint())
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


class SeqRecDataset(Dataset):
    """One example per user for a split. Items are dicts consumed by :class:`SeqRecCollator`."""

    def __init__(
        self,
        data: PreparedData,
        cfg: RunConfig,
        split: View,
        tokens: TextTokens | None = None,
        features: FeatureStore | None = None,
        users: np.ndarray | None = None,
        cache: bool = True,
    ):
        if (tokens is None) == (features is None):
            raise ValueError("give exactly one of tokens (joint stage) or features (head stage)")
        self.data, self.cfg, self.split = data, cfg, split
        self.tokens, self.features = tokens, features
        if users is None:
            users = _default_users(data, split)
        self.users = np.asarray(users, dtype=np.int64)
        self.random_cut = split == "train" and cfg.train.train_cut == "random"
        self.epoch = 0
        self.renderer: Renderer | None = make_renderer(data, cfg) if tokens is not None else None
        self._inputs: list[UserInput] | None = (
            None if self.random_cut else [self._input(u) for u in self.users]
        )
        self._token_cache: Any = None
        if tokens is not None and cache and not self.random_cut:
            self._token_cache = self._build_token_cache()

    # ---- inputs --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Random cuts depend on (seed, epoch, user): resumable and identical on every rank."""
        self.epoch = epoch

    def _input(self, user_idx: int, rng: np.random.Generator | None = None) -> UserInput:
        end = split_end(self.data, user_idx, self.split, self.cfg.train.train_cut, rng)
        return make_input(self.data, user_idx, end, self.cfg.window)

    def input_at(self, i: int) -> UserInput:
        if self._inputs is not None:
            return self._inputs[i]
        u = int(self.users[i])
        rng = np.random.default_rng([self.cfg.train.seed, self.epoch, u])
        return self._input(u, rng)

    def _build_token_cache(self) -> Any:
        import datasets

        assert self._inputs is not None and self.tokens is not None and self.renderer is not None
        key = _fingerprint(
            f"windows-{self.split}",
            self.data,
            self.cfg,
            self.tokens,
            self.users.tobytes().hex()[:64],
            len(self.users),
            self.cfg.train.train_cut,
        )
        path = cache_root() / "windows" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        inputs, renderer, tokens, data = self._inputs, self.renderer, self.tokens, self.data

        def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            out = []
            for i in indices:
                inp = inputs[i]
                out.append(tokens.windows(render_windows(data, renderer, inp.user_idx, inp.windows)))
            return {"input_ids": out}

        def build() -> datasets.Dataset:
            ds = datasets.Dataset.from_dict({"user_idx": [inp.user_idx for inp in inputs]})
            return ds.map(
                tokenize,
                batched=True,
                batch_size=256,
                with_indices=True,
                desc=f"Tokenizing {self.split} windows",
                new_fingerprint=key,
            )

        return _cached_arrow(path, build)

    # ---- torch Dataset ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict[str, Any]:
        inp = self.input_at(i)
        ex: dict[str, Any] = {"input": inp}
        if self.features is not None:
            ex["feature_rows"] = self.features.rows(inp.user_idx, inp.windows)
        elif self._token_cache is not None:
            ex["window_ids"] = self._token_cache[i]["input_ids"]
        else:
            assert self.tokens is not None and self.renderer is not None
            ex["window_ids"] = self.tokens.windows(
                render_windows(self.data, self.renderer, inp.user_idx, inp.windows)
            )
        return ex


def _default_users(data: PreparedData, split: View) -> np.ndarray:
    if split == "train":
        return data.train_users(2)
    if split == "serve":
        return np.flatnonzero(np.diff(data.offsets) > 0).astype(np.int64)
    return data.eval_users(split)


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


class SeqRecCollator:
    """Turns a list of dataset examples into a batch (see seqrec/data/batch.py)."""

    def __init__(
        self,
        data: PreparedData,
        cfg: RunConfig,
        split: View,
        features: FeatureStore | None = None,
        item_tokens: list[list[int]] | None = None,
        pad_token_id: int = 0,
    ):
        self.data, self.cfg, self.split = data, cfg, split
        self.features = features
        self.item_tokens = item_tokens  # catalogue token ids: live item encoding in training
        self.pad_token_id = pad_token_id
        self.weights = behavior_weight_table(data.behaviors, cfg.model.head.behavior_weights)
        self.horizon = 1 if cfg.model.head.target == "next_event" else cfg.window.size
        self.bucket = cfg.model.encoder.bucket_by_length
        causal = cfg.model.profile.as_of == "state" and data.profile_spec.source == "behavioural"
        self.causal = CausalProfiles(data) if causal and cfg.model.profile.enabled else None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs: list[UserInput] = [ex["input"] for ex in examples]
        b = len(inputs)
        w_max = max((len(inp.windows) for inp in inputs), default=1) or 1
        k_max = max((len(w) for inp in inputs for w in inp.windows), default=1) or 1
        batch: dict[str, torch.Tensor] = {"user_idx": torch.tensor([inp.user_idx for inp in inputs])}

        # Flatten windows; optionally order them by token length so micro-batches pad little.
        flat: list[tuple[int, int]] = [
            (bi, wi) for bi, inp in enumerate(inputs) for wi in range(len(inp.windows))
        ]
        if "window_ids" in examples[0]:
            lengths = [len(examples[bi]["window_ids"][wi]) for bi, wi in flat]
            order = (
                sorted(range(len(flat)), key=lambda j: lengths[j]) if self.bucket else list(range(len(flat)))
            )
            ids = [examples[flat[j][0]]["window_ids"][flat[j][1]] for j in order]
            batch["window_input_ids"] = _pad(ids, self.pad_token_id)
            batch["window_attention_mask"] = (_pad([[1] * len(x) for x in ids], 0)).long()
        else:
            assert self.features is not None
            order = list(range(len(flat)))
            rows = [examples[bi]["feature_rows"][wi] for bi, wi in flat]
            batch["window_features"] = self.features.gather(rows)
        row_of = {flat[j]: r for r, j in enumerate(order)}

        window_index = torch.full((b, w_max), PAD, dtype=torch.long)
        window_time = torch.zeros((b, w_max), dtype=torch.float64)
        window_items = torch.full((b, w_max, k_max), PAD, dtype=torch.long)
        for bi, inp in enumerate(inputs):
            items, times, _ = self.data.sequence(inp.user_idx)
            for wi, w in enumerate(inp.windows):
                window_index[bi, wi] = row_of[(bi, wi)]
                window_time[bi, wi] = float(times[w.end - 1])
                window_items[bi, wi, : len(w)] = torch.from_numpy(items[w.start : w.end].astype(np.int64))
        batch["window_index"] = window_index
        batch["window_mask"] = window_index >= 0
        batch["window_time"] = window_time
        batch["window_items"] = window_items

        users = batch["user_idx"].numpy()
        if self.causal is not None:
            # Per state: the profile of the events before each window's end (seqrec/data/causal_profiles.py).
            n_cat, n_num = self.data.profile_cat.shape[1], self.data.profile_num.shape[1]
            cat = np.zeros((b, w_max, n_cat), dtype=np.int64)
            num = np.zeros((b, w_max, n_num), dtype=np.float32)
            for bi, inp in enumerate(inputs):
                if inp.windows:
                    ends = [w.end for w in inp.windows]
                    cat[bi, : len(ends)], num[bi, : len(ends)] = self.causal.profile(inp.user_idx, ends)
            batch["profile_cat"], batch["profile_num"] = torch.from_numpy(cat), torch.from_numpy(num)
        else:
            batch["profile_cat"] = torch.from_numpy(self.data.profile_cat[users].astype(np.int64))
            batch["profile_num"] = torch.from_numpy(self.data.profile_num[users].astype(np.float32))

        if self.split == "train":
            self._add_targets(batch, inputs, w_max)
        elif self.split == "serve":
            self._add_history(batch, inputs)
        else:
            self._add_eval(batch, inputs)
        return batch

    def _add_targets(self, batch: dict[str, torch.Tensor], inputs: list[UserInput], w_max: int) -> None:
        per_user = []
        for inp in inputs:
            train_end = self.data.input_end(inp.user_idx, "train")
            per_user.append(window_targets(self.data, inp, self.horizon, train_end))
        p_max = max((len(t) for ti, _ in per_user for t in ti), default=1) or 1
        b = len(inputs)
        target_items = torch.full((b, w_max, p_max), PAD, dtype=torch.long)
        target_weights = torch.zeros((b, w_max, p_max), dtype=torch.float32)
        for bi, (titems, tbehs) in enumerate(per_user):
            for wi, (it, bh) in enumerate(zip(titems, tbehs)):
                if len(it):
                    target_items[bi, wi, : len(it)] = torch.from_numpy(it.astype(np.int64))
                    target_weights[bi, wi, : len(it)] = torch.from_numpy(self.weights[bh.astype(np.int64)])
        batch["target_items"] = target_items
        batch["target_weights"] = target_weights
        if self.item_tokens is not None:
            live = torch.unique(target_items[target_items >= 0])
            batch["item_live_idx"] = live
            ids = [self.item_tokens[i] for i in live.tolist()]
            batch["item_input_ids"] = _pad(ids, self.pad_token_id)
            batch["item_attention_mask"] = _pad([[1] * len(x) for x in ids], 0)

    def _add_history(self, batch: dict[str, torch.Tensor], inputs: list[UserInput]) -> None:
        history = [np.unique(self.data.sequence(inp.user_idx)[0][: inp.end]).tolist() for inp in inputs]
        batch["history_items"] = _pad(history, PAD)

    def _add_eval(self, batch: dict[str, torch.Tensor], inputs: list[UserInput]) -> None:
        self._add_history(batch, inputs)
        targets = [int(self.data.sequence(inp.user_idx)[0][inp.end]) for inp in inputs]
        batch["eval_target"] = torch.tensor(targets, dtype=torch.long)


def eval_loader(
    data: PreparedData,
    cfg: RunConfig,
    split: View,
    tokens: TextTokens | None = None,
    features: FeatureStore | None = None,
    users: np.ndarray | None = None,
    batch_size: int | None = None,
    pad_token_id: int = 0,
) -> DataLoader:
    """Evaluation batches for `split` (every user with a target, in user order)."""
    ds = SeqRecDataset(data, cfg, split, tokens=tokens, features=features, users=users)
    collate = SeqRecCollator(data, cfg, split, features=features, pad_token_id=pad_token_id)
    return DataLoader(ds, batch_size=batch_size or cfg.eval.batch_size, shuffle=False, collate_fn=collate)


def iter_windows(data: PreparedData, cfg: RunConfig, splits: Sequence[View]) -> Iterator[tuple[int, Window]]:
    """Every distinct (user, window) the deterministic inputs of `splits` use (for feature caching)."""
    seen: set[tuple[int, int, int]] = set()
    for split in splits:
        for u in _default_users(data, split).tolist():
            end = split_end(data, u, split, "last")
            for w in make_input(data, u, end, cfg.window).windows:
                key = (u, w.start, w.end)
                if key not in seen:
                    seen.add(key)
                    yield u, w


def eval_batches(
    model: Any,
    data: PreparedData,
    cfg: RunConfig,
    split: View,
    users: np.ndarray | None = None,
    batch_size: int | None = None,
) -> DataLoader:
    """Evaluation batches for a SeqRecModel: tokens when it has a backbone, else cached features.

    A model trained in the head stage and loaded without its backbone reads the feature folder of
    its run (``train.features_dir``, default ``<output_dir>/features``); its item features are set
    from the same folder.
    """
    if model.tokenizer is not None:
        tokens = TextTokens.for_model(model.tokenizer, cfg, model.is_decoder)
        if model.item_tower.uses_text and model.item_tokens is None:
            model.set_item_tokens(item_token_ids(data, cfg, tokens))
        pad = int(model.tokenizer.pad_token_id or 0)
        return eval_loader(
            data, cfg, split, tokens=tokens, users=users, batch_size=batch_size, pad_token_id=pad
        )
    folder = Path(cfg.train.features_dir or Path(cfg.train.output_dir) / "features")
    store = FeatureStore.load(folder)
    if model.item_tower.uses_text:
        model.set_item_features(store.items)
    return eval_loader(data, cfg, split, features=store, users=users, batch_size=batch_size)
