"""Linear-probe accuracy in JAX: a regularised softmax regression on frozen features (issue 7).

One of the training-label sources that need no fine-tuning (`label_sources`): Model Spider (Zhang et
al., NeurIPS 2023; spec model_spider.md §6.1) trains on the "approximated performance" of every PTM
on its training tasks and never says how it was obtained. A linear probe on the PTM's frozen
features is the cheapest performance estimate that is still an accuracy.

Protocol, per task and PTM:
  1. Split the task's labelled samples, stratified by class, into a fitting part and a held-out part
     (`held_out_split`): each class with n >= 2 samples puts round(fraction * n) of them, at least
     1 and at most n - 1, in the held-out part; a class with one sample is only fitted. The split
     depends on (labels, fraction, seed) only, so every PTM of a task is probed on the same samples.
  2. Standardise each feature with the fitting part's mean and (population) standard deviation
     + 1e-6.
  3. Minimise  mean_i CE(W z_i + b, y_i) + ||W||^2 / (2 * regularization * N_fit)  over the fitting
     part (sklearn's C convention, as the mini-zoo build's PyTorch probe; the bias is not
     penalised), from zero, by full-batch L-BFGS (`_lbfgs`: 10 curvature pairs, Armijo
     backtracking) until the gradient norm is below `tol` or `max_iter` iterations. The objective
     is strictly convex in W, so the fit is the unique optimum up to the solver's tolerance
     (float32).
  4. Accuracy (percent) of argmax over the task's classes on the held-out part.

Static shapes: samples, feature columns and classes are padded to powers of two (padded samples
have weight 0; padded feature columns are 0 after standardisation, so their weights stay 0; padded
classes get logit -1e9, i.e. probability exactly 0 in float32), and the M PTMs of a task run in one
vmapped call, so a handful of compiled programs serve every task of a zoo.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mspider_jax.spider import tokens as tokens_lib

_MASKED_LOGIT = -1e9
_STD_EPSILON = 1e-6


def held_out_split(labels: np.ndarray, held_out_fraction: float = 0.3,
                   seed: int = 0) -> np.ndarray:
    """[N] bool, True for the held-out samples: the stratified split of the module docstring."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {labels.shape}")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    rng = np.random.default_rng(seed)
    held_out = np.zeros(labels.shape, bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            continue
        count = int(np.clip(round(held_out_fraction * members.size), 1, members.size - 1))
        held_out[rng.permutation(members)[:count]] = True
    return held_out


def _standardise(features, fit_weight):
    """Standardises [N, D] with the weighted (fitting-part) mean and population std."""
    total = fit_weight.sum()
    mean = (fit_weight[:, None] * features).sum(0) / total
    variance = (fit_weight[:, None] * (features - mean) ** 2).sum(0) / total
    return (features - mean) / (jnp.sqrt(variance) + _STD_EPSILON)


def _objective(params, z, labels, fit_weight, class_mask, penalty):
    """Mean cross-entropy over the fitting samples + penalty * ||W||^2."""
    logits = jnp.where(class_mask, z @ params["w"] + params["b"], _MASKED_LOGIT)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return (fit_weight * nll).sum() / fit_weight.sum() + penalty * jnp.sum(params["w"] ** 2)


def _lbfgs(objective, x0, tol, max_iter, memory=10, max_backtracking=30):
    """Minimises objective(x) over a vector x by L-BFGS with an Armijo backtracking line search.

    Small and jit/vmap-friendly (a fraction of optax.lbfgs's compile time). The two-loop recursion
    runs over a ring buffer of the last `memory` curvature pairs; a pair is stored only when
    s.y > 0, so the inverse-Hessian estimate stays positive definite.

    Returns:
      (x, objective(x), iterations).
    """
    value_and_grad = jax.value_and_grad(objective)
    size = x0.shape[0]

    def direction(grad, s_hist, y_hist, rho, newest):
        # Two-loop recursion, newest pair first; empty slots have rho = 0 and drop out.
        def backward(i, carry):
            q, alphas = carry
            slot = (newest - i) % memory
            alpha = rho[slot] * jnp.dot(s_hist[slot], q)
            return q - alpha * y_hist[slot], alphas.at[slot].set(alpha)

        q, alphas = jax.lax.fori_loop(0, memory, backward, (grad, jnp.zeros(memory, grad.dtype)))
        s_new, y_new = s_hist[newest], y_hist[newest]
        yy = jnp.dot(y_new, y_new)
        gamma = jnp.where(rho[newest] > 0, jnp.dot(s_new, y_new) / jnp.where(yy > 0, yy, 1.0),
                          1.0 / jnp.maximum(jnp.linalg.norm(grad), 1.0))
        r = gamma * q

        def forward(i, r):
            slot = (newest + 1 + i) % memory
            beta = rho[slot] * jnp.dot(y_hist[slot], r)
            return r + s_hist[slot] * (alphas[slot] - beta)

        return -jax.lax.fori_loop(0, memory, forward, r)

    def body(carry):
        x, value, grad, s_hist, y_hist, rho, newest, iteration = carry
        step = direction(grad, s_hist, y_hist, rho, newest)
        slope = jnp.dot(grad, step)
        # Not a descent direction (numerical trouble): fall back to steepest descent.
        step, slope = jax.lax.cond(slope < 0, lambda: (step, slope),
                                   lambda: (-grad, -jnp.dot(grad, grad)))

        def search_cond(state):
            t, trial_value, count = state
            return (trial_value > value + 1e-4 * t * slope) & (count < max_backtracking)

        def search_body(state):
            t, _, count = state
            return t * 0.5, objective(x + 0.5 * t * step), count + 1

        t, _, _ = jax.lax.while_loop(search_cond, search_body,
                                     (jnp.asarray(1.0, x.dtype), objective(x + step), 0))
        new_x = x + t * step
        new_value, new_grad = value_and_grad(new_x)
        s, y = new_x - x, new_grad - grad
        curvature = jnp.dot(s, y)
        keep = curvature > 1e-10
        slot = jnp.where(keep, (newest + 1) % memory, newest)
        s_hist = jnp.where(keep, s_hist.at[slot].set(s), s_hist)
        y_hist = jnp.where(keep, y_hist.at[slot].set(y), y_hist)
        rho = jnp.where(keep, rho.at[slot].set(1.0 / jnp.where(keep, curvature, 1.0)), rho)
        return new_x, new_value, new_grad, s_hist, y_hist, rho, slot, iteration + 1

    def cond(carry):
        grad, iteration = carry[2], carry[-1]
        return (jnp.linalg.norm(grad) >= tol) & (iteration < max_iter)

    value, grad = value_and_grad(x0)
    history = jnp.zeros((memory, size), x0.dtype)
    carry = (x0, value, grad, history, history, jnp.zeros(memory, x0.dtype), 0,
             jnp.asarray(0))
    x, value, _, _, _, _, _, iteration = jax.lax.while_loop(cond, body, carry)
    return x, value, iteration


def _fit_one(features, labels, fit_weight, class_mask, regularization, tol, max_iter):
    """The probe's fit on padded arrays: -> (params {"w": [D, C], "b": [C]}, objective, iters)."""
    z = _standardise(features, fit_weight)
    penalty = 1.0 / (2.0 * regularization * fit_weight.sum())
    num_features, num_classes = z.shape[1], class_mask.shape[0]

    def unflatten(x):
        return {"w": x[:num_features * num_classes].reshape(num_features, num_classes),
                "b": x[num_features * num_classes:]}

    def objective(x):
        return _objective(unflatten(x), z, labels, fit_weight, class_mask, penalty)

    x0 = jnp.zeros(num_features * num_classes + num_classes, z.dtype)
    x, value, iterations = _lbfgs(objective, x0, tol, max_iter)
    return unflatten(x), value, iterations


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _probe(features, labels, fit_weight, eval_weight, class_mask, regularization, tol, max_iter):
    """The probes of M PTMs on one task, features [M, N, D] (everything else shared).

    Returns:
      (params {"w": [M, D, C], "b": [M, C]}, objective [M], iterations [M], held-out accuracy in
      percent [M]).
    """

    def one(features):
        params, value, iterations = _fit_one(features, labels, fit_weight, class_mask,
                                             regularization, tol, max_iter)
        z = _standardise(features, fit_weight)
        logits = jnp.where(class_mask, z @ params["w"] + params["b"], _MASKED_LOGIT)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(z.dtype)
        accuracy = 100.0 * (eval_weight * correct).sum() / jnp.maximum(eval_weight.sum(), 1.0)
        return params, value, iterations, accuracy

    return jax.vmap(one)(features)


def _padded(features: Sequence[np.ndarray], labels: np.ndarray, held_out: np.ndarray):
    """Pads to powers of two: ([M, Np, Dp], labels [Np], fit [Np], eval [Np], classes [Cp])."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("labels must be [N] non-negative integer class ids")
    num = labels.shape[0]
    for m, block in enumerate(features):
        if block.ndim != 2 or block.shape[0] != num:
            raise ValueError(f"features[{m}] must be [N={num}, D], got shape {block.shape}")
        if not np.isfinite(block).all():
            raise ValueError(f"features[{m}] contain NaN or inf")
    num_classes = int(labels.max()) + 1
    rows = tokens_lib.bucket_length(num)
    columns = tokens_lib.bucket_length(max(block.shape[1] for block in features))
    classes = tokens_lib.bucket_length(num_classes, minimum=2)
    stacked = np.zeros((len(features), rows, columns), np.float32)
    for m, block in enumerate(features):
        stacked[m, :num, :block.shape[1]] = block
    padded_labels = np.zeros(rows, np.int32)
    padded_labels[:num] = labels
    fit = np.zeros(rows, np.float32)
    fit[:num] = ~held_out
    evaluation = np.zeros(rows, np.float32)
    evaluation[:num] = held_out
    class_mask = np.arange(classes) < num_classes
    return stacked, padded_labels, fit, evaluation, class_mask


def fit_softmax_regression(features: np.ndarray, labels: np.ndarray, *,
                           regularization: float = 1.0, tol: float = 1e-5,
                           max_iter: int = 500) -> tuple[np.ndarray, np.ndarray, float]:
    """Fits the probe of step 3 on ALL given samples (no split; for tests and inspection).

    Args:
      features: [N, D]; labels: [N] class ids in 0..C-1.

    Returns:
      (W [D, C], b [C], objective value) for the standardised features (step 2).
    """
    if regularization <= 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")
    features = np.asarray(features, np.float32)
    stacked, labels_p, fit, _, class_mask = _padded([features], labels,
                                                    np.zeros(len(labels), bool))
    # The same compiled program as `linear_probe_accuracies` on one PTM (no held-out part here).
    params, value, _, _ = _probe(stacked, labels_p, fit, np.zeros_like(fit), class_mask,
                                 regularization, tol, max_iter=max_iter)
    num_classes = int(np.asarray(labels).max()) + 1
    return (np.asarray(params["w"][0])[:features.shape[1], :num_classes],
            np.asarray(params["b"][0])[:num_classes], float(value[0]))


def linear_probe_accuracies(features: Sequence[np.ndarray], labels: np.ndarray, *,
                            held_out_fraction: float = 0.3, regularization: float = 1.0,
                            seed: int = 0, tol: float = 1e-4, max_iter: int = 100) -> np.ndarray:
    """Held-out linear-probe accuracy (percent) of each PTM on one task (module docstring).

    Args:
      features: M arrays [N, d_m] (float; one per PTM, same samples in the same order).
      labels: [N] integer class ids in 0..C-1 (C >= 2).
      held_out_fraction, seed: the stratified split (`held_out_split`).
      regularization: C in the penalty ||W||^2 / (2 C N_fit).
      tol, max_iter: L-BFGS stops at a gradient norm < tol or after max_iter iterations (100, as
        the mini-zoo build's probe): accuracies then match a 500-iteration fit on the mini zoo's
        tasks at a fraction of the time (the argmax settles long before the weights).

    Returns:
      [M] float64 accuracies in percent.
    """
    if not features:
        raise ValueError("no features given")
    if regularization <= 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")
    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        raise ValueError("a linear probe needs at least 2 classes")
    held_out = held_out_split(labels, held_out_fraction, seed)
    if not held_out.any():
        raise ValueError("no held-out samples: every class has a single sample")
    arrays = [np.asarray(block, np.float32) for block in features]
    stacked, labels_p, fit, evaluation, class_mask = _padded(arrays, labels, held_out)
    accuracies = _probe(stacked, labels_p, fit, evaluation, class_mask, regularization, tol,
                        max_iter=max_iter)[3]
    return np.asarray(accuracies, np.float64)
