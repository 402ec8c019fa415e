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


# ------------------------------------------------------------------------------------------------
# The prior added to a trained ranker (opt-in: config.prior.source_affinity_weight > 0).


def _prior(weight=0.5, scale=2.0):
    sources = {"s0": np.array([[1.0, 0.0, 0.0]]), "s1": np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])}
    return SA.SourceAffinityPrior(("s0", "s1", "s1"), sources, np.array([0.1, -0.2, 0.3]), weight, scale)


def test_prior_fuses_scores_by_hand_and_leaves_padding_alone():
    prior = _prior()
    task = np.array([[1.0, 0.2, 0.0], [0.5, 0.5, 0.0]])
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    affinity_s0 = np.mean([cos(t, np.array([1.0, 0, 0])) for t in task])
    affinity_s1 = np.mean([max(cos(t, np.array([0, 1.0, 0])), cos(t, np.array([0, 1.0, 1.0]))) for t in task])
    affinity = np.array([affinity_s0, affinity_s1, affinity_s1])
    expected_prior = 0.5 * ((affinity - affinity.mean()) / affinity.std() + np.array([0.1, -0.2, 0.3]))
    generic = np.zeros((2, 3, 3))
    generic[0, :2] = task
    mask = np.array([[True, True, False], [False, False, False]])
    scores = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    fused = prior.fuse(scores, generic, mask)
    np.testing.assert_allclose(fused[0], scores[0] / 2.0 + expected_prior, rtol=1e-12)
    np.testing.assert_allclose(fused[1], scores[1] / 2.0)  # a padding task: no prototypes, no prior


def test_prior_round_trip_and_errors(tmp_path):
    prior = _prior()
    loaded = SA.SourceAffinityPrior.load(prior.save(tmp_path / "p.npz"))
    assert loaded.model_sources == prior.model_sources and (loaded.weight, loaded.scale) == (0.5, 2.0)
    np.testing.assert_array_equal(loaded.group_prior, prior.group_prior)
    np.testing.assert_allclose(loaded.source_prototypes["s1"], prior.source_prototypes["s1"])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a readable source-affinity prior"):
        SA.SourceAffinityPrior.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="scale"):
        _prior(scale=0.0)
    with pytest.raises(ValueError, match="no source prototypes"):
        SA.SourceAffinityPrior(("s9",), {"s0": np.ones((1, 2))}, np.zeros(1), 1.0, 1.0)


