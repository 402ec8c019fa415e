"""Mergeable sufficient statistics shared by the in-memory and the streaming paths of the metrics.

A metric that can be computed from sums over samples (Gram matrices, per-class sums and counts, joint
label counts, ...) is written as `statistics -> score` once; the in-memory path computes the
statistics of the whole array in one go, the streaming path (`mspider_jax.metrics.streaming`)
accumulates them over row chunks read from the feature store and merges them. Both paths then call
the same final formula, so they agree up to float summation order.

Accumulators here (all pytrees of `high_dtype()` arrays, pure and jit-able):

* `Moments`: count n, mean x̄ [D], scatter Σ(x − x̄)(x − x̄)ᵀ [D, D], and for targets t [n, K]
  (one-hot for classes) Σt [K], Σt² [K] and the centred cross Σ t (x − x̄)ᵀ [K, D]. For one-hot
  targets Σt are the class counts and the cross rows are n_c (μ_c − x̄).
* `ClassMoments`: per-class counts [C], means [C, D] and the pooled within-class scatter
  Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ [D, D].
* `ClassScatters`: per-class counts, means and scatters [C, k, k] (for low-dimensional data, e.g.
  GBC's 64 PCA coordinates).

Merging uses the pairwise update of Chan, Golub & LeVeque (1979): with δ = x̄_b − x̄_a,
x̄ = x̄_a + δ·n_b/n and S = S_a + S_b + δδᵀ·n_a n_b / n (per class for the class-wise forms), so each
chunk is centred on its own mean before its float32 Gram: the rounding error scales with the spread
of the data, not its offset, exactly like the in-memory path's centring (`_linalg.center`).

Rows can be masked (`valid` [n] bool): masked rows contribute nothing. Streaming pads the final,
ragged chunk to the chunk size with masked rows so that one compiled step serves every chunk.
Every chunk must hold at least one valid row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mspider_jax.metrics import _linalg as L


def _masked(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Zeroes the rows of x [n, ...] where valid [n] is False."""
    if valid is None:
        return x
    return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))


def _count(num_rows: int, valid: jax.Array | None) -> jax.Array:
    if valid is None:
        return jnp.asarray(num_rows, L.high_dtype())
    return jnp.sum(valid.astype(L.high_dtype()))


# ------------------------------------------------------------------------------------------------
# Moments: mean, scatter and target cross-moments.


class Moments(NamedTuple):
    """Sufficient statistics of features x [n, D] with targets t [n, K] (see the module docstring)."""

    count: jax.Array  # scalar n
    mean: jax.Array  # [D]
    scatter: jax.Array  # [D, D] Σ (x - mean)(x - mean)ᵀ
    target_sums: jax.Array  # [K] Σ t
    target_energy: jax.Array  # [K] Σ t²
    cross: jax.Array  # [K, D] Σ t (x - mean)ᵀ


def zero_moments(dim: int, num_targets: int) -> Moments:
    """The statistics of no rows (the identity of `merge_moments`)."""
    dtype = L.high_dtype()
    return Moments(
        count=jnp.zeros((), dtype), mean=jnp.zeros((dim,), dtype), scatter=jnp.zeros((dim, dim), dtype),
        target_sums=jnp.zeros((num_targets,), dtype), target_energy=jnp.zeros((num_targets,), dtype),
        cross=jnp.zeros((num_targets, dim), dtype),
    )


