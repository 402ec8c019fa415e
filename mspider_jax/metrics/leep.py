"""LEEP, the Log Expected Empirical Prediction (Nguyen et al., "LEEP: A New Measure to Evaluate
Transferability of Learned Representations", ICML 2020).

With P = softmax(Z) the source-head probabilities [N, Cs] and Y the one-hot targets [N, C] (spec §2):

    J = Pᵀ Y / N                 soft joint p(z, y)          [Cs, C]
    Q = J / p_z                  conditional p(y | z), p_z = mean_i P_iz
    LEEP = mean_i log( Σ_z P_iz Q_{z, y_i} )

Conventions:
  "paper": exactly the formula above (no epsilons). A source class with p_z = 0 (float32 softmax
    underflow) gets Q_z = 0, which is the limit of the formula (it carries no mass).
  "model_spider": the benchmark code (Google pactran with the sign flipped): p_z + 1e-10 in the
    denominator, E + 1e-10 inside the log, and the Σ_y Y·log(Y + 1e-10) term (adds ~1e-10).
Result <= 0, larger is better. Invariant to permuting the labels. Classification only.

Implementation: matmul forms only, never the [N, Cs, C] tensor: J = PᵀY and E = PQ are two
O(N·Cs·C) matmuls (no [N, Cs] gathers, which are slow on CPU).

Precision policy: softmax and the matmuls PᵀY and PQ run in the logits' dtype (float32 for torch
logits, like the reference); Q, the picked E_{i,y_i} and the log-mean run in float64 when available.
P, Y and Q are non-negative, so no cancellation happens in the float32 products.

Complexity: O(N·Cs·C) flops, O(N·Cs + Cs·C) memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics._registry import MetricSpec, register

MODEL_SPIDER_EPS = 1e-10


def leep_from_probabilities(
    probabilities: jax.Array, labels: jax.Array, num_classes: int, convention: str = "paper"
) -> jax.Array:
    """LEEP of source probabilities [N, Cs] (rows sum to 1) for labels [N] -> scalar <= 0.

    Shared with N-LEEP, which applies it to Gaussian-mixture responsibilities.
    """
    n = probabilities.shape[0]
    p = L.to_compute(probabilities)
    joint = L.to_high(L.mm(p.T, L.one_hot(labels, num_classes, p.dtype))) / n  # [Cs, C]
    marginal = jnp.mean(L.to_high(p), axis=0)  # p_z [Cs]
    if convention == "model_spider":
        conditional = joint / (marginal + MODEL_SPIDER_EPS)[:, None]
    else:
        has_mass = marginal > 0
        conditional = jnp.where(has_mass[:, None], joint / jnp.where(has_mass, marginal, 1.0)[:, None], 0.0)
    # E = P Q [N, C] (a matmul of non-negative terms, so float32 loses nothing that matters), then
    # E_{i, y_i} picked with the one-hot mask in high precision.
    expected = L.to_high(L.mm(p, conditional.astype(p.dtype)))
    per_sample = jnp.sum(expected * L.one_hot(labels, num_classes, expected.dtype), axis=1)  # [N]
    if convention == "model_spider":
        # Σ_y Y_iy log(Y_iy + 1e-10) = log(1 + 1e-10) for the one-hot entry (zeros contribute 0).
        return jnp.mean(jnp.log(per_sample + MODEL_SPIDER_EPS)) + jnp.log1p(MODEL_SPIDER_EPS)
    return jnp.mean(jnp.log(per_sample))


def leep(
    *,
    logits: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
) -> jax.Array:
    """LEEP of raw source logits [N, Cs] for labels [N] in 0..C-1 -> scalar <= 0."""
    del key  # deterministic
    probabilities = jax.nn.softmax(L.to_compute(logits), axis=-1)
    return leep_from_probabilities(probabilities, labels, num_classes, convention)


register(
    MetricSpec(
        name="leep",
        fn=leep,
        needs=frozenset({"logits"}),
        targets=frozenset({"classification"}),
        paper="Nguyen et al., ICML 2020",
        # LEEP is defined for any class size (no spread is estimated); classes of one sample are fine.
        min_class_size=1,
    )
)
