"""Defaults shared by the benchmark configs (`configs/benchmark_*.py`, `mspider benchmark`).

Not a config file on its own. Fields (see mspider_jax/benchmark/runner.py):
  name                 title of the report
  store                feature store root of the targets ("minizoo": the offline mini zoo's store,
                       extracted at first use; "synthetic": a tiny generated benchmark, smoke runs)
  split                store split of the targets
  datasets             target datasets (empty = every dataset of the ground truth)
  models               the zoo in order (empty = the ranker's zoo)
  ground_truth         long CSV of the targets' fine-tuning results (path, columns, row filter)
  prior_ground_truth   the same for the ranker's training tasks: the constant-prior reference row
  metrics              names (empty = all), convention, seed, cache_dir (empty = WORKDIR/cache),
                       workers (processes scoring datasets in parallel; 0 = one per CPU core),
                       options {metric: {option: value}}
  spider               checkpoint (a trained run or checkpoint dir), retrain (train even with a
                       checkpoint), rerank_k (-1 = the run's eval.rerank_k), export (also save the
                       trained ranker's best parameters there), train (a configs/spider_*.py config)
  report               n_boot, confidence (bootstrap CI over datasets), scatter (per-dataset plots)
"""

import ml_collections

from configs import spider_base


def ground_truth_source(path: str = "", **overrides) -> ml_collections.ConfigDict:
    """A long ground-truth CSV: rows matching `where` ("column=value,..."), one per (task, model)."""
    source = ml_collections.ConfigDict(dict(path=path, task_column="dataset", model_column="model",
                                            value_column="accuracy", where=""))
    source.update(overrides)
    return source


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = ""
    config.store = ""
    config.split = "train"
    config.datasets = ()
    config.models = ()
    config.ground_truth = ground_truth_source()
    config.prior_ground_truth = ground_truth_source()
    config.metrics = ml_collections.ConfigDict(dict(
        names=(), convention="paper", seed=0, cache_dir="", workers=1,
        options=ml_collections.ConfigDict()))
    config.spider = ml_collections.ConfigDict(dict(
        checkpoint="", retrain=False, rerank_k=-1, export="",
        train=spider_base.base_config()))
    config.report = ml_collections.ConfigDict(dict(n_boot=2000, confidence=0.95, scatter=True))
    return config
