"""`seqrec evaluate`: score a saved model on a split and write metrics.json + metrics.md.

    seqrec evaluate --checkpoint DIR [--data DIR] --split test [--protocol full|sampled|candidates]
                    [--candidates FILE] [--out DIR] [--per-user] [eval.key=value ...]

DIR holds seqrec_config.json (the resolved RunConfig); ``train.model`` says how to load it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="Evaluate a saved model (seqrec, sasrec or popularity) on the valid or test split.",
        description="Writes metrics.json and metrics.md (overall, by history length, by cold target).",
    )
    p.add_argument("--checkpoint", required=True, help="Model folder holding seqrec_config.json.")
    p.add_argument("--data", help="Prepared data directory (default: data_dir saved with the model).")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="Split to evaluate.")
    p.add_argument("--protocol", choices=["full", "sampled", "candidates"], help="Overrides eval.protocol.")
    p.add_argument("--candidates", help="Candidates JSONL (implies --protocol candidates).")
    p.add_argument("--out", help="Report folder (default: CHECKPOINT/eval-SPLIT).")
    p.add_argument("--per-user", action="store_true", help="Also write per-user results.")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "overrides", nargs="*", help="Overrides of the eval section, e.g. eval.ks=[1,10] or ks=[1,10]."
    )
    p.set_defaults(handler=run)


def resolve_config(checkpoint: Path, args: argparse.Namespace) -> Any:
    """The model's saved RunConfig with the eval section overridden from the command line."""
    from seqrec.baselines.folder import read_run_config
    from seqrec.config import ConfigError, RunConfig, apply_overrides, from_dict, to_dict, validate

    cfg = read_run_config(checkpoint)
    overrides = []
    for item in args.overrides:
        key = item.split("=", 1)[0]
        if "." not in key:
            item = f"eval.{item}"
        elif not key.startswith("eval."):
            raise ConfigError(f"override {item!r}: `seqrec evaluate` only takes eval.* overrides")
        overrides.append(item)
    if args.candidates:
        overrides += [f"eval.candidates_file={args.candidates}", "eval.protocol=candidates"]
    if args.protocol:
        overrides.append(f"eval.protocol={args.protocol}")
    if args.per_user:
        overrides.append("eval.per_user=true")
    cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), overrides))
    validate(cfg)
    return cfg


def load_model_and_batches(checkpoint: Path, cfg: Any, data: Any, split: Any, users: Any) -> tuple[Any, Any]:
    """Load the model class named by train.model and build its evaluation batches."""
    from seqrec.errors import CheckpointError

    kind = cfg.train.model
    if kind in ("popularity", "sasrec"):
        from seqrec.baselines.popularity import PopularityModel
        from seqrec.baselines.sasrec import SASRec
        from seqrec.baselines.sequences import eval_loader

        model: Any = (
            PopularityModel.from_pretrained(checkpoint)
            if kind == "popularity"
            else SASRec.from_pretrained(checkpoint)
        )
        max_len = model.cfg.max_len if kind == "sasrec" else 1  # popularity reads no input
        batches = eval_loader(data, split, max_len, cfg.eval.batch_size, users)
    elif kind == "seqrec":
        # Imported here so evaluating a baseline never loads transformers.
        from seqrec.data.collate import eval_batches
        from seqrec.modeling import SeqRecModel
        from seqrec.training.seqrec_setup import features_match

        # A head-stage model reads the window features its run cached (no backbone pass needed),
        # unless that folder was rebuilt since for another encoder (a shared cache, another
        # adapter): then its backbone (and stage-1 adapter) encode the windows again.
        features = Path(cfg.train.features_dir or Path(cfg.train.output_dir) / "features")
        use_features = cfg.train.stage == "head" and features_match(cfg, data, features, checkpoint)
        if cfg.train.stage == "head" and not use_features and (features / "manifest.json").is_file():
            log.warning(
                "%s holds features of another encoder than %s's (rebuilt since?): encoding with the "
                "model's backbone instead",
                features,
                checkpoint,
            )
        model = SeqRecModel.from_pretrained(checkpoint, load_backbone=not use_features)
        batches = eval_batches(model, data, cfg, split, users=users, batch_size=cfg.eval.batch_size)
        attach_catalogue(model, data, cfg)
    elif kind == "ensemble":
        from seqrec.training.late_fusion import load_late_fusion

        model, batches = load_late_fusion(checkpoint, data, split, users)
    else:
        raise CheckpointError(f"{checkpoint}: unknown train.model {kind!r}")
    n_items = getattr(model, "n_items", data.n_items)
    if n_items != data.n_items:
        raise CheckpointError(
            f"{checkpoint} was trained on {n_items} items but {data.path} has {data.n_items}; "
            "evaluate on the data it was trained on"
        )
    return model, batches


