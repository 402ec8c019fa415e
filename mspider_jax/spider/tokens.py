"""Task tokens and PTM tokens of Model Spider (Zhang et al., NeurIPS 2023, arXiv 2306.03900).

Spec: shared/specs/model_spider.md §2–3.
- Generic task tokens: the class prototypes of a task under the generic encoder, [C, Dg], projected
  by one shared affine map ("uni linear", Dg -> W).
- PTM-specific task tokens: the class prototypes in PTM m's own feature space, [C, d_m], projected
  by a per-PTM affine map ("hete linear", d_m -> W). PTMs have different d_m; we zero-pad every
  input to Dmax = max_m d_m and keep one weight tensor [M, Dmax, W]. Zero-padding is exact for
  affine maps (the padded input columns meet weight rows that never receive gradient; we initialise
  them to zero).
- PTM tokens: one free vector per PTM, [M, W], initialised N(0, 1).

Padding: token blocks are padded with zero rows to a static length and carry a boolean mask
(True = real token). No parameter shape depends on a padded length, so the same ranker serves tasks
of any class count; lengths are bucketed (`bucket_length`) to bound the number of compilations.

Initialisation follows the released PyTorch code (spec §4.4): Linear layers use PyTorch's default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights AND biases (Flax's default would be lecun-normal with
zero bias).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def bucket_length(num_rows: int, minimum: int = 8) -> int:
    """The smallest power of two >= max(num_rows, minimum): a static padded token count."""
    if num_rows < 0 or minimum < 1:
        raise ValueError(f"need num_rows >= 0 and minimum >= 1; got {num_rows}, {minimum}")
    return 1 << (max(num_rows, minimum) - 1).bit_length()


def pad_rows(rows: np.ndarray, length: int,
             dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pads (or truncates to the first `length` rows) a token block, and zero-pads its columns.

    Args:
      rows: [C, D] prototypes.
      length: number of rows of the output (rows beyond it are dropped: the paper's P_h truncation).
      dim: number of columns of the output (>= D); defaults to D.

    Returns:
      (padded [length, dim] float32, mask [length] bool, True for the real rows).
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"need a [C, D] block of prototypes, got shape {rows.shape}")
    dim = rows.shape[1] if dim is None else dim
    if dim < rows.shape[1]:
        raise ValueError(f"cannot pad {rows.shape[1]} feature columns to {dim}")
    kept = min(rows.shape[0], length)
    padded = np.zeros((length, dim), np.float32)
    padded[:kept, :rows.shape[1]] = rows[:kept]
    mask = np.zeros(length, bool)
    mask[:kept] = True
    return padded, mask


def torch_uniform_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default Linear initialiser (weights and biases): U(±1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """An `nnx.Linear` initialised like `torch.nn.Linear` (spec §4.4)."""
    init = torch_uniform_init(in_features)
    return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)


class ModelProjections(nnx.Module):
    """The per-PTM affine maps ("hete linears") d_m -> W, stored as one zero-padded tensor.

    Attributes:
      kernel: [M, Dmax, W]; rows >= d_m of model m are zero (they meet zero-padded inputs).
      bias: [M, W].
    """

    def __init__(self, model_dims: Sequence[int], width: int, *, rngs: nnx.Rngs):
        if not model_dims or min(model_dims) < 1:
            raise ValueError(f"model_dims must be positive, got {list(model_dims)}")
        self.model_dims = tuple(int(d) for d in model_dims)
        num_models, max_dim = len(self.model_dims), max(self.model_dims)
        # Each map keeps its own fan-in, as M separate torch Linears: U(±1/sqrt(d_m)). Drawn as one
        # tensor (a fixed number of ops whatever M is), then rows >= d_m zeroed.
        dims = np.asarray(self.model_dims, np.float32)
        bounds = jnp.asarray(1.0 / np.sqrt(dims))
        is_real_row = jnp.asarray(np.arange(max_dim)[None, :] < dims[:, None])
        kernel = jax.random.uniform(rngs.params(), (num_models, max_dim, width), minval=-1.0,
                                    maxval=1.0)
        bias = jax.random.uniform(rngs.params(), (num_models, width), minval=-1.0, maxval=1.0)
        self.kernel = nnx.Param(kernel * bounds[:, None, None] * is_real_row[:, :, None])
        self.bias = nnx.Param(bias * bounds[:, None])

    def __call__(self, prototypes: jax.Array) -> jax.Array:
        """prototypes: [B, M, P, Dmax] (zero-padded columns) -> tokens [B, M, P, W]."""
        tokens = jnp.einsum("bmpd,mdw->bmpw", prototypes, self.kernel[...])
        return tokens + self.bias[...][None, :, None, :]


class ModelTokens(nnx.Module):
    """The PTM tokens [M, W]: learned vectors theta, i.i.d. N(0, 1) at initialisation (spec §3.1).

    Optional metadata (not in the paper): with `metadata` x [M, K], what is known about each PTM
    without running it (e.g. log size, family one-hot), the token is
      token_m = learned_m * theta_m + x_m A + b        (A, b: a PyTorch-style Linear K -> W),
    and PTMs with learned_m = False (e.g. never seen in training) get their token from their
    metadata alone, so a ranker can score models it was not trained on. With
    `learned_token_dropout` p > 0, training (deterministic=False) zeroes each PTM's theta with
    probability p per call (no rescaling: the metadata part must rank models on its own, as it
    does for an unseen model). The metadata and the learned mask are static (tuples, not
    parameters): they are constructor arguments, saved with checkpoints like the other ones.
    """

    def __init__(self, num_models: int, width: int, *, rngs: nnx.Rngs,
                 metadata: Sequence[Sequence[float]] | None = None,
                 learned: Sequence[bool] | None = None, learned_token_dropout: float = 0.0):
        learned = None if learned is None else tuple(bool(flag) for flag in learned)
        if learned is not None and len(learned) != num_models:
            raise ValueError(f"learned has {len(learned)} entries for {num_models} models")
        if not 0.0 <= learned_token_dropout < 1.0:
            raise ValueError(
                f"learned_token_dropout must be in [0, 1), got {learned_token_dropout}")
        if metadata is None and learned is not None and not all(learned):
            raise ValueError("models without a learned vector (learned=False) need metadata")
        if metadata is None and learned_token_dropout:
            raise ValueError("learned_token_dropout needs metadata (a dropped token would be zero)")
        table = None if metadata is None else np.asarray(metadata, np.float64)
        if table is not None and (table.ndim != 2 or table.shape[0] != num_models
                                  or table.shape[1] < 1):
            raise ValueError(
                f"metadata must be [M={num_models}, K >= 1], got shape {table.shape}")
        if table is not None and not np.isfinite(table).all():
            raise ValueError("metadata contains NaN or inf; impute missing values first")
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (num_models, width)))
        self.learned = learned
        self.learned_token_dropout = float(learned_token_dropout)
        if table is None:
            self.metadata = self.metadata_projection = None
        else:
            self.metadata = tuple(tuple(float(v) for v in row) for row in table)
            self.metadata_projection = torch_linear(table.shape[1], width, rngs=rngs)

    def __call__(self, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Returns [M, W]; `rngs` needs a "dropout" stream when learned-token dropout is active."""
        tokens = self.embedding[...]
        keep = None if self.learned is None else jnp.asarray(self.learned, tokens.dtype)
        if not deterministic and self.learned_token_dropout:
            if rngs is None:
                raise ValueError(
                    "learned-token dropout in training needs rngs with a dropout stream")
            kept = jax.random.bernoulli(rngs.dropout(), 1.0 - self.learned_token_dropout,
                                        (tokens.shape[0],)).astype(tokens.dtype)
            keep = kept if keep is None else keep * kept
        if keep is not None:
            tokens = tokens * keep[:, None]
        if self.metadata is not None:
            tokens = tokens + self.metadata_projection(jnp.asarray(self.metadata, tokens.dtype))
        return tokens
