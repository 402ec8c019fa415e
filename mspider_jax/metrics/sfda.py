"""SFDA: Self-challenging Fisher Discriminant Analysis (Shao et al., "Not All Models Are Equal:
Predicting Model Transferability in a Self-challenging Fisher Space", ECCV 2022).

What the reference (TencentARC/SFDA `SFDA_Score`, spec §10.1) computes, in four steps:

1. First fit of a shrunk LDA: priors π_c, class means μ_c, within-class covariance
   Σ_w = Σ_c π_c·cov_c (population covariances), shrinkage s = max(exp(-5·λ̂), 1e-10) with λ̂ from
   *exactly three* double power-iteration steps on Σ_w (x₀ = Σ_w·1), and
   Σ_w^s = (1-s)·Σ_w + s·(tr Σ_w / D)·I. The reference solves the generalized eigenproblem
   (S_b, Σ_w^s) and keeps all D eigenvectors, so its classifier is the plain shrunk LDA
   p(c|x) = softmax_c(xᵀΣ⁻¹μ_c - ½μ_cᵀΣ⁻¹μ_c + log π_c); we solve with a Cholesky factor instead.
2. "Soften": p' = softmax_row(p) (softmax applied to probabilities).
3. ConfMix: x_i <- p'_{i,y_i}·x_i + (1 - p'_{i,y_i})·μ̄_{-y_i}, μ̄_{-c} = mean of the other classes'
   (original) means; the mixed features are rounded to the input dtype like the reference's in-place
   write into its float32 array.
4. Second fit on the mixed features with the same s; score = mean_i p₂(y_i | x_i) (no log).

Output in (0, 1], larger is better; it saturates at 1 on separable features. The two conventions
coincide (SFDA is not part of Model Spider's benchmark). Labels must be contiguous (the dispatch
remaps them) with at least 2 classes.

Precision policy: class-centred features (x_i - μ_{y_i}, so Σ_w = ZᵀZ/N needs no cancelling
subtraction) go through the O(N·D²) Gram in the input dtype, and ConfMix writes the input dtype like
the reference; the shrinkage, the Cholesky solve, the logits and the softmaxes run in float64 when
available (`_linalg.precision_scope`). With a float32 Gram, s is floored at 1e-6 instead of 1e-10
(FLOAT32_SHRINKAGE_FLOOR: below the Gram's rounding level, rank-deficient features give an
indefinite covariance and a NaN score); the float64 path follows the reference exactly. When Σ_w is
rank-deficient by its shape (N - C < D: few samples, e.g. 10 per class of 128-dim features), its
null space is held up by the shrinkage term s·tr(Σ_w)/D alone, which a float32 Gram's rounding
(relative to the LARGEST eigenvalue) can exceed whatever the floor; there the Gram is formed in
float64 (cheap: N < D + C rows) and the reference's 1e-10 floor is kept, as its float64 np.cov does.

Complexity: two Grams O(N·D²), two Cholesky factorisations O(D³), logits O(N·D·C); memory O(N·D + D²).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy as jsp

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics._registry import MetricSpec, register

# Reference constants (spec §10.1).
POWER_ITERATIONS = 3
FLOAT32_SHRINKAGE_FLOOR = 1e-6  # s floor when Σ_w comes from a float32 Gram (its rounding level)
SHRINKAGE_FLOOR = 1e-10
SHRINKAGE_RATE = 5.0


def within_class_covariance(
    x: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Σ_w = Σ_c π_c·cov_c with population covariances, i.e. (1/N)·Σ_i (x_i - μ_{y_i})(x_i - μ_{y_i})ᵀ.

    Args:
      x: [N, D] features. labels: [N] in 0..C-1.
    Returns:
      (Σ_w [D, D], means [C, D], counts [C]), all in high_dtype().
    """
    centred, means, counts = class_centred(x, labels, num_classes)
    if gram_in_high_precision(x.shape[0], x.shape[1], num_classes):
        centred = L.to_high(centred)
    return L.gram(centred) / x.shape[0], means, counts


def gram_in_high_precision(num_samples: int, dim: int, num_classes: int) -> bool:
    """Whether Σ_w's Gram runs in high_dtype(): when Σ_w is rank-deficient by its shape (N - C < D)
    and the backend has float64 (see the module docstring)."""
    return num_samples - num_classes < dim and L.high_dtype() == jnp.float64


