"""`seqrec` command line: a thin dispatcher. Each area registers its own subcommands.

Heavy imports (torch, transformers) happen inside the handlers, so `seqrec --help` is instant.
A handler returns an exit code; known user errors (bad config, bad data, missing files) print one
clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

# (module, function) pairs; each function is `register(subparsers) -> None`.
_AREAS = [
    ("seqrec.data.cli", "register"),
    ("seqrec.training.cli", "register"),
    ("seqrec.evaluation.cli", "register"),
    ("seqrec.serving.cli", "register"),
    ("seqrec.demo", "register"),
    ("seqrec.config_cli", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqrec",
        description="User-behaviour sequence representations with LLM backbones for recommendation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name, fn in _AREAS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # area not built yet
                continue
            raise
        register: Callable[[argparse._SubParsersAction], None] = getattr(module, fn)
        register(sub)
    _show_defaults(sub)
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to options that have a meaningful default (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "%(default)" in text
            or default in (None, False, [], argparse.SUPPRESS)
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def _show_defaults(sub: argparse._SubParsersAction) -> None:
    """--help of every (nested) subcommand lists each option's default."""
    for child in sub.choices.values():
        child.formatter_class = _DefaultsFormatter
        for action in child._actions:
            if isinstance(action, argparse._SubParsersAction):
                _show_defaults(action)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args that also takes key=value overrides placed after options
    (`seqrec train a=1 --output X b=2`): argparse alone fills a positional list only once."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from seqrec.errors import USER_ERRORS

    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as e:
        print(f"seqrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqrec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
