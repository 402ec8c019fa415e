"""Source affinity (mspider_jax/spider/source_affinity.py) and its study script."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mspider_jax.evaluation.measures import weighted_tau
from mspider_jax.spider import source_affinity as SA

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_max_cosine_affinity_by_hand():
    task = np.array([[1.0, 0.0], [0.0, 2.0]])
    source = np.array([[3.0, 0.0], [1.0, 1.0]])
    # class 0: cos 1 with source class 0; class 1: best is source class 1, cos 1/sqrt(2)
    assert SA.max_cosine_affinity(task, source) == pytest.approx((1.0 + 1 / np.sqrt(2)) / 2, rel=1e-12)


def test_affinity_scores_tie_the_models_of_one_source_and_need_every_source():
    protos = {"a": np.array([[1.0, 0.0]]), "b": np.array([[0.0, 1.0]])}
    task = np.array([[1.0, 0.1]])
    scores = SA.affinity_scores(task, ["a", "b", "a"], protos)
    assert scores[0] == scores[2] > scores[1]
    with pytest.raises(ValueError, match=r"no source prototypes for \['c'\]"):
        SA.affinity_scores(task, ["a", "c"], protos)


@pytest.mark.parametrize("task, source, message", [
    (np.ones((2, 3)), np.ones((2, 4)), "same D"),
    (np.ones(3), np.ones((2, 3)), "same D"),
    (np.array([[0.0, 0.0]]), np.ones((2, 2)), "zero"),
])
def test_affinity_errors(task, source, message):
    with pytest.raises(ValueError, match=message):
        SA.max_cosine_affinity(task, source)


def test_group_prior_by_hand():
    accuracies = np.array([[1.0, 2.0, 3.0, 6.0], [2.0, 2.0, 2.0, 4.0]])
    z = [(row - row.mean()) / row.std() for row in accuracies]
    per_model = np.mean(z, axis=0)
    expected = [per_model[[0, 2]].mean(), per_model[[1, 3]].mean(), per_model[[0, 2]].mean(), per_model[[1, 3]].mean()]
    np.testing.assert_allclose(SA.group_prior(accuracies, ["x", "y", "x", "y"]), expected, rtol=1e-12)
    np.testing.assert_array_equal(SA.standardise(np.array([2.0, 2.0])), [0.0, 0.0])
    with pytest.raises(ValueError, match="accuracies"):
        SA.group_prior(np.ones((2, 3)), ["x", "y"])


def _toy_study():
    """Two sources (directions e0, e1), models (arch, source): (a, s0), (b, s0), (a, s1), (b, s1).
    Tasks near source s0 favour s0's models, and so on; tasks t0-t1 (fold "near s0") favour arch a,
    the others arch b, so a group prior learnt with the fold's own tasks would favour the wrong arch."""
    sources = {"s0": np.array([[1.0, 0.0, 0.0]]), "s1": np.array([[0.0, 1.0, 0.0]])}
    model_sources, model_groups = ["s0", "s0", "s1", "s1"], ["a", "b", "a", "b"]
    prototypes, accuracies = {}, {}
    for i in range(6):
        near = "s0" if i < 2 or i == 4 else "s1"
        direction = sources[near][0] + np.array([0.0, 0.0, 0.3 + 0.1 * i])
        prototypes[f"t{i}"] = np.stack([direction, direction + np.array([0.0, 0.0, 0.2])])
        favoured_arch = "a" if i < 2 else "b"
        accuracies[f"t{i}"] = np.array([
            (10.0 if s == near else 0.0) + (1.0 if g == favoured_arch else 0.0) for s, g in zip(model_sources, model_groups)])
    folds = {"near s0": ["t0", "t1"], "rest": ["t2", "t3", "t4", "t5"]}
    return prototypes, accuracies, model_sources, model_groups, sources, folds


def test_fold_study_learns_the_group_prior_outside_each_fold():
    prototypes, accuracies, model_sources, model_groups, sources, folds = _toy_study()
    summary = SA.fold_study(prototypes, accuracies, model_sources, model_groups, sources, folds)
    # Outside fold "near s0" every task favours arch b: the prior ranks b first, the wrong way for t0, t1.
    prior_outside = SA.group_prior(np.stack([accuracies[t] for t in ("t2", "t3", "t4", "t5")]), model_groups)
    assert prior_outside[1] > prior_outside[0]
    expected_prior = np.mean([weighted_tau(accuracies[t], prior_outside) for t in ("t0", "t1")])
    assert summary["folds"]["near s0"]["group prior"] == pytest.approx(expected_prior, rel=1e-12)
    assert summary["folds"]["near s0"]["group prior"] < 0
    # The affinity finds each task's source: source ties broken by nothing (affinity alone) vs the prior.
    for fold in folds:
        assert summary["folds"][fold]["affinity"] > 0.5
    assert summary["folds"]["near s0"]["tasks"] == 2
    assert summary["mean"]["affinity"] == pytest.approx(np.mean([r["affinity"] for r in summary["folds"].values()]))
    report = SA.markdown_report(summary, {"other": {"near s0": 0.25}})
    assert "| near s0 | 2 |" in report and "| rest | 4 |" in report and report.count("| 0.250") == 2


def test_fold_study_errors():
    prototypes, accuracies, model_sources, model_groups, sources, _ = _toy_study()
    with pytest.raises(ValueError, match="holds out every task"):
        SA.fold_study(prototypes, accuracies, model_sources, model_groups, sources, {"all": list(accuracies)})
    with pytest.raises(ValueError, match="no ground truth"):
        SA.fold_study(prototypes, accuracies, model_sources, model_groups, sources, {"x": ["t9"]})


def test_study_script_on_the_shipped_mini_zoo(tmp_path):
    from mspider_jax import minizoo
    from mspider_jax.features import FeatureStore

    # Generic features of each source's "pretraining data": random, 3 classes each, Dg of the bank.
    dim = minizoo.training_bank()[0].generic.shape[1]
    rng = np.random.default_rng(0)
    store = FeatureStore(tmp_path / "sources")
    sources = sorted({m["source"] for m in minizoo.load_manifest()["models"]})
    for source in sources:
        store.write(f"src_{source}", "train", "generic", features=rng.normal(size=(30, dim)).astype(np.float32),
                    labels=np.arange(30) % 3)
    out = tmp_path / "affinity.md"
    subprocess.run([sys.executable, str(REPO / "scripts/source_affinity_study.py"), f"--source_store={tmp_path / 'sources'}",
                    f"--domain_holdout={REPO / 'results/spider_minizoo_domain_holdout.json'}", f"--out={out}"],
                   check=True, cwd=REPO, capture_output=True)
    report = out.read_text()
    summary = json.loads(out.with_suffix(".json").read_text())
    folds = json.loads((REPO / "results/spider_minizoo_domain_holdout.json").read_text())["folds"]
    assert sorted(summary["folds"]) == sorted(f["fold"] for f in folds)
    assert [summary["folds"][f["fold"]]["tasks"] for f in folds] == [f["tasks"] for f in folds]
    assert "ranker, best step (optimistic)" in report and "hscore" in report
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(rows) == len(folds) + 2 and rows[-1].startswith("| **mean over folds**")  # header, folds, mean
