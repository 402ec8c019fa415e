"""spider/data.py: ground-truth tables, labels, task sets from banks and stores, padded batches."""

import numpy as np
import pytest

from mspider_jax.features import FeatureStore
from mspider_jax.spider import data
from mspider_jax.spider.prototypes import TaskPrototypes

MODELS = ("a", "b", "c")


def _task(name, num_classes, dims=None, rng=None):
    rng = rng or np.random.default_rng(len(name) + num_classes)
    per_model = {
        m: rng.normal(size=(num_classes, d)).astype(np.float32) for m, d in (dims or {}).items()
    }
    return TaskPrototypes(name,
                          rng.normal(size=(num_classes, 4)).astype(np.float32),
                          np.full(num_classes, 5), per_model)


def _write_csv(path, text):
    path.write_text(text)
    return path


def test_performance_from_csv_missing_empty_and_filtered_rows(tmp_path):
    path = _write_csv(
        tmp_path / "gt.csv",
        "zoo,dataset,model,accuracy\n"
        "z1,t1,a,80\nz1,t1,b,70.5\nz1,t1,c,\nz2,t1,c,99\n"  # c: empty cell, other zoo
        "z1,t2,c,60\nz1,t2,a,61\nz1,t2,unknown_model,1\nz1,other_task,a,3\n")
    table = data.performance_from_csv(path, ["t1", "t2"], MODELS, where={"zoo": "z1"})
    np.testing.assert_array_equal(table, [[80.0, 70.5, np.nan], [61.0, np.nan, 60.0]])


