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

Statistics: Q needs the soft joint over all samples before any per-sample term, so streaming makes
two passes (`soft_joint`, then `log_expected_prediction`); the in-memory path calls the same functions.

Complexity: O(N·Cs·C) flops, O(N·Cs + Cs·C) memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics._registry import MetricSpec, register

MODEL_SPIDER_EPS = 1e-10


def soft_joint(p: jax.Array, labels: jax.Array, num_classes: int, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Unnormalised soft joint and marginal of probabilities p [N, Cs] (rows with valid False left
    out) -> (Σ_i P_iz Y_iy [Cs, C], Σ_i P_iz [Cs]), high precision."""
    p = L.to_compute(p)
    one_hot = L.one_hot(labels, num_classes, p.dtype)
    if valid is not None:
        p = jnp.where(valid[:, None], p, 0.0)
    return L.to_high(L.mm(p.T, one_hot)), jnp.sum(L.to_high(p), axis=0)


def conditional_from_joint(joint_sum: jax.Array, marginal_sum: jax.Array, n: Any, convention: str) -> jax.Array:
    """Q = p(y | z) [Cs, C] from the sums of `soft_joint` over N samples."""
    joint, marginal = joint_sum / n, marginal_sum / n
    if convention == "model_spider":
        return joint / (marginal + MODEL_SPIDER_EPS)[:, None]
    has_mass = marginal > 0
    return jnp.where(has_mass[:, None], joint / jnp.where(has_mass, marginal, 1.0)[:, None], 0.0)


def log_expected_prediction(
    p: jax.Array, labels: jax.Array, num_classes: int, conditional: jax.Array, convention: str, valid: jax.Array | None = None
) -> jax.Array:
    """Σ_i of the per-sample LEEP term log E_{i,y_i} (model_spider: with its epsilons), E = P Q; rows
    with valid False left out -> scalar (high)."""
    p = L.to_compute(p)
    # E = P Q [N, C] (a matmul of non-negative terms, so float32 loses nothing that matters), then
    # E_{i, y_i} picked with the one-hot mask in high precision.
    expected = L.to_high(L.mm(p, conditional.astype(p.dtype)))
    per_sample = jnp.sum(expected * L.one_hot(labels, num_classes, expected.dtype), axis=1)  # [N]
    if convention == "model_spider":
        # Σ_y Y_iy log(Y_iy + 1e-10) = log(1 + 1e-10) for the one-hot entry (zeros contribute 0).
        terms = jnp.log(per_sample + MODEL_SPIDER_EPS) + jnp.log1p(MODEL_SPIDER_EPS)
    else:
        terms = jnp.log(per_sample)
    if valid is not None:
        terms = jnp.where(valid, terms, 0.0)
    return jnp.sum(terms)


def leep_from_probabilities(
    probabilities: jax.Array, labels: jax.Array, num_classes: int, convention: str = "paper"
) -> jax.Array:
    """LEEP of source probabilities [N, Cs] (rows sum to 1) for labels [N] -> scalar <= 0.

    Shared with N-LEEP, which applies it to Gaussian-mixture responsibilities.
    """
    n = probabilities.shape[0]
    conditional = conditional_from_joint(*soft_joint(probabilities, labels, num_classes), n, convention)
    return log_expected_prediction(probabilities, labels, num_classes, conditional, convention) / n


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


def _joint_step(state: tuple[jax.Array, jax.Array], chunk: dict, num_classes: int) -> tuple[jax.Array, jax.Array]:
    p = jax.nn.softmax(L.to_compute(chunk["logits"]), axis=-1)
    joint, marginal = soft_joint(p, chunk["labels"], num_classes, chunk["valid"])
    return state[0] + joint, state[1] + marginal


def _log_term_step(total: jax.Array, chunk: dict, conditional: jax.Array, num_classes: int, convention: str) -> jax.Array:
    p = jax.nn.softmax(L.to_compute(chunk["logits"]), axis=-1)
    return total + log_expected_prediction(p, chunk["labels"], num_classes, conditional, convention, chunk["valid"])


def leep_streaming(stream: Any, *, num_classes: int, convention: str = "paper", **_: Any) -> jax.Array:
    """LEEP from row chunks (`streaming.Stream`): pass 1 the soft joint, pass 2 the log terms."""
    num_source = stream.dim("logits")
    high = L.high_dtype()
    state = (jnp.zeros((num_source, num_classes), high), jnp.zeros((num_source,), high))
    joint_sum, marginal_sum = stream.reduce(_joint_step, state, ("logits",), num_classes=num_classes)
    conditional = conditional_from_joint(joint_sum, marginal_sum, stream.num_rows, convention)
    # The conditional rides in the state (a traced array), so the pass compiles once.
    total = stream.reduce(_log_pass_step, (jnp.zeros((), high), conditional), ("logits",), num_classes=num_classes, convention=convention)[0]
    return total / stream.num_rows


def _log_pass_step(state: tuple[jax.Array, jax.Array], chunk: dict, num_classes: int, convention: str) -> tuple[jax.Array, jax.Array]:
    total, conditional = state
    return _log_term_step(total, chunk, conditional, num_classes, convention), conditional


register(
    MetricSpec(
        name="leep",
        fn=leep,
        needs=frozenset({"logits"}),
        targets=frozenset({"classification"}),
        paper="Nguyen et al., ICML 2020",
        # LEEP is defined for any class size (no spread is estimated); classes of one sample are fine.
        min_class_size=1,
        streaming=leep_streaming,
    )
)
