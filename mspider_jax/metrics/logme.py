"""LogME, the Logarithm of Maximum Evidence (You et al., "LogME: Practical Assessment of Pre-trained
Models for Transfer Learning", ICML 2021), for classification and regression targets.

Bayesian linear regression of each target column t on the (uncentred) features F with prior
w ~ N(0, α⁻¹I) and noise N(0, β⁻¹); α, β are set by the fixed-point iteration of the authors' code
(`_fit_fixed_point`, "Ranking and Tuning" arXiv 2021), which both conventions follow (spec §4):

  decomposition: N > D: eigh of FᵀF, σ_j = eigenvalues with √σ_j > 1e-10 kept (mask);
                 N <= D: eigh of F Fᵀ (the thin SVD's U and σ = s²), all N kept;
  per column:    x = U_kᵀ t, r0 = ‖t‖² − Σ x²; α = β = 1; at most 11 updates
                   λ = α/β, γ = Σ σ/(σ+λ), m2 = Σ σ x²/(λ+σ)², res2 = Σ x²/(1+σ/λ)² + r0,
                   α = γ/(m2 + 1e-5), β = (N − γ)/(res2 + 1e-5), stop if |α/β − λ|/λ <= 1e-3;
  evidence:      [D/2 log α + N/2 log β − ½ Σ_kept log(α + βσ) − β/2 res2 − α/2 m2 − N/2 log 2π] / N
                 with the final α, β and the m2, res2 of the last update (the reference's mixing).

The score is the mean evidence over the target columns: the C one-hot columns for classification,
the K columns of float targets [N, K] for regression (spec §10.7). Larger is better.

Conventions: "paper" and "model_spider" coincide (Model Spider's LogME is the authors' code).

Implementation: U is never formed for N > D: x = V_kᵀ(Fᵀt)/s_k, so the only O(N·D²) product is the
Gram, and the score is a function of `_stats.Moments` of (F, targets): FᵀF = S + N·F̄F̄ᵀ and
Fᵀt = Σ t(x − F̄) + F̄·Σt, with ‖t‖² = Σt². The in-memory path and the one-pass streaming path share
`logme_from_moments` (for N <= D, where the kernel F Fᵀ is needed, streaming reads the N·D <= D²
values whole). The data-dependent `break` is a fixed 11-step `lax.fori_loop` that freezes the state once
converged; the retained rank k is a mask. Columns are vmapped.

Precision policy: float64 is required for the evidence (N/2·log β and the residual terms cancel).
FᵀF and Fᵀt are computed from *centred* float32 products plus the mean terms in float64
(`_linalg.uncentered_gram` / `uncentered_cross`), so float32 rounding scales with the data's spread,
not its offset; the eigendecomposition, the iteration and the evidence run in float64 when available.

Complexity: O(N·D·min(N, D) + min(N, D)³ + N·D·K), memory O(D² + D·K).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import _stats
from mspider_jax.metrics._registry import MetricSpec, register

MAX_ITERATIONS = 11
TOLERANCE = 1e-3
EPSILON = 1e-5
SINGULAR_VALUE_CUTOFF = 1e-10


def _column_evidence(
    sigma: jax.Array, keep: jax.Array, x2: jax.Array, r0: jax.Array, num_samples: int, dim: int
) -> jax.Array:
    """Evidence of one target column. sigma, keep, x2: [k]; r0: scalar -> scalar."""
    sigma = jnp.where(keep, sigma, 0.0)
    x2 = jnp.where(keep, x2, 0.0)
    one = jnp.ones((), sigma.dtype)

    def update(alpha, beta):
        lam = alpha / beta
        gamma = jnp.sum(jnp.where(keep, sigma / (sigma + lam), 0.0))
        m2 = jnp.sum(sigma * x2 / (lam + sigma) ** 2)
        res2 = jnp.sum(x2 / (1.0 + sigma / lam) ** 2) + r0
        new_alpha = gamma / (m2 + EPSILON)
        new_beta = (num_samples - gamma) / (res2 + EPSILON)
        converged = jnp.abs(new_alpha / new_beta - lam) / lam <= TOLERANCE
        return new_alpha, new_beta, m2, res2, converged

    def body(_, state):
        alpha, beta, m2, res2, done = state
        new = update(alpha, beta)
        keep_old = lambda old, fresh: jnp.where(done, old, fresh)  # noqa: E731
        return (
            keep_old(alpha, new[0]),
            keep_old(beta, new[1]),
            keep_old(m2, new[2]),
            keep_old(res2, new[3]),
            done | new[4],
        )

    zero = jnp.zeros((), sigma.dtype)
    alpha, beta, m2, res2, _ = lax.fori_loop(0, MAX_ITERATIONS, body, (one, one, zero, zero, jnp.array(False)))
    log_det = jnp.sum(jnp.where(keep, jnp.log(alpha + beta * sigma), 0.0))
    evidence = (
        dim / 2.0 * jnp.log(alpha)
        + num_samples / 2.0 * jnp.log(beta)
        - 0.5 * log_det
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - num_samples / 2.0 * math.log(2.0 * math.pi)
    )
    return evidence / num_samples


def _evidences(sigma: jax.Array, keep: jax.Array, x: jax.Array, target_energy: jax.Array, n: Any, d: int) -> jax.Array:
    """Evidence of every target column from the spectrum σ [k], the projections x = U_kᵀt [k, K] and
    ‖t‖² [K] -> [K]."""
    x2 = x**2
    # ‖t‖² − ‖U_kᵀt‖² is a squared residual norm (>= 0); when t lies in the span of F it cancels to
    # rounding noise, which must not turn negative (β < 0, NaN evidence).
    r0 = jnp.maximum(target_energy - jnp.sum(x2, axis=0), 0.0)
    column = jax.vmap(_column_evidence, in_axes=(None, None, 1, 0, None, None))
    return column(sigma, keep, x2, r0, n, d)


def logme_evidences_from_moments(moments: _stats.Moments) -> jax.Array:
    """Per-column LogME evidence (N > D path) from the moments of (features, targets) -> [K]."""
    d = moments.mean.shape[0]
    lam, vecs = L.eigh(_stats.uncentered_gram(moments))
    sigma = jnp.maximum(lam, 0.0)
    keep = jnp.sqrt(sigma) > SINGULAR_VALUE_CUTOFF
    projected = vecs.T @ _stats.uncentered_cross(moments)  # V_kᵀ Fᵀ t  [D, K]
    x = projected / jnp.where(keep, jnp.sqrt(jnp.where(keep, sigma, 1.0)), 1.0)[:, None]
    x = jnp.where(keep[:, None], x, 0.0)
    return _evidences(sigma, keep, x, moments.target_energy, moments.count, d)


def logme_evidences(features: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-column LogME evidence. features: [N, D], targets: [N, K] float -> [K] in high_dtype()."""
    n, d = features.shape
    if n > d:
        return logme_evidences_from_moments(_stats.moments(features, targets))
    targets_high = L.to_high(targets)
    lam, vecs = L.eigh(L.uncentered_kernel(features))
    sigma = jnp.maximum(lam, 0.0)
    keep = jnp.ones_like(sigma, dtype=bool)  # the thin SVD keeps all N singular values
    x = vecs.T @ targets_high  # U_kᵀ t  [N, K]
    return _evidences(sigma, keep, x, jnp.sum(targets_high**2, axis=0), n, d)


