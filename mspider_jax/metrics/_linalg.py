"""Numerics shared by the transferability metrics.

Precision policy (the contract every metric documents in its own docstring):

* The caller's features stay in their dtype (float32 from torch in practice). The O(N·D²) and
  O(N·C·D) products (`gram`, `class_sums`) run in that dtype, on *centred* data and with
  `Precision.HIGHEST` (so GPUs/TPUs do not silently drop to TF32/bfloat16 passes). Centring first
  keeps the float32 rounding error relative to the spread of the data instead of its offset.
* Everything downstream of those products (eigendecompositions, solves, log-determinants, the
  scalar reductions where terms cancel) runs in `high_dtype()`: float64 when x64 is enabled.
  `mspider_jax.metrics.score` enables x64 for the duration of the call (`precision_scope`) on
  backends that have float64 (CPU, GPU), so the *default* call gets float64 reductions without the
  caller setting a global flag. On TPU (no float64) `high_dtype()` is float32 and the metrics rely on
  their stable reformulations alone.

Shapes are documented per function: `x: [N, D]` samples by features, `labels: [N]` int in 0..C-1.
All functions are pure, jit-able with static shapes and vmap-able.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsp_linalg
from jax import lax

# Explicit matmul precision: on GPU/TPU the default float32 matmul may use TF32/bf16 passes, which
# would lose the 1e-4 accuracy the metrics promise. On CPU this is a no-op.
HIGHEST = lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------------
# Precision helpers.


@functools.cache
def supports_float64() -> bool:
    """True if the default backend computes in float64 (CPU and GPU do, TPU does not)."""
    return jax.default_backend() != "tpu"


@contextlib.contextmanager
def precision_scope() -> Iterator[None]:
    """Enables float64 (jax x64) inside the block where the backend supports it.

    jit caches are keyed on the x64 flag, so a function compiled inside the scope is reused inside
    later scopes and never leaks float64 into code outside it.
    """
    if supports_float64():
        with jax.enable_x64(True):
            yield
    else:
        yield


def high_dtype() -> jnp.dtype:
    """The dtype for sensitive reductions: float64 when x64 is enabled, else float32."""
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """The dtype for the big products on `x`: its own float dtype, at least float32."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def to_high(x: jax.Array) -> jax.Array:
    """Casts `x` to `high_dtype()`."""
    return jnp.asarray(x).astype(high_dtype())


def to_compute(x: jax.Array) -> jax.Array:
    """Casts `x` to `compute_dtype(x)` (float16/bfloat16/int inputs become float32)."""
    x = jnp.asarray(x)
    return x.astype(compute_dtype(x))


def row_major(a: jax.Array) -> jax.Array:
    """`a` itself, materialised in its logical (row-major) layout on CPU.

    XLA folds a transpose feeding a dot into the dot's dimension numbers. On CPU a product whose
    narrow operand arrives transposed that way misses the fast (YNNPACK) kernel and can run 1.5-2x
    slower (`_pca`); the barrier keeps the transposed copy, which is cheap for a narrow
    operand. Other backends get `a` unchanged.
    """
    if jax.default_backend() != "cpu":
        return a
    return lax.optimization_barrier(a)


def mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` at full precision of the operands' dtype (no TF32/bf16 passes on accelerators)."""
    return jnp.matmul(a, b, precision=HIGHEST)


# ------------------------------------------------------------------------------------------------
# Labels and class statistics (matmul forms: no [N, C, ...] tensors beyond the one-hot).


def one_hot(labels: jax.Array, num_classes: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """labels: [N] int in 0..C-1 -> [N, C] one-hot in `dtype`."""
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def class_counts(labels: jax.Array, num_classes: int, dtype: jnp.dtype | None = None) -> jax.Array:
    """labels: [N] -> n_c: [C] (exact integer counts, returned in `dtype`, default high_dtype())."""
    counts = jnp.zeros((num_classes,), jnp.int32).at[labels].add(1)
    return counts.astype(high_dtype() if dtype is None else dtype)


def class_sums(x: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """x: [N, D], labels: [N] -> S: [C, D] with S_c = sum of the rows of class c.

    Computed as one_hot(y)ᵀ x in x's compute dtype (a matmul, fast on every backend).
    """
    x = to_compute(x)
    return mm(one_hot(labels, num_classes, x.dtype).T, x)


def class_means(
    x: jax.Array, labels: jax.Array, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    """x: [N, D] -> (means [C, D], counts [C]), both in high_dtype().

    An empty class gets a zero mean (not NaN); callers that care mask it with `counts > 0`.
    """
    sums = to_high(class_sums(x, labels, num_classes))
    counts = class_counts(labels, num_classes)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return means, counts


# ------------------------------------------------------------------------------------------------
# Centring, Gram and covariance.


def column_mean(x: jax.Array) -> jax.Array:
    """x: [N, D] -> mean over rows [D], accumulated in high_dtype()."""
    return jnp.mean(to_high(x), axis=0)


def center(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [N, D] -> (z = x - mean in x's compute dtype [N, D], mean in high_dtype() [D]).

    The mean is accumulated in high precision; the subtraction is rounded once to the compute dtype.
    """
    mean = column_mean(x)
    z = (to_high(x) - mean).astype(compute_dtype(x))
    return z, mean


def gram(x: jax.Array) -> jax.Array:
    """x: [N, D] -> xᵀx: [D, D] in high_dtype().

    The product runs in x's compute dtype (float32 for float32 input: the O(N·D²) part); the result is
    cast up and symmetrised so that eigh/cholesky downstream see an exactly symmetric matrix.
    """
    x = to_compute(x)
    g = to_high(_symmetric_product(x))
    return 0.5 * (g + g.T)


# XLA:CPU has no SYRK: xᵀx runs as a full GEMM, twice the work BLAS needs for a symmetric result.
# From SYMMETRIC_MIN_DIM columns the CPU path multiplies column blocks for the upper triangle only
# and mirrors them: b blocks cost (b+1)/(2b) of the GEMM, while blocks narrower than ~170 columns lose
# more in kernel efficiency than they save. Measured on 2 AMD Zen 3 cores, N = 10 000, interleaved
# medians (s): D = 2048: 1 block 0.71, 4 blocks 0.48, 5 0.40, 6 0.41, 7 0.39, 8 0.42, 12 0.43;
# D = 1024: 1 block 0.164, 4 0.146, 6 0.125; D = 4096 (N = 5000): 4 blocks 0.96, 6 0.85, 8 0.89;
# D = 768: 1 block 0.086, 4 0.065; D = 512: 1 block 0.068, 2 0.047, 3 0.050.
# Accelerators keep one GEMM.
SYMMETRIC_MIN_DIM = 512
SYMMETRIC_MIN_BLOCK_WIDTH = 170
SYMMETRIC_MAX_BLOCKS = 6


def symmetric_blocks(dim: int) -> int:
    """How many column blocks `_symmetric_product` splits a CPU Gram of width `dim` into (1: one GEMM)."""
    if jax.default_backend() != "cpu" or dim < SYMMETRIC_MIN_DIM:
        return 1
    return max(1, min(SYMMETRIC_MAX_BLOCKS, dim // SYMMETRIC_MIN_BLOCK_WIDTH))


def _symmetric_product(x: jax.Array) -> jax.Array:
    """x: [N, D] -> xᵀx [D, D] in x's dtype, by upper-triangle column blocks on CPU for large D."""
    dim = x.shape[1]
    num_blocks = symmetric_blocks(dim)
    if num_blocks == 1:
        return mm(x.T, x)
    edges = [round(i * dim / num_blocks) for i in range(num_blocks + 1)]
    blocks = [x[:, lo:hi] for lo, hi in zip(edges[:-1], edges[1:])]
    contract = (((0,), (0,)), ((), ()))
    upper = {
        (i, j): lax.dot_general(blocks[i], blocks[j], contract, precision=HIGHEST)
        for i in range(num_blocks)
        for j in range(i, num_blocks)
    }
    rows = [[upper[(i, j)] if j >= i else upper[(j, i)].T for j in range(num_blocks)] for i in range(num_blocks)]
    return jnp.block(rows)


def centered_gram(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [N, D] -> ((x - x̄)ᵀ(x - x̄) [D, D], x̄ [D]), both in high_dtype()."""
    z, mean = center(x)
    return gram(z), mean


def uncentered_gram(x: jax.Array) -> jax.Array:
    """x: [N, D] -> xᵀx [D, D] in high_dtype(), for metrics defined on *uncentred* features (LogME).

    Computed from the centred z = x - m as zᵀz + (zᵀ1)mᵀ + m(1ᵀz) + N·m mᵀ: the float32 product only
    sees the spread of the data, the (large) offset terms are added in high precision.
    """
    z, mean = center(x)
    col_sum = jnp.sum(to_high(z), axis=0)  # ~0, kept so the identity is exact
    cross = jnp.outer(col_sum, mean)
    return gram(z) + cross + cross.T + x.shape[0] * jnp.outer(mean, mean)


def uncentered_cross(x: jax.Array, t: jax.Array) -> jax.Array:
    """x: [N, D], t: [N, K] -> xᵀt [D, K] in high_dtype(), computed on centred operands like
    `uncentered_gram` (the O(N·D·K) product in x's compute dtype, offsets in high precision)."""
    z, x_mean = center(x)
    th = to_high(t)
    t_mean = jnp.mean(th, axis=0)
    u = (th - t_mean).astype(z.dtype)
    z_sum = jnp.sum(to_high(z), axis=0)
    u_sum = jnp.sum(to_high(u), axis=0)
    n = x.shape[0]
    return (
        to_high(mm(z.T, u))
        + jnp.outer(z_sum, t_mean)
        + jnp.outer(x_mean, u_sum)
        + n * jnp.outer(x_mean, t_mean)
    )


def uncentered_kernel(x: jax.Array) -> jax.Array:
    """x: [N, D] -> x xᵀ [N, N] in high_dtype() (for N <= D), from centred z as
    z zᵀ + a1ᵀ + 1aᵀ + ‖m‖²·11ᵀ with a = z m."""
    z, mean = center(x)
    k = to_high(mm(z, z.T))
    a = to_high(z) @ mean
    k = k + a[:, None] + a[None, :] + jnp.sum(mean**2)
    return 0.5 * (k + k.T)


def covariance(x: jax.Array, ddof: int = 1) -> jax.Array:
    """x: [N, D] -> sample covariance [D, D] (normaliser N - ddof) in high_dtype()."""
    g, _ = centered_gram(x)
    return g / (x.shape[0] - ddof)


def standardize(x: jax.Array, eps: float = 1e-8, ddof: int = 0) -> jax.Array:
    """x: [N, D] -> (x - mean) / (std + eps) column-wise, in x's compute dtype.

    Mean and std are accumulated in high_dtype(); a constant column becomes exactly 0.
    """
    xh = to_high(x)
    mean = jnp.mean(xh, axis=0)
    std = jnp.std(xh, axis=0, ddof=ddof)
    return ((xh - mean) / (std + eps)).astype(compute_dtype(x))


# ------------------------------------------------------------------------------------------------
# Logs and small matrix functions (high precision).


def safe_log(x: jax.Array, eps: float | None = None) -> jax.Array:
    """log(x + eps) when `eps` is given (reference-style epsilon); otherwise log(x) for x > 0 and 0
    where x <= 0, for terms that are multiplied by a zero weight there (J·log J, masked sums).
    Never produces -inf/NaN in the eps=None form, so gradients and masked sums stay finite.
    """
    if eps is not None:
        return jnp.log(x + eps)
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), 0.0)


def xlogx(x: jax.Array) -> jax.Array:
    """x·log(x) with 0·log 0 = 0."""
    return x * safe_log(x)


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric eigendecomposition in high_dtype(): a [D, D] -> (eigenvalues [D] ascending,
    eigenvectors [D, D] as columns)."""
    a = to_high(a)
    return jnp.linalg.eigh(0.5 * (a + a.T))


def tridiagonalize(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Householder reduction of a symmetric a [D, D] (high_dtype) to T = QᵀaQ.

    Returns (diagonal [D], off-diagonal [D-1], reflectors [D, D], taus [D-1]) in LAPACK `sytrd`
    (lower) layout; `tridiagonal_basis_transpose` applies Qᵀ. About half the work of `eigh`: no
    eigenvectors are formed or transformed back.
    """
    a = to_high(a)
    reflectors, diagonal, off_diagonal, taus = lax.linalg.tridiagonal(0.5 * (a + a.T), lower=True)
    return diagonal, off_diagonal, reflectors, taus


def tridiagonal_basis_transpose(reflectors: jax.Array, taus: jax.Array, b: jax.Array, block: int = 128) -> jax.Array:
    """Qᵀb for the Q of `tridiagonalize`: b [D, K] -> [D, K].

    Q = H_1…H_{D-2} acts on rows 1..D-1 (H_i = I - τ_i v_i v_iᵀ, v_i stored below the subdiagonal
    of column i with a unit at row i+1). The reflectors are applied `block` at a time in compact WY
    form, Q_blk = I - V T Vᵀ with T⁻¹ = diag(1/τ) + strict_upper(VᵀV): matrix products with b only,
    instead of forming the D×D matrix Q (2-3x slower at D = 2048). A reflector with τ = 0 (the identity)
    gets a zero vector.
    """
    size = reflectors.shape[0] - 1
    if taus.shape[0] == 0:  # D <= 1: Q = I
        return b
    vectors = jnp.tril(reflectors[1:, :-1], -1) + jnp.eye(size, dtype=reflectors.dtype)
    padding = -taus.shape[0] % block  # identity reflectors (zero vectors) fill the last block
    taus = jnp.pad(taus, (0, padding))
    vectors = jnp.where(taus[None, :] == 0, 0.0, jnp.pad(vectors, ((0, 0), (0, padding))))
    blocks = (jnp.moveaxis(vectors.reshape(size, -1, block), 1, 0), taus.reshape(-1, block))

    def apply_block(rest, block_args):  # one compiled body for every block (unrolled blocks compile slowly)
        v, tau = block_args
        t_inverse = jnp.triu(v.T @ v, 1) + jnp.diag(1.0 / jnp.where(tau == 0, 1.0, tau))
        t = jsp_linalg.solve_triangular(t_inverse, jnp.eye(block, dtype=v.dtype), lower=False)
        return rest - v @ (t.T @ (v.T @ rest)), None

    rest, _ = lax.scan(apply_block, b[1:], blocks)
    return jnp.concatenate([b[:1], rest], axis=0)


def tridiagonal_eigenvalues(diagonal: jax.Array, off_diagonal: jax.Array, rtol: float | None = None) -> jax.Array:
    """Ascending eigenvalues of the symmetric tridiagonal matrix (diagonal [D], off-diagonal [D-1]).

    JAX's bisection (`eigh_tridiagonal`, ~0.2 s at D = 2048 in float64 on 2 CPU cores). LAPACK
    `sterf` through a host callback takes 0.06 s, but a callback inside a compiled metric stops
    `score_zoo` from overlapping one model's host work with the next one's compute (measured: the
    zoo of 10 LogME calls went from 1.12x faster than 10 calls to 0.93-0.99x), and callbacks run
    outside `precision_scope`, where float64 arrays are converted to float32.

    A 1×1 block that is exactly zero (zero diagonal entry, zero off-diagonal neighbours: a dead
    feature unit gives an exactly zero row of a Gram) is an exact zero eigenvalue, which bisection
    returns as ~pivmin (5.5e-12 measured); those values, the ones nearest zero, are set to 0 as LAPACK
    gives them (LogME's cutoff σ > 1e-20 depends on it).

    rtol: bisect only down to an absolute error of rtol·‖T‖ (Gershgorin bound) instead of machine
    precision: each bit is one pass over all eigenvalues, so rtol = 1e-10 runs ~35 passes instead of
    ~53 (0.15 vs 0.27 s at D = 2048). For a matrix whose entries carry larger errors anyway (a float32
    Gram: ~1e-7·‖T‖). None: full precision.
    """
    neighbours = jnp.pad(jnp.abs(off_diagonal), 1)  # |T_{i,i-1}|, |T_{i,i+1}| as [:-1], [1:]
    tol = None if rtol is None else rtol * jnp.max(jnp.abs(diagonal) + neighbours[:-1] + neighbours[1:])
    values = jsp_linalg.eigh_tridiagonal(diagonal, off_diagonal, eigvals_only=True, tol=tol)
    exact_zeros = jnp.sum((diagonal == 0) & (neighbours[:-1] == 0) & (neighbours[1:] == 0))
    nearest_zero = jnp.argsort(jnp.abs(values))
    zeroed = values.at[nearest_zero].set(jnp.where(jnp.arange(values.shape[0]) < exact_zeros, 0.0, values[nearest_zero]))
    return jnp.sort(zeroed)


def eig_cutoff_mask(eigenvalues: jax.Array, rtol: float) -> jax.Array:
    """Mask of the eigenvalues kept by a pseudo-inverse with relative cutoff `rtol`:
    |λ| > rtol · max|λ| (the singular-value rule of numpy/jnp pinv for a symmetric matrix)."""
    magnitude = jnp.abs(eigenvalues)
    return magnitude > rtol * jnp.max(magnitude)


def pinv_psd(a: jax.Array, rtol: float) -> jax.Array:
    """Pseudo-inverse of a symmetric matrix a [D, D] via eigh, with an explicit relative cutoff.

    Equals `numpy.linalg.pinv(a, rcond=rtol)` (singular values of a symmetric matrix are |λ|).
    Always pass `rtol`: the library defaults differ between numpy and JAX.
    """
    vecs, inv_lam = _inverse_spectrum(a, rtol)
    return (vecs * inv_lam) @ vecs.T


def _inverse_spectrum(a: jax.Array, rtol: float) -> tuple[jax.Array, jax.Array]:
    """Eigenvectors [D, D] and pseudo-inverted eigenvalues [D] (0 at or below the cutoff `rtol`) of
    a symmetric a, in high_dtype(): pinv(a) = vecs · diag(inv_lam) · vecsᵀ."""
    return _spectrum(a, rtol)[1:3]


def _spectrum(a: jax.Array, rtol: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(eigenvalues [D], eigenvectors [D, D], pseudo-inverted eigenvalues [D], kept mask [D]) of a
    symmetric a (see `_inverse_spectrum`)."""
    lam, vecs = eigh(a)
    keep = eig_cutoff_mask(lam, rtol)
    return lam, vecs, jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0), keep


def _pinv_apply(vecs: jax.Array, inv_lam: jax.Array, b: jax.Array) -> jax.Array:
    """pinv(a)·b from `_inverse_spectrum(a)` without forming pinv(a) [D, D]."""
    return vecs @ (inv_lam[:, None] * (vecs.T @ b))


# A Cholesky factor is trusted for a⁺b when its smallest pivot² exceeds this many ulps of the largest
# diagonal entry times D: below that the matrix is singular to working precision (dead units, N <= D)
# and the pseudo-inverse's cutoff decides, so the eigh path runs instead.
CHOLESKY_PIVOT_ULPS = 1.0
# Below this size psd_solver always uses eigh: its cost is small there, and compiling one branch
# instead of a Cholesky + eigh `lax.cond` matters for zoos of small models (the mini zoo: D ~ 128).
CHOLESKY_MIN_DIM = 512


def psd_solver(a: jax.Array, rtol: float) -> Callable[[jax.Array], jax.Array]:
    """b [D, K] -> a⁺b for a symmetric PSD a [D, D], in high_dtype(); a is factorised once.

    Equals `pinv_psd(a, rtol) @ b`. When a is positive definite to working precision (a Cholesky
    factor exists with every pivot² > D·eps·max diag) it is solved by Cholesky, ~7x cheaper than the
    eigendecomposition at D = 2048; the metrics' cutoffs (rtol <= 1e-15) keep every eigenvalue of such a
    matrix, so the pseudo-inverse is the inverse and both paths agree to rounding. Otherwise (singular
    or numerically singular a: dead units, N <= D) the eigh pseudo-inverse with cutoff `rtol` runs.
    Under `vmap` both branches run (`lax.cond` becomes a select). For D < CHOLESKY_MIN_DIM it is
    always the eigh pseudo-inverse.
    """
    return psd_solver_resolved(a, rtol)[0]


# A Gram rounded at relative level ε (float32 products: ε₃₂) resolves the pseudo-inverse when every
# eigenvalue it inverts is at least this many ε of the largest one. Measured on standardised features,
# smallest inverted eigenvalue / (ε₃₂·max): 0.26-2.5 on the mini-zoo PTMs whose float32 EMMS / H-Score
# were 0.1-4 % off the float64 value, 138-8000 on the benchmark's synthetic tasks and the others.
GRAM_RESOLUTION_ULPS = 10.0


def psd_solver_resolved(
    a: jax.Array, rtol: float, input_epsilon: float | None = None
) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """`psd_solver(a, rtol)` and whether a Gram rounded at relative level `input_epsilon` resolves it.

    resolved: every eigenvalue the pseudo-inverse inverts is >= GRAM_RESOLUTION_ULPS·input_epsilon·
    max (True when input_epsilon is None). On the eigh path this reads the spectrum; on the Cholesky
    path it reads the pivots (min pivot² >= λ_min, so a small pivot proves an unresolved spectrum),
    and a matrix singular to working precision (the eigh fallback) counts as unresolved.
    """
    a = to_high(a)
    a = 0.5 * (a + a.T)
    level = None if input_epsilon is None else GRAM_RESOLUTION_ULPS * input_epsilon
    if a.shape[0] < CHOLESKY_MIN_DIM:  # eigh is cheap here, and one branch compiles faster than two
        lam, vecs, inv_lam, keep = _spectrum(a, rtol)
        top = jnp.max(jnp.abs(lam))
        resolved = jnp.array(True) if level is None else jnp.all(jnp.where(keep, lam >= level * top, True))
        return (lambda b: _pinv_apply(vecs, inv_lam, to_high(b))), resolved
    chol = jnp.linalg.cholesky(a)
    pivots = jnp.diagonal(chol)
    threshold = CHOLESKY_PIVOT_ULPS * a.shape[0] * jnp.finfo(a.dtype).eps * jnp.max(jnp.diagonal(a))
    trusted = jnp.all(jnp.isfinite(chol)) & (jnp.min(pivots) ** 2 > threshold)
    if level is None:
        resolved = jnp.array(True)
    else:
        resolved = trusted & (jnp.min(pivots) ** 2 >= level * jnp.max(jnp.diagonal(a)))

    def solve(b: jax.Array) -> jax.Array:
        def by_cholesky(rhs: jax.Array) -> jax.Array:
            return jsp_linalg.cho_solve((chol, True), rhs)

        def by_eigh(rhs: jax.Array) -> jax.Array:
            return _pinv_apply(*_inverse_spectrum(a, rtol), rhs)

        return lax.cond(trusted, by_cholesky, by_eigh, to_high(b))

    return solve, resolved


def refinable_gram(dtype: Any) -> float | None:
    """The relative rounding level of a Gram of `dtype` features when a more precise Gram exists to
    fall back to (float32 features on a backend with float64: ε₃₂), else None."""
    if jnp.dtype(dtype) == jnp.float32 and high_dtype() == jnp.float64:
        return float(jnp.finfo(jnp.float32).eps)
    return None


def psd_solve(a: jax.Array, b: jax.Array, rtol: float) -> jax.Array:
    """a⁺b for a symmetric PSD a [D, D] and b [D, K] (`psd_solver`)."""
    return psd_solver(a, rtol)(b)


def pinv(a: jax.Array, rtol: float) -> jax.Array:
    """General SVD pseudo-inverse in high_dtype() with an explicit relative cutoff `rtol`."""
    return jnp.linalg.pinv(to_high(a), rtol=rtol)


def logdet_spd(a: jax.Array) -> jax.Array:
    """log det of a symmetric positive definite a [..., D, D] via Cholesky, in high_dtype()."""
    a = to_high(a)
    chol = jnp.linalg.cholesky(0.5 * (a + jnp.swapaxes(a, -1, -2)))
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


# ------------------------------------------------------------------------------------------------
# PCA (exact, via eigh of the covariance; deterministic, unlike sklearn's randomized solver).


def pca_eigh(x: jax.Array, ddof: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Exact PCA of x [N, D] through the eigendecomposition of its covariance.

    Returns:
      explained_variance: [D] covariance eigenvalues (normaliser N - ddof), *descending*, clipped at 0;
      components: [D, D] matching eigenvectors as columns (sign arbitrary), high_dtype();
      mean: [D] the column mean, high_dtype().
    """
    g, mean = centered_gram(x)
    lam, vecs = eigh(g / (x.shape[0] - ddof))
    return jnp.maximum(lam[::-1], 0.0), vecs[:, ::-1], mean


def pca_project(x: jax.Array, num_components: int, ddof: int = 1) -> tuple[jax.Array, jax.Array]:
    """Projects x [N, D] on its top `num_components` principal axes (centred, no whitening).

    Returns (projected [N, k] in high_dtype(), explained_variance [D] descending).
    """
    variance, components, mean = pca_eigh(x, ddof=ddof)
    projected = mm(to_high(x) - mean, components[:, :num_components])
    return projected, variance
