"""Ranking losses for Model Spider (Zhang et al., NeurIPS 2023; spec model_spider.md §5).

Every loss takes
  scores: [B, M] predicted scores (higher = better),
  labels: [B, M] ground truth (raw accuracies or ranks; only the order matters except for ListNet),
  mask:   [B, M] bool, True where the label exists (a model without ground truth for a task
          is masked: it is neither a target nor a competitor),
and returns per-task losses [B]. A task with fewer than two valid models carries no ranking
information: its loss is 0, and `task_weights` gives it weight 0 so that batch means skip it.

- `plackett_luce`: the released code's "HierarchicalCE", a Plackett-Luce chain of softmax cross
  entropies, normalised by (n - 1) where n = number of valid models:
    l = 1/(n-1) * sum_{j=1}^{n-1} [ -s_{pi_j} + log sum_{l>=j} exp(s_{pi_l}) ],
  with pi the valid models sorted by descending label. This is ListMLE / (n - 1).
  Ties: pi comes from a STABLE descending sort, so tied models are placed in zoo order (lower index
  first) and each placed model leaves the denominator (index-based masking). The released code masks
  by label value instead, which keeps already-placed tied models in the denominator; we prefer the
  index-based form (a proper Plackett-Luce likelihood of one tie-broken order), as the spec advises.
- `listnet`: ListNet top-1 cross entropy -sum_m softmax(labels / T)_m log softmax(scores)_m over the
  valid models. Unlike the released code (summed over the batch), we return it per task.
- `pairwise_logistic`: RankNet: the mean over valid pairs with label_i > label_j of
  log(1 + exp(-(s_i - s_j))). Tied pairs contribute nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Finite stand-in for -inf on masked entries: keeps every intermediate (and gradient) finite.
_NEG = -1e30

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _check(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> None:
    if scores.ndim != 2 or scores.shape != labels.shape or scores.shape != mask.shape:
        raise ValueError(f"need scores, labels and mask of one shape [B, M]; got {scores.shape}, "
                         f"{labels.shape}, {mask.shape}")


def task_weights(mask: jax.Array) -> jax.Array:
    """[B, M] label mask -> [B] float: 1 for tasks with at least two valid models, else 0."""
    return (mask.sum(axis=-1) >= 2).astype(jnp.float32)


def plackett_luce(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Plackett-Luce / ListMLE chain / (n - 1), index-based ties (module doc). -> [B]."""
    _check(scores, labels, mask)
    # Stable sort on the key (invalid last, then descending label): ties keep zoo order.
    sort_key = jnp.where(mask, -labels.astype(jnp.float32), jnp.inf)
    order = jnp.argsort(sort_key, axis=-1, stable=True)
    sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
    sorted_valid = jnp.take_along_axis(mask, order, axis=-1)
    masked_scores = jnp.where(sorted_valid, sorted_scores, _NEG)
    # log sum_{l >= j} exp(s_{pi_l}) for every position j, as a logsumexp over an upper-triangular
    # mask: O(B M^2) work, but it compiles in ~1 s on XLA:CPU where lax.cumlogsumexp(reverse=True)
    # takes 10-25 s (measured for M = 10..186), and zoos are small.
    num_models = scores.shape[-1]
    later = jnp.triu(jnp.ones((num_models, num_models), bool))  # later[j, l] = l >= j
    tail_logsumexp = jax.nn.logsumexp(jnp.where(later, masked_scores[:, None, :], _NEG), axis=-1)
    # The last valid term is exactly 0 (log exp(s) - s).
    terms = jnp.where(sorted_valid, tail_logsumexp - masked_scores, 0.0)
    num_valid = mask.sum(axis=-1)
    return terms.sum(axis=-1) / jnp.maximum(num_valid - 1, 1)


def listnet(scores: jax.Array, labels: jax.Array, mask: jax.Array,
            temperature: float = 1.0) -> jax.Array:
    """ListNet top-1 cross entropy, targets softmax(labels / temperature), valid models. -> [B]."""
    _check(scores, labels, mask)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = jax.nn.softmax(jnp.where(mask, labels / temperature, _NEG), axis=-1)
    log_predicted = jax.nn.log_softmax(jnp.where(mask, scores, _NEG), axis=-1)
    loss = -jnp.sum(jnp.where(mask, target * log_predicted, 0.0), axis=-1)
    return loss * task_weights(mask)


def pairwise_logistic(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """RankNet: mean over valid pairs (i better than j) of softplus(s_j - s_i). -> [B]."""
    _check(scores, labels, mask)
    better = (labels[:, :, None] > labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    # pair_loss[b, i, j] = softplus(s_j - s_i).
    pair_loss = jax.nn.softplus(scores[:, None, :] - scores[:, :, None])
    num_pairs = better.sum(axis=(1, 2))
    return jnp.where(better, pair_loss, 0.0).sum(axis=(1, 2)) / jnp.maximum(num_pairs, 1)


LOSSES: dict[str, LossFn] = {
    "plackett_luce": plackett_luce,
    "listnet": listnet,
    "pairwise_logistic": pairwise_logistic,
}


def get_loss(name: str, **options) -> LossFn:
    """Looks up a loss by name; `options` are bound keyword arguments (e.g. listnet temperature)."""
    if name not in LOSSES:
        raise ValueError(f"unknown ranking loss {name!r}; known: {sorted(LOSSES)}")
    loss = LOSSES[name]
    if not options:
        return loss
    return lambda scores, labels, mask: loss(scores, labels, mask, **options)


def batch_loss(per_task: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean of per-task losses [B]; weights [B] are 0 for padding/uninformative tasks."""
    return jnp.sum(per_task * weights) / jnp.maximum(jnp.sum(weights), 1.0)
