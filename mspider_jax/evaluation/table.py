"""Results tables: methods x datasets for one measure, with a Mean column and reference rows.

Inputs are long records (no pandas):
  * scores: one record per (dataset, model) with one numeric entry per method, e.g. the CSV
    `dataset,model,LogME,LEEP,...` (`read_scores_csv`), or {method: ZooTable};
  * truth: one record per (dataset, model) with the ground truth under "accuracy" (or another
    value key), e.g. the CSV `dataset,model,accuracy` (`read_truth_csv`), or a ZooTable.

Every scored dataset must have ground truth, and per dataset the scored models and the models with
ground truth must be the same set: a model missing from one side, a duplicate (dataset, model), a
NaN, a dataset with fewer than 2 models or an unknown method raise ValueError naming the row.
Datasets that only appear in the truth are ignored.

Besides the methods, a table shows reference rows (spec model_spider.md §8.4): task-agnostic
constant priors (given as {model: score}, and by default one fitted on the *other* datasets of the
table: `constant_prior` leave-one-dataset-out) and the expected value under random scores. The best
entry of each column (methods and references alike, compared at the printed precision) is marked:
a method that loses to a constant prior should be seen losing.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from mspider_jax.evaluation import _io, measures, priors
from mspider_jax.evaluation.aggregation import Summary, aggregate
from mspider_jax.evaluation.published import ZooTable

LOO_PRIOR_NAME = "constant prior (other datasets)"
RANDOM_NAME = "random (expected)"
_KEY_COLUMNS = ("dataset", "model")

Nested = dict[str, dict[str, float]]  # dataset -> model -> value


@dataclasses.dataclass(frozen=True)
class Table:
    """One measure for every (row, dataset), with the mean over datasets.

    Attributes:
      measure: key of `measures.MEASURES`.
      form: "raw" or "ranks" (form of the correlation measures).
      rows: [R] row names: the methods, then the reference rows.
      datasets: [D] column names.
      values: [R, D] the measure per row and dataset.
      summaries: [R] mean over datasets with its bootstrap interval.
      num_references: the last `num_references` rows are reference rows (priors, random).
      confidence: coverage of the bootstrap intervals.
    """

    measure: str
    form: str
    rows: tuple[str, ...]
    datasets: tuple[str, ...]
    values: np.ndarray
    summaries: tuple[Summary, ...]
    num_references: int
    confidence: float

    @property
    def means(self) -> np.ndarray:
        """[R] mean over datasets."""
        return np.array([s.mean for s in self.summaries])

    @property
    def is_reference(self) -> np.ndarray:
        """[R] True for the reference rows."""
        return np.arange(len(self.rows)) >= len(self.rows) - self.num_references

    def value(self, row: str, dataset: str) -> float:
        """One cell; dataset "Mean" gives the mean column."""
        if row not in self.rows:
            raise ValueError(f"unknown row {row!r}; rows: {list(self.rows)}")
        if dataset == "Mean":
            return float(self.means[self.rows.index(row)])
        if dataset not in self.datasets:
            raise ValueError(f"unknown dataset {dataset!r}; datasets: {list(self.datasets)}")
        return float(self.values[self.rows.index(row), self.datasets.index(dataset)])

    def best(self, digits: int = 3) -> np.ndarray:
        """[R, D + 1] True where the entry is the best of its column (datasets, then Mean).

        Entries are compared after rounding to `digits`, so equal printed values are all marked.
        """
        grid = np.round(np.column_stack([self.values, self.means]), digits)
        target = grid.max(axis=0) if measures.HIGHER_IS_BETTER[self.measure] else grid.min(axis=0)
        return grid == target[None, :]

    def to_markdown(self, digits: int = 3) -> str:
        """A markdown table: rows x (datasets, Mean, CI); the best entry per column in bold."""
        best = self.best(digits)
        level = f"{100 * self.confidence:g}% CI"
        lines = ["| method | " + " | ".join(self.datasets) + f" | Mean | {level} |",
                 "|---|" + "---:|" * (len(self.datasets) + 2)]
        for i, row in enumerate(self.rows):
            cells = list(self.values[i]) + [self.summaries[i].mean]
            text = [f"**{v:.{digits}f}**" if best[i, j] else f"{v:.{digits}f}"
                    for j, v in enumerate(cells)]
            low, high = self.summaries[i].low, self.summaries[i].high
            interval = f"[{low:.{digits - 1}f}, {high:.{digits - 1}f}]"
            name = f"*{row}*" if self.is_reference[i] else row
            lines.append(f"| {name} | " + " | ".join(text) + f" | {interval} |")
        direction = "higher" if measures.HIGHER_IS_BETTER[self.measure] else "lower"
        lines.append("")
        lines.append(f"{self.measure} (form={self.form}; {direction} is better). Bold: best of the "
                     f"column over all rows at {digits} decimals. *Italic* rows are task-agnostic "
                     f"references. CI: {level} percentile bootstrap of the mean over the "
                     f"{len(self.datasets)} datasets.")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes row, kind (method|reference), one column per dataset, mean, ci_low, ci_high."""
        header = ["method", "kind", *self.datasets, "mean", "ci_low", "ci_high"]
        rows = []
        for i, row in enumerate(self.rows):
            summary = self.summaries[i]
            rows.append([row, "reference" if self.is_reference[i] else "method",
                         *(repr(float(v)) for v in self.values[i]),
                         repr(summary.mean), repr(summary.low), repr(summary.high)])
        return _io.write_csv_atomic(path, header, rows)


