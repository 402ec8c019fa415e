"""`run_benchmark(config, workdir)`: the whole benchmark of a zoo, from a feature store to a report.

Model Spider (Zhang et al., NeurIPS 2023; specs/model_spider.md §8) is compared with the
transferability metrics on held-out target tasks by the weighted Kendall tau between each method's
scores and the ground-truth fine-tuning accuracies. For every target dataset of a feature store the
benchmark
  1. scores the zoo with every metric (`metric_scores.score_metrics`: one batched `score_zoo` call
     per (dataset, metric), cached per (dataset, model, metric) by the store entries' sha256);
  2. loads a trained Model Spider ranker (`config.spider.checkpoint`) or trains one
     (`config.spider.train`, a `configs/spider_*.py` config) and ranks each target in two stages with
     `spider.inference.rank_features`, exactly as `mspider rank --store` does;
  3. evaluates everything with `mspider_jax.evaluation` (weighted tau, top-1 hit, regret; bootstrap
     CI over the datasets; the constant prior of the training tasks, the leave-one-dataset-out prior
     and random as reference rows);
  4. writes `report.md`, `results.csv`, `scores.csv` and PNG plots into the workdir (`report.py`).

Conventions: ground truth is higher = better (accuracies in percent for the mini zoo); models without
ground truth on a dataset are left out of that dataset; the zoo order is that of the ranker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from mspider_jax.benchmark import metric_scores as metric_scores_lib

log = logging.getLogger(__name__)

SPIDER = "Model Spider"
BARE_SPIDER = "Model Spider, ranker alone"  # rows of a ranker with a source-affinity prior, without it
CONSTANT_PRIOR = "constant prior (training tasks)"


def spider_name(k: int, prefix: str = SPIDER) -> str:
    return f"{prefix} (k={k})"


def spider_stage1_name(prefix: str = SPIDER) -> str:
    return f"{prefix} (stage 1)"


@dataclasses.dataclass
class MethodCost:
    """What a method paid, per target dataset.

    seconds: [T] wall time of computing its scores from the features (metrics: score_zoo incl.
      compilation; Model Spider: `rank_features`, both stages, incl. reading the re-ranked PTMs'
      features).
    forward_passes: [T] networks run over the task's data (M for a metric; 1 + re-ranked for the
      ranker: the generic encoder and the stage-2 PTMs).
    extraction_seconds: [T] the store manifests' extraction time of those networks (NaN if unknown).
    """

    seconds: np.ndarray
    forward_passes: np.ndarray
    extraction_seconds: np.ndarray


@dataclasses.dataclass
class BenchmarkData:
    """Everything the evaluation and the report need.

    datasets: [T]; models: [M]; truth: [T, M] (NaN = no ground truth); scores: method -> [T, M];
    costs: method -> MethodCost; priors: reference row -> [M] task-agnostic scores; notes: method ->
    one-line description; skipped / errors: metrics not scored (see `metric_scores.MetricScores`);
    info: provenance for the report (store, ranker, config, versions).
    """

    datasets: list[str]
    models: list[str]
    truth: np.ndarray
    scores: dict[str, np.ndarray]
    costs: dict[str, MethodCost]
    priors: dict[str, np.ndarray]
    notes: dict[str, str]
    skipped: dict[str, str]
    errors: dict[str, dict[str, str]]
    info: dict


# --------------------------------------------------------------------------------------------------
# Inputs


def _open_store(path: str):
    from mspider_jax.features import FeatureStore

    if path == "minizoo":
        from mspider_jax import minizoo  # extracts the targets' features at first use (torch)

        return minizoo.ensure_target_store()
    if not path:
        raise ValueError("config.store: a feature store directory (or 'minizoo') is required")
    if not pathlib.Path(path).is_dir():
        raise FileNotFoundError(f"config.store: no feature store at {path}")
    return FeatureStore(path)


def read_truth(source: ml_collections.ConfigDict, models: Sequence[str],
               datasets: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """(datasets, [T, M] values) of a long ground-truth CSV (`config.ground_truth`-like source)."""
    from mspider_jax.spider import data as data_lib
    from mspider_jax.spider import train_lib

    if not source.path:
        raise ValueError("a ground-truth CSV path is required")
    where = train_lib.csv_filter(source.where)
    names = list(datasets) or data_lib.tasks_in_csv(source.path, task_column=source.task_column,
                                                    where=where)
    values = data_lib.performance_from_csv(
        source.path, names, models, task_column=source.task_column,
        model_column=source.model_column, value_column=source.value_column, where=where)
    return names, values


def _fill_synthetic(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """store == "synthetic": writes the tiny synthetic benchmark and points the config at it."""
    from mspider_jax.benchmark import synthetic

    paths = synthetic.write_synthetic_benchmark(workdir / "synthetic")
    with config.unlocked():
        config.store = paths["store"]
        config.ground_truth.path = paths["ground_truth"]
        config.prior_ground_truth.path = paths["training_ground_truth"]
        config.models = tuple(paths["models"].split(","))
        train = config.spider.train
        train.data.models = config.models
        train.data.train.bank = paths["training_bank"]
        train.data.train.ground_truth = paths["training_ground_truth"]


# --------------------------------------------------------------------------------------------------
# Model Spider


def export_ranker(run_dir: str | os.PathLike, export_dir: str | os.PathLike) -> pathlib.Path:
    """Saves the best parameters of a training run (no optimiser state) as a compact checkpoint
    that `checkpointing.load_ranker(export_dir)` reads (e.g. the shipped data/minizoo_ranker)."""
    from mspider_jax import checkpointing

    ranker, _ = checkpointing.load_ranker(run_dir, with_prior=False)
    meta = checkpointing.load_ranker_meta(run_dir)
    extra = {"metrics": meta.get("metrics", {}), "exported_from": str(run_dir)}
    if meta["config"].get("data", {}).get("zoo") == "minizoo":
        from mspider_jax import minizoo

        extra["minizoo_manifest"] = minizoo.manifest_hash()
    saved = checkpointing.save_ranker(export_dir, ranker, model_kwargs=meta["model"],
                                      model_names=list(meta["model_names"]), config=meta["config"],
                                      step=int(meta["step"]), extra_meta=extra)
    from mspider_jax.spider import coverage

    for extra_file in (checkpointing.PRIOR_FILE, coverage.COVERAGE_FILE):  # they travel with it
        if (pathlib.Path(run_dir) / extra_file).is_file():
            shutil.copyfile(pathlib.Path(run_dir) / extra_file, pathlib.Path(export_dir) / extra_file)
    return saved


def load_or_train_ranker(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """The ranker of `config.spider`: loaded from its checkpoint, or trained into workdir/spider.

    Returns:
      (ranker, the run's config with model_names, {"source": ..., "directory": its checkpoint
      directory, "training_seconds": ...}).
    """
    from mspider_jax import checkpointing

    spider = config.spider
    info: dict = {}
    if spider.checkpoint and not spider.retrain:
        if not pathlib.Path(spider.checkpoint).is_dir():
            raise FileNotFoundError(
                f"config.spider.checkpoint: no checkpoint at {spider.checkpoint} (train one with "
                "--config.spider.retrain=True)")
        ranker, run_config = checkpointing.load_ranker(spider.checkpoint)
        info["source"] = f"checkpoint {spider.checkpoint}"
        info["directory"] = str(spider.checkpoint)
        return ranker, run_config, info
    from mspider_jax.spider import train_lib

    run_dir = workdir / "spider"
    train_config = ml_collections.ConfigDict(spider.train.to_dict())
    log.info("Training Model Spider into %s (resumes if interrupted).", run_dir)
    start = time.time()
    train_lib.train_and_evaluate(train_config, run_dir)
    info["training_seconds"] = time.time() - start
    info["source"] = f"trained in {run_dir}"
    info["directory"] = str(run_dir)
    ranker, run_config = checkpointing.load_ranker(run_dir)
    if spider.export:
        export_ranker(run_dir, spider.export)
        info["exported_to"] = str(spider.export)
        log.info("Exported the best ranker to %s.", spider.export)
    return ranker, run_config, info


def _workers(requested: int) -> int:
    """config.metrics.workers: 0 = one per CPU core."""
    if requested < 0:
        raise ValueError(f"config.metrics.workers must be >= 0, got {requested}")
    return requested or max(1, len(os.sched_getaffinity(0)))


def _extraction_seconds(store, dataset: str, split: str, model: str) -> float:
    """Seconds the store's converter took to extract `model` on the dataset (NaN if unknown)."""
    extraction = store.manifest(dataset, split, model).get("extraction") or {}
    seconds = extraction.get("seconds")
    return float(seconds) if seconds is not None else float("nan")


