"""Device meshes and shardings for data parallelism (one host or several, via `jax.sharding`).

Convention: a 1-D mesh over devices with axis name "data". Batches are split along their leading
axis (the batch of tasks, or the model axis of a zoo when scoring metrics); parameters are
replicated. Jit then runs one program over all devices and inserts the cross-device reductions
(gradient means), so results match a single device up to float summation order.

Multi-host: call `jax.distributed.initialize()` first; `mesh()` then spans `jax.devices()` (all
hosts) and `shard_batch` builds global arrays from each process's local rows
(`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
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
