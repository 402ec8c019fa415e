"""The benchmark on the paper's single-source zoo (10 ImageNet torchvision models; spec §1.1, §8).

Needs the targets' features in a feature store (datasets named as in Table 1: Aircraft, ..., with the
generic encoder as model `generic`), e.g. from `mspider extract --zoo single_source` and
`mspider extract --zoo generic` (then rename the encoder, or set --config.spider.train.data.
generic_model). Ground truth: the published fine-tuning accuracies; constant prior: the published
training-task ranks. Model Spider: a trained run (`checkpoint=`), else trained on the store's
training tasks with configs/spider_single_source.py (which needs them in the same store).

  mspider benchmark --config configs/benchmark_single_source.py:store=STORE,checkpoint=RUN \
      --workdir runs/single_source
"""

import ml_collections

from configs import benchmark_base
from configs import common
from configs import spider_base
from configs import spider_single_source


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, store="", checkpoint="", seed=0)
    config = benchmark_base.base_config()
    config.name = "single-source zoo (10 ImageNet models)"
    config.store = arg.store
    config.datasets = spider_single_source.TARGETS
    config.models = spider_single_source.MODELS
    config.ground_truth.path = spider_base.repo_path("data/published/single_source_finetune.csv")
    config.prior_ground_truth = benchmark_base.ground_truth_source(
        spider_base.repo_path("data/published/training_task_ranks.csv"), task_column="task_id",
        value_column="ft_rank", where="zoo=single_source_10")
    config.metrics.seed = arg.seed
    config.spider.checkpoint = arg.checkpoint
    config.spider.train = spider_single_source.get_config(f"store={arg.store},seed={arg.seed}")
    return config
