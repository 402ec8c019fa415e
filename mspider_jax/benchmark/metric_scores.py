"""Transferability-metric scores of a whole zoo on many target tasks, cached on disk.

For every target dataset of a feature store and every metric, the zoo is scored with one batched
`metrics.score_zoo` call (models with equal shapes share a compiled, vmapped program). Scores are
cached per (dataset, model, metric) under a key of everything the score depends on:
  * the sha256 of the store entry's files the metric reads (features and/or logits, labels), from
    the entry's manifest; for zoo-relative metrics (NCTI, ETran) those of every model of the zoo;
  * the metric name, convention, options and (randomized metrics only) the PRNG seed;
  * a fingerprint of the metrics package source, so that a change of the code recomputes.
A rerun (or a run that adds datasets or models) only computes what is missing; the wall time of
every computed score is stored with it, so reports of a rerun still show what scoring cost.

Cache layout: <cache_dir>/<encoded dataset>/<encoded split>/<metric>.json =
  {model: {"key": hex, "score": float, "seconds": float}}, written atomically.
Seconds per model = wall time of the score_zoo call that computed it / models in the call
(including compilation: it is part of what a user of the metric pays on a new task).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Inputs that come from a model's store entry (the others, source data, are not in a target store).
ENTRY_INPUTS = {"features": "features.npy", "logits": "logits.npy"}


@dataclasses.dataclass
class MetricScores:
    """Scores of every metric on every (dataset, model).

    Attributes:
      datasets: [T] target datasets; models: [M] the zoo order.
      scores: metric -> [T, M] float64 (NaN where the metric failed on a dataset).
      seconds: metric -> [T] wall seconds of scoring the zoo on each dataset (recorded when computed).
      skipped: metric -> why it cannot run on these inputs (e.g. needs source features).
      errors: metric -> {dataset: message} for datasets where the metric raised ValueError.
      computed: number of (dataset, model, metric) scores computed in this run (not from the cache).
      calls: number of `score_zoo` calls made in this run.
    """

    datasets: list[str]
    models: list[str]
    scores: dict[str, np.ndarray]
    seconds: dict[str, np.ndarray]
    skipped: dict[str, str]
    errors: dict[str, dict[str, str]]
    computed: int = 0
    calls: int = 0

    def complete(self) -> list[str]:
        """Metrics with a score for every (dataset, model) (those a results table can show)."""
        return [name for name, table in self.scores.items() if np.isfinite(table).all()]


@functools.lru_cache(maxsize=1)
def metrics_code_fingerprint() -> str:
    """sha256 (16 hex) of the metrics package's Python sources: part of every cache key."""
    from mspider_jax import metrics

    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(metrics.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _file_sha(manifest: Mapping[str, Any], filename: str, where: str) -> str:
    files = manifest.get("files") or {}
    if filename not in files or not files[filename].get("sha256"):
        raise ValueError(f"{where}: the manifest has no sha256 of {filename}")
    return files[filename]["sha256"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"array_sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                "shape": list(value.shape), "dtype": str(value.dtype)}
    return value


def score_key(metric: str, *, convention: str, options: Mapping[str, Any], seed: int | None,
              inputs: Sequence[str], zoo_inputs: Sequence[str] = ()) -> str:
    """The cache key (sha256 hex) of one score. `inputs`: sha256 of the model's files read;
    `zoo_inputs`: those of every zoo model (zoo-relative metrics), in zoo order."""
    record = {"format": CACHE_FORMAT, "metric": metric, "convention": convention,
              "options": _jsonable(dict(options)), "seed": seed, "inputs": list(inputs),
              "zoo": list(zoo_inputs), "code": metrics_code_fingerprint()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


class ScoreCache:
    """{dataset, split, metric} -> {model: {key, score, seconds}} JSON files under `directory`."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else pathlib.Path(directory)

    def _path(self, dataset: str, split: str, metric: str) -> pathlib.Path:
        from mspider_jax.features.store import encode_name

        return self.directory / encode_name(dataset) / encode_name(split) / f"{metric}.json"

    def load(self, dataset: str, split: str, metric: str) -> dict[str, dict]:
        if self.directory is None:
            return {}
        path = self._path(dataset, split, metric)
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring the unreadable cache file %s", path)
            return {}

    def save(self, dataset: str, split: str, metric: str, records: Mapping[str, dict]) -> None:
        if self.directory is None:
            return
        from mspider_jax.evaluation._io import write_text_atomic

        write_text_atomic(self._path(dataset, split, metric),
                          json.dumps(dict(records), indent=1, sort_keys=True))


def _load_zoo(store, dataset: str, split: str, models: Sequence[str]):
    """The zoo's arrays on one dataset as a `metrics.report.Zoo` (labels must agree)."""
    from mspider_jax.metrics.report import Zoo

    labels, inputs = None, {}
    for model in models:
        entry = store.read(dataset, split, model)
        if labels is None:
            labels = np.asarray(entry.labels)
        elif not np.array_equal(labels, np.asarray(entry.labels)):
            raise ValueError(f"{dataset}/{split}: the labels stored with {model} differ from those "
                             f"of {models[0]} (not the same samples in the same order)")
        inputs[model] = {"features": np.asarray(entry.features, np.float32)}
        if entry.logits is not None:
            inputs[model]["logits"] = np.asarray(entry.logits, np.float32)
    return Zoo(labels=labels, inputs=inputs)


@dataclasses.dataclass
class _Settings:
    """The scoring options shared by every dataset (picklable: sent to worker processes)."""

    split: str
    names: list[str]
    convention: str
    options: dict[str, dict[str, Any]]
    seed: int
    cache_dir: str | None


def _score_dataset(store, dataset: str, models: Sequence[str], settings: _Settings, *,
                   compute: bool = True, known_errors: Mapping[str, str] | None = None,
                   progress: Callable[[str], None] | None = None,
                   on_metric: Callable[[], None] | None = None) -> dict:
    """Every metric of `settings` on one dataset, from the cache or computed.

    Returns:
      {"scores": {metric: [M] or None}, "seconds": {metric: float}, "skipped": {metric: reason},
      "errors": {metric: message}, "missing": scores not cached, "computed": scores computed,
      "calls": score_zoo calls}. With compute=False nothing is computed (a dry run that counts
      "missing").
    """
    import jax

    from mspider_jax import metrics as M
    from mspider_jax.metrics.report import applicable_metrics

    split = settings.split
    cache = ScoreCache(settings.cache_dir)
    out = {"scores": {}, "seconds": {}, "skipped": {}, "errors": {}, "missing": 0, "computed": 0,
           "calls": 0}
    manifests = {m: store.manifest(dataset, split, m) for m in models}
    zoo = None  # arrays are read only when something must be computed
    for name in settings.names:
        if on_metric is not None:
            on_metric()
        spec = M.get(name)
        needs = sorted(k for k in spec.needs if k in ENTRY_INPUTS)
        if not needs or set(spec.needs) - set(ENTRY_INPUTS):
            missing_inputs = sorted(set(spec.needs) - set(ENTRY_INPUTS))
            out["skipped"][name] = (f"needs {', '.join(missing_inputs)} (not in a target feature "
                                    "store)")
            continue
        if "logits" in needs and any(manifests[m].get("num_logits") is None for m in models):
            out["skipped"][name] = "needs logits (some store entries have none)"
            continue
        inputs = {m: [_file_sha(manifests[m], ENTRY_INPUTS[k], f"{dataset}/{split}/{m}")
                      for k in needs]
                  + [_file_sha(manifests[m], "labels.npy", f"{dataset}/{split}/{m}")]
                  for m in models}
        zoo_inputs = [sha for m in models for sha in inputs[m]] if spec.is_zoo_relative else []
        options = settings.options.get(name, {})
        keys = {m: score_key(name, convention=settings.convention, options=options,
                             seed=settings.seed if spec.is_randomized else None, inputs=inputs[m],
                             zoo_inputs=zoo_inputs) for m in models}
        records = cache.load(dataset, split, name)
        missing = [m for m in models if records.get(m, {}).get("key") != keys[m]]
        if spec.is_zoo_relative and missing:
            missing = list(models)  # the score of one model depends on all of them
        if known_errors and name in known_errors:
            out["errors"][name] = known_errors[name]
            continue
        if missing:
            out["missing"] += len(missing)
            if not compute:
                continue
            if zoo is None:
                zoo = _load_zoo(store, dataset, split, models)
            chosen, why = applicable_metrics(zoo, [name])
            if not chosen:
                out["skipped"][name] = why[name]
                continue
            kwargs = {k: [zoo.inputs[m][k] for m in missing] for k in needs}
            start = time.perf_counter()
            out["calls"] += 1
            try:
                values = M.score_zoo(name, labels=zoo.labels, convention=settings.convention,
                                     key=jax.random.key(settings.seed), **kwargs, **options)
            except ValueError as err:  # the metric refuses these inputs (documented errors)
                out["errors"][name] = str(err)
                log.warning("%s on %s failed: %s", name, dataset, err)
                continue
            except Exception as err:  # noqa: BLE001 - a bug in one metric must not end the run
                out["errors"][name] = f"unexpected {type(err).__name__}: {err}"
                log.exception("%s on %s raised", name, dataset)
                continue
            per_model = (time.perf_counter() - start) / len(missing)
            for model, value in zip(missing, values):
                records[model] = {"key": keys[model], "score": float(value),
                                  "seconds": per_model}
            out["computed"] += len(missing)
            cache.save(dataset, split, name, records)
        out["scores"][name] = np.array([records[m]["score"] for m in models], np.float64)
        out["seconds"][name] = float(sum(records[m]["seconds"] for m in models))
        if progress is not None:
            state = f"computed {len(missing)}" if missing else "cached"
            progress(f"{dataset} {name}: {state} ({out['seconds'][name]:.1f} s)")
    return out


def _print_progress(message: str) -> None:
    import sys

    print(f"[metrics] {message}", file=sys.stderr, flush=True)


def _worker(store_root: str, dataset: str, models: list[str], settings: _Settings,
            verbose: bool) -> tuple[str, dict]:
    """One dataset in a worker process (results go to the cache; counts and errors come back)."""
    from mspider_jax.features import FeatureStore

    out = _score_dataset(FeatureStore(store_root), dataset, models, settings,
                         progress=_print_progress if verbose else None)
    return dataset, {k: out[k] for k in ("errors", "computed", "calls")}


def _prefill_in_workers(store, datasets: Sequence[str], models: Sequence[str],
                        settings: _Settings, workers: int, verbose: bool) -> dict[str, dict]:
    """Computes the datasets' missing scores in `workers` processes (one dataset per task)."""
    import concurrent.futures
    import multiprocessing

    from tqdm.auto import tqdm

    pending = [d for d in datasets
               if _score_dataset(store, d, models, settings, compute=False)["missing"]]
    if len(pending) < 2:
        return {}
    log.info("Scoring %d datasets in %d worker processes.", len(pending), workers)
    results = {}
    context = multiprocessing.get_context("spawn")  # a fresh JAX runtime in each worker
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(pending)),
                                                mp_context=context) as pool:
        futures = [pool.submit(_worker, str(store.root), d, list(models), settings, verbose)
                   for d in pending]
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                           desc="datasets", unit="dataset", disable=not verbose, leave=False):
            dataset, out = future.result()
            results[dataset] = out
    return results


