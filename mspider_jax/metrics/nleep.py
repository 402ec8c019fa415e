"""N-LEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021): LEEP on Gaussian-mixture posteriors.

Computation (spec §5, the Google pactran `gmm_estimator` that Model Spider copies):

1. PCA to 80 % variance: exact eigendecomposition of the covariance; keep the first k components
   whose cumulative explained-variance ratio is *strictly* above 0.8 (sklearn's
   `searchsorted(cumsum(ratio), 0.8, side="right") + 1`); project the centred features, no whitening.
2. A Gaussian mixture with K components fitted by EM (`_gmm.py`: k-means++ seeding from `key`, one
   k-means run, full covariances by default, reg_covar = 1e-6, tol = 1e-3 on the mean log-likelihood
   lower bound, max_iter = 100); R = posterior responsibilities [N, K].
3. score = LEEP(R, y) (`leep.leep_from_probabilities`, the same convention's LEEP).

Conventions (they differ only in K and in LEEP's epsilons):
  "paper": K = 5·C (the N-LEEP paper, Google's stable_transfer, and the SFDA/ETran/PED/NCTI drivers),
    paper LEEP (no epsilons).
  "model_spider": K = max(min(C, ⌊0.2N⌋), ⌊0.1N⌋) — ⌊0.1N⌋ for any N >= 10·C, i.e. about ten points
    per component, which makes the responsibilities nearly one-hot — and Model Spider's LEEP with its
    1e-10 epsilons. EM costs O(N·K·k²) per iteration, so this convention is ~N/(50·C) times slower
    than "paper" (2x at N = 10⁴, C = 100; the reference did not finish in 300 s there).
  `num_components` overrides K in either convention; `covariance_type="diag"` fits diagonal
  Gaussians (O(N·K·k) per iteration) instead of the reference's full ones.
Output <= 0, larger is better. Not bit-reproducible against sklearn (its k-means++ draws come from
NumPy's global RNG); deterministic given `key`.

Static shapes: k depends on the spectrum, so the registered function is a thin host-side wrapper:
a compiled PCA stage, k read on the host, then a compiled stage (`nleep_from_projection`, jit- and
vmap-able for a fixed k) for the mixture and LEEP. `score_zoo` therefore runs models one by one for
this metric. The projection is zero-padded to a multiple of `PROJECTION_BUCKET` columns so that
models with nearby k share one compiled mixture stage (compiling it costs seconds, more than the fit
on a small task). The padding is exact: a zero column has mean 0 and variance reg_covar in every
component and no covariance with the other columns, so it adds the same constant to every
component's log-density and leaves the k-means distances, the responsibilities and the convergence
test (a difference of lower bounds) unchanged.

Precision policy: covariance eigendecomposition in float64 when available; the projected features
are rounded to the input dtype (float32 from torch, like sklearn's PCA output on float32 input),
and the EM follows `_gmm.py` (big products in that dtype, parameters and log-likelihoods in float64).

Complexity: O(N·D² + D³) PCA + k-means O(iterations·N·K·k) + EM O(iterations·N·K·k²).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mspider_jax.metrics import _gmm
from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics._registry import MetricSpec, register
from mspider_jax.metrics.leep import leep_from_probabilities

VARIANCE_RATIO = 0.8
PROJECTION_BUCKET = 8
PAPER_COMPONENTS_PER_CLASS = 5


def num_mixture_components(convention: str, num_samples: int, num_classes: int) -> int:
    """K: 5·C ("paper") or max(min(C, ⌊0.2N⌋), ⌊0.1N⌋) ("model_spider")."""
    if convention == "model_spider":
        return max(min(num_classes, int(0.2 * num_samples)), int(0.1 * num_samples))
    return PAPER_COMPONENTS_PER_CLASS * num_classes


def kept_components(explained_variance: np.ndarray, ratio: float = VARIANCE_RATIO) -> int:
    """sklearn's PCA(n_components=ratio) rule: the smallest k with cumulative ratio strictly > ratio."""
    variance = np.asarray(explained_variance, dtype=np.float64)
    cumulative = np.cumsum(variance / variance.sum())
    return int(min(np.searchsorted(cumulative, ratio, side="right") + 1, len(variance)))


