"""Fits the source-affinity prior (mspider_jax/spider/source_affinity.py) of a trained ranker and
writes it next to its best/ checkpoint, where `checkpointing.load_ranker` (and so `mspider rank`,
`mspider benchmark`, `make demo`) picks it up. Training does this itself when
config.prior.source_affinity_weight > 0; this is for a run trained without it, e.g. the shipped ranker:

  python scripts/fit_source_affinity_prior.py --config configs/spider_minizoo.py --workdir data/minizoo_ranker

The config must be the run's (same training tasks and validation split): the group prior is learnt on
its training tasks and the score scale from the ranker's stage-1 scores on them.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/spider_minizoo.py", "The run's Model Spider config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run (its best/ checkpoint).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    from mspider_jax import script_setup

    script_setup.start(argv)
    from mspider_jax.spider import train_lib

    config = _CONFIG.value
    if config.prior.source_affinity_weight <= 0:
        raise app.UsageError("config.prior.source_affinity_weight must be > 0")
    print(train_lib.fit_source_affinity_prior(config, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
