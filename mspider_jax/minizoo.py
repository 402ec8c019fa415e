"""The offline mini zoo shipped in `data/minizoo/` (issue 11): manifest, ground truth, training bank.

The mini zoo mirrors Model Spider's multi-source zoo (Zhang et al., NeurIPS 2023; specs/model_spider.md
§1.2) at laptop scale: PyTorch PTMs `<arch>_<source>` pretrained on small offline source domains,
held-out targets with measured fine-tuning ground truth, and the ranker's training tasks (class
prototypes of the generic encoder and of every PTM). See data/minizoo/README.md.

Conventions:
  * Zoo order = `model_names()`: the canonical order of every label/score vector.
  * Store names: target `<t>` is dataset `mz_<t>` (split "train"); training tasks are `mz_task<k>`;
    the generic task encoder is model `generic`.
  * Accuracies are percentages in [0, 100].
This module does not import torch; only `ensure_target_store` needs it (through converters/).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

ARTIFACT_ENV = "MSPIDER_MINIZOO_DIR"
CACHE_ENV = "MSPIDER_MINIZOO_CACHE"
MANIFEST = "manifest.json"
GENERIC = "generic"
TARGET_PREFIX = "mz_"
GROUND_TRUTH_FILES = {"targets": "ground_truth_targets.csv", "training": "ground_truth_training.csv"}
TRAINING_BANK = "training_tasks.npz"


def artifact_dir() -> pathlib.Path:
    """The artifact folder: $MSPIDER_MINIZOO_DIR, else the repository's data/minizoo."""
    override = os.environ.get(ARTIFACT_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path(__file__).resolve().parents[1] / "data" / "minizoo"


def _root(root: str | os.PathLike | None) -> pathlib.Path:
    path = artifact_dir() if root is None else pathlib.Path(root)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"no mini-zoo artifact at {path} (missing {MANIFEST}); set "
                                f"${ARTIFACT_ENV} or build it with scripts/build_minizoo.py")
    return path


@functools.lru_cache(maxsize=8)
def _load_manifest_cached(path: str, mtime_ns: int) -> dict:
    del mtime_ns  # part of the cache key only
    return json.loads(pathlib.Path(path).read_text())


def load_manifest(root: str | os.PathLike | None = None) -> dict:
    """The artifact's manifest.json (models, targets, training tasks, versions, config, sha256)."""
    path = _root(root) / MANIFEST
    return _load_manifest_cached(str(path), path.stat().st_mtime_ns)


def manifest_hash(root: str | os.PathLike | None = None) -> str:
    """First 16 hex digits of the sha256 of manifest.json (it changes with any shipped file)."""
    return hashlib.sha256((_root(root) / MANIFEST).read_bytes()).hexdigest()[:16]


def verify_artifact(root: str | os.PathLike | None = None) -> list[str]:
    """Checks every file listed in the manifest against its sha256.

    Returns:
      Problems found (empty when the artifact is intact): missing files, hash mismatches, files in
      the folder that the manifest does not list.
    """
    path = _root(root)
    listed = load_manifest(path)["files"]
    problems = []
    for name, expected in sorted(listed.items()):
        file = path / name
        if not file.is_file():
            problems.append(f"missing: {name}")
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != expected:
            problems.append(f"sha256 mismatch: {name}")
    present = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    problems += [f"not in the manifest: {name}" for name in sorted(present - set(listed) - {MANIFEST})]
    return problems


def model_names(root: str | os.PathLike | None = None) -> list[str]:
    """The PTMs of the zoo in canonical order (the generic encoder is not one of them)."""
    return [m["name"] for m in load_manifest(root)["models"]]


def target_names(root: str | os.PathLike | None = None) -> list[str]:
    """Short names of the targets (e.g. "digits"); their store datasets are `target_dataset(name)`."""
    return [t["name"] for t in load_manifest(root)["targets"]]


