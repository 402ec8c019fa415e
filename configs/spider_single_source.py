"""Model Spider on the paper's single-source zoo (10 ImageNet torchvision models; spec §1.1, §6).

Needs the features of the training tasks and targets in a feature store (the released pickles
converted, or re-extracted): datasets named by task id (c0..c95) and by target name (Aircraft, ...),
with the generic encoder stored as model `generic` (`--config.data.generic_model` otherwise).

  python scripts/train.py --config=configs/spider_single_source.py:store=STORE --workdir=DIR

Training tasks: the 13 of the released script minus 2 held out for validation (different source
mixes); labels: the published FTRank of each task; targets: the 8 classification datasets of
Table 1.
"""

import ml_collections

from configs import common
from configs import spider_base

MODELS = ("googlenet", "inception_v3", "resnet50", "resnet101", "resnet152", "densenet121",
          "densenet169", "densenet201", "mobilenet_v2", "mnasnet1_0")
TRAINING_TASKS = ("c86", "c59", "c16", "c38", "c43", "c9", "c12", "c32", "c31", "c57", "c29")
VALIDATION_TASKS = ("c14", "c19")  # STL10+SmallNORB, OfficeHome+VLCS
TARGETS = ("Aircraft", "Caltech101", "Cars", "CIFAR10", "CIFAR100", "DTD", "Pet", "SUN397")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, seed=0, store="")
    config = spider_base.base_config(arg.seed)
    config.data.models = MODELS
    config.data.label = "rank"
    config.data.val_tasks = VALIDATION_TASKS
    config.data.train = spider_base.task_source(
        store=arg.store, tasks=TRAINING_TASKS + VALIDATION_TASKS,
        ground_truth=spider_base.repo_path("data/published/training_task_ranks.csv"),
        task_column="task_id", value_column="ft_rank", where="zoo=single_source_10")
    config.data.targets = spider_base.task_source(
        store=arg.store, tasks=TARGETS,
        ground_truth=spider_base.repo_path("data/published/single_source_finetune.csv"))
    return config
