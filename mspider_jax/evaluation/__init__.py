"""Evaluation of model rankings: per-task measures, priors, aggregation over tasks, tables, plots.

Public API (see each module's docstring for the conventions):
  weighted_tau(truth, scores, *, form="raw", tie_break=None) -> float
  kendall_tau / spearman_rho / pearson_r(truth, scores, *, form="raw", tie_break=None) -> float
  top_k_hit(truth, scores, k) -> float;  regret(truth, scores) -> float
  evaluate_task(truth, scores, *, mask=None, form="raw", tie_break=None, names=None) -> dict
  aggregate(values, *, n_boot=2000, confidence=0.95, seed=0) -> Summary(mean, low, high, n)
  constant_prior(train_truth [T, M]) -> [M];  random_expected(truth, ...) -> dict
"""

from mspider_jax.evaluation.aggregation import Summary, aggregate
from mspider_jax.evaluation.measures import (
    FORMS,
    HIGHER_IS_BETTER,
    MEASURES,
    evaluate_task,
    kendall_tau,
    ordinal_ranks,
    pearson_r,
    regret,
    spearman_rho,
    top_k_hit,
    weighted_tau,
)
from mspider_jax.evaluation.priors import constant_prior, random_expected, weighted_tau_batch

__all__ = [
    "FORMS", "HIGHER_IS_BETTER", "MEASURES", "Summary", "aggregate", "constant_prior", "evaluate_task",
    "kendall_tau", "ordinal_ranks", "pearson_r", "random_expected", "regret", "spearman_rho",
    "top_k_hit", "weighted_tau", "weighted_tau_batch",
]
