"""Reference rankers for the LLM zoo, shown beside Model Spider in every result.

A learned ranker of LLMs is only useful if it beats what needs no learning (the LLM score matrix is
close to rank one: a model good at one sub-task tends to be good at all):
  * constant prior: `mspider_jax.evaluation.constant_prior`, each model's mean normalised rank over
    the training tasks (one ranking for every task);
  * size prior (`size_prior`): rank by parameter count;
  * k-nearest-neighbour prior over task embeddings (`knn_prior`): the constant prior computed on the
    k training tasks whose text embedding is closest (cosine) to the new task's;
  * metadata prior (`metadata_prior`), for models never evaluated (the unseen-model test): ridge
    regression from model metadata to the constant prior of the models that were evaluated.

Conventions: truth tables are [T, M] with NaN = not evaluated; scores are higher = better.
"""

from __future__ import annotations

import numpy as np

from mspider_jax import evaluation as ev
from mspider_jax.spider import data as spider_data


def normalised_ranks(truth: np.ndarray) -> np.ndarray:
    """[T, M] -> per task, ranks among its evaluated models mapped to [0, 1] (1 = best); NaN kept.

    Ties get their average rank. A task with fewer than 2 evaluated models raises ValueError.
    """
    truth = np.asarray(truth, np.float64)
    counts = (~np.isnan(truth)).sum(axis=1)
    if truth.ndim != 2 or (counts < 2).any():
        raise ValueError("every task needs at least 2 evaluated models")
    return spider_data.ranks_among_valid(truth) / (counts[:, None] - 1.0)


def size_prior(params_b: np.ndarray) -> np.ndarray:
    """[M] parameters (billions) -> scores log(parameters): bigger is predicted better."""
    params_b = np.asarray(params_b, np.float64)
    if (params_b <= 0).any() or not np.isfinite(params_b).all():
        raise ValueError("parameter counts must be finite and > 0")
    return np.log(params_b)


def cosine_similarity(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """[Q, D], [K, D] -> [Q, K] cosine similarities (ValueError for a zero vector)."""
    queries, keys = np.asarray(queries, np.float64), np.asarray(keys, np.float64)
    norms_q, norms_k = np.linalg.norm(queries, axis=1), np.linalg.norm(keys, axis=1)
    if (norms_q == 0).any() or (norms_k == 0).any():
        raise ValueError("a task embedding is the zero vector")
    return (queries / norms_q[:, None]) @ (keys / norms_k[:, None]).T


def knn_prior(train_truth: np.ndarray, train_embeddings: np.ndarray, query_embeddings: np.ndarray,
              k: int) -> np.ndarray:
    """Scores of new tasks from their k nearest training tasks (cosine of task embeddings).

    The score of model m on a query is its mean normalised rank over the neighbours where it was
    evaluated; a model evaluated on none of them gets its constant prior over all training tasks
    (same [0, 1] scale: the best guess without neighbour information).

    Args:
      train_truth: [T, M] training-task performance (NaN = not evaluated).
      train_embeddings: [T, D]; query_embeddings: [Q, D].
      k: neighbours, 1 <= k <= T (ties in similarity: lower task index first).

    Returns:
      [Q, M] scores.
    """
    train_truth = np.asarray(train_truth, np.float64)
    if not 1 <= k <= train_truth.shape[0]:
        raise ValueError(f"k must be in 1..{train_truth.shape[0]}, got {k}")
    if train_embeddings.shape[0] != train_truth.shape[0]:
        raise ValueError(f"{train_embeddings.shape[0]} embeddings for {train_truth.shape[0]} "
                         "training tasks")
    ranks = normalised_ranks(train_truth)
    fallback = ev.constant_prior(train_truth)
    similarity = cosine_similarity(query_embeddings, train_embeddings)
    scores = np.empty((similarity.shape[0], train_truth.shape[1]))
    for row, sims in enumerate(similarity):
        neighbours = np.argsort(-sims, kind="stable")[:k]
        block = ranks[neighbours]
        counts = (~np.isnan(block)).sum(axis=0)
        means = np.nansum(block, axis=0) / np.maximum(counts, 1)
        scores[row] = np.where(counts > 0, means, fallback)
    return scores


def metadata_prior(features: np.ndarray, targets: np.ndarray, *, ridge: float = 1.0) -> np.ndarray:
    """Ridge regression of a per-model target on model metadata, predicted for every model.

    Args:
      features: [M, K] metadata features (`llm.data.model_metadata`).
      targets: [M] e.g. the constant prior of the evaluated models; NaN = unknown (not fitted, only
        predicted).
      ridge: L2 penalty on the weights (not on the intercept).

    Returns:
      [M] predicted scores.
    """
    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    known = ~np.isnan(targets)
    if features.shape[0] != targets.shape[0] or known.sum() < 2:
        raise ValueError("need [M, K] features and [M] targets with at least 2 known values")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x = np.column_stack([np.ones(features.shape[0]), features])
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    weights = np.linalg.solve(x[known].T @ x[known] + penalty, x[known].T @ targets[known])
    return x @ weights
