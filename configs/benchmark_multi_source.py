"""The benchmark on the paper's multi-source zoo (42 fine-tuned models; spec §1.2, §8).

Needs the targets' features (Aircraft, DTD, Pet) of the 42 `FTD_<arch>_<source>` models and of the
generic encoder (model `generic`) in a feature store (`mspider extract --zoo multi_source
--checkpoint-dir CKPTS ...`). Ground truth: the published fine-tuning accuracies; constant prior:
the published training-task ranks; Model Spider: `checkpoint=` a trained run, else trained with
configs/spider_multi_source.py on the store's training tasks.

  mspider benchmark --config configs/benchmark_multi_source.py:store=STORE,checkpoint=RUN \
      --workdir runs/multi_source
"""

import ml_collections

from configs import benchmark_base
from configs import common
from configs import spider_base
from configs import spider_multi_source


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, store="", checkpoint="", seed=0)
    config = benchmark_base.base_config()
    config.name = "multi-source zoo (42 fine-tuned models)"
    config.store = arg.store
    config.datasets = spider_multi_source.TARGETS
    config.models = spider_multi_source.zoo()
    config.ground_truth.path = spider_base.repo_path("data/published/multi_source_finetune.csv")
    config.prior_ground_truth = benchmark_base.ground_truth_source(
        spider_base.repo_path("data/published/training_task_ranks.csv"), task_column="task_id",
        value_column="ft_rank", where="zoo=multi_source_42")
    config.metrics.seed = arg.seed
    config.spider.checkpoint = arg.checkpoint
    config.spider.train = spider_multi_source.get_config(f"store={arg.store},seed={arg.seed}")
    return config
