"""The `mspider` command line. Thin: every sub-command delegates to the library."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import mspider_jax
from mspider_jax.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mspider",
        description="Rank pre-trained models for a new task: transferability metrics and Model Spider in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"mspider-jax {mspider_jax.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        # A command "add-model" lives in the module add_model.
        module = importlib.import_module(f"mspider_jax.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A sub-command that sets the default `_extra_args=True` receives unknown options as
    # `args.extra_args` (e.g. `mspider benchmark ... --config.spider.retrain=True`).
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


def console_main(argv: Sequence[str] | None = None) -> int:
    """The `mspider` executable: `main`, with bad input (a ValueError or a missing file, whose messages
    say what is wrong) reported as `mspider: error: ...` and exit status 2 instead of a traceback.
    MSPIDER_TRACEBACK=1 shows the traceback."""
    import os

    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("MSPIDER_TRACEBACK"):
            raise
        print(f"mspider: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console_main())
