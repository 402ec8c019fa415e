"""Issue 10: `mspider benchmark` end to end on the synthetic smoke store, its cache, `mspider rank`.

The expected numbers are recomputed here from the inputs with the libraries the benchmark builds on
(the metric package, the ranker's inference API, the evaluation layer), never read back from the
benchmark's own intermediate results.
"""

import csv
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from mspider_jax import checkpointing
from mspider_jax import cli
from mspider_jax import evaluation as ev
from mspider_jax import metrics
from mspider_jax.benchmark import synthetic
from mspider_jax.features import FeatureStore
from mspider_jax.spider import coverage
from mspider_jax.spider import inference

SMOKE = "configs/benchmark_minizoo.py:smoke"
SMOKE_METRICS = ("hscore", "leep", "logme", "nce")
PRIOR = "constant prior (training tasks)"
REPO = pathlib.Path(__file__).resolve().parents[1]


class CountingScoreZoo:
    """Wraps metrics.score_zoo and counts the calls (the benchmark calls it through the module)."""

    def __init__(self, monkeypatch):
        self.calls = []
        self._original = metrics.score_zoo
        monkeypatch.setattr(metrics, "score_zoo", self)

    def __call__(self, name, **kwargs):
        self.calls.append(name)
        return self._original(name, **kwargs)


def _run(workdir, *overrides):
    return cli.main(["benchmark", "--config", str(REPO / SMOKE), "--workdir", str(workdir),
                     "--no-progress", *overrides])


NO_SCATTER = "--config.report.scatter=False"  # reruns: the per-dataset plots were checked once


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke benchmark run: (workdir, score_zoo calls, printed summary)."""
    workdir = tmp_path_factory.mktemp("benchmark")
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = CountingScoreZoo(monkeypatch)
        capture = _Capture(monkeypatch)
        assert _run(workdir) == 0
    return workdir, list(counter.calls), capture.text()


class _Capture:
    """Collects what the command prints (capsys is function-scoped)."""

    def __init__(self, monkeypatch):
        import builtins
        self._lines = []
        original = builtins.print

        def fake_print(*args, file=None, **kwargs):
            if file is None:
                self._lines.append(" ".join(str(a) for a in args))
            else:
                original(*args, file=file, **kwargs)

        monkeypatch.setattr(builtins, "print", fake_print)

    def text(self):
        return "\n".join(self._lines)


def _synthetic(workdir):
    paths = synthetic.write_synthetic_benchmark(workdir / "synthetic")  # existing: only the paths
    assert pathlib.Path(paths["store"]).parent == workdir / "synthetic"
    return paths, FeatureStore(paths["store"])


def _truth(path):
    with open(path, newline="") as handle:
        return [{"dataset": r["dataset"], "model": r["model"], "accuracy": float(r["accuracy"])}
                for r in csv.DictReader(handle)]


def _expected_scores(workdir):
    """Every method's scores recomputed from the store: the metric package and the ranker API."""
    paths, store = _synthetic(workdir)
    models, datasets = paths["models"].split(","), paths["datasets"].split(",")
    ranker, config = checkpointing.load_ranker(workdir / "spider")
    scores = {}
    for dataset in datasets:
        entries = [store.read(dataset, "train", m) for m in models]
        labels = np.asarray(entries[0].labels)
        for name in SMOKE_METRICS:
            values = metrics.score_zoo(
                name, features=[np.asarray(e.features) for e in entries],
                logits=[np.asarray(e.logits) for e in entries], labels=labels,
                key=jax.random.key(0))
            scores.setdefault(name, {})[dataset] = dict(zip(models, values))
        generic = store.read(dataset, "train", "generic")
        for name, k in (("Model Spider (stage 1)", 0), ("Model Spider (k=3)", 3)):
            ranking = inference.rank_features(
                ranker, models, generic.features, generic.labels,
                specific_length=config.model.specific_length, k=k, fetch_features=store,
                dataset=dataset)
            scores.setdefault(name, {})[dataset] = dict(zip(models, ranking.scores))
    return paths, models, datasets, scores


def _markdown_table(report, title):
    """{row: [cells as printed]} of the markdown table under the heading `## title`."""
    section = report.split(f"## {title}")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and not line.startswith("|---") and cells[0] != "method":
            rows[cells[0].strip("*")] = [c.strip("*") for c in cells[1:-1]]
    return rows


