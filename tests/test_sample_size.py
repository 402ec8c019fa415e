"""The sample-size study (mspider_jax/benchmark/sample_size.py): subsampling and the study's numbers.

Expected values are recomputed here from the original store with the metric package and the
evaluation layer, never read back from the study's own intermediate files.
"""

import pathlib

import jax
import numpy as np
import pytest

from mspider_jax import evaluation as ev
from mspider_jax import metrics
from mspider_jax.benchmark import sample_size
from mspider_jax.benchmark import synthetic
from mspider_jax.features import FeatureStore

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_subsample_indices_keeps_n_per_class_and_is_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    index = sample_size.subsample_indices(labels, 5, (0, 5, 0))
    assert np.all(np.diff(index) > 0)
    assert np.bincount(labels[index]).tolist() == [5, 3, 5]  # a class with fewer keeps all of it
    again = sample_size.subsample_indices(labels, 5, (0, 5, 0))
    other = sample_size.subsample_indices(labels, 5, (0, 5, 1))
    np.testing.assert_array_equal(index, again)
    assert not np.array_equal(index, other)
    with pytest.raises(ValueError, match="per_class must be >= 2"):
        sample_size.subsample_indices(labels, 1, (0,))
    with pytest.raises(ValueError, match="integers"):
        sample_size.subsample_indices(labels.astype(float), 3, (0,))


def _store(tmp_path, labels_b=None):
    store = FeatureStore(tmp_path / "store")
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), [6, 4, 8])
    for model, dim in (("a", 5), ("b", 7), ("generic", 4)):
        lab = labels if (labels_b is None or model != "b") else labels_b
        store.write("task", "train", model, features=rng.normal(size=(len(labels), dim)),
                    labels=lab, logits=rng.normal(size=(len(labels), 3)))
    return store, labels


def test_write_subsamples_takes_the_same_rows_of_every_model(tmp_path):
    store, labels = _store(tmp_path)
    out = FeatureStore(tmp_path / "sub")
    names = sample_size.write_subsamples(store, out, ["task"], ["a", "b", "generic"], split="train",
                                         per_class=3, repeats=2, seed=7)
    assert names == [["task@n3r0", "task@n3r1"]]
    for repeat, name in enumerate(names[0]):
        index = sample_size.subsample_indices(labels, 3, (7, 3, repeat))
        for model in ("a", "b", "generic"):
            full, sub = store.read("task", "train", model), out.read(name, "train", model)
            np.testing.assert_array_equal(sub.features, np.asarray(full.features)[index])
            np.testing.assert_array_equal(sub.logits, np.asarray(full.logits)[index])
            np.testing.assert_array_equal(sub.labels, labels[index])
            assert sub.manifest["subsample_of"] == "task" and sub.manifest["repeat"] == repeat
    # Resumable: a second call keeps the written entries (no rewrite).
    before = (out.entry_path("task@n3r0", "train", "a") / "features.npy").stat().st_mtime_ns
    sample_size.write_subsamples(store, out, ["task"], ["a", "b", "generic"], split="train",
                                 per_class=3, repeats=2, seed=7)
    assert (out.entry_path("task@n3r0", "train", "a") / "features.npy").stat().st_mtime_ns == before


def test_write_subsamples_refuses_models_with_other_samples(tmp_path):
    labels_b = np.repeat(np.arange(3), [4, 6, 8])
    store, _ = _store(tmp_path, labels_b=labels_b)
    out = FeatureStore(tmp_path / "sub")
    with pytest.raises(ValueError, match="labels of b differ"):
        sample_size.write_subsamples(store, out, ["task"], ["a", "b"], split="train", per_class=3,
                                     repeats=1)
    assert out.entries() == []  # nothing half-written: not even model a's subsample


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from configs import benchmark_minizoo

    workdir = tmp_path_factory.mktemp("sample_size")
    config = benchmark_minizoo.get_config("smoke")
    result = sample_size.run_study(config, workdir, per_class=(3,), repeats=2, seed=0,
                                   show_bars=False)
    return workdir, result


def test_study_columns_equal_the_metric_recomputed_on_the_draws(study):
    workdir, result = study
    paths = synthetic.write_synthetic_benchmark(workdir / "synthetic")  # existing: only the paths
    store = FeatureStore(paths["store"])
    models, datasets = paths["models"].split(","), paths["datasets"].split(",")
    assert result.per_class == [3, sample_size.FULL] and result.datasets == datasets
    truth = {(r["dataset"], r["model"]): float(r["accuracy"])
             for r in __import__("csv").DictReader(open(paths["ground_truth"]))}
    for p, n in enumerate(result.per_class):
        expected = []
        for dataset in datasets:
            entries = [store.read(dataset, "train", m) for m in models]
            labels = np.asarray(entries[0].labels)
            draws = [np.arange(len(labels))] if n == sample_size.FULL else [
                sample_size.subsample_indices(labels, n, (0, n, r)) for r in range(2)]
            taus = []
            for index in draws:
                scores = metrics.score_zoo("hscore", features=[np.asarray(e.features)[index]
                                                               for e in entries],
                                           labels=labels[index], key=jax.random.key(0))
                taus.append(ev.weighted_tau([truth[dataset, m] for m in models], scores))
            expected.append(np.mean(taus))
        np.testing.assert_allclose(result.tau["hscore"][p], expected, rtol=1e-9, atol=1e-12)
    # Fewer samples per class change the metric's ranking; the task-agnostic prior is the same.
    assert not np.allclose(result.tau["hscore"][0], result.tau["hscore"][1])
    prior = result.tau["constant prior (training tasks)"]
    np.testing.assert_array_equal(prior[0], prior[1])


def test_study_report_and_plot(study, tmp_path):
    _, result = study
    report = sample_size.format_report(result)
    header = report.splitlines()[0]
    assert header == "| method | n=3 | all |"
    row = next(line for line in report.splitlines() if line.startswith("| hscore "))
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(result.tau["hscore"][0].mean(), abs=5e-4)
    assert float(cells[2]) == pytest.approx(result.tau["hscore"][1].mean(), abs=5e-4)
    png = sample_size.plot(result, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample_size.save_json(result, tmp_path / "r.json")
    loaded = sample_size.load_json(tmp_path / "r.json")
    assert loaded.per_class == [3, 0] and loaded.methods == result.methods
    for method in result.methods:
        np.testing.assert_array_equal(loaded.tau[method], result.tau[method])
    assert sample_size.format_report(loaded) == report


def test_partial_failures_are_compared_on_the_targets_scored():
    tau = {"Model Spider (k=3)": np.array([[0.5, 0.7, 0.9]]),
           "etran": np.array([[np.nan, 0.8, 0.6]])}
    result = sample_size.SampleSizeResult(
        [5], ["a", "b", "c"], list(tau), tau, np.array([10.0, 10.0, 10.0]),
        dict(repeats=1, failures={"etran": {"5": 1}},
             failure_examples={"etran": {"5": "a: etran: needs at least 200 samples"}}))
    report = sample_size.format_report(result)
    assert "| etran | fails on 1/3 |" in report
    assert "| Model Spider (k=3) | **0.700** |" in report
    assert "* etran, n=5: a: etran: needs at least 200 samples" in report
    # On the two targets etran scores: its mean 0.7 next to Model Spider's 0.8 on the same targets.
    assert "| etran | n=5 | 2/3 | 0.700 | 0.800 |" in report
