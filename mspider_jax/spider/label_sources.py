"""Training labels without fine-tuning: label sources for Model Spider's training tasks (issue 7).

Model Spider (Zhang et al., NeurIPS 2023; spec model_spider.md §6.1) trains its ranker on the
"approximated performance" of every PTM on the training tasks, and never released how that was made
(a "Rankagg" rank-aggregation module is mentioned but missing). Fine-tuning every PTM on every
training task is the expensive part of building a ranker, so the labels can come from a cheaper
source (`config.data.label_source`):

  "finetune"       the ground-truth CSV's values (measured fine-tuning accuracy): the default.
  "linear_probe"   held-out accuracy of a regularised softmax regression on each PTM's frozen
                   features, computed in JAX (`linear_probe.linear_probe_accuracies`; its docstring
                   has the split and the objective).
  "metrics_borda"  Borda count over transferability metrics computed with `mspider_jax.metrics`
                   (`options.metrics`, default LogME, NCE, H-Score, LEEP; any metric that needs only
                   the target features and/or the source-head logits).

Borda count: for each metric, the n models scored on the task get points equal to their rank by
that metric, 0 for the lowest score ... n-1 for the highest. Tied scores share the mean of the
points they span (`scipy.stats.rankdata(method="average")`: scores 5, 7, 7, 9 get 0, 1.5, 1.5, 3).
A model's label is the sum of its points over the metrics (higher = better). Models tied in the sum
keep equal labels: rank labels give them the average rank, and the Plackett-Luce loss places tied
models in zoo order (`losses.plackett_luce`). A single metric is the Borda count of one metric.

Every label source needs each training task's full features (and logits for logit metrics) in a
feature store: `options.store` (e.g. the mini-zoo build's WORKDIR/store), dataset
`options.store_prefix + task`, split `options.split`. A model without an entry for a task gets no
label there (NaN: masked out of the loss), whatever the ground-truth CSV has.

Cache: one JSON file per (task, source, options) in `cache_dir` (default
$MSPIDER_LABEL_CACHE, else ~/.cache/mspider_jax/labels), named by the sha256 of the inputs: the
source and its options, dataset and split, the zoo, every entry's file checksums from the store
manifests (re-extracted features invalidate the entry) and `LABELS_VERSION`. Files are written
atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

from mspider_jax.spider import data as data_lib
from mspider_jax.spider import linear_probe

LABEL_SOURCES = ("finetune", "linear_probe", "metrics_borda")
DEFAULT_METRICS = ("logme", "nce", "hscore", "leep")
LABELS_VERSION = 1  # bump when a source's computation changes: old cache entries stop matching
CACHE_ENV = "MSPIDER_LABEL_CACHE"


@dataclasses.dataclass(frozen=True)
class LabelOptions:
    """Options of the label sources (the fields of `config.data.label_options` but `store`).

    Attributes:
      metrics: metric names of "metrics_borda".
      convention: the metrics' convention ("paper" or "model_spider").
      held_out_fraction, regularization, seed: the linear probe's split and penalty.
    """

    metrics: tuple[str, ...] = DEFAULT_METRICS
    convention: str = "paper"
    held_out_fraction: float = 0.3
    regularization: float = 1.0
    seed: int = 0

    def for_source(self, source: str) -> dict[str, Any]:
        """The options that `source` depends on (the cache key)."""
        if source == "metrics_borda":
            return {"metrics": list(self.metrics), "convention": self.convention}
        if source == "linear_probe":
            return {"held_out_fraction": self.held_out_fraction,
                    "regularization": self.regularization, "seed": self.seed}
        raise ValueError(f"unknown label source {source!r}; known: {LABEL_SOURCES}")


def borda_points(scores: np.ndarray) -> np.ndarray:
    """[K, M] scores of K metrics (NaN = not scored) -> [K, M] Borda points (module docstring).

    Points are among each row's scored models: 0 = lowest .. n-1 = highest; NaN stays NaN.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [K metrics, M models], got shape {scores.shape}")
    if np.isinf(scores).any():
        raise ValueError("scores contain inf")
    return data_lib.ranks_among_valid(scores)


def borda_count(scores: np.ndarray) -> np.ndarray:
    """[K, M] metric scores -> [M] summed Borda points (NaN for a model no metric scored).

    Every metric must score the same models (a model scored by some metrics only would be
    compared on a different number of votes).
    """
    points = borda_points(scores)
    scored = ~np.isnan(points)
    if not (scored == scored[:1]).all():
        raise ValueError("every metric must score the same models")
    return np.where(scored[0], np.nansum(points, axis=0), np.nan)


