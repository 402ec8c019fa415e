"""ETran: energy-based transferability estimation (Gholami et al., "ETran: Energy-Based Transferability
Estimation", ICCV 2023), classification path.

Per model (reference mgholamikn/ETran `Energy_Score`, `LDA_Score`; spec §10.4) two components:

* S_en, the energy score on the *features* (as the driver calls it): e_i = logsumexp_d F_id, then the
  mean of the ⌊5·N/1000⌋ smallest e_i (the "bottom 0.5 %", the reference's
  `int(percent·10)·N // 1000` with percent = 0.5). The selection is empty for N < 200, where the
  reference returns NaN: we require N >= 200 instead (a clear error from the dispatch).
* S_lda, the reference's LDA score. It calls `eigh` on the non-symmetric (Σ_w^s)⁻¹S_b and keeps all D
  orthonormal eigenvectors, so V·Vᵀ = I and the classifier collapses to a nearest-mean linear rule:
  p(c|x) = softmax_c(xᵀμ_c - ½‖μ_c‖² + log π_c), S_lda = mean_i p(y_i|x_i). (Not scale-invariant.)

Zoo-level combination (the reference's `tw.py`): ETran = 0.15·mm(S_en) + 0.85·mm(S_lda) over the
candidate models, mm(v) = (v - min)/(max - min). A component that is equal for every model carries no
ranking information: its mm is 0 for all (the reference would divide 0 by 0). The paper's S_reg term
belongs to detection and is not part of this path.

Conventions: ETran is not part of Model Spider's benchmark; both conventions follow the reference.
Larger is better.

Precision policy: e_i in the input dtype (like the reference's torch float32 logsumexp); the LDA
logits on centred features and means, in float64 when available.

Complexity: O(N·D + N·D·C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics._registry import MetricSpec, register

ENERGY_PERCENT = 0.5  # the driver's `Energy_Score(X, 0.5, 'bot')`
ENERGY_WEIGHT = 0.15
LDA_WEIGHT = 0.85
MIN_SAMPLES = 200  # below this the bottom-0.5 % selection is empty


def energy_count(num_samples: int, percent: float = ENERGY_PERCENT) -> int:
    """Number of lowest energies averaged: int(percent·10)·N // 1000 (the reference's rounding)."""
    return int(percent * 10) * num_samples // 1000


def energy_score(features: jax.Array, percent: float = ENERGY_PERCENT) -> jax.Array:
    """features [N, D] -> mean of the lowest `energy_count(N)` values of logsumexp_d F_id (scalar)."""
    count = energy_count(features.shape[0], percent)
    if count == 0:
        raise ValueError(f"etran: the bottom {percent}% energy selection is empty for N={features.shape[0]}; needs N >= {MIN_SAMPLES}")
    energies = jax.nn.logsumexp(L.to_compute(features), axis=1)
    lowest = -jax.lax.top_k(-energies, count)[0]
    return jnp.mean(L.to_high(lowest))


def nearest_mean_lda_score(features: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """mean_i softmax_c(x_iᵀμ_c - ½‖μ_c‖² + log π_c)[y_i] for features [N, D] (scalar in (0, 1])."""
    means, counts = L.class_means(features, labels, num_classes)
    # Centring x and the means by the same m only adds per-row constants to the logits
    # (xᵀμ - ½‖μ‖² = (x-m)ᵀ(μ-m) - ½‖μ-m‖² + xᵀm - ½‖m‖²), which the softmax ignores.
    centre = L.column_mean(features)
    centred_means = means - centre
    logits = L.mm(L.to_high(features) - centre, centred_means.T)
    logits = logits - 0.5 * jnp.sum(centred_means**2, axis=1) + jnp.log(counts / jnp.sum(counts))
    log_p = jax.nn.log_softmax(logits, axis=1)
    return jnp.mean(jnp.exp(jnp.take_along_axis(log_p, labels[:, None], axis=1)))


def etran_components(
    *,
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    energy_percent: float = ENERGY_PERCENT,
) -> jax.Array:
    """Per-model ETran components of features [N, D]: [S_en, S_lda] (each larger = better)."""
    del convention, key  # the conventions coincide; deterministic
    return jnp.stack([energy_score(features, energy_percent), nearest_mean_lda_score(features, labels, num_classes)])


def min_max(values: np.ndarray) -> np.ndarray:
    """(v - min)/(max - min) over the model axis 0 of values [M, ...]; 0 where max == min."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        raise ValueError(f"zoo-relative scores need at least 2 models, got {values.shape[0]}")
    low, high = values.min(axis=0), values.max(axis=0)
    span = high - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0)


def combine_etran(components: np.ndarray) -> np.ndarray:
    """[M, 2] components (S_en, S_lda) -> [M] ETran = 0.15·mm(S_en) + 0.85·mm(S_lda)."""
    scaled = min_max(components)
    return ENERGY_WEIGHT * scaled[:, 0] + LDA_WEIGHT * scaled[:, 1]


register(
    MetricSpec(
        name="etran",
        fn=etran_components,
        needs=frozenset({"features"}),
        targets=frozenset({"classification"}),
        is_zoo_relative=True,
        combine_zoo=combine_etran,
        paper="Gholami et al., ICCV 2023",
        min_samples=MIN_SAMPLES,
    )
)
