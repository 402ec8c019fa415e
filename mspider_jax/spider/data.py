"""Tasks, labels and padded batches for Model Spider (Zhang et al., NeurIPS 2023; spec §2-3, §6.1).

A `TaskSet` holds tasks in a fixed zoo order of M PTMs: per task its generic class prototypes
[C, Dg], class counts [C], optional per-PTM prototypes {model: [C, d_m]} (for PTM-specific tokens),
and the measured performance [M] of every PTM on it (NaN = no ground truth: that model is masked).
Task sets come from a prototype bank (`prototypes.py`) plus a long-format ground-truth CSV, or from
a feature store (class prototypes computed from the stored features).

Labels are either the raw performance ("accuracy": higher = better) or its ranks among the task's
valid models ("rank": 0 = worst .. n-1 = best, ties get their average rank).

Batches are padded to static shapes with boolean masks (True = real): generic tokens to a bucketed
length (`tokens.bucket_length`), PTM-specific tokens to P_h rows (the paper keeps the FIRST P_h
class prototypes of a larger task, spec §3.2; we keep that rule but mask padded rows), and the batch
to a fixed number of tasks (padding tasks have weight 0).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import scipy.stats

from mspider_jax.spider import prototypes as prototypes_lib
from mspider_jax.spider import tokens as tokens_lib

LABEL_KINDS = ("accuracy", "rank")


class Batch(NamedTuple):
    """A padded batch of B tasks (numpy or jax arrays; a pytree).

    generic: [B, Pu, Dg] float32 generic prototypes; generic_mask: [B, Pu] bool.
    specific: [B, M, Ph, Dmax] float32 PTM-specific prototypes or None; specific_mask: [B, M, Ph]
      bool.
    labels: [B, M] float32 (0 where missing); label_mask: [B, M] bool.
    task_weight: [B] float32, 1 for real tasks with >= 2 labelled models, 0 for padding.
    """

    generic: np.ndarray
    generic_mask: np.ndarray
    specific: np.ndarray | None
    specific_mask: np.ndarray | None
    labels: np.ndarray
    label_mask: np.ndarray
    task_weight: np.ndarray


@dataclasses.dataclass
class TaskSet:
    """Tasks with their prototypes and the performance of every PTM of a zoo.

    Attributes:
      model_names: the zoo, in the order of every [M] axis.
      tasks: one `TaskPrototypes` per task (per_model keys are model names of the zoo).
      performance: [T, M] float64, NaN where a PTM has no ground truth on the task.
      groups: [T] dataset of each task (several instances of one dataset share a group; used by the
        pooled paper-compatible evaluation). Defaults to the task names.
    """

    model_names: tuple[str, ...]
    tasks: list[prototypes_lib.TaskPrototypes]
    performance: np.ndarray
    groups: tuple[str, ...] = ()

    def __post_init__(self):
        self.model_names = tuple(self.model_names)
        self.performance = np.asarray(self.performance, np.float64)
        if self.performance.shape != (len(self.tasks), len(self.model_names)):
            raise ValueError(f"performance {self.performance.shape} != (tasks {len(self.tasks)}, "
                             f"models {len(self.model_names)})")
        if np.isinf(self.performance).any():
            raise ValueError("performance contains inf")
        self.groups = tuple(self.groups) or tuple(self.names)
        if len(self.groups) != len(self.tasks):
            raise ValueError(f"{len(self.groups)} groups for {len(self.tasks)} tasks")
        zoo = set(self.model_names)
        dims = {}
        for task in self.tasks:
            if task.generic.ndim != 2:
                raise ValueError(f"task {task.name}: generic prototypes must be [C, Dg], got "
                                 f"{task.generic.shape}")
            if not np.isfinite(task.generic).all():
                raise ValueError(f"task {task.name}: generic prototypes contain NaN or inf")
            if task.generic.shape[1] != self.tasks[0].generic.shape[1]:
                raise ValueError(
                    f"task {task.name}: generic dim {task.generic.shape[1]} differs from "
                    f"{self.tasks[0].generic.shape[1]}")
            for model, protos in task.per_model.items():
                if model not in zoo:
                    raise ValueError(
                        f"task {task.name}: prototypes of {model!r}, which is not in the zoo")
                if protos.ndim != 2 or protos.shape[0] != task.num_classes:
                    raise ValueError(
                        f"task {task.name}, model {model}: prototypes {protos.shape} for "
                        f"{task.num_classes} classes")
                if not np.isfinite(protos).all():
                    raise ValueError(
                        f"task {task.name}, model {model}: prototypes contain NaN or inf")
                if dims.setdefault(model, protos.shape[1]) != protos.shape[1]:
                    raise ValueError(
                        f"model {model}: feature dim {protos.shape[1]} in task {task.name} "
                        f"differs from {dims[model]} elsewhere")
        self._dims = dims
        self._labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def generic_dim(self) -> int:
        if not self.tasks:
            raise ValueError("empty task set")
        return int(self.tasks[0].generic.shape[1])

    @property
    def max_classes(self) -> int:
        return max((task.num_classes for task in self.tasks), default=0)

    def model_dims(self) -> dict[str, int]:
        """Feature dim of every PTM that has prototypes in at least one task."""
        return dict(self._dims)

    def has_prototypes(self) -> np.ndarray:
        """[T, M] bool: whether task t has PTM m's own prototypes (needed to enrich m)."""
        return np.array([[m in task.per_model for m in self.model_names] for task in self.tasks],
                        bool)

    def labels(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Training labels: (values [T, M] float32 with 0 where missing, mask [T, M] bool)."""
        if kind not in LABEL_KINDS:
            raise ValueError(f"unknown label kind {kind!r}; known: {LABEL_KINDS}")
        if kind not in self._labels:
            mask = ~np.isnan(self.performance)
            values = ranks_among_valid(self.performance) if kind == "rank" else self.performance
            self._labels[kind] = (np.where(mask, values, 0.0).astype(np.float32), mask)
        return self._labels[kind]

    def subset(self, indices: Sequence[int]) -> "TaskSet":
        indices = list(indices)
        return TaskSet(self.model_names, [self.tasks[i] for i in indices],
                       self.performance[indices], tuple(self.groups[i] for i in indices))

    def select(self, names: Sequence[str]) -> "TaskSet":
        """The tasks with these names, in this order (ValueError for unknown names)."""
        position = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in names if name not in position]
        if missing:
            raise ValueError(f"unknown tasks {missing}; known: {sorted(position)}")
        return self.subset([position[name] for name in names])


def ranks_among_valid(performance: np.ndarray) -> np.ndarray:
    """[T, M] performance (NaN = missing) -> ranks among each row's valid entries.

    0 = worst, n-1 = best; ties get their average rank; NaN stays NaN.
    """
    performance = np.asarray(performance, np.float64)
    ranks = np.full(performance.shape, np.nan)
    for row, values in enumerate(performance):
        valid = ~np.isnan(values)
        ranks[row, valid] = scipy.stats.rankdata(values[valid], method="average") - 1.0
    return ranks


def performance_from_csv(path: str | os.PathLike, task_names: Sequence[str],
                         model_names: Sequence[str], *, task_column: str = "dataset",
                         model_column: str = "model", value_column: str = "accuracy",
                         where: dict[str, str] | None = None) -> np.ndarray:
    """Reads a long-format ground-truth table into [T, M] (NaN where a (task, model) row is absent).

    Rows whose `where` columns differ from the given values are skipped (e.g. {"zoo":
    "single_source_10"}); rows of tasks or models not asked for are ignored.

    Raises:
      ValueError: missing columns, a duplicated (task, model) row, a non-numeric value, or a task
        with no row at all (usually a naming mismatch).
    """
    task_index = {name: i for i, name in enumerate(task_names)}
    model_index = {name: i for i, name in enumerate(model_names)}
    table = np.full((len(task_names), len(model_names)), np.nan)
    seen = np.zeros(table.shape, bool)
    where = dict(where or {})
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {task_column, model_column, value_column, *where}
        absent = needed - set(reader.fieldnames or ())
        if absent:
            raise ValueError(f"{path}: missing columns {sorted(absent)} (has {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            if any(row[key] != value for key, value in where.items()):
                continue
            t, m = task_index.get(row[task_column]), model_index.get(row[model_column])
            if t is None or m is None:
                continue
            if seen[t, m]:
                raise ValueError(
                    f"{path}:{line}: duplicate row for ({row[task_column]}, {row[model_column]})")
            seen[t, m] = True
            text = row[value_column].strip()
            if not text:
                continue  # an empty cell is a missing label
            try:
                value = float(text)
            except ValueError as err:
                raise ValueError(f"{path}:{line}: {value_column}={text!r} is not a number") from err
            if not np.isfinite(value):
                raise ValueError(f"{path}:{line}: {value_column}={text!r} is not finite")
            table[t, m] = value
    unlabelled = [name for name, row in zip(task_names, seen) if not row.any()]
    if unlabelled:
        raise ValueError(f"{path}: no ground truth for tasks {unlabelled}")
    return table


def tasks_in_csv(path: str | os.PathLike, *, task_column: str = "dataset",
                 where: dict[str, str] | None = None) -> list[str]:
    """The task names of a long ground-truth CSV (rows matching `where`), in first-seen order."""
    where = dict(where or {})
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        absent = {task_column, *where} - set(reader.fieldnames or ())
        if absent:
            raise ValueError(f"{path}: missing columns {sorted(absent)} (has {reader.fieldnames})")
        rows = [row for row in reader if all(row[key] == value for key, value in where.items())]
    return list(dict.fromkeys(row[task_column] for row in rows))


class _Entry(Protocol):
    features: np.ndarray
    labels: np.ndarray


class FeatureSource(Protocol):
    """What `taskset_from_store` needs of a feature store (`mspider_jax.features.FeatureStore`)."""

    def read(self, dataset: str, split: str, model: str) -> _Entry:
        ...

    def models(self, dataset: str, split: str) -> Sequence[str]:
        ...


def task_from_store(store: FeatureSource, dataset: str, model_names: Sequence[str], *,
                    split: str = "train", generic_model: str = "generic",
                    with_models: bool = True) -> prototypes_lib.TaskPrototypes:
    """Class prototypes of one store dataset: generic encoder, and each zoo PTM stored."""
    generic = store.read(dataset, split, generic_model)
    labels = np.asarray(generic.labels)
    num_classes = int(labels.max()) + 1
    generic_protos, counts = prototypes_lib.class_prototypes(generic.features, labels, num_classes)
    per_model = {}
    if with_models:
        stored = set(store.models(dataset, split))
        for model in model_names:
            if model not in stored:
                continue
            entry = store.read(dataset, split, model)
            if not np.array_equal(np.asarray(entry.labels), labels):
                raise ValueError(
                    f"{dataset}/{split}: labels of {model} differ from those of {generic_model}")
            per_model[model] = prototypes_lib.class_prototypes(entry.features, labels,
                                                               num_classes)[0]
    return prototypes_lib.TaskPrototypes(dataset, generic_protos, counts, per_model)


def taskset_from_store(store: FeatureSource, datasets: Sequence[str], model_names: Sequence[str],
                       performance: np.ndarray, *, split: str = "train",
                       generic_model: str = "generic", groups: Sequence[str] = (),
                       store_prefix: str = "") -> TaskSet:
    """A TaskSet whose prototypes are computed from a feature store (performance: [T, M]).

    Task `name` is read from store dataset `store_prefix + name` (e.g. the mini zoo's "mz_digits").
    """
    tasks = []
    for name in datasets:
        task = task_from_store(store, store_prefix + name, model_names, split=split,
                               generic_model=generic_model)
        tasks.append(dataclasses.replace(task, name=name))
    return TaskSet(tuple(model_names), tasks, performance, tuple(groups))


def taskset_from_bank(bank: Sequence[prototypes_lib.TaskPrototypes], model_names: Sequence[str],
                      performance: np.ndarray, groups: Sequence[str] = ()) -> TaskSet:
    """A TaskSet from bank tasks (performance [T, M] in bank order); drops non-zoo models."""
    zoo = set(model_names)
    tasks = []
    for task in bank:
        kept = {model: protos for model, protos in task.per_model.items() if model in zoo}
        tasks.append(dataclasses.replace(task, per_model=kept))
    return TaskSet(tuple(model_names), tasks, performance, tuple(groups))


def sample_enrichment(rng: np.random.Generator, available: np.ndarray, k_min: int,
                      k_max: int) -> np.ndarray:
    """Which PTMs get their specific tokens in a training batch (spec §3.2).

    k is drawn uniformly from {k_min..k_max} once per batch; each task then gets min(k, #available)
    PTMs drawn uniformly without replacement among those whose prototypes it has.

    Args:
      available: [n, M] bool.

    Returns:
      [n, M] bool.
    """
    if not 0 <= k_min <= k_max:
        raise ValueError(f"need 0 <= k_min <= k_max, got {k_min}, {k_max}")
    k = int(rng.integers(k_min, k_max + 1))
    enriched = np.zeros(available.shape, bool)
    for row, candidates in enumerate(available):
        choices = np.flatnonzero(candidates)
        if k and choices.size:
            enriched[row, rng.choice(choices, size=min(k, choices.size), replace=False)] = True
    return enriched


def make_batch(taskset: TaskSet, indices: Sequence[int], *, model_dims: Sequence[int],
               specific_length: int, label_kind: str = "rank", batch_size: int | None = None,
               generic_length: int | None = None, enriched: np.ndarray | None = None) -> Batch:
    """Pads the tasks `indices` of `taskset` into one static-shape batch.

    Args:
      model_dims: [M] feature dim of each PTM (the ranker's); columns are zero-padded to
        max(model_dims).
      specific_length: P_h, rows of each PTM-specific block (first P_h prototypes kept).
      label_kind: "rank" or "accuracy".
      batch_size: B >= len(indices); extra rows are padding tasks with weight 0. Defaults to
        len(indices).
      generic_length: Pu; defaults to `bucket_length` of the largest class count among these tasks.
        Tasks with more classes are truncated to the first Pu prototypes.
      enriched: [len(indices), M] bool, PTMs whose specific tokens are added; None = no specific
        block.

    Returns:
      A `Batch` of numpy arrays.
    """
    indices = list(indices)
    batch_size = len(indices) if batch_size is None else batch_size
    if batch_size < len(indices):
        raise ValueError(f"batch_size {batch_size} < {len(indices)} tasks")
    num_models = len(taskset.model_names)
    if len(model_dims) != num_models:
        raise ValueError(f"{len(model_dims)} model dims for a zoo of {num_models}")
    chosen = [taskset.tasks[i] for i in indices]
    if generic_length is None:
        generic_length = tokens_lib.bucket_length(max((t.num_classes for t in chosen), default=1))
    generic = np.zeros((batch_size, generic_length, taskset.generic_dim), np.float32)
    generic_mask = np.zeros((batch_size, generic_length), bool)
    for row, task in enumerate(chosen):
        generic[row], generic_mask[row] = tokens_lib.pad_rows(task.generic, generic_length)

    specific = specific_mask = None
    if enriched is not None:
        if enriched.shape != (len(indices), num_models):
            raise ValueError(
                f"enriched must be [{len(indices)}, {num_models}], got {enriched.shape}")
        max_dim = max(model_dims)
        specific = np.zeros((batch_size, num_models, specific_length, max_dim), np.float32)
        specific_mask = np.zeros((batch_size, num_models, specific_length), bool)
        for row, task in enumerate(chosen):
            for m in np.flatnonzero(enriched[row]):
                name = taskset.model_names[m]
                if name not in task.per_model:
                    raise ValueError(f"task {task.name} has no prototypes of {name} to enrich with")
                protos = task.per_model[name]
                if protos.shape[1] != model_dims[m]:
                    raise ValueError(
                        f"task {task.name}, model {name}: dim {protos.shape[1]} != {model_dims[m]}")
                padded, mask = tokens_lib.pad_rows(protos, specific_length, max_dim)
                specific[row, m], specific_mask[row, m] = padded, mask

    values, mask = taskset.labels(label_kind)
    labels = np.zeros((batch_size, num_models), np.float32)
    label_mask = np.zeros((batch_size, num_models), bool)
    labels[:len(indices)], label_mask[:len(indices)] = values[indices], mask[indices]
    task_weight = (label_mask.sum(axis=1) >= 2).astype(np.float32)
    return Batch(generic, generic_mask, specific, specific_mask, labels, label_mask, task_weight)
