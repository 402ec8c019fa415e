"""Leave-one-group-out evaluation of Model Spider on the LLM zoo (`configs/spider_llm.py`).

Model Spider (Zhang et al., NeurIPS 2023, arXiv 2306.03900) learns to rank a zoo for a new task from
task tokens. Here the zoo is 186 public LLMs, the tasks are 94 benchmark sub-tasks (`llm.data`), a
task's tokens are sentence embeddings of its texts (`converters/text.py`), and a model's token is a
learned vector plus a projection of its metadata (size, tokens, family, instruct), so that a model
never evaluated still gets a token.

Protocol (`run`), for each fold of `llm.data.FOLDS` (hold out {BBH}, {MATH}, {MUSR + GPQA}):
  1. Model selection on TRAINING tasks only: every candidate of `config.llm.grid` is trained on the
     training tasks minus one other non-MMLU fold's groups and scored on those groups, in turn for
     each other fold ("inner leave-one-group-out"); a candidate's validation score is the mean over
     those inner folds of the mean weighted tau of their tasks. The k of the kNN baseline is chosen
     the same way. The held-out group is never seen before the final evaluation.
  2. The chosen candidate is retrained on all training tasks (fixed number of epochs; no early
     stopping) and evaluated on the held-out tasks, beside the constant prior, the size prior and
     the kNN prior (`llm.baselines`): weighted tau mean and bootstrap 95% CI over the held-out
     tasks, top-1 regret (percentage points of the sub-task score) and top-1 hit rate.
  3. Unseen models: a seeded `config.llm.unseen_fraction` of the models is hidden from training
     (their scores masked, no learned vector: their token is the metadata projection alone); the
     chosen candidate is retrained so and ranks them on the held-out tasks, beside the size prior
     and a metadata prior (ridge from metadata to the constant prior of the seen models).
Every ranking drops the models without a score on that task. Results go to workdir/results.json and
results.md; each fold's final ranker is saved under workdir/<fold>/ (`checkpointing.load_ranker`).
A fold whose results file exists is not recomputed (a killed run resumes fold by fold).

Model tokens (`spider.tokens.ModelTokens`): learned vector + projection of the metadata of
`llm.data.model_metadata` (config.model.tokens); in training, each model's learned vector is
dropped with probability config.model.learned_token_dropout, so that the metadata path alone ranks
models too (as it must for an unseen model, whose learned part is absent).

The training loop uses `spider.train_lib`'s batches, objective (Plackett-Luce loss masked on missing
scores) and per-epoch cosine learning rate with Adam, the batch axis sharded over the local devices,
but without its per-epoch checkpoints and validation, and with the learning rate passed to one
compiled step (optax.inject_hyperparams): dozens of short trainings share one compilation.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mspider_jax import checkpointing
from mspider_jax import evaluation as ev
from mspider_jax import sharding
from mspider_jax.llm import baselines
from mspider_jax.llm import data as llm_data
from mspider_jax.spider import data as spider_data
from mspider_jax.spider import losses as losses_lib
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import rank as rank_lib
from mspider_jax.spider import tokens as tokens_lib
from mspider_jax.spider import train_lib

TOKEN_MODES = ("learned", "metadata", "learned+metadata")
SPIDER = "Model Spider"
CONSTANT = "constant prior (mean over training tasks)"
SIZE = "size prior (log parameters)"
METADATA = "metadata prior (ridge on seen models)"


def knn_name(k: int) -> str:
    return f"kNN over task embeddings (k={k} chosen on validation)"


# --------------------------------------------------------------------------------------------------
# Hyper-parameter grid


def parse_grid(text: str, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """"optim.lr=1e-3|3e-4;train.epochs=40|80" -> the product of the axes as override dicts.

    Each axis is a dotted field of `config` with "|"-separated values, cast to the field's type.
    An empty text is one candidate without overrides.
    """
    axes = []
    for item in filter(None, (t.strip() for t in text.split(";"))):
        field, sep, values = item.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"grid axis {item!r} must read field=value|value")
        default = _get_field(config, field.strip())
        axes.append([(field.strip(), _cast(field, v.strip(), default)) for v in values.split("|")])
    return [dict(choice) for choice in itertools.product(*axes)] if axes else [{}]


def _get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ValueError(f"grid field {dotted!r} is not in the config")
        node = node[part]
    return node


def _cast(field: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"grid field {field}: {text!r} is not true/false")
        return text.lower() == "true"
    try:
        return type(default)(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"grid field {field}: cannot read {text!r} as "
                         f"{type(default).__name__}") from err


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted fields replaced ({"optim.lr": 1e-3})."""
    config = copy.deepcopy(config)
    with config.unlocked():
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[leaf] = value
    return config


