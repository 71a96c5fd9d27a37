"""Typed configuration for every seqrec run: data, windows, text, model, training, evaluation.

One config system for the whole project. A run is fully described by a YAML file plus
``key=value`` overrides on the command line (dotted paths, e.g. ``train.lr=1e-4``); the resolved
config is saved beside every checkpoint and report. Every field carries a help string
(``seqrec config --help-fields`` prints them), and :func:`validate` checks cross-field rules so a
bad value fails before any data is read or any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid. The message names the field."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (and a factory for mutable defaults)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: json.loads(json.dumps(value)), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# --------------------------------------------------------------------------------------------
# Data: where the log comes from and how it becomes leakage-free sequences and splits.
# --------------------------------------------------------------------------------------------

SourceKind = Literal["generic", "movielens", "amazon", "taobao", "synthetic"]


@dataclass
class ColumnsConfig:
    """Which input column holds each canonical field (generic reader; adapters fill these in)."""

    user_id: str = _f("user_id", "Column with the user id in the events file.")
    item_id: str = _f("item_id", "Column with the item id in the events file.")
    timestamp: str = _f("timestamp", "Column with the event time (see source.timestamp_unit).")
    behavior: str | None = _f(
        "behavior", "Column with the behaviour type; null when every event has the same behaviour."
    )
    value: str | None = _f(None, "Optional numeric column (rating, price paid, quantity).")
    item_key: str = _f("item_id", "Column with the item id in the items file.")
    user_key: str = _f("user_id", "Column with the user id in the users file.")


@dataclass
class SourceConfig:
    """The raw log: files, format, column mapping and value conventions."""

    kind: SourceKind = _f("generic", "Reader: generic files or a named adapter for a public data set.")
    input: str = _f("", "A folder holding the data set's files, or the events file itself.")
    events_file: str | None = _f(None, "Events file name inside `input` (generic reader).")
    items_file: str | None = _f(None, "Item catalogue file name inside `input` (optional).")
    users_file: str | None = _f(None, "User profile file name inside `input` (optional).")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = _f(
        "auto", "File format; auto picks by extension."
    )
    delimiter: str | None = _f(None, "Field delimiter for csv/tsv when not the default.")
    has_header: bool = _f(True, "Whether csv/tsv files start with a header row.")
    columns: ColumnsConfig = field(
        default_factory=ColumnsConfig, metadata={"help": "Column mapping for the events and side tables."}
    )
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso"] = _f(
        "s", "Unit of numeric timestamps, or iso for date-time strings."
    )
    min_timestamp: int = _f(0, "Earliest plausible event time (unix seconds); earlier is out of range.")
    max_timestamp: int = _f(4102444800, "Latest plausible event time (unix seconds, default 2100-01-01).")
    behavior_map: dict[str, str] = _f(
        {}, "Map raw behaviour values to canonical names, e.g. {pv: view, fav: favorite}."
    )
    default_behavior: str = _f("interact", "Behaviour name used when the log has no behaviour column.")
    item_text_fields: list[str] = _f(
        [], "Item columns rendered as text, in order; empty = every column except the key."
    )
    user_fields: list[str] = _f([], "User profile columns to use; empty = every column except the key.")
    encoding: str = _f("utf-8", "Text encoding of the input files.")
    quoting: bool = _f(
        True, "Honour double quotes in csv/tsv files; false reads quote characters literally (stray quotes)."
    )
    numeric_user_fields: list[str] | None = _f(
        None,
        "User profile columns that are numbers (standardized); the rest are categorical. "
        "null = auto: a column is numeric when every non-empty value is a number.",
    )
    amazon_ratings_order: Literal["auto", "user,item", "item,user"] = _f(
        "auto",
        "Amazon ratings CSV column order: 2014 files are user,item,rating,time; 2018 files are "
        "item,user,rating,time; auto tells them apart by the ASIN pattern of the item column.",
    )
    language: Literal["auto", "en", "zh"] = _f(
        "auto", "Language of item text, used to pick templates; auto detects CJK text."
    )


@dataclass
class DataConfig:
    """From canonical events to per-user sequences, filters, splits and profile features."""

    source: SourceConfig = field(default_factory=SourceConfig, metadata={"help": "The raw log."})
    behaviors: list[str] = _f(
        [], "Canonical behaviour names in funnel order (weakest first); empty = as found in the data."
    )
    unknown_behavior: Literal["error", "drop"] = _f(
        "error", "What to do with behaviour values not in `behaviors`: fail, or drop and count."
    )
    missing_item: Literal["error", "drop", "keep"] = _f(
        "drop", "Events whose item is absent from the catalogue: fail, drop and count, or keep (no text)."
    )
    bad_rows: Literal["error", "drop"] = _f(
        "error",
        "Rows with unparseable or out-of-range values: fail naming file/line/column, or drop and count.",
    )
    dedupe: Literal["none", "exact", "consecutive", "first"] = _f(
        "exact",
        "Duplicate policy: none; exact (identical user,item,time,behaviour rows); consecutive "
        "(repeats of the same item and behaviour back to back); first (keep a user's first event per item).",
    )
    min_user_events: int = _f(3, "Drop users with fewer events (after dedupe); LOO needs at least 3.")
    min_item_events: int = _f(1, "Drop items with fewer events.")
    kcore: int = _f(0, "Iterated k-core filter on users and items (0 = off, 5 = the classic 5-core).")
    split: Literal["loo", "temporal"] = _f(
        "loo", "Leave-one-out per user, or a global temporal split at time quantiles."
    )
    valid_quantile: float = _f(0.8, "Temporal split: the validation period starts at this time quantile.")
    test_quantile: float = _f(0.9, "Temporal split: the test period starts at this time quantile.")
    target_behaviors: list[str] = _f(
        [], "Only events of these behaviours become validation/test targets (e.g. [buy]); empty = all."
    )
    profile: Literal["auto", "demographics", "behavioural", "none"] = _f(
        "auto", "Profile features: demographics from the users table, behavioural stats, or none."
    )
    top_categories: int = _f(3, "Behavioural profile: how many of a user's top categories to keep.")
    category_field: str | None = _f(
        None, "Item field holding the category, for behavioural profiles (auto: 'category' if present)."
    )
    cold_items: float = _f(
        0.0,
        "Cold-start benchmark: this fraction of items (drawn with cold_items_seed) is removed from "
        "training entirely: their events before each user's training end are dropped, so they can "
        "only appear as validation/test targets or in evaluation inputs (0 = off).",
    )
    cold_items_seed: int = _f(0, "Seed of the cold item draw (data.cold_items).")


# --------------------------------------------------------------------------------------------
# Windows and text: how a history becomes what the language model reads.
# --------------------------------------------------------------------------------------------


@dataclass
class WindowConfig:
    """How a user's history is cut into windows of events."""

    mode: Literal["fixed", "session"] = _f(
        "fixed", "fixed: k events per window; session: split at time gaps, long sessions cut into k."
    )
    size: int = _f(5, "Events per window (k).")
    stride: int | None = _f(None, "Step between window starts in fixed mode; null = size (no overlap).")
    session_gap: int = _f(1800, "Session mode: a gap longer than this many seconds starts a new window.")
    max_windows: int = _f(16, "Keep at most this many most recent windows.")
    align: Literal["start", "end"] = _f(
        "start",
        "start: a fixed grid from the user's first event, so the newest window may be partial and "
        "a new event only changes the newest window (cheap incremental updates); end: the newest "
        "window is always full and the oldest may be partial (every new event shifts all windows).",
    )


