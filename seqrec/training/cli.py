"""`seqrec train`: one process (for several, use `accelerate launch train/train.py` with the same flags)."""

from __future__ import annotations

import argparse


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by `seqrec train` and train/train.py."""
    p.add_argument("--config", help="Run config YAML (train/configs/*.yaml); defaults without it.")
    p.add_argument("--data", help="Prepared data directory (overrides data_dir).")
    p.add_argument("--output", help="Output directory (overrides train.output_dir).")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint) or a checkpoint path.")
    p.add_argument("--model", choices=["seqrec", "sasrec", "popularity"], help="Overrides train.model.")
    p.add_argument("--stage", choices=["joint", "head"], help="Overrides train.stage (seqrec only).")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="Start over in an output folder that already holds a run (its checkpoints and best model "
        "are deleted); without it such a folder needs --resume.",
    )
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.lr=3e-4.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="Train seqrec, SASRec or popularity on a prepared data set.",
        description="Train a model. The output directory gets checkpoints/, best/ and config.yaml.",
    )
    add_train_arguments(p)
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> object:
    from seqrec.training.run import resolve_config

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"train.model={args.model}")
    if args.stage:
        overrides.append(f"train.stage={args.stage}")
    return resolve_config(args.config, args.data, args.output, args.resume, overrides)


def run(args: argparse.Namespace) -> int:
    from seqrec.training.run import run_training

    result = run_training(config_from_args(args), overwrite=args.overwrite)  # type: ignore[arg-type]
    return int(result.exit_code)
