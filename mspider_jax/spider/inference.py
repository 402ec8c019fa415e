"""Ranking the zoo for a user's own task with a trained Model Spider ranker (issue 7).

Model Spider (Zhang et al., NeurIPS 2023, arXiv 2306.03900; spec model_spider.md §7) ranks a zoo in
two stages: stage 1 from the task's generic-encoder class prototypes alone; stage 2 re-scores the
stage-1 top-k PTMs with their own class prototypes, which means running only those k PTMs over the
task's data. This module starts from in-memory arrays (the task's generic features and labels) and
fetches a candidate PTM's features only when stage 2 needs them, through a pluggable callable:

  FeatureFetcher = Callable[[model_name], features [N, d_m]]

The features must be for the same N samples, in the same order, as the labels given. `store_fetcher`
reads them from a `FeatureStore`; a later extension can extract them on demand (image folder, tfds,
.npz) behind the same callable.

The result is a `rank.Ranking`: final scores (higher = better), the stage each score came from, and
the cost paid: `forward_passes` = k + 1 (the re-ranked PTMs and the generic encoder) versus
`metric_forward_passes` = M (a transferability metric has to run every PTM over the data).

Conventions: labels are integer class ids (any values; remapped to 0..C-1 in sorted order);
regression targets must be binned into classes first. Class prototypes are plain means
(`prototypes.class_prototypes`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mspider_jax.spider import coverage as coverage_lib
from mspider_jax.spider import data as data_lib
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import prototypes as prototypes_lib
from mspider_jax.spider import rank as rank_lib

FeatureFetcher = Callable[[str], np.ndarray]


def store_fetcher(store: data_lib.FeatureSource, dataset: str, split: str = "train",
                  labels: np.ndarray | None = None) -> FeatureFetcher:
    """A `FeatureFetcher` reading (dataset, split, model) entries of a feature store.

    Args:
      labels: [N] if given, every fetched entry's labels must equal them (same samples, same
        order), else ValueError.
    """

    def fetch(model: str) -> np.ndarray:
        entry = store.read(dataset, split, model)
        if labels is not None and not np.array_equal(np.asarray(entry.labels), labels):
            raise ValueError(f"{dataset}/{split}: the labels stored with {model} differ from the "
                             "task's labels (not the same samples in the same order)")
        return entry.features

    return fetch


def _class_ids(labels: Any) -> tuple[np.ndarray, int]:
    """[N] integer labels -> (ids in 0..C-1 in sorted label order, C)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty [N] vector, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids (bin regression targets first), got "
                         f"dtype {labels.dtype}")
    classes, ids = np.unique(labels, return_inverse=True)
    return ids.astype(np.int64), len(classes)


def rank_features(ranker: model_lib.Ranker, model_names: Sequence[str], generic_features: Any,
                  labels: Any, *, specific_length: int, k: int = 0,
                  fetch_features: FeatureFetcher | data_lib.FeatureSource | None = None,
                  dataset: str | None = None, split: str = "train") -> rank_lib.Ranking:
    """Ranks the zoo for one task given as arrays (two stages; spec §7).

    Args:
      ranker: a trained ranker of the zoo `model_names` (e.g. from `checkpointing.load_ranker`).
      model_names: [M] the zoo, in the ranker's order.
      generic_features: [N, Dg] the task's features under the ranker's generic encoder.
      labels: [N] integer class ids.
      specific_length: P_h of the ranker's training (`config.model.specific_length`).
      k: how many stage-1 leaders to re-rank (0 = stage 1 only).
      fetch_features: a `FeatureFetcher` (model name -> [N, d_m] features of the same samples), or a
        feature store (then `dataset` is required and the stored labels are checked). Called only
        for the k re-ranked PTMs.
      dataset, split: where the task lives in the store, when `fetch_features` is a store.

    Returns:
      A `rank.Ranking` (scores, `stages`, `enriched`, `forward_passes`, `metric_forward_passes`).
    """
    ids, num_classes = _class_ids(labels)
    generic_features = np.asarray(generic_features)
    if generic_features.ndim != 2 or generic_features.shape[0] != ids.shape[0]:
        raise ValueError(f"generic_features must be [N={ids.shape[0]}, Dg], got "
                         f"{generic_features.shape}")
    if generic_features.shape[1] != ranker.generic_dim:
        raise ValueError(f"generic_features have {generic_features.shape[1]} columns; the ranker's "
                         f"generic encoder has {ranker.generic_dim}")
    if fetch_features is not None and hasattr(fetch_features, "read"):
        if dataset is None:
            raise ValueError("fetch_features is a feature store: give the task's dataset name")
        fetch_features = store_fetcher(fetch_features, dataset, split, np.asarray(labels))
    generic_prototypes, _ = prototypes_lib.class_prototypes(generic_features, ids, num_classes)
    model_index = {name: m for m, name in enumerate(model_names)}

    def model_prototypes(name: str) -> np.ndarray:
        features = np.asarray(fetch_features(name))
        expected_dim = ranker.model_dims[model_index[name]]
        if features.shape != (ids.shape[0], expected_dim):
            raise ValueError(f"features of {name} must be [N={ids.shape[0]}, {expected_dim}], got "
                             f"{features.shape}")
        return prototypes_lib.class_prototypes(features, ids, num_classes)[0]

    return rank_lib.rank_task(ranker, model_names, generic_prototypes,
                              specific_length=specific_length, k=k,
                              model_prototypes=model_prototypes if fetch_features else None)


