"""Two-stage ranking of PTMs with a trained Model Spider ranker (spec model_spider.md §7).

Stage 1 scores all M PTMs from the task's generic class prototypes alone. Stage 2 takes the top-k
PTMs of stage 1, gets their own class prototypes on the task (that is, runs only those k PTMs over
the data), and re-scores them with their PTM-specific tokens. Every other PTM keeps its stage-1
score exactly (its specific block is fully masked, and we copy the stage-1 value to make that
explicit). The final ranking sorts all M scores together; ties keep zoo order (stable sort).

`rank_task` serves one new task and calls the prototype callable only for the k PTMs it enriches;
`score_tasks` / `two_stage_scores` score many prepared tasks (a `data.TaskSet`) in batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from mspider_jax.spider import data as data_lib
from mspider_jax.spider import ensemble as ensemble_lib
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import prototypes as prototypes_lib
from mspider_jax.spider import source_affinity
from mspider_jax.spider import tokens as tokens_lib


@functools.partial(jax.jit, static_argnums=0)
def _scores(graphdef, params, generic, generic_mask, specific, specific_mask):
    return nnx.merge(graphdef, params)(generic, generic_mask, specific, specific_mask)


def score_batch(ranker: model_lib.Ranker | ensemble_lib.RankerEnsemble, batch: data_lib.Batch) -> np.ndarray:
    """Deterministic scores [B, M] of a padded batch (jit-compiled once per batch shape); for an
    ensemble the mean of its members' scores; with a source-affinity prior, the fused scores."""
    if isinstance(ranker, source_affinity.AffinityPriorRanker):
        return ranker.prior.fuse(score_batch(ranker.ranker, batch), batch.generic, batch.generic_mask)
    if isinstance(ranker, ensemble_lib.RankerEnsemble):
        return np.mean([score_batch(member, batch) for member in ranker.members], axis=0)
    graphdef, params = nnx.split(ranker)
    return np.asarray(
        _scores(graphdef, params, batch.generic, batch.generic_mask, batch.specific,
                batch.specific_mask))


def score_tasks(ranker: model_lib.Ranker, taskset: data_lib.TaskSet, *, specific_length: int,
                generic_length: int | None = None, enriched: np.ndarray | None = None,
                batch_size: int = 16) -> np.ndarray:
    """Scores [T, M] of every task of `taskset`.

    Args:
      specific_length: P_h (rows kept of each PTM-specific block).
      generic_length: Pu of every batch; default `bucket_length` of the task set's largest class
        count.
      enriched: [T, M] bool, the PTMs scored with their specific tokens; None = stage 1 for all.
      batch_size: every batch is padded to this many tasks, so that all batches (and task sets of
        the same generic_length) share one compiled program.
    """
    scores = np.zeros((len(taskset), ranker.num_models), np.float32)
    if generic_length is None:
        generic_length = tokens_lib.bucket_length(taskset.max_classes)
    for start in range(0, len(taskset), batch_size):
        indices = list(range(start, min(start + batch_size, len(taskset))))
        batch = data_lib.make_batch(
            taskset, indices, model_dims=ranker.model_dims, specific_length=specific_length,
            batch_size=batch_size, generic_length=generic_length,
            enriched=None if enriched is None or not enriched[indices].any() else enriched[indices])
        scores[indices] = score_batch(ranker, batch)[:len(indices)]
    return scores


def top_k_mask(scores: np.ndarray, k: int, available: np.ndarray | None = None) -> np.ndarray:
    """[T, M] bool: each row's k highest scores among `available` models (ties: lower index)."""
    scores = np.asarray(scores, np.float64)
    if available is not None:
        scores = np.where(available, scores, -np.inf)
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask & np.isfinite(scores)


