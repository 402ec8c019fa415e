"""Class prototypes of a task and the prototype bank file that stores them.

A *class prototype* is the mean feature of the samples of one class (Model Spider §2.1: plain mean,
no normalisation). A task is summarised by the prototypes of a generic encoder (stage-1 task tokens)
and, optionally, by prototypes in each PTM's own feature space (stage-2, PTM-specific task tokens).

A *prototype bank* is one `.npz` file holding many tasks; keys are
  "<task>/generic"        [C, Dg]  prototypes of the generic encoder
  "<task>/counts"         [C]      samples per class (int64)
  "<task>/model/<model>"  [C, Dm]  prototypes in model <model>'s feature space (optional per model)
Task and model names must not contain "/". Banks are written atomically.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import zipfile

import numpy as np


@dataclasses.dataclass
class TaskPrototypes:
    """The prototypes of one task.

    Attributes:
      name: task name (no "/").
      generic: [C, Dg] generic-encoder class prototypes.
      counts: [C] number of samples of each class.
      per_model: model name -> [C, Dm] class prototypes in that model's feature space.
    """

    name: str
    generic: np.ndarray
    counts: np.ndarray
    per_model: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.generic.shape[0])


def class_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                     chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean features, accumulated in float64 over chunks (works on memory-mapped arrays).

    Args:
      features: [N, D] features (any float dtype, may be a memmap).
      labels: [N] integer labels in 0..C-1.
      num_classes: C; defaults to max(labels) + 1.
      chunk_size: rows read at a time, so memory does not grow with N.

    Returns:
      (prototypes [C, D] float32, counts [C] int64).

    Raises:
      ValueError: on shape mismatch, negative/out-of-range labels, non-finite features, or an empty class.
    """
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"need features [N, D] and labels [N]; got {features.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} >= num_classes {num_classes}")
    sums = np.zeros((num_classes, features.shape[1]), np.float64)
    for start in range(0, features.shape[0], chunk_size):
        block = np.asarray(features[start:start + chunk_size], np.float64)
        finite_rows = np.isfinite(block).all(axis=1)
        if not finite_rows.all():
            bad = start + np.flatnonzero(~finite_rows)
            raise ValueError(f"features contain NaN or inf in {len(bad)} row(s) of rows {start}.."
                             f"{start + len(block) - 1}, the first at row {bad[0]}")
        np.add.at(sums, labels[start:start + chunk_size], block)
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    if (counts == 0).any():
        raise ValueError(f"classes without samples: {np.flatnonzero(counts == 0).tolist()}")
    return (sums / counts[:, None]).astype(np.float32), counts


def _check_name(kind: str, name: str) -> None:
    if not name or "/" in name:
        raise ValueError(f"{kind} name {name!r} must be non-empty and contain no '/'")


def save_prototype_bank(path: str | os.PathLike, tasks: list[TaskPrototypes], dtype=np.float16) -> None:
    """Writes tasks to one compressed `.npz` atomically (temp file in the same folder, then rename)."""
    path = pathlib.Path(path)
    arrays: dict[str, np.ndarray] = {}
    for task in tasks:
        _check_name("task", task.name)
        if task.counts.shape != (task.num_classes,):
            raise ValueError(f"task {task.name}: counts {task.counts.shape} vs {task.num_classes} classes")
        arrays[f"{task.name}/generic"] = np.asarray(task.generic, dtype)
        arrays[f"{task.name}/counts"] = np.asarray(task.counts, np.int64)
        for model, protos in task.per_model.items():
            _check_name("model", model)
            if protos.shape[0] != task.num_classes:
                raise ValueError(f"task {task.name}, model {model}: {protos.shape[0]} prototypes "
                                 f"for {task.num_classes} classes")
            arrays[f"{task.name}/model/{model}"] = np.asarray(protos, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_prototype_bank(path: str | os.PathLike) -> list[TaskPrototypes]:
    """Reads a bank written by `save_prototype_bank` (prototypes as float32), in file order."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prototype bank not found: {path}")
    tasks: dict[str, TaskPrototypes] = {}
    try:
        with np.load(path) as data:
            for key in data.files:
                parts = key.split("/")
                task = tasks.setdefault(parts[0], TaskPrototypes(parts[0], None, None))  # type: ignore[arg-type]
                if parts[1:] == ["generic"]:
                    task.generic = data[key].astype(np.float32)
                elif parts[1:] == ["counts"]:
                    task.counts = data[key]
                elif len(parts) == 3 and parts[1] == "model":
                    task.per_model[parts[2]] = data[key].astype(np.float32)
                else:
                    raise ValueError(f"unexpected key {key!r}")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"corrupt prototype bank {path}: {err}") from err
    for task in tasks.values():
        if task.generic is None or task.counts is None:
            raise ValueError(f"corrupt prototype bank {path}: task {task.name} lacks generic/counts")
    return list(tasks.values())
