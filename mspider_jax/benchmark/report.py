"""Evaluation tables, report.md, CSVs and plots of a benchmark run (`runner.BenchmarkData`).

Every number comes from `mspider_jax.evaluation.results_table` on the methods' scores and the ground
truth (form "raw": raw accuracies with their ties, truth first; spec model_spider.md §8):
  * weighted tau per method x dataset, its mean over datasets and a percentile-bootstrap CI;
  * top-1 / top-3 hit (is a truly best PTM among the method's top 1 / 3; expected value under score
    ties) and regret (accuracy lost by fine-tuning the method's top PTM, in the truth's units);
  * reference rows: the constant prior of the training tasks (if given), the leave-one-dataset-out
    constant prior and random scores (expected value).
Files (atomic writes): report.md, results.csv (one row per method x measure: datasets, mean, CI,
cost), scores.csv (dataset, model, accuracy, one column per method: `mspider table --scores`
reads it), weighted_tau.png (heatmap), scatter/<dataset>.png (each method's scores against the
ground truth), time_vs_quality.png.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

import numpy as np

from mspider_jax import evaluation as ev
from mspider_jax.evaluation import _io
from mspider_jax.evaluation.table import LOO_PRIOR_NAME, RANDOM_NAME

# Measures tabulated (keys of evaluation.MEASURES), in report order.
MEASURES = ("weighted_tau", "top1_hit", "top3_hit", "regret")
TITLES = {"weighted_tau": "Weighted Kendall tau", "top1_hit": "Top-1 hit",
          "top3_hit": "Top-3 hit", "regret": "Regret"}


def _records(data) -> tuple[list[dict], list[dict]]:
    """(score records with one key per method, truth records); models without truth left out."""
    records, truth = [], []
    for t, dataset in enumerate(data.datasets):
        for m, model in enumerate(data.models):
            if np.isnan(data.truth[t, m]):
                continue
            truth.append({"dataset": dataset, "model": model, "accuracy": data.truth[t, m]})
            records.append({"dataset": dataset, "model": model,
                            **{name: data.scores[name][t, m] for name in data.scores}})
    return records, truth


def _drop_unevaluable(data) -> None:
    """Moves methods whose scores cannot be evaluated on some dataset (e.g. constant scores: the
    correlation is undefined) from `data.scores` to `data.errors`."""
    for name in list(data.scores):
        for t, dataset in enumerate(data.datasets):
            try:
                ev.evaluate_task(data.truth[t], data.scores[name][t])
            except ValueError as err:
                data.errors.setdefault(name, {})[dataset] = f"not evaluable: {err}"
                data.scores.pop(name)
                data.costs.pop(name, None)
                break


def evaluate(data, *, n_boot: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> dict[str, ev.Table]:
    """One `evaluation.Table` per measure of `MEASURES` (methods, then the reference rows)."""
    _drop_unevaluable(data)
    if not data.scores:
        raise ValueError("no method has scores that can be evaluated")
    records, truth = _records(data)
    priors = {name: dict(zip(data.models, values)) for name, values in data.priors.items()}
    options = dict(methods=list(data.scores), datasets=list(data.datasets),
                   reference_priors=priors, n_boot=n_boot, confidence=confidence, seed=seed)
    tables = {}
    for measure in MEASURES:
        loo = len(data.datasets) >= 2
        try:
            tables[measure] = ev.results_table(records, truth, measure=measure, loo_prior=loo,
                                               **options)
        except ValueError as err:
            # With few datasets the leave-one-out prior can tie every model (undefined tau).
            if not loo or LOO_PRIOR_NAME not in str(err):
                raise
            tables[measure] = ev.results_table(records, truth, measure=measure, loo_prior=False,
                                               **options)
    return tables


# --------------------------------------------------------------------------------------------------
# Costs


def cost_rows(data) -> dict[str, dict[str, float]]:
    """Per method: total scoring seconds, seconds / forward passes / extraction seconds per task."""
    rows = {}
    for name, cost in data.costs.items():
        extraction = float(np.mean(cost.extraction_seconds))
        rows[name] = {"seconds_total": float(np.sum(cost.seconds)),
                      "seconds_per_task": float(np.mean(cost.seconds)),
                      "forward_passes_per_task": float(np.mean(cost.forward_passes)),
                      "extraction_seconds_per_task": extraction}
    return rows


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# Files


def write_scores_csv(data, path: pathlib.Path) -> pathlib.Path:
    names = list(data.scores)
    rows = []
    for t, dataset in enumerate(data.datasets):
        for m, model in enumerate(data.models):
            if np.isnan(data.truth[t, m]):
                continue
            rows.append([dataset, model, repr(float(data.truth[t, m])),
                         *(repr(float(data.scores[n][t, m])) for n in names)])
    return _io.write_csv_atomic(path, ["dataset", "model", "accuracy", *names], rows)


def write_results_csv(data, tables: Mapping[str, ev.Table], path: pathlib.Path) -> pathlib.Path:
    """One row per (method or reference, measure): values per dataset, mean, CI and cost."""
    costs = cost_rows(data)
    any_table = next(iter(tables.values()))
    header = ["method", "kind", "measure", *any_table.datasets, "mean", "ci_low", "ci_high",
              "seconds_total", "seconds_per_task", "forward_passes_per_task",
              "extraction_seconds_per_task"]
    rows = []
    for measure, table in tables.items():
        for i, row in enumerate(table.rows):
            summary = table.summaries[i]
            cost = costs.get(row, {})
            rows.append([row, "reference" if table.is_reference[i] else "method", measure,
                         *(repr(float(v)) for v in table.values[i]), repr(summary.mean),
                         repr(summary.low), repr(summary.high),
                         *(repr(cost[key]) if key in cost else "" for key in header[-4:])])
    return _io.write_csv_atomic(path, header, rows)


def _safe_name(name: str) -> str:
    from mspider_jax.features.store import encode_name

    return encode_name(name).replace("%", "_")


def plot_scatter(data, dataset_index: int, table: ev.Table, path: pathlib.Path) -> pathlib.Path:
    """One panel per method: its scores (y) against the ground truth (x) on one dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = data.datasets[dataset_index]
    truth = data.truth[dataset_index]
    known = ~np.isnan(truth)
    names = list(data.scores) + list(data.priors)
    columns = min(5, len(names))
    rows = math.ceil(len(names) / columns)
    height = 2.5 * rows + 0.5  # inches; the top 0.75 hold the figure title and the two-line axis titles
    fig, axes = plt.subplots(rows, columns, figsize=(2.9 * columns, height), dpi=90, squeeze=False)
    best = np.flatnonzero(known & (truth == np.nanmax(truth)))
    for axis, name in zip(axes.flat, names):
        values = data.scores[name][dataset_index] if name in data.scores else data.priors[name]
        axis.scatter(truth[known], values[known], s=14, color="tab:blue")
        axis.scatter(truth[best], values[best], s=30, facecolors="none", edgecolors="tab:red",
                     label="best PTM")
        tau = table.value(name, dataset)
        axis.set_title(f"{name}\nweighted tau {tau:.3f}", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    fig.supxlabel("ground-truth accuracy", fontsize=9)
    fig.supylabel("score", fontsize=9)
    fig.suptitle(f"{dataset}: scores vs ground truth ({int(known.sum())} PTMs; red = best)",
                 fontsize=10)
    # Fixed margins: tight_layout would measure every label (seconds per figure on a busy CPU).
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1 / rows ** 0.5, top=1 - 0.75 / height,
                        wspace=0.35, hspace=0.75)
    try:
        return _io.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def plot_time_quality(data, table: ev.Table, path: pathlib.Path) -> pathlib.Path:
    """Mean weighted tau (with CI) against the cost per task, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = cost_rows(data)
    with_extraction = all(math.isfinite(c["extraction_seconds_per_task"]) for c in costs.values())
    fig, axis = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    for i, name in enumerate(table.rows):
        summary = table.summaries[i]
        if name not in costs:
            style = dict(color="gray", ls=":" if name == RANDOM_NAME else "--", lw=1)
            axis.axhline(summary.mean, **style)
            axis.annotate(name, (0.01, summary.mean), xycoords=("axes fraction", "data"),
                          fontsize=7, color="gray", va="bottom")
            continue
        cost = costs[name]
        x = cost["seconds_per_task"] + (cost["extraction_seconds_per_task"]
                                        if with_extraction else 0.0)
        is_spider = name.startswith("Model Spider")
        axis.errorbar(x, summary.mean, yerr=[[summary.mean - summary.low],
                                             [summary.high - summary.mean]],
                      fmt="*" if is_spider else "o", ms=11 if is_spider else 6,
                      color="tab:red" if is_spider else "tab:blue", capsize=2, lw=0.8)
        axis.annotate(name, (x, summary.mean), textcoords="offset points", xytext=(4, 3),
                      fontsize=7)
    axis.set_xscale("log")
    what = ("scoring + feature extraction (store manifests)" if with_extraction
            else "scoring only (features given)")
    axis.set_xlabel(f"seconds per task: {what}")
    axis.set_ylabel(f"mean weighted tau ({100 * table.confidence:g}% CI)")
    axis.set_title("Quality vs cost per method (up-left is better)")
    axis.grid(alpha=0.3, which="both")
    fig.tight_layout()
    try:
        return _io.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def write_all(data, tables: Mapping[str, ev.Table], workdir: pathlib.Path, *,
              scatter: bool = True) -> dict[str, pathlib.Path]:
    """results.csv, scores.csv and the plots; returns their paths."""
    workdir = pathlib.Path(workdir)
    tau = tables["weighted_tau"]
    files = {
        "results_csv": write_results_csv(data, tables, workdir / "results.csv"),
        "scores_csv": write_scores_csv(data, workdir / "scores.csv"),
        "heatmap": ev.plot_heatmap(tau, workdir / "weighted_tau.png",
                                   title="Weighted tau per method and target (boxed: best)"),
        "time_vs_quality": plot_time_quality(data, tau, workdir / "time_vs_quality.png"),
    }
    if scatter:
        for t, dataset in enumerate(data.datasets):
            files[f"scatter:{dataset}"] = plot_scatter(
                data, t, tau, workdir / "scatter" / f"{_safe_name(dataset)}.png")
    return files


def _cost_markdown(data, tables: Mapping[str, ev.Table]) -> str:
    costs = cost_rows(data)
    tau = tables["weighted_tau"]
    lines = ["| method | scoring s (total) | scoring s / task | PTM forward passes / task | "
             "extraction s / task | mean weighted tau |", "|---|---:|---:|---:|---:|---:|"]
    for name, cost in costs.items():
        lines.append(f"| {name} | {_fmt(cost['seconds_total'])} | "
                     f"{_fmt(cost['seconds_per_task'], 3)} | "
                     f"{cost['forward_passes_per_task']:g} | "
                     f"{_fmt(cost['extraction_seconds_per_task'])} | "
                     f"{tau.value(name, 'Mean'):.3f} |")
    return "\n".join(lines) + "\n"


def write_report(data, tables: Mapping[str, ev.Table], workdir: pathlib.Path,
                 files: Mapping[str, pathlib.Path]) -> pathlib.Path:
    """report.md: provenance, the measure tables, costs, what was not scored, the files."""
    info = data.info
    workdir = pathlib.Path(workdir)
    lines = [f"# Benchmark: {info['name']}", "",
             f"{len(data.datasets)} target datasets x {len(data.models)} PTMs, feature store "
             f"`{info['store']}` (split `{info['split']}`), ground truth `{info['ground_truth']}`.",
             f"Model Spider: {info['ranker']['source']}; re-ranking depth k = {info['rerank_k']}. "
             f"Metrics: convention `{info['convention']}`; {info['metric_scores_computed']} "
             f"scores computed in this run ({info['metric_calls']} score_zoo calls), the others "
             f"read from the cache `{info['cache_dir']}`.",
             f"JAX backend {info['jax_backend']} ({info['jax_devices']} device(s)), mspider-jax "
             f"{info['version']}, {info['created']}; whole run {info.get('seconds', float('nan')):.0f} s.",
             ""]
    for measure in MEASURES:
        title = TITLES[measure]
        if measure == "regret":
            title += " (ground-truth units lost by fine-tuning the top-ranked PTM; lower is better)"
        lines += [f"## {title}", "", tables[measure].to_markdown()]
    lines += ["## Time per method", "",
              "Scoring: wall time from the features to the scores (metrics: one batched score_zoo "
              "call per dataset including its compilation, recorded when the score was computed; "
              "Model Spider: `rank_features`, both stages). Forward passes: networks run over the "
              "task's images (every PTM for a metric; the generic encoder plus the re-ranked PTMs "
              "for Model Spider); extraction: their extraction time from the store manifests.", "",
              _cost_markdown(data, tables)]
    if info.get("coverage"):
        lines += ["## How close each target is to the ranker's training tasks", "",
                  "Coverage (`spider.coverage`): mean over the target's classes of the largest cosine "
                  "similarity of its generic prototype to a training task's. Outside: below the 5th "
                  "percentile of the training tasks' own coverage by one another; stage 1 extrapolates "
                  "there.", "",
                  "| dataset | coverage | % of training tasks covered less | outside |",
                  "|---|---:|---:|---|"]
        for dataset, record in info["coverage"].items():
            lines.append(f"| {dataset} | {record['value']:.3f} | {record['percentile']:.0f} | "
                         f"{'yes' if record['outside'] else 'no'} |")
        lines.append("")
    if data.skipped or data.errors:
        lines += ["## Not in the tables", ""]
        for name, reason in data.skipped.items():
            lines.append(f"* `{name}`: skipped, {reason}.")
        for name, per_dataset in data.errors.items():
            for dataset, message in per_dataset.items():
                lines.append(f"* `{name}` on `{dataset}`: {message}")
        lines.append("")
    lines += ["## Files", ""]
    for name, path in files.items():
        lines.append(f"* {name}: `{pathlib.Path(path).relative_to(workdir)}`")
    lines.append("")
    return _io.write_text_atomic(workdir / "report.md", "\n".join(lines))


def summary_table(data, tables: Mapping[str, ev.Table]) -> str:
    """The printed summary: one line per row of the tables (mean over datasets)."""
    tau, top1, regret = tables["weighted_tau"], tables["top1_hit"], tables["regret"]
    costs = cost_rows(data)
    width = max(len(r) for r in tau.rows)
    level = f"{100 * tau.confidence:g}% CI"
    lines = [f"{'method':<{width}}  w.tau  {level:<14}  top-1  regret  s/task  passes",
             "-" * (width + 54)]
    for i, name in enumerate(tau.rows):
        summary = tau.summaries[i]
        cost = costs.get(name)
        seconds = _fmt(cost["seconds_per_task"], 3) if cost else ""
        passes = f"{cost['forward_passes_per_task']:g}" if cost else ""
        lines.append(f"{name:<{width}}  {summary.mean:5.3f}  "
                     f"{f'[{summary.low:.2f}, {summary.high:.2f}]':<14}  "
                     f"{top1.value(name, 'Mean'):5.3f}  {regret.value(name, 'Mean'):6.2f}  "
                     f"{seconds:>6}  {passes:>6}")
    return "\n".join(lines)