@dataclass
class TextConfig:
    """Templates that render windows and items as text."""

    language: Literal["auto", "en", "zh"] = _f("auto", "Template language; auto follows the data.")
    item_fields: list[str] = _f(
        [], "Item fields rendered, in order; empty = the data's text fields (title first)."
    )
    field_budgets: dict[str, int] = _f(
        {"title": 24, "description": 32},
        "Maximum tokens per field (words; each CJK character counts as one). Others use default_budget.",
    )
    default_budget: int = _f(12, "Token budget for fields not in field_budgets.")
    time: Literal["date", "gap", "both", "none"] = _f(
        "both", "Show each event's date, the gap since the previous event, both, or neither."
    )
    show_behavior: bool = _f(True, "Prefix each event with its behaviour verb (viewed, bought, ...).")
    max_window_tokens: int = _f(256, "Backbone tokens per window; longer windows are truncated.")
    max_item_tokens: int = _f(64, "Backbone tokens per item text.")


# --------------------------------------------------------------------------------------------
# Model: backbone + adapters, pooling, aggregator, profile fusion, item tower, ranking head.
# --------------------------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    """The language model that encodes windows and items."""

    name: str = _f(
        "minilm-l6", "Hub id, local directory, GGUF file, or an offline alias: minilm-l6, smollm2-135m."
    )
    gguf_file: str | None = _f(None, "GGUF file inside `name` (a directory) to load and dequantize.")
    kind: Literal["auto", "decoder", "encoder"] = _f("auto", "Decoder (last token) or encoder (mean).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Weights dtype: auto = bf16 on a GPU that supports it, fp32 on CPU."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = _f(
        "auto",
        "Attention kernel: auto = flash-attention 2 when flash_attn imports, on CUDA, in fp16/bf16, "
        "for an architecture that supports it; else sdpa; else eager (the reason is logged). An explicit "
        "kernel that cannot run here is an error.",
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    trust_remote_code: bool = _f(False, "Allow model code from the hub; off unless you trust the repo.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) to pin.")
    hidden_size: int = _f(
        0,
        "Width H of the pooled backbone features; filled in when the model is built. The head stage "
        "(no backbone, cached features) needs it: set it to the feature width.",
    )


@dataclass
class AdapterConfig:
    """How the backbone is tuned."""

    method: Literal["lora", "dora", "qlora", "full", "frozen"] = _f(
        "lora", "LoRA, DoRA, QLoRA (CUDA + bitsandbytes only), full fine-tuning or a frozen backbone."
    )
    r: int = _f(8, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.05, "LoRA dropout.")
    target_modules: list[str] = _f(
        [], "Module names to adapt; empty = chosen per architecture (attention and MLP projections)."
    )


@dataclass
class EncoderConfig:
    """Pooling and normalization of the backbone's last layer."""

    pooling: Literal["auto", "last", "mean"] = _f(
        "auto", "auto = last non-pad token for decoders, mean over tokens for encoders."
    )
    window_prefix: str = _f(
        "", "Instruction prepended to every window text (e.g. 'Summarize the shopper's interests: ')."
    )
    item_prefix: str = _f("", "Instruction prepended to every item text.")
    norm: Literal["l2", "layernorm", "none"] = _f(
        "l2", "Normalization of pooled embeddings (the seed's 'standardize the features')."
    )
    bucket_by_length: bool = _f(True, "Sort windows by length before batching so padding stays low.")
    micro_batch_size: int = _f(64, "Texts per backbone call; larger batches are split.")
    micro_batch_tokens: int = _f(
        0, "Also cap the padded tokens (texts x longest text) per backbone call; 0 = no cap."
    )
    sync_micro_batches: bool = _f(
        True,
        "Under torch.distributed, make every rank run the same number of backbone calls (padding with "
        "one-token dummy calls): ZeRO-3 gathers parameters collectively, so unequal calls would hang.",
    )


@dataclass
class AggregatorConfig:
    """Causal Transformer over the sequence of window embeddings."""

    d_model: int = _f(128, "Width of the aggregator (window embeddings are projected to it).")
    layers: int = _f(2, "Transformer layers.")
    heads: int = _f(2, "Attention heads.")
    dropout: float = _f(0.2, "Dropout in the aggregator.")
    time_buckets: int = _f(32, "Log-scaled buckets for the time gap between consecutive windows.")
    use_item_ids: bool = _f(
        False, "Add the mean ID embedding of each window's items to its text embedding (hybrid input)."
    )


@dataclass
class ProfileConfig:
    """Profile features and their fusion with the sequence state."""

    enabled: bool = _f(True, "Use profile features; switch off for the fusion ablation.")
    dim: int = _f(32, "Width of the profile vector.")
    cat_dim: int = _f(16, "Embedding width per categorical profile feature.")
    as_of: Literal["state", "train_end"] = _f(
        "state",
        "Behavioural profiles: computed from the events before each state (causal, the same in "
        "training and serving), or the stored profile of the whole training part for every state "
        "(the old behaviour: early training states see their own future).",
    )


@dataclass
class FusionConfig:
    """concat(sequence state, profile) -> norm -> MLP -> user vector."""

    hidden: int = _f(256, "Hidden width of the fusion MLP.")
    dropout: float = _f(0.1, "Dropout in the fusion MLP.")
    norm: Literal["layernorm", "l2", "none"] = _f("layernorm", "Normalization of the concatenation.")


@dataclass
class ItemTowerConfig:
    """Item representations."""

    mode: Literal["text", "id", "hybrid", "alphafuse"] = _f(
        "hybrid",
        "text: through the backbone (cold-start ready); id: learned embeddings; hybrid: sum; "
        "alphafuse: frozen standardised text coordinates beside IDs learned in their null space "
        "(head stage on frozen features).",
    )
    null_dims: int = _f(
        64,
        "alphafuse: ID coordinates out of model.head.dim (the rest are the frozen text's top principal directions).",
    )
    cache_refresh_steps: int = _f(
        200, "Re-encode the whole catalogue every N optimizer steps (text/hybrid); 0 = only at start."
    )
    live_positives: bool = _f(
        False,
        "Joint stage: also encode each batch's positive items live so gradients reach the encoder "
        "through items (straight-through; the rest of the catalogue stays cached, without "
        "gradient). Off by default: only positives then get item-side gradients, which pull every "
        "item encoding toward the user states (on Beauty: collapse, validation NDCG@10 0 after 50 "
        "steps); the windows alone tune the encoder against the cached item space.",
    )
    id_dropout: float = _f(
        0.0, "Hybrid: probability of dropping an item's ID embedding in training (helps cold start)."
    )
    id_init: Literal["random", "text_pca"] = _f(
        "random",
        "Initial ID embeddings: random N(0, 0.02), or text_pca: the PCA of the items' cached text "
        "features to the ID width, scaled to the random init's norm (LLMInit; head stage only).",
    )
    cold_ids: Literal["keep", "zero"] = _f(
        "keep",
        "Items with no training event: keep their (never trained) ID embeddings, or zero them so "
        "they score from text alone (hybrid).",
    )
    cold_boost: float = _f(
        0.0,
        "Added to the score of every item with no training event, in units of the user's score "
        "standard deviation over the catalogue (a new-item exposure knob; 0 = off). Set by "
        "cold_boost_grid when that is given.",
    )
    cold_boost_grid: list[float] = _f(
        [],
        "After training, choose cold_boost on VALIDATION from this grid (empty = keep cold_boost): "
        "the best validation NDCG@10 among values whose cold/warm validation NDCG@10 reaches "
        "cold_boost_min_ratio. The chosen value is saved with the best model.",
    )
    cold_boost_min_ratio: float = _f(
        0.0,
        "cold_boost_grid's constraint: validation NDCG@10 of users whose target has no training "
        "event over that of the others (0 = no constraint: plain best validation NDCG@10).",
    )


@dataclass
class HeadConfig:
    """Scores, targets and losses."""

    dim: int = _f(128, "Width of user and item vectors.")
    temperature: float = _f(0.05, "Scores are user . item / temperature (both L2-normalized).")
    learn_temperature: bool = _f(False, "Learn the temperature.")
    loss: Literal["auto", "full", "sampled"] = _f(
        "auto",
        "Softmax cross-entropy over the whole catalogue, or sampled softmax with log-Q correction; "
        "auto: full up to `sampled_above` catalogue items, sampled above.",
    )
    sampled_above: int = _f(
        100_000, "loss=auto: catalogues with more items than this train with sampled softmax."
    )
    num_negatives: int = _f(256, "Sampled softmax: negatives per batch (shared), plus in-batch positives.")
    train_items: Literal["all", "seen"] = _f(
        "all",
        "Items the training softmax ranks against: all, or only items with training events (items "
        "held out of training, e.g. data.cold_items, are then not even negatives, as in real cold start).",
    )
    target: Literal["next_event", "next_window"] = _f(
        "next_window", "Each window state predicts the next event, or every event of the next window."
    )
    behavior_weights: dict[str, float] = _f(
        {"view": 1.0, "pv": 1.0, "click": 1.5, "favorite": 2.0, "fav": 2.0, "cart": 2.5, "buy": 4.0},
        "Loss weight per behaviour of the target event; behaviours not listed weigh 1.",
    )
    pointwise: bool = _f(False, "Also train a pointwise scorer over [user, item, user*item] with BCE.")
    pointwise_weight: float = _f(0.2, "Weight of the pointwise BCE loss.")
    pointwise_negatives: int = _f(8, "Pointwise scorer: negatives per state, drawn from the item prior.")
    pointwise_hidden: int = _f(128, "Hidden width of the pointwise scorer's MLP.")


@dataclass
class ModelConfig:
    """The full seqrec model."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig, metadata={"help": "Backbone."})
    adapter: AdapterConfig = field(default_factory=AdapterConfig, metadata={"help": "Adapters."})
    encoder: EncoderConfig = field(default_factory=EncoderConfig, metadata={"help": "Pooling."})
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig, metadata={"help": "Aggregator."})
    profile: ProfileConfig = field(default_factory=ProfileConfig, metadata={"help": "Profile."})
    fusion: FusionConfig = field(default_factory=FusionConfig, metadata={"help": "Fusion."})
    items: ItemTowerConfig = field(default_factory=ItemTowerConfig, metadata={"help": "Item tower."})
    head: HeadConfig = field(default_factory=HeadConfig, metadata={"help": "Ranking head and loss."})


@dataclass
class SASRecConfig:
    """The SASRec baseline (full cross-entropy), trained on the same splits."""

    d_model: int = _f(64, "Hidden width.")
    layers: int = _f(2, "Transformer blocks.")
    heads: int = _f(1, "Attention heads.")
    dropout: float = _f(0.2, "Dropout.")
    max_len: int = _f(50, "Most recent events kept.")
    loss: Literal["auto", "full", "sampled"] = _f(
        "auto",
        "Full softmax cross-entropy over the catalogue, or sampled softmax against num_negatives "
        "uniform negatives shared by the batch; auto: full up to sampled_above items, sampled above.",
    )
    num_negatives: int = _f(1024, "Sampled softmax: uniform negatives per batch (accidental hits masked).")
    sampled_above: int = _f(100_000, "loss=auto: catalogues with more items than this use sampled softmax.")
    item_text: Literal["none", "add"] = _f(
        "none",
        "none: items are IDs only (the baseline); add: each item's embedding (input and output alike) is "
        "its ID embedding plus a learned linear projection of its frozen language-model text feature "
        "(model.backbone, cached in train.features_dir and saved with the weights), so the text keeps "
        "informing every item after training and items without training events score from text.",
    )
    item_init: Literal["random", "text_pca"] = _f(
        "random",
        "Initial item embeddings: random N(0, 0.02) (the ID-only baseline), or text_pca: the PCA of "
        "the items' language-model text features (model.backbone, cached in train.features_dir) "
        "scaled to the random init's norm (LLMInit, arXiv 2309.09261), then trained as IDs.",
    )


# --------------------------------------------------------------------------------------------
# Training and evaluation.
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The training loop (accelerate + DeepSpeed)."""

    model: Literal["seqrec", "sasrec", "popularity", "ensemble"] = _f(
        "seqrec", "What to train (ensemble: late fusion of the runs in the ensemble section)."
    )
    stage: Literal["joint", "head"] = _f(
        "joint",
        "joint: backbone adapters and head together; head: only aggregator, fusion and head, from "
        "window/item features cached once (two-stage mode).",
    )
    output_dir: str = _f("runs/seqrec", "Where checkpoints/, best/ and the resolved config go.")
    seed: int = _f(0, "Random seed (data order, initialization, dropout).")
    epochs: int = _f(10, "Passes over the training users.")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0 = run all epochs).")
    max_minutes: float = _f(0.0, "Stop (after saving) once this much wall time has passed; 0 = no limit.")
    batch_size: int = _f(16, "Users per device per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    lr: float = _f(1e-3, "Learning rate of the head, aggregator, fusion and ID embeddings.")
    backbone_lr: float = _f(2e-4, "Learning rate of the adapters (or backbone when fully tuned).")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to norms and biases).")
    scheduler: str = _f("cosine", "transformers.get_scheduler name: linear, cosine, constant_with_warmup...")
    warmup_ratio: float = _f(0.05, "Share of steps for linear warmup.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _f(
        "auto", "auto = bf16 on GPUs that support it, no (fp32) on CPU."
    )
    train_cut: Literal["last", "random"] = _f(
        "last",
        "Where a training history ends: 'last' = before the last train event (deterministic, "
        "cacheable); 'random' = a random cut per epoch (augmentation, joint stage only).",
    )
    eval_every: int = _f(0, "Validate every N optimizer steps (0 = once per epoch).")
    eval_max_users: int = _f(0, "Validate on at most this many users (0 = all), for speed.")
    patience: int = _f(5, "Early stopping: validations without improvement of best_metric (0 = off).")
    best_metric: str = _f(
        "ndcg@10", "Validation metric (higher is better) that picks the best model and drives early stopping."
    )
    checkpoint_every: int = _f(0, "Save a resumable checkpoint every N optimizer steps (0 = per epoch).")
    keep_last: int = _f(2, "Resumable checkpoints kept (older ones are deleted).")
    resume: str | None = _f(None, "Checkpoint to resume from: a path, or 'auto' for the newest complete.")
    deepspeed: str | None = _f(None, "DeepSpeed JSON (ds_configs/...); null = plain DDP/single process.")
    tracker: Literal["tensorboard", "wandb", "none"] = _f("tensorboard", "Experiment tracker.")
    log_every: int = _f(10, "Log metrics every N optimizer steps.")
    num_workers: int | None = _f(
        None, "DataLoader worker processes; null = auto: 4 (at most the CPUs per process) on a GPU, 0 on CPU."
    )
    pin_memory: bool | None = _f(
        None,
        "Pin DataLoader batches in page-locked memory (faster copies to a GPU); null = auto: on a GPU only.",
    )
    find_unused_parameters: bool = _f(
        False, "DDP only: allow parameters that get no gradient in a step (slower; needed by some models)."
    )
    features_dir: str | None = _f(
        None, "Head stage: folder of cached window/item features (default: <output_dir>/features)."
    )
    init_from: str | None = _f(
        None, "A SeqRecModel folder whose weights (adapter, head) initialize this run."
    )


@dataclass
class EvalConfig:
    """The evaluation protocol."""

    protocol: Literal["full", "sampled", "candidates"] = _f(
        "full",
        "full: rank the whole catalogue with history masked (default); sampled: target vs a fixed, "
        "saved set of negatives (legacy, sampled); candidates: a user-supplied candidates file.",
    )
    ks: list[int] = _f([5, 10, 20], "Cut-offs for HR@K and NDCG@K.")
    mask_history: bool = _f(True, "Full ranking: never rank items from the user's input history.")
    num_negatives: int = _f(100, "Sampled protocol: negatives per user.")
    negatives_seed: int = _f(2024, "Sampled protocol: seed of the saved negatives.")
    negatives_sampler: Literal["uniform", "popularity"] = _f(
        "uniform", "Sampled protocol: draw negatives uniformly, or in proportion to training counts."
    )
    negatives_dir: str | None = _f(
        None,
        "Sampled protocol: folder of the saved negatives file; null = the prepared data directory "
        "(so every model is scored against the same negatives).",
    )
    candidates_file: str | None = _f(None, "Candidates protocol: JSONL with user_id, target, candidates.")
    sample_users: int = _f(
        0,
        "Evaluate a fixed random sample of this many users with a target (0 = all); the sample is "
        "drawn once with sample_seed and saved beside the data (like sampled negatives).",
    )
    sample_seed: int = _f(2024, "Seed of the evaluation user sample.")
    batch_size: int = _f(64, "Users per evaluation batch.")
    per_user: bool = _f(False, "Also write per-user results.")
    per_user_format: Literal["csv", "parquet"] = _f("csv", "File format of the per-user results.")
    length_buckets: list[int] = _f(
        [5, 10, 20, 50],
        "Upper bounds of the history-length slices (input events): [5, 10] gives 1-5, 6-10, 11+.",
    )


@dataclass
class EnsembleConfig:
    """Late fusion (train.model=ensemble): per-user standardized scores of member runs, added with
    a weight chosen on validation NDCG@10 (EnsRec-style)."""

    members: list[str] = _f(
        [],
        "Member run configs (YAML; each trains into <output>/../<file stem> unless done there) or "
        "finished run folders (used as they are).",
    )
    weights: list[float] = _f(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "Grid for the weight of each member after the first (every combination whose sum is at most "
        "1; the first member gets the rest). Two members: the last member's weight w, the first 1 - w.",
    )
    normalize: Literal["zscore", "none"] = _f(
        "zscore", "Standardize each member's scores per user over the catalogue before adding."
    )


@dataclass
class RunConfig:
    """Everything a run needs. Saved, resolved, beside every checkpoint and report."""

    data_dir: str = _f("", "Prepared data directory (from `seqrec data prepare` or `seqrec data synth`).")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data preparation."})
    window: WindowConfig = field(default_factory=WindowConfig, metadata={"help": "Windows."})
    text: TextConfig = field(default_factory=TextConfig, metadata={"help": "Text rendering."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model."})
    sasrec: SASRecConfig = field(default_factory=SASRecConfig, metadata={"help": "SASRec baseline."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig, metadata={"help": "Late fusion."})


# --------------------------------------------------------------------------------------------
# Conversion: dict / YAML / overrides  <->  dataclasses, with errors that name the field.
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce) `value` against the annotation `tp`; raise ConfigError naming `where`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp)
        return {
            _coerce(k, key_tp, f"{where}.{k}"): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys are an error listing the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {sorted(prefix + k for k in unknown)}; valid keys here: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (JSON/YAML friendly)."""
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict; values are parsed as YAML scalars/lists."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    cls: type[T] = RunConfig,  # type: ignore[assignment]
) -> T:
    """Load a config file (or defaults), apply overrides, validate. The one entry point for configs."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(cls, data)
    validate(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (or JSON when the suffix is .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg)
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def validate(cfg: Any) -> None:
    """Cross-field checks; raises ConfigError naming the field."""
    if isinstance(cfg, RunConfig):
        check_ranges(cfg)  # every number within its range, names that must name something
    if isinstance(cfg, RunConfig):
        validate(cfg.data)
        w, m, t = cfg.window, cfg.model, cfg.train
        if w.size < 1:
            raise ConfigError(f"window.size must be >= 1, got {w.size}")
        if w.stride is not None and not 1 <= w.stride <= w.size:
            raise ConfigError(f"window.stride must be in [1, window.size={w.size}], got {w.stride}")
        if w.max_windows < 1:
            raise ConfigError(f"window.max_windows must be >= 1, got {w.max_windows}")
        if m.aggregator.d_model % m.aggregator.heads:
            raise ConfigError("model.aggregator.d_model must be divisible by model.aggregator.heads")
        if m.head.sampled_above < 1:
            raise ConfigError(f"model.head.sampled_above must be >= 1, got {m.head.sampled_above}")
        if m.head.temperature <= 0:
            raise ConfigError("model.head.temperature must be > 0")
        if t.batch_size < 1 or t.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
        if t.stage == "head" and t.train_cut == "random":
            raise ConfigError("train.train_cut=random needs the joint stage (cached features are fixed)")
        if any(k < 1 for k in cfg.eval.ks):
            raise ConfigError(f"eval.ks must be positive, got {cfg.eval.ks}")
        if cfg.eval.sample_users < 0:
            raise ConfigError(f"eval.sample_users must be >= 0 (0 = all users), got {cfg.eval.sample_users}")
        if cfg.eval.protocol == "candidates" and not cfg.eval.candidates_file:
            raise ConfigError("eval.protocol=candidates needs eval.candidates_file")
    elif isinstance(cfg, DataConfig):
        if not 0 < cfg.valid_quantile < cfg.test_quantile < 1:
            raise ConfigError("data.valid_quantile < data.test_quantile must both lie in (0, 1)")
        if cfg.min_user_events < 1:
            raise ConfigError("data.min_user_events must be >= 1")
        if cfg.kcore < 0:
            raise ConfigError("data.kcore must be >= 0")
        if not 0.0 <= cfg.cold_items < 1.0:
            raise ConfigError(f"data.cold_items must lie in [0, 1), got {cfg.cold_items}")


def field_help(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every leaf field: the reference printed by the CLI."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            rows.extend(field_help(tp, name + "."))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((name, json.dumps(default, ensure_ascii=False), f.metadata.get("help", "")))
    return rows


# (dotted field, lowest allowed, highest allowed, lowest included): every number a run reads,
# checked before any work starts so a typo fails in one line, not deep inside the loop.
_RANGES: list[tuple[str, float, float, bool]] = [
    ("train.lr", 0.0, float("inf"), True),  # 0 freezes: useful for checks
    ("train.backbone_lr", 0.0, float("inf"), True),
    ("train.weight_decay", 0.0, float("inf"), True),
    ("train.warmup_ratio", 0.0, 1.0, True),
    ("train.max_grad_norm", 0.0, float("inf"), True),
    ("train.epochs", 1, float("inf"), True),
    ("train.max_steps", 0, float("inf"), True),
    ("train.max_minutes", 0.0, float("inf"), True),
    ("train.eval_every", 0, float("inf"), True),
    ("train.eval_max_users", 0, float("inf"), True),
    ("train.patience", 0, float("inf"), True),
    ("train.checkpoint_every", 0, float("inf"), True),
    ("train.keep_last", 1, float("inf"), True),
    ("train.log_every", 1, float("inf"), True),
    ("train.num_workers", 0, float("inf"), True),
    ("model.adapter.r", 1, float("inf"), True),
    ("model.adapter.alpha", 0, float("inf"), False),
    ("model.adapter.dropout", 0.0, 1.0, True),
    ("model.encoder.micro_batch_size", 1, float("inf"), True),
    ("model.encoder.micro_batch_tokens", 0, float("inf"), True),
    ("model.aggregator.d_model", 1, float("inf"), True),
    ("model.aggregator.layers", 1, float("inf"), True),
    ("model.aggregator.heads", 1, float("inf"), True),
    ("model.aggregator.dropout", 0.0, 1.0, True),
    ("model.aggregator.time_buckets", 1, float("inf"), True),
    ("model.profile.dim", 1, float("inf"), True),
    ("model.profile.cat_dim", 1, float("inf"), True),
    ("model.fusion.hidden", 1, float("inf"), True),
    ("model.fusion.dropout", 0.0, 1.0, True),
    ("model.items.cache_refresh_steps", 0, float("inf"), True),
    ("model.items.id_dropout", 0.0, 1.0, True),
    ("model.items.cold_boost", 0.0, float("inf"), True),
    ("model.items.cold_boost_min_ratio", 0.0, float("inf"), True),
    ("model.head.dim", 1, float("inf"), True),
    ("model.head.num_negatives", 1, float("inf"), True),
    ("model.head.pointwise_weight", 0.0, float("inf"), True),
    ("model.head.pointwise_negatives", 1, float("inf"), True),
    ("model.head.pointwise_hidden", 1, float("inf"), True),
    ("sasrec.d_model", 1, float("inf"), True),
    ("sasrec.layers", 1, float("inf"), True),
    ("sasrec.heads", 1, float("inf"), True),
    ("sasrec.dropout", 0.0, 1.0, True),
    ("sasrec.max_len", 1, float("inf"), True),
    ("window.session_gap", 1, float("inf"), True),
    ("text.default_budget", 1, float("inf"), True),
    ("text.max_window_tokens", 1, float("inf"), True),
    ("text.max_item_tokens", 1, float("inf"), True),
    ("eval.batch_size", 1, float("inf"), True),
    ("eval.num_negatives", 1, float("inf"), True),
]


def check_ranges(cfg: RunConfig) -> None:
    """Every numeric field within its range, and names that must name something; ConfigError."""
    for dotted, low, high, low_ok in _RANGES:
        node: Any = cfg
        for part in dotted.split("."):
            node = getattr(node, part)
        if node is None:  # "auto" fields (e.g. null = chosen at run time)
            continue
        value = float(node)
        if not (value >= low if low_ok else value > low) or value > high or value != value:
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (
                f" and <= {high:g}" if high != float("inf") else ""
            )
            raise ConfigError(f"{dotted} must be {bound}, got {node!r}")
    if cfg.model.aggregator.dropout >= 1 or cfg.model.fusion.dropout >= 1 or cfg.sasrec.dropout >= 1:
        raise ConfigError("dropout values must be < 1 (1 drops everything)")
    if cfg.sasrec.d_model % cfg.sasrec.heads:
        raise ConfigError("sasrec.d_model must be divisible by sasrec.heads")
    ks = cfg.eval.ks
    known = [f"{m}@{k}" for m in ("hr", "ndcg") for k in ks] + ["mrr", "auc"]
    if all(k >= 1 for k in ks) and cfg.train.best_metric not in known:  # bad ks: validate says so
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r} is not one of {known} (from eval.ks)")
    budgets = {k: v for k, v in cfg.text.field_budgets.items() if v < 1}
    if budgets:
        raise ConfigError(f"text.field_budgets must be >= 1 token each, got {budgets}")
    weights = {k: v for k, v in cfg.model.head.behavior_weights.items() if not v >= 0}
    if weights:
        raise ConfigError(f"model.head.behavior_weights must be >= 0, got {weights}")
    items = cfg.model.items
    if items.mode == "alphafuse":
        if not 0 < items.null_dims < cfg.model.head.dim:
            raise ConfigError(
                f"model.items.null_dims must be in (0, model.head.dim={cfg.model.head.dim}), got {items.null_dims}"
            )
        if cfg.model.aggregator.use_item_ids:
            raise ConfigError(
                "model.items.mode=alphafuse keeps its IDs for items: set model.aggregator.use_item_ids=false"
            )
        if cfg.train.stage != "head" and cfg.model.adapter.method != "frozen":
            raise ConfigError(
                "model.items.mode=alphafuse fits its text basis once: it needs frozen text features "
                "(train.stage=head, or model.adapter.method=frozen)"
            )
    if any(not b >= 0 for b in cfg.model.items.cold_boost_grid):
        raise ConfigError(
            f"model.items.cold_boost_grid values must be >= 0, got {cfg.model.items.cold_boost_grid}"
        )
