"""spider.coverage: how close a task is to a ranker's training tasks, and where users see it."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from flax import nnx

from configs import spider_minizoo
from mspider_jax import checkpointing
from mspider_jax import cli
from mspider_jax.features import FeatureStore
from mspider_jax.spider import coverage
from mspider_jax.spider import ensemble
from mspider_jax.spider import inference
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import prototypes

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_class_coverage_on_a_hand_computed_case():
    task = np.array([[1.0, 0.0], [1.0, 1.0]])
    reference = np.array([[2.0, 0.0], [0.0, 3.0]])
    # Class 0 points exactly along reference row 0; class 1 is at 45 degrees from both rows.
    np.testing.assert_allclose(coverage.class_coverage(task, reference), [1.0, np.sqrt(0.5)])
    # Cosines ignore each prototype's length.
    np.testing.assert_allclose(coverage.class_coverage(task * [[5.0], [0.1]], reference * 7),
                               [1.0, np.sqrt(0.5)])


def test_reference_leaves_each_task_out_and_ranks_a_new_task():
    a = np.array([[1.0, 0.0, 0.0]])
    b = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    c = np.array([[0.0, 0.0, 1.0]])
    reference = coverage.CoverageReference.from_prototypes([a, b, c])
    # a is covered by b's first class; b's second class by nothing (cosine 0); c by nothing.
    np.testing.assert_allclose(reference.task_coverage, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(reference.task_index, [0, 1, 1, 2])
    assert reference.threshold == pytest.approx(np.percentile([1.0, 0.5, 0.0], 5))

    inside = reference.assess(np.array([[2.0, 0.0, 0.0]]))
    assert inside.value == pytest.approx(1.0) and not inside.outside
    assert inside.percentile == pytest.approx(100 * 2 / 3)  # above 0.5 and 0.0, not above 1.0
    outside = reference.assess(np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    np.testing.assert_allclose(outside.per_class, [1.0, 0.0])
    assert outside.value == pytest.approx(0.5) and outside.percentile == pytest.approx(100 / 3)
    # A task pointing away from every reference class is outside, and the line says so.
    far = reference.assess(np.array([[-1.0, -1.0, -1.0]]))
    assert far.outside and far.value < 0
    assert "OUTSIDE" in far.describe(class_names=["cat"]) and "'cat'" in far.describe(["cat"])
    assert "OUTSIDE" not in inside.describe()
    record = far.record()
    assert record["outside"] is True and record["per_class"] == [pytest.approx(far.value)]


def test_leave_one_out_in_row_chunks_equals_the_full_matrix(monkeypatch):
    rng = np.random.default_rng(0)
    tasks = [rng.random((int(n), 6)) for n in rng.integers(2, 7, size=9)]
    monkeypatch.setattr(coverage, "_ROW_CHUNK", 4)  # many chunks, some splitting a task
    chunked = coverage.CoverageReference.from_prototypes(tasks)
    expected = []
    for t, task in enumerate(tasks):
        others = np.concatenate([p for s, p in enumerate(tasks) if s != t])
        expected.append(coverage.class_coverage(task, others).mean())
    np.testing.assert_allclose(chunked.task_coverage, expected, rtol=1e-12)


def test_bad_prototypes_get_clear_errors(tmp_path):
    good = np.ones((2, 3))
    with pytest.raises(ValueError, match="row 1 is zero"):
        coverage.class_coverage(np.array([[1.0, 0, 0], [0, 0, 0]]), good)
    with pytest.raises(ValueError, match="NaN or inf"):
        coverage.class_coverage(np.array([[np.nan, 0, 0]]), good)
    with pytest.raises(ValueError, match="not the same generic encoder"):
        coverage.class_coverage(np.ones((2, 4)), good)
    with pytest.raises(ValueError, match="non-empty"):
        coverage.class_coverage(np.ones(3), good)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        coverage.CoverageReference.from_prototypes([good])
    with pytest.raises(ValueError, match="different widths"):
        coverage.CoverageReference.from_prototypes([good, np.ones((2, 4))])

    corrupt = tmp_path / coverage.COVERAGE_FILE
    corrupt.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a readable coverage reference"):
        coverage.load_reference(tmp_path)
    np.savez(corrupt, prototypes=np.ones((3, 2)), task_index=np.array([0, 1]), task_coverage=np.ones(2))
    with pytest.raises(ValueError, match="inconsistent"):
        coverage.CoverageReference.load(corrupt)
    without = tmp_path / "run_without_reference"
    without.mkdir()
    assert coverage.load_reference(without) is None


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    reference = coverage.CoverageReference.from_prototypes([rng.random((3, 5)) for _ in range(4)])
    path = reference.save(tmp_path / "ref.npz")
    loaded = coverage.CoverageReference.load(path)
    for field in ("prototypes", "task_index", "task_coverage"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(reference, field))
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"]  # no temp file left behind


def test_the_shipped_reference_is_the_mini_zoo_training_bank():
    """data/minizoo_ranker/coverage_reference.npz covers the shipped ranker's 120 tasks (108 trained
    on, 12 validation): rebuilt from the bank it is the same, and a task of the bank is inside."""
    shipped = coverage.load_reference(REPO / "data" / "minizoo_ranker")
    bank = prototypes.load_prototype_bank(REPO / "data" / "minizoo" / "training_tasks.npz")
    rebuilt = coverage.CoverageReference.from_tasks(bank)
    np.testing.assert_allclose(shipped.task_coverage, rebuilt.task_coverage, rtol=1e-12)
    np.testing.assert_array_equal(shipped.prototypes, rebuilt.prototypes)
    assert len(shipped.task_coverage) == 120
    assert shipped.assess(bank[0].generic).value == pytest.approx(1.0, abs=1e-6)
    # Random non-negative directions (post-ReLU-like features of nothing the ranker saw) are outside.
    assert shipped.assess(np.random.default_rng(2).random((5, bank[0].generic.shape[1]))).outside


def test_rank_cli_reports_the_coverage_of_the_task(tmp_path, capsys):
    rng = np.random.default_rng(3)
    generic_dim, dims, names = 6, (4, 5), ["m0", "m1"]
    store = FeatureStore(tmp_path / "store")
    labels = np.repeat([4, 9, 2], 5)  # any integer ids: classes in sorted order 2, 4, 9
    generic = rng.random((labels.size, generic_dim)) + np.eye(generic_dim)[labels % generic_dim]
    store.write("task", "train", "generic", features=generic.astype(np.float32), labels=labels)
    for name, dim in zip(names, dims):
        store.write("task", "train", name, features=rng.random((labels.size, dim)).astype(np.float32),
                    labels=labels)
    kwargs = dict(num_models=2, model_dims=list(dims), generic_dim=generic_dim, width=8, num_heads=1,
                  depth=1, dropout=0.0)
    config = spider_minizoo.get_config("smoke")
    config.data.models = tuple(names)
    config.model.specific_length = 4
    run = tmp_path / "run"
    checkpointing.save_ranker(run, model_lib.Ranker(**kwargs, rngs=nnx.Rngs(params=0)), model_kwargs=kwargs,
                              model_names=names, config=config)
    argv = ["rank", "--checkpoint", str(run), "--store", str(store.root), "--dataset", "task",
            "--rerank-k", "0"]
    assert cli.main(argv + ["--json"]) == 0
    assert "coverage" not in json.loads(capsys.readouterr().out)  # a run without a reference

    training = [rng.random((3, generic_dim)) for _ in range(5)]
    expected_reference = coverage.CoverageReference.from_prototypes(training)
    expected_reference.save(run / coverage.COVERAGE_FILE)
    assert cli.main(argv + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["coverage"]
    means = np.stack([generic[labels == c].mean(0) for c in (2, 4, 9)])
    expected = expected_reference.assess(means)
    assert printed["value"] == pytest.approx(expected.value, rel=1e-6)
    np.testing.assert_allclose(printed["per_class"], expected.per_class, rtol=1e-6)
    assert printed["outside"] == expected.outside
    assert cli.main(argv) == 0
    assert f"coverage by the ranker's training tasks: {expected.value:.3f}" in capsys.readouterr().out
    # The API behind it gives the same.
    assert inference.assess_coverage(coverage.load_reference(run), generic, labels).value == \
        pytest.approx(expected.value, rel=1e-6)
    # An ensemble of runs uses its first member's reference (the members share their tasks).
    shutil.copytree(run / checkpointing.BEST_DIR, tmp_path / "run2" / checkpointing.BEST_DIR)
    ensemble.write_ensemble(tmp_path / "ensemble", [run, tmp_path / "run2"])
    np.testing.assert_array_equal(coverage.load_reference(tmp_path / "ensemble").task_coverage,
                                  expected_reference.task_coverage)
