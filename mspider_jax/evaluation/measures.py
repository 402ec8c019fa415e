"""Per-task ranking measures: how well predicted scores order the models of a zoo on one task.

Model Spider (Zhang et al., NeurIPS 2023, "Learning to Rank Pre-Trained Models Efficiently") and the
transferability-metric benchmark it reports score a ranking by the *weighted Kendall tau* between
the ground-truth fine-tuning performance of each model and the predicted score of each model
(spec model_spider.md §8.1). The other measures here are the usual companions.

Conventions (all measures):
  * `truth: [M]` ground-truth performance, **higher is better** (regression errors must be negated
    first, as in the published data). `scores: [M]` predicted scores, higher = predicted better.
  * Arguments are ordered (truth, scores). The weighted tau is not symmetric, and the benchmark
    puts the ground truth first so that the importance weights follow the *true* ranking.
  * Inputs must be finite. Missing ground truth is handled by `evaluate_task` (NaN truth = missing
    model, dropped); the single measures raise ValueError on NaN instead of returning NaN.
  * A correlation needs both sides to order the models: constant truth or constant scores raise
    ValueError (the correlation is undefined, scipy would return NaN).

Two forms of the correlation measures (`form=`), because the published numbers use two:
  * ``"raw"`` (baseline / README convention): raw accuracies and raw scores, ties kept.
    `scipy.stats.weightedtau(accuracy, score, rank=None)` reproduces 69 of the 72 published
    baseline cells of Table 1 (spec §8.2).
  * ``"ranks"`` (the released Model Spider code's convention): both vectors are first turned into
    integer ranks (0 = worst). Ties in the truth are broken by `tie_break` (the published integer
    labels `FTRank`, higher wins), so the truth becomes the code's label permutation. Ties that no
    tie-break resolves (in the scores, or in the truth without `tie_break`) are *kept*: equal
    values share a rank instead of being ordered by their position, which would be arbitrary.
    Order-based measures (weighted tau, Kendall, Spearman) are then identical in both forms unless
    `tie_break` resolves ties of the truth; Pearson r differs (values vs ranks).

Weighted tau (Vigna 2015, as in scipy with rank=None): with importance ranks r_i given by the
decreasing lexicographic order of (truth, scores) (the best true model has r = 0) and the
hyperbolic weigher h(r) = 1/(r+1), each pair (i, j) weighs w_ij = h(r_i) + h(r_j), and

  tau_w = sum_{i<j} w_ij sgn(x_i-x_j) sgn(y_i-y_j)
          / sqrt( sum_{i<j, x_i!=x_j} w_ij * sum_{i<j, y_i!=y_j} w_ij ).

`top_k_hit` and `regret` always use the raw truth (every model tied for the best true performance
counts as "a best model"); ties in the scores are resolved by a uniformly random tie-break and the
*expected* value is returned, so a method cannot gain or lose by reporting ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats

FORMS: tuple[str, ...] = ("raw", "ranks")

# Keys of `evaluate_task`, in table order. Regret is the only one where lower is better.
MEASURES: tuple[str, ...] = (
    "weighted_tau", "kendall_tau", "spearman_rho", "pearson_r", "top1_hit", "top3_hit", "regret")
HIGHER_IS_BETTER: dict[str, bool] = {name: name != "regret" for name in MEASURES}


def _as_vector(values, what: str, *, names: Sequence[str] | None = None) -> np.ndarray:
    """Returns `values` as a finite float64 [M] vector or raises ValueError naming the bad entry."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a 1-D vector [M], got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        where = names[bad[0]] if names is not None else f"index {bad[0]}"
        raise ValueError(f"{what} is not finite at {where} (value {array[bad[0]]}); "
                         "drop models without ground truth with evaluate_task(mask=...)")
    return array


