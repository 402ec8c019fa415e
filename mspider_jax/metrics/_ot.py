"""Optimal transport between two empirical measures with uniform weights (for OTCE).

* `sinkhorn`: entropic OT in the log domain, in JAX, with ε-scaling. The potentials (f, g) define
  the plan Π_ij = exp((f_i + g_j - C_ij)/ε); each iteration makes the rows and then the columns sum
  to the marginals exactly (logsumexp updates, so no kernel under/overflow at small ε). ε decreases
  geometrically (×`decay` per stage, warm-started) from max(C) to the final
  ε = `eps_rel`·mean(C); a stage ends when the row-marginal L1 error is below `tol` (or after
  `max_stage_iterations`), the solve ends at the final ε under the same test or after
  `max_iterations` in total. The entropic plan's cost exceeds the exact optimum W by O(ε·log N).
  Measured on synthetic features (Ns = 1000, Nt = 2000, D = 256) against the exact plan: eps_rel
  3e-3 / tol 1e-4 -> W 7e-4 relative high in 279 iterations; 1e-3 -> 1.2e-4 in ~730; 3e-4 -> 2e-5 in
  ~1600 (float32 and float64 alike; float32 cannot reach tol < ~3e-5). OTCE uses 2e-3 / 1e-4.
* `exact_plan_host`: the exact (unregularised) plan on the host with SciPy — an assignment problem
  (`linear_sum_assignment`) when the sizes allow replicating points to lcm(Ns, Nt) <= `max_size`
  copies, else the transportation LP (`linprog`, HiGHS). For small problems only (O(Ns·Nt) LP
  variables); used through `jax.pure_callback`.

Conventions: a = 1/Ns, b = 1/Nt; cost C [Ns, Nt]; plans sum to 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

EPS_REL = 1e-4
DECAY = 0.5
TOL = 1e-6
MAX_ITERATIONS = 5000
MAX_STAGE_ITERATIONS = 100
MAX_ASSIGNMENT_SIZE = 6000


def sinkhorn(
    cost: jax.Array,
    *,
    eps_rel: float = EPS_REL,
    decay: float = DECAY,
    tol: float = TOL,
    max_iterations: int = MAX_ITERATIONS,
    max_stage_iterations: int = MAX_STAGE_ITERATIONS,
) -> tuple[jax.Array, jax.Array]:
    """Entropic OT with uniform marginals for cost [Ns, Nt] -> (plan [Ns, Nt], iterations run)."""
    ns, nt = cost.shape
    log_a = -math.log(ns)
    log_b = -math.log(nt)
    eps_final = eps_rel * jnp.mean(cost)
    eps_start = jnp.maximum(jnp.max(cost), eps_final)

    def epsilon(stage):
        return jnp.maximum(eps_final, eps_start * decay ** stage.astype(cost.dtype))

    def cond(state):
        iteration, _, _, _, _, done = state
        return (iteration < max_iterations) & ~done

    def body(state):
        iteration, stage, stage_iteration, f, g, _ = state
        eps = epsilon(stage)
        # Row update f_i = ε(log a - logsumexp_j (g_j - C_ij)/ε). The rows of the current plan sum to
        # a·exp((f - f_new)/ε), so the same pass measures the current row-marginal L1 error (the
        # columns are exact after every column update).
        new_f = eps * (log_a - jax.nn.logsumexp((g[None, :] - cost) / eps, axis=1))
        error = jnp.sum(jnp.abs(jnp.expm1((f - new_f) / eps))) / ns
        converged = (error < tol) & (iteration > 0)
        final = eps <= eps_final
        done = final & converged
        new_g = eps * (log_b - jax.nn.logsumexp((new_f[:, None] - cost) / eps, axis=0))
        f = jnp.where(done, f, new_f)
        g = jnp.where(done, g, new_g)
        stage_done = converged | (stage_iteration + 1 >= max_stage_iterations)
        next_stage = jnp.where(stage_done & ~final, stage + 1, stage)
        next_stage_iteration = jnp.where(next_stage != stage, 0, stage_iteration + 1)
        return iteration + 1, next_stage, next_stage_iteration, f, g, done

    zeros_f = jnp.zeros((ns,), cost.dtype)
    zeros_g = jnp.zeros((nt,), cost.dtype)
    start = (jnp.int32(0), jnp.int32(0), jnp.int32(0), zeros_f, zeros_g, jnp.asarray(False))
    iterations, stage, _, f, g, _ = lax.while_loop(cond, body, start)
    plan = jnp.exp((f[:, None] + g[None, :] - cost) / epsilon(stage))
    return plan, iterations


def exact_plan_numpy(cost: np.ndarray, max_size: int = MAX_ASSIGNMENT_SIZE) -> np.ndarray:
    """Exact OT plan with uniform marginals for cost [Ns, Nt] (float64 NumPy, plan sums to 1)."""
    from scipy.optimize import linear_sum_assignment, linprog

    cost = np.asarray(cost, dtype=np.float64)
    ns, nt = cost.shape
    size = ns * nt // math.gcd(ns, nt)
    if size <= max_size:
        # Uniform weights: replicating each source point size/Ns times and each target point
        # size/Nt times turns the transportation problem into an assignment problem of that size.
        rows = np.repeat(np.arange(ns), size // ns)
        cols = np.repeat(np.arange(nt), size // nt)
        r, c = linear_sum_assignment(cost[np.ix_(rows, cols)])
        plan = np.zeros((ns, nt))
        np.add.at(plan, (rows[r], cols[c]), 1.0 / size)
        return plan
    # Transportation LP: variables Π (row-major), row sums 1/Ns, column sums 1/Nt.
    from scipy import sparse

    row_constraints = sparse.kron(sparse.eye(ns), np.ones((1, nt)))
    col_constraints = sparse.kron(np.ones((1, ns)), sparse.eye(nt))
    equality = sparse.vstack([row_constraints, col_constraints]).tocsr()
    rhs = np.concatenate([np.full(ns, 1.0 / ns), np.full(nt, 1.0 / nt)])
    result = linprog(cost.ravel(), A_eq=equality, b_eq=rhs, bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"exact OT: linprog failed: {result.message}")
    return result.x.reshape(ns, nt)


def exact_plan_host(cost: jax.Array) -> jax.Array:
    """`exact_plan_numpy` through `jax.pure_callback` (usable under jit; runs on the host)."""
    shape = jax.ShapeDtypeStruct(cost.shape, cost.dtype)
    return jax.pure_callback(lambda c: exact_plan_numpy(c).astype(c.dtype), shape, cost, vmap_method="sequential")
