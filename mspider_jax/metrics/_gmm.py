"""Gaussian mixtures fitted by EM in JAX, initialised by k-means++ and k-means (for N-LEEP).

Mirrors what `sklearn.mixture.GaussianMixture(n_components=K)` does with its defaults (spec §5),
with static shapes and `lax.while_loop`s instead of Python loops:

* `kmeans_plus_plus`: greedy k-means++ seeding — first centre uniform, then each centre is the best
  (lowest resulting potential) of 2 + ⌊ln K⌋ candidates drawn with probability ∝ D(x)².
* `kmeans`: Lloyd iterations (max 300) until the labels stop changing or the total squared centre
  shift is <= 1e-4·mean(var(X)); empty clusters are re-seeded with the points farthest from their
  centres, as sklearn does.
* `fit_gmm`: EM from initial responsibilities (one-hot k-means labels): M-step (n_k = Σr + 10·eps,
  means, full or diagonal covariances + reg_covar on the diagonal, weights n_k/N), then alternating
  E/M steps until the mean log-likelihood lower bound changes by < tol (1e-3) or max_iter (100) is
  reached. `responsibilities` then gives predict_proba under the final parameters.

Randomness comes only from the `key` of the seeding; the rest is deterministic, so the EM can be
checked against sklearn from identical initial labels (sklearn's own global-RNG draws cannot be
reproduced).

Speed (full covariances): the E-step evaluates all N·K Mahalanobis distances with large GEMMs per
block of B components, skipping the zero lower-left block of the triangular U_k. The M-step's weighted scatters use only the
non-zero responsibilities when every sample has at most 4 of them and no component gets more than a
few times its average share ("sparse M-step", exact: the dropped terms are exactly 0); otherwise
the dense O(N·K·d²) scatter runs. In N-LEEP's regime (≈ N/K = 20 points per component in
d ≈ 200 dimensions, so the covariances are singular up to reg_covar and the posteriors underflow to
one-hot) this removes half of the EM cost.

Precision policy: the O(N·K·d²) products (E-step y = x·U_k - μ_k·U_k with U_k the upper Cholesky
factor of the precision, M-step weighted scatter of x - μ_k) run in x's dtype — float32 for float32
features, like sklearn on float32 input; means, covariances, Cholesky factors, log-determinants,
log-probabilities and the lower bound run in high_dtype() (float64 when available).

Complexity per EM iteration: O(N·K·d²) flops (full; the sparse M-step O(K·cap·d²)) or O(N·K·d)
(diagonal); memory O(N·K + K·d² + COMPONENT_BATCH·N·d).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy as jsp
from jax import lax

from mspider_jax.metrics import _linalg as L

COVARIANCE_TYPES = ("full", "diag")
REG_COVAR = 1e-6
TOL = 1e-3
MAX_ITER = 100
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
COMPONENT_BATCH = 16  # components per vectorised chunk of the full-covariance E/M steps
SPARSE_TOP = 4  # responsibilities kept per sample by the sparse M-step
SMALL_DIM = 16  # up to this d the full-covariance M-step is one [K, N] x [N, d²] GEMM


class GaussianMixture(NamedTuple):
    """Fitted mixture parameters (K components in d dimensions).

    weights: [K]; means: [K, d]; precisions_cholesky: [K, d, d] upper-triangular U_k with
    P_k = U_k U_kᵀ (full) or [K, d] = 1/sqrt(var) (diag).
    """

    weights: jax.Array
    means: jax.Array
    precisions_cholesky: jax.Array


class FitInfo(NamedTuple):
    """Diagnostics of `fit_gmm`: EM iterations run, converged flag, final lower bound."""

    num_iterations: jax.Array
    converged: jax.Array
    lower_bound: jax.Array


# ------------------------------------------------------------------------------------------------
# k-means++ and k-means.


def _sq_distances(x: jax.Array, centres: jax.Array, x_sq: jax.Array) -> jax.Array:
    """Squared distances [N, K] from x [N, d] (with row norms x_sq [N]) to centres [K, d], >= 0."""
    c_sq = jnp.sum(centres**2, axis=1)
    return jnp.maximum(x_sq[:, None] + c_sq[None, :] - 2.0 * L.mm(x, centres.T), 0.0)


def kmeans_plus_plus(x: jax.Array, num_clusters: int, key: jax.Array) -> jax.Array:
    """Greedy k-means++ seeding of x [N, d] -> initial centres [K, d] (rows of x)."""
    n = x.shape[0]
    num_trials = 2 + int(math.log(num_clusters))
    x_sq = jnp.sum(x**2, axis=1)
    first_key, loop_key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)
    closest = _sq_distances(x, x[first][None, :], x_sq)[:, 0]
    centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])

    def body(c, state):
        centres, closest = state
        potential = jnp.sum(closest)
        draws = jax.random.uniform(jax.random.fold_in(loop_key, c), (num_trials,), dtype=closest.dtype) * potential
        candidates = jnp.clip(jnp.searchsorted(jnp.cumsum(closest), draws), 0, n - 1)
        dist = jnp.minimum(closest[None, :], _sq_distances(x, x[candidates], x_sq).T)  # [T, N]
        best = jnp.argmin(jnp.sum(dist, axis=1))
        return centres.at[c].set(x[candidates[best]]), dist[best]

    centres, _ = lax.fori_loop(1, num_clusters, body, (centres, closest))
    return centres


def _assign(x: jax.Array, centres: jax.Array, x_sq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centre of every row: (labels [N], squared distance to it [N])."""
    dist = _sq_distances(x, centres, x_sq)
    labels = jnp.argmin(dist, axis=1).astype(jnp.int32)
    return labels, jnp.take_along_axis(dist, labels[:, None], axis=1)[:, 0]


