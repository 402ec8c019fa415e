"""Leave-one-domain-group-out validation: how well a ranker trained on some task domains ranks the
zoo on tasks from a domain it has never seen, measured on training tasks alone.

Why: the usual validation holds out training tasks drawn like the others, so every validation task
shares its domains with many training tasks. A user's new task is usually from a new domain, and
there the ranker can do much worse than on validation (on the mini zoo: 0.865 on 12 random held-out
training tasks, 0.70 on the 8 target datasets, spec §7). Holding out every training task that
touches one group of domains, and training on the rest, estimates that out-of-domain quality
without touching the targets, so it can choose settings (epochs, say) that generalise across domains.

A fold is one domain group: its validation tasks are the training tasks with at least one class
from a domain of the group; the ranker trains on every other task (a task mixing two groups is held
out of both folds). The validation weighted tau is logged at every evaluation (`metrics.jsonl`),
which gives a curve per fold; `domain_holdout_study` reports the curves' mean over folds, the step
the mean curve peaks at (a choice made on training tasks only), and, given the build's feature
store, the transferability metrics on the same held-out tasks.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from mspider_jax.evaluation import _io
from mspider_jax.spider import train_lib

DEFAULT_METRICS = ("hscore", "logme", "emms")


def domain_folds(task_domains: Mapping[str, Iterable[str]],
                 groups: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """{fold name: validation tasks} for leave-one-group-out folds.

    Args:
      task_domains: {task: the domains of its classes}.
      groups: a partition of the domains; a group's fold name is its first domain, or
        "<first>+<n-1> more" for a group of several.

    Raises:
      ValueError: a task has a domain of no group, a domain is in two groups, or a fold would hold
        out every task (nothing left to train on) or none.
    """
    owner: dict[str, str] = {}
    names = []
    for group in groups:
        group = list(group)
        if not group:
            raise ValueError("domain_folds: empty domain group")
        name = group[0] if len(group) == 1 else f"{group[0]}+{len(group) - 1} more"
        names.append(name)
        for domain in group:
            if domain in owner:
                raise ValueError(f"domain_folds: domain {domain!r} is in two groups ({owner[domain]}, {name})")
            owner[domain] = name
    folds: dict[str, list[str]] = {name: [] for name in names}
    for task, domains in sorted(task_domains.items()):
        domains = set(domains)
        unknown = sorted(domains - owner.keys())
        if unknown:
            raise ValueError(f"domain_folds: task {task!r} has domains {unknown} of no group")
        for name in sorted({owner[d] for d in domains}):
            folds[name].append(task)
    for name, tasks in folds.items():
        if not tasks:
            raise ValueError(f"domain_folds: no task has a domain of group {name!r}")
        if len(tasks) == len(task_domains):
            raise ValueError(f"domain_folds: every task touches group {name!r}; nothing would be left to train on")
    return folds


def minizoo_domain_folds(root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The mini zoo's folds: its build's `tasks.domain_groups`, task classes named "domain:class"."""
    from mspider_jax import minizoo

    manifest = minizoo.load_manifest(root)
    task_domains = {t["name"]: {c.split(":", 1)[0] for c in t["classes"]} for t in manifest["training_tasks"]}
    tasks_config = manifest["config"]["tasks"]
    groups = tasks_config.get("domain_groups") or [[d] for d in tasks_config["domains"]]
    return domain_folds(task_domains, groups)


def validation_curve(workdir: str | os.PathLike) -> list[tuple[int, float, float]]:
    """[(step, epoch, validation weighted tau)] logged by a run in `workdir`, by step (a resumed run
    may log a step twice: the last record wins)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"validation_curve: no {path}")
    by_step: dict[int, tuple[int, float, float]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if train_lib.VALIDATION_METRIC in record:
            step = int(record["step"])
            by_step[step] = (step, float(record["epoch"]), float(record[train_lib.VALIDATION_METRIC]))
    if not by_step:
        raise ValueError(f"validation_curve: {path} has no {train_lib.VALIDATION_METRIC} record")
    return [by_step[s] for s in sorted(by_step)]


def fold_config(config: ml_collections.ConfigDict, validation_tasks: Sequence[str]) -> ml_collections.ConfigDict:
    """`config` with `validation_tasks` as its validation tasks and no targets (a fold never sees them)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.data.val_tasks = tuple(validation_tasks)
        for field in ("bank", "store", "ground_truth"):
            config.data.targets[field] = ""
        config.data.targets.tasks = ()
        config.eval.metric_scores = ""
        config.train.ensemble_seeds = ()
    return config