def run(args: argparse.Namespace) -> int:
    from seqrec.config import ConfigError
    from seqrec.data.schema import PreparedData
    from seqrec.evaluation.report import markdown_table

    checkpoint = Path(args.checkpoint)
    cfg = resolve_config(checkpoint, args)
    data_dir = args.data or cfg.data_dir
    if not data_dir:
        raise ConfigError("--data is required: the model's config has no data_dir")
    data = PreparedData.load(data_dir)
    out = Path(args.out) if args.out else checkpoint / f"eval-{args.split}"
    result = evaluate_checkpoint(checkpoint, data, args.split, cfg, out, args.device)
    title = f"{cfg.train.model} on {Path(data_dir).name} ({args.split})"
    print(markdown_table(result, title), end="")
    print(
        f"\nwrote {out / 'metrics.json'} and {out / 'metrics.md'}"
        + (" (+ per-user rows)" if result.per_user is not None else "")
    )
    return 0


def evaluate_checkpoint(
    checkpoint: Path, data: Any, split: Any, cfg: Any = None, out: Path | None = None, device: str = "auto"
) -> Any:
    """Evaluate a saved model folder on `split`; write metrics.json/.md into `out` (atomically).

    `cfg` is the RunConfig whose eval section to use (default: the one saved with the model).
    """
    import torch

    from seqrec.baselines.folder import read_run_config
    from seqrec.config import save_config
    from seqrec.data.schema import atomic_directory
    from seqrec.evaluation.evaluator import evaluate
    from seqrec.evaluation.protocols import make_protocol
    from seqrec.evaluation.report import write_report
    from seqrec.evaluation.user_sample import with_user_sample

    checkpoint = Path(checkpoint)
    cfg = cfg if cfg is not None else read_run_config(checkpoint)
    out = Path(out) if out is not None else checkpoint / f"eval-{split}"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    protocol = with_user_sample(make_protocol(cfg.eval, data, split, out_dir=out), cfg.eval, data, split, out)
    model, batches = load_model_and_batches(checkpoint, cfg, data, split, protocol.users())
    if isinstance(model, torch.nn.Module):
        model.to(device)
    result = evaluate(model, batches, data, split, cfg.eval, protocol=protocol, device=device)
    context = {"model": cfg.train.model, "checkpoint": str(checkpoint), "data": str(data.path)}
    title = f"{cfg.train.model} on {Path(str(data.path)).name} ({split})"
    with atomic_directory(out, overwrite=True) as tmp:
        write_report(result, tmp, context, cfg.eval.per_user_format, title)
        save_config(cfg, tmp / "seqrec_config.json")  # the resolved config beside the report
    return result


def attach_catalogue(model: Any, data: Any, cfg: Any) -> None:
    """Give a loaded SeqRecModel the catalogue inputs it lacks (token ids or cached item features);
    the data layer computes them, the caller wires them in."""
    from seqrec.data.collate import catalogue_inputs

    item_tokens, item_features = catalogue_inputs(model, data, cfg)
    model.set_item_prior(data.train_item_counts())  # which items are new (model.items.cold_boost)
    if item_tokens is not None:
        model.set_item_tokens(item_tokens)
    if item_features is not None:
        model.set_item_features(item_features)
