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
import itertools
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
        for name in ("events.parquet", "items.parquet", "users.parquet", "shards.json"):
            if name in ("events.parquet", "shards.json") and not (data.path / name).is_file():
                continue  # one or the other: sharded events (prepare --shards N) have shards.json
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
        if data.loaded is not None and tokens is not None:
            raise ValueError(
                "the joint stage tokenizes every user's windows up front: it needs the whole data"
            )
        # Partial data (one rank's shards): inputs are made when read, and a rank reads only its own.
        lazy = self.random_cut or data.loaded is not None
        self._inputs: list[UserInput] | None = None if lazy else [self._input(u) for u in self.users]
        self._token_cache: Any = None
        if tokens is not None and cache and not self.random_cut:
            self._token_cache = self._build_token_cache()

    def owner_ranks(self, world: int) -> np.ndarray:
        """[len] the rank that owns each example's user (its training loop samples only its own)."""
        return self.data.owner_ranks(world)[self.users]

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
    """[n, longest] long tensor of right-padded sequences (one copy of all values, no loop per row)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return _pad_flat(_concat(seqs, lengths), lengths, value)


def _concat(seqs: Sequence[Any], lengths: np.ndarray) -> np.ndarray:
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(seqs[0], np.ndarray):
        return np.concatenate(seqs).astype(np.int64, copy=False)
    return np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=total)


def _pad_flat(flat: np.ndarray, lengths: np.ndarray, value: float, dtype: Any = np.int64) -> torch.Tensor:
    """Rows of `lengths` consecutive values of `flat`, right-padded with `value` into [n, longest]."""
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    out = np.full((len(lengths), width), value, dtype=dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = flat
    return torch.from_numpy(out)


class SeqRecCollator:
    """Turns a list of dataset examples into a batch (see seqrec/data/batch.py).

    Vectorised: per batch, numpy gathers over all windows at once (one loop over users, none over
    windows or tokens); see benchmarks/bench_collate.py for the timing.
    """

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
        self._item_lengths = (
            np.fromiter((len(t) for t in item_tokens), dtype=np.int64, count=len(item_tokens))
            if item_tokens is not None
            else None
        )
        self.pad_token_id = pad_token_id
        self.weights = behavior_weight_table(data.behaviors, cfg.model.head.behavior_weights)
        self.horizon = 1 if cfg.model.head.target == "next_event" else cfg.window.size
        self.bucket = cfg.model.encoder.bucket_by_length
        causal = cfg.model.profile.as_of == "state" and data.profile_spec.source == "behavioural"
        self.causal = CausalProfiles(data) if causal and cfg.model.profile.enabled else None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs: list[UserInput] = [ex["input"] for ex in examples]
        b = len(inputs)
        counts = np.fromiter((len(inp.windows) for inp in inputs), dtype=np.int64, count=b)
        n = int(counts.sum())
        # Every window of the batch, flattened user by user: its user (slot row) and slot.
        user_of = np.repeat(np.arange(b), counts)
        slot_of = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        bounds = np.fromiter(
            itertools.chain.from_iterable((w.start, w.end) for inp in inputs for w in inp.windows),
            dtype=np.int64,
            count=2 * n,
        ).reshape(n, 2)
        starts, ends = bounds[:, 0], bounds[:, 1]
        w_max = max(int(counts.max()) if b else 1, 1)
        k_max = max(int((ends - starts).max()) if n else 1, 1)
        batch: dict[str, torch.Tensor] = {
            "user_idx": torch.tensor([inp.user_idx for inp in inputs], dtype=torch.long)
        }

        # Windows in token-length order (when bucketing) so micro-batches pad little.
        if "window_ids" in examples[0]:
            ids = [x for ex in examples for x in ex["window_ids"]]
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
            order = np.argsort(lengths, kind="stable") if self.bucket else np.arange(n)
            ids = [ids[j] for j in order.tolist()]
            lengths = lengths[order]
            batch["window_input_ids"] = _pad_flat(_concat(ids, lengths), lengths, self.pad_token_id)
            batch["window_attention_mask"] = _pad_flat(np.ones(int(lengths.sum()), np.int64), lengths, 0)
        else:
            assert self.features is not None
            order = np.arange(n)
            rows = np.fromiter(
                itertools.chain.from_iterable(ex["feature_rows"] for ex in examples), dtype=np.int64, count=n
            )
            batch["window_features"] = self.features.gather(rows)
        row_of = np.empty(n, dtype=np.int64)
        row_of[order] = np.arange(n)  # window j of the flat list sits at row row_of[j]

        window_index = np.full((b, w_max), PAD, dtype=np.int64)
        window_index[user_of, slot_of] = row_of
        window_time = np.zeros((b, w_max), dtype=np.float64)
        window_items = np.full((b, w_max, k_max), PAD, dtype=np.int64)
        offset = np.arange(k_max)[None, :]
        for bi, inp in enumerate(inputs):
            if not counts[bi]:
                continue
            items, times, _ = self.data.sequence(inp.user_idx)
            sel = user_of == bi
            s, e = starts[sel], ends[sel]
            window_time[bi, : len(s)] = times[e - 1]
            pos = s[:, None] + offset  # [w, k]
            inside = pos < e[:, None]
            window_items[bi, : len(s)] = np.where(inside, items[np.minimum(pos, len(items) - 1)], PAD)
        batch["window_index"] = torch.from_numpy(window_index)
        batch["window_mask"] = batch["window_index"] >= 0
        batch["window_time"] = torch.from_numpy(window_time)
        batch["window_items"] = torch.from_numpy(window_items)

        users = batch["user_idx"].numpy()
        if self.causal is not None:
            # Per state: the profile of the events before each window's end (seqrec/data/causal_profiles.py).
            n_cat, n_num = self.data.profile_cat.shape[1], self.data.profile_num.shape[1]
            cat = np.zeros((b, w_max, n_cat), dtype=np.int64)
            num = np.zeros((b, w_max, n_num), dtype=np.float32)
            for bi, inp in enumerate(inputs):
                if counts[bi]:
                    own_ends = ends[user_of == bi]  # this user's window ends, in slot order
                    cat[bi, : counts[bi]], num[bi, : counts[bi]] = self.causal.profile(inp.user_idx, own_ends)
            batch["profile_cat"], batch["profile_num"] = torch.from_numpy(cat), torch.from_numpy(num)
        else:
            batch["profile_cat"] = torch.from_numpy(self.data.profile_cat[users].astype(np.int64))
            batch["profile_num"] = torch.from_numpy(self.data.profile_num[users].astype(np.float32))

        if self.split == "train":
            self._add_targets(batch, inputs, w_max, user_of, slot_of, ends)
        elif self.split == "serve":
            self._add_history(batch, inputs)
        else:
            self._add_eval(batch, inputs)
        return batch

    def _add_targets(
        self,
        batch: dict[str, torch.Tensor],
        inputs: list[UserInput],
        w_max: int,
        user_of: np.ndarray,
        slot_of: np.ndarray,
        ends: np.ndarray,
    ) -> None:
        """Targets of window j: the events in [e_j, min(e_j + horizon, train_end)) (as
        seqrec.data.examples.window_targets), gathered for all windows at once."""
        b = len(inputs)
        train_end = np.fromiter(
            (self.data.input_end(inp.user_idx, "train") for inp in inputs), dtype=np.int64, count=b
        )
        hi = np.minimum(ends + self.horizon, train_end[user_of])
        n_targets = np.maximum(hi - ends, 0)  # [n]
        p_max = max(int(n_targets.max()) if len(n_targets) else 1, 1)
        target_items = np.full((b, w_max, p_max), PAD, dtype=np.int64)
        target_weights = np.zeros((b, w_max, p_max), dtype=np.float32)
        offset = np.arange(p_max)[None, :]
        for bi, inp in enumerate(inputs):
            sel = user_of == bi
            if not sel.any():
                continue
            items, _, behs = self.data.sequence(inp.user_idx)
            e, count = ends[sel], n_targets[sel]
            pos = e[:, None] + offset  # [w, p]
            inside = offset < count[:, None]
            safe = np.minimum(pos, len(items) - 1)
            slots = slot_of[sel]
            target_items[bi, slots] = np.where(inside, items[safe], PAD)
            target_weights[bi, slots] = np.where(inside, self.weights[behs[safe].astype(np.int64)], 0.0)
        batch["target_items"] = torch.from_numpy(target_items)
        batch["target_weights"] = torch.from_numpy(target_weights)
        if self.item_tokens is not None:
            assert self._item_lengths is not None
            live = torch.unique(batch["target_items"][batch["target_items"] >= 0])
            batch["item_live_idx"] = live
            picked = live.numpy()
            lengths = self._item_lengths[picked]
            ids = [self.item_tokens[i] for i in picked.tolist()]
            batch["item_input_ids"] = _pad_flat(_concat(ids, lengths), lengths, self.pad_token_id)
            batch["item_attention_mask"] = _pad_flat(np.ones(int(lengths.sum()), np.int64), lengths, 0)

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

    The model is only read (its tokenizer), never changed: what it needs of the catalogue comes
    from :func:`catalogue_inputs`, and the caller gives it to the model.
    A model trained in the head stage and loaded without its backbone reads the feature folder of
    its run (``train.features_dir``, default ``<output_dir>/features``).
    """
    if model.tokenizer is not None:
        tokens = TextTokens.for_model(model.tokenizer, cfg, model.is_decoder)
        pad = int(model.tokenizer.pad_token_id or 0)
        return eval_loader(
            data, cfg, split, tokens=tokens, users=users, batch_size=batch_size, pad_token_id=pad
        )
    store = FeatureStore.load(_features_folder(cfg))
    return eval_loader(data, cfg, split, features=store, users=users, batch_size=batch_size)


def _features_folder(cfg: RunConfig) -> Path:
    return Path(cfg.train.features_dir or Path(cfg.train.output_dir) / "features")


def catalogue_inputs(
    model: Any, data: PreparedData, cfg: RunConfig
) -> tuple[list[list[int]] | None, torch.Tensor | None]:
    """(catalogue token ids, cached catalogue features) a SeqRecModel still lacks for scoring:
    token ids when it has a backbone and no tokens yet, the run's cached item features when it has
    none (head stage), else None. The caller sets them (``set_item_tokens`` / ``set_item_features``)."""
    if not model.item_tower.uses_text:
        return None, None
    if model.tokenizer is not None:
        if model.item_tokens is not None:
            return None, None
        tokens = TextTokens.for_model(model.tokenizer, cfg, model.is_decoder)
        return item_token_ids(data, cfg, tokens), None
    return None, FeatureStore.load(_features_folder(cfg)).items
