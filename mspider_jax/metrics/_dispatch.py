"""The uniform entry points: `score` (one model), `score_components`, `score_zoo` (many models).

Flow of one call:
1. look the metric up (`get(name)`), check the convention and that every needed input is given;
2. infer the target type from the labels (integer -> classification, float -> regression) and
   check the metric supports it; validate on the host (shapes, finiteness, N, class sizes; labels
   remapped to 0..C-1 with a warning);
3. inside `precision_scope()` (float64 reductions where the backend has float64), call the metric's
   jit-compiled fn: scalar options, `num_classes` and `convention` are static, arrays are traced.
   One compiled function is cached per (metric, static options); jax adds its own shape cache.

`score_zoo` schedules the models of a zoo over a device mesh (`_score_models`, shared with
`grid.score_grid`): models of equal input shapes are stacked on a model axis placed on the mesh with
`NamedSharding` (padded to a multiple of the device count) and run through one `shard_map`-ped, `vmap`-ed
compiled call, so every device works on whole models; a lone model of its shape runs unbatched on one
device, lone models spread round-robin over the devices. Results are gathered to every host in zoo order.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from mspider_jax import sharding
from mspider_jax.metrics import _linalg
from mspider_jax.metrics import _validation as V
from mspider_jax.metrics._registry import CONVENTIONS, MetricSpec, get

# Inputs that differ per model in a zoo (stacked on a leading model axis); labels are shared.
PER_MODEL_INPUTS = ("features", "logits", "source_features")

_COMPILED: dict[tuple, Any] = {}


# Compiled metric programs kept before the next metric call drops them all (see clear_compiled).
MAX_COMPILED_PROGRAMS = 400


def clear_compiled() -> None:
    """Drops every compiled metric program (ours and JAX's caches).

    Each (metric, options, input shapes) compiles once and stays cached for the life of the
    process. A long job that scores many differently shaped tasks (class counts, sample counts)
    accumulates thousands of executables; on CPU each holds memory mappings of its JIT code, and
    the process can run out of them ("LLVM compilation error: Cannot allocate memory"; it crashed
    after ~1000 metric programs on the 2-core machine). `score`, `score_components` and `score_zoo`
    therefore call this themselves once MAX_COMPILED_PROGRAMS programs are cached; call it directly
    between batches of work whose shapes will not come back. The next call of a metric compiles again.
    """
    _COMPILED.clear()
    jax.clear_caches()


def compiled_program_count() -> int:
    """Compiled programs (one per input-shape specialisation) held by the cached metric functions."""
    return sum(fn._cache_size() for fn in _COMPILED.values() if hasattr(fn, "_cache_size"))


def _limit_compiled_programs() -> None:
    if compiled_program_count() >= MAX_COMPILED_PROGRAMS:
        clear_compiled()


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _split_options(spec: MetricSpec, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options -> (static hashable values, traced arrays). Unknown option names are a ValueError."""
    try:
        params = inspect.signature(spec.fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    static, traced = {}, {}
    for option, value in options.items():
        if params and not takes_any and option not in params:
            known = sorted(
                n for n, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in (*PER_MODEL_INPUTS, "labels", "source_labels", "num_classes", "num_source_classes", "convention", "key")
            )
            raise ValueError(f"{spec.name}: unknown option {option!r}; options: {', '.join(known) or '(none)'}")
        if isinstance(value, (np.ndarray, jax.Array)):
            traced[option] = value
        else:
            if isinstance(value, list):
                value = tuple(value)
            try:
                hash(value)
            except TypeError:
                raise ValueError(f"{spec.name}: option {option!r} must be hashable or an array, got {type(value).__name__}") from None
            static[option] = value
    return static, traced


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raises ValueError if metric `name` is unknown or does not take one of `options` (by name)."""
    _split_options(get(name), options)


class _Prepared:
    """Validated shared inputs of one call (labels and everything that does not vary by model)."""

    def __init__(self) -> None:
        self.static: dict[str, Any] = {}
        self.shared: dict[str, Any] = {}
        self.n: int = 0  # rows of the inputs as given
        self.rows: np.ndarray | None = None  # the rows the metric reads (`MetricSpec.row_subset`), None: all


def _prepare_shared(
    spec: MetricSpec,
    *,
    labels: Any,
    source_labels: Any,
    convention: str,
    key: Any,
    options: dict[str, Any],
    given: dict[str, bool],
) -> _Prepared:
    name = spec.name
    if convention not in CONVENTIONS:
        raise ValueError(f"{name}: convention must be one of {CONVENTIONS}, got {convention!r}")
    if labels is None:
        raise ValueError(f"{name}: input 'labels' is required")
    for needed in sorted(spec.needs):
        if not given.get(needed, False):
            raise ValueError(f"{name}: input {needed!r} is required (this metric needs {', '.join(sorted(spec.needs))})")
    target = V.infer_target_type(labels)
    if target not in spec.targets:
        raise ValueError(f"{name}: {target} targets are not supported (supported: {', '.join(sorted(spec.targets))}); labels dtype {np.asarray(labels).dtype}")

    prepared = _Prepared()
    if target == V.CLASSIFICATION:
        y, num_classes, counts = V.remap_labels(labels, metric=name)
        if num_classes < spec.min_classes:
            raise ValueError(f"{name}: needs at least {spec.min_classes} classes, labels have {num_classes}")
        V.check_class_sizes(name, counts, spec.min_class_size)
    else:
        y, num_classes = V.regression_targets(labels, metric=name), None
    prepared.n = y.shape[0]
    if prepared.n < spec.min_samples:
        raise ValueError(f"{name}: needs at least {spec.min_samples} samples, got N={prepared.n}")
    prepared.shared["labels"] = y
    prepared.static["num_classes"] = num_classes
    prepared.static["convention"] = convention

    if "source_labels" in spec.needs:
        ys, num_source, _ = V.remap_labels(source_labels, name="source_labels", metric=name)
        prepared.shared["source_labels"] = ys
        if _accepts(spec.fn, "num_source_classes"):
            prepared.static["num_source_classes"] = num_source

    if key is None and spec.is_randomized:
        key = jax.random.key(0)
    if key is None:
        prepared.static["key"] = None
    else:
        prepared.shared["key"] = key

    static, traced = _split_options(spec, options)
    if spec.label_statics is not None and num_classes is not None:
        static = {**spec.label_statics(y, num_classes), **static}
    prepared.static.update(static)
    prepared.shared.update(traced)
    if spec.row_subset is not None:
        rows = spec.row_subset(prepared.n, prepared.shared.get("key"), prepared.static)
        if rows is not None:
            prepared.rows = np.asarray(rows)
            prepared.shared["labels"] = np.take(prepared.shared["labels"], prepared.rows, axis=0)
    return prepared


def _is_subsampled(prepared: _Prepared, name: str, num_rows: int) -> bool:
    """Whether input `name` with `num_rows` rows is cut to `prepared.rows` (the per-sample inputs:
    every one with N rows except the source set)."""
    return prepared.rows is not None and name != "source_features" and num_rows == prepared.n


def _take_rows(prepared: _Prepared, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows `prepared.rows` of each per-sample input, gathered straight into buffers the CPU
    backend adopts without a copy (`V.zero_copy_ready`)."""
    return {name: V.take_rows(x, prepared.rows) if _is_subsampled(prepared, name, x.shape[0]) else x
            for name, x in arrays.items()}


def planned_signature(spec: MetricSpec, prepared: _Prepared, signature: tuple) -> tuple:
    """The signature of one model's arrays as `_prepare_model` will return them, from the raw
    signature (callers that group models before loading them: the store grid)."""
    signature = spec.model_signature(signature, prepared.static["convention"])
    return tuple((name, (len(prepared.rows), *shape[1:]) if _is_subsampled(prepared, name, shape[0]) else shape, dtype)
                 for name, shape, dtype in signature)


def _prepare_model(spec: MetricSpec, prepared: _Prepared, inputs: dict[str, Any], model: str = "") -> dict[str, np.ndarray]:
    """Validates one model's per-model inputs (features, logits, source_features) -> arrays."""
    where = f"{spec.name}{model}"
    if spec.host_reduce is not None:
        reduced = spec.host_reduce({k: inputs[k] for k in PER_MODEL_INPUTS if k in spec.needs}, prepared.static["convention"], where)
        if reduced is not None:
            for input_name, x in reduced.items():
                V.check_num_rows(where, input_name, x, prepared.n)
            return _take_rows(prepared, reduced)
    arrays = {}
    for input_name in PER_MODEL_INPUTS:
        if input_name not in spec.needs:
            continue
        x = V.as_float_array(input_name, inputs[input_name], ndim=2, metric=where)
        if input_name != "source_features":
            V.check_num_rows(where, input_name, x, prepared.n)
        elif "source_labels" in prepared.shared and x.shape[0] != prepared.shared["source_labels"].shape[0]:
            raise ValueError(f"{where}: source_features has {x.shape[0]} rows but source_labels have {prepared.shared['source_labels'].shape[0]}")
        arrays[input_name] = x
    arrays = _take_rows(prepared, arrays)
    if spec.check_inputs is not None:
        spec.check_inputs({**arrays, **prepared.shared}, prepared.static["num_classes"])
    return arrays


def _host_buffers_adopted() -> bool:
    """Whether inputs reach the computation by adopting host buffers (the CPU backend): only then is
    an aligned copy worth making (a GPU/TPU transfer reads any host buffer)."""
    return jax.default_backend() == "cpu"


def _compiled(spec: MetricSpec, static: dict[str, Any], traced_names: tuple[str, ...], batched: tuple[str, ...]) -> Any:
    """The (cached) jitted callable `f(traced: dict) -> result` for one metric and static options.

    With `batched` non-empty, the named traced inputs carry a leading model axis (vmap).
    """
    cache_key = (spec.name, id(spec.fn), tuple(sorted(static.items(), key=lambda kv: kv[0])), traced_names, batched)
    fn = _COMPILED.get(cache_key)
    if fn is not None:
        return fn

    def call(traced: dict[str, Any]) -> Any:
        return spec.fn(**traced, **static)

    if batched:
        call = jax.vmap(call, in_axes=({n: (0 if n in batched else None) for n in traced_names},))
    fn = jax.jit(call) if spec.jittable else call
    _COMPILED[cache_key] = fn
    return fn


def _check_finite(spec: MetricSpec, values: np.ndarray, model: str = "") -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"{spec.name}{model}: the result is not finite ({values}); the inputs are degenerate for this metric "
            "(e.g. constant features, a singular covariance, or too few samples per class)"
        )


def _ready_for_device(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-model inputs as the backend takes them fastest: on CPU 64-byte aligned (adopted in place,
    `V.zero_copy_ready`). Called right before each model's dispatch, so that in a zoo the copy of
    one model overlaps the computation of the previous one (copying every model first was slower
    than a loop of `score` calls)."""
    if not _host_buffers_adopted():
        return arrays
    return {name: V.zero_copy_ready(x) for name, x in arrays.items()}


def _evaluate(spec: MetricSpec, prepared: _Prepared, arrays: dict[str, np.ndarray]) -> np.ndarray:
    traced = {**prepared.shared, **_ready_for_device(arrays)}
    names = tuple(sorted(traced))
    with _linalg.precision_scope():
        fn = _compiled(spec, prepared.static, names, ())
        out = np.asarray(jax.device_get(fn(traced)))
    return out


def score_components(
    name: str,
    *,
    features: Any = None,
    logits: Any = None,
    labels: Any,
    source_features: Any = None,
    source_labels: Any = None,
    convention: str = "paper",
    key: Any = None,
    **options: Any,
) -> np.ndarray:
    """The raw output of a metric for one model as a NumPy array (a scalar array, or for zoo-relative
    metrics such as NCTI/ETran their per-model components [K]). Arguments as in `score`."""
    _limit_compiled_programs()
    spec = get(name)
    inputs = {"features": features, "logits": logits, "source_features": source_features, "source_labels": source_labels}
    prepared = _prepare_shared(
        spec, labels=labels, source_labels=source_labels, convention=convention, key=key, options=options,
        given={k: v is not None for k, v in inputs.items()},
    )
    arrays = _prepare_model(spec, prepared, inputs)
    out = _evaluate(spec, prepared, arrays)
    _check_finite(spec, out)
    return out


def score(
    name: str,
    *,
    features: Any = None,
    logits: Any = None,
    labels: Any,
    source_features: Any = None,
    source_labels: Any = None,
    convention: str = "paper",
    key: Any = None,
    **options: Any,
) -> float:
    """Transferability score of one model on one target task (larger = more transferable).

    Args:
      name: a registered metric (see `names()`).
      features: [N, D] target features (penultimate layer), float32 or float64.
      logits: [N, Cs] raw source-head logits (the metric applies softmax where its spec says so).
      labels: [N] integer class labels (classification; any integer values, remapped to 0..C-1 with a
        warning when not contiguous) or float targets [N] / [N, K] (regression).
      source_features, source_labels: source-set inputs for metrics that need them (OTCE, PED).
      convention: "paper" (the method as published, default) or "model_spider" (the benchmark code's
        behaviour). Metrics whose two conventions coincide document it.
      key: PRNG key for randomized metrics (default: `jax.random.key(0)`).
      **options: metric-specific options (see each metric module's docstring).

    Returns:
      The score as a Python float.

    Raises:
      ValueError: unknown metric or convention, a missing or malformed input (shape, NaN/inf, too few
        samples or classes), an unsupported target type, a zoo-relative metric (use `score_zoo`), or a
        non-finite result on degenerate inputs.
    """
    spec = get(name)
    if spec.is_zoo_relative:
        raise ValueError(
            f"{name} is only defined relative to a zoo of models: use score_zoo(...) for the scores, or "
            "score_components(...) for one model's components"
        )
    out = score_components(
        name, features=features, logits=logits, labels=labels, source_features=source_features,
        source_labels=source_labels, convention=convention, key=key, **options,
    )
    if out.ndim != 0 and out.size != 1:
        raise ValueError(f"{name}: expected a scalar from the metric, got shape {out.shape}")
    return float(out.reshape(()))


def _as_model_list(name: str, value: Any) -> list[Any] | None:
    """A zoo input given as a list of arrays or as one stacked [M, ...] array -> list of arrays."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    array = np.asarray(value) if not isinstance(value, jax.Array) else value
    if array.ndim != 3:
        raise ValueError(f"score_zoo: {name} must be a list of [N, D] arrays or one [M, N, D] array, got shape {array.shape}")
    return [array[m] for m in range(array.shape[0])]


def input_signature(arrays: dict[str, np.ndarray]) -> tuple:
    """The (name, shape, dtype) of each per-model input: models with equal signatures batch together."""
    return tuple((k, tuple(v.shape), np.dtype(v.dtype).str) for k, v in sorted(arrays.items()))


def _model_groups(signatures: Sequence[tuple]) -> list[list[int]]:
    """Groups model indices whose per-model inputs have identical shapes and dtypes (one compiled,
    vmapped call per group), in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for index, signature in enumerate(signatures):
        groups.setdefault(signature, []).append(index)
    return list(groups.values())


def _compiled_sharded(
    spec: MetricSpec, static: dict[str, Any], traced_names: tuple[str, ...], batched: tuple[str, ...], device_mesh: Mesh
) -> Any:
    """The (cached) jitted `f(traced) -> [M_padded, ...]`: the inputs named in `batched` carry a model
    axis split over the mesh, the others are replicated; each device vmaps over its own models (no
    communication inside: `shard_map` runs the per-device program as written)."""
    devices = tuple(d.id for d in device_mesh.devices.flat)
    cache_key = ("sharded", spec.name, id(spec.fn), tuple(sorted(static.items(), key=lambda kv: kv[0])), traced_names, batched, devices, device_mesh.axis_names)
    fn = _COMPILED.get(cache_key)
    if fn is not None:
        return fn
    axis = device_mesh.axis_names[0]

    def call(traced: dict[str, Any]) -> Any:
        return spec.fn(**traced, **static)

    if _is_cpu_mesh(device_mesh):
        # Several CPU "devices" of one host share its intra-op thread pool: a batched custom call
        # (LAPACK eigh/cholesky over a vmapped model axis) on each device at once waits for pool
        # threads the other devices hold, and the run deadlocks (jax 0.10, 2 cores, 2+ devices, 2+
        # models per device). One model at a time per device (lax.map) avoids the batched calls.
        def per_device(traced: dict[str, Any]) -> Any:
            fixed = {n: traced[n] for n in traced_names if n not in batched}
            return jax.lax.map(lambda rows: call({**fixed, **rows}), {n: traced[n] for n in batched})
    else:
        per_device = jax.vmap(call, in_axes=({n: (0 if n in batched else None) for n in traced_names},))
    in_specs = ({n: (PartitionSpec(axis) if n in batched else PartitionSpec()) for n in traced_names},)
    fn = jax.jit(jax.shard_map(per_device, mesh=device_mesh, in_specs=in_specs, out_specs=PartitionSpec(axis), check_vma=False))
    _COMPILED[cache_key] = fn
    return fn


def _is_cpu_mesh(device_mesh: Mesh) -> bool:
    """True for a mesh of CPU devices (several of them share one host's cores and thread pool, e.g.
    --xla_force_host_platform_device_count)."""
    devices = list(device_mesh.devices.flat)
    return all(d.platform == "cpu" for d in devices)


def _replicate_shared(shared: dict[str, Any], device_mesh: Mesh) -> dict[str, Any]:
    """Shared inputs (labels, key, array options) on every device of the mesh (all processes)."""
    return {k: jax.device_put(v, sharding.replicated(device_mesh)) for k, v in shared.items()}


def _score_models(
    spec: MetricSpec,
    prepared: _Prepared,
    signatures: Sequence[tuple],
    load_model: Any,
    device_mesh: Mesh,
) -> np.ndarray:
    """Scores M models (raw outputs [M, ...]) on a device mesh, in model order, on every host.

    Args:
      spec, prepared: the metric and its validated shared inputs.
      signatures: [M] `input_signature` of each model (known before loading, e.g. from a store manifest).
      load_model: `m -> validated per-model arrays`; called only for the models this process computes
        (with several processes each one loads just its shard), at most once per model.
      device_mesh: 1-D mesh; `sharding.mesh()` spans every device of every process.

    Schedule: a group of >= 2 models with equal signatures is stacked on a model axis padded to a
    multiple of the device count (the padding repeats the group's last model and is dropped) and split
    over the mesh (`NamedSharding`), one `shard_map`-ped vmapped call; each model's arrays travel to
    their device on their own and are stacked there (`sharding.array_from_row_arrays`); models alone in their group run
    unbatched (bit-identical to `score`), the j-th of them on device j mod #devices. All calls are
    dispatched before any result is read, so devices run concurrently; a CPU device gets its next
    lone model when the previous one is done (inputs readied meanwhile), not all at once. On a single CPU device every
    model runs as a lone model (stacking only adds copies there); on several CPU devices each device
    loops over its share of a group (`lax.map`) instead of vmapping it (see `_compiled_sharded`).
    """
    num_models = len(signatures)
    devices = list(device_mesh.devices.flat)
    local_devices = {d.id for d in devices if d.process_index == jax.process_index()}
    cache: dict[int, dict[str, np.ndarray]] = {}

    def model(m: int) -> dict[str, np.ndarray]:
        if m not in cache:
            cache[m] = load_model(m)
        return cache[m]

    groups = _model_groups(signatures)
    if len(devices) == 1 and _is_cpu_mesh(device_mesh):
        # One CPU device: stacking the group only adds copies (measured 0.75-0.85x the speed of a
        # loop); its models run as lone models instead, all dispatched before any result is read.
        groups = [[m] for g in groups for m in g]
    batched_groups = [g for g in groups if len(g) > 1 and spec.jittable]
    singles = [m for g in groups if not (len(g) > 1 and spec.jittable) for m in g]
    results: list[np.ndarray | None] = [None] * num_models
    with _linalg.precision_scope():
        pending = []
        if batched_groups:
            shared = _replicate_shared(prepared.shared, device_mesh)
        for group in batched_groups:
            padded = sharding.round_up(len(group), device_mesh)
            member = lambda row, group=group: group[min(int(row), len(group) - 1)]  # noqa: E731
            stacked = {}
            for name, shape, dtype in signatures[group[0]]:
                stacked[name] = sharding.array_from_row_arrays(
                    (padded, *shape), np.dtype(dtype), device_mesh,
                    lambda row, name=name, member=member: model(member(row))[name],
                )
            traced = {**shared, **stacked}
            fn = _compiled_sharded(spec, prepared.static, tuple(sorted(traced)), tuple(sorted(stacked)), device_mesh)
            pending.append((group, fn(traced)))
        # Lone models: round-robin over the devices; each process computes those on its devices.
        local_single_values: dict[int, Any] = {}
        running_on: dict[int, Any] = {}  # CPU device id -> the value of its computation in flight
        for position, m in enumerate(singles):
            device = devices[position % len(devices)]
            if device.id not in local_devices:
                continue
            arrays = model(m)
            if spec.jittable:
                traced = jax.device_put({**prepared.shared, **_ready_for_device(arrays)}, device)
                fn = _compiled(spec, prepared.static, tuple(sorted(traced)), ())
                if device.platform == "cpu" and device.id in running_on:
                    # One computation at a time per CPU device: dispatched together they ran
                    # concurrently on the same cores (hscore zoo 0.96x of a loop of `score` calls vs
                    # 1.06x this way; this model's inputs were readied while the last one ran).
                    jax.block_until_ready(running_on[device.id])
                local_single_values[position] = fn(traced)
                running_on[device.id] = local_single_values[position]
            else:
                with jax.default_device(device):
                    local_single_values[position] = spec.fn(**prepared.shared, **arrays, **prepared.static)
        for group, out in pending:
            values = sharding.gather(out)
            for position, m in enumerate(group):
                results[m] = values[position]
        if singles:
            local = {p: np.asarray(jax.device_get(v)) for p, v in local_single_values.items()}
            if jax.process_count() == 1:
                for position, m in enumerate(singles):
                    results[m] = local[position]
            else:
                results_singles = _allgather_positions(local, len(singles), device_mesh)
                for position, m in enumerate(singles):
                    results[m] = results_singles[position]
    return np.stack(results)


def _allgather_positions(local: dict[int, np.ndarray], count: int, device_mesh: Mesh) -> np.ndarray:
    """Every process's {position: value} of the lone models -> all values [count, ...] on every host.

    Position j was computed by the process owning device j mod n (n devices). The values go into a
    global [n * ceil(count / n), ...] array split over the mesh, position j at row
    (j mod n)·ceil(count / n) + j div n, i.e. on the device that computed it, so each process supplies
    only its own values; `sharding.gather` then brings the whole array to every host.
    """
    devices = list(device_mesh.devices.flat)
    n = len(devices)
    per_device = -(-count // n)
    shape = next(iter(local.values())).shape if local else None
    # Agree on the output shape and dtype: every process computed at least one value when count >= #devices;
    # otherwise broadcast from the processes that did (a tiny allgather of the shape).
    from jax.experimental import multihost_utils

    dims = np.full((8,), -1, np.int64)
    if shape is not None:
        dims[: len(shape)] = shape
        dims[7] = len(shape)
    all_dims = np.asarray(multihost_utils.process_allgather(dims))
    known = all_dims[all_dims[:, 7] >= 0][0]
    shape = tuple(int(d) for d in known[: int(known[7])])
    def load_rows(rows: np.ndarray) -> np.ndarray:
        block = np.zeros((len(rows), *shape), np.float64)
        for i, row in enumerate(rows):
            k, slot = divmod(int(row), per_device)
            position = slot * n + k
            if position < count:
                block[i] = local[position]
        return block

    with _linalg.precision_scope():  # keep float64 values float64 on the way through the devices
        array = sharding.array_from_rows((n * per_device, *shape), np.float64, device_mesh, load_rows)
        values = sharding.gather(array)
    out = np.empty((count, *shape), np.float64)
    for position in range(count):
        out[position] = values[(position % n) * per_device + position // n]
    return out


def score_zoo(
    name: str,
    *,
    features: Any = None,
    labels: Any,
    logits: Any = None,
    source_features: Any = None,
    source_labels: Any = None,
    convention: str = "paper",
    key: Any = None,
    mesh: Mesh | None = None,
    **options: Any,
) -> np.ndarray:
    """Scores M models of a zoo on one target task: -> [M] float64 (larger = more transferable).

    `features`, `logits` and `source_features` are each a list of M per-model arrays or one stacked
    [M, N, D] array; labels, source labels, key and options are shared. Models with equal input shapes
    run in one `vmap`-ed, jit-compiled call whose model axis is split over the devices of `mesh`
    (default `sharding.mesh()`: every device; each device scores whole models); different feature dims
    form separate groups (no padding of D or N: it is not exact for most metrics). Results equal a loop
    of `score` calls (same key for every model) up to the float32 rounding of batched products (~1e-6
    relative; a model alone in its group is bit-identical). Zoo-relative metrics (NCTI, ETran) combine
    their per-model components with the metric's `combine_zoo`.
    """
    _limit_compiled_programs()
    spec = get(name)
    per_input = {k: _as_model_list(k, v) for k, v in (("features", features), ("logits", logits), ("source_features", source_features))}
    lengths = {k: len(v) for k, v in per_input.items() if v is not None and k in spec.needs}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"score_zoo {name}: inputs disagree on the number of models: {lengths}")
    num_models = next(iter(lengths.values()), 0)
    given = {k: v is not None for k, v in per_input.items()} | {"source_labels": source_labels is not None}
    prepared = _prepare_shared(
        spec, labels=labels, source_labels=source_labels, convention=convention, key=key, options=options, given=given,
    )
    if num_models == 0:
        raise ValueError(f"score_zoo {name}: no models given")
    per_model = [
        _prepare_model(spec, prepared, {k: (v[m] if v is not None else None) for k, v in per_input.items()}, model=f" (model {m})")
        for m in range(num_models)
    ]
    device_mesh = sharding.mesh() if mesh is None else mesh
    raw = _score_models(spec, prepared, [input_signature(a) for a in per_model], per_model.__getitem__, device_mesh)
    return finish_zoo(spec, raw)


def finish_zoo(spec: MetricSpec, raw: np.ndarray) -> np.ndarray:
    """Raw per-model outputs [M, ...] -> scores [M] float64: finiteness check per model, then the
    zoo-relative combination (NCTI, ETran)."""
    values = np.asarray(raw).astype(np.float64)
    num_models = values.shape[0]
    for m in range(num_models):
        _check_finite(spec, values[m], model=f" (model {m})")
    if spec.is_zoo_relative:
        with _linalg.precision_scope():
            values = np.asarray(spec.combine_zoo(values), dtype=np.float64)
    return values.reshape(num_models)


def names_supporting(target: str) -> tuple[str, ...]:
    """Registered metrics that support `target` ("classification" or "regression")."""
    from mspider_jax.metrics._registry import registered_names

    return tuple(n for n in registered_names() if target in get(n).targets)


__all__: Sequence[str] = ("score", "score_components", "score_zoo", "names_supporting", "finish_zoo", "input_signature", "check_options")
