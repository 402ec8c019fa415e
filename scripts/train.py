"""Trains and evaluates Model Spider (mspider_jax.spider.train_lib.train_and_evaluate).

  python scripts/train.py --config=configs/spider_minizoo.py --workdir=DIR

Rerunning with the same workdir resumes from its last checkpoint. Fields are overridden with
`--config.train.epochs=5` (the config is locked, so typos fail).
"""


from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/spider_*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    from mspider_jax import script_setup

    script_setup.start(argv)
    from mspider_jax.spider import train_lib  # after flag parsing: jax starts only for a real run

    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
