"""Training and evaluation of Model Spider (Zhang et al., NeurIPS 2023; spec model_spider.md §6-8).

`train_and_evaluate(config, workdir)` trains the ranker on training tasks with known PTM rankings,
selects the best step on HELD-OUT TRAINING tasks (validation; never the targets), and evaluates the
best parameters on the target tasks (`spider.evaluate`). The workdir gets
  config.json        the config with resolved values (zoo, model dims, token lengths)
  metrics.jsonl      one JSON object per logged step / validation
  ckpt/  best/       orbax checkpoints (latest steps for resuming; the best validation step)
  results.json  results.md   final evaluation (only when targets are configured)

Protocol (spec §6.2, defaults of `configs/spider_*.py`):
- optax Adam (b1, b2, eps) without weight decay; learning rate cosine-annealed PER EPOCH as the
  released code: epoch e (0-based) uses lr_min + (lr - lr_min)(1 + cos(pi e / epochs)) / 2.
- Each batch draws k uniformly in {k_min..k_max} and gives each task k random PTMs with their
  PTM-specific tokens. The released code omits the specific block of a batch with k = 0; we keep it
  fully masked instead, which gives the same scores (masked keys get exactly zero attention) and one
  compiled training step instead of two.
- Labels: ranks or raw accuracies; models without ground truth are masked out of the loss.
- Data parallel: the batch axis is sharded over all devices (`mspider_jax.sharding`), parameters
  replicated; batches are padded to a multiple of the device count with weight-0 tasks.
- Determinism and resuming: the task order of epoch e, the batch's k and PTM subsets, and the
  dropout key of step s are all derived from (seed, e, s), so a run resumed from its last checkpoint
  replays exactly the steps an uninterrupted run would take. Checkpoints every
  `checkpoint_every_steps` and at each epoch end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mspider_jax import checkpointing
from mspider_jax import sharding
from mspider_jax.spider import coverage as coverage_lib
from mspider_jax.spider import data as data_lib
from mspider_jax.spider import evaluate as evaluate_lib
from mspider_jax.spider import losses as losses_lib
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import prototypes as prototypes_lib
from mspider_jax.spider import rank as rank_lib
from mspider_jax.spider import tokens as tokens_lib

VALIDATION_METRIC = "val_weighted_tau"

# --------------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Data:
    """Everything a run reads: training, validation and (optional) target tasks of one zoo."""

    model_names: tuple[str, ...]
    train: data_lib.TaskSet
    val: data_lib.TaskSet
    targets: data_lib.TaskSet | None
    metric_scores: dict[str, np.ndarray]


def csv_filter(text: str) -> dict[str, str]:
    """"zoo=single_source_10,split=a" -> {"zoo": "single_source_10", "split": "a"}."""
    where = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"ground-truth filter {item!r} must read column=value")
        where[key.strip()] = value.strip()
    return where


def _load_tasks(split_config: ml_collections.ConfigDict, model_names: tuple[str, ...],
                generic_model: str, what: str) -> data_lib.TaskSet:
    """Loads one split (train or targets): a prototype bank or feature store + a ground truth."""
    if not split_config.ground_truth:
        raise ValueError(f"config.data.{what}.ground_truth: a ground-truth CSV is required")
    if bool(split_config.bank) == bool(split_config.store):
        raise ValueError(
            f"config.data.{what}: set exactly one of bank (prototype bank .npz) or store")
    csv_options = dict(task_column=split_config.task_column, model_column=split_config.model_column,
                       value_column=split_config.value_column, where=csv_filter(split_config.where))
    if split_config.bank:
        bank = prototypes_lib.load_prototype_bank(split_config.bank)
        names = list(split_config.tasks) or [task.name for task in bank]
        by_name = {task.name: task for task in bank}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ValueError(
                f"config.data.{what}.tasks: {missing} are not in the bank {split_config.bank}")
        performance = data_lib.performance_from_csv(split_config.ground_truth, names, model_names,
                                                    **csv_options)
        return data_lib.taskset_from_bank([by_name[name] for name in names], model_names,
                                          performance)
    store = _open_store(split_config.store)
    names = list(split_config.tasks) or data_lib.tasks_in_csv(
        split_config.ground_truth, task_column=split_config.task_column, where=csv_options["where"])
    performance = data_lib.performance_from_csv(split_config.ground_truth, names, model_names,
                                                **csv_options)
    return data_lib.taskset_from_store(store, names, model_names, performance,
                                       split=split_config.split, generic_model=generic_model,
                                       store_prefix=split_config.store_prefix)


def _open_store(path: str):
    if path == "minizoo":
        from mspider_jax import minizoo  # the offline mini zoo builds its target store on demand
        return minizoo.ensure_target_store()
    from mspider_jax.features import FeatureStore
    return FeatureStore(path)


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Builds the training, validation and target task sets described by `config.data`."""
    data_config = config.data
    model_names = tuple(data_config.models)
    if not model_names and data_config.zoo == "minizoo":
        from mspider_jax import minizoo
        model_names = tuple(minizoo.model_names())
    if not model_names:
        raise ValueError("config.data.models: the zoo (model names in order) is required")
    tasks = _load_tasks(data_config.train, model_names, data_config.generic_model, "train")
    if data_config.get("label_source", "finetune") != "finetune":
        from mspider_jax.spider import label_sources  # labels without fine-tuning (issue 7)
        tasks = label_sources.relabel(tasks, data_config)
    val_names = list(data_config.val_tasks)
    if not val_names:
        if not 0 < data_config.num_val_tasks < len(tasks):
            raise ValueError(f"config.data.num_val_tasks={data_config.num_val_tasks} must be in "
                             f"1..{len(tasks) - 1} for {len(tasks)} training tasks")
        rng = np.random.default_rng([config.seed, 1])
        picked = rng.choice(len(tasks), data_config.num_val_tasks, replace=False)
        val_names = [tasks.names[i] for i in sorted(picked)]
    val = tasks.select(val_names)
    train = tasks.select([name for name in tasks.names if name not in set(val_names)])
    if len(train) == 0:
        raise ValueError("no training tasks left after holding out the validation tasks")
    targets = None
    if data_config.targets.bank or data_config.targets.store:
        targets = _load_tasks(data_config.targets, model_names, data_config.generic_model,
                              "targets")
        leaked = set(targets.names) & set(tasks.names)
        if leaked:
            raise ValueError(f"tasks {sorted(leaked)} are both training and target tasks")
    metric_scores = {}
    if config.eval.metric_scores:
        if targets is None:
            raise ValueError("config.eval.metric_scores needs target tasks")
        metric_scores = evaluate_lib.read_metric_scores(config.eval.metric_scores, targets.names,
                                                        model_names)
        for metric, table in metric_scores.items():
            missing = np.argwhere(np.isnan(table) & ~np.isnan(targets.performance))
            if missing.size:
                t, m = missing[0]
                raise ValueError(f"{config.eval.metric_scores}: metric {metric} has no score for "
                                 f"target {targets.names[t]}, model {model_names[m]}")
    return Data(model_names, train, val, targets, metric_scores)