def describe(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"


# --------------------------------------------------------------------------------------------------
# Training and scoring


def ranker_kwargs(config: ml_collections.ConfigDict, num_models: int, generic_dim: int,
                  metadata: np.ndarray | None, learned: np.ndarray | None) -> dict[str, Any]:
    """Constructor arguments of the ranker (JSON-serialisable: saved with checkpoints).

    Args:
      metadata: [M, K] model metadata (used when config.model.tokens includes "metadata").
      learned: [M] bool, models that have a learned vector (None = all; used with "learned").
    """
    mode = config.model.tokens
    if mode not in TOKEN_MODES:
        raise ValueError(f"config.model.tokens must be one of {TOKEN_MODES}, got {mode!r}")
    kwargs: dict[str, Any] = dict(
        num_models=num_models, generic_dim=generic_dim, model_dims=[1] * num_models,
        width=config.model.width, num_heads=config.model.num_heads, depth=config.model.depth,
        dropout=config.model.dropout)
    if mode == "learned":
        if learned is not None and not np.all(learned):
            raise ValueError("models without a learned vector need metadata tokens")
        return kwargs
    if metadata is None:
        raise ValueError(f"config.model.tokens={mode!r} needs model metadata")
    learned = np.ones(num_models, bool) if learned is None else np.asarray(learned, bool)
    if mode == "metadata":
        learned = np.zeros(num_models, bool)
    kwargs.update(model_metadata=np.asarray(metadata, np.float64).round(6).tolist(),
                  learned_models=learned.tolist(),
                  learned_token_dropout=(config.model.learned_token_dropout if learned.any()
                                         else 0.0))
    return kwargs


@functools.lru_cache(maxsize=8)
def _compiled_step(graphdef: nnx.GraphDef, loss_name: str, listnet_temperature: float):
    """A jitted (params, opt_state, batch, key, lr) -> (params, opt_state, loss), cached per ranker.

    The learning rate is an argument (optax.inject_hyperparams), not baked into the program, so the
    many short trainings of an experiment share one compilation.
    """
    options = {"temperature": listnet_temperature} if loss_name == "listnet" else {}
    loss_fn = losses_lib.get_loss(loss_name, **options)
    tx = _adam()

    def step(params, opt_state, batch, dropout_key, learning_rate):
        loss, grads = jax.value_and_grad(train_lib.batch_objective, argnums=1)(
            graphdef, params, batch, dropout_key, loss_fn)
        opt_state.hyperparams["learning_rate"] = learning_rate
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _adam() -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)


