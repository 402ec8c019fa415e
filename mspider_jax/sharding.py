"""Device meshes and shardings for data parallelism (one host or several, via `jax.sharding`).

Convention: a 1-D mesh over devices with axis name "data". Batches are split along their leading
axis (the batch of tasks, or the model axis of a zoo when scoring metrics); parameters are
replicated. Jit then runs one program over all devices and inserts the cross-device reductions
(gradient means), so results match a single device up to float summation order.

Multi-host: call `initialize_distributed()` (a wrapper of `jax.distributed.initialize()` that reads
the standard environment variables) before anything else touches JAX; `mesh()` then spans
`jax.devices()` (all hosts). Two ways to build a global array sharded along its leading axis:
`shard_batch` from each process's own rows (`jax.make_array_from_process_local_data`), and
`array_from_rows` from a loader that each process calls for the rows its devices hold only (so every
process reads only its shard of a store). `local_rows` says which rows those are, `gather` brings a
sharded result back to every host in global order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices for the mesh")
    return Mesh(np.asarray(devices), (axis_name,))


def batch_sharding(device_mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Leading axis split over the mesh axis, other axes whole."""
    return NamedSharding(device_mesh, PartitionSpec(axis_name))


def replicated(device_mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(device_mesh, PartitionSpec())


def num_shards(device_mesh: Mesh, axis_name: str = DATA_AXIS) -> int:
    return int(device_mesh.shape[axis_name])


def round_up(size: int, device_mesh: Mesh, axis_name: str = DATA_AXIS) -> int:
    """The smallest multiple of the number of shards that is >= size (pad batches to it)."""
    shards = num_shards(device_mesh, axis_name)
    return -(-size // shards) * shards


def shard_batch(tree: Any, device_mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Places every array leaf of `tree` with its leading axis split over the mesh (None leaves
    kept).

    On one process the leaves are the global arrays; with several processes each process passes its
    own rows and the global batch is their concatenation in process order.

    Raises:
      ValueError: if a leading axis is not divisible by the number of local shards.
    """
    sharding = batch_sharding(device_mesh, axis_name)
    local_shards = max(1, num_shards(device_mesh, axis_name) // jax.process_count())

    def place(leaf):
        leaf = np.asarray(leaf)
        if leaf.ndim == 0 or leaf.shape[0] % local_shards:
            raise ValueError(
                f"leading axis of shape {leaf.shape} is not divisible by {local_shards} shards")
        if jax.process_count() == 1:
            return jax.device_put(leaf, sharding)
        return jax.make_array_from_process_local_data(sharding, leaf)

    return jax.tree.map(place, tree)


def replicate(tree: Any, device_mesh: Mesh) -> Any:
    """Copies every leaf of `tree` to all devices of the mesh."""
    return jax.device_put(tree, replicated(device_mesh))


# ------------------------------------------------------------------------------------------------
# Multi-process set-up and leading-axis sharding driven by a row loader.

# Environment variables read by `initialize_distributed` (JAX itself reads only the first one).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> tuple[int, int]:
    """Joins a multi-process JAX run; returns (process_index, process_count).

    Arguments left None are read from JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID; when none of these is set either, JAX's cluster
    auto-detection (SLURM, Open MPI, Cloud TPU, Kubernetes, ...) fills them in. Must be called once per
    process before any other JAX call that touches devices; a second call is a no-op.

    Raises:
      ValueError: malformed environment values, or only some of them given with no cluster to
        detect the rest (JAX's own error is re-raised with the variable names).
    """
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    num_processes = num_processes if num_processes is not None else _env_int(NUM_PROCESSES_ENV)
    process_id = process_id if process_id is not None else _env_int(PROCESS_ID_ENV)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"{NUM_PROCESSES_ENV} must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"{PROCESS_ID_ENV}={process_id} is outside 0..{num_processes - 1}")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes,
            process_id=process_id, local_device_ids=local_device_ids)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"jax.distributed.initialize failed ({err}); outside a cluster JAX detects, set "
            f"{COORDINATOR_ENV}=host:port, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} in every process"
        ) from err
    logging.info("JAX process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True on the process that writes results (process 0)."""
    return jax.process_index() == 0


def local_rows(size: int, device_mesh: Mesh, axis_name: str = DATA_AXIS) -> np.ndarray:
    """Global indices (sorted) of the rows of a [size, ...] array, leading axis split over the mesh,
    that live on this process's devices. `size` must be divisible by the number of shards."""
    if size % num_shards(device_mesh, axis_name):
        raise ValueError(f"{size} rows do not split evenly over {num_shards(device_mesh, axis_name)} shards")
    index_map = batch_sharding(device_mesh, axis_name).addressable_devices_indices_map((size,))
    rows: set[int] = set()
    for index in index_map.values():
        rows.update(range(*index[0].indices(size)))
    return np.asarray(sorted(rows), dtype=np.int64)


def array_from_rows(
    shape: Sequence[int],
    dtype: Any,
    device_mesh: Mesh,
    load_rows: Callable[[np.ndarray], np.ndarray],
    axis_name: str = DATA_AXIS,
) -> jax.Array:
    """A global array of `shape` with its leading axis split over the mesh, filled by
    `load_rows(global_row_indices) -> [len(indices), *shape[1:]]`.

    Only the rows of this process's devices are requested (`jax.make_array_from_callback`), so with
    several processes each one loads just its shard.
    """
    shape = tuple(int(d) for d in shape)

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        rows = np.arange(*index[0].indices(shape[0]))
        block = np.asarray(load_rows(rows), dtype=dtype)
        return block[(slice(None), *index[1:])]

    return jax.make_array_from_callback(shape, batch_sharding(device_mesh, axis_name), callback)


def array_from_row_arrays(
    shape: Sequence[int],
    dtype: Any,
    device_mesh: Mesh,
    load_row: Callable[[int], np.ndarray],
    axis_name: str = DATA_AXIS,
) -> jax.Array:
    """Like `array_from_rows`, but each row `load_row(i) -> shape[1:]` travels to its device on its own
    and the rows are stacked there.

    Stacking large rows (a zoo model's [N, D] features) on the host first costs a host copy of the
    whole shard and one transfer that nothing overlaps with: on an H200, 10 stacked medium models
    scored 0.5-0.8x as fast as 10 separate calls.
    """
    shape = tuple(int(d) for d in shape)
    target = batch_sharding(device_mesh, axis_name)
    shards = []
    for device, index in target.addressable_devices_indices_map(shape).items():
        rows = range(*index[0].indices(shape[0]))
        parts = [jax.device_put(np.asarray(load_row(r), dtype=dtype), device) for r in rows]
        shards.append(jnp.stack(parts))
    return jax.make_array_from_single_device_arrays(shape, target, shards)


def gather(array: jax.Array) -> np.ndarray:
    """The whole (possibly sharded, possibly multi-process) array as a NumPy array on every host."""
    if jax.process_count() == 1 or array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