def rank_targets(ranker, run_config, store, datasets: Sequence[str], *, split: str, k: int,
                 progress: Callable[[str], None] | None = None, prefix: str = SPIDER,
                 ) -> tuple[dict[str, np.ndarray], dict[str, MethodCost]]:
    """Model Spider's stage-1 and stage-2 scores [T, M] of every dataset, with their costs.

    Each dataset is ranked with `inference.rank_features` (the call behind `mspider rank`), once with
    k = 0 (stage 1 alone, timed on its own) and once with the re-ranking depth k. Rows are named
    "<prefix> (stage 1)" and "<prefix> (k=K)".
    """
    from mspider_jax.spider import inference

    names = list(run_config.model_names)
    generic_model = run_config.data.get("generic_model", "generic")
    specific_length = int(run_config.model.specific_length)
    k = min(k, ranker.num_models)
    stage1_name, stage2_name = spider_stage1_name(prefix), spider_name(k, prefix)
    rows = {stage1_name: [], stage2_name: []}
    seconds = {name: [] for name in rows}
    passes = {name: [] for name in rows}
    extraction = {name: [] for name in rows}
    for dataset in datasets:
        entry = store.read(dataset, split, generic_model)
        generic, labels = np.asarray(entry.features), np.asarray(entry.labels)
        generic_seconds = _extraction_seconds(store, dataset, split, generic_model)
        for name, depth in ((stage1_name, 0), (stage2_name, k)):
            start = time.perf_counter()
            ranking = inference.rank_features(ranker, names, generic, labels,
                                              specific_length=specific_length, k=depth,
                                              fetch_features=store, dataset=dataset, split=split)
            seconds[name].append(time.perf_counter() - start)
            rows[name].append(ranking.scores)
            passes[name].append(ranking.forward_passes)
            extraction[name].append(generic_seconds + sum(
                _extraction_seconds(store, dataset, split, names[m]) for m in ranking.enriched))
        if progress is not None:
            progress(f"{dataset} {prefix}: top-{k} re-ranked "
                     f"{', '.join(names[m] for m in ranking.enriched)}")
    scores = {name: np.asarray(values, np.float64) for name, values in rows.items()}
    costs = {name: MethodCost(np.asarray(seconds[name]), np.asarray(passes[name], float),
                              np.asarray(extraction[name])) for name in rows}
    return scores, costs


