"""The ``medbench`` command line.

Subcommands are small modules exposing ``register(subparsers)``; each registers a parser whose ``func``
default takes the parsed arguments and returns an exit code. A parser that sets ``passthrough=True``
receives the arguments it does not define in ``args.extra``. Built-in subcommands live in
``medbench.commands``; other packages (the leaderboard) add theirs through the ``medbench.commands``
entry-point group, so ``medbench`` never imports them directly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from medbench import __version__
from medbench.errors import MedbenchError

BUILTIN_COMMANDS = (
    "medbench.commands.tasks",
    "medbench.commands.data",
    "medbench.commands.eval",
    "medbench.commands.demo",
    "medbench.commands.judge",
    "medbench.commands.experts",
    "medbench.commands.doctor",
    "medbench.commands.study",
    "medbench.commands.convert",
    "medbench.commands.synth",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medbench",
        description="Benchmark medical vision-language models inside lmms-eval.",
    )
    parser.add_argument("--version", action="version", version=f"medbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in BUILTIN_COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    for entry in entry_points(group="medbench.commands"):
        entry.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Commands that wrap another tool (``medbench eval``) take the flags they do not know as pass-through.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return dispatch(args)


def dispatch(args: argparse.Namespace, prog: str = "medbench") -> int:
    """Run a parsed subcommand; a :class:`MedbenchError` becomes one line on stderr and exit status 2.

    Every ``medbench`` command and its aliases (``medbench-train``, ``medbench-leaderboard``) end here.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MedbenchError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # What finished stays (judge answers in the cache, batch ids, checkpoints); a traceback adds nothing.
        print(f"{prog}: interrupted; what finished is kept: run the same command again to resume", file=sys.stderr)
        return 130