def class_centred(x: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [N, D] -> (x_i - μ_{y_i} [N, D] in x's compute dtype, means [C, D], counts [C] in high_dtype()).

    Class-centring before a Gram keeps the float32 rounding relative to the within-class spread. The
    subtraction runs in the compute dtype: rounding μ to it shifts a class's deviations by one tiny
    common vector δ, which changes their scatter by n_c·δδᵀ only (~1e-14 relative).
    """
    means, counts = L.class_means(x, labels, num_classes)
    xc = L.to_compute(x)
    return xc - means.astype(xc.dtype)[labels], means, counts


def power_iteration_top_eigenvalue(a: jax.Array, num_steps: int = POWER_ITERATIONS) -> jax.Array:
    """The reference's λ̂ estimate for the top eigenvalue of a symmetric a [D, D] (spec §10.1).

    x₀ = a·1; `num_steps` times: u = a·x/‖a·x‖, x = a·u/‖a·u‖; returns xᵀ·a·u. Kept at exactly
    the reference's three steps: the exact top eigenvalue moves the SFDA score by ~4e-4 relative.
    """
    x = a @ jnp.ones((a.shape[1],), a.dtype)
    u = x
    for _ in range(num_steps):
        u = a @ x
        u = u / jnp.linalg.norm(u)
        x = a @ u
        x = x / jnp.linalg.norm(x)
    return x @ (a @ u)


def sfda_shrinkage(within_cov: jax.Array) -> jax.Array:
    """s = max(exp(-5·λ̂), 1e-10) for the within-class covariance [D, D] (spec §10.1)."""
    lam = power_iteration_top_eigenvalue(within_cov)
    return jnp.maximum(jnp.exp(-SHRINKAGE_RATE * lam), SHRINKAGE_FLOOR)


def shrink(cov: jax.Array, shrinkage: jax.Array) -> jax.Array:
    """(1 - s)·cov + s·(tr cov / D)·I, sklearn's `shrunk_covariance` for cov [D, D]."""
    d = cov.shape[0]
    return (1.0 - shrinkage) * cov + shrinkage * (jnp.trace(cov) / d) * jnp.eye(d, dtype=cov.dtype)


def shrunk_lda_log_proba(
    x: jax.Array, within_cov: jax.Array, means: jax.Array, counts: jax.Array, shrinkage: jax.Array
) -> jax.Array:
    """Log posteriors of the shrunk LDA classifier at the rows of x.

    log p(c|x) = log softmax_c(xᵀ·coef_c + b_c), coef_c = (Σ_w^s)⁻¹μ_c, b_c = -½μ_cᵀcoef_c + log π_c.

    Args:
      x: [N, D] points to classify. within_cov: [D, D] unshrunk Σ_w. means: [C, D]. counts: [C]
        (> 0). shrinkage: scalar s.
    Returns:
      [N, C] log probabilities in high_dtype().
    """
    exact_gram = gram_in_high_precision(x.shape[0], x.shape[1], means.shape[0])
    if L.compute_dtype(x) == jnp.float32 and not exact_gram:
        # The reference's s floor is 1e-10 on a float64 covariance. A float32 Gram of rank-deficient
        # features (s at the floor when the features are large) is indefinite by rounding, far above
        # that: its Cholesky factor would be NaN. Floor s at the Gram's rounding level instead; where
        # the reference's s is larger (the usual case) nothing changes.
        shrinkage = jnp.maximum(shrinkage, FLOAT32_SHRINKAGE_FLOOR)
    cov = shrink(within_cov, shrinkage)
    chol = jnp.linalg.cholesky(cov)
    coef = jsp.linalg.cho_solve((chol, True), means.T)  # [D, C]
    log_prior = jnp.log(counts / jnp.sum(counts))
    # Centre x by the class-mean average before the product: logits are shift-covariant per class
    # (the shift only adds a per-class constant, folded into the bias), and the centred product is
    # far better conditioned than xᵀcoef on raw, offset features.
    centre = jnp.mean(means, axis=0)
    bias = -0.5 * jnp.sum(means * coef.T, axis=1) + log_prior + centre @ coef
    logits = L.mm(L.to_high(x) - centre, coef) + bias
    return jax.nn.log_softmax(logits, axis=1)


def sfda_from_statistics(
    x: jax.Array,
    labels: jax.Array,
    num_classes: int,
    within_cov: jax.Array,
    means: jax.Array,
    counts: jax.Array,
) -> jax.Array:
    """SFDA given the first fit's statistics of x (so callers that know Σ_w can skip a Gram).

    Args:
      x: [N, D] features; labels: [N]; within_cov [D, D], means [C, D], counts [C] of (x, labels).
    Returns:
      scalar score in (0, 1].
    """
    shrinkage = sfda_shrinkage(within_cov)
    probs = jnp.exp(shrunk_lda_log_proba(x, within_cov, means, counts, shrinkage))
    softened = jax.nn.softmax(probs, axis=1)
    confidence = jnp.take_along_axis(softened, labels[:, None], axis=1)  # [N, 1]
    others_mean = (jnp.sum(means, axis=0) - means) / (num_classes - 1)  # [C, D]
    # Mixed in the input dtype: the reference writes the mix into its float32 array anyway.
    xc = L.to_compute(x)
    mixed = confidence.astype(xc.dtype) * xc + (1.0 - confidence).astype(xc.dtype) * others_mean.astype(xc.dtype)[labels]
    within_mixed, means_mixed, _ = within_class_covariance(mixed, labels, num_classes)
    log_p2 = shrunk_lda_log_proba(mixed, within_mixed, means_mixed, counts, shrinkage)
    return jnp.mean(jnp.exp(jnp.take_along_axis(log_p2, labels[:, None], axis=1)))


def sfda(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
) -> jax.Array:
    """SFDA score of features [N, D] for labels [N] in 0..C-1 -> scalar in (0, 1] (larger is better)."""
    del convention, key  # the conventions coincide; deterministic
    within_cov, means, counts = within_class_covariance(features, labels, num_classes)
    return sfda_from_statistics(features, labels, num_classes, within_cov, means, counts)


register(
    MetricSpec(
        name="sfda",
        fn=sfda,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        paper="Shao et al., ECCV 2022",
    )
)