def test_smoke_benchmark_report_equals_the_evaluation_layer(smoke):
    workdir, calls, printed = smoke
    for name in ("report.md", "results.csv", "scores.csv", "weighted_tau.png",
                 "time_vs_quality.png", "scatter/syn_0.png", "scatter/syn_2.png"):
        assert (workdir / name).is_file(), name
    for png in workdir.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One batched score_zoo call per (dataset, metric).
    assert sorted(calls) == sorted(SMOKE_METRICS * 3)

    paths, models, datasets, expected = _expected_scores(workdir)
    with open(workdir / "scores.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(models) * len(datasets)
    for row in written:
        for method, per_dataset in expected.items():
            np.testing.assert_allclose(float(row[method]), per_dataset[row["dataset"]][row["model"]],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{method} {row}")

    records = [{"dataset": d, "model": m, **{n: expected[n][d][m] for n in expected}}
               for d in datasets for m in models]
    truth = _truth(paths["ground_truth"])
    train_truth = _truth(paths["training_ground_truth"])
    tasks = list(dict.fromkeys(r["dataset"] for r in train_truth))
    table = np.array([[next(r["accuracy"] for r in train_truth
                            if r["dataset"] == t and r["model"] == m) for m in models]
                      for t in tasks])
    prior = dict(zip(models, ev.constant_prior(table)))
    report = (workdir / "report.md").read_text()
    with open(workdir / "results.csv", newline="") as handle:
        results = list(csv.DictReader(handle))
    for measure, title in (("weighted_tau", "Weighted Kendall tau"), ("top1_hit", "Top-1 hit"),
                           ("regret", "Regret")):
        reference = ev.results_table(records, truth, methods=list(expected), datasets=datasets,
                                     measure=measure, reference_priors={PRIOR: prior},
                                     n_boot=200)
        shown = _markdown_table(report, title)
        assert list(shown) == list(reference.rows)
        for i, row in enumerate(reference.rows):
            cells = [*reference.values[i], reference.summaries[i].mean]
            assert shown[row] == [f"{v:.3f}" for v in cells], (measure, row)
            csv_row = next(r for r in results if r["method"] == row and r["measure"] == measure)
            np.testing.assert_allclose([float(csv_row[d]) for d in datasets], reference.values[i],
                                       rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(
                [float(csv_row[c]) for c in ("mean", "ci_low", "ci_high")],
                [reference.summaries[i].mean, reference.summaries[i].low,
                 reference.summaries[i].high], rtol=1e-9, atol=1e-12)
    # The printed summary shows every row with its mean weighted tau, and the report's path.
    tau = ev.results_table(records, truth, methods=list(expected), datasets=datasets,
                           reference_priors={PRIOR: prior}, n_boot=200)
    for i, row in enumerate(tau.rows):
        line = next(line for line in printed.splitlines() if line.startswith(row + " "))
        assert f"{tau.summaries[i].mean:5.3f}" in line
    assert f"report: {workdir / 'report.md'}" in printed
    # Cost: a metric runs every PTM; Model Spider the generic encoder and its re-ranked PTMs.
    passes = {r["method"]: float(r["forward_passes_per_task"]) for r in results
              if r["measure"] == "weighted_tau" and r["kind"] == "method"}
    assert passes == {**{m: 4.0 for m in SMOKE_METRICS}, "Model Spider (stage 1)": 1.0,
                      "Model Spider (k=3)": 4.0}
    # Each target's coverage by the trained ranker's tasks (the reference training wrote).
    reference = coverage.load_reference(workdir / "spider")
    shown = report.split("## How close each target is to the ranker's training tasks")[1].split("\n## ")[0]
    store = FeatureStore(paths["store"])
    for dataset in datasets:
        generic = store.read(dataset, "train", "generic")
        value = inference.assess_coverage(reference, generic.features, generic.labels)
        assert f"| {dataset} | {value.value:.3f} | {value.percentile:.0f} |" in shown


def test_rerun_reads_the_cache_and_rescoring_follows_the_store(smoke, tmp_path):
    workdir, _, _ = smoke
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = CountingScoreZoo(monkeypatch)
        assert _run(copy, NO_SCATTER) == 0
        assert counter.calls == []  # every (dataset, model, metric) score from the cache
        assert "0 scores computed in this run (0 score_zoo calls)" in (copy / "report.md").read_text()
        # New features (same logits) of one model on one dataset: only the feature-based metrics
        # rescore it, only it; the logit-based ones (LEEP, NCE) keep their cached scores.
        paths, store = _synthetic(copy)
        entry = store.read("syn_1", "train", "m2")
        store.write("syn_1", "train", "m2", features=np.asarray(entry.features) * 2.0 + 0.5,
                    labels=np.asarray(entry.labels), logits=np.asarray(entry.logits),
                    overwrite=True)
        assert _run(copy, NO_SCATTER) == 0
    assert sorted(counter.calls) == ["hscore", "logme"]
    assert "2 scores computed in this run (2 score_zoo calls)" in (copy / "report.md").read_text()
    cached = json.loads((copy / "cache" / "syn_1" / "train" / "logme.json").read_text())
    changed = store.read("syn_1", "train", "m2")
    models = paths["models"].split(",")
    expected = metrics.score_zoo("logme", features=[store.read("syn_1", "train", m).features
                                                    for m in models],
                                 labels=np.asarray(changed.labels))
    np.testing.assert_allclose([cached[m]["score"] for m in models], expected, rtol=1e-6)


def test_rank_cli_on_a_feature_npz_agrees_with_the_python_api(smoke, tmp_path, capsys):
    workdir, _, _ = smoke
    paths, store = _synthetic(workdir)
    models = paths["models"].split(",")
    generic = store.read("syn_1", "train", "generic")
    features = {m: np.asarray(store.read("syn_1", "train", m).features) for m in models}
    npz = tmp_path / "task.npz"
    np.savez(npz, generic_features=np.asarray(generic.features), labels=np.asarray(generic.labels),
             **{f"features_{m}": f for m, f in features.items()})
    assert cli.main(["rank", "--checkpoint", str(workdir / "spider"), "--task", f"npz:{npz}",
                     "--rerank-k", "2", "--json", "--ground-truth", paths["ground_truth"],
                     "--truth-dataset", "syn_1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    ranker, config = checkpointing.load_ranker(workdir / "spider")
    fetched = []
    api = inference.rank_features(ranker, models, generic.features, generic.labels,
                                  specific_length=config.model.specific_length, k=2,
                                  fetch_features=lambda m: fetched.append(m) or features[m])
    assert [r["model"] for r in printed["ranking"]] == api.ranked_names()
    np.testing.assert_allclose([r["score"] for r in printed["ranking"]],
                               api.scores[api.order], rtol=1e-6, atol=1e-7)
    assert printed["reranked"] == [models[m] for m in api.enriched] and len(fetched) == 2
    truth = {r["model"]: r["accuracy"] for r in _truth(paths["ground_truth"])
             if r["dataset"] == "syn_1"}
    measures = ev.evaluate_task(np.array([truth[m] for m in models]), api.scores)
    for key in ("weighted_tau", "top1_hit", "regret"):
        assert printed["evaluation"][key] == pytest.approx(measures[key], abs=1e-12)

    # From the store with k = 3: the numbers the benchmark reports for this task.
    assert cli.main(["rank", "--checkpoint", str(workdir / "spider"), "--store", paths["store"],
                     "--dataset", "syn_1", "--rerank-k", "3", "--ground-truth",
                     paths["ground_truth"]]) == 0
    text = capsys.readouterr().out
    tau = float(re.search(r"weighted tau (-?\d\.\d+)", text).group(1))
    with open(workdir / "results.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle)
                   if r["method"] == "Model Spider (k=3)" and r["measure"] == "weighted_tau")
    assert tau == pytest.approx(float(row["syn_1"]), abs=1e-4)

    # Stage 2 needs the re-ranked PTMs' features: a feature npz without them is a clear error.
    np.savez(npz, generic_features=np.asarray(generic.features), labels=np.asarray(generic.labels))
    with pytest.raises(ValueError, match="features_m"):
        cli.main(["rank", "--checkpoint", str(workdir / "spider"), "--task", str(npz),
                  "--rerank-k", "1"])


def test_benchmark_command_line_errors(tmp_path, capsys):
    assert cli.main(["benchmark", "--config", str(REPO / SMOKE), "--workdir", str(tmp_path),
                     "--config.spider.retrian=True"]) == 2
    assert "retrian" in capsys.readouterr().err
    assert cli.main(["benchmark", "--config", str(REPO / SMOKE), "--workdir", str(tmp_path),
                     "--bogus"]) == 2
    with pytest.raises(SystemExit):  # other commands still reject unknown options
        cli.main(["info", "--config.x=1"])
    assert cli.main(["rank", "--checkpoint", str(tmp_path), "--dataset", "x"]) == 2


@pytest.mark.parametrize("name", ["benchmark_single_source", "benchmark_multi_source"])
def test_paper_zoo_configs_cover_their_targets(name):
    """The paper-zoo configs name ground truth for every target and model, and a prior."""
    import importlib

    from mspider_jax.benchmark import runner

    config = importlib.import_module(f"configs.{name}").get_config("store=/nowhere")
    datasets, truth = runner.read_truth(config.ground_truth, config.models, config.datasets)
    assert datasets == list(config.datasets) and not np.isnan(truth).any()
    tasks, prior = runner.read_truth(config.prior_ground_truth, config.models)
    assert len(tasks) >= 10 and np.isfinite(ev.constant_prior(prior)).all()
    assert config.spider.train.data.targets.store == "/nowhere"
