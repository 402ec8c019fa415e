"""NCTI: Neural Collapse Transferability Index (Wang et al., "How Far Pre-trained Models Are from
Neural Collapse on the Target Dataset Informs their Transferability", ICCV 2023).

Per model (reference BUserName/NCTI `NCTI_Score`, spec §10.3) three components, computed on the
64-dim PCA projection X of the features:

1. τ = max(exp(-Σ_{k<32} explained_variance_k), 1e-10) (covariance eigenvalues, normaliser N-1).
2. An sklearn `LinearDiscriminantAnalysis` on (X, y): solver='eigen' with shrinkage τ, or
   solver='svd' (tol 1e-4) when τ hits the 1e-10 floor. We reproduce both paths:
   * eigen: Σ_w = Σ_c π_c·shrunk(cov_c) = (1-τ)Σ_w⁰ + τ(tr Σ_w⁰/d)·I (population covariances),
     S_b = shrunk(cov(X)) - Σ_w, V = generalised eigenvectors of (S_b, Σ_w) by decreasing eigenvalue,
     Σ_w-orthonormal (Cholesky Σ_w = RRᵀ, eigh of R⁻¹S_bR⁻ᵀ); L = X·V[:, :min(C-1, d)];
     decision function X·(Σ_w⁻¹μ_c) - ½μ_cᵀΣ_w⁻¹μ_c + log π_c;
   * svd: sklearn's whitening path (within-class std scaling, SVD rank cut at tol, between-class SVD
     rank cut at tol·S₀; sklearn >= 1.6 scales by 1/N), with the data-dependent ranks as masks.
3. S_seli = ‖L - mean(L)‖_* (nuclear norm), S_ncc = mean_i Pr[i, y_i] with Pr = softmax(decision),
   S_vc = log Σ_c ‖Pr[y == c, :]‖_*.

Zoo-level combination (the reference's evaluation script): NCTI_m = mm(S_ncc) + mm(S_seli) - mm(S_vc)
with mm(v) = (v - min)/(max - min) over the candidate models (a component equal for all models
contributes 0, see `etran.min_max`).

PCA: the reference's `PCA(64)` is sklearn's unseeded randomized SVD (its NCTI components move ~0.3 %
between runs on gap-free spectra). Default here: `pca_solver="randomized"` — the same algorithm family,
seeded by `key` (so deterministic), with a wider block (2k+16 columns vs k+10) and 2 power iterations
instead of 7 (7 passes over the features, no D×D matrix); at N=10⁴, D=2048 its explained variances
are within ~1e-3 and its subspace within cos 0.998 of the exact ones on the benchmark's synthetic task
(9e-3 and cos 0.97 with weaker class structure, separation 0.3, where the 64th eigenvalue has no gap;
the NCTI components then move by 2e-3, 1e-4, 2e-4). `pca_solver="subspace"`/"eigh" give the exact projection (slower: they form the D×D
covariance). `projection` (components [D, k]) injects a projection for tests and parity runs.

Conventions: NCTI is not part of Model Spider's benchmark; both conventions follow the reference.
Larger is better. Requires min(N, D) >= 64, 2 classes, 2 samples per class.

Precision policy: the products with the N×D features in the input dtype (the reference's sklearn
PCA keeps float32), everything on the 64-dim projection in float64 when available.

Complexity: PCA O((2q+3)·N·D·k) (randomized) + O(N·k² + k³) LDA + O(N·C·d + C·n_max·C·min(n_max, C))
for the posteriors and the per-class nuclear norms (n_max: the largest class).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import _pca
from mspider_jax.metrics import gbc as gbc_lib
from mspider_jax.metrics._registry import MetricSpec, register
from mspider_jax.metrics.etran import min_max
from mspider_jax.metrics.sfda import shrink

NUM_COMPONENTS = 64
TAU_COMPONENTS = 32
TAU_FLOOR = 1e-10
SVD_TOL = 1e-4  # sklearn LinearDiscriminantAnalysis(tol=1e-4)


def _nuclear_norm_from_gram(gram: jax.Array) -> jax.Array:
    """Σ of singular values of A from its Gram AᵀA (or AAᵀ) [..., m, m]: Σ sqrt(max(eig, 0)).

    The GPU's batched symmetric eigensolver returned NaN for some of the near rank-one per-class
    Grams of confident posteriors (H200, N=50 000, C=100); the eigenvalues of a PSD matrix are its
    singular values, so any Gram whose eigenvalues are not finite is redone with an SVD (only then).
    """
    eigenvalues = jnp.linalg.eigvalsh(gram)
    finite = jnp.all(jnp.isfinite(eigenvalues), axis=-1, keepdims=True)
    eigenvalues = jax.lax.cond(
        jnp.all(finite),
        lambda: eigenvalues,
        lambda: jnp.where(finite, eigenvalues, jnp.linalg.svd(gram, compute_uv=False)),
    )
    return jnp.sum(jnp.sqrt(jnp.maximum(eigenvalues, 0.0)), axis=-1)


def _eigen_lda(x: jax.Array, labels: jax.Array, num_classes: int, tau: jax.Array, num_directions: int):
    """sklearn's solver='eigen' LDA with shrinkage tau on x [N, d].

    Returns (transformed [N, num_directions], decision function [N, C]).
    """
    n, d = x.shape
    means, counts = L.class_means(x, labels, num_classes)
    priors = counts / n
    deviations = x - means[labels]
    within = shrink(deviations.T @ deviations / n, tau)  # Σ_c π_c·shrunk(cov_c): shrinking is linear
    centred = x - jnp.mean(x, axis=0)
    total = shrink(centred.T @ centred / n, tau)
    between = total - within
    chol = jnp.linalg.cholesky(within)
    half = jsp.linalg.solve_triangular(chol, between, lower=True)  # R⁻¹S_b
    reduced = jsp.linalg.solve_triangular(chol, half.T, lower=True)  # R⁻¹S_bR⁻ᵀ
    _, w = jnp.linalg.eigh(0.5 * (reduced + reduced.T))
    vectors = jsp.linalg.solve_triangular(chol.T, w[:, ::-1], lower=False)  # R⁻ᵀW, decreasing
    transformed = x @ vectors[:, :num_directions]
    coef = jsp.linalg.cho_solve((chol, True), means.T)  # Σ_w⁻¹μ_c = (V Vᵀ)μ_c, [d, C]
    decision = x @ coef - 0.5 * jnp.sum(means * coef.T, axis=1) + jnp.log(priors)
    return transformed, decision


def _svd_lda(x: jax.Array, labels: jax.Array, num_classes: int, num_directions: int):
    """sklearn's solver='svd' LDA (tol 1e-4) on x [N, d]; ranks are applied as masks.

    Returns (transformed [N, num_directions], decision function [N, C]).
    """
    n, d = x.shape
    means, counts = L.class_means(x, labels, num_classes)
    priors = counts / n
    within = x - means[labels]
    std = jnp.std(within, axis=0)
    std = jnp.where(std == 0, 1.0, std)
    scaled = within / std / jnp.sqrt(n)
    s2, v = jnp.linalg.eigh(scaled.T @ scaled)  # right singular vectors of the scaled data
    s2, v = s2[::-1], v[:, ::-1]
    s = jnp.sqrt(jnp.maximum(s2, 0.0))
    keep = s > SVD_TOL
    scalings = jnp.where(keep, (v / std[:, None]) / jnp.where(keep, s, 1.0), 0.0)  # [d, d], masked
    xbar = priors @ means
    class_factor = 1.0 / (num_classes - 1)
    centres = (jnp.sqrt(n * priors * class_factor)[:, None] * (means - xbar)) @ scalings  # [C, d]
    t2, v2 = jnp.linalg.eigh(centres.T @ centres)
    t2, v2 = t2[::-1], v2[:, ::-1]
    t = jnp.sqrt(jnp.maximum(t2, 0.0))
    keep2 = t > SVD_TOL * t[0]
    final = jnp.where(keep2, scalings @ v2, 0.0)  # [d, d], masked columns beyond the rank
    coef = (means - xbar) @ final
    intercept = -0.5 * jnp.sum(coef**2, axis=1) + jnp.log(priors)
    coef_full = coef @ final.T  # [C, d]
    intercept = intercept - xbar @ coef_full.T
    transformed = (x - xbar) @ final[:, :num_directions]
    decision = x @ coef_full.T + intercept
    return transformed, decision


def _class_blocks(labels: jax.Array, num_classes: int, max_class_size: int) -> tuple[jax.Array, jax.Array]:
    """Row indices of each class, padded: -> (indices [C, n_max], valid mask [C, n_max])."""
    order = jnp.argsort(labels, stable=True)
    counts = jnp.zeros((num_classes,), jnp.int32).at[labels].add(1)
    starts = jnp.cumsum(counts) - counts
    slots = jnp.arange(max_class_size)
    valid = slots[None, :] < counts[:, None]
    positions = jnp.where(valid, starts[:, None] + slots[None, :], 0)
    return order[positions], valid


def class_nuclear_norms(probs: jax.Array, labels: jax.Array, num_classes: int, max_class_size: int) -> jax.Array:
    """‖probs[labels == c, :]‖_* for each class c -> [C], via padded per-class blocks."""
    indices, valid = _class_blocks(labels, num_classes, max_class_size)
    blocks = jnp.where(valid[:, :, None], probs[indices], 0.0)  # [C, n_max, C]
    if max_class_size <= probs.shape[1]:
        grams = blocks @ jnp.swapaxes(blocks, 1, 2)
    else:
        grams = jnp.swapaxes(blocks, 1, 2) @ blocks
    return _nuclear_norm_from_gram(grams)


def ncti_components(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    max_class_size: int,
    num_components: int = NUM_COMPONENTS,
    pca_solver: str = "randomized",
    projection: jax.Array | None = None,
) -> jax.Array:
    """Per-model NCTI components of features [N, D]: [S_ncc, S_seli, S_vc].

    `max_class_size` (the largest class count) is supplied by the dispatch from the labels.
    """
    del convention  # the conventions coincide
    if projection is not None:
        x = gbc_lib.project_features(features, num_components, projection=projection, pca_solver=pca_solver, key=key)
        variance = jnp.var(x, axis=0, ddof=1)  # the injected axes' explained variances
    else:
        n, dim = features.shape
        if min(n, dim) < num_components:
            raise ValueError(f"ncti: PCA to {num_components} dimensions needs N and D >= {num_components}, got N={n}, D={dim}")
        x, variance, _ = _pca.top_pca(features, num_components, solver=pca_solver, key=key)
    tau = jnp.maximum(jnp.exp(-jnp.sum(variance[:TAU_COMPONENTS])), TAU_FLOOR)
    num_directions = min(num_classes - 1, x.shape[1])
    # Only the path sklearn would take runs (under vmap the cond becomes a select of both).
    transformed, decision = jax.lax.cond(
        tau == TAU_FLOOR,
        lambda: _svd_lda(x, labels, num_classes, num_directions),
        lambda: _eigen_lda(x, labels, num_classes, tau, num_directions),
    )

    centred = transformed - jnp.mean(transformed, axis=0)
    seli = _nuclear_norm_from_gram(centred.T @ centred)
    probs = jax.nn.softmax(decision, axis=1)
    ncc = jnp.mean(jnp.take_along_axis(probs, labels[:, None], axis=1))
    vc = jnp.log(jnp.sum(class_nuclear_norms(probs, labels, num_classes, max_class_size)))
    return jnp.stack([ncc, seli, vc])


def combine_ncti(components: np.ndarray) -> np.ndarray:
    """[M, 3] components (S_ncc, S_seli, S_vc) -> [M] NCTI = mm(S_ncc) + mm(S_seli) - mm(S_vc)."""
    scaled = min_max(components)
    return scaled[:, 0] + scaled[:, 1] - scaled[:, 2]


def _label_statics(labels: np.ndarray, num_classes: int) -> dict[str, int]:
    return {"max_class_size": int(np.bincount(np.asarray(labels), minlength=num_classes).max())}


register(
    MetricSpec(
        name="ncti",
        fn=ncti_components,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        is_zoo_relative=True,
        combine_zoo=combine_ncti,
        paper="Wang et al., ICCV 2023",
        is_randomized=True,  # the default randomized PCA starts from a key-seeded block
        label_statics=_label_statics,
    )
)