def assess_coverage(reference: coverage_lib.CoverageReference, generic_features: Any,
                    labels: Any) -> coverage_lib.Coverage:
    """How close a task is to the ranker's training tasks (`spider.coverage`).

    Args:
      reference: the ranker's `coverage.CoverageReference` (`coverage.load_reference(checkpoint)`).
      generic_features: [N, Dg] the task's generic features, as given to `rank_features`.
      labels: [N] integer class ids; `Coverage.per_class` follows their sorted order.
    """
    ids, num_classes = _class_ids(labels)
    generic_prototypes, _ = prototypes_lib.class_prototypes(np.asarray(generic_features), ids, num_classes)
    return reference.assess(generic_prototypes)


def rank_store_task(checkpoint: str | os.PathLike, store: data_lib.FeatureSource | str,
                    dataset: str, *, split: str = "train", k: int | None = None,
                    generic_model: str | None = None) -> rank_lib.Ranking:
    """`rank_features` for a task stored in a feature store, with a ranker from a training workdir.

    Args:
      checkpoint: a training workdir or checkpoint directory (`checkpointing.load_ranker`).
      store: a `FeatureStore` or its root directory.
      k: re-ranking depth; default the run's `config.eval.rerank_k`.
      generic_model: the store's model name of the generic encoder; default the run's
        `config.data.generic_model`.
    """
    from mspider_jax import checkpointing
    from mspider_jax.features import FeatureStore

    if isinstance(store, (str, pathlib.Path)):
        if not pathlib.Path(store).is_dir():
            raise FileNotFoundError(f"no feature store at {store}")
        store = FeatureStore(store)
    ranker, config = checkpointing.load_ranker(checkpoint)
    if generic_model is None:
        generic_model = config.data.get("generic_model", "generic")
    if k is None:
        k = int(config.eval.get("rerank_k", 0))
    k = min(k, ranker.num_models)
    entry = store.read(dataset, split, generic_model)
    return rank_features(ranker, list(config.model_names), np.asarray(entry.features),
                         np.asarray(entry.labels),
                         specific_length=int(config.model.specific_length), k=k,
                         fetch_features=store, dataset=dataset, split=split)


def ranking_record(ranking: rank_lib.Ranking) -> dict:
    """A JSON-able dict: the ranked zoo (best first) with scores and stages, and the cost."""
    stages = ranking.stages
    rows = [{"rank": position + 1, "model": ranking.model_names[m],
             "score": float(ranking.scores[m]), "stage": int(stages[m]),
             "stage1_score": float(ranking.stage1_scores[m])}
            for position, m in enumerate(ranking.order)]
    return {"ranking": rows, "k": len(ranking.enriched),
            "reranked": [ranking.model_names[m] for m in ranking.enriched],
            "forward_passes": ranking.forward_passes,
            "metric_forward_passes": ranking.metric_forward_passes}


def format_ranking(ranking: rank_lib.Ranking) -> str:
    """The ranking as a text table, then the cost line."""
    record = ranking_record(ranking)
    width = max(len("model"), *(len(row["model"]) for row in record["ranking"]))
    lines = [f"{'rank':>4}  {'model':<{width}}  {'score':>9}  stage  {'stage-1':>9}"]
    for row in record["ranking"]:
        lines.append(f"{row['rank']:>4}  {row['model']:<{width}}  {row['score']:>9.4f}  "
                     f"{row['stage']:>5}  {row['stage1_score']:>9.4f}")
    lines.append(f"cost: {record['forward_passes']} forward passes over the task's data "
                 f"({record['k']} re-ranked PTMs + the generic encoder); scoring every PTM with a "
                 f"metric needs {record['metric_forward_passes']}")
    return "\n".join(lines)