def test_training_with_the_prior_writes_it_and_every_load_applies_it(tmp_path):
    from configs import spider_minizoo
    from mspider_jax import checkpointing
    from mspider_jax.spider import data as data_lib
    from mspider_jax.spider import prototypes, rank, synthetic, train_lib

    zoo = synthetic.write_synthetic_zoo(tmp_path / "zoo", model_dims=(6, 8, 5, 7))
    models = tuple(zoo["models"].split(","))
    generic_dim = prototypes.load_prototype_bank(zoo["train_bank"])[0].generic.shape[1]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sources.npz", a=rng.normal(size=(3, generic_dim)), b=rng.normal(size=(2, generic_dim)))
    config = spider_minizoo.get_config("smoke")
    config.data.models = models
    config.data.train.bank, config.data.train.ground_truth = zoo["train_bank"], zoo["train_ground_truth"]
    config.data.targets.bank, config.data.targets.ground_truth = zoo["targets_bank"], zoo["targets_ground_truth"]
    config.prior.source_affinity_weight = 0.7
    config.prior.source_prototypes = str(tmp_path / "sources.npz")
    config.prior.model_sources = ("a", "a", "b", "b")
    config.prior.model_groups = ("x", "y", "x", "y")
    workdir = tmp_path / "run"
    results = train_lib.train_and_evaluate(config, workdir)

    assert (workdir / checkpointing.PRIOR_FILE).is_file()
    fused, _ = checkpointing.load_ranker(workdir)
    bare, run_config = checkpointing.load_ranker(workdir, with_prior=False)
    assert isinstance(fused, SA.AffinityPriorRanker) and not isinstance(bare, SA.AffinityPriorRanker)
    data = train_lib.load_data(config)
    scoring = train_lib.scoring_options(run_config, data, int(run_config.model.specific_length))
    # The prior's scale and group prior come from the training tasks.
    train_scores = rank.score_tasks(bare, data.train, **scoring)
    assert fused.prior.scale == pytest.approx(np.mean(np.std(train_scores.astype(np.float64), axis=1)), rel=1e-9)
    np.testing.assert_allclose(fused.prior.group_prior, SA.group_prior(data.train.performance, ["x", "y", "x", "y"]))
    assert fused.prior.weight == 0.7
    # The targets were evaluated with the prior: bare stage-1 scores / scale + the prior of each task.
    targets = data_lib.taskset_from_bank(prototypes.load_prototype_bank(zoo["targets_bank"]), models,
                                         np.zeros((3, 4)))
    bare_targets = rank.score_tasks(bare, targets, **scoring).astype(np.float64)
    expected = np.stack([bare_targets[i] / fused.prior.scale + fused.prior.prior(t.generic)
                         for i, t in enumerate(targets.tasks)])
    np.testing.assert_allclose(results["scores"]["Model Spider (stage 1)"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, bare_targets)


def test_fusion_fold_study_matches_the_wrapped_fold_rankers(tmp_path):
    import csv

    from configs import spider_minizoo
    from mspider_jax import checkpointing
    from mspider_jax.spider import domain_holdout, evaluate, rank, synthetic, train_lib

    zoo = synthetic.write_synthetic_zoo(tmp_path / "zoo", model_dims=(6, 8, 5, 7), num_train=10)
    config = spider_minizoo.get_config("smoke")
    config.data.models = tuple(zoo["models"].split(","))
    config.data.train.bank, config.data.train.ground_truth = zoo["train_bank"], zoo["train_ground_truth"]
    config.train.epochs = 2
    config.lock()
    with open(zoo["train_ground_truth"]) as f:
        tasks = sorted({row["dataset"] for row in csv.DictReader(f)})
    folds = {"first": tasks[:3], "second": tasks[3:5]}
    domain_holdout.domain_holdout_study(config, tmp_path / "study", folds)
    generic_dim = train_lib.load_data(config).train.generic_dim
    rng = np.random.default_rng(1)
    sources = {"a": rng.normal(size=(3, generic_dim)), "b": rng.normal(size=(2, generic_dim))}
    model_sources, model_groups = ["a", "a", "b", "b"], ["x", "y", "x", "y"]
    summary = SA.fusion_fold_study(config, tmp_path / "study", folds, model_sources, model_groups, sources, [0.0, 1.0])
    for fold, held_out in folds.items():
        run = tmp_path / "study" / fold
        # weight 0: the fold ranker's own stage-1 tau on its held-out tasks (domain_holdout's path)
        assert summary["folds"][fold][0.0] == pytest.approx(domain_holdout.rerank_taus(
            domain_holdout.fold_config(config, held_out), run, [])[0], rel=1e-9)
        # weight 1: the fold ranker wrapped with a prior fitted on the fold's training tasks (batched path)
        data = train_lib.load_data(domain_holdout.fold_config(config, held_out))
        bare, run_config = checkpointing.load_ranker(run, with_prior=False)
        scoring = train_lib.scoring_options(run_config, data, int(run_config.model.specific_length))
        prior = SA.fit_prior(rank.score_tasks(bare, data.train, **scoring), data.train.performance,
                             model_sources, model_groups, sources, 1.0)
        wrapped = rank.score_tasks(SA.AffinityPriorRanker(bare, prior), data.val, **scoring)
        assert summary["folds"][fold][1.0] == pytest.approx(evaluate.mean_weighted_tau(data.val.performance, wrapped), abs=1e-6)
    assert summary["mean"][1.0] == pytest.approx(np.mean([summary["folds"][f][1.0] for f in folds]))