def _update_centres(x: jax.Array, labels: jax.Array, old_centres: jax.Array, x_sq: jax.Array) -> jax.Array:
    """Lloyd's update with sklearn's relocation of empty clusters to the farthest points."""
    num_clusters = old_centres.shape[0]
    sums = jnp.zeros_like(old_centres).at[labels].add(x)
    counts = jnp.zeros((num_clusters,), x.dtype).at[labels].add(1.0)
    empty = counts == 0
    # The r-th empty cluster takes the r-th farthest point from its (old) centre; that point leaves
    # its cluster.
    dist_to_own = jnp.sum((x - old_centres[labels]) ** 2, axis=1)
    _, farthest = lax.top_k(dist_to_own, min(num_clusters, x.shape[0]))
    rank = jnp.cumsum(empty) - 1
    donor = farthest[jnp.clip(rank, 0, farthest.shape[0] - 1)]  # [K] (meaningful where empty)
    moved = jnp.where(empty[:, None], x[donor], 0.0)
    sums = sums.at[jnp.where(empty, labels[donor], num_clusters)].add(-moved, mode="drop")
    counts = counts.at[jnp.where(empty, labels[donor], num_clusters)].add(-1.0, mode="drop")
    sums = jnp.where(empty[:, None], moved, sums)
    counts = jnp.where(empty, 1.0, counts)
    return sums / jnp.maximum(counts, 1.0)[:, None]