def target_dataset(target: str) -> str:
    """Store dataset name of a target: "digits" -> "mz_digits"."""
    return f"{TARGET_PREFIX}{target}"


def training_task_names(root: str | os.PathLike | None = None) -> list[str]:
    return [t["name"] for t in load_manifest(root)["training_tasks"]]


def _float_or_none(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def ground_truth(kind: str = "targets", root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Ground-truth records of the targets or the training tasks.

    Args:
      kind: "targets" or "training".

    Returns:
      One dict per (dataset, model) in file order (datasets, then zoo order): dataset, model,
      accuracy (percent, mean over seeds), accuracy_std (None with one seed), num_seeds,
      seed_accuracies (list), linear_probe (percent).
    """
    if kind not in GROUND_TRUTH_FILES:
        raise ValueError(f"kind must be one of {sorted(GROUND_TRUTH_FILES)}, got {kind!r}")
    path = _root(root) / GROUND_TRUTH_FILES[kind]
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [dict(dataset=r["dataset"], model=r["model"], accuracy=float(r["accuracy"]),
                 accuracy_std=_float_or_none(r["accuracy_std"]), num_seeds=int(r["num_seeds"]),
                 seed_accuracies=[float(v) for v in r["seed_accuracies"].split(";")],
                 linear_probe=float(r["linear_probe"])) for r in rows]


def ground_truth_table(kind: str = "targets", column: str = "accuracy",
                       root: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """(datasets [T], values [T, M]) of one ground-truth column, models in zoo order."""
    records = ground_truth(kind, root)
    return records_to_table(records, model_names(root), column)


def records_to_table(records: Sequence[dict], models: Sequence[str], column: str = "accuracy"
                     ) -> tuple[list[str], np.ndarray]:
    """Long records -> (datasets in first-seen order, [T, M] array); a missing pair is an error."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    index = {m: i for i, m in enumerate(models)}
    table = np.full((len(datasets), len(models)), np.nan)
    for record in records:
        if record["model"] not in index:
            raise ValueError(f"model {record['model']!r} is not in the zoo")
        table[datasets.index(record["dataset"]), index[record["model"]]] = record[column]
    if np.isnan(table).any():
        missing = np.argwhere(np.isnan(table))[0]
        raise ValueError(f"no {column} for dataset {datasets[missing[0]]}, model {models[missing[1]]}")
    return datasets, table


def training_bank(root: str | os.PathLike | None = None):
    """The training tasks' prototype bank (list of TaskPrototypes; generic + every PTM)."""
    from mspider_jax.spider.prototypes import load_prototype_bank

    return load_prototype_bank(_root(root) / TRAINING_BANK)


def load_target(target: str, root: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A target's shipped training split: images [N, 32, 32, 3] uint8, labels [N] int64, class names."""
    root = _root(root)
    entry = next((t for t in load_manifest(root)["targets"] if t["name"] == target), None)
    if entry is None:
        raise ValueError(f"unknown target {target!r}; known: {target_names(root)}")
    with np.load(root / entry["file"]) as data:
        images = data["images"]
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return images, data["labels"].astype(np.int64), [str(c) for c in data["class_names"]]


def default_cache_dir(root: str | os.PathLike | None = None) -> pathlib.Path:
    """$MSPIDER_MINIZOO_CACHE, else ~/.cache/mspider_jax/minizoo-<manifest hash>."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path.home() / ".cache" / "mspider_jax" / f"minizoo-{manifest_hash(root)}"


def ensure_target_store(store_root: str | os.PathLike | None = None,
                        root: str | os.PathLike | None = None, progress: bool = True):
    """A FeatureStore holding every PTM's and the generic encoder's features of every target.

    At first use the features are extracted (PyTorch, through converters/) from the shipped images
    into `store_root` (default `default_cache_dir()`); entries that exist are skipped.

    Returns:
      The FeatureStore (datasets `mz_<target>`, split "train", models = zoo + "generic").
    Raises:
      ImportError: torch is not installed and some entry is missing.
    """
    from mspider_jax.features import FeatureStore

    root = _root(root)
    store = FeatureStore(default_cache_dir(root) if store_root is None else store_root)
    wanted = [target_dataset(t) for t in target_names(root)]
    models = model_names(root) + [GENERIC]
    if all(store.has(d, "train", m) for d in wanted for m in models):
        return store
    try:
        from converters.minizoo import zoo
    except ImportError as err:
        raise ImportError("extracting the mini-zoo target features needs PyTorch (pip install "
                          "'mspider-jax[torch]'); or point store_root at an existing store") from err
    zoo.extract_targets(store, root=root, progress=progress)
    return store


def acceptance_summary(records: Sequence[dict], models: Sequence[str]) -> dict[str, Any]:
    """How task-dependent the target rankings are (issue 11's acceptance numbers).

    Args:
      records: target ground-truth records (`ground_truth("targets")` or the build's).
      models: zoo order.

    Returns:
      best_model / best_accuracy per dataset, wins per model, max_wins, num_targets,
      mean_between_target_tau (Kendall tau-b of accuracy vectors over all target pairs) and
      mean_seed_tau (Kendall tau-b between the per-seed accuracy vectors of a target, over all seed
      pairs and targets; None with one seed).
    """
    from scipy import stats

    datasets, table = records_to_table(records, models, "accuracy")
    best = {d: models[int(np.argmax(row))] for d, row in zip(datasets, table)}
    wins = {m: sum(1 for b in best.values() if b == m) for m in models}
    between = [stats.kendalltau(table[i], table[j]).statistic
               for i in range(len(datasets)) for j in range(i + 1, len(datasets))]
    seed_taus = []
    for dataset in datasets:
        rows = [r for r in records if r["dataset"] == dataset]
        per_seed = np.array([[float(v) for v in (r["seed_accuracies"].split(";")
                                                 if isinstance(r["seed_accuracies"], str)
                                                 else r["seed_accuracies"])]
                             for r in sorted(rows, key=lambda r: models.index(r["model"]))])
        for a in range(per_seed.shape[1]):
            for b in range(a + 1, per_seed.shape[1]):
                seed_taus.append(stats.kendalltau(per_seed[:, a], per_seed[:, b]).statistic)
    return dict(best_model=best, best_accuracy={d: float(row.max()) for d, row in zip(datasets, table)},
                wins={m: w for m, w in wins.items() if w}, max_wins=max(wins.values()),
                num_targets=len(datasets),
                mean_between_target_tau=float(np.mean(between)) if between else None,
                mean_seed_tau=float(np.mean(seed_taus)) if seed_taus else None)


def metric_weighted_tau(store, records: Sequence[dict], models: Sequence[str], metric: str = "logme",
                        split: str = "train") -> tuple[float, dict[str, float]]:
    """How well a transferability metric ranks the zoo on each target: the benchmark's weighted
    Kendall tau (`mspider_jax.evaluation.measures.weighted_tau`, raw form) between the fine-tuning
    accuracies and the metric's scores on the store's features.

    Args:
      store: FeatureStore with every (dataset of `records`, split, model).
      records: target ground-truth records.
      models: zoo order.

    Returns:
      (mean over datasets, {dataset: tau}).
    """
    from mspider_jax import metrics
    from mspider_jax.evaluation.measures import weighted_tau

    datasets, table = records_to_table(records, models, "accuracy")
    per_dataset = {}
    for dataset, truth in zip(datasets, table):
        scores = []
        for model in models:
            entry = store.read(dataset, split, model)
            scores.append(metrics.score(metric, features=np.asarray(entry.features, np.float32),
                                        labels=np.asarray(entry.labels)))
        per_dataset[dataset] = weighted_tau(truth, np.asarray(scores))
    return float(np.mean(list(per_dataset.values()))), per_dataset
