"""EMMS, the Efficient Multi-task Model Selector (Meng et al., "Foundation Model is Efficient
Multimodal Multitask Model Selector", NeurIPS 2023).

Regress label embeddings on the standardised features and score the fit (spec §10.6). With label
embeddings L [C, E, K] (K "foundation-model" embeddings of each class name, E dims each):

  T = L[y] standardised per (e, k) column over the N samples (ddof 0, +1e-8);  F̂ = F standardised
  λ = (1/K, ..., 1/K);  then `num_steps` alternating steps (the authors' code does one):
      W  = lstsq(F̂, T·λ)                          (min-norm, numpy rcond = eps64·max(N, D))
      λ̃  = lstsq(T reshaped [N·E, K], F̂W reshaped [N·E]),  λ = sparsemax(λ̃)
  res = Σ (F̂W − T·λ)² / N · E   (the reference's operator precedence: multiplied by E; constant per
                                   dataset, so rankings are unaffected)
  EMMS = −res (larger is better)

Label embeddings: option `label_embeddings` [C, E, K] (rows in the order of the sorted original
labels, i.e. of the remapped classes 0..C-1). Without it we use T = one_hot(y)[:, :, None]
(E = C, K = 1), the degenerate-but-valid input the spec allows: λ is then always 1 and EMMS is the
(negated, ×E) residual of regressing the standardised one-hot targets on F̂. Real EMMS uses text
embeddings of the class names (BERT, CLIP, GPT-2), which this library does not ship.

Conventions: "paper" and "model_spider" coincide (EMMS is not in Model Spider; both follow the
authors' code). The paper iterates the alternating minimisation to convergence: pass
`num_steps > 1` for that. Classification only.

Implementation in class space: T = Y·L̂ with L̂ the standardised embeddings, so F̂ᵀT, TᵀT and Tᵀ(F̂W)
come from class sums and never form [N, E, K]. N > D: W = (F̂ᵀF̂)⁺F̂ᵀTλ with the min-norm cutoff
(a Cholesky solve when F̂ᵀF̂ is positive definite to working precision, else eigh: `_linalg.psd_solver`); N <= D: F̂W is the projection onto the range of the N×N kernel F̂F̂ᵀ.

Precision policy: F̂ᵀF̂ (or F̂F̂ᵀ) and F̂W run in the features' dtype (F̂ is centred by construction);
eigh, W, λ and the residual sum in float64 when available. The residual is summed directly, not as
‖T‖² − ‖PT‖², so a good fit does not cancel.

Complexity: O(N·D² + D³ + N·D·E + D²·E) per step (D³/3 with Cholesky), memory O(D² + N·E).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics._registry import MetricSpec, register

STANDARDIZE_EPS = 1e-8
_EPS64 = float(np.finfo(np.float64).eps)


def sparsemax(z: jax.Array) -> jax.Array:
    """Euclidean projection of z [K] onto the probability simplex (Martins & Astudillo, 2016)."""
    sorted_z = jnp.sort(z)[::-1]
    cumulative = jnp.cumsum(sorted_z)
    k = jnp.arange(1, z.shape[0] + 1, dtype=z.dtype)
    support = 1.0 + k * sorted_z > cumulative
    k_star = jnp.max(jnp.where(support, k, 0.0))
    tau = (jnp.sum(jnp.where(k <= k_star, sorted_z, 0.0)) - 1.0) / k_star
    return jnp.maximum(z - tau, 0.0)


def _standardized_embeddings(embeddings: jax.Array, counts: jax.Array) -> jax.Array:
    """Standardises L [C, E, K] as the gathered T = L[y] would be over the N samples: -> [C, E, K]."""
    weights = (counts / jnp.sum(counts))[:, None, None]
    mean = jnp.sum(weights * embeddings, axis=0)
    std = jnp.sqrt(jnp.sum(weights * (embeddings - mean) ** 2, axis=0))
    return (embeddings - mean) / (std + STANDARDIZE_EPS)


def emms(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    label_embeddings: jax.Array | None = None,
    num_steps: int = 1,
) -> jax.Array:
    """EMMS of features [N, D] for labels [N] in 0..C-1 -> scalar <= 0 (larger is better)."""
    del convention, key  # the conventions coincide; deterministic
    gram_epsilon = L.refinable_gram(L.compute_dtype(features))
    score, resolved = _emms_resolved(features, labels, num_classes, label_embeddings, num_steps, gram_epsilon)
    if gram_epsilon is None:
        return score
    # (F̂ᵀF̂)⁺ inverts eigenvalues below the float32 Gram's rounding (rank-deficient features: up to
    # 4 % off on a mini-zoo PTM), and the weights it gives cancel beyond float32: redo it in float64.
    return lax.cond(
        resolved,
        lambda: score,
        lambda: _emms_resolved(L.to_high(features), labels, num_classes, label_embeddings, num_steps, None)[0],
    )


def _emms_resolved(
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    label_embeddings: jax.Array | None,
    num_steps: int,
    gram_epsilon: float | None,
) -> tuple[jax.Array, jax.Array]:
    """(EMMS, whether a Gram rounded at `gram_epsilon` resolves (F̂ᵀF̂)⁺; True for N <= D)."""
    n, d = features.shape
    resolved = jnp.array(True)
    if label_embeddings is None:
        label_embeddings = jnp.eye(num_classes, dtype=L.high_dtype())[:, :, None]
    if label_embeddings.ndim != 3 or label_embeddings.shape[0] != num_classes:
        raise ValueError(f"emms: label_embeddings must be [C={num_classes}, E, K], got shape {label_embeddings.shape}")
    _, e, k = label_embeddings.shape
    counts = L.class_counts(labels, num_classes)
    emb = _standardized_embeddings(L.to_high(label_embeddings), counts)  # L̂ [C, E, K]
    f_hat = L.standardize(features, eps=STANDARDIZE_EPS)
    dtype = f_hat.dtype

    if n > d:
        # (F̂ᵀF̂)⁺, min-norm cutoff
        solve, resolved = L.psd_solver_resolved(L.gram(f_hat), (_EPS64 * max(n, d)) ** 2, gram_epsilon)
        class_sums = L.to_high(L.class_sums(f_hat, labels, num_classes))  # S = YᵀF̂ [C, D]

        def fit(targets_by_class):  # [C, E] -> F̂W [N, E]
            rhs = class_sums.T @ targets_by_class  # F̂ᵀ T λ  [D, E]
            return L.to_high(L.mm(f_hat, solve(rhs).astype(dtype)))
    else:
        lam, vecs = L.eigh(L.mm(f_hat, f_hat.T))
        keep = lam > (_EPS64 * max(n, d)) ** 2 * jnp.max(lam)
        basis = jnp.where(keep[None, :], vecs, 0.0)

        def fit(targets_by_class):  # projection of T λ on the range of F̂
            targets = targets_by_class[labels]
            return basis @ (basis.T @ targets)

    # Normal equations of the [N·E, K] least squares for λ̃, in class space.
    moment = jnp.einsum("c,cek,cel->kl", counts, emb, emb)  # TᵀT [K, K]
    moment_pinv = L.pinv_psd(moment, rtol=(_EPS64 * max(n * e, k)) ** 2)

    def step(_, state):
        weights, _ = state
        fitted = fit(emb @ weights)  # F̂W [N, E]
        rhs = jnp.einsum("cek,ce->k", emb, L.to_high(L.class_sums(fitted, labels, num_classes)))
        return sparsemax(moment_pinv @ rhs), fitted

    init = (jnp.full((k,), 1.0 / k, L.high_dtype()), jnp.zeros((n, e), L.high_dtype()))
    weights, fitted = lax.fori_loop(0, num_steps, step, init)
    residual = jnp.sum((fitted - (emb @ weights)[labels]) ** 2)
    return -(residual / n * e), resolved


register(
    MetricSpec(
        name="emms",
        fn=emms,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        paper="Meng et al., NeurIPS 2023",
        min_class_size=1,  # a regression fit: one-sample classes are valid
    )
)
