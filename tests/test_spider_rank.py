"""spider/rank.py: two-stage ranking (stage 2 re-scores only the enriched models)."""

import functools

import numpy as np
import pytest
from flax import nnx

from mspider_jax.spider import data
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import rank
from mspider_jax.spider import synthetic

MODEL_DIMS = (6, 8, 5, 7)
# Shapes of the smoke training run (P_h 9, Pu 16, batches of 4): the compiled scoring programs are
# shared within a test session.
SPECIFIC_LENGTH = 9
SCORING = dict(specific_length=SPECIFIC_LENGTH, generic_length=16, batch_size=4)


@functools.lru_cache(maxsize=None)
def _setup():
    tasks, accuracy = synthetic.synthetic_tasks(5, MODEL_DIMS, seed=3)
    taskset = data.taskset_from_bank(tasks, [f"m{i}" for i in range(len(MODEL_DIMS))], accuracy)
    ranker = model_lib.Ranker(num_models=len(MODEL_DIMS), generic_dim=taskset.generic_dim,
                              model_dims=MODEL_DIMS, width=16, num_heads=2, rngs=nnx.Rngs(0))
    return taskset, ranker


def test_two_stage_changes_only_the_enriched_top_k():
    taskset, ranker = _setup()
    stage1 = rank.score_tasks(ranker, taskset, **SCORING)
    final, enriched = rank.two_stage_scores(ranker, taskset, 2, stage1=stage1, **SCORING)
    np.testing.assert_array_equal(enriched.sum(axis=1), 2)
    for row in range(len(taskset)):  # the enriched models are each task's own stage-1 leaders
        assert set(np.flatnonzero(enriched[row])) == set(np.argsort(-stage1[row])[:2])
    np.testing.assert_array_equal(final[~enriched], stage1[~enriched])
    assert np.abs(final[enriched] - stage1[enriched]).min() > 1e-5
    # Scoring every model enriched and keeping the top-2 gives the same stage-2 values: a PTM's
    # specific tokens only enter its own sequence.
    everything = rank.score_tasks(ranker, taskset, enriched=np.ones_like(enriched), **SCORING)
    np.testing.assert_allclose(final[enriched], everything[enriched], atol=1e-5)
    unchanged, none = rank.two_stage_scores(ranker, taskset, 0, **SCORING)
    assert not none.any()
    np.testing.assert_array_equal(unchanged, stage1)


def test_rank_task_runs_only_the_top_k_models():
    taskset, ranker = _setup()
    task = taskset.tasks[1]
    names = taskset.model_names
    calls = []

    def prototypes_of(name):
        calls.append(name)
        return task.per_model[name]

    ranking = rank.rank_task(ranker, names, task.generic, specific_length=SPECIFIC_LENGTH, k=2,
                             model_prototypes=prototypes_of)
    leaders = [names[i] for i in np.argsort(-ranking.stage1_scores, kind="stable")[:2]]
    assert sorted(calls) == sorted(leaders)
    assert sorted(names[i] for i in ranking.enriched) == sorted(leaders)
    # Same values as the batched path.
    enriched = np.zeros((len(taskset), len(names)), bool)
    enriched[1, list(ranking.enriched)] = True
    batched = rank.score_tasks(ranker, taskset.subset([1]), enriched=enriched[1:2], **SCORING)
    np.testing.assert_allclose(ranking.scores[list(ranking.enriched)],
                               batched[0, list(ranking.enriched)], atol=1e-5)
    others = [i for i in range(len(names)) if i not in ranking.enriched]
    np.testing.assert_array_equal(ranking.scores[others], ranking.stage1_scores[others])
    assert ranking.ranked_names() == [names[i] for i in np.argsort(-ranking.scores, kind="stable")]
    stage1_only = rank.rank_task(ranker, names, task.generic, specific_length=SPECIFIC_LENGTH)
    assert stage1_only.enriched == () and len(calls) == 2
    np.testing.assert_array_equal(stage1_only.scores, ranking.stage1_scores)


def test_top_k_mask_ties_and_availability():
    scores = np.array([[1.0, 3.0, 3.0, 0.0], [5.0, 4.0, 3.0, 2.0]])
    available = np.array([[True] * 4, [False, True, False, True]])
    np.testing.assert_array_equal(rank.top_k_mask(scores, 1), [[0, 1, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(rank.top_k_mask(scores, 3, available),
                                  [[1, 1, 1, 0], [0, 1, 0, 1]])


def test_rank_task_rejects_bad_arguments():
    taskset, ranker = _setup()
    generic = taskset.tasks[0].generic
    with pytest.raises(ValueError, match="model names"):
        rank.rank_task(ranker, ["x"], generic, specific_length=SPECIFIC_LENGTH)
    with pytest.raises(ValueError, match="needs model_prototypes"):
        rank.rank_task(ranker, taskset.model_names, generic, specific_length=SPECIFIC_LENGTH, k=1)
    with pytest.raises(ValueError, match="k must be"):
        rank.rank_task(ranker, taskset.model_names, generic, specific_length=SPECIFIC_LENGTH, k=9)
