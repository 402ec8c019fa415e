"""Synthetic Model Spider data with a planted ranking rule (for tests, smoke runs and demos).

Each task t has a latent "domain" vector z_t in R^r. Its generic class prototypes are
z_t mapped to Dg plus class noise, so their mean reveals z_t; each PTM m has a hidden affinity a_m
and its accuracy on task t is 60 + 10 * <a_m, z_t> + noise. PTM m's own prototypes are a random
linear image of the generic ones, plus a PTM-specific offset proportional to its accuracy (so
stage-2 tokens carry extra signal). A ranker that learns z_t -> ranking beats any constant ranking.
"""

from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from mspider_jax.spider import prototypes as prototypes_lib


def synthetic_tasks(num_tasks: int, model_dims: Sequence[int], *, generic_dim: int = 12,
                    class_range: tuple[int, int] = (3, 9), latent_dim: int = 3, seed: int = 0,
                    prefix: str = "task") -> tuple[list[prototypes_lib.TaskPrototypes], np.ndarray]:
    """Returns (tasks with generic and per-model prototypes, accuracy [T, M] in percent).

    The zoo (affinities, projections) depends only on `model_dims` and a fixed seed, so calls with
    different `seed`s give different tasks of the SAME zoo (e.g. training tasks and targets).
    """
    zoo_rng = np.random.default_rng([len(model_dims), generic_dim, latent_dim, 7])
    affinity = zoo_rng.normal(size=(len(model_dims), latent_dim))
    embed = zoo_rng.normal(size=(latent_dim, generic_dim))
    views = [zoo_rng.normal(size=(generic_dim, dim)) / np.sqrt(generic_dim) for dim in model_dims]
    offsets = [zoo_rng.normal(size=dim) for dim in model_dims]
    rng = np.random.default_rng(seed)
    tasks, accuracy = [], np.zeros((num_tasks, len(model_dims)))
    for t in range(num_tasks):
        latent = rng.normal(size=latent_dim)
        accuracy[t] = 60.0 + 10.0 * affinity @ latent + rng.normal(scale=0.5, size=len(model_dims))
        num_classes = int(rng.integers(class_range[0], class_range[1] + 1))
        generic = latent @ embed + 0.5 * rng.normal(size=(num_classes, generic_dim))
        per_model = {
            f"m{m}": generic @ views[m] + 0.02 * (accuracy[t, m] - 60.0) * offsets[m]
            for m in range(len(model_dims))
        }
        per_model = {m: p.astype(np.float32) for m, p in per_model.items()}
        tasks.append(prototypes_lib.TaskPrototypes(f"{prefix}{t}", generic.astype(np.float32),
                                                   np.full(num_classes, 10, np.int64), per_model))
    return tasks, accuracy


def write_ground_truth_csv(path: str | os.PathLike, task_names: Sequence[str],
                           model_names: Sequence[str], accuracy: np.ndarray) -> None:
    """Long CSV `dataset,model,accuracy`; NaN entries are left out (missing labels)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "model", "accuracy"])
        for t, task in enumerate(task_names):
            for m, model in enumerate(model_names):
                if not np.isnan(accuracy[t, m]):
                    writer.writerow([task, model, f"{accuracy[t, m]:.4f}"])


def write_synthetic_zoo(directory: str | os.PathLike, *, model_dims: Sequence[int] = (6, 8, 5, 7),
                        num_train: int = 10, num_targets: int = 3,
                        generic_dim: int = 12) -> dict[str, str]:
    """Writes train/target prototype banks and ground-truth CSVs; returns paths and the zoo."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    models = [f"m{m}" for m in range(len(model_dims))]
    paths = {"models": ",".join(models)}
    for split, count, seed in (("train", num_train, 1), ("targets", num_targets, 2)):
        tasks, accuracy = synthetic_tasks(count, model_dims, generic_dim=generic_dim, seed=seed,
                                          prefix="train" if split == "train" else "target")
        paths[f"{split}_bank"] = str(directory / f"{split}.npz")
        paths[f"{split}_ground_truth"] = str(directory / f"{split}.csv")
        prototypes_lib.save_prototype_bank(paths[f"{split}_bank"], tasks, dtype=np.float32)
        write_ground_truth_csv(paths[f"{split}_ground_truth"], [t.name for t in tasks], models,
                               accuracy)
    return paths
