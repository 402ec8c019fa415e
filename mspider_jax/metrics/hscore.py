"""H-Score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
Learning", ICIP 2019).

    H = tr( pinv(Σ_f) · Σ_g ),  Σ_f = cov(F),  Σ_g = cov(E[F | y])

with both covariances normalised by N - 1 (spec §1). We use the equivalent class form
    H = Σ_c n_c/(N-1) · d_cᵀ pinv(Σ_f) d_c,   d_c = μ_c - F̄,
so Σ_g is never built. `pinv` keeps every eigenvalue above `rtol · max` with `rtol = 1e-15` like the
reference's numpy `pinv(rcond=1e-15)` (essentially the inverse on the numerical range; a singular Σ_f
with N <= D makes the score blow up there too).

Conventions: "paper" and "model_spider" coincide (Model Spider implements the paper's definition).
Invariant to a global rescaling of F and to permuting the labels. Classification only.

Precision policy: F is centred (mean accumulated in float64), then FᵀF and the class sums run in the
input dtype (float32 from torch: the O(N·D²) part); the solve with Σ_f and the final
quadratic forms run in float64 when available (`_linalg.precision_scope`). pinv(Σ_f)·d_c is a Cholesky
solve when Σ_f is positive definite to working precision (the usual N > D case; equal to the pinv
there) and the eigh pseudo-inverse otherwise (`_linalg.psd_solve`). When that pseudo-inverse inverts
eigenvalues below ~10 ulps of a float32 scatter's rounding (`_linalg.psd_solver_resolved`: rank-
deficient real features, e.g. dead ReLU units; 0.1-0.2 % off on some mini-zoo PTMs), the in-memory
call recomputes the moments from float64 features; the streaming path keeps its float32 moments.

Statistics: the score is a function of `_stats.Moments` (N, F̄, the centred scatter and the class
sums), shared by the in-memory path and the one-pass streaming path (`hscore_from_moments`).

Complexity: O(N·D² + N·C·D + D³/3) (Cholesky; D³ eigh when Σ_f is singular), memory O(D² + C·D).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import _stats
from mspider_jax.metrics._registry import MetricSpec, register

PINV_RTOL = 1e-15


def hscore_from_moments(moments: _stats.Moments, rtol: float = PINV_RTOL) -> jax.Array:
    """H-Score from the moments of (features, one-hot labels) -> scalar >= 0."""
    return _hscore_resolved(moments, rtol, None)[0]


def _hscore_resolved(moments: _stats.Moments, rtol: float, gram_epsilon: float | None) -> tuple[jax.Array, jax.Array]:
    """(H-Score, whether a scatter rounded at `gram_epsilon` resolves its pseudo-inverse)."""
    n = moments.count
    cov = moments.scatter / (n - 1)
    counts = moments.target_sums
    # Centred class sums = n_c (μ_c - F̄); empty classes give 0 and weigh 0.
    deviations = moments.cross / jnp.maximum(counts, 1.0)[:, None]
    solve, resolved = L.psd_solver_resolved(cov, rtol, gram_epsilon)
    solved = solve(deviations.T)  # pinv(Σ_f) d_c, [D, C]
    quad = jnp.sum(L.to_high(deviations).T * solved, axis=0)  # d_cᵀ pinv(Σ_f) d_c
    return jnp.sum(counts * quad) / (n - 1), resolved


def hscore(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    rtol: float = PINV_RTOL,
) -> jax.Array:
    """H-Score of features [N, D] for labels [N] in 0..C-1 -> scalar >= 0 (larger is better)."""
    del convention, key  # the conventions coincide; deterministic
    features = L.to_compute(features)
    one_hot = L.one_hot(labels, num_classes, features.dtype)
    gram_epsilon = L.refinable_gram(features.dtype)
    score, resolved = _hscore_resolved(_stats.moments(features, one_hot), rtol, gram_epsilon)
    if gram_epsilon is None:
        return score
    # Σ_f's pseudo-inverse reaches eigenvalues below the float32 scatter's rounding (rank-deficient
    # features): the score would be rounding noise, so the moments are recomputed in float64.
    return jax.lax.cond(
        resolved, lambda: score, lambda: hscore_from_moments(_stats.moments(L.to_high(features), one_hot), rtol)
    )


def hscore_streaming(stream: Any, *, num_classes: int, rtol: float = PINV_RTOL, **_: Any) -> jax.Array:
    """H-Score from row chunks (one pass; `streaming.Stream`)."""
    return hscore_from_moments(_stats.stream_moments(stream, num_classes, num_classes), rtol)


register(
    MetricSpec(
        name="hscore",
        fn=hscore,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        paper="Bao et al., ICIP 2019",
        streaming=hscore_streaming,
    )
)