def kmeans(
    x: jax.Array, centres: jax.Array, max_iter: int = KMEANS_MAX_ITER, tol: float = KMEANS_TOL
) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on x [N, d] from centres [K, d] -> (labels [N], centres [K, d])."""
    x_sq = jnp.sum(x**2, axis=1)
    threshold = jnp.mean(jnp.var(L.to_high(x), axis=0)) * tol

    def cond(state):
        iteration, _, _, done = state
        return (iteration < max_iter) & ~done

    def body(state):
        iteration, centres, labels, _ = state
        new_labels, _ = _assign(x, centres, x_sq)
        new_centres = _update_centres(x, new_labels, centres, x_sq)
        shift = jnp.sum(L.to_high(new_centres - centres) ** 2)
        done = jnp.all(new_labels == labels) | (shift <= threshold)
        return iteration + 1, new_centres, new_labels, done

    start = (jnp.int32(0), centres, jnp.full((x.shape[0],), -1, jnp.int32), jnp.asarray(False))
    _, centres, _, _ = lax.while_loop(cond, body, start)
    labels, _ = _assign(x, centres, x_sq)  # labels consistent with the final centres
    return labels, centres


# ------------------------------------------------------------------------------------------------
# EM.


def _scatter_dense(x: jax.Array, resp: jax.Array, means: jax.Array) -> jax.Array:
    """Σ_i r_ik (x_i - μ_k)(x_i - μ_k)ᵀ for every component (sklearn's centred form) -> [K, d, d]."""

    def scatter(args):
        r, mu = args
        diff = x - mu.astype(x.dtype)
        return L.mm((diff * r[:, None].astype(x.dtype)).T, diff)

    return L.to_high(lax.map(scatter, (resp.T, means), batch_size=COMPONENT_BATCH))


def _scatter_small_dim(x: jax.Array, resp: jax.Array, means: jax.Array) -> jax.Array:
    """The same scatter for small d as one GEMM in high_dtype(): Σ_i r_ik x_i x_iᵀ − μ_k s_kᵀ − s_k μ_kᵀ
    + n_k μ_k μ_kᵀ with s_k = Σ_i r_ik x_i.

    [K, N] x [N, d²] in float64 (the uncentred form cancels only ~‖μ_k‖²/spread² of the 16 digits);
    the per-component loop of `_scatter_dense` costs ~17 ms per M-step at N = 1000, K = 120, d = 8
    on 2 CPU cores, this ~1 ms.
    """
    xh, resp = L.to_high(x), L.to_high(resp)
    n, d = xh.shape
    outer = (xh[:, :, None] * xh[:, None, :]).reshape(n, d * d)
    second = (resp.T @ outer).reshape(-1, d, d)  # Σ r x xᵀ
    first = resp.T @ xh  # Σ r x
    nk = jnp.sum(resp, axis=0)
    cross = means[:, :, None] * first[:, None, :]
    return second - cross - jnp.swapaxes(cross, 1, 2) + nk[:, None, None] * means[:, :, None] * means[:, None, :]


def _sparse_capacity(num_samples: int, num_components: int) -> int:
    """Static slots per component of the sparse M-step (a few times the average cluster size)."""
    return min(num_samples, 4 * -(-num_samples // num_components) + 64)


def _scatter_sparse(x: jax.Array, resp: jax.Array, means: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The same scatter from the few non-zero responsibilities of each sample.

    Each row keeps its SPARSE_TOP largest responsibilities; the (sample, component) pairs with a
    non-zero weight are grouped by component into padded blocks of `_sparse_capacity` slots. The
    result is exact (the dropped terms are exactly 0) when every row has at most SPARSE_TOP non-zero
    entries and no component has more pairs than slots: that flag is returned with the scatter.
    In the high-dimensional regime of N-LEEP (components with fewer points than dimensions, so
    precisions of ~1/reg_covar off their span) the responsibilities underflow to exact zeros and
    this costs O(K·capacity·d²) instead of O(N·K·d²).
    """
    n, k = resp.shape
    capacity = _sparse_capacity(n, k)
    top_values, top_index = lax.top_k(resp, SPARSE_TOP + 1)
    values, index = top_values[:, :SPARSE_TOP], top_index[:, :SPARSE_TOP]
    component = jnp.where(values > 0, index, k).ravel()  # zero weights go to a sentinel bucket
    weight = values.ravel()
    sample = jnp.repeat(jnp.arange(n), SPARSE_TOP)
    order = jnp.argsort(component, stable=True)
    counts = jnp.zeros((k + 1,), jnp.int32).at[component].add(1)[:k]
    starts = jnp.cumsum(counts) - counts
    slots = jnp.arange(capacity)
    valid = slots[None, :] < counts[:, None]
    position = order[jnp.where(valid, starts[:, None] + slots[None, :], 0)]  # [K, capacity]
    w = jnp.where(valid, weight[position], 0.0).astype(x.dtype)
    diff = x[sample[position]] - means[:, None, :].astype(x.dtype)  # [K, capacity, d]
    scatter = L.to_high(jnp.einsum("kcd,kce->kde", diff * w[..., None], diff, precision=L.HIGHEST))
    exact = jnp.all(top_values[:, SPARSE_TOP] == 0) & (jnp.max(counts) <= capacity)
    return scatter, exact


def _estimate_parameters(
    x: jax.Array, resp: jax.Array, covariance_type: str, reg_covar: float
) -> GaussianMixture:
    """M-step: responsibilities resp [N, K] -> parameters (weights normalised to sum 1)."""
    hi = resp.dtype
    n, k = resp.shape
    nk = jnp.sum(resp, axis=0) + 10.0 * jnp.finfo(hi).eps  # [K]
    means = L.to_high(L.mm(resp.astype(x.dtype).T, x)) / nk[:, None]  # [K, d]
    if covariance_type == "full":
        d = x.shape[1]
        if d <= SMALL_DIM:
            scatter = _scatter_small_dim(x, resp, means)
        elif k > SPARSE_TOP and _sparse_capacity(n, k) < n:
            sparse, exact = _scatter_sparse(x, resp, means)
            scatter = lax.cond(exact, lambda: sparse, lambda: _scatter_dense(x, resp, means))
        else:
            scatter = _scatter_dense(x, resp, means)
        covs = scatter / nk[:, None, None]
        covs = 0.5 * (covs + jnp.swapaxes(covs, 1, 2)) + reg_covar * jnp.eye(x.shape[1], dtype=hi)
        chol = jnp.linalg.cholesky(covs)  # lower, Σ = C Cᵀ
        eye = jnp.broadcast_to(jnp.eye(x.shape[1], dtype=hi), covs.shape)
        prec_chol = jnp.swapaxes(jsp.linalg.solve_triangular(chol, eye, lower=True), 1, 2)  # U = C⁻ᵀ
    else:
        avg_x2 = L.to_high(L.mm(resp.astype(x.dtype).T, x * x)) / nk[:, None]
        covs = avg_x2 - means**2 + reg_covar  # = E[x²] - 2μE[x] + μ² with E[x] = μ
        prec_chol = 1.0 / jnp.sqrt(covs)
    return GaussianMixture(nk / jnp.sum(nk), means, prec_chol)


def _mahalanobis_full(x: jax.Array, prec_chol: jax.Array, means: jax.Array) -> jax.Array:
    """‖(x_i - μ_k)ᵀU_k‖² for all i, k -> [N, K] (sklearn's x·U_k - μ_k·U_k form).

    Components are processed in blocks of COMPONENT_BATCH with large [N, ·] x [·, B·(·)] GEMMs (much
    faster on CPU than a batch of small ones). U_k is upper triangular, so with x = [x₁, x₂] split at
    h = d/2: x·U = [x₁U₁₁, x₁U₁₂ + x₂U₂₂], which skips the zero block (3/4 of the dense flops).
    """
    n, d = x.shape
    k = means.shape[0]
    block = min(COMPONENT_BATCH, k)
    pad = (-k) % block
    u = jnp.concatenate([prec_chol, jnp.zeros((pad, d, d), prec_chol.dtype)]) if pad else prec_chol
    mu = jnp.concatenate([means, jnp.zeros((pad, d), means.dtype)]) if pad else means
    mu_u = jnp.einsum("kd,kde->ke", mu, u).reshape(-1, block, d)
    u = u.reshape(-1, block, d, d)
    h = d // 2
    x1, x2 = x[:, :h], x[:, h:]

    def flat(a):  # [B, r, c] -> [r, B·c] in x's dtype (explicit sizes: r = 0 when d = 1)
        return jnp.transpose(a, (1, 0, 2)).reshape(a.shape[1], a.shape[0] * a.shape[2]).astype(
            x.dtype)

    def one_block(args):
        u_block, mu_u_block = args  # [B, d, d], [B, d]
        mu_u_block = mu_u_block.astype(x.dtype)[None]  # [1, B, d]
        y1 = L.mm(x1, flat(u_block[:, :h, :h])).reshape(n, block, h) - mu_u_block[:, :, :h]
        y2 = L.mm(x1, flat(u_block[:, :h, h:])) + L.mm(x2, flat(u_block[:, h:, h:]))
        y2 = y2.reshape(n, block, d - h) - mu_u_block[:, :, h:]
        return L.to_high(jnp.sum(y1 * y1, axis=2) + jnp.sum(y2 * y2, axis=2))  # [N, B]

    quad = lax.map(one_block, (u, mu_u))  # [K/B, N, B]
    return jnp.transpose(quad, (1, 0, 2)).reshape(n, -1)[:, :k]


def log_gaussian_prob(x: jax.Array, params: GaussianMixture) -> jax.Array:
    """log N(x_i | μ_k, Σ_k) for x [N, d] -> [N, K] in high_dtype()."""
    d = x.shape[1]
    prec_chol = params.precisions_cholesky
    if prec_chol.ndim == 3:
        log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)  # [K]
        quad = _mahalanobis_full(x, prec_chol, params.means)
    else:
        log_det = jnp.sum(jnp.log(prec_chol), axis=1)
        precisions = prec_chol**2
        xh = L.to_high(x)
        quad = (
            jnp.sum(params.means**2 * precisions, axis=1)[None, :]
            - 2.0 * xh @ (params.means * precisions).T
            + (xh**2) @ precisions.T
        )
    return -0.5 * (d * jnp.log(2.0 * jnp.pi) + quad) + log_det


def _e_step(x: jax.Array, params: GaussianMixture) -> tuple[jax.Array, jax.Array]:
    """-> (mean log-likelihood lower bound, log responsibilities [N, K])."""
    weighted = log_gaussian_prob(x, params) + jnp.log(params.weights)
    log_norm = jax.nn.logsumexp(weighted, axis=1)
    return jnp.mean(log_norm), weighted - log_norm[:, None]


def fit_gmm(
    x: jax.Array,
    initial_resp: jax.Array,
    *,
    covariance_type: str = "full",
    reg_covar: float = REG_COVAR,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> tuple[GaussianMixture, FitInfo]:
    """EM for a Gaussian mixture on x [N, d] from initial responsibilities [N, K] (sklearn's loop)."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    resp = L.to_high(initial_resp)
    params = _estimate_parameters(x, resp, covariance_type, reg_covar)

    def cond(state):
        iteration, _, _, converged = state
        return (iteration < max_iter) & ~converged

    def body(state):
        iteration, params, lower_bound, _ = state
        new_bound, log_resp = _e_step(x, params)
        params = _estimate_parameters(x, jnp.exp(log_resp), covariance_type, reg_covar)
        return iteration + 1, params, new_bound, jnp.abs(new_bound - lower_bound) < tol

    start = (jnp.int32(0), params, jnp.asarray(-jnp.inf, resp.dtype), jnp.asarray(False))
    iterations, params, lower_bound, converged = lax.while_loop(cond, body, start)
    return params, FitInfo(iterations, converged, lower_bound)


def responsibilities(x: jax.Array, params: GaussianMixture) -> jax.Array:
    """Posterior component probabilities (sklearn's predict_proba) for x [N, d] -> [N, K]."""
    _, log_resp = _e_step(x, params)
    return jnp.exp(log_resp)


def fit_predict_proba(
    x: jax.Array,
    num_components: int,
    key: jax.Array,
    *,
    covariance_type: str = "full",
    reg_covar: float = REG_COVAR,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> tuple[jax.Array, FitInfo]:
    """k-means++ -> k-means -> EM -> responsibilities [N, K] of x [N, d] (sklearn GaussianMixture)."""
    if not 1 <= num_components <= x.shape[0]:
        raise ValueError(f"a Gaussian mixture with {num_components} components needs at least as many samples, got N={x.shape[0]}")
    centres = kmeans_plus_plus(x, num_components, key)
    labels, _ = kmeans(x, centres)
    initial = jax.nn.one_hot(labels, num_components, dtype=L.high_dtype())
    params, info = fit_gmm(x, initial, covariance_type=covariance_type, reg_covar=reg_covar, tol=tol, max_iter=max_iter)
    return responsibilities(x, params), info
