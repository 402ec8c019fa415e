"""The Model Spider ranker in Flax NNX (Zhang et al., NeurIPS 2023, arXiv 2306.03900).

Spec: shared/specs/model_spider.md §4. For PTM m and a task, the token sequence is
  X^(m) = [theta_m ; u_1 .. u_Pu ; v^(m)_1 .. v^(m)_Ph]          [L, W]
(PTM token, generic task tokens, PTM-specific task tokens of m; padded rows masked), passed through
post-LN attention blocks (QKV without bias, output projection with bias, dropout on the attention
probabilities and on the projected output, no feed-forward) and read out at the PTM-token position
by a head LN + Dense(1): s_m = head(Z^(m)_0).

Two forms compute the same scores (parity-tested in deterministic mode):
- `Ranker.__call__`, the efficient form (spec §4.3). With one block only row 0 of the attention is
  read, so the keys/values of the shared generic tokens are computed once per task and every PTM
  token attends to them: O(B·Pu·W² + B·M·L·W) instead of O(B·M·L²·W). For depth > 1 every other
  position's output feeds the next block's keys, and a task token's output depends on m (it attends
  to theta_m and to m's specific tokens), so all blocks but the last run the full per-PTM sequence
  and only the last block uses the row-0 read-out. This stays exact.
- `Ranker.full_sequence_scores`, the reference form: the full L x L attention for every PTM.

Conventions: scores [B, M] in zoo order, higher = better. Masks are boolean, True = real token;
masked keys get logit -1e9 before the softmax (as the released code). Only keys are masked: a padded
query row is never read out or used as a key. With several heads, the temperature is sqrt(W /
heads), which is the paper's sqrt(1024) = 32 with one head. Initialisation as spec §4.4 (see
`AttentionBlock`). Dropout is on when `deterministic=False`; it then needs `rngs` with a "dropout"
stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mspider_jax.spider import tokens as tokens_lib

_MASKED_LOGIT = -1e9  # the released code's fill value; exp(-1e9 - max) is exactly 0 in float32
_LAYER_NORM_EPSILON = 1e-5  # PyTorch's LayerNorm default, used by the released code


class AttentionBlock(nnx.Module):
    """One post-LN attention block: Z = LN(X_q + Dropout(Attention(X_q, X_kv) W_O + b_O)).

    Initialisation (spec §4.4): W_Q, W_K, W_V ~ N(0, 2 / (W + d_head)) (= N(0, 1/W) for one head),
    W_O Xavier-normal, b_O ~ U(±1/sqrt(W)), LayerNorm gamma = 1, beta = 0.
    """

    def __init__(self, width: int, num_heads: int, dropout: float, *, rngs: nnx.Rngs):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        qkv_init = jax.nn.initializers.normal(math.sqrt(2.0 / (width + self.head_dim)))
        self.query = nnx.Linear(width, width, use_bias=False, kernel_init=qkv_init, rngs=rngs)
        self.key = nnx.Linear(width, width, use_bias=False, kernel_init=qkv_init, rngs=rngs)
        self.value = nnx.Linear(width, width, use_bias=False, kernel_init=qkv_init, rngs=rngs)
        self.output = nnx.Linear(
            width, width, rngs=rngs,
            kernel_init=jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),
            bias_init=tokens_lib.torch_uniform_init(width))
        self.attention_dropout = nnx.Dropout(dropout)
        self.output_dropout = nnx.Dropout(dropout)
        self.norm = nnx.LayerNorm(width, epsilon=_LAYER_NORM_EPSILON, rngs=rngs)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        """[..., L, W] -> [..., L, H, d_head]."""
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def _probabilities(self, logits: jax.Array, deterministic: bool,
                       rngs: nnx.Rngs | None) -> jax.Array:
        probabilities = jax.nn.softmax(logits / math.sqrt(self.head_dim), axis=-1)
        return self.attention_dropout(probabilities, deterministic=deterministic, rngs=rngs)

    def _finish(self, queries_x: jax.Array, attended: jax.Array, deterministic: bool,
                rngs: nnx.Rngs | None) -> jax.Array:
        """Residual + post-LN. queries_x: [..., W]; attended: [..., H, d_head] -> [..., W]."""
        projected = self.output(attended.reshape(*attended.shape[:-2], -1))
        projected = self.output_dropout(projected, deterministic=deterministic, rngs=rngs)
        return self.norm(queries_x + projected)

    def __call__(self, queries_x: jax.Array, context_x: jax.Array, key_mask: jax.Array, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Generic form: rows `queries_x` attend to all rows of `context_x`.

        Args:
          queries_x: [..., Lq, W] (the full sequence, or a subset of its rows for a read-out).
          context_x: [..., Lk, W].
          key_mask: [..., Lk] bool, True = real token.

        Returns:
          [..., Lq, W].
        """
        queries = self._split_heads(self.query(queries_x))
        keys = self._split_heads(self.key(context_x))
        values = self._split_heads(self.value(context_x))
        logits = jnp.einsum("...qhd,...khd->...hqk", queries, keys)
        logits = jnp.where(key_mask[..., None, None, :], logits, _MASKED_LOGIT)
        probabilities = self._probabilities(logits, deterministic, rngs)
        attended = jnp.einsum("...hqk,...khd->...qhd", probabilities, values)
        return self._finish(queries_x, attended, deterministic, rngs)

    def model_token_readout(self, model_tokens: jax.Array, task_tokens: jax.Array,
                            task_mask: jax.Array, specific_tokens: jax.Array | None,
                            specific_mask: jax.Array | None, *, deterministic: bool = True,
                            rngs: nnx.Rngs | None = None) -> jax.Array:
        """Efficient read-out (spec §4.3): the output row of every PTM token, with shared task keys.

        Args:
          model_tokens: [M, W] PTM tokens theta (never masked).
          task_tokens: [B, Pu, W] projected generic task tokens; task_mask: [B, Pu].
          specific_tokens: [B, M, Ph, W] projected PTM-specific tokens (row m only in PTM m's
            sequence), or None for no specific block; specific_mask: [B, M, Ph].

        Returns:
          [B, M, W]: the block output at the PTM-token position of each PTM's sequence.
        """
        batch = task_tokens.shape[0]
        queries = self._split_heads(self.query(model_tokens))  # [M, H, d]
        self_keys = self._split_heads(self.key(model_tokens))
        self_values = self._split_heads(self.value(model_tokens))
        task_keys = self._split_heads(self.key(task_tokens))  # [B, Pu, H, d], shared by all PTMs
        task_values = self._split_heads(self.value(task_tokens))

        self_logits = jnp.einsum("mhd,mhd->mh", queries, self_keys)[None, :, :, None]  # [1,M,H,1]
        self_logits = jnp.broadcast_to(self_logits, (batch, *self_logits.shape[1:]))
        task_logits = jnp.einsum("mhd,bphd->bmhp", queries, task_keys)
        task_logits = jnp.where(task_mask[:, None, None, :], task_logits, _MASKED_LOGIT)
        blocks = [self_logits, task_logits]
        if specific_tokens is not None:
            specific_keys = self._split_heads(self.key(specific_tokens))  # [B, M, Ph, H, d]
            specific_values = self._split_heads(self.value(specific_tokens))
            specific_logits = jnp.einsum("mhd,bmphd->bmhp", queries, specific_keys)
            specific_logits = jnp.where(specific_mask[:, :, None, :], specific_logits,
                                        _MASKED_LOGIT)
            blocks.append(specific_logits)
        probabilities = self._probabilities(jnp.concatenate(blocks, axis=-1), deterministic, rngs)

        num_tasks = task_tokens.shape[1]
        attended = probabilities[..., 0, None] * self_values[None]  # [B, M, H, d]
        attended += jnp.einsum("bmhp,bphd->bmhd", probabilities[..., 1:1 + num_tasks], task_values)
        if specific_tokens is not None:
            attended += jnp.einsum("bmhp,bmphd->bmhd", probabilities[..., 1 + num_tasks:],
                                   specific_values)
        queries_x = jnp.broadcast_to(model_tokens, (batch, *model_tokens.shape))
        return self._finish(queries_x, attended, deterministic, rngs)


