"""`seqrec config`: print the default config, or every field with its help string."""

from __future__ import annotations

import argparse

import yaml

from seqrec.config import RunConfig, field_help, load_config, to_dict


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="Show the resolved config or the reference of every field.")
    p.add_argument("--config", help="Run config YAML to resolve.")
    p.add_argument("--fields", action="store_true", help="List every field with its default and help.")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides.")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.fields:
        for name, default, help_ in field_help(RunConfig):
            print(f"{name} = {default}\n    {help_}")
        return 0
    cfg: RunConfig = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0