def train_ranker(config: ml_collections.ConfigDict, train: spider_data.TaskSet,
                 kwargs: Mapping[str, Any]) -> model_lib.Ranker:
    """Trains a ranker on `train` for config.train.epochs epochs and returns it.

    Same batches (`train_lib.training_batch`), objective (`train_lib.batch_objective`), optimiser
    (Adam without weight decay, config.optim's b1/b2/eps) and per-epoch cosine learning rate
    (`train_lib.learning_rate_schedule`) as `spider.train_lib`.
    """
    ranker = model_lib.Ranker(**kwargs, rngs=nnx.Rngs(params=config.seed))
    graphdef, state = nnx.split(ranker)
    device_mesh = sharding.mesh()
    batch_size = sharding.round_up(config.train.batch_size, device_mesh)
    steps_per_epoch = math.ceil(len(train) / config.train.batch_size)
    total_steps = config.train.epochs * steps_per_epoch
    schedule = train_lib.learning_rate_schedule(config.optim, steps_per_epoch, config.train.epochs)
    params = sharding.replicate(state.to_pure_dict(), device_mesh)
    opt_state = _adam().init(params)
    # float32 arrays, as the step returns them: Python floats here would compile the step twice.
    opt_state.hyperparams.update(
        {name: jnp.float32(config.optim[name]) for name in ("b1", "b2", "eps")})
    opt_state = sharding.replicate(opt_state, device_mesh)
    train_step = _compiled_step(graphdef, config.loss.name, config.loss.listnet_temperature)
    batch_options = dict(model_dims=tuple(kwargs["model_dims"]), specific_length=1,
                         generic_length=tokens_lib.bucket_length(train.max_classes),
                         available=np.zeros((len(train), len(train.model_names)), bool))
    base_key = jax.random.key(config.seed, impl="rbg")  # compiles much faster than threefry on CPU
    for step in range(total_steps):
        batch = train_lib.training_batch(config, train, step, steps_per_epoch, batch_size,
                                         **batch_options)
        batch = sharding.shard_batch(batch, device_mesh)
        params, opt_state, _ = train_step(params, opt_state, batch,
                                          jax.random.fold_in(base_key, step),
                                          np.float32(schedule(step)))
    return nnx.merge(graphdef, jax.device_get(params))


def score(ranker: model_lib.Ranker, tasks: spider_data.TaskSet) -> np.ndarray:
    """[T, M] stage-1 scores (LLMs have no per-model task features, so there is no stage 2)."""
    return rank_lib.score_tasks(ranker, tasks, specific_length=1)


def per_task_taus(performance: np.ndarray, scores: np.ndarray,
                  keep: np.ndarray | None = None) -> np.ndarray:
    """[T] weighted tau of each task over its evaluated models (and `keep` [M] if given)."""
    taus = []
    for truth, row in zip(performance, scores):
        mask = ~np.isnan(truth) if keep is None else ~np.isnan(truth) & keep
        taus.append(ev.evaluate_task(truth, row, mask=mask)["weighted_tau"])
    return np.asarray(taus)


def summarise(performance: np.ndarray, scores: np.ndarray, task_names: Sequence[str], *,
              keep: np.ndarray | None = None, note: str = "") -> dict[str, Any]:
    """Weighted tau mean [95% bootstrap CI], top-1 regret (points) and top-1 hit over the tasks."""
    scores = np.broadcast_to(scores, performance.shape)
    measures = []
    for truth, row in zip(performance, scores):
        mask = ~np.isnan(truth) if keep is None else ~np.isnan(truth) & keep
        measures.append(ev.evaluate_task(truth, row, mask=mask))
    tau = ev.aggregate([m["weighted_tau"] for m in measures])
    return {"weighted_tau": {"mean": tau.mean, "low": tau.low, "high": tau.high, "n": tau.n},
            "regret_points": 100.0 * float(np.mean([m["regret"] for m in measures])),
            "top1_hit": float(np.mean([m["top1_hit"] for m in measures])),
            "per_task_tau": {name: m["weighted_tau"] for name, m in zip(task_names, measures)},
            "note": note}


# --------------------------------------------------------------------------------------------------
# The experiment


