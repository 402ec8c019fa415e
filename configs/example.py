"""A minimal config showing the conventions (used by the foundation tests).

  python scripts/show_config.py --config=configs/example.py:smoke --config.optim.lr=1e-3
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, seed=0)
    config = ml_collections.ConfigDict()
    config.seed = arg.seed
    config.num_steps = 10 if arg.smoke else 1000
    config.optim = ml_collections.ConfigDict(dict(lr=2.5e-4, b1=0.9))
    return config
