"""What every absl entry point in scripts/ does first, once its flags are parsed."""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import logging


def start(argv: Sequence[str]) -> None:
    """Refuses positional arguments, logs at INFO and keeps orbax's INFO chatter out of the log.

    Imports `mspider_jax.checkpointing` (and so jax) only here, after flag parsing, so that
    `--help` and flag errors return without starting jax.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    from mspider_jax import checkpointing

    logging.get_absl_handler().addFilter(checkpointing.drop_orbax_info)
