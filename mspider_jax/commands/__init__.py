"""Sub-commands of the `mspider` console entry point.

Each sub-command is a module here exposing
  HELP: str                                   one line shown by `mspider --help`
  add_arguments(parser: argparse.ArgumentParser) -> None
  run(args: argparse.Namespace) -> int         exit status
Modules keep heavy imports (jax, torch, ...) inside `run` so that `mspider --help` stays fast.
Register a new sub-command by adding its module name to COMMANDS (order = order in --help); a
name with "-" ("add-model") is the module with "_" (add_model.py).
"""

COMMANDS: tuple[str, ...] = (
    "info",
    "extract",
    "table",
    "metrics",
    "rank",
    "add-model",
    "ensemble",
    "benchmark",
)
