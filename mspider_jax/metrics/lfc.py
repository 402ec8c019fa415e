"""LFC, Label-Feature Correlation (Deshpande et al., "A linearized framework and a new benchmark for
model selection for fine-tuning", arXiv 2021).

The Frobenius correlation of the linear-kernel Gram K_x = X Xᵀ with the label kernel
K_y = 2·1[y_i = y_j] − 1, each centred by its *scalar* global mean (not HSIC double centring; spec §9):

    LFC = ⟨K̃_x, K̃_y⟩_F / (‖K̃_x‖_F ‖K̃_y‖_F),   K̃ = K − mean(K)

Result in [−1, 1], larger is better. Invariant to a global rescaling of X and to permuting labels.

Memory-free form (no N×N matrix). With z_i = x_i − x̄ (so mean(K_x) = ‖x̄‖²), S̃_c = Σ_{i∈c} z_i and
a = Z x̄, the scalar-centred kernel is K̃_x = Z Zᵀ + a1ᵀ + 1aᵀ, and since Σ_i z_i = 0:

    ⟨K̃_x, K_y⟩     = 2 Σ_c ‖S̃_c‖² + 4 Σ_c n_c (S̃_c · x̄)       (⟨K̃_x, 11ᵀ⟩ = 0)
    ‖K̃_x‖_F²       = ‖ZᵀZ‖_F² + 2N ‖Z x̄‖²
    ‖K̃_y‖_F²       = N² − N² mean(K_y)²,  mean(K_y) = (2 Σ_c n_c² − N²)/N²

This is the spec's identity rewritten on centred features: the spec's ‖G‖_F² − ‖s‖⁴/N² cancels
catastrophically in float32 for non-negative (ReLU) features with a large common offset; this form has
no cancellation.

Conventions: "paper" and "model_spider" coincide, except that Model Spider subsamples N > 45 000 rows
at random (unseeded): with `convention="model_spider"` and N > 45 000 we subsample 45 000 rows with
`key` (default seed 0); "paper" always uses every sample. Classification only.

Precision policy: ZᵀZ and the class sums run in the features' dtype on centred data; the norms and
the final ratio in float64 when available.

Statistics: every term is a function of `_stats.Moments` (N, x̄, ZᵀZ, S̃_c, n_c; ‖Z x̄‖² = x̄ᵀZᵀZ x̄),
shared by the in-memory path and the one-pass streaming path (`lfc_from_moments`); the model_spider
subset is a row mask there, drawn with the same key.

Complexity: O(N·D² + N·C·D), memory O(D² + C·D).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import _stats
from mspider_jax.metrics._registry import MetricSpec, register

MODEL_SPIDER_MAX_SAMPLES = 45_000


def lfc_from_moments(moments: _stats.Moments) -> jax.Array:
    """LFC from the moments of (features, one-hot labels) -> scalar in [−1, 1]."""
    n, mean, scatter = moments.count, moments.mean, moments.scatter
    counts = moments.target_sums
    sums = moments.cross  # S̃_c [C, D]
    inner = 2.0 * jnp.sum(sums**2) + 4.0 * jnp.sum(counts * (sums @ mean))
    norm_x2 = jnp.sum(scatter**2) + 2.0 * n * (mean @ scatter @ mean)  # ‖ZᵀZ‖² + 2N‖Z x̄‖²
    mean_y = (2.0 * jnp.sum(counts**2) - n**2) / n**2
    norm_y2 = n**2 * (1.0 - mean_y**2)
    return inner / jnp.sqrt(norm_x2 * norm_y2)


def lfc_full(features: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """LFC on every sample. features: [N, D], labels: [N] in 0..C-1 -> scalar in [−1, 1]."""
    features = L.to_compute(features)
    return lfc_from_moments(_stats.moments(features, L.one_hot(labels, num_classes, features.dtype)))


def subset_rows(key: jax.Array | None, num_samples: int, max_samples: int) -> jax.Array:
    """The rows model_spider keeps when N > max_samples: the first max_samples of a permutation."""
    key = jax.random.key(0) if key is None else key
    return jax.random.permutation(key, num_samples)[:max_samples]


def lfc(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    max_samples: int = MODEL_SPIDER_MAX_SAMPLES,
) -> jax.Array:
    """LFC of features [N, D] for labels [N] in 0..C-1 -> scalar in [−1, 1] (larger is better)."""
    n = features.shape[0]
    if convention == "model_spider" and n > max_samples:
        rows = subset_rows(key, n, max_samples)
        features, labels = features[rows], labels[rows]
    return lfc_full(features, labels, num_classes)


def lfc_streaming(
    stream: Any,
    *,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    max_samples: int = MODEL_SPIDER_MAX_SAMPLES,
    **_: Any,
) -> jax.Array:
    """LFC from row chunks (one pass; `streaming.Stream`); model_spider's subset as a row mask."""
    row_mask = None
    n = stream.num_rows
    if convention == "model_spider" and n > max_samples:
        row_mask = np.zeros(n, bool)
        row_mask[np.asarray(subset_rows(key, n, max_samples))] = True
    return lfc_from_moments(_stats.stream_moments(stream, num_classes, num_classes, row_mask))


register(
    MetricSpec(
        name="lfc",
        fn=lfc,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        paper="Deshpande et al., arXiv 2021",
        min_class_size=1,  # kernel correlation: defined for one-sample classes
        streaming=lfc_streaming,
    )
)