def _targets(labels: jax.Array, num_classes: int | None, dtype: Any) -> jax.Array:
    """One-hot columns (classification) or the float targets [N, K] themselves (regression)."""
    return labels if num_classes is None else L.one_hot(labels, num_classes, dtype)


def logme(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int | None,
    convention: str = "paper",
    key: jax.Array | None = None,
) -> jax.Array:
    """LogME of features [N, D] for labels [N] in 0..C-1 (classification, num_classes=C) or float
    targets [N, K] (regression, num_classes=None) -> scalar (mean evidence; larger is better)."""
    del convention, key  # the conventions coincide; deterministic
    features = L.to_compute(features)
    return jnp.mean(logme_evidences(features, _targets(labels, num_classes, features.dtype)))


def logme_streaming(stream: Any, *, num_classes: int | None, **_: Any) -> jax.Array:
    """LogME from row chunks (one pass; `streaming.Stream`). For N <= D the rows are read whole:
    they take no more memory than the D×D Gram, and the kernel path needs them."""
    n, d = stream.num_rows, stream.dim("features")
    if n <= d:
        features = L.to_compute(jnp.asarray(stream.read_all("features")))
        return jnp.mean(logme_evidences(features, _targets(jnp.asarray(stream.labels), num_classes, features.dtype)))
    num_targets = num_classes if num_classes is not None else stream.labels.shape[1]
    return jnp.mean(logme_evidences_from_moments(_stats.stream_moments(stream, num_targets, num_classes)))


register(
    MetricSpec(
        name="logme",
        fn=logme,
        needs=frozenset({"features"}),
        targets=frozenset({"classification", "regression"}),
        paper="You et al., ICML 2021",
        # Evidence per one-hot column needs no within-class spread: one-sample classes are valid.
        min_class_size=1,
        streaming=logme_streaming,
    )
)