class Ranker(nnx.Module):
    """Scores every PTM of a fixed zoo for a batch of tasks (Model Spider's ranker).

    Attributes:
      num_models, generic_dim, model_dims, width, num_heads, depth: the architecture (also saved
        with checkpoints so that `checkpointing.load_ranker` can rebuild it).

    PTM tokens (`tokens.ModelTokens`): learned vectors (the paper), optionally plus a projection of
    per-PTM metadata `model_metadata` [M, K]; `learned_models` [M] bool marks the PTMs that have a
    learned vector (the others, e.g. unseen in training, are scored from their metadata alone), and
    `learned_token_dropout` drops learned vectors in training.
    """

    def __init__(self, *, num_models: int, generic_dim: int, model_dims: Sequence[int],
                 width: int = 1024, num_heads: int = 1, depth: int = 1, dropout: float = 0.1,
                 model_metadata: Sequence[Sequence[float]] | None = None,
                 learned_models: Sequence[bool] | None = None, learned_token_dropout: float = 0.0,
                 rngs: nnx.Rngs):
        if len(model_dims) != num_models:
            raise ValueError(f"model_dims has {len(model_dims)} entries for {num_models} models")
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_models = num_models
        self.generic_dim = generic_dim
        self.model_dims = tuple(int(d) for d in model_dims)
        self.width = width
        self.num_heads = num_heads
        self.depth = depth
        self.generic_projection = tokens_lib.torch_linear(generic_dim, width, rngs=rngs)
        self.model_projections = tokens_lib.ModelProjections(self.model_dims, width, rngs=rngs)
        self.model_tokens = tokens_lib.ModelTokens(
            num_models, width, metadata=model_metadata, learned=learned_models,
            learned_token_dropout=learned_token_dropout, rngs=rngs)
        self.blocks = nnx.List(
            [AttentionBlock(width, num_heads, dropout, rngs=rngs) for _ in range(depth)])
        self.head_norm = nnx.LayerNorm(width, epsilon=_LAYER_NORM_EPSILON, rngs=rngs)
        self.head = tokens_lib.torch_linear(width, 1, rngs=rngs)

    @property
    def max_model_dim(self) -> int:
        return max(self.model_dims)

    def _check_inputs(self, generic, generic_mask, specific, specific_mask) -> None:
        if generic.ndim != 3 or generic.shape[-1] != self.generic_dim:
            raise ValueError(f"generic must be [B, Pu, {self.generic_dim}], got {generic.shape}")
        if generic_mask.shape != generic.shape[:2]:
            raise ValueError(
                f"generic_mask {generic_mask.shape} does not match generic {generic.shape}")
        if (specific is None) != (specific_mask is None):
            raise ValueError("give both specific and specific_mask, or neither")
        if specific is not None:
            expected = (generic.shape[0], self.num_models, specific.shape[2], self.max_model_dim)
            if specific.shape != expected:
                raise ValueError(
                    f"specific must be [B, M, Ph, Dmax] = {expected}, got {specific.shape}")
            if specific_mask.shape != specific.shape[:3]:
                raise ValueError(
                    f"specific_mask {specific_mask.shape} does not match specific {specific.shape}")

    def _tokens(self, generic, specific):
        task_tokens = self.generic_projection(
            generic)  # padded rows become the bias; they are masked
        specific_tokens = None if specific is None else self.model_projections(specific)
        return task_tokens, specific_tokens

    def _sequences(self, task_tokens, generic_mask, specific_tokens, specific_mask, model_tokens):
        """The full per-PTM sequences X [B, M, L, W] and key masks [B, M, L]."""
        batch, num_generic, width = task_tokens.shape
        model_tokens = jnp.broadcast_to(model_tokens[None, :, None, :],
                                        (batch, self.num_models, 1, width))
        parts = [
            model_tokens,
            jnp.broadcast_to(task_tokens[:, None], (batch, self.num_models, num_generic, width))
        ]
        masks = [
            jnp.ones((batch, self.num_models, 1), bool),
            jnp.broadcast_to(generic_mask[:, None, :], (batch, self.num_models, num_generic))
        ]
        if specific_tokens is not None:
            parts.append(specific_tokens)
            masks.append(specific_mask)
        return jnp.concatenate(parts, axis=2), jnp.concatenate(masks, axis=2)

    def _score(self, readout: jax.Array) -> jax.Array:
        """[B, M, W] -> [B, M]."""
        return self.head(self.head_norm(readout))[..., 0]

    def __call__(self, generic: jax.Array, generic_mask: jax.Array,
                 specific: jax.Array | None = None, specific_mask: jax.Array | None = None, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Scores all M PTMs for each task (efficient form).

        Args:
          generic: [B, Pu, Dg] generic class prototypes, zero-padded rows; generic_mask: [B, Pu]
            bool.
          specific: [B, M, Ph, Dmax] PTM-specific class prototypes (zero-padded rows and columns),
            or None when no PTM is enriched; specific_mask: [B, M, Ph] bool (all False for a PTM
            that is not enriched: its score is then exactly its stage-1 score).
          deterministic: False turns dropout on (then `rngs` must have a "dropout" stream).

        Returns:
          scores: [B, M], higher = better.
        """
        self._check_inputs(generic, generic_mask, specific, specific_mask)
        task_tokens, specific_tokens = self._tokens(generic, specific)
        options = dict(deterministic=deterministic, rngs=rngs)
        model_tokens = self.model_tokens(**options)
        if self.depth == 1:
            readout = self.blocks[0].model_token_readout(model_tokens, task_tokens,
                                                         generic_mask, specific_tokens,
                                                         specific_mask, **options)
            return self._score(readout)
        sequences, key_mask = self._sequences(task_tokens, generic_mask, specific_tokens,
                                              specific_mask, model_tokens)
        for block in self.blocks[:-1]:
            sequences = block(sequences, sequences, key_mask, **options)
        readout = self.blocks[-1](sequences[:, :, :1], sequences, key_mask, **options)[:, :, 0]
        return self._score(readout)

    def full_sequence_scores(self, generic: jax.Array, generic_mask: jax.Array,
                             specific: jax.Array | None = None,
                             specific_mask: jax.Array | None = None, *, deterministic: bool = True,
                             rngs: nnx.Rngs | None = None) -> jax.Array:
        """Reference form: the full L x L attention over every PTM's sequence, read out at row 0.

        Same arguments and result as `__call__`; O(B·M·L²·W), for tests and documentation.
        """
        self._check_inputs(generic, generic_mask, specific, specific_mask)
        task_tokens, specific_tokens = self._tokens(generic, specific)
        model_tokens = self.model_tokens(deterministic=deterministic, rngs=rngs)
        sequences, key_mask = self._sequences(task_tokens, generic_mask, specific_tokens,
                                              specific_mask, model_tokens)
        for block in self.blocks:
            sequences = block(sequences, sequences, key_mask, deterministic=deterministic,
                              rngs=rngs)
        return self._score(sequences[:, :, 0])