def training_task_metric_taus(store, tasks: Sequence[str], models: Sequence[str],
                              metrics: Sequence[str] = DEFAULT_METRICS,
                              root: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """{metric: {task: weighted tau}} of transferability metrics on mini-zoo training tasks, from the
    build's feature store (`scripts/build_minizoo.py`'s WORKDIR/store; train split)."""
    from mspider_jax import minizoo

    wanted = set(tasks)
    records = [r for r in minizoo.ground_truth("training", root) if r["dataset"] in wanted]
    missing = wanted - {r["dataset"] for r in records}
    if missing:
        raise ValueError(f"training_task_metric_taus: no ground truth for {sorted(missing)[:5]}")
    return {metric: minizoo.metric_weighted_tau(store, records, models, metric)[1] for metric in metrics}


@dataclasses.dataclass(frozen=True)
class FoldResult:
    name: str
    tasks: tuple[str, ...]
    curve: tuple[tuple[int, float, float], ...]  # (step, epoch, validation weighted tau)
    seconds: float
    rerank: dict[int, float]  # {k: mean weighted tau of stage 2 at depth k on the fold's tasks}; 0 = stage 1


def rerank_taus(config: ml_collections.ConfigDict, run: str | os.PathLike, ks: Sequence[int]) -> dict[int, float]:
    """{k: mean weighted tau on the run's validation tasks of its best checkpoint, re-ranking each
    task's stage-1 top-k with their own prototypes}, for k = 0 (stage 1), each of `ks` (capped at
    the zoo size) and the zoo size (every PTM re-ranked)."""
    from mspider_jax import checkpointing
    from mspider_jax.spider import evaluate as evaluate_lib

    data = train_lib.load_data(config)
    ranker, run_config = checkpointing.load_ranker(run)
    scoring = train_lib.scoring_options(run_config, data, int(run_config.model.specific_length))
    zoo_size = len(data.model_names)
    depths = sorted({0, zoo_size, *(min(k, zoo_size) for k in ks)})
    _, taus = evaluate_lib.choose_k_on_validation(ranker, data.val, depths, **scoring)
    return {int(k): float(v) for k, v in taus.items()}


def _mean_curve(folds: Sequence[FoldResult]) -> list[tuple[float, float]]:
    """[(epoch, mean tau over folds)] at the epochs every fold evaluated (folds differ in steps per
    epoch, so they are aligned on epochs)."""
    per_fold = [{round(epoch, 6): tau for _, epoch, tau in f.curve} for f in folds]
    common = sorted(set.intersection(*(set(c) for c in per_fold)))
    return [(epoch, float(np.mean([c[epoch] for c in per_fold]))) for epoch in common]


def domain_holdout_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                         folds: Mapping[str, Sequence[str]], *,
                         metric_taus: Mapping[str, Mapping[str, float]] | None = None,
                         rerank_ks: Sequence[int] = (3, 10), label: str = "") -> dict:
    """Trains one ranker per fold (in workdir/<fold>; resumable) and summarises the curves.

    Args:
      config: a Model Spider config (its targets are dropped for the folds).
      folds: {fold: validation tasks} (`domain_folds`).
      metric_taus: optional {metric: {task: weighted tau}} on the training tasks
        (`training_task_metric_taus`), averaged over each fold's tasks for comparison.
      rerank_ks: stage-2 depths measured on each fold's tasks with its best checkpoint (chosen on
        those tasks: optimistic), besides stage 1 and every PTM re-ranked (k = zoo size).
      label: a name for this config in the report.

    Returns:
      The summary dict also written to workdir/domain_holdout.json (and .md, .png).
    """
    workdir = pathlib.Path(workdir)
    results = []
    for index, (name, tasks) in enumerate(folds.items()):
        logging.info("Fold %d/%d: %s (%d validation tasks)", index + 1, len(folds), name, len(tasks))
        start = time.perf_counter()
        run = workdir / fold_dirname(name)
        fold = fold_config(config, tasks)
        train_lib.train_and_evaluate(fold, run)
        seconds = time.perf_counter() - start
        results.append(FoldResult(name, tuple(tasks), tuple(validation_curve(run)), seconds,
                                  rerank_taus(fold, run, rerank_ks)))
    summary = summarise(results, metric_taus, label=label, epochs=config.train.epochs)
    _io.write_text_atomic(workdir / "domain_holdout.json", json.dumps(summary, indent=1))
    _io.write_text_atomic(workdir / "domain_holdout.md", markdown_report(summary))
    plot(summary, workdir / "domain_holdout.png")
    return summary


