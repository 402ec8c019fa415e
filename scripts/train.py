"""Trains and evaluates Model Spider (mspider_jax.spider.train_lib.train_and_evaluate).

  python scripts/train.py --config=configs/spider_minizoo.py --workdir=DIR

Rerunning with the same workdir resumes from its last checkpoint. Fields are overridden with
`--config.train.epochs=5` (the config is locked, so typos fail).
"""


from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/spider_*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    # After flag parsing: jax starts only for a real run.
    from mspider_jax import checkpointing
    from mspider_jax.spider import train_lib

    logging.get_absl_handler().addFilter(checkpointing.drop_orbax_info)

    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
