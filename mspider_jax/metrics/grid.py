"""Batch evaluation at scale: the grid of (tasks x models x metrics) scores from the feature store.

`score_grid(store, datasets, models, metrics)` schedules the grid over every device of every process
(`mspider_jax.sharding`):

* per (dataset, metric), the models are scheduled with `score_zoo`'s scheduler (`_dispatch._score_models`):
  models of equal input shapes stacked on a model axis split over the device mesh (`NamedSharding`,
  padded to a multiple of the device count; each device scores whole models), lone shapes spread
  round-robin over the devices. Model shapes come from the store manifests, so nothing is read before
  the schedule is known, and each process reads only the entries of the models its devices score.
* `stream=True`: metrics with a streaming path (`streaming.streaming_names()`) score each model from
  row chunks of its memory-mapped entry (memory independent of N); model j is scored by the process
  owning device j mod #devices, its chunks split over that process's local devices (sample axis).
  Metrics without a streaming path fall back to the in-memory schedule.
* results are gathered to every process in model order; only process 0 should write them
  (`sharding.is_main_process()`; `write_grid_csv` does nothing elsewhere).

Multi-host: call `sharding.initialize_distributed()` first (or `mspider metrics --distributed`), in every
process, with the same arguments; `sharding.mesh()` then spans all hosts' devices.

Labels: every model of a dataset must have the same labels (every process checks them all: they are
N integers per model). A bad entry found while a process reads its own models (e.g. NaN features) stops
that process; the others then wait in the next collective until JAX's distributed timeout.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mspider_jax import sharding
from mspider_jax.metrics import _dispatch
from mspider_jax.metrics import _validation as V
from mspider_jax.metrics import streaming as streaming_lib
from mspider_jax.metrics._registry import get


@dataclasses.dataclass
class GridResult:
    """Scores of a grid. `scores[(dataset, metric)]` is [M] float64 in `models[dataset]` order (NaN
    where the metric failed or cannot run; the reason is in `errors[(dataset, metric)]`)."""

    datasets: list[str]
    metrics: list[str]
    models: dict[str, list[str]]
    scores: dict[tuple[str, str], np.ndarray]
    errors: dict[tuple[str, str], str]

    def table(self, dataset: str) -> str:
        """Markdown table of one dataset: a row per model, a column per metric."""
        from mspider_jax.metrics.report import format_table

        return format_table(self.models[dataset], {m: self.scores[(dataset, m)] for m in self.metrics})


def _shape_signature(manifest: dict[str, Any], needs: frozenset[str]) -> tuple:
    """The `_dispatch.input_signature` a model will have, from its manifest (inputs are float32 after
    validation: the store holds float32 or float16)."""
    shapes = {"features": (manifest["num_examples"], manifest["feature_dim"])}
    if manifest["num_logits"] is not None:
        shapes["logits"] = (manifest["num_examples"], manifest["num_logits"])
    return tuple((k, tuple(shapes[k]), np.dtype(np.float32).str) for k in sorted(shapes) if k in needs)


def _skip_reason(spec: Any, manifests: list[dict[str, Any]], target: str) -> str | None:
    if spec.needs - {"features", "logits"}:
        return f"needs {', '.join(sorted(spec.needs - {'features', 'logits'}))} (not in the feature store)"
    if "logits" in spec.needs and any(m["num_logits"] is None for m in manifests):
        return "needs logits"
    if target not in spec.targets:
        return f"does not support {target} targets"
    return None


def score_grid(
    store: Any,
    datasets: Sequence[str],
    models: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "train",
    convention: str = "paper",
    stream: bool = False,
    chunk_size: int = streaming_lib.DEFAULT_CHUNK_ROWS,
    mesh: Mesh | None = None,
    progress: Callable[[str], None] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> GridResult:
    """Scores every (dataset, model, metric) of the grid; see the module docstring for the schedule.

    Args:
      store: a `FeatureStore` or its root directory.
      datasets: dataset names in the store.
      models: model names (default: every model the store has for each dataset and split).
      metrics: metric names (default: every registered metric the store's inputs allow).
      split, convention: as for `score_zoo`; `**options` are passed to every metric.
      metric_options: metric -> options for that metric only (e.g. {"otce": {"solver": "exact"}}),
        on top of `**options`.
      stream: score the streaming metrics from row chunks (bounded memory).
      chunk_size: rows per chunk when streaming.
      mesh: the device mesh (default `sharding.mesh()`: every device of every process).
      progress: receives one line per finished (dataset, metric) with the elapsed time and an ETA.

    Returns:
      A `GridResult`, identical on every process.

    Raises:
      ValueError: unknown dataset, model or metric names, or models of a dataset whose labels differ.
    """
    from mspider_jax.features import FeatureStore

    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    device_mesh = sharding.mesh() if mesh is None else mesh
    devices = list(device_mesh.devices.flat)
    local_mesh = sharding.mesh([d for d in devices if d.process_index == jax.process_index()])
    names = list(metrics) if metrics is not None else None
    if names is not None:
        for name in names:
            get(name)  # unknown names fail before any work
    result = GridResult(list(datasets), [], {}, {}, {})
    started = time.perf_counter()
    total_cells = None
    done_cells = 0
    for dataset in datasets:
        dataset_models = list(models) if models is not None else store.models(dataset, split)
        if not dataset_models:
            raise ValueError(f"feature store {store.root}: no models for dataset {dataset!r}, split {split!r} (datasets: {store.datasets()})")
        manifests = [store.manifest(dataset, split, m) for m in dataset_models]
        first_labels = np.asarray(store.read(dataset, split, dataset_models[0]).labels)
        target = V.infer_target_type(first_labels)
        from mspider_jax import metrics as M

        dataset_metrics = names if names is not None else [n for n in M.names() if _skip_reason(get(n), manifests, target) is None]
        for name in dataset_metrics:
            if name not in result.metrics:
                result.metrics.append(name)
        if total_cells is None:
            total_cells = len(datasets) * len(dataset_metrics)
        result.models[dataset] = dataset_models
        loaded: dict[int, dict[str, np.ndarray]] = {}

        # Every process checks every model's labels (N integers each) so that a mismatch fails
        # everywhere at once instead of leaving the other processes waiting in a collective.
        for model in dataset_models[1:]:
            if not np.array_equal(np.asarray(store.read(dataset, split, model).labels), first_labels):
                raise ValueError(f"feature store {store.root}: labels of model {model!r} differ from those of {dataset_models[0]!r} for {dataset}/{split}")

        def read_entry(m: int, dataset: str = dataset, dataset_models: list[str] = dataset_models) -> Any:
            return store.read(dataset, split, dataset_models[m])

        for name in dataset_metrics:
            cell_started = time.perf_counter()
            spec = get(name)
            cell_options = {**options, **(metric_options or {}).get(name, {})}
            reason = _skip_reason(spec, manifests, target)
            try:
                if reason is not None:
                    raise ValueError(f"{name}: {reason}")
                if stream and spec.streaming is not None:
                    values = _stream_models(
                        name, read_entry, len(dataset_models), device_mesh, local_mesh, convention=convention,
                        chunk_size=chunk_size, options=cell_options,
                    )
                else:
                    values = _in_memory_models(
                        spec, read_entry, loaded, first_labels, manifests, device_mesh, convention=convention, options=cell_options,
                    )
                result.scores[(dataset, name)] = values
            except ValueError as err:
                result.errors[(dataset, name)] = str(err)
                result.scores[(dataset, name)] = np.full(len(dataset_models), np.nan)
            done_cells += 1
            if progress is not None:
                elapsed = time.perf_counter() - started
                eta = elapsed / done_cells * max(total_cells - done_cells, 0)
                status = "failed" if (dataset, name) in result.errors else "done"
                progress(f"[{done_cells}/{total_cells}] {dataset} {name} {status} in {time.perf_counter() - cell_started:.1f}s; elapsed {elapsed:.0f}s, ETA {eta:.0f}s")
        loaded.clear()
    return result


def _in_memory_models(
    spec: Any,
    read_entry: Callable[[int], Any],
    loaded: dict[int, dict[str, np.ndarray]],
    labels: np.ndarray,
    manifests: list[dict[str, Any]],
    device_mesh: Mesh,
    *,
    convention: str,
    options: dict[str, Any],
) -> np.ndarray:
    prepared = _dispatch._prepare_shared(
        spec, labels=labels, source_labels=None, convention=convention, key=None, options=options,
        given={"features": True, "logits": all(m["num_logits"] is not None for m in manifests)},
    )

    def load_model(m: int) -> dict[str, np.ndarray]:
        if m not in loaded:  # read once per dataset, shared by its metrics
            entry = read_entry(m)
            arrays = {"features": np.asarray(entry.features, dtype=np.float32)}
            if entry.logits is not None:
                arrays["logits"] = np.asarray(entry.logits, dtype=np.float32)
            loaded[m] = arrays
        return _dispatch._prepare_model(spec, prepared, loaded[m], model=f" (model {m})")

    signatures = [_dispatch.planned_signature(spec, prepared, _shape_signature(manifest, spec.needs)) for manifest in manifests]
    raw = _dispatch._score_models(spec, prepared, signatures, load_model, device_mesh)
    return _dispatch.finish_zoo(spec, raw)


def _stream_models(
    name: str,
    read_entry: Callable[[int], Any],
    num_models: int,
    device_mesh: Mesh,
    local_mesh: Mesh,
    *,
    convention: str,
    chunk_size: int,
    options: dict[str, Any],
) -> np.ndarray:
    """Streams each model on the process owning device j mod #devices; gathers [M] to every host."""
    devices = list(device_mesh.devices.flat)
    local = {}
    for m in range(num_models):
        if devices[m % len(devices)].process_index != jax.process_index():
            continue
        local[m] = np.asarray(streaming_lib.score_streaming(
            name, read_entry(m), convention=convention, chunk_size=chunk_size, mesh=local_mesh, **options,
        ))
    if jax.process_count() == 1:
        values = np.stack([local[m] for m in range(num_models)])
    else:
        values = _dispatch._allgather_positions(local, num_models, device_mesh)
    return _dispatch.finish_zoo(get(name), values)


def write_grid_csv(path: str | os.PathLike, result: GridResult) -> bool:
    """CSV with columns dataset, model, <metric>... (one row per dataset and model), written atomically
    by process 0 only. Returns True if this process wrote it."""
    if not sharding.is_main_process():
        return False
    from mspider_jax.evaluation._io import write_csv_atomic

    rows = []
    for dataset in result.datasets:
        for i, model in enumerate(result.models[dataset]):
            cells = []
            for metric in result.metrics:
                values = result.scores.get((dataset, metric))
                cells.append(repr(float(values[i])) if values is not None else "nan")
            rows.append([dataset, model, *cells])
    write_csv_atomic(path, ["dataset", "model", *result.metrics], rows)
    return True


__all__ = ["GridResult", "score_grid", "write_grid_csv"]
