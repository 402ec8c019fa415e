"""The benchmark on the offline mini zoo (`data/minizoo/`): what `make demo` runs.

  mspider benchmark --config configs/benchmark_minizoo.py --workdir runs/demo
  mspider benchmark --config configs/benchmark_minizoo.py --workdir runs/demo \
      --config.spider.retrain=True                                  # train the ranker instead
  mspider benchmark --config configs/benchmark_minizoo.py:smoke --workdir /tmp/smoke   # seconds

Targets: the 8 held-out mini-zoo targets (store datasets mz_<target>; their features are extracted
into the local cache at first use, `mspider_jax.minizoo.ensure_target_store`), ground truth: the
3-seed fine-tuning accuracies. Model Spider: the ranker shipped in `data/minizoo_ranker/` (trained
with configs/spider_minizoo.py, the default; retraining writes WORKDIR/spider, and
`--config.spider.export=DIR` also saves its best parameters to DIR). Constant prior: the 100
training tasks' ground truth.

`smoke`: a tiny synthetic store written into WORKDIR/synthetic (4 PTMs, 3 targets, 12 training
tasks), 4 fast metrics and a ranker trained for 2 epochs: the whole pipeline in seconds.
"""

import ml_collections

from configs import benchmark_base
from configs import common
from configs import spider_base
from configs import spider_minizoo
from mspider_jax import minizoo

SHIPPED_RANKER = "data/minizoo_ranker"
SMOKE_METRICS = ("hscore", "leep", "logme", "nce")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, retrain=False, seed=0)
    config = benchmark_base.base_config()
    config.name = "offline mini zoo"
    artifact = minizoo.artifact_dir()  # data/minizoo, or $MSPIDER_MINIZOO_DIR
    config.store = "minizoo"
    config.ground_truth.path = str(artifact / minizoo.GROUND_TRUTH_FILES["targets"])
    config.prior_ground_truth.path = str(artifact / minizoo.GROUND_TRUTH_FILES["training"])
    config.metrics.seed = arg.seed
    config.metrics.workers = 0  # one process per core: XLA compiles each metric per class count
    config.spider.checkpoint = spider_base.repo_path(SHIPPED_RANKER)
    config.spider.retrain = arg.retrain
    config.spider.train = spider_minizoo.get_config(f"seed={arg.seed}")
    config.spider.train.eval.latency_repeats = 0
    if arg.smoke:
        config.name = "synthetic smoke benchmark"
        config.store = "synthetic"  # filled in by the runner (mspider_jax/benchmark/synthetic.py)
        config.ground_truth.path = config.prior_ground_truth.path = ""
        config.metrics.names = SMOKE_METRICS
        config.metrics.workers = 1
        config.spider.checkpoint = ""
        config.spider.train = spider_minizoo.get_config(f"smoke,seed={arg.seed}")
        config.spider.train.eval.paper_compat = False
        config.spider.train.eval.choose_k_on_validation = False
        config.report.n_boot = 200
    return config
