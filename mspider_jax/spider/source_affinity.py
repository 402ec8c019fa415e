"""Source affinity: how close a task is to each PTM's pretraining data, in the generic encoder's space.

A stage-1 signal (it needs the task's generic prototypes only, no PTM forward pass) that needs no
training on tasks and so carries over to task domains no training task covers, which is where the
learned ranker falls behind the metrics (`domain_holdout`).

Domain similarity as a transferability estimate goes back to Cui et al., "Large Scale Fine-Grained
Categorization and Domain-Specific Transfer Learning" (CVPR 2018), who compare a source and a target
domain by an earth mover's distance between their class-mean features. Here:

* affinity(task, source) = mean over the task's class prototypes of their largest cosine similarity
  to the source's class prototypes (both generic-encoder class means);
* a PTM's affinity is that of its pretraining source; models sharing a source tie;
* `group_prior`: what the training tasks say about a group of models (an architecture): the mean,
  over tasks and over the group's models, of the per-task standardised accuracy. It breaks the ties
  between the architectures of one source;
* the combined score is standardise(affinity) + group prior.

`fold_study` measures these on the leave-one-domain-group-out folds of `domain_holdout` (the group
prior learnt on the tasks outside the fold), so that the numbers compare with the ranker's and the
metrics' out-of-domain figures on the same held-out training tasks, without the targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mspider_jax.evaluation.measures import weighted_tau


def max_cosine_affinity(task_prototypes: np.ndarray, source_prototypes: np.ndarray) -> float:
    """Mean over the task's classes of the largest cosine similarity to a source class.

    Args:
      task_prototypes: [C, D] the task's class prototypes.
      source_prototypes: [S, D] the source's class prototypes.
    """
    task = np.asarray(task_prototypes, np.float64)
    source = np.asarray(source_prototypes, np.float64)
    if task.ndim != 2 or source.ndim != 2 or task.shape[1] != source.shape[1]:
        raise ValueError(f"prototypes must be [C, D] and [S, D] with the same D, got {task.shape} and {source.shape}")
    norms = np.linalg.norm(task, axis=1, keepdims=True), np.linalg.norm(source, axis=1, keepdims=True)
    if not (np.all(norms[0] > 0) and np.all(norms[1] > 0)):
        raise ValueError("a prototype is zero: its cosine similarity is undefined")
    cosine = (task / norms[0]) @ (source / norms[1]).T
    return float(cosine.max(axis=1).mean())


def affinity_scores(task_prototypes: np.ndarray, model_sources: Sequence[str],
                    source_prototypes: Mapping[str, np.ndarray]) -> np.ndarray:
    """[M] affinity of the task to each model's pretraining source (`model_sources[m]`)."""
    missing = sorted(set(model_sources) - set(source_prototypes))
    if missing:
        raise ValueError(f"no source prototypes for {missing}; have {sorted(source_prototypes)}")
    by_source = {s: max_cosine_affinity(task_prototypes, source_prototypes[s]) for s in set(model_sources)}
    return np.array([by_source[s] for s in model_sources])


def standardise(values: np.ndarray) -> np.ndarray:
    """(v - mean) / std over the last axis; a constant vector becomes zeros."""
    values = np.asarray(values, np.float64)
    spread = values.std(axis=-1, keepdims=True)
    return (values - values.mean(axis=-1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def group_prior(accuracies: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """[M]: for each model, the mean standardised accuracy of its group's models over the tasks.

    Args:
      accuracies: [T, M] accuracy of every model on each training task.
      groups: [M] the group of each model (e.g. its architecture).
    """
    accuracies = np.asarray(accuracies, np.float64)
    if accuracies.ndim != 2 or accuracies.shape[1] != len(groups) or accuracies.shape[0] == 0:
        raise ValueError(f"accuracies must be [T >= 1, {len(groups)}], got {accuracies.shape}")
    per_model = standardise(accuracies).mean(axis=0)
    names = np.asarray(groups)
    return np.array([per_model[names == g].mean() for g in groups])


def fold_study(task_prototypes: Mapping[str, np.ndarray], accuracies: Mapping[str, np.ndarray],
               model_sources: Sequence[str], model_groups: Sequence[str],
               source_prototypes: Mapping[str, np.ndarray], folds: Mapping[str, Sequence[str]]) -> dict:
    """Mean weighted tau of the affinity rankings over each fold's held-out tasks.

    Args:
      task_prototypes: task -> [C, Dg] generic prototypes.
      accuracies: task -> [M] fine-tuning accuracy of the zoo (the ground truth).
      model_sources, model_groups: [M] each model's pretraining source and group (architecture).
      source_prototypes: source -> [S, Dg] generic prototypes of its pretraining data.
      folds: fold -> its held-out tasks (`domain_holdout.minizoo_domain_folds`).

    Returns:
      {"folds": {fold: {"tasks": n, method: mean tau}}, "mean": {method: mean over folds}} with methods
      "affinity", "group prior", "affinity + group prior"; the group prior of a fold is learnt on the
      tasks outside it.
    """
    methods = ("affinity", "group prior", "affinity + group prior")
    results: dict[str, dict] = {}
    for fold, held_out in folds.items():
        held = set(held_out)
        unknown = sorted(held - set(accuracies))
        if unknown:
            raise ValueError(f"fold {fold!r}: no ground truth for {unknown[:3]}")
        rest = [t for t in accuracies if t not in held]
        if not rest:
            raise ValueError(f"fold {fold!r} holds out every task")
        prior = group_prior(np.stack([accuracies[t] for t in rest]), model_groups)
        taus = {m: [] for m in methods}
        for task in held_out:
            affinity = standardise(affinity_scores(task_prototypes[task], model_sources, source_prototypes))
            truth = accuracies[task]
            taus["affinity"].append(weighted_tau(truth, affinity))
            taus["group prior"].append(weighted_tau(truth, prior))
            taus["affinity + group prior"].append(weighted_tau(truth, affinity + prior))
        results[fold] = {"tasks": len(held_out), **{m: float(np.mean(v)) for m, v in taus.items()}}
    mean = {m: float(np.mean([r[m] for r in results.values()])) for m in methods}
    return {"folds": results, "mean": mean}


def markdown_report(summary: Mapping, extra_columns: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """A table: one row per fold and the mean; `extra_columns` adds columns {name: {fold: tau}}
    (e.g. the ranker's or a metric's figures on the same folds)."""
    extra_columns = dict(extra_columns or {})
    methods = list(summary["mean"])
    header = ["fold", "tasks", *methods, *extra_columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    for fold, row in summary["folds"].items():
        extra = [f"{extra_columns[c][fold]:.3f}" if fold in extra_columns[c] else "-" for c in extra_columns]
        lines.append(f"| {fold} | {row['tasks']} | " + " | ".join(f"{row[m]:.3f}" for m in methods) +
                     ("" if not extra else " | " + " | ".join(extra)) + " |")
    extra_mean = [f"{np.mean(list(extra_columns[c].values())):.3f}" for c in extra_columns]
    lines.append("| **mean over folds** | | " + " | ".join(f"**{summary['mean'][m]:.3f}**" for m in methods) +
                 ("" if not extra_mean else " | " + " | ".join(extra_mean)) + " |")
    return "\n".join(lines)
