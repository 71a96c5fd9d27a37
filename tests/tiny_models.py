"""Tiny backbones (Llama, Qwen2, BERT) built from configs, with tiny tokenizers, fully offline.

BERT gets a word-level tokenizer; the decoders get a small byte-level BPE (the kind SmolLM2, Qwen2
and Llama 3 use, and the one transformers' Qwen2 tokenizer class accepts). Any test can point
``model.backbone.name`` at a folder made here::

    from tests.tiny_models import tiny_backbone_dir, tiny_run_config
    path = tiny_backbone_dir("llama", tmp_path)           # LlamaForCausalLM checkpoint + tokenizer
    cfg = tiny_run_config(path, **{"model.items.mode": "hybrid"})

or use the session fixture ``tiny_backbones`` (``from tests.tiny_models import
tiny_backbones_fixture``), which builds each architecture once per session. Models are randomly
initialized with a fixed seed: good for shapes, gradients and invariants, not for quality.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from seqrec.config import RunConfig, apply_overrides, from_dict, to_dict, validate

ARCHS = ("llama", "qwen2", "bert")

# Words of the tiny fixture's rendered windows and items (tests/conftest.py), plus template words.
WORDS = [
    "red",
    "blue",
    "green",
    "black",
    "white",
    "skin",
    "care",
    "makeup",
    "fragrance",
    "product",
    "category",
    "brand",
    "viewed",
    "clicked",
    "added",
    "to",
    "cart",
    "bought",
    "saved",
    "interacted",
    "with",
    "rated",
    "reviewed",
    "item",
    "moments",
    "minute",
    "minutes",
    "hour",
    "hours",
    "day",
    "days",
    "month",
    "months",
    "later",
    "the",
    "a",
    "of",
    "and",
    "for",
    "shopper",
    "interests",
    "summarize",
    "describe",
    "user",
]
PUNCT = list("|:()-,.…>/'\"!?&+")


def build_tokenizer(arch: str, out_dir: Path, with_pad: bool = True) -> Any:
    """A tiny tokenizer saved into `out_dir`, loadable offline with AutoTokenizer.

    BERT: WordLevel over lowercase words, single digits and punctuation ([UNK] for the rest), with
    [CLS] ... [SEP]. Decoders: a byte-level BPE (like SmolLM2 / Qwen2 / Llama 3) trained on the
    fixture's words, no BOS; the pipeline appends EOS. `with_pad=False` leaves a decoder without a
    pad token (the model must fall back to EOS).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE, WordLevel
    from transformers import PreTrainedTokenizerFast

    if arch == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = {t: i for i, t in enumerate([*specials, *[str(d) for d in range(10)], *PUNCT, *WORDS])}
        tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
        )
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        kw: dict[str, Any] = {
            "unk_token": "[UNK]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
        }
        kw["mask_token"] = "[MASK]"
    else:
        tok = Tokenizer(BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=["<|endoftext|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        corpus = [
            " ".join(WORDS),
            " ".join(w.capitalize() for w in WORDS),
            " ".join(PUNCT),
            "0123456789 2014-03-05",
        ]
        tok.train_from_iterator(corpus * 4, trainer)
        kw = {"eos_token": "<|im_end|>"}
        if with_pad:
            kw["pad_token"] = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_backbone(arch: str, out_dir: Path, with_pad: bool = True, seed: int = 0) -> Path:
    """Save a randomly initialized 2-layer `arch` model (width 32) and its tokenizer into `out_dir`."""
    from transformers import (
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(arch, out_dir, with_pad)
    common = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
    }
    torch.manual_seed(seed)
    model: Any
    if arch == "bert":
        model = BertModel(BertConfig(**common, pad_token_id=tok.pad_token_id))
    else:
        ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, **ids))
        elif arch == "qwen2":
            model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2, **ids))
        else:
            raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHS}")
    model.save_pretrained(str(out_dir))
    return out_dir


def tiny_backbone_dir(arch: str, root: Path, with_pad: bool = True) -> Path:
    """Build (once per `root`) and return the folder of a tiny `arch` backbone."""
    out = root / f"tiny-{arch}{'' if with_pad else '-nopad'}"
    if not (out / "config.json").is_file():
        build_tiny_backbone(arch, out, with_pad)
    return out


def tiny_run_config(backbone: str | Path, **overrides: Any) -> RunConfig:
    """A RunConfig with tiny widths for `backbone`; `overrides` are dotted keys, e.g. model.head.loss."""
    base = {
        "model": {
            "backbone": {"name": str(backbone)},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "encoder": {"micro_batch_size": 4},
            "aggregator": {"d_model": 16, "layers": 2, "heads": 2, "dropout": 0.0, "time_buckets": 8},
            "profile": {"dim": 8, "cat_dim": 4},
            "fusion": {"hidden": 32, "dropout": 0.0},
            "items": {"mode": "hybrid"},
            "head": {"dim": 16, "num_negatives": 8, "pointwise_negatives": 2, "pointwise_hidden": 16},
        },
        "window": {"size": 3, "max_windows": 4},
        "text": {"max_window_tokens": 64, "max_item_tokens": 24, "time": "gap"},
    }
    data = apply_overrides(to_dict(from_dict(RunConfig, base)), [f"{k}={v}" for k, v in overrides.items()])
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


class TinyBackbones:
    """Builds each tiny architecture on first use, in one session-wide folder."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, arch: str, with_pad: bool = True) -> Path:
        return tiny_backbone_dir(arch, self.root, with_pad)


@pytest.fixture(scope="session", name="tiny_backbones")
def tiny_backbones_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyBackbones:
    return TinyBackbones(tmp_path_factory.mktemp("tiny_backbones"))


def item_tokens(model: Any, data: Any) -> list[list[int]]:
    """Catalogue token ids for `model` (the data pipeline's tokenization, no disk cache)."""
    from seqrec.data.collate import TextTokens
    from seqrec.data.examples import make_renderer

    tokens = TextTokens.for_model(model.tokenizer, model.cfg, model.is_decoder)
    return tokens.items(make_renderer(data, model.cfg).item_texts)


def make_batch(
    model: Any, data: Any, users: list[int], split: str = "train", live_items: bool = True
) -> dict:
    """A batch for `users` built by the real dataset + collator (joint stage, no disk cache)."""
    import numpy as np

    from seqrec.data.collate import SeqRecCollator, SeqRecDataset, TextTokens

    tokens = TextTokens.for_model(model.tokenizer, model.cfg, model.is_decoder)
    ds = SeqRecDataset(data, model.cfg, split, tokens=tokens, users=np.asarray(users), cache=False)  # type: ignore[arg-type]
    collate = SeqRecCollator(
        data,
        model.cfg,
        split,  # type: ignore[arg-type]
        item_tokens=item_tokens(model, data) if live_items and split == "train" else None,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    return collate([ds[i] for i in range(len(ds))])


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny models gain nothing from threads, and on a shared 2-core machine a
    busy second core makes every threaded op wait (measured: a tiny training step 60x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(name="torch_single_thread")
def torch_single_thread_fixture() -> Iterator[None]:
    with single_thread():
        yield
