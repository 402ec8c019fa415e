"""How close a new task is to the tasks a ranker was trained on, in the generic encoder's space.

Stage 1 sees a task only through its generic class prototypes, so it can rank well only tasks that
look like its training tasks. On the mini zoo it beats every metric on held-out tasks drawn like its
training tasks (weighted tau 0.865 against H-Score's 0.786) and loses to them on the 8 targets, whose
domains no training task covers (0.699 against 0.788; `results/spider_minizoo.md`). Users need to
know which of the two cases their task is. This module measures it.

Conventions:
  * Class coverage: the largest cosine similarity between a class prototype of the task and any
    class prototype of the reference tasks (raw prototypes, not centred: generic features are
    post-ReLU, so cosines are positive and 1 means the same direction).
  * Task coverage: the mean of its class coverages.
  * Reference: the generic prototypes of the ranker's training and validation tasks. Each reference
    task also gets its own coverage against the *other* reference tasks (leave one out); a new
    task's percentile is the share of reference tasks whose coverage is below its own.
  * "Outside" means below the 5th percentile of the reference tasks' coverages. Reference tasks
    reuse classes of one another, so their leave-one-out coverage is high (median 0.998 on the mini
    zoo): the percentile compares a task with tasks as the ranker saw them, not with unseen classes.

The mini zoo's targets (shipped ranker, `data/minizoo_ranker/coverage_reference.npz`): 5th
percentile 0.945; digits 0.800, emoji 0.879, orientation 0.909, gurmukhi 0.930, patches 0.931,
handwriting 0.936, greek 0.941 are outside; fmnist_coarse (0.973) is not.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from collections.abc import Sequence

import numpy as np

from mspider_jax.spider import prototypes as prototypes_lib

COVERAGE_FILE = "coverage_reference.npz"  # next to best/: the ranker's training tasks' prototypes
OUTSIDE_PERCENTILE = 5.0
_ROW_CHUNK = 256


def _unit_rows(prototypes: np.ndarray, what: str) -> np.ndarray:
    """Rows scaled to unit length (float64); a zero or non-finite row is an error."""
    rows = np.asarray(prototypes, np.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty [C, D] array, got shape {rows.shape}")
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"{what} contain NaN or inf")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError(f"{what}: row {int(np.argmin(norms[:, 0]))} is zero; its cosine similarity "
                         f"is undefined")
    return rows / norms


def class_coverage(task_prototypes: np.ndarray, reference_prototypes: np.ndarray) -> np.ndarray:
    """[C] largest cosine similarity of each task class prototype to a reference prototype.

    Args:
      task_prototypes: [C, D] the task's class prototypes.
      reference_prototypes: [R, D] prototypes of the reference tasks' classes.
    """
    task = _unit_rows(task_prototypes, "task prototypes")
    reference = _unit_rows(reference_prototypes, "reference prototypes")
    if task.shape[1] != reference.shape[1]:
        raise ValueError(f"task prototypes have {task.shape[1]} dimensions, the reference "
                         f"{reference.shape[1]}: not the same generic encoder")
    return (task @ reference.T).max(axis=1)


@dataclasses.dataclass(frozen=True)
class Coverage:
    """A task's coverage by a `CoverageReference`.

    Attributes:
      value: the task's coverage (mean of `per_class`).
      per_class: [C] each class's coverage, in the task's class order.
      percentile: % of reference tasks whose leave-one-out coverage is below `value`.
      threshold: the reference's 5th percentile; `outside` is value < threshold.
    """

    value: float
    per_class: np.ndarray
    percentile: float
    threshold: float

    @property
    def outside(self) -> bool:
        return self.value < self.threshold

    def record(self) -> dict:
        """JSON-able form."""
        return {"value": self.value, "percentile": self.percentile, "threshold": self.threshold,
                "outside": self.outside, "per_class": [float(v) for v in self.per_class]}

    def describe(self, class_names: Sequence | None = None) -> str:
        """One line for people: the value, where it falls, and what follows from it."""
        line = (f"coverage by the ranker's training tasks: {self.value:.3f}; {self.percentile:.0f}% of "
                f"those tasks are covered less by the others (5th percentile {self.threshold:.3f})")
        if not self.outside:
            return line
        worst = int(np.argmin(self.per_class))
        name = class_names[worst] if class_names is not None else worst
        return (f"{line}: OUTSIDE what the ranker was trained on (least covered class {name!r}, "
                f"{self.per_class[worst]:.3f}). Stage 1 extrapolates here; check its top candidates "
                f"with a metric (`mspider metrics`)")


@dataclasses.dataclass(frozen=True)
class CoverageReference:
    """The generic class prototypes of a ranker's training tasks, and how each covers the others.

    Attributes:
      prototypes: [R, Dg] float32 class prototypes of all reference tasks, stacked.
      task_index: [R] int, which reference task each row belongs to (0..T-1).
      task_coverage: [T] each reference task's coverage by the other tasks (leave one out).
    """

    prototypes: np.ndarray
    task_index: np.ndarray
    task_coverage: np.ndarray

    @classmethod
    def from_prototypes(cls, task_prototypes: Sequence[np.ndarray]) -> "CoverageReference":
        """Builds the reference from each task's [C_t, Dg] generic prototypes (at least 2 tasks)."""
        if len(task_prototypes) < 2:
            raise ValueError(f"a coverage reference needs at least 2 tasks, got {len(task_prototypes)}")
        units = [_unit_rows(p, f"prototypes of reference task {t}") for t, p in enumerate(task_prototypes)]
        if len({u.shape[1] for u in units}) != 1:
            raise ValueError("reference tasks' prototypes have different widths")
        stacked = np.concatenate(units)
        task_index = np.concatenate([np.full(len(u), t) for t, u in enumerate(units)])
        best = np.empty(len(stacked))
        for start in range(0, len(stacked), _ROW_CHUNK):  # [chunk, R] at a time: R may be 10^5
            rows = slice(start, start + _ROW_CHUNK)
            cosine = stacked[rows] @ stacked.T
            cosine[task_index[rows, None] == task_index[None, :]] = -np.inf  # leave its own task out
            best[rows] = cosine.max(axis=1)
        leave_one_out = np.array([best[task_index == t].mean() for t in range(len(units))])
        return cls(np.concatenate([np.asarray(p, np.float32) for p in task_prototypes]),
                   task_index.astype(np.int64), leave_one_out)

    @classmethod
    def from_tasks(cls, tasks: Sequence[prototypes_lib.TaskPrototypes]) -> "CoverageReference":
        """From `TaskPrototypes` (a prototype bank or a `TaskSet`'s tasks): their generic prototypes."""
        return cls.from_prototypes([task.generic for task in tasks])

    @property
    def threshold(self) -> float:
        return float(np.percentile(self.task_coverage, OUTSIDE_PERCENTILE))

    def assess(self, task_prototypes: np.ndarray) -> Coverage:
        """The coverage of a new task given its [C, Dg] generic class prototypes."""
        per_class = class_coverage(task_prototypes, self.prototypes)
        value = float(per_class.mean())
        return Coverage(value=value, per_class=per_class,
                        percentile=float(100.0 * np.mean(self.task_coverage < value)),
                        threshold=self.threshold)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the reference as an npz (atomically)."""
        from mspider_jax.evaluation import _io

        return _io.write_npz_atomic(path, {"prototypes": self.prototypes, "task_index": self.task_index,
                                           "task_coverage": self.task_coverage})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CoverageReference":
        try:
            with np.load(path, allow_pickle=False) as data:
                reference = cls(np.asarray(data["prototypes"], np.float32),
                                np.asarray(data["task_index"], np.int64),
                                np.asarray(data["task_coverage"], np.float64))
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable coverage reference ({err})") from err
        num_tasks = len(reference.task_coverage)
        if (reference.prototypes.ndim != 2 or reference.task_index.shape != (len(reference.prototypes),)
                or num_tasks < 2 or reference.task_index.min() < 0 or reference.task_index.max() >= num_tasks):
            raise ValueError(f"{path}: inconsistent coverage reference (prototypes "
                             f"{reference.prototypes.shape}, task_index {reference.task_index.shape}, "
                             f"{num_tasks} tasks)")
        return reference


def load_reference(checkpoint_dir: str | os.PathLike) -> CoverageReference | None:
    """The coverage reference written next to a ranker's checkpoint (`COVERAGE_FILE`; for an
    ensemble, its first member's: the members share their tasks), or None when the run has none
    (rankers trained before it existed)."""
    from mspider_jax.spider import ensemble as ensemble_lib

    directory = pathlib.Path(checkpoint_dir)
    if ensemble_lib.is_ensemble(directory):
        directory = ensemble_lib.member_paths(directory)[0]
    path = directory / COVERAGE_FILE
    return CoverageReference.load(path) if path.is_file() else None


def write_reference(workdir: str | os.PathLike,
                    tasks: Sequence[prototypes_lib.TaskPrototypes]) -> pathlib.Path:
    """Writes the coverage reference of a run's training (and validation) tasks next to its best/."""
    return CoverageReference.from_tasks(tasks).save(pathlib.Path(workdir) / COVERAGE_FILE)
