"""Data-parallel sharding over a device mesh (batch split on 'data', state replicated).

The mesh has a 'data' axis and a 'model' axis of size 1, which leaves room for model
parallelism without changing the step's signature.
"""
from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A ('data', 'model') mesh over the first `num_devices` devices (all when None or -1)."""
  devices = jax.devices()
  if num_devices not in (None, -1):
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"mesh.data={num_devices} but {len(devices)} devices are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices).reshape(len(devices), 1), ("data", "model"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  n = mesh.shape["data"]
  if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
    raise ValueError(f"batch size must be a positive int, got {global_batch!r}")
  if global_batch % n:
    raise ValueError(
        f"global batch size {global_batch} is not divisible by the {n} devices of the data axis; "
        f"use a multiple of {n} (e.g. {max(n, global_batch // n * n)})")
  if global_batch % jax.process_count():
    raise ValueError(f"global batch size {global_batch} is not divisible by the "
                     f"{jax.process_count()} processes")


def global_batch_from_local(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's slice of the batch into globally sharded arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