def _check_pair(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_vector(truth, "truth")
    scores = _as_vector(scores, "scores")
    if truth.shape != scores.shape:
        raise ValueError(
            f"truth and scores differ in length: {truth.shape[0]} vs {scores.shape[0]}")
    if truth.shape[0] < 2:
        raise ValueError(f"a ranking needs at least 2 models, got {truth.shape[0]}")
    return truth, scores


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")


def _check_not_constant(truth: np.ndarray, scores: np.ndarray) -> None:
    if np.all(truth == truth[0]):
        raise ValueError(
            "truth is constant: every model performs the same, a correlation is undefined")
    if np.all(scores == scores[0]):
        raise ValueError("scores are constant: the method does not order the models, "
                         "a correlation is undefined")


def integer_ranks(values, tie_break=None) -> np.ndarray:
    """Integer ranks with 0 = smallest value (= worst model); equal entries share a rank.

    Args:
      values: [M] numbers.
      tie_break: optional [M]; among equal `values` the larger `tie_break` gets the larger rank
        (e.g. the published FTRank labels, which break the ties of the accuracies).

    Returns:
      [M] int64 "competition" ranks: an entry's rank is the number of entries strictly below it in
      the order (value, then tie_break). Without remaining ties this is a permutation of 0..M-1.
    """
    values = _as_vector(values, "values")
    if tie_break is None:
        keys = [values]
    else:
        tie_break = _as_vector(tie_break, "tie_break")
        if tie_break.shape != values.shape:
            raise ValueError(
                f"tie_break has {tie_break.shape[0]} entries, values {values.shape[0]}")
        keys = [tie_break, values]  # np.lexsort sorts by the LAST key first
    order = np.lexsort(keys)
    sorted_keys = np.stack([k[order] for k in keys], axis=1)                      # [M, K]
    starts_group = np.ones(values.shape[0], dtype=bool)
    starts_group[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(starts_group, np.arange(values.shape[0]), 0))
    ranks = np.empty(values.shape[0], dtype=np.int64)
    ranks[order] = group_start
    return ranks


def _apply_form(truth: np.ndarray, scores: np.ndarray, form: str,
                tie_break) -> tuple[np.ndarray, np.ndarray]:
    _check_form(form)
    if form == "raw":
        if tie_break is not None:
            raise ValueError('tie_break is only used with form="ranks"')
        return truth, scores
    return (integer_ranks(truth, tie_break).astype(np.float64),
            integer_ranks(scores).astype(np.float64))


def weighted_tau(truth, scores, *, form: str = "raw", tie_break=None) -> float:
    """Weighted Kendall tau of the benchmark: `scipy.stats.weightedtau(truth, scores, rank=None)`.

    Hyperbolic weigher 1/(r+1), additive pair weights, importance ranks from the decreasing
    lexicographic order of (truth, scores) (see the module docstring for the formula).

    Args:
      truth: [M] ground-truth performance (higher = better), finite.
      scores: [M] predicted scores (higher = predicted better), finite.
      form: "raw" (values as given, ties kept; the published baselines' convention) or "ranks"
        (both turned into integer ranks first; the released Model Spider code's convention).
      tie_break: [M], only with form="ranks": breaks ties in `truth` (e.g. the published FTRank).

    Returns:
      tau_w in [-1, 1].
    """
    truth, scores = _check_pair(truth, scores)
    x, y = _apply_form(truth, scores, form, tie_break)
    _check_not_constant(x, y)
    return float(scipy.stats.weightedtau(x, y, rank=None).statistic)


def kendall_tau(truth, scores, *, form: str = "raw", tie_break=None) -> float:
    """Kendall's tau-b (ties in either vector reduce the denominator; scipy.stats.kendalltau).

    tau_b = (C - D) / sqrt((P - T_x)(P - T_y)) with C/D the concordant/discordant pairs, P all
    pairs, T_x/T_y the pairs tied in truth/scores. Arguments as in `weighted_tau`.
    """
    truth, scores = _check_pair(truth, scores)
    x, y = _apply_form(truth, scores, form, tie_break)
    _check_not_constant(x, y)
    return float(scipy.stats.kendalltau(x, y).statistic)


def spearman_rho(truth, scores, *, form: str = "raw", tie_break=None) -> float:
    """Spearman's rho: Pearson r of the ranks, tied values get their average rank (scipy)."""
    truth, scores = _check_pair(truth, scores)
    x, y = _apply_form(truth, scores, form, tie_break)
    _check_not_constant(x, y)
    return float(scipy.stats.spearmanr(x, y).statistic)


def pearson_r(truth, scores, *, form: str = "raw", tie_break=None) -> float:
    """Pearson's linear correlation of the values (of the integer ranks with form="ranks")."""
    truth, scores = _check_pair(truth, scores)
    x, y = _apply_form(truth, scores, form, tie_break)
    _check_not_constant(x, y)
    return float(scipy.stats.pearsonr(x, y).statistic)


def top_k_hit(truth, scores, k: int) -> float:
    """Whether a truly best model is among the k models with the highest scores.

    "A truly best model" is any model whose truth equals `truth.max()` (ties for the best all
    count). When scores tie across the top-k boundary, the k slots are filled by a uniformly
    random choice among the tied models and the *probability* of a hit is returned, so the result
    is 1.0 or 0.0 without score ties and a fraction in between with them.

    Args:
      truth: [M] ground-truth performance.
      scores: [M] predicted scores.
      k: 1 <= k; k >= M always hits.

    Returns:
      P(hit) in [0, 1].
    """
    truth, scores = _check_pair(truth, scores)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    k = int(k)
    num_models = truth.shape[0]
    if k >= num_models:
        return 1.0
    is_best = truth == truth.max()
    kth_score = np.sort(scores)[::-1][k - 1]
    above = scores > kth_score
    if np.any(is_best & above):
        return 1.0
    tied = scores == kth_score
    slots = k - int(above.sum())          # slots left for the tied group
    num_tied = int(tied.sum())
    num_best_tied = int((tied & is_best).sum())
    # P(no best model drawn) when `slots` of `num_tied` are drawn without replacement.
    miss = math.comb(num_tied - num_best_tied, slots) / math.comb(num_tied, slots)
    return float(1.0 - miss)


def regret(truth, scores) -> float:
    """truth.max() - truth[argmax(scores)]: what is lost by fine-tuning the top-scored model.

    In the units of `truth` (accuracy points for the published data); 0 is perfect, lower is better.
    When several models share the highest score, one of them is picked uniformly at random and the
    expected regret (the mean over the tied models) is returned.
    """
    truth, scores = _check_pair(truth, scores)
    picked = scores == scores.max()
    return float(truth.max() - truth[picked].mean())


def evaluate_task(truth, scores, *, mask=None, form: str = "raw", tie_break=None,
                  names: Sequence[str] | None = None) -> dict[str, float]:
    """Every measure of `MEASURES` for one task.

    Args:
      truth: [M] ground truth; NaN marks a model without ground truth (it is dropped).
      scores: [M] predicted scores; must be finite for every model that is kept.
      mask: optional [M] bool, True = keep the model. Combined with the NaN-truth rule.
      form: form of the correlation measures ("raw" or "ranks", see the module docstring).
        top-k hits and regret always use the raw truth.
      tie_break: [M] tie-break of the truth for form="ranks" (entries of dropped models ignored).
      names: optional [M] model names, used in error messages.

    Returns:
      {measure: value} with the keys of `MEASURES` (top1_hit, top3_hit for k = 1, 3).

    Raises:
      ValueError: NaN/inf scores of a kept model, fewer than 2 kept models, constant truth or
        scores, shape mismatches.
    """
    truth = np.asarray(truth, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 1 or scores.shape != truth.shape:
        raise ValueError(f"truth and scores must be [M] vectors of one length, got {truth.shape} "
                         f"and {scores.shape}")
    if names is not None and len(names) != truth.shape[0]:
        raise ValueError(f"names has {len(names)} entries for {truth.shape[0]} models")
    if np.any(np.isinf(truth)):
        raise ValueError(f"truth is infinite at index {int(np.flatnonzero(np.isinf(truth))[0])}")
    keep = ~np.isnan(truth)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != truth.shape:
            raise ValueError(
                f"mask must be a bool [M] vector, got dtype {mask.dtype} shape {mask.shape}")
        keep &= mask
    if keep.sum() < 2:
        raise ValueError(
            f"a ranking needs at least 2 models with ground truth, got {int(keep.sum())}")
    kept_names = None if names is None else [n for n, k in zip(names, keep) if k]
    truth = truth[keep]
    scores = _as_vector(scores[keep], "scores", names=kept_names)
    if tie_break is not None:
        tie_break = np.asarray(tie_break, dtype=np.float64)
        if tie_break.shape != keep.shape:
            raise ValueError(f"tie_break has shape {tie_break.shape}, expected {keep.shape}")
        tie_break = tie_break[keep]
    correlation = dict(form=form, tie_break=tie_break)
    return {
        "weighted_tau": weighted_tau(truth, scores, **correlation),
        "kendall_tau": kendall_tau(truth, scores, **correlation),
        "spearman_rho": spearman_rho(truth, scores, **correlation),
        "pearson_r": pearson_r(truth, scores, **correlation),
        "top1_hit": top_k_hit(truth, scores, 1),
        "top3_hit": top_k_hit(truth, scores, 3),
        "regret": regret(truth, scores),
    }
