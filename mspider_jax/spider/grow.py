"""Adding PTMs to a trained Model Spider ranker without retraining it (issue 7).

In Model Spider (Zhang et al., NeurIPS 2023; spec model_spider.md §3.1) a PTM is known to the ranker
only through its learned token theta_m and, for stage 2, its own projection (W_m, b_m). Everything
else (generic projection, attention block, head) is shared by all PTMs. So a PTM can join a trained
zoo by learning just those rows:

1. `grow_ranker` builds a ranker of M + n models. Every parameter of the old ranker is copied
   bit-identically. Parameters that do not depend on the zoo are copied whole. Per-model parameters
   (leading axis M, e.g. tokens [M, W], projections [M, Dmax, W] and [M, W]) keep the old values in
   their first M rows (and in the old Dmax columns; the extra columns of old models are zero, as
   the projection's zero padding requires). The n new rows are initialised as training initialises
   them (theta ~ N(0, 1), projection U(+-1/sqrt(d_m))).
2. `fit_new_models` trains only the new rows. The trainable pytree holds the n new rows of each
   per-model parameter. Inside the loss the full parameters are assembled as
   `frozen.at[M:].set(new_rows)`, so no gradient and no optimiser state ever touches the old
   parameters (they stay bit-identical, which the tests check). The data are the training tasks
   where at least one new PTM has a label; the loss is the run's ranking loss over all labelled
   PTMs. The old PTMs' scores do not depend on the new rows, so they serve as fixed reference
   points that the new PTMs are placed among.
   Each batch enriches the old PTMs as in training (k ~ U{k_min..k_max} PTMs with their own
   tokens) and each new PTM independently with probability `enrich_probability`: a new PTM's
   projection only learns from batches that contain its own prototypes, and at the training rate
   (about k/M) it would rarely see them.
   Adam, cosine decay from `lr` to `final_lr`; with `val` tasks, the epoch with the best mean
   validation weighted tau (stage 1) is kept.
3. `add_models_to_run` does both for a training workdir and writes a new workdir (new checkpoint,
   config with the grown zoo, results on the run's targets).

Rankers with PTM metadata (`model_metadata`, optional): the new PTMs' metadata rows are required and
appended; the metadata projection is shared, so it stays frozen.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mspider_jax.spider import data as data_lib
from mspider_jax.spider import evaluate as evaluate_lib
from mspider_jax.spider import losses as losses_lib
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import rank as rank_lib
from mspider_jax.spider import tokens as tokens_lib
from mspider_jax.spider import train_lib


@dataclasses.dataclass(frozen=True)
class GrowOptions:
    """How the new PTMs' rows are fitted (module docstring, step 2).

    `add_models_to_run` takes k_min, k_max, the loss and the label kind from the run's config.
    """

    epochs: int = 60
    batch_size: int = 16
    lr: float = 3e-2
    final_lr: float = 1e-3
    enrich_probability: float = 0.5
    k_min: int = 0
    k_max: int = 10
    loss: str = "plackett_luce"
    label_kind: str = "rank"
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if not 0.0 <= self.enrich_probability <= 1.0:
            raise ValueError(f"enrich_probability must be in [0, 1], got {self.enrich_probability}")
        if self.lr <= 0 or self.final_lr <= 0:
            raise ValueError(f"learning rates must be > 0, got {self.lr}, {self.final_lr}")


@dataclasses.dataclass
class GrowResult:
    """A ranker grown from M to M + n PTMs.

    Attributes:
      ranker: the grown ranker (old parameters bit-identical, new rows fitted).
      model_kwargs: its constructor arguments (for `checkpointing.save_ranker`).
      model_names: [M + n] its zoo (the old order, then the new PTMs).
      history: one record per epoch: loss, and val_weighted_tau when validation tasks are given.
      best_epoch: the epoch whose rows were kept (the last one without validation tasks).
      seconds: wall time of the fit (compilation included).
      num_tasks: training tasks with a label for at least one new PTM.
    """

    ranker: model_lib.Ranker
    model_kwargs: dict
    model_names: list[str]
    history: list[dict]
    best_epoch: int
    seconds: float
    num_tasks: int


def _params(ranker: model_lib.Ranker) -> dict:
    return nnx.to_pure_dict(nnx.split(ranker)[1])


def grown_kwargs(model_kwargs: dict, new_model_dims: Sequence[int],
                 new_metadata: Sequence[Sequence[float]] | None = None) -> dict:
    """Constructor arguments of the ranker with n more PTMs (appended after the old ones)."""
    kwargs = copy.deepcopy(dict(model_kwargs))
    num_old, num_new = int(kwargs["num_models"]), len(new_model_dims)
    if num_new < 1:
        raise ValueError("no new models to add")
    if min(new_model_dims) < 1:
        raise ValueError(f"feature dims must be positive, got {list(new_model_dims)}")
    kwargs["num_models"] = num_old + num_new
    kwargs["model_dims"] = [int(d) for d in kwargs["model_dims"]] + [int(d) for d in new_model_dims]
    if kwargs.get("model_metadata") is not None:
        if new_metadata is None or len(new_metadata) != num_new:
            raise ValueError(f"this ranker uses PTM metadata: give {num_new} metadata rows for the "
                             "new models")
        kwargs["model_metadata"] = [list(row) for row in kwargs["model_metadata"]] + [
            [float(v) for v in row] for row in new_metadata]
    elif new_metadata is not None:
        raise ValueError("new_metadata given, but this ranker has no PTM metadata")
    if kwargs.get("learned_models") is not None:
        kwargs["learned_models"] = list(kwargs["learned_models"]) + [True] * num_new
    return kwargs


def grow_ranker(ranker: model_lib.Ranker, model_kwargs: dict, new_model_dims: Sequence[int], *,
                new_metadata: Sequence[Sequence[float]] | None = None,
                seed: int = 0) -> tuple[model_lib.Ranker, dict, tuple[str, ...]]:
    """Step 1 of the module docstring: the ranker with n more PTMs, old parameters copied.

    Args:
      ranker: the trained ranker of M PTMs; model_kwargs: its constructor arguments.
      new_model_dims: [n] feature dims of the new PTMs.
      seed: initialisation of the new rows.

    Returns:
      (grown ranker, its constructor arguments, the key paths (`jax.tree_util.keystr`) of the
      per-model parameters whose rows M.. are new).
    """
    kwargs = grown_kwargs(model_kwargs, new_model_dims, new_metadata)
    num_old = int(model_kwargs["num_models"])
    if ranker.num_models != num_old:
        raise ValueError(f"model_kwargs say {num_old} models, the ranker has {ranker.num_models}")
    fresh = model_lib.Ranker(**kwargs, rngs=nnx.Rngs(params=seed))
    graphdef, _ = nnx.split(fresh)
    old_leaves = dict(jax.tree_util.tree_flatten_with_path(_params(ranker))[0])
    new_flat, treedef = jax.tree_util.tree_flatten_with_path(_params(fresh))
    if set(old_leaves) != {path for path, _ in new_flat}:
        raise ValueError("the ranker's parameters do not match its model_kwargs")
    leaves, grown_paths = [], []
    for path, fresh_leaf in new_flat:
        old = np.asarray(old_leaves[path])
        if old.shape == fresh_leaf.shape:
            leaves.append(jax.numpy.asarray(old))
            continue
        name = jax.tree_util.keystr(path)
        if (old.shape[0] != num_old or fresh_leaf.shape[0] != kwargs["num_models"]
                or len(old.shape) != len(fresh_leaf.shape)
                or any(o > f for o, f in zip(old.shape[1:], fresh_leaf.shape[1:]))):
            raise ValueError(f"parameter {name}: cannot grow {old.shape} to {fresh_leaf.shape}")
        grown = np.array(fresh_leaf)
        grown[tuple(slice(0, size) for size in old.shape)] = old
        leaves.append(jax.numpy.asarray(grown))
        grown_paths.append(name)
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return nnx.merge(graphdef, params), kwargs, tuple(grown_paths)


def _assemble(frozen: Any, trainable: dict[str, jax.Array], num_old: int) -> Any:
    """Full parameters: `frozen` with rows num_old.. of the grown parameters taken from
    `trainable`."""

    def pick(path, leaf):
        name = jax.tree_util.keystr(path)
        return leaf.at[num_old:].set(trainable[name]) if name in trainable else leaf

    return jax.tree_util.tree_map_with_path(pick, frozen)


def _epoch_batches(rng: np.random.Generator, tasks: np.ndarray, batch_size: int):
    order = rng.permutation(tasks)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def fit_new_models(ranker: model_lib.Ranker, grown_paths: Sequence[str], num_old: int,
                   train: data_lib.TaskSet, *, specific_length: int,
                   generic_length: int | None = None, val: data_lib.TaskSet | None = None,
                   options: GrowOptions = GrowOptions(), eval_batch_size: int = 16,
                   loss_fn: losses_lib.LossFn | None = None
                   ) -> tuple[model_lib.Ranker, list[dict], int, int]:
    """Step 2 of the module docstring: fits rows num_old.. of `grown_paths`, the rest frozen.

    Args:
      ranker: the grown ranker (`grow_ranker`); train: tasks in its zoo order.
      specific_length: P_h of the original training; generic_length: padded Pu of the batches
        (default: bucketed over train and val).
      val: tasks for keeping the best epoch (mean stage-1 weighted tau), or None.
      loss_fn: the ranking loss; default `losses.get_loss(options.loss)`.

    Returns:
      (ranker with the fitted rows, history, best epoch, number of training tasks used).
    """
    if train.model_names and len(train.model_names) != ranker.num_models:
        raise ValueError(f"the tasks have {len(train.model_names)} models, the ranker "
                         f"{ranker.num_models}")
    num_new = ranker.num_models - num_old
    labelled_new = ~np.isnan(train.performance[:, num_old:])
    tasks = np.flatnonzero(labelled_new.any(axis=1) & ((~np.isnan(train.performance)).sum(1) >= 2))
    if tasks.size == 0:
        raise ValueError("no training task has a label for any new model (and another label)")
    if generic_length is None:
        generic_length = tokens_lib.bucket_length(
            max(s.max_classes for s in (train, val) if s is not None))
    graphdef, state = nnx.split(ranker)
    frozen = nnx.to_pure_dict(state)
    flat = {jax.tree_util.keystr(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(frozen)[0]}
    trainable = {name: flat[name][num_old:] for name in grown_paths}
    steps_per_epoch = math.ceil(tasks.size / options.batch_size)
    schedule = optax.cosine_decay_schedule(options.lr, options.epochs * steps_per_epoch,
                                           alpha=options.final_lr / options.lr)
    tx = optax.adam(schedule)
    opt_state = tx.init(trainable)
    loss_fn = loss_fn or losses_lib.get_loss(options.loss)

    @jax.jit
    def train_step(trainable, opt_state, frozen, batch, dropout_key):
        def objective(rows):
            params = _assemble(frozen, rows, num_old)
            return train_lib.batch_objective(graphdef, params, batch, dropout_key, loss_fn)

        loss, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    rng = np.random.default_rng([options.seed, 7])
    base_key = jax.random.key(options.seed)
    available = train.has_prototypes()
    scoring = dict(specific_length=specific_length, generic_length=generic_length,
                   batch_size=eval_batch_size)
    history, best, best_rows, best_epoch, step = [], -np.inf, trainable, 0, 0
    start = time.time()
    for epoch in range(options.epochs):
        losses = []
        for indices in _epoch_batches(rng, tasks, options.batch_size):
            old_part = data_lib.sample_enrichment(rng, available[indices, :num_old],
                                                  options.k_min, options.k_max)
            new_part = (rng.random((len(indices), num_new)) < options.enrich_probability) & \
                available[indices, num_old:]
            batch = data_lib.make_batch(
                train, indices, model_dims=ranker.model_dims, specific_length=specific_length,
                label_kind=options.label_kind, batch_size=options.batch_size,
                generic_length=generic_length,
                enriched=np.concatenate([old_part, new_part], axis=1))
            trainable, opt_state, loss = train_step(trainable, opt_state, frozen, batch,
                                                    jax.random.fold_in(base_key, step))
            losses.append(loss)
            step += 1
        record = {"epoch": epoch + 1, "loss": float(np.mean(jax.device_get(losses)))}
        if val is not None:
            candidate = nnx.merge(graphdef, _assemble(frozen, trainable, num_old))
            record["val_weighted_tau"] = evaluate_lib.mean_weighted_tau(
                val.performance, rank_lib.score_tasks(candidate, val, **scoring))
            if record["val_weighted_tau"] > best:
                best, best_rows, best_epoch = record["val_weighted_tau"], trainable, epoch + 1
        history.append(record)
        if (epoch + 1) % 10 == 0 or epoch + 1 == options.epochs:
            rate = (epoch + 1) / max(time.time() - start, 1e-9)
            logging.info("add models: epoch %d/%d loss %.4f%s | ETA %.0f s", epoch + 1,
                         options.epochs, record["loss"],
                         f" val weighted tau {record['val_weighted_tau']:.4f}"
                         if val is not None else "", (options.epochs - epoch - 1) / rate)
    if best_epoch == 0:  # no validation (or it never gave a number): the last epoch
        best_rows, best_epoch = trainable, options.epochs
    fitted = nnx.merge(graphdef, _assemble(frozen, best_rows, num_old))
    return fitted, history, best_epoch, int(tasks.size)


def add_models(ranker: model_lib.Ranker, model_kwargs: dict, model_names: Sequence[str],
               train: data_lib.TaskSet, *, specific_length: int,
               generic_length: int | None = None, val: data_lib.TaskSet | None = None,
               options: GrowOptions = GrowOptions(),
               new_metadata: Sequence[Sequence[float]] | None = None,
               loss_fn: losses_lib.LossFn | None = None) -> GrowResult:
    """Adds the PTMs of `train`'s zoo that the ranker lacks (steps 1 and 2).

    Args:
      ranker, model_kwargs: the trained ranker of the zoo `model_names` (M PTMs) and its
        constructor arguments (checkpoint meta "model").
      train: training tasks whose zoo is `model_names` followed by the new PTMs, with their
        prototypes and labels (the new PTMs' feature dims are read from their prototypes).
      specific_length: P_h of the original training.
      val: validation tasks (same zoo as `train`) for keeping the best epoch, or None.
      new_metadata: the new PTMs' metadata rows, for rankers with PTM metadata.
      loss_fn: the ranking loss; default `losses.get_loss(options.loss)`.
    """
    model_names = list(model_names)
    num_old = len(model_names)
    if list(train.model_names[:num_old]) != model_names or len(train.model_names) <= num_old:
        raise ValueError(f"the tasks' zoo must be the ranker's {num_old} models followed by the "
                         f"new ones; got {list(train.model_names)}")
    if val is not None and val.model_names != train.model_names:
        raise ValueError("val must have the same zoo as train")
    new_names = list(train.model_names[num_old:])
    dims = train.model_dims()
    if val is not None:
        dims = {**val.model_dims(), **dims}
    missing = [name for name in new_names if name not in dims]
    if missing:
        raise ValueError(f"no prototypes of the new models {missing}: their feature dims and "
                         "stage-2 tokens are unknown")
    for m, name in enumerate(model_names):
        if name in dims and dims[name] != ranker.model_dims[m]:
            raise ValueError(f"{name}: feature dim {dims[name]} in the tasks, "
                             f"{ranker.model_dims[m]} in the ranker")
    start = time.time()
    grown, kwargs, grown_paths = grow_ranker(ranker, model_kwargs, [dims[n] for n in new_names],
                                             new_metadata=new_metadata, seed=options.seed)
    fitted, history, best_epoch, num_tasks = fit_new_models(
        grown, grown_paths, num_old, train, specific_length=specific_length,
        generic_length=generic_length, val=val, options=options, loss_fn=loss_fn)
    return GrowResult(fitted, kwargs, model_names + new_names, history, best_epoch,
                      time.time() - start, num_tasks)


def _set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    if leaf not in node:
        raise ValueError(f"unknown config field {dotted!r}")
    node[leaf] = value


def add_models_to_run(checkpoint: str | os.PathLike, new_models: Sequence[str],
                      workdir: str | os.PathLike, *, overrides: dict[str, Any] | None = None,
                      options: GrowOptions = GrowOptions(), evaluate: bool = True,
                      new_metadata: Sequence[Sequence[float]] | None = None) -> dict:
    """Adds PTMs to a trained run and writes a new run (step 3 of the module docstring).

    The run's own data config is reused with the zoo extended by `new_models`: the same training
    tasks (their ground truth must have the new PTMs' labels, their prototypes the new PTMs'
    prototypes), the same validation tasks (for keeping the best epoch) and targets (evaluated
    when `evaluate`).

    Args:
      checkpoint: the trained run's workdir (or checkpoint directory).
      new_models: names of the PTMs to add (not in the run's zoo).
      workdir: the new run's directory: config.json, best/ (the grown ranker), grow.json and,
        with targets, results.{json,md} as `train_lib.evaluate_best` writes them.
      overrides: config fields to change, dotted (e.g. {"data.train.ground_truth": "gt.csv"}).

    Returns:
      A summary: models added, fit seconds, best epoch, history and the results' weighted taus.
    """
    from mspider_jax import checkpointing

    meta = checkpointing.load_ranker_meta(checkpoint)
    # The bare ranker: its tokens are grown and trained; a source-affinity prior of the old zoo
    # does not cover the new models (the grown run has none).
    ranker, _ = checkpointing.load_ranker(checkpoint, with_prior=False)
    old_names = list(meta["model_names"])
    new_models = list(new_models)
    duplicate = sorted(set(new_models) & set(old_names)) or sorted(
        {m for m in new_models if new_models.count(m) > 1})
    if duplicate:
        raise ValueError(f"models {duplicate} are already in the zoo or given twice")
    config = ml_collections.ConfigDict(meta["config"])
    for field, value in (overrides or {}).items():
        _set_field(config, field, value)
    config.data.models = tuple(old_names + new_models)
    data = train_lib.load_data(config)
    specific_length = int(config.model.specific_length)
    generic_length = tokens_lib.bucket_length(
        max(s.max_classes for s in (data.train, data.val, data.targets) if s is not None))
    # As the run was trained: its enrichment depths, loss and label kind.
    options = dataclasses.replace(options, k_min=int(config.train.k_min),
                                  k_max=int(config.train.k_max), loss=config.loss.name,
                                  label_kind=config.data.label)
    result = add_models(ranker, meta["model"], old_names, data.train,
                        specific_length=specific_length, generic_length=generic_length,
                        val=data.val, options=options, new_metadata=new_metadata,
                        loss_fn=train_lib.loss_fn_from_config(config))
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary = {"grown_from": str(pathlib.Path(checkpoint).absolute()), "added_models": new_models,
               "options": dataclasses.asdict(options), "seconds": result.seconds,
               "best_epoch": result.best_epoch, "num_tasks": result.num_tasks,
               "history": result.history}
    train_lib._write_text_atomic(workdir / "config.json",
                                 json.dumps(config.to_dict(), indent=2, sort_keys=True))
    checkpointing.save_ranker(workdir, result.ranker, model_kwargs=result.model_kwargs,
                              model_names=result.model_names, config=config,
                              step=result.best_epoch, extra_meta={"grow": summary})
    train_lib._write_text_atomic(workdir / "grow.json", json.dumps(summary, indent=2))
    logging.info("Added %s in %.1f s (%d tasks, best epoch %d); wrote %s.", new_models,
                 result.seconds, result.num_tasks, result.best_epoch, workdir)
    if evaluate and data.targets is not None:
        scoring = dict(specific_length=specific_length, generic_length=generic_length,
                       batch_size=config.eval.batch_size)
        results = train_lib.evaluate_best(config, workdir, data, scoring,
                                          training_seconds=result.seconds)
        summary["weighted_tau"] = {name: row["weighted_tau"]["mean"]
                                   for name, row in results["rows"].items()}
    return summary