def target_coverage(checkpoint_dir: str | os.PathLike, run_config, store, datasets: Sequence[str], *,
                    split: str) -> dict[str, dict] | None:
    """{dataset: `spider.coverage.Coverage.record()`} of every target by the ranker's training tasks,
    or None when the ranker has no coverage reference."""
    from mspider_jax.spider import coverage as coverage_lib
    from mspider_jax.spider import inference

    reference = coverage_lib.load_reference(checkpoint_dir)
    if reference is None:
        return None
    generic_model = run_config.data.get("generic_model", "generic")
    records = {}
    for dataset in datasets:
        entry = store.read(dataset, split, generic_model)
        records[dataset] = inference.assess_coverage(reference, np.asarray(entry.features),
                                                     np.asarray(entry.labels)).record()
    return records


# --------------------------------------------------------------------------------------------------
# The benchmark


def collect(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
            progress: Callable[[str], None] | None = None, show_bars: bool = True
            ) -> BenchmarkData:
    """Steps 1-2 of the module docstring: every method's scores and costs on every dataset."""
    import jax

    import mspider_jax

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    if config.store == "synthetic":
        _fill_synthetic(config, workdir)
    store = _open_store(config.store)
    ranker, run_config, ranker_info = load_or_train_ranker(config, workdir)
    models = list(config.models) or list(run_config.model_names)
    if models != list(run_config.model_names):
        raise ValueError(f"config.models {models} differ from the ranker's zoo "
                         f"{list(run_config.model_names)} (same models in the same order needed)")
    datasets, truth = read_truth(config.ground_truth, models, config.datasets)
    missing = [d for d in datasets if not store.has(d, config.split, models[0])]
    if missing:
        raise ValueError(f"datasets {missing} of the ground truth are not in the store "
                         f"{store.root} (split {config.split!r}); datasets there: "
                         f"{store.datasets()[:20]}")
    say(f"{len(datasets)} target datasets x {len(models)} models; ranker: {ranker_info['source']}")

    metric_names = list(config.metrics.names) or None
    cache_dir = config.metrics.cache_dir or str(workdir / "cache")
    metric_result = metric_scores_lib.score_metrics(
        store, datasets, models, split=config.split, metrics=metric_names,
        convention=config.metrics.convention, options=config.metrics.options.to_dict(),
        seed=config.metrics.seed, cache_dir=cache_dir, workers=_workers(config.metrics.workers),
        progress=progress, show_bar=show_bars)
    scores, costs, notes = {}, {}, {}
    extraction_all = np.array([
        sum(_extraction_seconds(store, d, config.split, m) for m in models) for d in datasets])
    for name in metric_result.complete():
        scores[name] = metric_result.scores[name]
        costs[name] = MethodCost(metric_result.seconds[name],
                                 np.full(len(datasets), float(len(models))), extraction_all)
        notes[name] = "transferability metric (every PTM run on the task)"

    rerank_k = config.spider.rerank_k
    if rerank_k < 0:
        rerank_k = int(run_config.eval.get("rerank_k", 3))
    from mspider_jax.spider import source_affinity

    has_prior = isinstance(ranker, source_affinity.AffinityPriorRanker)
    rankers = [(SPIDER, ranker)] + ([(BARE_SPIDER, ranker.ranker)] if has_prior else [])
    for prefix, method_ranker in rankers:
        spider_scores, spider_costs = rank_targets(method_ranker, run_config, store, datasets, split=config.split,
                                                   k=rerank_k, progress=progress, prefix=prefix)
        scores.update(spider_scores)
        costs.update(spider_costs)
        with_prior = " + source-affinity prior (weight %g)" % ranker.prior.weight if prefix == SPIDER and has_prior else ""
        for name in spider_scores:
            notes[name] = (f"Model Spider{with_prior}: generic prototypes only" if name == spider_stage1_name(prefix) else
                           f"Model Spider{with_prior}: stage 1, then its top-{rerank_k} re-scored with their own "
                           "prototypes")

    coverage = target_coverage(ranker_info["directory"], run_config, store, datasets, split=config.split)
    priors = {}
    if config.prior_ground_truth.path:
        _, prior_truth = read_truth(config.prior_ground_truth, models)
        from mspider_jax import evaluation as ev

        priors[CONSTANT_PRIOR] = ev.constant_prior(prior_truth)
    errors = {name: per for name, per in metric_result.errors.items()}
    info = dict(
        name=config.name, store=str(store.root), split=config.split,
        ground_truth=config.ground_truth.path, prior_ground_truth=config.prior_ground_truth.path,
        ranker=ranker_info, rerank_k=rerank_k, convention=config.metrics.convention,
        cache_dir=cache_dir, metric_scores_computed=metric_result.computed,
        metric_calls=metric_result.calls, jax_backend=jax.default_backend(),
        jax_devices=len(jax.devices()), version=mspider_jax.__version__,
        created=time.strftime("%Y-%m-%d %H:%M:%S"), coverage=coverage)
    return BenchmarkData(datasets, models, truth, scores, costs, priors, notes,
                         dict(metric_result.skipped), errors, info)


