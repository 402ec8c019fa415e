"""Evaluation of model rankings: per-task measures, priors, aggregation over tasks, tables, plots.

Model Spider (Zhang et al., NeurIPS 2023) and its transferability-metric baselines are compared by
the weighted Kendall tau between ground-truth fine-tuning performance and predicted scores
(spec model_spider.md §8). Conventions (truth first, higher = better, the "raw"/"ranks" forms) are
in `measures`.

Public API:
  weighted_tau(truth, scores, *, form="raw", tie_break=None) -> float
  kendall_tau / spearman_rho / pearson_r(truth, scores, *, form="raw", tie_break=None) -> float
  top_k_hit(truth, scores, k) -> float;  regret(truth, scores) -> float
  evaluate_task(truth, scores, *, mask=None, form="raw", tie_break=None, names=None) -> dict
  integer_ranks(values, tie_break=None) -> [M] int
  aggregate(values, *, n_boot=2000, confidence=0.95, seed=0) -> Summary(mean, low, high, n)
  constant_prior(train_truth [T, M]) -> [M];  random_expected(truth, ...) -> dict
  results_table(scores, truth, ...) -> Table (.to_markdown(), .to_csv(path))
  plot_heatmap(table, path)
  read_scores_csv(path), read_truth_csv(path), write_table_files(table, prefix)
  published: loaders of the numbers released with Model Spider (data/published/).
"""

from mspider_jax.evaluation import published
from mspider_jax.evaluation.aggregation import Summary, aggregate
from mspider_jax.evaluation.measures import (
    FORMS,
    HIGHER_IS_BETTER,
    MEASURES,
    evaluate_task,
    integer_ranks,
    kendall_tau,
    pearson_r,
    regret,
    spearman_rho,
    top_k_hit,
    weighted_tau,
)
from mspider_jax.evaluation.priors import constant_prior, random_expected, weighted_tau_batch
from mspider_jax.evaluation.table import (
    Table,
    plot_heatmap,
    read_scores_csv,
    read_truth_csv,
    results_table,
    write_table_files,
)

__all__ = [
    "FORMS", "HIGHER_IS_BETTER", "MEASURES", "Summary", "Table", "aggregate", "constant_prior",
    "evaluate_task", "integer_ranks", "kendall_tau", "pearson_r", "plot_heatmap", "published",
    "random_expected", "read_scores_csv", "read_truth_csv", "regret", "results_table",
    "spearman_rho", "top_k_hit", "weighted_tau", "weighted_tau_batch", "write_table_files",
]
