"""Reproduction of the published single-source table (Model Spider, NeurIPS 2023, Table 1).

`reproduce_single_source` recomputes the nine baseline rows of Table 1 from the released raw
scores and fine-tuning accuracies (data/published/), adds the task-agnostic reference rows of spec
model_spider.md §8.4, compares every cell with the published table and writes
`<prefix>.{md,csv,png}`.

Conventions (spec §8.2): the published baseline rows use weighted tau on the raw accuracies and the
raw scores, ties kept (form="raw"); the Model Spider row uses the code's integer ranks
(form="ranks" with the FTRank tie-break) and cannot be recomputed here (it needs a trained ranker).
The PACTran column is used as stored (already negated by the benchmark driver); the orientation
check is part of the report.
"""

from __future__ import annotations

import collections
import dataclasses
import decimal
import os
from collections.abc import Mapping, Sequence

import numpy as np

from mspider_jax.evaluation import published as pub
from mspider_jax.evaluation import table as tb
from mspider_jax.evaluation.measures import weighted_tau
from mspider_jax.evaluation.priors import constant_prior

# Published cells we know the released scores cannot reproduce (spec §8.2).
KNOWN_CELL_REASONS: dict[tuple[str, str], str] = {
    (method, "Aircraft"): ("the released Aircraft scores (baseline_scores_single_source.csv) are "
                           "not the ones behind the published table; the method's other 7 "
                           "datasets match")
    for method in ("LEEP", "LogME", "NLEEP")
}
MEAN = "Mean"


@dataclasses.dataclass(frozen=True)
class CellDifference:
    """A cell whose recomputed value, rounded to 3 decimals, differs from the published one."""

    method: str
    dataset: str
    ours: float
    published: float
    reason: str


def _half_up(value: decimal.Decimal) -> decimal.Decimal:
    return value.quantize(decimal.Decimal("0.001"), rounding=decimal.ROUND_HALF_UP)


def _three_decimals(value: float) -> decimal.Decimal:
    return _half_up(decimal.Decimal(repr(float(value))))


def compare_with_published(table: tb.Table, published: Mapping[str, Mapping[str, float]],
                           methods: Sequence[str]) -> list[CellDifference]:
    """Cells of `methods` x (table datasets, Mean) whose 3-decimal value differs from `published`.

    A dataset cell gets the reason of KNOWN_CELL_REASONS, else "unexplained". The published Mean is
    the mean of the published 3-decimal cells rounded half up, so a Mean cell is explained when
    recomputing it that way from our cells (with the differing cells replaced by the published
    ones) gives the published Mean: "follows from <cells>" if some cells differ, "rounding" if none.
    """
    differences = []
    for method in methods:
        if method not in published:
            raise ValueError(f"method {method!r} is not in the published table")
        ours_cells = {d: _three_decimals(table.value(method, d)) for d in table.datasets}
        published_cells = {d: _three_decimals(published[method][d]) for d in table.datasets}
        differing = [d for d in table.datasets if ours_cells[d] != published_cells[d]]
        for dataset in differing:
            differences.append(CellDifference(
                method, dataset, table.value(method, dataset), published[method][dataset],
                KNOWN_CELL_REASONS.get((method, dataset), "unexplained")))
        ours_mean = table.value(method, MEAN)
        published_mean = _three_decimals(published[method][MEAN])
        if _three_decimals(ours_mean) == published_mean:
            continue
        patched = [published_cells[d] if d in differing else ours_cells[d] for d in table.datasets]
        recomputed = _half_up(sum(patched) / len(patched))
        if recomputed != published_mean:
            reason = "unexplained"
        elif differing:
            reason = (f"follows from the differing {', '.join(differing)} cell(s): with the "
                      f"published value(s) there, the mean of the 3-decimal cells is {recomputed}")
        else:
            mean_of_rounded = sum(ours_cells.values()) / len(ours_cells)
            reason = (f"rounding: the published Mean is the mean of the 3-decimal cells "
                      f"({mean_of_rounded.normalize()} -> {recomputed}); the unrounded mean is "
                      f"{ours_mean:.4f}")
        differences.append(CellDifference(method, MEAN, ours_mean, published[method][MEAN], reason))
    return differences


