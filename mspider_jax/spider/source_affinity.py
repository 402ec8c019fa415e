"""Source affinity: how close a task is to each PTM's pretraining data, in the generic encoder's space.

A stage-1 signal: it needs the task's generic prototypes only (no PTM forward pass) and no training
on tasks. It was meant for task domains no training task covers, where the learned ranker falls
behind the metrics (`domain_holdout`). On the mini zoo it raised the unseen-domain folds of the
training tasks (fold rankers 0.632 -> 0.799 with the prior at weight 1) but lowered the 8 targets
(0.699 -> 0.584 at stage 1): the folds' tasks are made of the PTMs' own pretraining data, the targets
are not. So `SourceAffinityPrior` is opt-in (`config.prior`), off by default.

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

import dataclasses
import os
import pathlib
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mspider_jax.evaluation.measures import weighted_tau
from mspider_jax.spider import coverage


def max_cosine_affinity(task_prototypes: np.ndarray, source_prototypes: np.ndarray) -> float:
    """Mean over the task's classes of the largest cosine similarity to a source class.

    Args:
      task_prototypes: [C, D] the task's class prototypes.
      source_prototypes: [S, D] the source's class prototypes.
    """
    task, source = np.asarray(task_prototypes), np.asarray(source_prototypes)
    if task.ndim != 2 or source.ndim != 2 or task.shape[1] != source.shape[1]:
        raise ValueError(f"prototypes must be [C, D] and [S, D] with the same D, got {task.shape} and {source.shape}")
    return float(coverage.class_coverage(task, source).mean())


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


# ------------------------------------------------------------------------------------------------
# The prior added to a trained ranker's scores.


@dataclasses.dataclass(frozen=True)
class SourceAffinityPrior:
    """weight · (standardise(source affinity) + group prior), added to a ranker's scores / scale.

    Attributes:
      model_sources: [M] pretraining source of each model (zoo order).
      source_prototypes: source -> [S, Dg] generic prototypes of its pretraining data.
      group_prior: [M] `group_prior` of the models' groups on the training tasks.
      weight: the prior's weight (1.0 was best on the mini zoo's unseen-domain folds).
      scale: the ranker's typical score spread (mean over the training tasks of the per-task std of
        its stage-1 scores), which puts its scores on the prior's standardised scale with one
        constant, so that stage-1 and stage-2 scores stay comparable.
    """

    model_sources: tuple[str, ...]
    source_prototypes: Mapping[str, np.ndarray]
    group_prior: np.ndarray
    weight: float
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_sources", tuple(self.model_sources))
        object.__setattr__(self, "group_prior", np.asarray(self.group_prior, np.float64))
        if self.group_prior.shape != (len(self.model_sources),):
            raise ValueError(f"group_prior must be [{len(self.model_sources)}], got {self.group_prior.shape}")
        missing = sorted(set(self.model_sources) - set(self.source_prototypes))
        if missing:
            raise ValueError(f"no source prototypes for {missing}")
        if not (np.isfinite(self.scale) and self.scale > 0 and np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"scale must be > 0 and weight >= 0, got scale={self.scale}, weight={self.weight}")

    def prior(self, generic_prototypes: np.ndarray) -> np.ndarray:
        """[M] weight · (standardise(affinity) + group prior) of a task's generic prototypes [C, Dg]."""
        affinity = affinity_scores(generic_prototypes, self.model_sources, self.source_prototypes)
        return self.weight * (standardise(affinity) + self.group_prior)

    def fuse(self, scores: np.ndarray, generic: np.ndarray, generic_mask: np.ndarray) -> np.ndarray:
        """Ranker scores [B, M] of a padded batch (generic [B, P, Dg], generic_mask [B, P]) -> fused
        [B, M]; padding tasks (no prototype) get the ranker's scores / scale."""
        fused = np.asarray(scores, np.float64) / self.scale
        for row in range(fused.shape[0]):
            if generic_mask[row].any():
                fused[row] += self.prior(np.asarray(generic[row])[np.asarray(generic_mask[row])])
        return fused

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the prior as an npz (atomically)."""
        from mspider_jax.evaluation import _io

        return _io.write_npz_atomic(path, {
            "model_sources": np.array(self.model_sources), "group_prior": self.group_prior,
            "weight": np.float64(self.weight), "scale": np.float64(self.scale),
            **{f"source/{s}": np.asarray(p, np.float32) for s, p in self.source_prototypes.items()}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SourceAffinityPrior":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(model_sources=tuple(str(s) for s in data["model_sources"]),
                           source_prototypes={k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("source/")},
                           group_prior=data["group_prior"], weight=float(data["weight"]), scale=float(data["scale"]))
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable source-affinity prior ({err})") from err


@dataclasses.dataclass(frozen=True)
class AffinityPriorRanker:
    """A trained ranker (or ensemble) whose scores get a `SourceAffinityPrior` (`rank.score_batch`)."""

    ranker: Any
    prior: SourceAffinityPrior

    def __post_init__(self) -> None:
        if len(self.prior.model_sources) != self.ranker.num_models:
            raise ValueError(f"prior of {len(self.prior.model_sources)} models for a ranker of {self.ranker.num_models}")

    @property
    def num_models(self) -> int:
        return self.ranker.num_models

    @property
    def generic_dim(self) -> int:
        return self.ranker.generic_dim

    @property
    def model_dims(self) -> tuple[int, ...]:
        return self.ranker.model_dims


def fit_prior(stage1_training_scores: np.ndarray, training_performance: np.ndarray,
              model_sources: Sequence[str], model_groups: Sequence[str],
              source_prototypes: Mapping[str, np.ndarray], weight: float) -> SourceAffinityPrior:
    """The prior of a trained ranker from its stage-1 scores [T, M] on the training tasks and their
    ground truth [T, M] (tasks with a missing value are left out of the group prior)."""
    performance = np.asarray(training_performance, np.float64)
    complete = np.all(np.isfinite(performance), axis=1)
    if not complete.any():
        raise ValueError("no training task has the ground truth of every model")
    scale = float(np.mean(np.std(np.asarray(stage1_training_scores, np.float64), axis=1)))
    return SourceAffinityPrior(tuple(model_sources), dict(source_prototypes),
                               group_prior(performance[complete], model_groups), float(weight), scale)


def load_source_prototypes(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{source: [S, Dg]} from an npz with one array per source."""
    with np.load(path, allow_pickle=False) as data:
        return {name: np.asarray(data[name], np.float64) for name in data.files}