class _Progress:
    """Logs each finished training with elapsed time and an ETA."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.time()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.time() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        logging.info("[%d/%d trainings] %s | elapsed %.0fs, ETA %.0fs", self.done, self.total, what,
                     elapsed, eta)


def _task_embeddings(tasks: spider_data.TaskSet) -> np.ndarray:
    """[T, D] one embedding per task for the kNN prior: the description prototype (row 0)."""
    return np.stack([task.generic[llm_data.DESCRIPTION_CLASS] for task in tasks.tasks])


def _inner_folds(fold: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(name, groups) for name, groups in llm_data.FOLDS.items() if name != fold]


def run_fold(config: ml_collections.ConfigDict, fold: str, zoo: llm_data.LLMZoo,
             prototypes: Mapping[str, Mapping], candidates: Sequence[dict[str, Any]],
             progress: _Progress, fold_dir: pathlib.Path) -> dict[str, Any]:
    """Model selection, final training and evaluation of one held-out fold (module docstring).

    Args:
      prototypes: task-text choice -> {sub-task: TaskPrototypes} (`llm.data.load_task_prototypes`).
      candidates: override dicts of the hyper-parameter grid (`parse_grid`).
      fold_dir: where the fold's final ranker is saved.
    """
    held_out = zoo.task_indices(llm_data.FOLDS[fold])
    training = np.setdiff1d(np.arange(len(zoo.task_names)), held_out)
    metadata = llm_data.model_metadata(zoo, min_family_size=config.llm.min_family_size).features

    def tasks_of(cfg, indices, hidden=None):
        return llm_data.task_set(zoo, indices, prototypes[cfg.llm.task_text], hidden_models=hidden)

    # 1. Model selection on the training tasks (inner leave-one-group-out).
    selection = []
    for overrides in candidates:
        cfg = with_overrides(config, overrides)
        inner_means = {}
        for inner_name, inner_groups in _inner_folds(fold):
            val = zoo.task_indices(inner_groups)
            fit = np.setdiff1d(training, val)
            fit_tasks, val_tasks = tasks_of(cfg, fit), tasks_of(cfg, val)
            kwargs = ranker_kwargs(cfg, zoo.num_models, fit_tasks.generic_dim, metadata, None)
            ranker = train_ranker(cfg, fit_tasks, kwargs)
            taus = per_task_taus(val_tasks.performance, score(ranker, val_tasks))
            inner_means[inner_name] = float(taus.mean())
            progress.step(f"fold {fold}: {describe(overrides)} on inner fold {inner_name}: "
                          f"val tau {inner_means[inner_name]:.3f}")
        selection.append({"overrides": overrides, "inner": inner_means,
                          "validation_tau": float(np.mean(list(inner_means.values())))})
    best = max(range(len(candidates)), key=lambda i: (selection[i]["validation_tau"], -i))
    chosen = with_overrides(config, candidates[best])

    knn_validation = {}
    for k in config.llm.knn_ks:
        means = []
        for _, inner_groups in _inner_folds(fold):
            val = zoo.task_indices(inner_groups)
            fit = np.setdiff1d(training, val)
            fit_tasks, val_tasks = tasks_of(chosen, fit), tasks_of(chosen, val)
            if k > len(fit_tasks):
                continue
            knn = baselines.knn_prior(fit_tasks.performance, _task_embeddings(fit_tasks),
                                      _task_embeddings(val_tasks), k)
            means.append(per_task_taus(val_tasks.performance, knn).mean())
        if means:
            knn_validation[k] = float(np.mean(means))
    best_k = max(knn_validation, key=lambda k: (knn_validation[k], -k))

    # 2. Final training on all training tasks; evaluation on the held-out group.
    train_tasks, test_tasks = tasks_of(chosen, training), tasks_of(chosen, held_out)
    kwargs = ranker_kwargs(chosen, zoo.num_models, train_tasks.generic_dim, metadata, None)
    ranker = train_ranker(chosen, train_tasks, kwargs)
    progress.step(f"fold {fold}: final training ({describe(candidates[best])})")
    _save_ranker(fold_dir, ranker, kwargs, zoo.model_names, chosen)
    truth, names = test_tasks.performance, test_tasks.names
    constant = ev.constant_prior(train_tasks.performance)
    knn = baselines.knn_prior(train_tasks.performance, _task_embeddings(train_tasks),
                              _task_embeddings(test_tasks), best_k)
    rows = {
        SPIDER: summarise(truth, score(ranker, test_tasks), names, note=describe(candidates[best])),
        CONSTANT: summarise(truth, constant, names),
        SIZE: summarise(truth, baselines.size_prior(zoo.params_b), names),
        knn_name(best_k): summarise(truth, knn, names),
    }

    # 3. Unseen models: hidden from training, ranked through their metadata tokens.
    unseen = llm_data.split_unseen_models(zoo, config.llm.unseen_fraction, config.llm.unseen_seed)
    unseen_metadata = llm_data.model_metadata(zoo, reference=~unseen,
                                              min_family_size=config.llm.min_family_size).features
    unseen_cfg = with_overrides(chosen, {"model.tokens": config.llm.unseen_tokens})
    unseen_train = tasks_of(unseen_cfg, training, hidden=unseen)
    unseen_ranker = train_ranker(unseen_cfg, unseen_train, ranker_kwargs(
        unseen_cfg, zoo.num_models, unseen_train.generic_dim, unseen_metadata, ~unseen))
    progress.step(f"fold {fold}: unseen-model training")
    seen_prior = np.full(zoo.num_models, np.nan)
    seen_prior[~unseen] = ev.constant_prior(unseen_train.performance[:, ~unseen])
    meta_prior = baselines.metadata_prior(unseen_metadata, seen_prior, ridge=config.llm.ridge)
    unseen_scores = score(unseen_ranker, test_tasks)
    evaluated = int((unseen & ~np.isnan(truth).all(axis=0)).sum())
    unseen_rows = {
        SPIDER + " (metadata tokens)": summarise(truth, unseen_scores, names, keep=unseen),
        SIZE: summarise(truth, baselines.size_prior(zoo.params_b), names, keep=unseen),
        METADATA: summarise(truth, meta_prior, names, keep=unseen),
    }
    mixed_rows = {
        SPIDER + " (learned + metadata tokens)": summarise(truth, unseen_scores, names),
        "constant prior (seen) + metadata prior (unseen)": summarise(
            truth, np.where(unseen, meta_prior, seen_prior), names),
        SIZE: summarise(truth, baselines.size_prior(zoo.params_b), names),
    }
    return {
        "fold": fold, "held_out_groups": list(llm_data.FOLDS[fold]), "held_out_tasks": names,
        "num_training_tasks": len(train_tasks), "selection": selection,
        "chosen": candidates[best],
        "knn_validation": {str(k): v for k, v in knn_validation.items()},
        "rows": rows,
        "unseen": {"models": [m for m, u in zip(zoo.model_names, unseen) if u],
                   "evaluated_on_held_out": evaluated, "rows": unseen_rows,
                   "all_models_rows": mixed_rows},
    }


def _save_ranker(directory: pathlib.Path, ranker: model_lib.Ranker, kwargs: Mapping[str, Any],
                 model_names: Sequence[str], config: ml_collections.ConfigDict) -> None:
    checkpoints = checkpointing.Checkpoints(directory / checkpointing.BEST_DIR, max_to_keep=1)
    try:
        params = jax.tree.map(jnp.asarray, nnx.split(ranker)[1].to_pure_dict())
        meta = {"step": 0, "model": dict(kwargs), "model_names": list(model_names),
                "config": config.to_dict()}
        checkpoints.save(0, params, meta)
    finally:
        checkpoints.close()


def markdown(results: Mapping[str, Any]) -> str:
    """The results tables (held-out groups, then the unseen-model test)."""
    def fmt(row):
        tau = row["weighted_tau"]
        return (f"{tau['mean']:.3f} [{tau['low']:.3f}, {tau['high']:.3f}] | "
                f"{row['regret_points']:.2f} | {row['top1_hit']:.2f}")

    header = ["| held out | method | weighted tau | top-1 regret | top-1 hit |",
              "|---|---|---|---|---|"]
    lines = ["## Held-out groups (weighted tau mean [95% bootstrap CI over tasks]; top-1 regret in "
             "points)", "", *header]
    for fold, result in results["folds"].items():
        n = len(result["held_out_tasks"])
        for name, row in result["rows"].items():
            lines.append(f"| {fold} ({n} tasks) | {name} | {fmt(row)} |")
    lines += ["", "## Unseen models (hidden from training; ranked among themselves on the held-out "
              "tasks)", "", *header]
    for fold, result in results["folds"].items():
        count = result["unseen"]["evaluated_on_held_out"]
        for name, row in result["unseen"]["rows"].items():
            lines.append(f"| {fold} ({count} unseen models) | {name} | {fmt(row)} |")
    lines += ["", "### Same run, all models ranked together (seen + unseen)", "", *header]
    for fold, result in results["folds"].items():
        for name, row in result["unseen"]["all_models_rows"].items():
            lines.append(f"| {fold} | {name} | {fmt(row)} |")
    lines += ["", "## Model selection (mean validation weighted tau over the inner folds)", ""]
    for fold, result in results["folds"].items():
        cells = ", ".join(f"{describe(s['overrides'])}: {s['validation_tau']:.3f}"
                          for s in result["selection"])
        lines.append(f"- {fold}: {cells}; chosen {describe(result['chosen'])}; kNN k: "
                     + ", ".join(f"{k}: {v:.3f}" for k, v in result["knn_validation"].items()))
    return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs every fold of config.llm.folds (resuming finished folds); writes results.json/.md."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    zoo = llm_data.load_zoo(config.llm.table)
    candidates = parse_grid(config.llm.grid, config)
    text_choices = {with_overrides(config, c).llm.task_text for c in candidates}
    prototypes = {text: llm_data.load_task_prototypes(config.llm.bank, text=text)
                  for text in text_choices}
    folds = list(config.llm.folds)
    unknown = sorted(set(folds) - set(llm_data.FOLDS))
    if unknown:
        raise ValueError(f"config.llm.folds: unknown folds {unknown}; "
                         f"known: {sorted(llm_data.FOLDS)}")
    train_lib._write_text_atomic(workdir / "config.json",
                                 json.dumps(config.to_dict(), indent=2, sort_keys=True))
    logging.info("LLM zoo: %d models x %d sub-tasks; folds %s; %d candidate(s)", zoo.num_models,
                 len(zoo.task_names), folds, len(candidates))
    progress = _Progress(len(folds) * (2 * len(candidates) + 2))
    results = {"folds": {}}
    for fold in folds:
        fold_dir = workdir / fold
        result_path = fold_dir / "fold_results.json"
        if result_path.exists():
            results["folds"][fold] = json.loads(result_path.read_text())
            progress.total -= 2 * len(candidates) + 2
            logging.info("fold %s: finished earlier, read %s", fold, result_path)
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        result = run_fold(config, fold, zoo, prototypes, candidates, progress, fold_dir)
        train_lib._write_text_atomic(result_path, json.dumps(result, indent=2))
        results["folds"][fold] = result
        for name, row in result["rows"].items():
            tau = row["weighted_tau"]
            logging.info("fold %s | %-55s tau %.3f [%.3f, %.3f] regret %.2f", fold, name,
                         tau["mean"], tau["low"], tau["high"], row["regret_points"])
    results["seconds"] = time.time() - started
    train_lib._write_text_atomic(workdir / "results.json", json.dumps(results, indent=2))
    train_lib._write_text_atomic(workdir / "results.md", markdown(results))
    logging.info("LLM experiment done in %.0fs: %s", results["seconds"], workdir / "results.md")
    return results
