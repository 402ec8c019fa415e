"""Loaders of the numbers published with Model Spider (`data/published/`, see data/README.md).

Source: zhangyikaii/Model-Spider @ d2a53e4 (Zhang et al., NeurIPS 2023), exported as CSV files.
Everything is returned as a `ZooTable`: values [R, M] of M models on R rows (datasets or training
tasks), higher = better, NaN = missing. Dataset names follow the release (`Pet`, not "Pets").

The data directory is `<repo>/data/published`; set MSPIDER_DATA_DIR=<dir containing published/> to
read it from elsewhere (e.g. an installed, non-editable package).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from mspider_jax.evaluation import _io

# Canonical order of the single-source zoo (spec model_spider.md §1.1): every vector uses it.
SINGLE_SOURCE_MODELS: tuple[str, ...] = (
    "googlenet", "inception_v3", "resnet50", "resnet101", "resnet152",
    "densenet121", "densenet169", "densenet201", "mobilenet_v2", "mnasnet1_0")
# The 8 classification datasets of Table 1, in the table's column order.
TABLE1_DATASETS: tuple[str, ...] = (
    "Aircraft", "Caltech101", "Cars", "CIFAR10", "CIFAR100", "DTD", "Pet", "SUN397")
# Regression datasets of the single-source ground truth ("accuracy" = negated error).
REGRESSION_DATASETS: tuple[str, ...] = ("dSprites", "UTKFace")
# The nine baselines of Table 1, in the table's row order, named as in the scores CSV.
BASELINE_METHODS: tuple[str, ...] = (
    "H-Score", "NCE", "LEEP", "NLEEP", "LogME", "PACTranDirichlet", "OTCE", "LFC", "GBC")
# Names used in the paper's table for the CSV columns that differ.
PAPER_NAMES: dict[str, str] = {"NLEEP": "N-LEEP", "PACTranDirichlet": "PACTran",
                               "ModelSpider": "Model Spider"}
# Training tasks of the released training script (scripts/test-model-spider.sh), spec §6.1.
DEFAULT_TRAINING_TASKS: tuple[str, ...] = (
    "c86", "c59", "c16", "c14", "c38", "c43", "c9", "c12", "c32", "c19", "c31", "c57", "c29")
ZOOS: tuple[str, ...] = ("single_source_10", "multi_source_42")


@dataclasses.dataclass(frozen=True)
class ZooTable:
    """Values of M models on R rows (datasets or tasks).

    Attributes:
      rows: [R] row names (datasets or task ids), in file order.
      models: [M] model names.
      values: [R, M] float64, higher = better; NaN = not available.
    """

    rows: tuple[str, ...]
    models: tuple[str, ...]
    values: np.ndarray

    def __post_init__(self):
        if self.values.shape != (len(self.rows), len(self.models)):
            raise ValueError(f"values has shape {self.values.shape}, expected "
                             f"({len(self.rows)}, {len(self.models)})")

    def row(self, name: str) -> np.ndarray:
        """[M] values of one row."""
        try:
            return self.values[self.rows.index(name)]
        except ValueError:
            raise ValueError(f"unknown row {name!r}; known: {list(self.rows)}") from None

    def select(self, rows: Sequence[str] | None = None,
               models: Sequence[str] | None = None) -> "ZooTable":
        """The sub-table of the given rows and models (in the given order)."""
        rows = tuple(self.rows if rows is None else rows)
        models = tuple(self.models if models is None else models)
        for name, known, what in ((rows, self.rows, "row"), (models, self.models, "model")):
            missing = [n for n in name if n not in known]
            if missing:
                raise ValueError(f"unknown {what}(s) {missing}; known: {list(known)}")
        row_index = [self.rows.index(r) for r in rows]
        model_index = [self.models.index(m) for m in models]
        return ZooTable(rows, models, self.values[np.ix_(row_index, model_index)])

    def to_records(self, row_key: str = "dataset", value_key: str = "accuracy") -> list[dict]:
        """[{row_key: row, "model": model, value_key: value}] without the NaN entries."""
        return [{row_key: r, "model": m, value_key: float(self.values[i, j])}
                for i, r in enumerate(self.rows) for j, m in enumerate(self.models)
                if not np.isnan(self.values[i, j])]


def published_dir() -> pathlib.Path:
    """The directory holding the published CSV files."""
    root = os.environ.get("MSPIDER_DATA_DIR")
    base = pathlib.Path(root) if root else pathlib.Path(__file__).resolve().parents[2] / "data"
    path = base / "published"
    if not path.is_dir():
        raise ValueError(f"published data directory {path} not found; set MSPIDER_DATA_DIR to the "
                         "directory that contains published/")
    return path


def read_zoo_table(path: str | os.PathLike, *, row_column: str, value_column: str,
                   model_column: str = "model", models: Sequence[str] | None = None,
                   where: dict[str, str] | None = None, complete: bool = True) -> ZooTable:
    """Reads a long CSV (row, model, value) into a ZooTable.

    Args:
      path: CSV file.
      row_column, model_column, value_column: column names (matched ignoring case).
      models: expected model order; default: order of first appearance.
      where: keep only lines whose columns equal these texts (e.g. {"zoo": "single_source_10"}).
      complete: require a value for every (row, model); otherwise missing pairs are NaN.

    Raises:
      ValueError naming the line: unknown model, duplicate (row, model), non-numeric value, and
      (with complete=True) a row that lacks a model.
    """
    header, lines = _io.read_csv_rows(path)
    row_column = _io.find_column(header, row_column, path)
    model_column = _io.find_column(header, model_column, path)
    value_column = _io.find_column(header, value_column, path)
    filters = {_io.find_column(header, k, path): v for k, v in (where or {}).items()}
    entries: dict[tuple[str, str], float] = {}
    first_line: dict[tuple[str, str], int] = {}
    row_names: list[str] = []
    model_names: list[str] = list(models) if models is not None else []
    for line_number, fields in lines:
        if any(fields[k] != v for k, v in filters.items()):
            continue
        row, model = fields[row_column], fields[model_column]
        if models is not None and model not in models:
            raise ValueError(f"{path}:{line_number}: unknown model {model!r}")
        if (row, model) in entries:
            raise ValueError(f"{path}:{line_number}: duplicate row for ({row}, {model}), first at "
                             f"line {first_line[row, model]}")
        entries[row, model] = _io.parse_float(fields[value_column], f"{path}:{line_number} column "
                                              f"{value_column}")
        first_line[row, model] = line_number
        if row not in row_names:
            row_names.append(row)
        if model not in model_names:
            model_names.append(model)
    if not entries:
        raise ValueError(f"{path}: no data rows" + (f" matching {where}" if where else ""))
    values = np.full((len(row_names), len(model_names)), np.nan)
    for (row, model), value in entries.items():
        values[row_names.index(row), model_names.index(model)] = value
    if complete and np.isnan(values).any():
        i, j = np.argwhere(np.isnan(values))[0]
        raise ValueError(f"{path}: no value for ({row_names[i]}, {model_names[j]})")
    return ZooTable(tuple(row_names), tuple(model_names), values)


def single_source_accuracy() -> ZooTable:
    """Fine-tuning test accuracy, 10 datasets x 10 models (dSprites/UTKFace: negated errors)."""
    return read_zoo_table(published_dir() / "single_source_finetune.csv", row_column="dataset",
                          value_column="accuracy", models=SINGLE_SOURCE_MODELS)


def single_source_ftrank() -> ZooTable:
    """The tie-broken integer labels FTRank (0 = worst, 9 = best), 10 datasets x 10 models."""
    return read_zoo_table(published_dir() / "single_source_ftrank.csv", row_column="dataset",
                          value_column="ft_rank", models=SINGLE_SOURCE_MODELS)


def multi_source_models() -> tuple[str, ...]:
    """The 42 multi-source models `FTD_<arch>_<source>` in the release's order."""
    return multi_source_accuracy().models