def fusion_fold_study(config: Any, fold_runs: str | os.PathLike, folds: Mapping[str, Sequence[str]],
                      model_sources: Sequence[str], model_groups: Sequence[str],
                      source_prototypes: Mapping[str, np.ndarray], weights: Sequence[float]) -> dict:
    """The fold rankers of a domain-holdout study (`fold_runs`/<fold>, `domain_holdout`) with the prior
    added at each weight: mean weighted tau over each fold's held-out tasks of stage-1 scores / spread
    + weight · (standardise(affinity) + group prior), spread and group prior from the fold's training
    tasks, as `fit_prior` and `SourceAffinityPrior.fuse` do for a shipped ranker.

    Returns {"folds": {fold: {weight: tau}}, "mean": {weight: mean over folds}} (weight 0: the ranker alone).
    """
    from mspider_jax import checkpointing
    from mspider_jax.spider import domain_holdout
    from mspider_jax.spider import rank as rank_lib
    from mspider_jax.spider import train_lib

    results: dict[str, dict[float, float]] = {}
    for fold, held_out in folds.items():
        run = pathlib.Path(fold_runs) / domain_holdout.fold_dirname(fold)
        data = train_lib.load_data(domain_holdout.fold_config(config, held_out))
        ranker, run_config = checkpointing.load_ranker(run, with_prior=False)
        scoring = train_lib.scoring_options(run_config, data, int(run_config.model.specific_length))
        stage1 = rank_lib.score_tasks(ranker, data.val, **scoring)
        training_scores = rank_lib.score_tasks(ranker, data.train, **scoring)
        priors = {w: fit_prior(training_scores, data.train.performance, model_sources, model_groups,
                               source_prototypes, w) for w in weights}
        results[fold] = {}
        for weight, prior in priors.items():
            taus = [weighted_tau(data.val.performance[i], stage1[i] / prior.scale + prior.prior(task.generic))
                    for i, task in enumerate(data.val.tasks)]
            results[fold][float(weight)] = float(np.mean(taus))
    mean = {float(w): float(np.mean([r[float(w)] for r in results.values()])) for w in weights}
    return {"folds": results, "mean": mean}