@jax.jit
def _pca_spectrum(features: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return L.pca_eigh(features)


@functools.partial(jax.jit, static_argnames=("num_kept",))
def _project(features: jax.Array, components: jax.Array, mean: jax.Array, num_kept: int) -> jax.Array:
    projected = L.mm(L.to_high(features) - mean, components[:, :num_kept])
    return projected.astype(L.compute_dtype(features))


def pca_to_variance_ratio(features: jax.Array, ratio: float = VARIANCE_RATIO, pad_to_multiple: int = 1) -> jax.Array:
    """features [N, D] -> centred PCA scores [N, k] keeping `ratio` of the variance (input dtype).

    With pad_to_multiple = b > 1, zero columns are appended up to the next multiple of b.
    """
    variance, components, mean = _pca_spectrum(features)
    if not float(jnp.sum(variance)) > 0:
        raise ValueError("nleep: the features have zero variance; PCA is undefined")
    num_kept = kept_components(np.asarray(variance), ratio)
    projected = _project(features, components, mean, num_kept)
    padding = -num_kept % max(int(pad_to_multiple), 1)
    return jnp.pad(projected, ((0, 0), (0, padding))) if padding else projected


@functools.partial(
    jax.jit, static_argnames=("num_classes", "num_components", "convention", "covariance_type", "reg_covar", "tol", "max_iter")
)
def nleep_from_projection(
    projected: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    num_classes: int,
    num_components: int,
    convention: str = "paper",
    covariance_type: str = "full",
    reg_covar: float = _gmm.REG_COVAR,
    tol: float = _gmm.TOL,
    max_iter: int = _gmm.MAX_ITER,
) -> jax.Array:
    """Mixture + LEEP on already projected features [N, k] -> scalar <= 0 (jit- and vmap-able)."""
    resp, _ = _gmm.fit_predict_proba(
        projected, num_components, key, covariance_type=covariance_type, reg_covar=reg_covar, tol=tol, max_iter=max_iter
    )
    return leep_from_probabilities(resp, labels, num_classes, convention)


def nleep(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    num_components: int | None = None,
    covariance_type: str = "full",
    variance_ratio: float = VARIANCE_RATIO,
    reg_covar: float = _gmm.REG_COVAR,
    tol: float = _gmm.TOL,
    max_iter: int = _gmm.MAX_ITER,
) -> jax.Array:
    """N-LEEP of features [N, D] for labels [N] in 0..C-1 -> scalar <= 0 (larger is better).

    Options: num_components (K; default by convention), covariance_type ("full" | "diag"),
    variance_ratio (0.8), reg_covar (1e-6), tol (1e-3), max_iter (100). Needs `key` (default key(0)).
    """
    n = features.shape[0]
    k = num_mixture_components(convention, n, num_classes) if num_components is None else int(num_components)
    if not 1 <= k <= n:
        raise ValueError(f"nleep: a mixture of K={k} components needs N >= K samples, got N={n}")
    if covariance_type not in _gmm.COVARIANCE_TYPES:
        raise ValueError(f"nleep: covariance_type must be one of {_gmm.COVARIANCE_TYPES}, got {covariance_type!r}")
    key = jax.random.key(0) if key is None else key
    projected = pca_to_variance_ratio(features, variance_ratio, PROJECTION_BUCKET)
    return nleep_from_projection(
        projected, jnp.asarray(labels), key, num_classes=num_classes, num_components=k, convention=convention,
        covariance_type=covariance_type, reg_covar=reg_covar, tol=tol, max_iter=max_iter,
    )


register(
    MetricSpec(
        name="nleep",
        fn=nleep,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        is_randomized=True,
        paper="Li et al., CVPR 2021",
        jittable=False,
    )
)