def multi_source_accuracy(*, all66: bool = False) -> ZooTable:
    """Fine-tuning accuracy of the multi-source zoo on 7 datasets: 42 models (or all 66)."""
    if all66:
        return read_zoo_table(published_dir() / "multi_source_finetune_all66_raw.csv",
                              row_column="dataset", value_column="accuracy")
    return read_zoo_table(published_dir() / "multi_source_finetune.csv", row_column="dataset",
                          value_column="accuracy")


def multi_source_ftrank() -> ZooTable:
    """The re-ranked integer labels 0..41 of the 42-model zoo (higher = better)."""
    return read_zoo_table(published_dir() / "multi_source_finetune.csv", row_column="dataset",
                          value_column="ft_rank")


def baseline_scores(methods: Sequence[str] = BASELINE_METHODS) -> dict[str, ZooTable]:
    """Raw published scores of the baseline metrics: method -> 8 datasets x 10 models.

    Orientation as stored (higher = better for every column, PACTranDirichlet included: the driver
    already negated it; see data/README.md).
    """
    path = published_dir() / "baseline_scores_single_source.csv"
    return {method: read_zoo_table(path, row_column="dataset", value_column=method,
                                   models=SINGLE_SOURCE_MODELS) for method in methods}


def training_task_ranks(zoo: str = "single_source_10",
                        tasks: Sequence[str] | None = None) -> ZooTable:
    """Training-task labels (integer ranks, higher = better): tasks x models of `zoo`.

    Args:
      zoo: "single_source_10" (tasks c0..c95) or "multi_source_42" (t127..t222).
      tasks: task ids to keep, in this order (e.g. DEFAULT_TRAINING_TASKS); default all.
    """
    if zoo not in ZOOS:
        raise ValueError(f"unknown zoo {zoo!r}; expected one of {ZOOS}")
    table = read_zoo_table(published_dir() / "training_task_ranks.csv", row_column="task_id",
                           value_column="ft_rank", where={"zoo": zoo},
                           models=SINGLE_SOURCE_MODELS if zoo == "single_source_10" else None)
    return table if tasks is None else table.select(rows=tasks)


