"""Reference rankers that every results table shows beside the real methods.

A transferability method is only useful if it beats rankings that ignore the target task:
  * a **constant prior**: one fixed ordering of the zoo used for every task, e.g. the mean rank of
    each model over the training tasks (`constant_prior`), or the models' source (ImageNet)
    accuracy. On the published single-source zoo such a constant ranking scores 0.748 mean weighted
    tau over the 8 Table 1 datasets, above every baseline of Table 1 (spec model_spider.md §8.4);
  * **random**: the expected value of each measure when the scores are a uniformly random
    permutation (`random_expected`).

Conventions as in `measures`: truth higher = better, NaN truth = model without ground truth.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

from mspider_jax.evaluation import measures


def constant_prior(train_truth) -> np.ndarray:
    """Task-agnostic scores: the mean normalised rank of each model over the training tasks.

    For each training task t, the models with ground truth are ranked by their performance
    (average ranks for ties) and the ranks are mapped to [0, 1] (0 = worst of that task, 1 = best),
    so tasks with fewer models weigh the same as complete ones. The score of a model is the mean of
    its normalised ranks over the tasks where it has ground truth. Without missing entries this is
    an affine function of "minus the mean rank", i.e. the same ordering.

    Args:
      train_truth: [T, M] performance (or integer rank labels, higher = better) of the M models on
        T training tasks; NaN = not measured.

    Returns:
      [M] float64 scores, higher = better on average.
    """
    train_truth = np.asarray(train_truth, dtype=np.float64)
    if train_truth.ndim != 2 or train_truth.shape[0] == 0:
        raise ValueError(
            f"train_truth must be a non-empty [T, M] matrix, got shape {train_truth.shape}")
    if np.any(np.isinf(train_truth)):
        raise ValueError("train_truth contains inf; use NaN for missing entries")
    num_tasks, num_models = train_truth.shape
    rank_sum = np.zeros(num_models)
    rank_count = np.zeros(num_models)
    for task in range(num_tasks):
        known = ~np.isnan(train_truth[task])
        num_known = int(known.sum())
        if num_known < 2:
            raise ValueError(f"training task {task} has {num_known} model(s) with ground truth; "
                             "a ranking needs at least 2")
        ranks = scipy.stats.rankdata(train_truth[task, known], method="average")  # 1 = worst
        rank_sum[known] += (ranks - 1.0) / (num_known - 1)
        rank_count[known] += 1
    never_seen = np.flatnonzero(rank_count == 0)
    if never_seen.size:
        raise ValueError(f"model {never_seen[0]} has no ground truth in any training task")
    return rank_sum / rank_count


def weighted_tau_batch(truth, scores_batch) -> np.ndarray:
    """Weighted tau (same definition as `measures.weighted_tau`, form "raw") for many score vectors.

    A vectorised O(S M^2) numpy evaluation of the defining double sum, used for Monte Carlo
    expectations where calling scipy S times would be slow. Agrees with scipy to ~1e-15.

    Args:
      truth: [M] finite, not constant.
      scores_batch: [S, M] finite, no row constant.

    Returns:
      [S] weighted tau of each row.
    """
    truth = np.asarray(truth, dtype=np.float64)
    scores_batch = np.asarray(scores_batch, dtype=np.float64)
    if scores_batch.ndim != 2 or scores_batch.shape[1] != truth.shape[0]:
        raise ValueError(f"scores_batch must be [S, {truth.shape[0]}], got {scores_batch.shape}")
    sign_x = np.sign(truth[:, None] - truth[None, :])                            # [M, M]
    sign_y = np.sign(scores_batch[:, :, None] - scores_batch[:, None, :])        # [S, M, M]
    # Importance rank (0 = most important) from the decreasing lexicographic order of (x, y):
    # count who beats model i on x, then on y among x-ties, then (joint ties) by index; the index
    # choice does not change the value because joint-tied models have identical signs.
    x_tied = sign_x == 0
    earlier = np.tril(np.ones_like(sign_x, dtype=bool), k=-1)                    # [i, j]: j < i
    rank = ((sign_x < 0).sum(axis=1)[None, :]
            + (x_tied[None] & (sign_y < 0)).sum(axis=2)
            + (x_tied[None] & (sign_y == 0) & earlier[None]).sum(axis=2))         # [S, M]
    weight = 1.0 / (rank + 1.0)
    pair_weight = weight[:, :, None] + weight[:, None, :]                       # [S, M, M]
    # Sums over all ordered pairs are twice the sums over i < j; the factor cancels in the ratio.
    numerator = (pair_weight * sign_x[None] * sign_y).sum(axis=(1, 2))
    norm_x = (pair_weight * (sign_x != 0)[None]).sum(axis=(1, 2))
    norm_y = (pair_weight * (sign_y != 0)).sum(axis=(1, 2))
    if np.any(norm_x == 0) or np.any(norm_y == 0):
        raise ValueError("constant truth or a constant score row: weighted tau is undefined")
    return numerator / np.sqrt(norm_x * norm_y)


def random_expected(truth, *, form: str = "raw", tie_break=None, n_samples: int = 20000,
                    seed: int = 0) -> dict[str, float]:
    """Expected value of every measure of `measures.evaluate_task` under uniformly random scores.

    The scores are a uniformly random permutation of the models (no ties). Exact where symmetry
    allows, Monte Carlo otherwise:
      * kendall_tau, spearman_rho, pearson_r: exactly 0 (the score-side normaliser is fixed and each
        model's expected score is the same);
      * weighted_tau: exactly 0 when the compared truth has no ties (the pair weights then depend on
        the truth only). With ties in the truth (form="raw") the importance ranks inside a tie group
        depend on the scores, so the expectation is estimated from `n_samples` random permutations
        (standard error below ~0.003 for the default 20000);
      * top{k}_hit: exactly 1 - C(M-b, k) / C(M, k), b = number of models tied for the best truth;
      * regret: exactly truth.max() - truth.mean().

    Args:
      truth: [M] ground truth; NaN = model without ground truth (dropped).
      form, tie_break: as in `measures.evaluate_task`.
      n_samples, seed: Monte Carlo size and seed (only used in the tied weighted-tau case).

    Returns:
      {measure: expected value} with the keys of `measures.MEASURES`.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if truth.ndim != 1:
        raise ValueError(f"truth must be a [M] vector, got shape {truth.shape}")
    keep = ~np.isnan(truth)
    if np.any(np.isinf(truth)):
        raise ValueError("truth contains inf")
    if tie_break is not None:
        tie_break = np.asarray(tie_break, dtype=np.float64)
        if tie_break.shape != truth.shape:
            raise ValueError(f"tie_break has shape {tie_break.shape}, truth {truth.shape}")
        tie_break = tie_break[keep]
    truth = truth[keep]
    num_models = truth.shape[0]
    if num_models < 2:
        raise ValueError(f"a ranking needs at least 2 models with ground truth, got {num_models}")
    if np.all(truth == truth[0]):
        raise ValueError("truth is constant: correlations are undefined")
    measures._check_form(form)
    if form == "raw" and tie_break is not None:
        raise ValueError('tie_break is only used with form="ranks"')
    compared = (truth if form == "raw"
                else measures.integer_ranks(truth, tie_break).astype(np.float64))

    if np.unique(compared).size == num_models:
        expected_tau = 0.0
    else:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        rng = np.random.default_rng(seed)
        total, chunk = 0.0, 2048
        for start in range(0, n_samples, chunk):
            size = min(chunk, n_samples - start)
            identity = np.tile(np.arange(num_models, dtype=np.float64), (size, 1))
            permutations = rng.permuted(identity, axis=1)
            total += weighted_tau_batch(compared, permutations).sum()
        expected_tau = total / n_samples

    num_best = int((truth == truth.max()).sum())

    def hit_probability(k: int) -> float:
        if k >= num_models:
            return 1.0
        return 1.0 - math.comb(num_models - num_best, k) / math.comb(num_models, k)

    return {
        "weighted_tau": float(expected_tau),
        "kendall_tau": 0.0,
        "spearman_rho": 0.0,
        "pearson_r": 0.0,
        "top1_hit": hit_probability(1),
        "top3_hit": hit_probability(3),
        "regret": float(truth.max() - truth.mean()),
    }
