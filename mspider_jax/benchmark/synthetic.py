"""A tiny synthetic benchmark (feature store + ground truth + training tasks) for smoke runs and tests.

`mspider benchmark --config configs/benchmark_minizoo.py:smoke` runs the whole benchmark on it in
seconds: every stage (metrics, Model Spider training and ranking, evaluation, report) sees the same
kinds of inputs as on a real zoo, only small.

Generative model (a planted ranking rule, so that every method has something to find):
  * The zoo has M PTMs `m<i>` with hidden affinities a_m in R^r and feature maps V_m [B, d_m].
  * A task t has a latent domain z_t in R^r and C class centres mu_c in R^B. PTM m's quality on it is
    q_tm = sigmoid(<a_m, z_t>), and its ground-truth accuracy 40 + 50 q_tm + N(0, 1) (percent).
  * PTM m's feature of a sample of class c is ((0.3 + 2 q_tm) mu_c + e) V_m + 0.1 e', e, e' ~ N(0, I):
    a better PTM separates the classes more, which is what transferability metrics measure. Its
    logits are the features times a fixed random source head [d_m, Cs].
  * The generic encoder's feature is z_t E + mu_c G + 0.3 e (Dg dims): its class prototypes reveal
    the domain z_t, from which a ranker can learn the ranking.
Targets are written to a `FeatureStore` (datasets `syn_<i>`, split "train", models m<i> + "generic");
the ranker's training tasks are class prototypes in a prototype bank (`spider.prototypes`), drawn
from the same zoo with another seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

GENERIC = "generic"
SOURCE_CLASSES = 5
_DONE = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticZoo:
    """The fixed part of the generative model (see the module docstring)."""

    affinity: np.ndarray        # [M, r]
    views: tuple[np.ndarray, ...]  # M x [B, d_m]
    heads: tuple[np.ndarray, ...]  # M x [d_m, Cs]
    domain_embed: np.ndarray    # [r, Dg]
    class_embed: np.ndarray     # [B, Dg]

    @property
    def model_names(self) -> list[str]:
        return [f"m{m}" for m in range(len(self.views))]


def make_zoo(model_dims: tuple[int, ...] = (6, 8, 8, 5), *, generic_dim: int = 12,
             base_dim: int = 8, latent_dim: int = 3, seed: int = 0) -> SyntheticZoo:
    rng = np.random.default_rng([seed, 17])
    return SyntheticZoo(
        affinity=2.0 * rng.normal(size=(len(model_dims), latent_dim)),
        views=tuple(rng.normal(size=(base_dim, d)) / np.sqrt(base_dim) for d in model_dims),
        heads=tuple(rng.normal(size=(d, SOURCE_CLASSES)) for d in model_dims),
        domain_embed=rng.normal(size=(latent_dim, generic_dim)),
        class_embed=rng.normal(size=(base_dim, generic_dim)) / np.sqrt(base_dim))


def sample_task(zoo: SyntheticZoo, rng: np.random.Generator, *, num_classes: int,
                per_class: int) -> dict:
    """One task: labels [N], generic [N, Dg], per-model features [N, d_m] and logits, accuracy [M]."""
    latent = rng.normal(size=zoo.affinity.shape[1])
    quality = 1.0 / (1.0 + np.exp(-zoo.affinity @ latent))
    accuracy = 40.0 + 50.0 * quality + rng.normal(size=quality.shape)
    centres = rng.normal(size=(num_classes, zoo.views[0].shape[0]))
    labels = np.repeat(np.arange(num_classes), per_class)
    generic = (latent @ zoo.domain_embed + centres[labels] @ zoo.class_embed
               + 0.3 * rng.normal(size=(labels.size, zoo.class_embed.shape[1])))
    features, logits = {}, {}
    for m, name in enumerate(zoo.model_names):
        base = (0.3 + 2.0 * quality[m]) * centres[labels] + rng.normal(size=(labels.size,
                                                                            centres.shape[1]))
        feats = base @ zoo.views[m] + 0.1 * rng.normal(size=(labels.size, zoo.views[m].shape[1]))
        features[name] = feats.astype(np.float32)
        logits[name] = (feats @ zoo.heads[m]).astype(np.float32)
    return dict(labels=labels.astype(np.int64), generic=generic.astype(np.float32),
                features=features, logits=logits, accuracy=accuracy)


def _write_ground_truth(path: pathlib.Path, rows: list[tuple[str, str, float]]) -> None:
    from mspider_jax.evaluation._io import write_csv_atomic

    write_csv_atomic(path, ["dataset", "model", "accuracy"],
                     [[dataset, model, f"{value:.4f}"] for dataset, model, value in rows])


def write_synthetic_benchmark(directory: str | os.PathLike, *, num_targets: int = 3,
                              num_training_tasks: int = 12, num_classes: int = 4,
                              per_class: int = 25, seed: int = 0) -> dict[str, str]:
    """Writes the synthetic benchmark into `directory` (kept if already complete).

    Returns:
      Paths: store (feature store root), ground_truth (targets' CSV), training_bank (prototype
      bank .npz), training_ground_truth (CSV), models (comma-separated zoo order), datasets
      (comma-separated target datasets).
    """
    from mspider_jax.features import FeatureStore
    from mspider_jax.spider import prototypes as prototypes_lib

    directory = pathlib.Path(directory).absolute()
    done = directory / _DONE
    options = dict(num_targets=num_targets, num_training_tasks=num_training_tasks,
                   num_classes=num_classes, per_class=per_class, seed=seed)
    zoo = make_zoo(seed=seed)
    # Paths are derived from `directory` (never stored), so a copied directory is self-contained.
    paths = dict(store=str(directory / "store"), ground_truth=str(directory / "targets.csv"),
                 training_bank=str(directory / "training_tasks.npz"),
                 training_ground_truth=str(directory / "training.csv"),
                 models=",".join(zoo.model_names),
                 datasets=",".join(f"syn_{t}" for t in range(num_targets)))
    if done.is_file():
        recorded = json.loads(done.read_text())["options"]
        if recorded == options:
            return paths
        raise ValueError(f"{directory} holds a synthetic benchmark made with other options "
                         f"{recorded}; use another directory")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    store = FeatureStore(directory / "store")
    datasets, target_rows = [], []
    for t in range(num_targets):
        dataset = f"syn_{t}"
        task = sample_task(zoo, rng, num_classes=num_classes, per_class=per_class)
        provenance = {"dataset_source": "synthetic", "weights": "synthetic"}
        store.write(dataset, "train", GENERIC, features=task["generic"], labels=task["labels"],
                    provenance=provenance, overwrite=True)
        for m, model in enumerate(zoo.model_names):
            store.write(dataset, "train", model, features=task["features"][model],
                        labels=task["labels"], logits=task["logits"][model],
                        provenance=provenance, overwrite=True)
            target_rows.append((dataset, model, float(task["accuracy"][m])))
        datasets.append(dataset)
    train_rng = np.random.default_rng([seed, 2])
    bank, train_rows = [], []
    for t in range(num_training_tasks):
        name = f"syntask{t}"
        classes = int(train_rng.integers(3, 7))
        task = sample_task(zoo, train_rng, num_classes=classes, per_class=per_class)
        generic, counts = prototypes_lib.class_prototypes(task["generic"], task["labels"], classes)
        per_model = {model: prototypes_lib.class_prototypes(task["features"][model],
                                                            task["labels"], classes)[0]
                     for model in zoo.model_names}
        bank.append(prototypes_lib.TaskPrototypes(name, generic, counts, per_model))
        train_rows += [(name, model, float(task["accuracy"][m]))
                       for m, model in enumerate(zoo.model_names)]
    _write_ground_truth(pathlib.Path(paths["ground_truth"]), target_rows)
    _write_ground_truth(pathlib.Path(paths["training_ground_truth"]), train_rows)
    prototypes_lib.save_prototype_bank(paths["training_bank"], bank, dtype=np.float32)
    from mspider_jax.evaluation._io import write_text_atomic

    write_text_atomic(done, json.dumps({"options": options}, indent=1))  # written last: complete
    return paths