def two_stage_scores(ranker: model_lib.Ranker, taskset: data_lib.TaskSet, k: int, *,
                     stage1: np.ndarray | None = None, **scoring) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2 for every task: re-scores each task's top-k stage-1 PTMs that have prototypes.

    Args:
      stage1: [T, M] stage-1 scores if already computed.
      **scoring: `score_tasks` options (specific_length, generic_length, batch_size).

    Returns:
      (final scores [T, M], enriched [T, M] bool). With k = 0 the final scores are the stage-1
      scores.
    """
    if stage1 is None:
        stage1 = score_tasks(ranker, taskset, **scoring)
    enriched = top_k_mask(stage1, k, taskset.has_prototypes())
    if not enriched.any():
        return stage1.copy(), enriched
    stage2 = score_tasks(ranker, taskset, enriched=enriched, **scoring)
    return np.where(enriched, stage2, stage1), enriched


@dataclasses.dataclass(frozen=True)
class Ranking:
    """The ranking of a zoo for one task.

    Attributes:
      model_names: [M] the zoo.
      stage1_scores: [M] scores from the generic prototypes alone.
      scores: [M] final scores (stage 2 for the enriched PTMs, stage 1 for the others).
      enriched: indices of the PTMs re-scored with their own prototypes (the stage-1 top-k).
    """

    model_names: tuple[str, ...]
    stage1_scores: np.ndarray
    scores: np.ndarray
    enriched: tuple[int, ...]

    @property
    def order(self) -> np.ndarray:
        """[M] model indices, best first (ties keep zoo order)."""
        return np.argsort(-self.scores, kind="stable")

    def ranked_names(self) -> list[str]:
        return [self.model_names[i] for i in self.order]

    @property
    def stages(self) -> np.ndarray:
        """[M] int: the stage of each final score (2 = re-scored with the PTM's own prototypes)."""
        stages = np.ones(len(self.model_names), np.int64)
        stages[list(self.enriched)] = 2
        return stages

    @property
    def forward_passes(self) -> int:
        """Networks run over the task's data for this ranking: the k re-ranked PTMs + the generic
        encoder."""
        return len(self.enriched) + 1

    @property
    def metric_forward_passes(self) -> int:
        """What scoring the zoo with a transferability metric costs instead: every PTM (M)."""
        return len(self.model_names)


def rank_task(ranker: model_lib.Ranker, model_names: Sequence[str], generic_prototypes: np.ndarray,
              *, specific_length: int, k: int = 0,
              model_prototypes: Callable[[str], np.ndarray] | None = None) -> Ranking:
    """Ranks the zoo for one task in two stages.

    Args:
      ranker: a trained ranker of this zoo.
      model_names: [M] the zoo, in the ranker's order.
      generic_prototypes: [C, Dg] class prototypes of the task under the generic encoder.
      specific_length: P_h of the ranker's training (rows kept from each PTM's prototypes).
      k: number of stage-1 leaders to re-rank (0 = stage 1 only).
      model_prototypes: name -> [C', d_m] class prototypes of the task in that PTM's feature space;
        called only for the k PTMs re-ranked (it is where those PTMs get run on the data).

    Returns:
      A `Ranking`.
    """
    if len(model_names) != ranker.num_models:
        raise ValueError(
            f"{len(model_names)} model names for a ranker of {ranker.num_models} models")
    if k < 0 or k > ranker.num_models:
        raise ValueError(f"k must be in 0..{ranker.num_models}, got {k}")
    if k and model_prototypes is None:
        raise ValueError("re-ranking (k > 0) needs model_prototypes")
    generic = np.asarray(generic_prototypes, np.float32)
    task = prototypes_lib.TaskPrototypes("task", generic, np.ones(generic.shape[0], np.int64))
    scoring = dict(specific_length=specific_length, batch_size=1)
    stage1 = score_tasks(ranker, _one_task(model_names, task), **scoring)[0]
    enriched = tuple(int(i) for i in top_k_mask(stage1[None], k)[0].nonzero()[0]) if k else ()
    scores = stage1
    if enriched:
        per_model = {
            model_names[i]: np.asarray(model_prototypes(model_names[i]), np.float32)
            for i in enriched
        }
        task = dataclasses.replace(task, per_model=per_model)
        mask = np.zeros((1, ranker.num_models), bool)
        mask[0, list(enriched)] = True
        stage2 = score_tasks(ranker, _one_task(model_names, task), enriched=mask, **scoring)[0]
        scores = np.where(mask[0], stage2, stage1)
    return Ranking(tuple(model_names), stage1, scores, enriched)


def _one_task(model_names: Sequence[str], task: prototypes_lib.TaskPrototypes) -> data_lib.TaskSet:
    # Labels are irrelevant for scoring; NaN marks them missing.
    return data_lib.TaskSet(tuple(model_names), [task], np.full((1, len(model_names)), np.nan))