def run_benchmark(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                  progress: Callable[[str], None] | None = None,
                  show_bars: bool = True) -> dict:
    """Runs the benchmark described by `config` (configs/benchmark_*.py) and writes its report.

    Args:
      config: a benchmark config (see configs/benchmark_base.py for the fields).
      workdir: output directory: report.md, results.csv, scores.csv, *.png, cache/, spider/.
      progress: called with one line per step (default: logging).
      show_bars: tqdm progress bars.

    Returns:
      {"report": path of report.md, "summary": the printed summary table, "tables": {measure:
      evaluation.Table}, "files": {name: path}, "data": BenchmarkData}.
    """
    from mspider_jax.benchmark import report

    workdir = pathlib.Path(workdir)
    progress = progress or log.info
    start = time.time()
    data = collect(config, workdir, progress=progress, show_bars=show_bars)
    tables = report.evaluate(data, n_boot=config.report.n_boot, confidence=config.report.confidence)
    files = report.write_all(data, tables, workdir, scatter=config.report.scatter)
    data.info["seconds"] = time.time() - start
    report_path = report.write_report(data, tables, workdir, files)
    summary = report.summary_table(data, tables)
    from mspider_jax.evaluation._io import write_text_atomic

    write_text_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=1,
                                                          sort_keys=True, default=str))
    return {"report": report_path, "summary": summary, "tables": tables,
            "files": {**files, "report": report_path}, "data": data}