def _table_from_records(records: Sequence[Mapping], value_keys: Sequence[str],
                        what: str) -> dict[str, Nested]:
    """{value_key: {dataset: {model: value}}} from records, validating every record."""
    nested: dict[str, Nested] = {key: {} for key in value_keys}
    seen: dict[tuple[str, str], int] = {}
    for index, record in enumerate(records):
        missing = [k for k in (*_KEY_COLUMNS, *value_keys) if k not in record]
        if missing:
            raise ValueError(f"{what} record {index}: missing key(s) {missing} in {dict(record)}")
        dataset, model = str(record["dataset"]), str(record["model"])
        if (dataset, model) in seen:
            raise ValueError(f"{what} record {index}: duplicate row for dataset {dataset!r}, model "
                             f"{model!r} (first: record {seen[dataset, model]})")
        seen[dataset, model] = index
        for key in value_keys:
            where = f"{what} record {index} (dataset {dataset!r}, model {model!r}) {key}"
            try:
                value = float(record[key])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {record[key]!r} is not a number") from None
            if not np.isfinite(value):
                raise ValueError(f"{where}: value {value} is not finite (NaN/inf not allowed; "
                                 "leave the model out of both inputs instead)")
            nested[key].setdefault(dataset, {})[model] = value
    return nested