def resolve_model_dims(data: Data) -> tuple[int, ...]:
    """Feature dim of every PTM, from the prototypes of any split (ValueError if a PTM has none)."""
    dims = {}
    for taskset in (data.train, data.val, data.targets):
        if taskset is not None:
            for model, dim in taskset.model_dims().items():
                if dims.setdefault(model, dim) != dim:
                    raise ValueError(f"model {model}: feature dim {dim} differs from {dims[model]}")
    missing = [m for m in data.model_names if m not in dims]
    if missing:
        raise ValueError(
            f"no prototypes of models {missing} in any task: their feature dims are unknown")
    return tuple(dims[m] for m in data.model_names)


# --------------------------------------------------------------------------------------------------
# Optimisation


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           epochs: int) -> optax.Schedule:
    """Cosine annealing stepped per epoch (spec §6.2): constant within an epoch."""

    def schedule(step):
        epoch = jnp.minimum(step // steps_per_epoch, epochs - 1)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
        return optim.final_lr + (optim.lr - optim.final_lr) * cosine

    return schedule


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
    return optax.adam(schedule, b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps)


def loss_fn_from_config(config: ml_collections.ConfigDict) -> losses_lib.LossFn:
    options = {}
    if config.loss.name == "listnet":
        options["temperature"] = config.loss.listnet_temperature
    return losses_lib.get_loss(config.loss.name, **options)


def batch_objective(graphdef: nnx.GraphDef, params: Any, batch: data_lib.Batch,
                    dropout_key: jax.Array | None, loss_fn: losses_lib.LossFn) -> jax.Array:
    """Mean ranking loss of a batch (dropout on when `dropout_key` is given)."""
    ranker = nnx.merge(graphdef, params)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    scores = ranker(batch.generic, batch.generic_mask, batch.specific, batch.specific_mask,
                    deterministic=dropout_key is None, rngs=rngs)
    return losses_lib.batch_loss(loss_fn(scores, batch.labels, batch.label_mask), batch.task_weight)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    loss_fn: losses_lib.LossFn):
    """A jitted (params, opt_state, batch, dropout_key) -> (params, opt_state, loss)."""

    def train_step(params, opt_state, batch, dropout_key):
        objective = lambda p: batch_objective(graphdef, p, batch, dropout_key, loss_fn)
        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(train_step, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=4)