# --------------------------------------------------------------------------------------------------
# Per task


def _available(store: data_lib.FeatureSource, dataset: str, split: str,
               model_names: Sequence[str]) -> list[str]:
    stored = set(store.models(dataset, split))
    return [m for m in model_names if m in stored]


def task_metric_scores(store: data_lib.FeatureSource, dataset: str, model_names: Sequence[str], *,
                       split: str = "train", metrics: Sequence[str] = DEFAULT_METRICS,
                       convention: str = "paper") -> np.ndarray:
    """[K, M] scores of `metrics` for every zoo model stored for the task (NaN for the others)."""
    from mspider_jax import metrics as metrics_lib

    usable = {"features", "logits"}
    for name in metrics:
        needs = set(metrics_lib.get(name).needs)
        if not needs <= usable:
            raise ValueError(f"metric {name} needs {sorted(needs - usable)}: a label source can "
                             "only use metrics of the target features and/or source-head logits")
    models = _available(store, dataset, split, model_names)
    if len(models) < 2:
        raise ValueError(f"{dataset}/{split}: fewer than 2 zoo models in the store ({models})")
    entries = [store.read(dataset, split, m) for m in models]
    labels = np.asarray(entries[0].labels)
    for model, entry in zip(models, entries):
        if not np.array_equal(np.asarray(entry.labels), labels):
            raise ValueError(f"{dataset}/{split}: the labels of {model} differ from {models[0]}'s")
    scores = np.full((len(metrics), len(model_names)), np.nan)
    columns = [list(model_names).index(m) for m in models]
    for row, name in enumerate(metrics):
        inputs = {}
        if "features" in metrics_lib.get(name).needs:
            inputs["features"] = [np.asarray(e.features, np.float32) for e in entries]
        if "logits" in metrics_lib.get(name).needs:
            missing = [m for m, e in zip(models, entries) if e.logits is None]
            if missing:
                raise ValueError(f"metric {name} needs logits; {dataset}/{split} has none for "
                                 f"{missing}")
            inputs["logits"] = [np.asarray(e.logits, np.float32) for e in entries]
        try:
            scores[row, columns] = metrics_lib.score_zoo(name, labels=labels,
                                                         convention=convention, **inputs)
        except ValueError as err:
            raise ValueError(f"{dataset}/{split}: metric {name} failed: {err}") from err
    return scores


def task_labels(store: data_lib.FeatureSource, dataset: str, model_names: Sequence[str],
                source: str, *, split: str = "train",
                options: LabelOptions = LabelOptions()) -> np.ndarray:
    """[M] labels of one task from `source` (NaN for zoo models not in the store)."""
    if source == "metrics_borda":
        return borda_count(task_metric_scores(store, dataset, model_names, split=split,
                                              metrics=options.metrics,
                                              convention=options.convention))
    if source == "linear_probe":
        models = _available(store, dataset, split, model_names)
        if not models:
            raise ValueError(f"{dataset}/{split}: no zoo model in the store")
        entries = [store.read(dataset, split, m) for m in models]
        labels = np.asarray(entries[0].labels)
        for model, entry in zip(models, entries):
            if not np.array_equal(np.asarray(entry.labels), labels):
                raise ValueError(f"{dataset}/{split}: the labels of {model} differ from "
                                 f"{models[0]}'s")
        accuracies = linear_probe.linear_probe_accuracies(
            [np.asarray(e.features, np.float32) for e in entries], labels,
            held_out_fraction=options.held_out_fraction, regularization=options.regularization,
            seed=options.seed)
        values = np.full(len(model_names), np.nan)
        values[[list(model_names).index(m) for m in models]] = accuracies
        return values
    raise ValueError(f"label source {source!r} is not computed from features; known: "
                     f"{LABEL_SOURCES[1:]}")


# --------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> pathlib.Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path.home() / ".cache" / "mspider_jax" / "labels"


