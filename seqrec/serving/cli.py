"""`seqrec export`, `seqrec recommend`, `seqrec publish`: using a trained model.

    seqrec export --checkpoint DIR --out DIR [--data DIR] [--users FILE|all] [--chunk N] [--faiss]
    seqrec recommend --checkpoint DIR --user USER_ID [--data DIR] [--k 10] [--events new.jsonl]
                     [--include-seen] [--embeddings EXPORT_DIR] [--json]
    seqrec publish --checkpoint DIR --repo-id ORG/NAME [--private] [--dry-run] [--out DIR]
                   [--token-env HF_TOKEN] [--license apache-2.0] [--base-model ORG/NAME]

Heavy imports happen inside the handlers, so `seqrec --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="Export item and user embeddings (Parquet + .npy, optional FAISS index).",
        description="Item vectors for the whole catalogue and user vectors from each user's whole "
        "history, unit length (score = dot / temperature), with a manifest. Resumable: rerun the same "
        "command after an interruption and finished chunks are skipped.",
    )
    e.add_argument("--checkpoint", required=True, help="Model folder (e.g. <output_dir>/best).")
    e.add_argument("--data", help="Prepared data directory (default: data_dir saved with the model).")
    e.add_argument("--out", required=True, help="Folder to create.")
    e.add_argument("--users", default="all", help="'all' (default) or a file of user ids, one per line.")
    e.add_argument("--chunk", type=int, default=4096, help="Items/users per saved chunk (resume unit).")
    e.add_argument("--batch-size", type=int, help="Users per model call (default: eval.batch_size).")
    e.add_argument("--faiss", action="store_true", help="Also write items.faiss (needs faiss-cpu).")
    e.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    e.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    e.add_argument("--quiet", action="store_true", help="No progress bar.")
    e.set_defaults(handler=run_export)

    r = sub.add_parser(
        "recommend",
        help="Top-K items for one user, with the windows that weighed most.",
        description="Scores the whole catalogue for a user (history from the data, plus --events), "
        "excludes items the user has interacted with, and explains the result with the aggregator's "
        "attention over the user's windows. A user absent from the data needs --events (cold start).",
    )
    r.add_argument("--checkpoint", required=True, help="Model folder.")
    r.add_argument("--user", required=True, help="User id (as in the raw log).")
    r.add_argument("--data", help="Prepared data directory (default: data_dir saved with the model).")
    r.add_argument("--k", type=int, default=10, help="How many items.")
    r.add_argument(
        "--events",
        help='JSONL of new events, one {"item_id": ..., "behavior": ..., "timestamp": ...} per line '
        "(timestamp: unix seconds or ISO date-time; not before the user's last event).",
    )
    r.add_argument("--include-seen", action="store_true", help="Also rank items already in the history.")
    r.add_argument("--explain", type=int, default=1, help="List the events of this many top windows.")
    r.add_argument("--embeddings", help="A `seqrec export` folder of this model: reuse its item vectors.")
    r.add_argument("--json", action="store_true", help="Machine-readable JSON instead of a table.")
    r.set_defaults(handler=run_recommend)

    p = sub.add_parser(
        "publish",
        help="Publish the adapter, head and a model card on the Hugging Face Hub.",
        description="Prepares a folder (peft adapter, head and config as safetensors/JSON, README.md "
        "model card), checks it (card parses, model loads), then uploads it. --dry-run stops before "
        "the upload and needs no network. The token is never printed.",
    )
    p.add_argument("--checkpoint", required=True, help="Model folder.")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the hub.")
    p.add_argument("--private", action="store_true", help="Create the repository as private.")
    p.add_argument("--dry-run", action="store_true", help="Write and check the folder; do not upload.")
    p.add_argument("--out", help="Folder to write (default: a temporary folder, removed after upload).")
    p.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    p.add_argument(
        "--token-env",
        help="Environment variable holding the token (default: huggingface_hub's lookup: HF_TOKEN, "
        "then `hf auth login`).",
    )
    p.add_argument("--license", default="apache-2.0", help="License id for the card (default apache-2.0).")
    p.add_argument("--base-model", help="Hub id of the base model, when the run used a local path.")
    p.add_argument("--dataset", help="Data set name for the card (default: the prepared folder's name).")
    p.add_argument(
        "--metrics",
        action="append",
        help="metrics.json to quote (repeatable; default: CHECKPOINT/eval-*/metrics.json).",
    )
    p.add_argument("--no-verify", action="store_true", help="Skip loading the folder before upload.")
    p.set_defaults(handler=run_publish)


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def run_export(args: argparse.Namespace) -> int:
    from seqrec.config import ConfigError
    from seqrec.data.schema import PreparedData
    from seqrec.modeling import SeqRecModel
    from seqrec.modeling.io import baseline_kind
    from seqrec.serving.export import export_embeddings, select_users

    kind = baseline_kind(Path(args.checkpoint))
    if kind == "popularity":
        raise ConfigError(
            f"{args.checkpoint} holds a popularity model: it has no embeddings to export (its scores "
            "are training counts; `seqrec recommend` serves it)"
        )
    if kind == "sasrec":
        from seqrec.baselines.folder import read_run_config
        from seqrec.baselines.sasrec import SASRec
        from seqrec.serving.baseline import export_sasrec

        run_cfg = read_run_config(args.checkpoint, "sasrec")
        data_dir = args.data or run_cfg.data_dir
        if not data_dir:
            raise ConfigError("--data is required: the model's config has no data_dir")
        data = PreparedData.load(data_dir)
        sasrec = SASRec.from_pretrained(args.checkpoint)
        result = export_sasrec(
            sasrec, data, args.out, select_users(data, args.users), args.checkpoint, args.overwrite
        )
        print(result.summary())
        return 0
    model = SeqRecModel.from_pretrained(args.checkpoint).to(_device(args.device))
    data_dir = args.data or model.cfg.data_dir
    if not data_dir:
        raise ConfigError("--data is required: the model's config has no data_dir")
    data = PreparedData.load(data_dir)
    users = select_users(data, args.users)
    result = export_embeddings(
        model,
        data,
        args.out,
        users=users,
        chunk=args.chunk,
        faiss=args.faiss,
        model_dir=args.checkpoint,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(result.summary())
    return 0


def run_recommend(args: argparse.Namespace) -> int:
    from seqrec.config import ConfigError
    from seqrec.modeling.io import baseline_kind
    from seqrec.serving.incremental import read_events
    from seqrec.serving.recommend import Recommender

    if args.k < 1:
        raise ConfigError(f"--k must be a positive number of items, got {args.k}")
    if args.explain < 0:
        raise ConfigError(f"--explain must be >= 0, got {args.explain}")
    t0 = time.perf_counter()
    kind = baseline_kind(Path(args.checkpoint))
    rec: Any
    if kind:  # a SASRec or popularity folder: the same request, no window explanation
        from seqrec.serving.baseline import BaselineRecommender

        rec = BaselineRecommender.from_checkpoint(args.checkpoint, kind, args.data)
        last_time, catalogue = rec.last_time, rec.catalogue
    else:
        rec = Recommender.from_checkpoint(args.checkpoint, args.data, args.embeddings)
        last_time, catalogue = rec.encoder.last_time, rec.encoder.catalogue
    events: list[Any] = []
    if args.events:
        events = read_events(args.events, catalogue, args.user, last_time(args.user))
    result = rec.recommend(args.user, args.k, events, args.include_seen, args.explain)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        print(result.to_table(), end="")
        print(f"\n({time.perf_counter() - t0:.1f} s including loading the model)")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from seqrec.serving.publish import PublishError, prepare_folder, resolve_token, upload_folder

    if not args.dry_run:
        try:
            token = resolve_token(args.token_env)  # fail before any work when there is no token
        except PublishError as e:
            print(f"seqrec publish: error: {e}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="seqrec-publish-") as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "folder"
        plan = prepare_folder(
            args.checkpoint,
            out,
            args.repo_id,
            license=args.license,
            base_model=args.base_model,
            dataset=args.dataset,
            metrics=args.metrics,
            overwrite=args.overwrite,
            verify=not args.no_verify,
        )
        if args.dry_run:
            print(plan.summary())
            print(
                f"dry run: the card parses and the folder {'was not loaded' if args.no_verify else 'loads'}; "
                f"nothing was uploaded"
            )
            return 0
        try:
            plan.url = upload_folder(out, args.repo_id, args.private, token)
        except PublishError as e:
            print(f"seqrec publish: error: {e}", file=sys.stderr)
            return 2
    print(plan.summary())
    return 0
