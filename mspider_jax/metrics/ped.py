"""PED: Potential Energy Decline (Li et al., "Exploring Model Transferability through the Lens of
Potential Energy", ICCV 2023).

PED lets the target classes repel each other like charged spheres for a few small time steps in the
standardised feature space, then scores the moved features with SFDA (spec §10.5, reference
lixiaotong97/PED `PED_Score` + `One_Step_PED`, driver defaults):

* standardise with the *source* statistics, per dimension: m = mean(G), σ = max(std(G), 1e-3)
  (ddof 0), X̂ = (X - m)/σ, where G is the same model's features on a labelled source sample
  (ImageNet val in the paper) — `source_features` is therefore required;
* one step: class centres c_k and radii R_k = sqrt(Σ_d var_kd) (population variances); for each pair
  a < b with δ = c_b - c_a, d = ‖δ‖, overlap o = max(ν(R_a + R_b) - d, 0), ν = |nsigma|, step
  s = min(½τ²·constant·o, o); class a moves by -s·δ/d and class b by +s·δ/d; change = Σ|Δ|;
* loop: at most 6 one-step calls in total; step 0 always accepts and records `first`; later steps
  are accepted only while change/first > exit_ratio (0.5), else the loop stops; first == 0 (no
  overlapping pair) gives a 0/0 ratio that rejects every later step;
* score = SFDA(X moved, y) (`sfda.py`).

Implementation notes. A step shifts every sample of a class by the same vector, so the within-class
variances (hence the radii) never change and the class centres simply accumulate the accepted
moves: the loop runs on the [C, D] centres alone and the N×D features are moved once at the end
(exact, and the reference's per-step de-/re-standardisation is the identity up to rounding). For
the same reason Σ_w of the moved features equals that of the input, so SFDA's first fit reuses it.
Pairs with identical centres (d = 0, where the reference divides by zero) get no repulsion.

Conventions: PED is not part of Model Spider's benchmark; both conventions are the reference driver's
(nsigma = 0.6, time_step = 0.1, exit_ratio = 0.5, constant = 1, σ floor 1e-3). Output in (0, 1],
larger is better.

Precision policy: standardisation statistics, centres and the pair loop in float64 when available;
the radii from the class-centred features in the input dtype (float32 from torch; no cancellation)
summed in float64; the SFDA part follows `sfda.py` (Grams in the input dtype, solves in float64).

Complexity: O(N·D) statistics + at most 6·O(C²·D) steps + SFDA's O(N·D² + D³).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mspider_jax.metrics import _linalg as L
from mspider_jax.metrics import sfda as sfda_lib
from mspider_jax.metrics._registry import MetricSpec, register

# Driver defaults of the reference (spec §10.5).
TIME_STEP = 0.1
EXIT_RATIO = 0.5
NSIGMA = 0.6
CONSTANT = 1.0
STD_FLOOR = 1e-3
MAX_STEPS = 6


def source_standardization(source_features: jax.Array, std_floor: float = STD_FLOOR) -> tuple[jax.Array, jax.Array]:
    """source_features G [Ns, D] -> (mean [D], max(std, floor) [D]) per dimension, ddof 0, high_dtype()."""
    g = L.to_high(source_features)
    return jnp.mean(g, axis=0), jnp.maximum(jnp.std(g, axis=0), std_floor)


def repulsion_step(
    centres: jax.Array, radii: jax.Array, *, time_step: float, nsigma: float, constant: float
) -> jax.Array:
    """One PED step on the class centres: centres [C, D], radii [C] -> moves Δ [C, D].

    Δ_a = -Σ_{b≠a} (s_ab/d_ab)·(c_b - c_a), with s_ab the step of the overlapping pair (a, b).
    """
    centred = centres - jnp.mean(centres, axis=0)  # pairwise distances from a centred Gram
    sq_norms = jnp.sum(centred**2, axis=1)
    dist2 = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (centred @ centred.T)
    dist = jnp.sqrt(jnp.maximum(dist2, 0.0))
    overlap = jnp.maximum(abs(nsigma) * (radii[:, None] + radii[None, :]) - dist, 0.0)
    step = jnp.minimum(0.5 * time_step**2 * constant * overlap, overlap)
    num_classes = centres.shape[0]
    valid = (dist > 0) & ~jnp.eye(num_classes, dtype=bool)
    weight = jnp.where(valid, step / jnp.where(valid, dist, 1.0), 0.0)  # [C, C], symmetric
    # Σ_b w_ab (c_b - c_a) = (W c)_a - (W 1)_a c_a, written on the centred centres.
    pull = weight @ centred - jnp.sum(weight, axis=1)[:, None] * centred
    return -pull


def ped_moved_centres(
    centres: jax.Array,
    radii: jax.Array,
    *,
    time_step: float = TIME_STEP,
    exit_ratio: float = EXIT_RATIO,
    nsigma: float = NSIGMA,
    constant: float = CONSTANT,
    max_steps: int = MAX_STEPS,
) -> tuple[jax.Array, jax.Array]:
    """Runs the PED loop on standardised class centres [C, D] with radii [C].

    Returns (total accepted move [C, D], number of accepted steps).
    """
    step = lambda c: repulsion_step(c, radii, time_step=time_step, nsigma=nsigma, constant=constant)  # noqa: E731
    first_move = step(centres)
    first = jnp.sum(jnp.abs(first_move))

    def body(_, state):
        total, accepted, running = state
        move = step(centres + total)
        change = jnp.sum(jnp.abs(move))
        ratio = change / first  # NaN when first == 0: the comparison below rejects it
        accept = running & (ratio > exit_ratio)
        total = jnp.where(accept, total + move, total)
        return total, accepted + accept.astype(jnp.int32), accept

    return lax.fori_loop(0, max_steps - 1, body, (first_move, jnp.int32(1), jnp.asarray(True)))[:2]


def ped(
    *,
    features: jax.Array,
    source_features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    convention: str = "paper",
    key: jax.Array | None = None,
    time_step: float = TIME_STEP,
    exit_ratio: float = EXIT_RATIO,
    nsigma: float = NSIGMA,
    constant: float = CONSTANT,
    std_floor: float = STD_FLOOR,
    max_steps: int = MAX_STEPS,
) -> jax.Array:
    """PED score of features [N, D] (labels [N] in 0..C-1), standardised with source_features [Ns, D]
    of the same model -> scalar in (0, 1] (larger is better)."""
    del convention, key  # the conventions coincide; deterministic
    if source_features.shape[1] != features.shape[1]:
        raise ValueError(f"ped: source_features have D={source_features.shape[1]} but features have D={features.shape[1]}")
    mean, std = source_standardization(source_features, std_floor)
    centred, means, counts = sfda_lib.class_centred(features, labels, num_classes)
    if sfda_lib.gram_in_high_precision(features.shape[0], features.shape[1], num_classes):
        centred = L.to_high(centred)  # Σ_w rank-deficient by its shape: see sfda's docstring
    within_cov = L.gram(centred) / features.shape[0]
    # Standardised centres and radii R_c = sqrt(Σ_d var_cd) from the class-centred features
    # (no cancellation): Σ_d var_cd = mean over class c of Σ_d (x_id - μ_cd)²/σ_d².
    centres = (means - mean) / std
    sq_dev = L.to_high(L.mm(centred * centred, (1.0 / std**2).astype(centred.dtype)))  # [N]
    radii = jnp.sqrt(jnp.zeros((num_classes,), sq_dev.dtype).at[labels].add(sq_dev) / counts)
    total, _ = ped_moved_centres(
        centres, radii, time_step=time_step, exit_ratio=exit_ratio, nsigma=nsigma, constant=constant, max_steps=max_steps
    )
    shift = total * std  # back to feature units
    xc = L.to_compute(features)
    moved = xc + shift.astype(xc.dtype)[labels]
    return sfda_lib.sfda_from_statistics(moved, labels, num_classes, within_cov, means + shift, counts)


register(
    MetricSpec(
        name="ped",
        fn=ped,
        needs=frozenset({"features", "source_features"}),
        targets=frozenset({"classification"}),
        paper="Li et al., ICCV 2023",
    )
)
