"""How many labelled target samples per class each ranking method needs (the benchmark, subsampled).

Transferability metrics (H-Score, LogME, ...) estimate class statistics (means, covariances, posteriors)
of every PTM's features from the target's labelled samples, so their quality depends on how many
samples a class has. Model Spider (Zhang et al., NeurIPS 2023) summarises the task by its generic
class prototypes (plus, in stage 2, the re-ranked PTMs' own prototypes) and reads the rest from what
it learnt on its training tasks. This study makes the difference measurable: every target's split is
subsampled to `n` samples per class (the same samples for every PTM and for the generic encoder), the
zoo is ranked by every method on the subsample, and each ranking is compared with the ground truth of
the FULL task (fine-tuning on all of it), by the weighted Kendall tau of the benchmark
(`evaluation.weighted_tau`, raw form, truth first).

Conventions:
  * `n` per class: min(n, samples of the class); the classes are those of the full split. The draw
    is seeded by (seed, n, repeat) and is the same for every model of the zoo.
  * A cell is the mean over targets of the per-target mean over `repeats` draws; the full column
    ("all", last) is the data itself (one draw).
  * A method that fails on some target (ValueError, e.g. too few samples for its statistics, or
    equal scores for every model, which order nothing) gets no mean for that `n`; the report says
    on how many targets it failed and why.
  * Subsampled entries go to WORKDIR/store as dataset "<dataset>@n<n>r<repeat>" (resumable: entries
    already written are kept); metric scores are cached like the benchmark's (WORKDIR/cache, or
    `config.metrics.cache_dir`: pointing it at a benchmark run's cache reuses its full-data scores).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from mspider_jax.benchmark import metric_scores as metric_scores_lib
from mspider_jax.benchmark import runner

log = logging.getLogger(__name__)

FULL = 0  # `per_class` value meaning "every sample" (the benchmark itself)


def subsample_indices(labels: np.ndarray, per_class: int, seed: Sequence[int]) -> np.ndarray:
    """Indices (sorted) of min(per_class, n_c) samples of every class c of `labels`.

    Args:
      labels: [N] integer class ids.
      per_class: samples kept per class (>= 2: every metric needs two samples of a class).
      seed: entropy of the draw (a numpy SeedSequence entropy, e.g. (seed, per_class, repeat)).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be [N] integers, got {labels.shape} {labels.dtype}")
    if per_class < 2:
        raise ValueError(f"per_class must be >= 2 (metrics need two samples of a class), got {per_class}")
    rng = np.random.default_rng(list(seed))
    picked = [rng.choice(np.flatnonzero(labels == c), min(per_class, int(np.sum(labels == c))),
                         replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def subsample_name(dataset: str, per_class: int, repeat: int) -> str:
    return f"{dataset}@n{per_class}r{repeat}"


def write_subsamples(store, out_store, datasets: Sequence[str], models: Sequence[str], *,
                     split: str, per_class: int, repeats: int, seed: int = 0) -> list[list[str]]:
    """Writes `repeats` subsamples of every dataset (all `models`) into `out_store`.

    Returns:
      [T][repeats] dataset names in `out_store`.
    Raises:
      ValueError: the models of a dataset do not hold the same labels (not the same samples).
    """
    names = []
    for dataset in datasets:
        # Every model is checked before anything is written: a mismatch leaves no partial dataset.
        entries = {model: store.read(dataset, split, model) for model in models}  # memory-mapped
        labels = np.asarray(entries[models[0]].labels)
        for model, entry in entries.items():
            if not np.array_equal(np.asarray(entry.labels), labels):
                raise ValueError(f"{dataset}/{split}: the labels of {model} differ from those of "
                                 f"{models[0]} (not the same samples in the same order)")
        row = []
        for repeat in range(repeats):
            name = subsample_name(dataset, per_class, repeat)
            index = subsample_indices(labels, per_class, (seed, per_class, repeat))
            for model, entry in entries.items():
                if out_store.has(name, split, model):
                    continue
                logits = None if entry.logits is None else np.asarray(entry.logits)[index]
                out_store.write(name, split, model, features=np.asarray(entry.features)[index],
                                labels=labels[index], logits=logits, overwrite=True,
                                provenance=dict(subsample_of=dataset, per_class=per_class,
                                                repeat=repeat, seed=seed))
            row.append(name)
        names.append(row)
    return names


@dataclasses.dataclass
class SampleSizeResult:
    """Weighted tau of every method at every sample size.

    per_class: [P] samples per class (FULL = all); datasets: [T] targets; methods: row names;
    tau: method -> [P, T] per-target weighted tau (mean over repeats; NaN where the method failed);
    median_class_size: [T] median samples per class of each full target; info: provenance.
    """

    per_class: list[int]
    datasets: list[str]
    methods: list[str]
    tau: dict[str, np.ndarray]
    median_class_size: np.ndarray
    info: dict


def _taus(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Weighted tau of each row of scores [T, M] against truth [T, M].

    NaN where the scores have NaN (the method failed) or are all equal (it does not order the zoo,
    e.g. SFDA saturating at 1 on separable subsamples): a correlation is undefined there.
    """
    from mspider_jax import evaluation as ev

    out = np.full(len(truth), np.nan)
    for t in range(len(truth)):
        known = ~np.isnan(truth[t])
        values = scores[t][known]
        if np.all(np.isfinite(values)) and not np.all(values == values[0]):
            out[t] = ev.weighted_tau(truth[t][known], values)
    return out


def run_study(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
              per_class: Sequence[int] = (10, 20, 40, 80), repeats: int = 3, seed: int = 0,
              include_full: bool = True, progress: Callable[[str], None] | None = None,
              show_bars: bool = True) -> SampleSizeResult:
    """Runs the study for a benchmark config (`configs/benchmark_*.py`: store, ground truth,
    ranker, metrics); see the module docstring."""
    from mspider_jax import evaluation as ev
    from mspider_jax import metrics
    from mspider_jax.features import FeatureStore

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    sizes = [int(n) for n in per_class]
    if repeats < 1 or any(n < 2 for n in sizes):
        raise ValueError(f"need repeats >= 1 and per_class values >= 2, got {repeats}, {sizes}")
    if config.store == "synthetic":
        runner._fill_synthetic(config, workdir)
    store = runner._open_store(config.store)
    ranker, run_config, ranker_info = runner.load_or_train_ranker(config, workdir)
    models = list(run_config.model_names)
    generic_model = run_config.data.get("generic_model", "generic")
    datasets, truth = runner.read_truth(config.ground_truth, models, config.datasets)
    rerank_k = config.spider.rerank_k if config.spider.rerank_k >= 0 else int(
        run_config.eval.get("rerank_k", 3))
    sub_store = FeatureStore(workdir / "store")
    cache_dir = config.metrics.cache_dir or str(workdir / "cache")  # as the benchmark's
    columns = sorted(set(sizes)) + ([FULL] if include_full else [])
    tau: dict[str, np.ndarray] = {}
    failures: dict[str, dict[int, int]] = {}
    reasons: dict[str, dict[int, str]] = {}
    for p, n in enumerate(columns):
        if n == FULL:
            source, draws = store, [[d] for d in datasets]
        else:
            say(f"subsampling {len(datasets)} targets to {n} samples per class, {repeats} draws")
            source = sub_store
            draws = write_subsamples(store, sub_store, datasets, models + [generic_model],
                                     split=config.split, per_class=n, repeats=repeats, seed=seed)
        flat = [name for row in draws for name in row]
        count = len(draws[0])
        repeated_truth = np.repeat(truth, count, axis=0)
        result = metric_scores_lib.score_metrics(
            source, flat, models, split=config.split, metrics=list(config.metrics.names) or None,
            convention=config.metrics.convention, options=config.metrics.options.to_dict(),
            seed=config.metrics.seed, cache_dir=cache_dir, progress=progress, show_bar=show_bars)
        scores = {name: table for name, table in result.scores.items()
                  if name not in result.skipped}
        spider, _ = runner.rank_targets(ranker, run_config, source, flat, split=config.split,
                                        k=rerank_k)
        scores.update(spider)
        for name, per_dataset in result.errors.items():
            if per_dataset:
                dataset, message = next(iter(per_dataset.items()))
                reasons.setdefault(name, {})[n] = f"{dataset}: {message}"
        for name, values in scores.items():
            per_draw = _taus(repeated_truth, values).reshape(len(datasets), count)
            failed = np.isnan(per_draw).any(axis=1)
            tau.setdefault(name, np.full((len(columns), len(datasets)), np.nan))
            tau[name][p] = np.where(failed, np.nan, per_draw.mean(axis=1))
            failures.setdefault(name, {})[n] = int(failed.sum())
            if failed.any() and n not in reasons.get(name, {}):
                t = int(np.flatnonzero(failed)[0])
                reasons.setdefault(name, {})[n] = (f"{datasets[t]}: equal scores for every model "
                                                   "(the method does not order the zoo)")
        # Every n brings new sample counts, hence new compiled programs for every metric and target:
        # drop the previous n's (a full study otherwise exhausts the CPU JIT's memory mappings).
        metrics.clear_compiled()
        say(f"{'all samples' if n == FULL else f'{n} per class'}: " + ", ".join(
            f"{name} {np.mean(tau[name][p]):.3f}" for name in scores))
    if config.prior_ground_truth.path:
        _, prior_truth = runner.read_truth(config.prior_ground_truth, models)
        prior = ev.constant_prior(prior_truth)
        tau[runner.CONSTANT_PRIOR] = np.tile(_taus(truth, np.tile(prior, (len(datasets), 1))),
                                             (len(columns), 1))
    class_sizes = np.array([np.median(np.bincount(np.asarray(
        store.read(d, config.split, models[0]).labels))) for d in datasets])
    info = dict(name=config.name, store=str(store.root), ground_truth=config.ground_truth.path,
                ranker=ranker_info["source"], rerank_k=rerank_k, repeats=repeats, seed=seed,
                failures={name: {str(k): v for k, v in f.items()} for name, f in failures.items()},
                failure_examples={name: {str(k): v for k, v in r.items()} for name, r in reasons.items()})
    return SampleSizeResult(columns, list(datasets), list(tau), tau, class_sizes, info)


def _column_name(n: int) -> str:
    return "all" if n == FULL else f"n={n}"


def format_report(result: SampleSizeResult) -> str:
    """Markdown: mean weighted tau over the targets per method (rows) and samples per class (columns)."""
    header = ["method"] + [_column_name(n) for n in result.per_class]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(result.per_class) + "|"]
    means = {m: [np.nan if np.isnan(v).any() else float(v.mean()) for v in result.tau[m]]
             for m in result.methods}
    best = [max((means[m][p] for m in result.methods if not np.isnan(means[m][p])
                 and m != runner.CONSTANT_PRIOR), default=np.nan)
            for p in range(len(result.per_class))]
    order = sorted(result.methods, key=lambda m: -np.nan_to_num(means[m][-1], nan=-9.0))
    for method in order:
        cells = []
        for p, n in enumerate(result.per_class):
            value = means[method][p]
            if np.isnan(value):
                failed = result.info["failures"].get(method, {}).get(str(n), 0)
                cells.append(f"fails on {failed}/{len(result.datasets)}")
            else:
                text = f"{value:.3f}"
                cells.append(f"**{text}**" if f"{best[p]:.3f}" == text else text)
        name = f"*{method}*" if method == runner.CONSTANT_PRIOR else method
        lines.append("| " + " | ".join([name] + cells) + " |")
    sizes = ", ".join(f"{d} {s:g}" for d, s in zip(result.datasets, result.median_class_size))
    examples = result.info.get("failure_examples", {})
    why = "".join(f"\n* {method}, n={n}: {text[:200]}" for method, per in sorted(examples.items())
                  for n, text in sorted(per.items(), key=lambda item: int(item[0]))[:1])
    if why:
        why = "\n\nWhy methods fail (first failure of each, at its smallest n):" + why
    why += _partial_comparison(result)
    return "\n".join(lines) + (
        f"\n\nWeighted tau (raw, truth first) against the full tasks' ground truth, mean over the "
        f"{len(result.datasets)} targets; n = samples per class kept (mean over {result.info['repeats']} "
        f"draws per target). Bold: best of the column among the methods that score every target "
        f"(the task-agnostic constant prior excluded). Median samples per class of the full "
        f"targets: {sizes}.") + why + "\n"


def _partial_comparison(result: SampleSizeResult) -> str:
    """Markdown: each method that fails on some targets, on the targets it does score, next to the
    first Model Spider row on the same targets (a mean over fewer targets is not comparable with
    the table's)."""
    spider = next((m for m in result.methods if m.startswith("Model Spider (k=")),
                  next((m for m in result.methods if m.startswith("Model Spider")), None))
    if spider is None:
        return ""
    rows = []
    for method in result.methods:
        for p, n in enumerate(result.per_class):
            scored = ~np.isnan(result.tau[method][p])
            if scored.any() and not scored.all() and not np.isnan(result.tau[spider][p][scored]).any():
                rows.append(f"| {method} | {_column_name(n)} | {int(scored.sum())}/{len(scored)} | "
                            f"{result.tau[method][p][scored].mean():.3f} | "
                            f"{result.tau[spider][p][scored].mean():.3f} |")
    if not rows:
        return ""
    return ("\n\nMethods that fail on some targets, on the targets they score (mean weighted tau):\n\n"
            f"| method | n | targets scored | method | {spider} |\n|---|---|---:|---:|---:|\n"
            + "\n".join(rows))


def load_json(path: str | pathlib.Path) -> SampleSizeResult:
    """A result written by `save_json` (to redo the report or the plot without rerunning)."""
    data = json.loads(pathlib.Path(path).read_text())
    tau = {m: np.array([[np.nan if x is None else x for x in row] for row in rows], np.float64)
           for m, rows in data["tau"].items()}
    return SampleSizeResult(list(data["per_class"]), list(data["datasets"]), list(tau), tau,
                            np.asarray(data["median_class_size"], np.float64), data["info"])


def plot(result: SampleSizeResult, path: str | pathlib.Path) -> pathlib.Path:
    """Line plot of the mean weighted tau against samples per class (log axis; "all" at the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [n for n in result.per_class if n != FULL]
    full_x = max(sizes) * 2.5 if sizes else 1.0
    xs = [full_x if n == FULL else n for n in result.per_class]
    order = np.arange(len(xs))  # ascending n, then "all"
    fig, ax = plt.subplots(figsize=(8, 5))
    palette = plt.get_cmap("tab20")
    for i, method in enumerate(result.methods):
        means = np.array([np.nan if np.isnan(v).any() else v.mean() for v in result.tau[method]])
        spider = method.startswith("Model Spider")
        style = dict(lw=2.5, marker="o") if spider else dict(lw=1, marker=".", alpha=0.8,
                                                              color=palette(i % 20))
        if method == runner.CONSTANT_PRIOR:
            style = dict(lw=1.5, ls="--", color="grey")
        ax.plot(np.array(xs)[order], means[order], label=method, **style)
    ax.set_xscale("log")
    ax.set_xticks([xs[i] for i in order])
    ax.set_xticklabels([_column_name(result.per_class[i]) for i in order])
    ax.set_xlabel("labelled target samples per class")
    ax.set_ylabel(f"mean weighted tau over {len(result.datasets)} targets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_json(result: SampleSizeResult, path: str | pathlib.Path) -> None:
    from mspider_jax.evaluation._io import write_text_atomic

    data = dict(per_class=result.per_class, datasets=result.datasets,
                median_class_size=result.median_class_size.tolist(), info=result.info,
                tau={m: [[None if np.isnan(x) else float(x) for x in row] for row in v]
                     for m, v in result.tau.items()})
    write_text_atomic(path, json.dumps(data, indent=1))
