"""Checkpoints with orbax (the only module of the package that imports orbax).

A checkpoint directory is managed by `ocp.CheckpointManager`; each step holds up to three items:
  params     (StandardSave)  the ranker's parameters as a pure dict (`nnx.to_pure_dict`)
  opt_state  (StandardSave)  the optax state (absent from "best" checkpoints: inference only)
  meta       (JsonSave)      step, epoch, metrics, the model's constructor kwargs ("model"), the
                             zoo ("model_names") and the run's config ("config")
Parameters and optimiser state are separate items so that inference restores the parameters alone.
Restores go against an abstract target (shapes, dtypes, shardings), e.g. from `nnx.eval_shape`.

A training workdir holds `ckpt/` (latest steps, for resuming) and `best/` (one step, best validation
score); `load_ranker(workdir)` reads `best/` (or `ckpt/` if there is no best).
"""

from __future__ import annotations

import logging
import math
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

LATEST_DIR = "ckpt"
BEST_DIR = "best"
PRIOR_FILE = "source_affinity_prior.npz"  # next to best/: the ranker's source-affinity prior, if any


def drop_orbax_info(record: logging.LogRecord) -> bool:
    """A logging filter for the absl handler or logger of a command: orbax logs every checkpoint
    operation at INFO; this keeps its warnings and errors and drops the chatter."""
    return "orbax" not in record.pathname or record.levelno >= logging.WARNING


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding stand-ins for every array of `tree` (a restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
    """Saves and restores (params, opt_state, meta) at integer steps in one directory."""

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int | None = 2):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, params: Any, meta: dict, opt_state: Any = None) -> None:
        """Starts an (asynchronous) save; `wait()` or `close()` before relying on it."""
        items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_meta(self, step: int | None = None) -> dict:
        step = self._step_or_latest(step)
        return dict(
            self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, params_like: Any, opt_state_like: Any = None,
                step: int | None = None) -> tuple[Any, Any, dict]:
        """Restores (params, opt_state or None, meta) against abstract (or concrete) targets."""
        step = self._step_or_latest(step)
        items = dict(params=ocp.args.StandardRestore(abstract_like(params_like)),
                     meta=ocp.args.JsonRestore())
        if opt_state_like is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_like(opt_state_like))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        opt_state = restored["opt_state"] if opt_state_like is not None else None
        return restored["params"], opt_state, dict(restored["meta"])

    def restore_raw(self, step: int | None = None) -> tuple[Any, Any, dict]:
        """Restores (params, opt_state or None, meta) as saved, without a target (host arrays)."""
        step = self._step_or_latest(step)
        items = dict(params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        has_opt_state = (self.directory / str(step) / "opt_state").is_dir()
        if has_opt_state:
            items["opt_state"] = ocp.args.StandardRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        opt_state = restored["opt_state"] if has_opt_state else None
        return restored["params"], opt_state, dict(restored["meta"])

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class BestCheckpoint:
    """Keeps the parameters of the step with the highest `metric` (one checkpoint)."""

    def __init__(self, directory: str | pathlib.Path, metric: str):
        self.metric = metric
        self.checkpoints = Checkpoints(directory, max_to_keep=1)
        step = self.checkpoints.latest_step()
        if step is None:
            self.value = None
        else:
            self.value = self.checkpoints.restore_meta(step)["metrics"][metric]

    def maybe_save(self, step: int, params: Any, meta: dict, value: float) -> bool:
        """Saves if `value` beats the best so far (NaN never does). Returns whether it saved."""
        if math.isnan(value) or (self.value is not None and value <= self.value):
            return False
        self.value = float(value)
        metrics = {**meta.get("metrics", {}), self.metric: value}
        self.checkpoints.save(step, params, {**meta, "metrics": metrics})
        return True

    def close(self) -> None:
        self.checkpoints.close()


def save_ranker(workdir: str | pathlib.Path, ranker: Any, *, model_kwargs: dict,
                model_names: list[str], config: ml_collections.ConfigDict | dict, step: int = 0,
                extra_meta: dict | None = None) -> pathlib.Path:
    """Writes a ranker as the `best/` checkpoint of `workdir` (what `load_ranker(workdir)` reads).

    Args:
      ranker: a `spider.model.Ranker`.
      model_kwargs: its constructor arguments without `rngs` (rebuilt by `load_ranker`).
      model_names: the zoo, in the ranker's order.
      config: the run's config (recorded in the meta, as training does).
      step: the checkpoint step.
      extra_meta: more JSON-able meta entries (e.g. where the ranker came from).

    Returns:
      The checkpoint directory (workdir/best).
    """
    if len(model_names) != model_kwargs.get("num_models"):
        raise ValueError(f"{len(model_names)} model names for num_models="
                         f"{model_kwargs.get('num_models')}")
    config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    meta = {"step": step, "model": dict(model_kwargs), "model_names": list(model_names),
            "config": config, "metrics": {}, **(extra_meta or {})}
    checkpoints = Checkpoints(pathlib.Path(workdir) / BEST_DIR, max_to_keep=1)
    try:
        checkpoints.save(step, nnx.to_pure_dict(nnx.split(ranker)[1]), meta)  # as training saves
    finally:
        checkpoints.close()
    return checkpoints.directory


def _ranker_directory(checkpoint_dir: str | pathlib.Path) -> pathlib.Path:
    """A workdir's best/ (else ckpt/) checkpoint directory, or `checkpoint_dir` itself."""
    directory = pathlib.Path(checkpoint_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    for candidate in (directory / BEST_DIR, directory / LATEST_DIR):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return directory


def load_ranker_meta(checkpoint_dir: str | pathlib.Path, step: int | None = None) -> dict:
    """The meta of the checkpoint `load_ranker` reads: step, model (constructor kwargs),
    model_names, config. Not defined for an ensemble directory (each member has its own)."""
    from mspider_jax.spider import ensemble as ensemble_lib

    if ensemble_lib.is_ensemble(checkpoint_dir):
        raise ValueError(f"{checkpoint_dir} is an ensemble of rankers: read the meta of a member "
                         f"({', '.join(str(p) for p in ensemble_lib.member_paths(checkpoint_dir))})")
    checkpoints = Checkpoints(_ranker_directory(checkpoint_dir), max_to_keep=None)
    try:
        return checkpoints.restore_meta(step)
    finally:
        checkpoints.close()


def load_ranker(checkpoint_dir: str | pathlib.Path,
                step: int | None = None, *, with_prior: bool = True) -> tuple[Any, ml_collections.ConfigDict]:
    """Rebuilds a trained `spider.model.Ranker` for inference.

    Args:
      checkpoint_dir: a training workdir (its best/ checkpoint, else ckpt/), a checkpoint
        directory, or an ensemble directory (`spider.ensemble`: a `RankerEnsemble` of its members
        and the first member's config are returned).
      step: a step of that directory; default the latest (the best for best/).
      with_prior: when the workdir has a source-affinity prior (`PRIOR_FILE`, written by training
        with `config.prior.source_affinity_weight > 0`), return the ranker wrapped with it
        (`spider.source_affinity.AffinityPriorRanker`); False: the bare ranker (to train it further).

    Returns:
      (ranker with restored parameters, the run's config with `model_names` added at its top level).
    """
    from mspider_jax.spider import ensemble as ensemble_lib
    from mspider_jax.spider import model as model_lib  # the model imports nothing from here

    if ensemble_lib.is_ensemble(checkpoint_dir):
        if step is not None:
            raise ValueError(f"{checkpoint_dir} is an ensemble: its members' best steps are used, not step={step}")
        return ensemble_lib.load_ensemble(checkpoint_dir)
    checkpoints = Checkpoints(_ranker_directory(checkpoint_dir), max_to_keep=None)
    try:
        meta = checkpoints.restore_meta(step)
        kwargs = dict(meta["model"])
        abstract = nnx.eval_shape(lambda: model_lib.Ranker(**kwargs, rngs=nnx.Rngs(0)))
        graphdef, abstract_state = nnx.split(abstract)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                              nnx.to_pure_dict(abstract_state))
        params, _, meta = checkpoints.restore(target, step=step)
    finally:
        checkpoints.close()
    ranker = nnx.merge(graphdef, params)
    prior_path = pathlib.Path(checkpoint_dir) / PRIOR_FILE
    if with_prior and prior_path.is_file():
        from mspider_jax.spider import source_affinity

        ranker = source_affinity.AffinityPriorRanker(ranker, source_affinity.SourceAffinityPrior.load(prior_path))
    return ranker, _run_config(meta)


def _run_config(meta: dict) -> ml_collections.ConfigDict:
    """The run's config recorded in a checkpoint's meta, with `model_names` at its top level."""
    config = ml_collections.ConfigDict(meta.get("config", {}))
    with config.unlocked():
        config.model_names = list(meta["model_names"])
    return config


def load_ranker_config(checkpoint_dir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config `load_ranker` returns, read from the meta alone (no parameters restored)."""
    return _run_config(load_ranker_meta(checkpoint_dir))