def training_task_dirs(zoo: str = "single_source_10") -> dict[str, str]:
    """task id -> the release's task directory name (names the source datasets and sampling)."""
    _, lines = _io.read_csv_rows(published_dir() / "training_task_ranks.csv")
    return {fields["task_id"]: fields["task_dir"] for _, fields in lines if fields["zoo"] == zoo}


def training_task_classes() -> dict[str, list[tuple[str, int]]]:
    """task id -> its sampled classes [(source dataset, class index)] in position order."""
    _, lines = _io.read_csv_rows(published_dir() / "training_task_classes.csv")
    classes: dict[str, list[tuple[int, str, int]]] = {}
    for _, fields in lines:
        classes.setdefault(fields["task_id"], []).append(
            (int(fields["position"]), fields["source_dataset"], int(fields["class_index"])))
    return {task: [(source, index) for _, source, index in sorted(entries)]
            for task, entries in classes.items()}


def imagenet_top1() -> dict[str, float]:
    """ImageNet-1k top-1 accuracy of the single-source models (torchvision IMAGENET1K_V1)."""
    path = published_dir() / "imagenet_top1_single_source.csv"
    _, lines = _io.read_csv_rows(path)
    top1 = {fields["model"]: _io.parse_float(fields["imagenet_top1"], f"{path}:{line_number}")
            for line_number, fields in lines}
    if tuple(top1) != SINGLE_SOURCE_MODELS:
        raise ValueError(f"{path}: models {list(top1)} are not the single-source zoo")
    return top1


def published_table1() -> dict[str, dict[str, float]]:
    """The published Table 1 (weighted tau): method -> {dataset or "Mean": value}.

    Methods are named as in the scores CSV (plus "ModelSpider"); see PAPER_NAMES for the paper's.
    """
    table = read_zoo_table(published_dir() / "table1_single_source.csv", row_column="method",
                           model_column="dataset", value_column="weighted_tau")
    return {method: dict(zip(table.models, map(float, table.values[i])))
            for i, method in enumerate(table.rows)}
