"""Model Spider on the paper's multi-source zoo (42 fine-tuned models; spec §1.2, §6).

Needs the features of the training tasks (t127..t222) and of the targets in a feature store, with
the generic encoder stored as model `generic`:

  python scripts/train.py --config=configs/spider_multi_source.py:store=STORE --workdir=DIR

Training tasks: all t-tasks with labels minus 4 validation tasks drawn with the seed; targets: the
paper's multi-source evaluation datasets (Aircraft, DTD, Pet).
"""

import csv

import ml_collections

from configs import common
from configs import spider_base

_PUBLISHED = spider_base.REPO / "data" / "published"
TARGETS = ("Aircraft", "DTD", "Pet")


def zoo() -> tuple[str, ...]:
    """The 42 models in the released order (multi_source_finetune.csv, spec §1.2)."""
    with open(_PUBLISHED / "multi_source_finetune.csv", newline="") as handle:
        return tuple(dict.fromkeys(row["model"] for row in csv.DictReader(handle)))


def training_tasks() -> tuple[str, ...]:
    with open(_PUBLISHED / "training_task_ranks.csv", newline="") as handle:
        rows = csv.DictReader(handle)
        return tuple(dict.fromkeys(r["task_id"] for r in rows if r["zoo"] == "multi_source_42"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, seed=0, store="")
    config = spider_base.base_config(arg.seed)
    config.data.models = zoo()
    config.data.label = "rank"
    config.data.num_val_tasks = 4
    config.data.train = spider_base.task_source(
        store=arg.store, tasks=training_tasks(),
        ground_truth=str(_PUBLISHED / "training_task_ranks.csv"), task_column="task_id",
        value_column="ft_rank", where="zoo=multi_source_42")
    config.data.targets = spider_base.task_source(
        store=arg.store, tasks=TARGETS, ground_truth=str(_PUBLISHED / "multi_source_finetune.csv"))
    return config