def cache_key(store: data_lib.FeatureSource, dataset: str, model_names: Sequence[str],
              source: str, split: str, options: LabelOptions) -> dict[str, Any]:
    """The inputs that determine a task's labels (hashed into the cache file name)."""
    checksums = {}
    for model in _available(store, dataset, split, model_names):
        files = store.manifest(dataset, split, model)["files"]
        checksums[model] = {name: spec["sha256"] for name, spec in sorted(files.items())}
    return {"version": LABELS_VERSION, "source": source, "options": options.for_source(source),
            "dataset": dataset, "split": split, "models": list(model_names),
            "entries": checksums}


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def cached_task_labels(store: data_lib.FeatureSource, dataset: str, model_names: Sequence[str],
                       source: str, *, split: str = "train", options: LabelOptions = LabelOptions(),
                       cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, bool]:
    """`task_labels` through the on-disk cache. Returns ([M] labels, whether the cache had them)."""
    key = cache_key(store, dataset, model_names, source, split, options)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = pathlib.Path(cache_dir or default_cache_dir()) / f"{source}-{digest[:32]}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached["key"] == key:
                return np.array([np.nan if v is None else v for v in cached["labels"]]), True
        except (ValueError, KeyError):
            pass  # a corrupt entry is recomputed and overwritten
    start = time.time()
    values = task_labels(store, dataset, model_names, source, split=split, options=options)
    _write_json_atomic(path, {"key": key, "seconds": time.time() - start,
                              "labels": [None if np.isnan(v) else float(v) for v in values]})
    return values, False


def compute_labels(store: data_lib.FeatureSource, datasets: Sequence[str],
                   model_names: Sequence[str], source: str, *, split: str = "train",
                   options: LabelOptions = LabelOptions(),
                   cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels [T, M] of many tasks (NaN where a model has no entry), cached per task.

    Returns:
      (labels, info) with info = {"seconds": wall time, "computed": tasks not found in the cache}.
    """
    from tqdm.auto import tqdm

    if source not in LABEL_SOURCES[1:]:
        raise ValueError(f"unknown label source {source!r}; computed sources: {LABEL_SOURCES[1:]}")
    start = time.time()
    table = np.full((len(datasets), len(model_names)), np.nan)
    computed = 0
    for row, dataset in enumerate(tqdm(datasets, desc=f"labels ({source})", disable=not progress,
                                       mininterval=5.0)):
        table[row], hit = cached_task_labels(store, dataset, model_names, source, split=split,
                                             options=options, cache_dir=cache_dir)
        computed += not hit
    return table, {"seconds": time.time() - start, "computed": computed}


def options_from_config(label_options: Mapping[str, Any]) -> LabelOptions:
    """`LabelOptions` from `config.data.label_options` (unknown fields are ignored)."""
    fields = {f.name for f in dataclasses.fields(LabelOptions)}
    values = {k: v for k, v in dict(label_options).items() if k in fields}
    if "metrics" in values:
        values["metrics"] = tuple(values["metrics"])
    return LabelOptions(**values)


def relabel(taskset: data_lib.TaskSet, data_config: Mapping[str, Any]) -> data_lib.TaskSet:
    """The training tasks with labels from `data_config.label_source` (unchanged for "finetune").

    Args:
      taskset: the training tasks (their names are store datasets after `store_prefix`).
      data_config: `config.data` with label_source and label_options (store, split, store_prefix,
        cache_dir and the `LabelOptions` fields).
    """
    from absl import logging

    source = data_config["label_source"]
    if source not in LABEL_SOURCES:
        raise ValueError(f"config.data.label_source={source!r}; known: {LABEL_SOURCES}")
    if source == "finetune":
        return taskset
    label_options = data_config["label_options"]
    if not label_options["store"]:
        raise ValueError(f"config.data.label_options.store: label_source={source} needs a feature "
                         "store with the training tasks' features (e.g. the mini-zoo build's "
                         "WORKDIR/store)")
    from mspider_jax.features import FeatureStore

    if not pathlib.Path(label_options["store"]).is_dir():
        raise FileNotFoundError(f"config.data.label_options.store: no store at "
                                f"{label_options['store']}")
    store = FeatureStore(label_options["store"])
    datasets = [label_options["store_prefix"] + name for name in taskset.names]
    labels, info = compute_labels(store, datasets, taskset.model_names, source,
                                  split=label_options["split"],
                                  options=options_from_config(label_options),
                                  cache_dir=label_options["cache_dir"] or None)
    logging.info("Training labels from %s: %d tasks (%d computed, the others cached) in %.1f s.",
                 source, len(datasets), info["computed"], info["seconds"])
    return data_lib.TaskSet(taskset.model_names, taskset.tasks, labels, taskset.groups)