def fold_dirname(fold: str) -> str:
    """The directory of a fold's run inside the study's workdir (the fold name, path-safe)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in fold)


def summarise(results: Sequence[FoldResult], metric_taus: Mapping[str, Mapping[str, float]] | None = None,
              *, label: str = "", epochs: float | None = None) -> dict:
    """Per-fold and mean figures of a study (see `domain_holdout_study`)."""
    mean_curve = _mean_curve(results)
    peak_epoch, peak_tau = max(mean_curve, key=lambda point: point[1])
    folds = []
    for fold in results:
        taus = [tau for _, _, tau in fold.curve]
        at_peak = {round(e, 6): t for _, e, t in fold.curve}.get(round(peak_epoch, 6))
        row = {"fold": fold.name, "tasks": len(fold.tasks), "final": taus[-1], "best_on_fold": max(taus),
               "at_mean_peak": at_peak, "seconds": fold.seconds,
               "curve": [list(point) for point in fold.curve]}
        row.update({_rerank_key(k): tau for k, tau in fold.rerank.items() if k > 0})
        for metric, per_task in (metric_taus or {}).items():
            row[metric] = float(np.mean([per_task[t] for t in fold.tasks]))
        folds.append(row)
    rerank_keys = [_rerank_key(k) for k in sorted(results[0].rerank) if k > 0]
    mean = {key: float(np.mean([f[key] for f in folds]))
            for key in ("final", "best_on_fold", "at_mean_peak", *rerank_keys, *(metric_taus or {}))}
    return {"label": label, "epochs": epochs, "folds": folds, "mean": mean, "rerank": rerank_keys,
            "mean_curve": [list(p) for p in mean_curve], "mean_curve_peak": {"epoch": peak_epoch, "tau": peak_tau},
            "metrics": list(metric_taus or {})}


def _rerank_key(k: int) -> str:
    return f"stage 2, k={k}"


def markdown_report(summary: dict) -> str:
    metrics = summary["metrics"]
    header = ["fold (held-out domain group)", "tasks", "ranker, last step",
              f"ranker at epoch {summary['mean_curve_peak']['epoch']:g} (mean-curve peak)",
              "ranker, best step of the fold (OPTIMISTIC)", *(f"{k} (best step)" for k in summary["rerank"]),
              *metrics]
    lines = [f"## Leave-one-domain-group-out validation{': ' + summary['label'] if summary['label'] else ''}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]

    def cells(row):
        return [f"{row['final']:.3f}", f"{row['at_mean_peak']:.3f}", f"{row['best_on_fold']:.3f}",
                *(f"{row[k]:.3f}" for k in summary["rerank"]), *(f"{row[m]:.3f}" for m in metrics)]

    for row in summary["folds"]:
        lines.append(f"| {row['fold']} | {row['tasks']} | " + " | ".join(cells(row)) + " |")
    total = sum(row["tasks"] for row in summary["folds"])
    lines.append(f"| **mean over folds** | {total} | " + " | ".join(f"**{c}**" for c in cells(summary["mean"])) + " |")
    curve = ", ".join(f"{e:g}: {t:.3f}" for e, t in summary["mean_curve"][:: max(1, len(summary["mean_curve"]) // 10)])
    lines += ["", "Weighted tau (raw form) against the training tasks' fine-tuning accuracy, mean over each fold's "
              "held-out tasks. Every fold's ranker is trained on the tasks that touch none of its domains. "
              "The best step of a fold is chosen on that fold's own tasks, so it is optimistic; the "
              "mean-curve peak is one epoch for all folds. Stage 2 re-ranks each task's stage-1 top-k "
              "PTMs with their own prototypes (best step); k = the zoo size re-ranks every PTM, which runs "
              "every PTM on the task as the metrics do.", "",
              f"Mean validation curve over folds (epoch: tau): {curve}.", ""]
    return "\n".join(lines)


def plot(summary: dict, path: str | os.PathLike) -> None:
    """Validation curves per fold and their mean, with the metrics' fold means as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in summary["folds"]:
        epochs = [p[1] for p in row["curve"]]
        ax.plot(epochs, [p[2] for p in row["curve"]], lw=0.8, alpha=0.45, label=row["fold"])
    ax.plot([p[0] for p in summary["mean_curve"]], [p[1] for p in summary["mean_curve"]], color="black", lw=2,
            label="ranker, mean over folds")
    for index, metric in enumerate(summary["metrics"]):
        ax.axhline(summary["mean"][metric], color=f"C{index + 7}", ls="--", lw=1.2, label=f"{metric}, mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted tau on the held-out domain group")
    ax.set_title("Model Spider on unseen task domains (training tasks only)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    tmp = pathlib.Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