def score_metrics(store, datasets: Sequence[str], models: Sequence[str], *, split: str = "train",
                  metrics: Sequence[str] | None = None, convention: str = "paper",
                  options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
                  cache_dir: str | os.PathLike | None = None, workers: int = 1,
                  progress: Callable[[str], None] | None = None,
                  show_bar: bool = True) -> MetricScores:
    """Scores every model of `models` with every metric on every dataset (cached).

    Args:
      store: a `FeatureStore` holding (dataset, split, model) for every dataset and model.
      datasets: [T] target datasets.
      models: [M] the zoo, in the order of the score vectors.
      metrics: metric names (default every registered metric); metrics whose inputs the store lacks
        (e.g. OTCE's source features) or whose target type differs are skipped with the reason.
      convention: "paper" or "model_spider" (see `mspider_jax.metrics`).
      options: {metric: {option: value}} passed to score_zoo.
      seed: PRNG seed of the randomized metrics (N-LEEP, OTCE, PACTran-Gauss, NCTI).
      cache_dir: where scores are cached (None = no cache).
      workers: > 1 scores datasets in that many processes (needs `cache_dir`, through which the
        scores come back). XLA compiles one program per (metric, class count, feature dim), mostly
        on one thread, so on a small zoo the workers divide the wall time almost by their number.
      progress: called with one line per (dataset, metric) done.
      show_bar: show a tqdm bar over (dataset, metric) pairs.

    Returns:
      A `MetricScores`.
    """
    from tqdm.auto import tqdm

    from mspider_jax import metrics as M

    datasets, models = list(datasets), list(models)
    if not datasets or len(models) < 2:
        raise ValueError(f"need at least one dataset and two models, got {len(datasets)} datasets "
                         f"and {len(models)} models")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and cache_dir is None:
        raise ValueError("scoring in worker processes (workers > 1) needs a cache_dir")
    requested = list(M.names() if metrics is None else metrics)
    for name in requested:
        M.get(name)  # unknown name -> ValueError listing the known ones
    options = {name: dict(values) for name, values in (options or {}).items()}
    unknown = sorted(set(options) - set(requested))
    if unknown:
        raise ValueError(f"options given for metrics that are not scored: {unknown}")
    settings = _Settings(split, requested, convention, options, seed,
                         None if cache_dir is None else str(cache_dir))
    result = MetricScores(datasets, models,
                          scores={n: np.full((len(datasets), len(models)), np.nan)
                                  for n in requested},
                          seconds={n: np.zeros(len(datasets)) for n in requested},
                          skipped={}, errors={})
    from_workers = {}
    if workers > 1:
        from_workers = _prefill_in_workers(store, datasets, models, settings, workers,
                                           verbose=show_bar or progress is not None)
        for out in from_workers.values():
            result.computed += out["computed"]
            result.calls += out["calls"]
    bar = tqdm(total=len(datasets) * len(requested), desc="metrics", unit="score",
               disable=not show_bar, leave=False)
    try:
        for t, dataset in enumerate(datasets):
            bar.set_postfix_str(dataset)
            known = from_workers.get(dataset, {}).get("errors")
            out = _score_dataset(store, dataset, models, settings, known_errors=known,
                                 progress=progress, on_metric=bar.update)
            result.computed += out["computed"]
            result.calls += out["calls"]
            for name, reason in out["skipped"].items():
                result.skipped.setdefault(name, reason)
            for name, message in out["errors"].items():
                result.errors.setdefault(name, {})[dataset] = message
            for name, values in out["scores"].items():
                result.scores[name][t] = values
                result.seconds[name][t] = out["seconds"][name]
    finally:
        bar.close()
    for name in result.skipped:
        result.scores.pop(name, None)
        result.seconds.pop(name, None)
    return result
