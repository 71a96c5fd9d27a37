"""Entry script for `accelerate launch` (one copy runs per process):

    accelerate launch --config_file train/accelerate/zero2.yaml --num_processes 2 \\
        train/train.py --config train/configs/<run>.yaml [--data DIR] [--output DIR] \\
        [--resume auto] [key=value ...]

A thin shell around seqrec.training.run.run_training, the same function `seqrec train` calls.
Exit codes: 0 done, 143 stopped by SIGTERM/SIGUSR1 after a checkpoint (rerun with --resume auto),
2 a user error (bad config, data or checkpoint), printed as one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from seqrec.training.cli import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser(description="Train a seqrec model (run under `accelerate launch`).")
    add_train_arguments(parser)  # the same flags as `seqrec train`
    from seqrec.cli import parse_args

    args = parse_args(parser, argv)  # key=value overrides may come before and after options

    # Only rank 0 reports progress; the others speak up for warnings and errors.
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint is ours
    from seqrec.errors import USER_ERRORS
    from seqrec.training.run import run_training

    try:
        return run_training(config_from_args(args), overwrite=args.overwrite).exit_code  # type: ignore[arg-type]
    except USER_ERRORS as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
