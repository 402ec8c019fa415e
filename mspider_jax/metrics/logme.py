"""LogME, the Logarithm of Maximum Evidence (You et al., "LogME: Practical Assessment of Pre-trained
Models for Transfer Learning", ICML 2021), for classification and regression targets.

Bayesian linear regression of each target column t on the (uncentred) features F with prior
w ~ N(0, α⁻¹I) and noise N(0, β⁻¹); α, β are set by the fixed-point iteration of the authors' code
(`_fit_fixed_point`, "Ranking and Tuning" arXiv 2021), which both conventions follow (spec §4):

  decomposition: N > D: eigh of FᵀF, σ_j = |eigenvalues| with √σ_j > 1e-10 kept (mask), the cutoff
                 applied to max(σ_j, ε₆₄·σ_max) as the reference's SVD noise does (`_kept`);
                 N <= D: eigh of F Fᵀ (the thin SVD's U and σ = s²), all N kept;
  per column:    x = U_kᵀ t, r0 = ‖t‖² − Σ x²; α = β = 1; at most 11 updates (evaluated through
                 p = σx² = (v_jᵀFᵀt)², without dividing by σ: `_column_evidence`)
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
`logme_evidences_from_moments` (for N <= D, where the kernel F Fᵀ is needed, streaming reads the
N·D <= D² values whole). The data-dependent `break` is a fixed 11-step `lax.fori_loop` that freezes the
state once converged; the retained rank k is a mask. Columns are vmapped.
On CPU, for D >= 1536, the N > D path skips the eigenvectors: the Gram is reduced to tridiagonal
form T = QᵀFᵀFQ, the spectrum comes from T (bisection) and m2, res2 from tridiagonal solves with
(T + λI) (`_evidences_tridiagonal`): 1.16-1.26x faster at N = 10⁴, D = 2048 on 2 CPU cores (after
compilation, which takes ~2 s longer), where the float64 `eigh` was ~70 % of the time; equal to
~1e-12 in float64, and a column whose residual is too ill-conditioned for the solve (labels almost
in the span of the features) makes the whole call use the eigh form.

Precision policy: float64 is required for the evidence (N/2·log β and the residual terms cancel).
FᵀF and Fᵀt are computed from *centred* float32 products plus the mean terms in float64
(`_linalg.uncentered_gram` / `uncentered_cross`), so float32 rounding scales with the data's spread,
not its offset; the eigendecomposition, the iteration and the evidence run in float64 when available.
A float32 Gram is not enough when labels (almost) lie in the span of the features: λ = α/β then falls
below the Gram's rounding level and the evidence is decided by rounding noise (5 % off, and different
from one CPU to another, on the test case). The in-memory call checks every column's final λ against
that level (`gram_resolves`) and, when it is below, recomputes the moments from float64 features
(cost: one float64 Gram, only in that case). The streaming path cannot re-read its rows and keeps the
float32 moments: stream float64 chunks for such data.

Complexity: O(N·D·min(N, D) + min(N, D)³ + N·D·K), memory O(D² + D·K).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
TRIDIAGONAL_TRUST_LIMIT = 1e9
TRIDIAGONAL_MIN_DIM = 1536  # "auto" uses the tridiagonal form on CPU from this feature dim on
# Eigenvalues of a float32 features' Gram bisected to 1e-10·‖FᵀF‖ instead of machine precision: the
# Gram's own float32 rounding is ~1e-7·‖FᵀF‖, and ~18 fewer bisection passes save ~0.1 s at D = 2048.
BISECTION_RTOL_FLOAT32 = 1e-10


def _fixed_point_evidence(
    sigma: jax.Array, keep: jax.Array, fit_terms: Callable[[jax.Array], tuple[jax.Array, jax.Array]], num_samples: Any, dim: int
) -> jax.Array:
    """Evidence of one target column from the kept spectrum (sigma, keep [k]) and
    `fit_terms(λ) -> (m2, res2)` (the posterior mean's squared norm and squared residual at λ = α/β).

    Returns (evidence, final λ = α/β, final res2)."""
    sigma = jnp.where(keep, sigma, 0.0)
    one = jnp.ones((), sigma.dtype)

    def update(alpha, beta):
        lam = alpha / beta
        gamma = jnp.sum(jnp.where(keep, sigma / (sigma + lam), 0.0))
        m2, res2 = fit_terms(lam)
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
    return evidence / num_samples, alpha / beta, res2


def _column_evidence(
    sigma: jax.Array, keep: jax.Array, power: jax.Array, energy: jax.Array, num_samples: Any, dim: int
) -> tuple[jax.Array, jax.Array]:
    """(evidence, final λ = α/β) of one target column in the eigenbasis.

    sigma, keep [k]; power = (v_jᵀFᵀt)² = σ_j·x_j² [k] (x = U_kᵀt); energy = ‖t‖². The reference's
    m2 = Σ σx²/(λ+σ)² and res2 = Σ x²/(1+σ/λ)² + (‖t‖² − Σx²) are evaluated as Σ p/(λ+σ)² and
    ‖t‖² − Σ p(σ+2λ)/(σ+λ)² (the same sums): nothing is divided by σ, so a kept eigenvalue at the
    rounding level (a dead ReLU unit, collinear features) adds ~p/λ² instead of its garbage x² =
    noise/σ, and the result no longer depends on how the rounding fell (see `_evidences_eigh`).
    """
    sigma_kept = jnp.where(keep, sigma, 0.0)
    power = jnp.where(keep, power, 0.0)

    def fit_terms(lam):
        m2 = jnp.sum(power / (lam + sigma_kept) ** 2)
        explained = jnp.sum(power * (sigma_kept + 2.0 * lam) / (sigma_kept + lam) ** 2)
        # a squared residual norm (>= 0); when t lies in the span of F it cancels to rounding
        # noise, which must not turn negative (β < 0, NaN evidence)
        return m2, jnp.maximum(energy - explained, 0.0)

    return _fixed_point_evidence(sigma, keep, fit_terms, num_samples, dim)[:2]


def _evidences(
    sigma: jax.Array, keep: jax.Array, power: jax.Array, target_energy: jax.Array, n: Any, d: int
) -> tuple[jax.Array, jax.Array]:
    """Evidence of every target column from the spectrum σ [k], the powers p = (v_jᵀFᵀt)² [k, K] and
    ‖t‖² [K] -> (evidences [K], final λ = α/β [K])."""
    column = jax.vmap(_column_evidence, in_axes=(None, None, 1, 0, None, None))
    return column(sigma, keep, power, target_energy, n, d)


def _kept(sigma: jax.Array) -> jax.Array:
    """Which eigenvalues σ = |λ| [D] of FᵀF the evidence keeps, as the reference does.

    The reference keeps s = √σ > 1e-10, with σ the singular values of FᵀF from a float64 SVD (with
    vectors). For an exactly rank-deficient F (dead ReLU units, duplicated features) that SVD returns
    rounding noise of order ε₆₄·σ_max, never exact zeros, so √noise > 1e-10 and it keeps every
    dimension, while `eigh` can return exact zeros (or negative noise) there and dropping them moved
    the evidence by ~½·log(α)/N each (5 % on a 3-dead-unit test, up to 0.02 on the mini zoo, and
    differently on each CPU). So the cutoff is applied to max(σ, ε₆₄·σ_max): the same decision
    whatever the rounding, and still the reference's 1e-10 for features of tiny scale.
    """
    noise_floor = jnp.finfo(jnp.float64).eps * jnp.max(sigma)
    return jnp.sqrt(jnp.maximum(sigma, noise_floor)) > SINGULAR_VALUE_CUTOFF


def _evidences_eigh(
    gram: jax.Array, cross: jax.Array, target_energy: jax.Array, n: Any
) -> tuple[jax.Array, jax.Array]:
    """N > D (evidences, λ) [K] through the eigendecomposition of the Gram FᵀF [D, D] and Fᵀt [D, K].

    σ = |eigenvalue|: the reference takes the *singular* values of FᵀF (an SVD), which are never
    negative, so an eigenvalue at the rounding level (an exactly rank-deficient F: dead units) is kept
    whatever its sign; clamping at 0 instead dropped about half of them, and each drop moves the
    evidence by ~½·log(α)/N (up to 0.02 on the mini zoo's features, differently on each CPU).
    """
    lam, vecs = L.eigh(gram)
    sigma = jnp.abs(lam)
    keep = _kept(sigma)
    power = (vecs.T @ cross) ** 2  # (V_kᵀ Fᵀ t)²  [D, K]
    return _evidences(sigma, keep, power, target_energy, n, gram.shape[0])


def _evidences_tridiagonal(
    gram: jax.Array, cross: jax.Array, target_energy: jax.Array, n: Any, bisection_rtol: float | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The same evidences from the tridiagonal form FᵀF = Q T Qᵀ, without eigenvectors.

    With b = Fᵀt (b̃ = Qᵀb) and s = (T + λI)⁻¹b̃ (a tridiagonal solve):
    m2 = Σ σx²/(λ+σ)² = ‖s‖² and res2 = ‖t‖² − Σ x²σ(σ+2λ)/(λ+σ)² = ‖t‖² − b̃·s − λ‖s‖² (>= 0).
    These sums also take the components of eigenvalues below the cutoff (σ <= 1e-20), which add at
    most (uᵀt)²·σ/λ² each; γ and the log-determinant use the kept eigenvalues, as in the eigh form.

    Returns (evidences [K], trusted [K], final λ [K]). res2 is a difference, and the solve's rounding
    error in it is about ε·(σ_max/λ)·‖t‖²: a column is trusted when (σ_max/λ)·‖t‖²/res2 <= 1e9 (error <~ 1e-7
    relative). Labels almost in the span of the features drive λ to 0 and break this (measured
    indicator 3e22 on such a test case, 1e6-2e7 on the benchmark's synthetic tasks).
    """
    diagonal, off_diagonal, reflectors, taus = L.tridiagonalize(gram)
    rotated = L.tridiagonal_basis_transpose(reflectors, taus, L.to_high(cross))  # [D, K]
    sigma = jnp.abs(L.tridiagonal_eigenvalues(diagonal, off_diagonal, bisection_rtol))  # as `_evidences_eigh`
    keep = _kept(sigma)
    zero = jnp.zeros((1,), off_diagonal.dtype)
    below, above = jnp.concatenate([zero, off_diagonal]), jnp.concatenate([off_diagonal, zero])

    def column(b: jax.Array, energy: jax.Array) -> jax.Array:
        def fit_terms(lam):
            s = lax.linalg.tridiagonal_solve(below, diagonal + lam, above, b[:, None])[:, 0]
            m2 = jnp.sum(s * s)
            return m2, jnp.maximum(energy - jnp.dot(b, s) - lam * m2, 0.0)

        evidence, lam, res2 = _fixed_point_evidence(sigma, keep, fit_terms, n, gram.shape[0])
        indicator = jnp.max(sigma) / lam * energy / jnp.maximum(res2, jnp.finfo(res2.dtype).tiny)
        return evidence, indicator <= TRIDIAGONAL_TRUST_LIMIT, lam

    return jax.vmap(column, in_axes=(1, 0))(rotated, target_energy)


def logme_evidences_from_moments(
    moments: _stats.Moments, decomposition: str = "auto", bisection_rtol: float | None = None
) -> jax.Array:
    """Per-column LogME evidence (N > D path) from the moments of (features, targets) -> [K].

    decomposition: "eigh" (eigenvectors of FᵀF), "tridiagonal" (Householder tridiagonal form and
    tridiagonal solves, `_evidences_tridiagonal`: equal to ~1e-12 in float64 and 1.2x faster on CPU,
    where the float64 `eigh` dominates; when a column's residual is too ill-conditioned for it, the
    eigh form is computed instead), or "auto": tridiagonal on CPU for D >= 1536, else eigh. Measured on
    2 cores (N = 4000): the tridiagonal form runs 0.60 s vs 0.66-0.72 s at D = 1536 and 1.2-1.5 s vs
    1.5-1.8 s at D = 2048, but it compiles ~2 s longer (bisection, the guarded fallback), so it pays
    off from a few calls of one shape on (a zoo); below D = 1536 it is no faster. On GPU `eigh` is fast.

    bisection_rtol: accuracy of the tridiagonal form's eigenvalues relative to ‖FᵀF‖ (None: machine
    precision); `logme_evidences` sets `BISECTION_RTOL_FLOAT32` when the features are float32.
    """
    return _evidences_and_lambdas(moments, decomposition, bisection_rtol)[0]


def _evidences_and_lambdas(
    moments: _stats.Moments, decomposition: str, bisection_rtol: float | None
) -> tuple[jax.Array, jax.Array]:
    """`logme_evidences_from_moments` and the final λ = α/β of every column ([K] each)."""
    if decomposition == "auto":
        cpu_sized = jax.default_backend() == "cpu" and moments.mean.shape[0] >= TRIDIAGONAL_MIN_DIM
        decomposition = "tridiagonal" if cpu_sized else "eigh"
    if decomposition not in ("eigh", "tridiagonal"):
        raise ValueError(f"logme: unknown decomposition {decomposition!r}; use 'auto', 'eigh' or 'tridiagonal'")
    args = (_stats.uncentered_gram(moments), _stats.uncentered_cross(moments), moments.target_energy, moments.count)
    if decomposition == "eigh":
        return _evidences_eigh(*args)
    evidences, trusted, lambdas = _evidences_tridiagonal(*args, bisection_rtol)
    return lax.cond(jnp.all(trusted), lambda: (evidences, lambdas), lambda: _evidences_eigh(*args))


def gram_resolves(moments: _stats.Moments, lambdas: jax.Array, gram_epsilon: float) -> jax.Array:
    """Whether a Gram rounded at relative level `gram_epsilon` resolves the fitted posteriors.

    The scatter's rounding perturbs each eigenvalue by up to ~ε·tr(scatter). The evidence weighs the
    spectrum through σ/(σ + λ): while every column's final λ = α/β stays above that level the
    perturbation is a small fraction of each weight; when labels (almost) lie in the span of the
    features λ falls towards 0 and the evidence is decided by eigenvalues below the rounding level.
    Measured: λ / (ε₃₂·tr) is 55-650 on the benchmark's synthetic tasks and 5e-9 on such a case,
    where a float32 Gram's evidence is 5 % off the float64 reference (8 % before the σ-free form
    of `_column_evidence`; machine-dependent).
    """
    return jnp.min(lambdas) >= gram_epsilon * jnp.trace(moments.scatter)


def logme_evidences(features: jax.Array, targets: jax.Array, decomposition: str = "auto") -> jax.Array:
    """Per-column LogME evidence. features: [N, D], targets: [N, K] float -> [K] in high_dtype().

    `decomposition` applies to N > D (see `logme_evidences_from_moments`)."""
    n, d = features.shape
    if n > d:
        moments = _stats.moments(features, targets)
        evidences, lambdas = _evidences_and_lambdas(moments, decomposition, _bisection_rtol(features.dtype))
        gram_epsilon = L.refinable_gram(features.dtype)
        if gram_epsilon is None:
            return evidences

        def in_high_precision() -> jax.Array:
            return _evidences_and_lambdas(_stats.moments(L.to_high(features), targets), decomposition, None)[0]

        return lax.cond(gram_resolves(moments, lambdas, gram_epsilon), lambda: evidences, in_high_precision)
    targets_high = L.to_high(targets)
    lam, vecs = L.eigh(L.uncentered_kernel(features))
    sigma = jnp.maximum(lam, 0.0)
    keep = jnp.ones_like(sigma, dtype=bool)  # the thin SVD keeps all N singular values
    x = vecs.T @ targets_high  # U_kᵀ t  [N, K]
    return _evidences(sigma, keep, sigma[:, None] * x**2, jnp.sum(targets_high**2, axis=0), n, d)[0]


def _bisection_rtol(dtype: Any) -> float | None:
    """`BISECTION_RTOL_FLOAT32` for float32 features (their Gram's own rounding is ~1e-7 relative),
    else None (machine precision)."""
    return BISECTION_RTOL_FLOAT32 if jnp.dtype(dtype) == jnp.float32 else None


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
    decomposition: str = "auto",
) -> jax.Array:
    """LogME of features [N, D] for labels [N] in 0..C-1 (classification, num_classes=C) or float
    targets [N, K] (regression, num_classes=None) -> scalar (mean evidence; larger is better).

    decomposition: "auto", "eigh" or "tridiagonal" (N > D; see `logme_evidences_from_moments`)."""
    del convention, key  # the conventions coincide; deterministic
    features = L.to_compute(features)
    return jnp.mean(logme_evidences(features, _targets(labels, num_classes, features.dtype), decomposition))


def logme_streaming(stream: Any, *, num_classes: int | None, decomposition: str = "auto", **_: Any) -> jax.Array:
    """LogME from row chunks (one pass; `streaming.Stream`). For N <= D the rows are read whole:
    they take no more memory than the D×D Gram, and the kernel path needs them."""
    n, d = stream.num_rows, stream.dim("features")
    if n <= d:
        features = L.to_compute(jnp.asarray(stream.read_all("features")))
        return jnp.mean(logme_evidences(features, _targets(jnp.asarray(stream.labels), num_classes, features.dtype)))
    num_targets = num_classes if num_classes is not None else stream.labels.shape[1]
    moments = _stats.stream_moments(stream, num_targets, num_classes)
    return jnp.mean(logme_evidences_from_moments(moments, decomposition, _bisection_rtol(stream.chunk_dtype("features"))))


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
