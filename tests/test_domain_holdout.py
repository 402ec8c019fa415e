"""Leave-one-domain-group-out validation (mspider_jax/spider/domain_holdout.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from configs import spider_minizoo
from mspider_jax import minizoo
from mspider_jax.spider import domain_holdout
from mspider_jax.spider import synthetic


def test_folds_hold_out_every_task_touching_the_group():
    task_domains = {"a": {"x"}, "b": {"x", "y"}, "c": {"z"}, "d": {"w"}}
    folds = domain_holdout.domain_folds(task_domains, [["x"], ["y", "z"], ["w"]])
    # b mixes x and y: it is held out of both folds.
    assert folds == {"x": ["a", "b"], "y+1 more": ["b", "c"], "w": ["d"]}


@pytest.mark.parametrize("task_domains, groups, message", [
    ({"a": {"x"}, "b": {"q"}}, [["x"]], "of no group"),
    ({"a": {"x"}, "b": {"y"}}, [["x"], ["x", "y"]], "in two groups"),
    ({"a": {"x"}, "b": {"x", "y"}}, [["x"], ["y"]], "nothing would be left"),
    ({"a": {"x"}, "b": {"y"}}, [["x"], ["y"], ["z"]], "no task has a domain"),
    ({"a": {"x"}}, [[]], "empty domain group"),
])
def test_fold_errors(task_domains, groups, message):
    with pytest.raises(ValueError, match=message):
        domain_holdout.domain_folds(task_domains, groups)


def test_minizoo_folds_follow_the_manifest():
    manifest = minizoo.load_manifest()
    groups = manifest["config"]["tasks"]["domain_groups"]
    folds = domain_holdout.minizoo_domain_folds()
    assert len(folds) == len(groups)
    names = minizoo.training_task_names()
    assert sorted({t for tasks in folds.values() for t in tasks}) == sorted(names)
    classes = {t["name"]: t["classes"] for t in manifest["training_tasks"]}
    for group, (fold, tasks) in zip(groups, folds.items()):
        assert fold.startswith(group[0])
        expected = sorted(n for n in names if any(c.split(":")[0] in group for c in classes[n]))
        assert tasks == expected
        assert 0 < len(tasks) < len(names)


def test_validation_curve_keeps_the_last_record_of_a_step(tmp_path):
    records = [{"step": 2, "epoch": 1.0, "loss": 3.0}, {"step": 2, "epoch": 1.0, "val_weighted_tau": 0.1},
               {"step": 4, "epoch": 2.0, "val_weighted_tau": 0.3}, {"step": 2, "epoch": 1.0, "val_weighted_tau": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert domain_holdout.validation_curve(tmp_path) == [(2, 1.0, 0.2), (4, 2.0, 0.3)]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(ValueError, match="no val_weighted_tau"):
        domain_holdout.validation_curve(tmp_path)
    with pytest.raises(FileNotFoundError):
        domain_holdout.validation_curve(tmp_path / "missing")


def test_study_trains_one_ranker_per_fold_on_the_other_tasks(tmp_path):
    zoo = synthetic.write_synthetic_zoo(tmp_path / "zoo", model_dims=(6, 8, 5, 7), num_train=10)
    config = spider_minizoo.get_config("smoke")
    config.data.models = tuple(zoo["models"].split(","))
    config.data.train.bank = zoo["train_bank"]
    config.data.train.ground_truth = zoo["train_ground_truth"]
    config.data.targets.bank = zoo["targets_bank"]  # dropped by the folds
    config.data.targets.ground_truth = zoo["targets_ground_truth"]
    config.train.epochs = 3
    config.lock()
    with open(zoo["train_ground_truth"]) as f:
        tasks = sorted({row["dataset"] for row in csv.DictReader(f)})
    folds = {"first": tasks[:3], "second": tasks[3:5]}
    rng = np.random.default_rng(0)
    metric_taus = {"hscore": {t: float(rng.uniform()) for t in tasks}}
    summary = domain_holdout.domain_holdout_study(config, tmp_path / "study", folds, metric_taus=metric_taus,
                                                  label="smoke")

    curves = {}
    for fold, held_out in folds.items():
        run = tmp_path / "study" / fold
        saved = json.loads((run / "config.json").read_text())
        assert saved["data"]["val_tasks"] == held_out
        assert not saved["data"]["targets"]["bank"] and not (run / "results.json").exists()
        curves[fold] = {r["epoch"]: r["val_weighted_tau"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                        if "val_weighted_tau" in r}
        assert len(curves[fold]) == 3  # evaluated every epoch
    rows = {row["fold"]: row for row in summary["folds"]}
    for fold, held_out in folds.items():
        assert rows[fold]["tasks"] == len(held_out)
        assert rows[fold]["final"] == pytest.approx(curves[fold][max(curves[fold])])
        assert rows[fold]["best_on_fold"] == pytest.approx(max(curves[fold].values()))
        assert rows[fold]["hscore"] == pytest.approx(np.mean([metric_taus["hscore"][t] for t in held_out]))
    # Stage 2 on the fold's tasks: k = 3 and k = 10 (capped at the zoo's 4 PTMs, the same as "every
    # PTM"); k = 0 is the best checkpoint's stage 1, whose tau is the best of the logged curve.
    assert summary["rerank"] == ["stage 2, k=3", "stage 2, k=4"]
    direct = domain_holdout.rerank_taus(domain_holdout.fold_config(config, folds["first"]), tmp_path / "study" / "first",
                                        (3, 10))
    assert sorted(direct) == [0, 3, 4]
    assert direct[0] == pytest.approx(rows["first"]["best_on_fold"], abs=1e-6)
    assert rows["first"]["stage 2, k=4"] == pytest.approx(direct[4])
    assert summary["mean"]["stage 2, k=3"] == pytest.approx(np.mean([rows[f]["stage 2, k=3"] for f in folds]))
    epochs = sorted(curves["first"])
    expected_curve = [np.mean([curves[f][e] for f in folds]) for e in epochs]
    np.testing.assert_allclose([p[1] for p in summary["mean_curve"]], expected_curve, rtol=1e-12)
    peak = epochs[int(np.argmax(expected_curve))]
    assert summary["mean_curve_peak"]["epoch"] == pytest.approx(peak)
    assert summary["mean"]["at_mean_peak"] == pytest.approx(np.mean([curves[f][peak] for f in folds]))
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / "study" / f"domain_holdout{suffix}").stat().st_size > 0
    report = (tmp_path / "study" / "domain_holdout.md").read_text()
    assert "| first | 3 |" in report and "OPTIMISTIC" in report and "hscore" in report

    # Rerunning resumes every fold from its last checkpoint: nothing is retrained, same summary.
    again = domain_holdout.domain_holdout_study(config, tmp_path / "study", folds, metric_taus=metric_taus,
                                                label="smoke")
    assert again["mean_curve"] == summary["mean_curve"]