def moments(x: jax.Array, targets: jax.Array, valid: jax.Array | None = None) -> Moments:
    """Statistics of x [n, D] with targets [n, K]; rows with valid [n] False are left out.

    The mean is accumulated in high precision; the centred Gram and the target cross product run in x's
    compute dtype on centred data (`_linalg` precision policy).
    """
    x = L.to_compute(x)
    count = _count(x.shape[0], valid)
    if valid is None:
        z, mean = L.center(x)
    else:
        mean = jnp.sum(_masked(L.to_high(x), valid), axis=0) / count
        z = _masked((L.to_high(x) - mean).astype(x.dtype), valid)
    t = _masked(targets.astype(x.dtype), valid)
    th = L.to_high(t)
    return Moments(
        count=count, mean=mean, scatter=L.gram(z), target_sums=jnp.sum(th, axis=0),
        target_energy=jnp.sum(th**2, axis=0), cross=L.to_high(L.mm(t.T, z)),
    )


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Statistics of the union of two disjoint row sets (Chan et al.'s pairwise update)."""
    count = a.count + b.count
    share_b = jnp.where(count > 0, b.count / jnp.where(count > 0, count, 1.0), 0.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * share_b
    scatter = a.scatter + b.scatter + jnp.outer(delta, delta) * (a.count * share_b)
    # Σ t (x - mean) for each side, re-centred on the merged mean.
    cross = a.cross + jnp.outer(a.target_sums, a.mean - mean) + b.cross + jnp.outer(b.target_sums, b.mean - mean)
    return Moments(count, mean, scatter, a.target_sums + b.target_sums, a.target_energy + b.target_energy, cross)


def moments_step(state: Moments, chunk: dict, num_classes: int | None) -> Moments:
    """Streaming step: merges the moments of a chunk's features with its targets (one-hot labels for
    `num_classes` classes, or the float targets [n, K] themselves when num_classes is None)."""
    x = L.to_compute(chunk["features"])
    labels = chunk["labels"]
    targets = labels if num_classes is None else L.one_hot(labels, num_classes, x.dtype)
    return merge_moments(state, moments(x, targets, chunk["valid"]))


def stream_moments(stream: Any, num_targets: int, num_classes: int | None, row_mask: Any = None) -> Moments:
    """One pass over a `streaming.Stream`: the moments of (features, targets); see `moments_step`."""
    state = zero_moments(stream.dim("features"), num_targets)
    return stream.reduce(moments_step, state, ("features",), row_mask=row_mask, num_classes=num_classes)


def uncentered_gram(m: Moments) -> jax.Array:
    """Σ x xᵀ [D, D] = scatter + n x̄x̄ᵀ (offsets added in high precision)."""
    return m.scatter + m.count * jnp.outer(m.mean, m.mean)


def uncentered_cross(m: Moments) -> jax.Array:
    """Σ x tᵀ [D, K] = crossᵀ + x̄ (Σt)ᵀ."""
    return m.cross.T + jnp.outer(m.mean, m.target_sums)


# ------------------------------------------------------------------------------------------------
# Class moments: per-class means and the pooled within-class scatter.


class ClassMoments(NamedTuple):
    """Per-class counts [C], means [C, D] and pooled within-class scatter [D, D] (high_dtype())."""

    counts: jax.Array
    means: jax.Array
    within: jax.Array


def zero_class_moments(dim: int, num_classes: int) -> ClassMoments:
    dtype = L.high_dtype()
    return ClassMoments(jnp.zeros((num_classes,), dtype), jnp.zeros((num_classes, dim), dtype), jnp.zeros((dim, dim), dtype))


def class_moments(x: jax.Array, labels: jax.Array, num_classes: int, valid: jax.Array | None = None) -> ClassMoments:
    """Class statistics of x [n, D] with labels [n] in 0..C-1 (rows with valid False left out).

    The class means come from class sums in x's compute dtype (`_linalg.class_means`); the rows are
    class-centred before the Gram, so the float32 rounding is relative to the within-class spread.
    An absent class has count 0 and mean 0.
    """
    x = _masked(L.to_compute(x), valid)
    one_hot = _masked(L.one_hot(labels, num_classes, x.dtype), valid)
    counts = jnp.sum(L.to_high(one_hot), axis=0)
    sums = L.to_high(L.mm(one_hot.T, x))
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    centred = _masked((L.to_high(x) - means[labels]).astype(x.dtype), valid)
    return ClassMoments(counts, means, L.gram(centred))


def merge_class_moments(a: ClassMoments, b: ClassMoments) -> ClassMoments:
    """Class statistics of the union of two disjoint row sets (Chan et al.'s update per class)."""
    counts = a.counts + b.counts
    safe = jnp.where(counts > 0, counts, 1.0)
    share_b = jnp.where(counts > 0, b.counts / safe, 0.0)
    delta = b.means - a.means  # [C, D]
    means = a.means + delta * share_b[:, None]
    weights = a.counts * share_b  # n_a n_b / n per class
    within = a.within + b.within + L.mm((delta * weights[:, None]).T, delta)
    return ClassMoments(counts, means, within)


# ------------------------------------------------------------------------------------------------
# Per-class scatters (small dimension k).


class ClassScatters(NamedTuple):
    """Per-class counts [C], means [C, k] and scatters Σ_{i∈c}(x_i - μ_c)(x_i - μ_c)ᵀ [C, k, k]
    (or only their diagonals [C, k])."""

    counts: jax.Array
    means: jax.Array
    scatters: jax.Array


def zero_class_scatters(dim: int, num_classes: int, diagonal: bool = False) -> ClassScatters:
    dtype = L.high_dtype()
    shape = (num_classes, dim) if diagonal else (num_classes, dim, dim)
    return ClassScatters(jnp.zeros((num_classes,), dtype), jnp.zeros((num_classes, dim), dtype), jnp.zeros(shape, dtype))


def class_scatters(
    x: jax.Array, labels: jax.Array, num_classes: int, valid: jax.Array | None = None, diagonal: bool = False
) -> ClassScatters:
    """Per-class scatters of x [n, k] in high precision: full [C, k, k] (one masked k×k Gram per class
    via `lax.map`, O(n·k) memory instead of an [n, C, k] product) or, with `diagonal`, the per-dimension
    sums of squared deviations [C, k] (one matmul)."""
    x = _masked(L.to_high(x), valid)
    one_hot = _masked(L.one_hot(labels, num_classes, x.dtype), valid)
    counts = jnp.sum(one_hot, axis=0)
    means = L.mm(one_hot.T, x) / jnp.maximum(counts, 1.0)[:, None]
    deviations = _masked(x - means[labels], valid)
    if diagonal:
        return ClassScatters(counts, means, L.mm(one_hot.T, deviations**2))

    def scatter_of(c: jax.Array) -> jax.Array:
        masked = jnp.where((labels == c)[:, None], deviations, 0.0)
        return masked.T @ deviations

    scatters = lax.map(scatter_of, jnp.arange(num_classes))
    return ClassScatters(counts, means, 0.5 * (scatters + jnp.swapaxes(scatters, 1, 2)))


def merge_class_scatters(a: ClassScatters, b: ClassScatters) -> ClassScatters:
    counts = a.counts + b.counts
    share_b = jnp.where(counts > 0, b.counts / jnp.where(counts > 0, counts, 1.0), 0.0)
    delta = b.means - a.means
    means = a.means + delta * share_b[:, None]
    weights = a.counts * share_b
    if a.scatters.ndim == 2:  # diagonals only
        return ClassScatters(counts, means, a.scatters + b.scatters + weights[:, None] * delta**2)
    scatters = a.scatters + b.scatters + weights[:, None, None] * delta[:, :, None] * delta[:, None, :]
    return ClassScatters(counts, means, scatters)