def _cached_train_step(graphdef: nnx.GraphDef, optim_items: tuple, loss_items: tuple,
                       steps_per_epoch: int, epochs: int):
    """One jitted step per (architecture, optimiser, loss, schedule).

    A resumed run in the same process then reuses the compiled program.
    """
    config = ml_collections.ConfigDict(
        dict(optim=dict(optim_items), loss=dict(loss_items), train=dict(epochs=epochs)))
    return make_train_step(graphdef, make_optimizer(config, steps_per_epoch),
                           loss_fn_from_config(config))


# --------------------------------------------------------------------------------------------------
# Files


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class MetricsLog:
    """Appends JSON lines to workdir/metrics.jsonl (process 0 only)."""

    def __init__(self, path: pathlib.Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drops records of steps > `step` (written by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        _write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------------
# Training


def _epoch_order(seed: int, epoch: int, num_tasks: int) -> np.ndarray:
    return np.random.default_rng([seed, 2, epoch]).permutation(num_tasks)


def training_batch(config: ml_collections.ConfigDict, train: data_lib.TaskSet, step: int,
                   steps_per_epoch: int, batch_size: int, *, model_dims: tuple[int, ...],
                   generic_length: int, specific_length: int,
                   available: np.ndarray) -> data_lib.Batch:
    """The batch of global step `step` (a pure function of the config, data and step)."""
    epoch, position = divmod(step, steps_per_epoch)
    order = _epoch_order(config.seed, epoch, len(train))
    indices = order[position * config.train.batch_size:(position + 1) * config.train.batch_size]
    rng = np.random.default_rng([config.seed, 3, step])
    enriched = data_lib.sample_enrichment(rng, available[indices], config.train.k_min,
                                          config.train.k_max)
    return data_lib.make_batch(train, indices, model_dims=model_dims,
                               specific_length=specific_length, label_kind=config.data.label,
                               batch_size=batch_size, generic_length=generic_length,
                               enriched=enriched)


def _run_meta(config: ml_collections.ConfigDict, ranker_kwargs: dict, model_names, step: int,
              steps_per_epoch: int, **extra) -> dict:
    return {"step": step, "epoch": step / steps_per_epoch, "model": ranker_kwargs,
            "model_names": list(model_names), "config": config.to_dict(), **extra}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains (or resumes) a ranker in `workdir` and evaluates its best step on the targets.

    Returns:
      The results dict written to results.json (or, without targets, {"best": validation summary}).
      With `config.train.stop_after_step` > 0 the run stops after that step as if killed (no final
      checkpoint, no evaluation) and returns {"stopped_at": step}.
      With config.data.zoo == "llm" the run is the LLM zoo's leave-one-group-out experiment
      (`mspider_jax.llm.experiment.run`, configs/spider_llm.py) and returns its results.
    """
    if config.data.zoo == "llm":
        from mspider_jax.llm import experiment  # the LLM zoo builds on this module

        return experiment.run(config, workdir)
    workdir = pathlib.Path(workdir)
    if config.train.get("ensemble_seeds", ()):
        return _train_ensemble(config, workdir)
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    data = load_data(config)
    model_dims = resolve_model_dims(data)
    specific_length = config.model.specific_length or data.train.max_classes
    scoring = scoring_options(config, data, specific_length)
    with config.unlocked():  # record the resolved values (inference needs them)
        config.data.models = tuple(data.model_names)
        config.model.specific_length = int(specific_length)
    ranker_kwargs = dict(num_models=len(data.model_names), generic_dim=data.train.generic_dim,
                         model_dims=list(model_dims), width=config.model.width,
                         num_heads=config.model.num_heads, depth=config.model.depth,
                         dropout=config.model.dropout)
    if is_main:
        _write_text_atomic(workdir / "config.json",
                           json.dumps(config.to_dict(), indent=2, sort_keys=True))

    ranker = model_lib.Ranker(**ranker_kwargs, rngs=nnx.Rngs(params=config.seed))
    graphdef, state = nnx.split(ranker)
    params = nnx.to_pure_dict(state)
    device_mesh = sharding.mesh()
    batch_size = sharding.round_up(config.train.batch_size, device_mesh)
    steps_per_epoch = math.ceil(len(data.train) / config.train.batch_size)
    total_steps = config.train.epochs * steps_per_epoch
    tx = make_optimizer(config, steps_per_epoch)
    schedule = learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
    params = sharding.replicate(params, device_mesh)
    opt_state = sharding.replicate(tx.init(params), device_mesh)

    latest = checkpointing.Checkpoints(workdir / checkpointing.LATEST_DIR,
                                       config.train.max_checkpoints)
    best = checkpointing.BestCheckpoint(workdir / checkpointing.BEST_DIR, VALIDATION_METRIC)
    log = MetricsLog(workdir / "metrics.jsonl", is_main)
    start_step = 0
    if latest.latest_step() is not None:
        params, opt_state, meta = latest.restore(params, opt_state)
        start_step = int(meta["step"])
        log.truncate_after(start_step)
        logging.info("Resumed from step %d of %d (%s).", start_step, total_steps, latest.directory)
    else:
        log.truncate_after(0)

    train_step = _cached_train_step(graphdef, tuple(config.optim.items()),
                                    tuple(config.loss.items()), steps_per_epoch,
                                    config.train.epochs)
    available = data.train.has_prototypes()
    base_key = jax.random.key(config.seed)
    batch_options = dict(model_dims=model_dims, generic_length=scoring["generic_length"],
                         specific_length=specific_length, available=available)
    logging.info(
        "Training %d tasks (%d validation), zoo of %d, %d steps of %d tasks on %d device(s).",
        len(data.train), len(data.val), len(data.model_names), total_steps, batch_size,
        sharding.num_shards(device_mesh))
    loop_start, losses_since_log = time.time(), []
    for step in range(start_step, total_steps):
        batch = training_batch(config, data.train, step, steps_per_epoch, batch_size,
                               **batch_options)
        batch = sharding.shard_batch(batch, device_mesh)
        params, opt_state, loss = train_step(params, opt_state, batch,
                                             jax.random.fold_in(base_key, step))
        losses_since_log.append(loss)
        done = step + 1
        if done % config.train.log_every_steps == 0 or done == total_steps:
            mean_loss = float(np.mean(jax.device_get(losses_since_log)))
            losses_since_log = []
            rate = (done - start_step) / max(time.time() - loop_start, 1e-9)
            record = {"step": done, "epoch": done / steps_per_epoch, "loss": mean_loss,
                      "lr": float(schedule(step)), "steps_per_s": rate}
            log.write(record)
            logging.info("step %d/%d epoch %.2f loss %.4f lr %.2e | %.1f steps/s, ETA %s", done,
                         total_steps, record["epoch"], mean_loss, record["lr"], rate,
                         _format_seconds((total_steps - done) / rate))
        end_of_epoch = done % steps_per_epoch == 0
        epoch_done = done // steps_per_epoch
        is_eval_epoch = end_of_epoch and epoch_done % config.train.eval_every_epochs == 0
        if is_eval_epoch or done == total_steps:
            # Scored on one device, like the final evaluation: the two share compiled programs.
            ranker = nnx.merge(graphdef, jax.device_put(params, jax.local_devices()[0]))
            val_scores = rank_lib.score_tasks(ranker, data.val, **scoring)
            val_tau = evaluate_lib.mean_weighted_tau(data.val.performance, val_scores)
            meta = _run_meta(config, ranker_kwargs, data.model_names, done, steps_per_epoch)
            improved = best.maybe_save(done, params, meta, val_tau)
            log.write({"step": done, "epoch": done / steps_per_epoch, VALIDATION_METRIC: val_tau,
                       "best": best.value})
            logging.info("step %d validation weighted tau %.4f (best %.4f%s)", done, val_tau,
                         best.value, ", saved" if improved else "")
        if end_of_epoch or done % config.train.checkpoint_every_steps == 0 or done == total_steps:
            latest.save(done, params,
                        _run_meta(config, ranker_kwargs, data.model_names, done, steps_per_epoch),
                        opt_state)
        if done == config.train.stop_after_step:
            latest.close()
            best.close()
            logging.info("Stopping after step %d (config.train.stop_after_step).", done)
            return {"stopped_at": done}
    latest.close()
    best.close()
    training_seconds = time.time() - started
    logging.info("Training done in %s.", _format_seconds(training_seconds))
    if is_main:  # lets `mspider rank` say whether a new task looks like these (spider.coverage)
        coverage_lib.write_reference(workdir, data.train.tasks + data.val.tasks)
    if config.prior.get("source_affinity_weight", 0.0) > 0 and is_main:
        fit_source_affinity_prior(config, workdir, data, scoring)
    if data.targets is None:
        return {"best": {VALIDATION_METRIC: best.value}}
    return evaluate_best(config, workdir, data, scoring, training_seconds=training_seconds)


def model_sources_and_groups(config: ml_collections.ConfigDict, model_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each model's pretraining source and group (architecture): `config.prior.model_sources` /
    `model_groups`, or for the mini zoo its manifest."""
    sources, groups = list(config.prior.get("model_sources", ())), list(config.prior.get("model_groups", ()))
    if not sources and config.data.zoo == "minizoo":
        from mspider_jax import minizoo

        by_name = {m["name"]: m for m in minizoo.load_manifest()["models"]}
        sources = [by_name[m]["source"] for m in model_names]
        groups = groups or [by_name[m]["arch"] for m in model_names]
    groups = groups or list(model_names)  # no groups: every model its own
    if len(sources) != len(model_names) or len(groups) != len(model_names):
        raise ValueError(f"config.prior.model_sources / model_groups must name the {len(model_names)} models' "
                         f"sources and groups, got {len(sources)} and {len(groups)}")
    return sources, groups


def fit_source_affinity_prior(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                              data: Data | None = None, scoring: dict | None = None) -> pathlib.Path:
    """Fits the source-affinity prior (`spider.source_affinity`) of the run's best ranker on its
    training tasks (the group prior from their ground truth, the score scale from the ranker's stage-1
    scores on them) and writes it next to best/ (`checkpointing.PRIOR_FILE`). Returns its path."""
    from mspider_jax.spider import source_affinity

    if not config.prior.source_prototypes:
        raise ValueError("config.prior.source_prototypes: the npz of each pretraining source's generic prototypes is needed")
    workdir = pathlib.Path(workdir)
    if data is None:
        data = load_data(config)
    ranker, run_config = checkpointing.load_ranker(workdir, with_prior=False)
    if scoring is None:
        scoring = scoring_options(run_config, data, int(run_config.model.specific_length))
    sources, groups = model_sources_and_groups(config, data.model_names)
    stage1 = rank_lib.score_tasks(ranker, data.train, **scoring)
    prior = source_affinity.fit_prior(stage1, data.train.performance, sources, groups,
                                      source_affinity.load_source_prototypes(config.prior.source_prototypes),
                                      config.prior.source_affinity_weight)
    path = prior.save(workdir / checkpointing.PRIOR_FILE)
    logging.info("Source-affinity prior (weight %g, score scale %.4g) written to %s.", prior.weight, prior.scale, path)
    return path


def scoring_options(config: ml_collections.ConfigDict, data: Data, specific_length: int) -> dict:
    """`rank.score_tasks` options of a run: one padded generic length for all its batches (train,
    validation, targets), so fewer programs."""
    generic_length = tokens_lib.bucket_length(
        max(s.max_classes for s in (data.train, data.val, data.targets) if s is not None))
    return dict(specific_length=specific_length, generic_length=generic_length,
                batch_size=config.eval.batch_size)


def _train_ensemble(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """`config.train.ensemble_seeds`: one run per seed in workdir/seed<s>, all validated on the
    validation tasks of the first seed, then the ensemble of their best checkpoints (workdir/
    ensemble.json) evaluated on the targets like a single run (workdir/results.{json,md})."""
    from mspider_jax.spider import ensemble as ensemble_lib

    seeds = [int(s) for s in config.train.ensemble_seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"config.train.ensemble_seeds repeats a seed: {seeds}")
    workdir.mkdir(parents=True, exist_ok=True)
    first = ml_collections.ConfigDict(config.to_dict())
    first.seed = seeds[0]
    data = load_data(first)
    members, training_seconds = [], 0.0
    for index, seed in enumerate(seeds):
        member = ml_collections.ConfigDict(config.to_dict())
        member.seed = seed
        member.train.ensemble_seeds = ()
        member.data.val_tasks = tuple(data.val.names)
        logging.info("Ensemble member %d/%d: seed %d", index + 1, len(seeds), seed)
        started = time.time()
        train_and_evaluate(member, workdir / f"seed{seed}")
        training_seconds += time.time() - started
        members.append(workdir / f"seed{seed}")
    # Every process writes the (identical) manifest atomically: then none can read the workdir
    # before its own copy exists, without a barrier, on shared and on per-host filesystems.
    ensemble_lib.write_ensemble(workdir, members)
    member_config = checkpointing.load_ranker_config(members[0])
    if data.targets is None:
        return {"members": [str(m) for m in members]}
    return evaluate_best(member_config, workdir, data,
                         scoring_options(member_config, data, int(member_config.model.specific_length)),
                         training_seconds=training_seconds)


# --------------------------------------------------------------------------------------------------
# Final evaluation


def _ranking_latency(ranker: model_lib.Ranker, targets: data_lib.TaskSet, k: int,
                     specific_length: int, repeats: int) -> dict:
    """Median wall time per target task of `rank.rank_task` (stage 1 + stage 2), after warm-up.

    The prototypes are precomputed: this is the ranker's cost, not the PTMs' forward passes.
    """
    times = []
    for task in targets.tasks:
        run = lambda: rank_lib.rank_task(ranker, targets.model_names, task.generic,
                                         specific_length=specific_length, k=k,
                                         model_prototypes=task.per_model.__getitem__)
        run()  # compile for this task's padded shapes
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * float(np.median(times)), "mean_ms": 1e3 * float(np.mean(times)),
            "k": k, "device": str(jax.devices()[0].platform)}


def evaluate_best(config: ml_collections.ConfigDict, workdir: pathlib.Path, data: Data,
                  scoring: dict, training_seconds: float | None = None) -> dict:
    """Evaluates the best checkpoint of `workdir` on the target tasks; writes results.json/.md.

    `scoring`: `rank.score_tasks` options (specific_length, generic_length, batch_size).
    """
    ranker, _ = checkpointing.load_ranker(workdir)
    k_choices = list(config.eval.k_choices) or list(range(config.train.k_max + 1))
    prior_truth = np.concatenate([data.train.performance, data.val.performance])
    results = evaluate_lib.evaluate_targets(
        ranker, data.targets, scoring=scoring, rerank_k=config.eval.rerank_k, val=data.val,
        k_choices=k_choices if config.eval.choose_k_on_validation else (),
        k_max=config.train.k_max if config.eval.paper_compat else 0, prior_truth=prior_truth,
        metric_scores=data.metric_scores)
    if config.eval.latency_repeats:
        results["latency_per_task"] = _ranking_latency(ranker, data.targets, config.eval.rerank_k,
                                                       scoring["specific_length"],
                                                       config.eval.latency_repeats)
    results["training_seconds"] = training_seconds
    results["validation_tasks"] = data.val.names
    if jax.process_index() == 0:
        _write_text_atomic(workdir / "results.json", json.dumps(results, indent=2))
        _write_text_atomic(workdir / "results.md",
                           evaluate_lib.markdown_report(results, data.targets))
    for name, row in results["rows"].items():
        tau = row["weighted_tau"]
        logging.info("%-60s weighted tau %.3f [%.3f, %.3f]", name, tau["mean"], tau["low"],
                     tau["high"])
    return results