def _keyed_csv(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """Records of a CSV with dataset/model columns (any case); values stay text, keys lower-case."""
    header, lines = _io.read_csv_rows(path)
    columns = {_io.find_column(header, key, path): key for key in _KEY_COLUMNS}
    value_columns = [c for c in header if c not in columns]
    records, seen = [], {}
    for line_number, fields in lines:
        record = {columns.get(c, c): v for c, v in fields.items()}
        key = (record["dataset"], record["model"])
        if key in seen:
            raise ValueError(f"{path}:{line_number}: duplicate row for dataset {key[0]!r}, model "
                             f"{key[1]!r} (first at line {seen[key]})")
        seen[key] = line_number
        for column in value_columns:
            where = (f"{path}:{line_number} column {column!r} (dataset {key[0]!r}, "
                     f"model {key[1]!r})")
            record[column] = _io.parse_float(fields[column], where)
        records.append(record)
    return value_columns, records


def read_scores_csv(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """Reads `dataset,model,<method>,...` (dataset/model in any case).

    Returns:
      (method names in column order, records {"dataset", "model", method: float}).
    """
    methods, records = _keyed_csv(path)
    if not methods:
        raise ValueError(f"{path}: no method columns besides dataset, model")
    return methods, records


def read_truth_csv(path: str | os.PathLike, value_column: str | None = None) -> list[dict]:
    """Reads `dataset,model,accuracy` into records {"dataset", "model", "accuracy": float}.

    Args:
      value_column: the column holding the ground truth (or a tie-break); default "accuracy" if
        present, else the only column besides dataset and model.
    """
    columns, records = _keyed_csv(path)
    if value_column is None:
        if "accuracy" in columns:
            value_column = "accuracy"
        elif len(columns) == 1:
            value_column = columns[0]
        else:
            raise ValueError(f"{path}: cannot tell the value column among {columns}; name it")
    if value_column not in columns:
        raise ValueError(f"{path}: no column {value_column!r}; columns: {columns}")
    return [{"dataset": r["dataset"], "model": r["model"], "accuracy": r[value_column]}
            for r in records]


def _nested_truth(truth, what: str) -> Nested:
    if isinstance(truth, ZooTable):
        truth = truth.to_records()
    return _table_from_records(truth, ["accuracy"], what)["accuracy"]


def _nested_scores(scores, methods: Sequence[str] | None) -> tuple[list[str], dict[str, Nested]]:
    if isinstance(scores, Mapping):
        available = list(scores)
        nested = {m: _nested_truth(table, f"scores[{m!r}]") for m, table in scores.items()}
    else:
        records = list(scores)
        if not records:
            raise ValueError("scores: no records")
        available = [k for k in records[0] if k not in _KEY_COLUMNS]
        nested = None
    methods = list(available if methods is None else methods)
    if not methods:
        raise ValueError("no methods to tabulate")
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise ValueError(f"unknown method column(s) {unknown}; available: {available}")
    if nested is None:
        nested = _table_from_records(records, methods, "scores")
    return methods, {m: nested[m] for m in methods}


def results_table(scores, truth, *, methods: Sequence[str] | None = None,
                  datasets: Sequence[str] | None = None, measure: str = "weighted_tau",
                  form: str = "raw", tie_break=None,
                  reference_priors: Mapping[str, Mapping[str, float]] | None = None,
                  loo_prior: bool = True, include_random: bool = True, n_boot: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> Table:
    """Evaluates every method on every dataset and returns the table of one measure.

    Args:
      scores: records {"dataset", "model", <method>: score, ...} or {method: ZooTable}.
      truth: records {"dataset", "model", "accuracy"} or a ZooTable (higher = better).
      methods: methods (rows) in order; default all score columns.
      datasets: columns in order; default the scored datasets in order of appearance.
      measure: one of `measures.MEASURES`.
      form: "raw" or "ranks" (see `measures.weighted_tau`).
      tie_break: with form="ranks": records/ZooTable of a tie-break of the truth (e.g. FTRank).
      reference_priors: {row name: {model: score}} task-agnostic scores shown as reference rows.
      loo_prior: add the constant prior fitted, for each dataset, on the other datasets' truth.
      include_random: add the expected value under random scores (`priors.random_expected`).
      n_boot, confidence, seed: bootstrap of the mean over datasets (`aggregate`).

    Returns:
      A Table whose rows are the methods then the reference rows.
    """
    if measure not in measures.MEASURES:
        raise ValueError(f"unknown measure {measure!r}; expected one of {measures.MEASURES}")
    measures._check_form(form)
    if form == "raw" and tie_break is not None:
        raise ValueError('tie_break is only used with form="ranks"')
    methods, score_tables = _nested_scores(scores, methods)
    truth_table = _nested_truth(truth, "truth")
    tie_table = None if tie_break is None else _nested_truth(tie_break, "tie_break")

    scored = list(dict.fromkeys(d for table in score_tables.values() for d in table))
    datasets = list(scored if datasets is None else datasets)
    if not datasets:
        raise ValueError("no datasets to tabulate")
    models_of: dict[str, list[str]] = {}
    for dataset in datasets:
        if dataset not in truth_table:
            raise ValueError(f"dataset {dataset!r} has no ground truth (truth datasets: "
                             f"{list(truth_table)})")
        models = list(truth_table[dataset])
        if len(models) < 2:
            raise ValueError(f"dataset {dataset!r} has {len(models)} model(s) with ground truth; a "
                             "ranking needs at least 2")
        for method in methods:
            scored_models = score_tables[method].get(dataset, {})
            if not scored_models:
                raise ValueError(f"method {method!r} has no scores for dataset {dataset!r}")
            no_score = [m for m in models if m not in scored_models]
            no_truth = [m for m in scored_models if m not in truth_table[dataset]]
            if no_score:
                raise ValueError(f"dataset {dataset!r}, model {no_score[0]!r}: ground truth but no "
                                 f"{method!r} score (missing model in the scores)")
            if no_truth:
                raise ValueError(f"dataset {dataset!r}, model {no_truth[0]!r}: {method!r} score "
                                 "but no ground truth (missing model in the truth)")
        if tie_table is not None:
            missing = [m for m in models if m not in tie_table.get(dataset, {})]
            if missing:
                raise ValueError(f"dataset {dataset!r}, model {missing[0]!r}: no tie-break value")
        models_of[dataset] = models

    def evaluate(dataset: str, score_of: Mapping[str, float], row: str) -> float:
        models = models_of[dataset]
        truth_vector = np.array([truth_table[dataset][m] for m in models])
        tie_vector = (None if tie_table is None
                      else np.array([tie_table[dataset][m] for m in models]))
        missing = [m for m in models if m not in score_of]
        if missing:
            raise ValueError(
                f"row {row!r}: no score for model {missing[0]!r} of dataset {dataset!r}")
        score_vector = np.array([score_of[m] for m in models])
        try:
            return measures.evaluate_task(truth_vector, score_vector, form=form,
                                          tie_break=tie_vector, names=models)[measure]
        except ValueError as err:
            raise ValueError(f"row {row!r}, dataset {dataset!r}: {err}") from err

    rows: list[str] = []
    values: list[list[float]] = []
    for method in methods:
        rows.append(method)
        values.append([evaluate(d, score_tables[method][d], method) for d in datasets])
    for name, prior in (reference_priors or {}).items():
        rows.append(name)
        values.append([evaluate(d, prior, name) for d in datasets])
    if loo_prior:
        if len(datasets) < 2:
            raise ValueError("the leave-one-dataset-out prior needs at least 2 datasets; pass "
                             "loo_prior=False")
        row = []
        for dataset in datasets:
            models = models_of[dataset]
            others = [[truth_table[o].get(m, np.nan) for m in models]
                      for o in datasets if o != dataset]
            try:
                prior_scores = priors.constant_prior(np.array(others))
            except ValueError as err:
                raise ValueError(f"leave-one-out prior for dataset {dataset!r}: {err}") from err
            row.append(evaluate(dataset, dict(zip(models, prior_scores)), LOO_PRIOR_NAME))
        rows.append(LOO_PRIOR_NAME)
        values.append(row)
    if include_random:
        row = []
        for dataset in datasets:
            models = models_of[dataset]
            tie_vector = None if tie_table is None else [tie_table[dataset][m] for m in models]
            row.append(priors.random_expected([truth_table[dataset][m] for m in models], form=form,
                                              tie_break=tie_vector, seed=seed)[measure])
        rows.append(RANDOM_NAME)
        values.append(row)

    values_array = np.array(values, dtype=np.float64)
    summaries = tuple(aggregate(v, n_boot=n_boot, confidence=confidence, seed=seed)
                      for v in values_array)
    return Table(measure=measure, form=form, rows=tuple(rows), datasets=tuple(datasets),
                 values=values_array, summaries=summaries,
                 num_references=len(rows) - len(methods), confidence=confidence)


def plot_heatmap(table: Table, path: str | os.PathLike, *, title: str | None = None,
                 digits: int = 3) -> pathlib.Path:
    """Writes a PNG heatmap of the table (rows x datasets + Mean), values printed in the cells.

    Correlations use a diverging map fixed to [-1, 1] (0 = white = no better than chance); other
    measures use a sequential map over their range. Best entries per column are boxed, a line
    separates the reference rows and the Mean column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    grid = np.column_stack([table.values, table.means])
    columns = [*table.datasets, "Mean"]
    is_correlation = table.measure in ("weighted_tau", "kendall_tau", "spearman_rho", "pearson_r")
    if is_correlation:
        cmap, vmin, vmax = "RdBu", -1.0, 1.0
    else:
        cmap = "viridis" if measures.HIGHER_IS_BETTER[table.measure] else "viridis_r"
        vmin, vmax = float(grid.min()), float(grid.max())
        if vmin == vmax:
            vmin, vmax = vmin - 1.0, vmax + 1.0
    num_rows, num_columns = grid.shape
    fig, ax = plt.subplots(figsize=(1.0 * num_columns + 3.2, 0.42 * num_rows + 1.6), dpi=130)
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    norm = image.norm
    best = table.best(digits)
    for i in range(num_rows):
        for j in range(num_columns):
            shade = norm(grid[i, j])
            dark = shade < 0.2 or shade > 0.8 if is_correlation else shade < 0.35
            ax.text(j, i, f"{grid[i, j]:.{digits}f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black",
                    fontweight="bold" if best[i, j] else "normal")
            if best[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black",
                                       lw=1.8))
    ax.set_xticks(range(num_columns), columns, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(num_rows), table.rows, fontsize=9)
    for label, reference in zip(ax.get_yticklabels(), table.is_reference):
        if reference:
            label.set_fontstyle("italic")
    if table.num_references and table.num_references < num_rows:
        ax.axhline(num_rows - table.num_references - 0.5, color="black", lw=1.5)
    ax.axvline(num_columns - 1.5, color="black", lw=1.5)
    ax.set_title(title or f"{table.measure} (form={table.form}); boxed = best per column",
                 fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    try:
        return _io.write_atomic(path, write)
    finally:
        plt.close(fig)


def write_table_files(table: Table, prefix: str | os.PathLike, *, title: str | None = None,
                      extra_markdown: str = "") -> dict[str, pathlib.Path]:
    """Writes PREFIX.md (markdown + `extra_markdown`), PREFIX.csv and PREFIX.png."""
    prefix = pathlib.Path(prefix)
    heading = f"# {title}\n\n" if title else ""
    paths = {
        "md": _io.write_text_atomic(prefix.with_name(prefix.name + ".md"),
                                    heading + table.to_markdown() + extra_markdown),
        "csv": table.to_csv(prefix.with_name(prefix.name + ".csv")),
        "png": plot_heatmap(table, prefix.with_name(prefix.name + ".png"), title=title),
    }
    return paths
