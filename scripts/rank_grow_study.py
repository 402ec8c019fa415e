"""Issue 7's measurements on the mini zoo: adding PTMs, and training labels without fine-tuning.

  python scripts/rank_grow_study.py --workdir=runs/rank_grow \\
      --label_store=MINIZOO_WORKDIR/store --out=results/rank_grow_minizoo.md

Trains Model Spider several times with configs/spider_minizoo.py (minutes each on CPU); finished
runs in the workdir are reused. See mspider_jax/spider/studies.py.
"""

import json
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/spider_minizoo.py",
                                          "The mini-zoo config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the runs.")
_LABEL_STORE = flags.DEFINE_string(
    "label_store", None, "Feature store with the training tasks' (and targets') features: the "
    "mini-zoo build's WORKDIR/store.")
_HELD_OUT = flags.DEFINE_list("held_out", ["resnet_devanagari", "densenet_latin"],
                              "PTMs held out from training and added afterwards.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the repeated runs.")
_STUDIES = flags.DEFINE_list("studies", ["add_models", "label_sources"], "Studies to run.")
_OUT = flags.DEFINE_string("out", "results/rank_grow_minizoo.md", "Markdown output.")
_FINETUNE_SECONDS = flags.DEFINE_float(
    "finetune_seconds", None, "Wall seconds of the training tasks' fine-tuning (default: the build's "
    "timings.json, which sums every build of that work directory).")
flags.mark_flags_as_required(["workdir", "label_store"])


def main(argv: list[str]) -> None:
    from mspider_jax import script_setup

    script_setup.start(argv)
    from mspider_jax.spider import studies

    config = _CONFIG.value
    with config.unlocked():
        config.data.targets.store = _LABEL_STORE.value  # the build store has the targets too
    # What the measured labels cost: the build's fine-tuning of every PTM on the training tasks.
    timings = pathlib.Path(_LABEL_STORE.value).parent / "timings.json"
    finetune_seconds = _FINETUNE_SECONDS.value
    if finetune_seconds is None and timings.exists():
        finetune_seconds = json.loads(timings.read_text()).get("wall", {}).get("finetune_tasks")
    print(studies.run_studies(config, _WORKDIR.value, _LABEL_STORE.value, held_out=_HELD_OUT.value,
                              seeds=[int(s) for s in _SEEDS.value], studies=_STUDIES.value,
                              finetune_seconds=finetune_seconds, out=_OUT.value))


if __name__ == "__main__":
    app.run(main)