def most_common_training_label(tasks: Sequence[str] = pub.DEFAULT_TRAINING_TASKS) -> np.ndarray:
    """[M] the label vector shared by the most default training tasks (spec §6.1, §8.4)."""
    labels = pub.training_task_ranks(tasks=tasks).values
    counts = collections.Counter(tuple(row) for row in labels)
    return np.array(counts.most_common(1)[0][0])


def reference_priors() -> dict[str, dict[str, float]]:
    """Task-agnostic score vectors of the single-source zoo shown as reference rows (spec §8.4)."""
    models = pub.SINGLE_SOURCE_MODELS
    train = pub.training_task_ranks(tasks=pub.DEFAULT_TRAINING_TASKS).values
    return {
        "constant prior (mean rank, 13 training tasks)": dict(zip(models, constant_prior(train))),
        "constant (most common training label)": dict(zip(models, most_common_training_label())),
        "ImageNet top-1 (torchvision)": pub.imagenet_top1(),
    }


def _differences_markdown(differences: Sequence[CellDifference], num_cells: int) -> str:
    lines = [f"{num_cells - len(differences)} of {num_cells} cells (9 baselines x 8 datasets + "
             "Mean) equal the published Table 1 at 3 decimals. Differing cells:", "",
             "| method | dataset | ours | published | reason |", "|---|---|---:|---:|---|"]
    lines += [f"| {d.method} | {d.dataset} | {d.ours:.3f} | {d.published:.3f} | {d.reason} |"
              for d in differences]
    return "\n".join(lines) + "\n"


def reproduce_single_source(out_prefix: str | os.PathLike = "results/single_source_published", *,
                            verbose: bool = True) -> tuple[tb.Table, list[CellDifference]]:
    """Recomputes the baseline rows of Table 1, compares them, writes `<out_prefix>.{md,csv,png}`.

    Returns:
      (the raw-form table, the cells that differ from the published table).
    """
    scores = pub.baseline_scores()
    truth = pub.single_source_accuracy()
    ftrank = pub.single_source_ftrank()
    priors = reference_priors()
    methods, datasets = pub.BASELINE_METHODS, pub.TABLE1_DATASETS
    table = tb.results_table(scores, truth, methods=methods, datasets=datasets,
                             reference_priors=priors)
    ranks_table = tb.results_table(scores, truth, methods=methods, datasets=datasets, form="ranks",
                                   tie_break=ftrank, reference_priors=priors)
    published = pub.published_table1()
    differences = compare_with_published(table, published, methods)

    pactran = scores["PACTranDirichlet"]
    negated_mean = np.mean([weighted_tau(truth.row(d), -pactran.row(d)) for d in datasets])
    spider = published["ModelSpider"]
    extra = [
        "",
        "## Comparison with the published Table 1",
        "",
        _differences_markdown(differences, len(methods) * (len(datasets) + 1)),
        "## Notes",
        "",
        "* PACTran (`PACTranDirichlet`) is used as stored: mean "
        f"{table.value('PACTranDirichlet', MEAN):.3f} (published "
        f"{published['PACTranDirichlet'][MEAN]:.3f}). Negating the stored column gives "
        f"{negated_mean:.3f}, so the CSV already holds the benchmark's negated (higher = better) "
        "value.",
        f"* Model Spider (published, code convention = form \"ranks\"): mean {spider[MEAN]:.3f} "
        f"({', '.join(f'{d} {spider[d]:.3f}' for d in datasets)}). It needs a trained ranker and "
        "is not recomputed here.",
        "* Reference rows ignore the target task. The mean-rank prior averages the normalised "
        "FTRank labels of the 13 default training tasks; the most common training label is "
        f"{tuple(int(v) for v in most_common_training_label())}; \"other datasets\" fits the same "
        "prior, for each column, on the ground truth of the other 7 columns (leave one out).",
        "",
        "## Same table in the released code's convention (form=\"ranks\", FTRank tie-break)",
        "",
        ranks_table.to_markdown(),
    ]
    tb.write_table_files(table, out_prefix,
                         title="Single-source zoo: weighted tau of the published baseline scores",
                         extra_markdown="\n".join(extra))
    if verbose:
        print(table.to_markdown())
        print("\n".join(extra))
    return table, differences