@pytest.mark.parametrize("text, message", [
    ("dataset,model,accuracy\nt1,a,1\nt1,a,2\n", "duplicate"),
    ("dataset,model,accuracy\nt1,a,high\n", "not a number"),
    ("dataset,model,accuracy\nt1,a,inf\n", "not finite"),
    ("dataset,model,score\nt1,a,1\n", "missing columns"),
    ("dataset,model,accuracy\nt9,a,1\n", "no ground truth for tasks"),
])
def test_performance_from_csv_rejects_bad_tables(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        data.performance_from_csv(_write_csv(tmp_path / "gt.csv", text), ["t1"], MODELS)


def test_rank_labels_average_ties_and_keep_missing():
    ranks = data.ranks_among_valid(np.array([[10.0, np.nan, 30.0, 10.0], [1.0, 2.0, 3.0, 4.0]]))
    np.testing.assert_array_equal(ranks, [[0.5, np.nan, 2.0, 0.5], [0.0, 1.0, 2.0, 3.0]])


def test_taskset_labels_and_availability():
    tasks = [_task("t1", 3, {"a": 2}), _task("t2", 5, {"a": 2, "c": 6})]
    taskset = data.TaskSet(MODELS, tasks, np.array([[3.0, np.nan, 1.0], [5.0, 6.0, 7.0]]))
    values, mask = taskset.labels("rank")
    np.testing.assert_array_equal(values, [[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    np.testing.assert_array_equal(mask, [[True, False, True], [True, True, True]])
    np.testing.assert_array_equal(taskset.labels("accuracy")[0], [[3.0, 0.0, 1.0], [5.0, 6.0, 7.0]])
    np.testing.assert_array_equal(taskset.has_prototypes(),
                                  [[True, False, False], [True, False, True]])
    assert taskset.model_dims() == {"a": 2, "c": 6}
    assert taskset.max_classes == 5 and taskset.generic_dim == 4
    assert taskset.select(["t2"]).names == ["t2"]
    with pytest.raises(ValueError, match="unknown tasks"):
        taskset.select(["t3"])
    with pytest.raises(ValueError, match="unknown label kind"):
        taskset.labels("percent")


@pytest.mark.parametrize("tasks, performance, message", [
    ([_task("t1", 3, {"zz": 2})], [[1.0, 2.0, 3.0]], "not in the zoo"),
    ([_task("t1", 3, {"a": 2}), _task("t2", 3, {"a": 4})], [[1, 2, 3], [1, 2, 3]], "differs"),
    ([_task("t1", 3)], [[1.0, 2.0]], "performance"),
    ([_task("t1", 3)], [[1.0, np.inf, 2.0]], "inf"),
    ([TaskPrototypes("t1", np.full((2, 4), np.nan), np.ones(2))], [[1.0, 2.0, 3.0]], "NaN or inf"),
    ([TaskPrototypes("t1", np.zeros((2, 4)), np.ones(2), {"a": np.full((2, 3), np.inf)})],
     [[1.0, 2.0, 3.0]], "NaN or inf"),
])
def test_taskset_rejects_inconsistent_inputs(tasks, performance, message):
    with pytest.raises(ValueError, match=message):
        data.TaskSet(MODELS, tasks, np.array(performance, float))


def test_make_batch_pads_truncates_and_masks():
    tasks = [_task("t1", 3, {"a": 2, "c": 6}), _task("t2", 7, {"a": 2, "c": 6})]
    taskset = data.TaskSet(MODELS, tasks, np.array([[3.0, np.nan, 1.0], [5.0, 6.0, 7.0]]))
    enriched = np.array([[False, False, True], [True, False, False]])
    batch = data.make_batch(taskset, [0, 1], model_dims=(2, 3, 6), specific_length=4,
                            label_kind="accuracy", batch_size=4, enriched=enriched)
    assert batch.generic.shape == (4, 8, 4)  # bucketed length for 7 classes; 2 padding tasks
    np.testing.assert_array_equal(batch.generic[1, :7], tasks[1].generic)
    np.testing.assert_array_equal(batch.generic_mask.sum(axis=1), [3, 7, 0, 0])
    assert not batch.generic[1, 7:].any() and not batch.generic[2:].any()
    assert batch.specific.shape == (4, 3, 4, 6)
    # Task 0 enriches model c (3 rows of 4); task 1 enriches model a: its 7 rows truncated to
    # the first 4, its 2 columns zero-padded to Dmax = 6.
    np.testing.assert_array_equal(batch.specific_mask[0],
                                  [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(batch.specific[0, 2, :3], tasks[0].per_model["c"])
    np.testing.assert_array_equal(batch.specific_mask[1, 0], [1, 1, 1, 1])
    np.testing.assert_array_equal(batch.specific[1, 0, :, :2], tasks[1].per_model["a"][:4])
    assert not batch.specific[1, 0, :, 2:].any() and not batch.specific[1, 1:].any()
    np.testing.assert_array_equal(batch.labels[:2], [[3.0, 0.0, 1.0], [5.0, 6.0, 7.0]])
    np.testing.assert_array_equal(batch.label_mask[:2], [[True, False, True], [True, True, True]])
    assert not batch.label_mask[2:].any()
    np.testing.assert_array_equal(batch.task_weight, [1.0, 1.0, 0.0, 0.0])
    no_specific = data.make_batch(taskset, [1], model_dims=(2, 3, 6), specific_length=4,
                                  generic_length=4)
    assert no_specific.specific is None and no_specific.generic_mask.tolist() == [[True] * 4]


def test_make_batch_rejects_missing_prototypes_and_small_batches():
    taskset = data.TaskSet(MODELS, [_task("t1", 3, {"a": 2})], np.array([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="no prototypes of b"):
        data.make_batch(taskset, [0], model_dims=(2, 3, 6), specific_length=4,
                        enriched=np.array([[False, True, False]]))
    with pytest.raises(ValueError, match="batch_size"):
        data.make_batch(taskset, [0, 0], model_dims=(2, 3, 6), specific_length=4, batch_size=1)


def test_sample_enrichment_one_k_per_batch_among_available_models():
    available = np.array([[True, True, True, True], [True, False, True, False], [False] * 4])
    seen_k = set()
    for seed in range(60):
        enriched = data.sample_enrichment(np.random.default_rng(seed), available, 0, 3)
        assert not (enriched & ~available).any()
        k = enriched[0].sum()  # row 0 has every model available, so it shows the batch's k
        seen_k.add(int(k))
        assert enriched[1].sum() == min(k, 2) and enriched[2].sum() == 0
    assert seen_k == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="k_min"):
        data.sample_enrichment(np.random.default_rng(0), available, 3, 2)


def test_taskset_from_store_computes_class_prototypes(tmp_path, rng):
    store = FeatureStore(tmp_path / "store")
    labels = np.array([0, 1, 1, 2, 0, 2, 2])
    features = {
        "generic": rng.normal(size=(7, 4)),
        "a": rng.normal(size=(7, 2)),
        "c": rng.normal(size=(7, 6))
    }
    for model, values in features.items():
        store.write("ds", "train", model, features=values.astype(np.float32), labels=labels)
    taskset = data.taskset_from_store(store, ["ds"], MODELS, np.array([[1.0, 2.0, 3.0]]))
    task = taskset.tasks[0]
    for model, values in features.items():
        expected = np.stack([values[labels == c].mean(axis=0) for c in range(3)])
        got = task.generic if model == "generic" else task.per_model[model]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert sorted(task.per_model) == ["a", "c"]  # model b is not stored
    np.testing.assert_array_equal(task.counts, [2, 2, 3])
    store.write("ds", "train", "b", features=np.zeros((7, 3), np.float32),
                labels=labels[::-1].copy())
    with pytest.raises(ValueError, match="labels of b differ"):
        data.taskset_from_store(store, ["ds"], MODELS, np.array([[1.0, 2.0, 3.0]]))
