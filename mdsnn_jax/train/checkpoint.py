"""Orbax checkpoints of the training state together with the grain iterator position.

Saves are synchronous and orbax writes each step into a temporary directory that it
renames only when complete, so a process killed at any moment leaves either the previous
checkpoint or the new one, never a half-written one; restarting resumes from the latest.
The final model variables of a stage are exported separately (`save_variables`) for
evaluation, reporting and as the teacher of a distillation stage.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(directory: str | os.PathLike, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, state: Any, data_iterator):
  """(state, iterator) from the latest checkpoint, or the inputs unchanged when there is none."""
  step = manager.latest_step()
  if step is None:
    return state, data_iterator, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored["state"], restored["data"], step


VARIABLE_COLLECTIONS = ("params", "batch_stats", "quant_state")


def _collections(variables: dict) -> dict:
  """The exported collections, each present (possibly empty) so saved and expected trees match."""
  return {k: variables.get(k, {}) for k in VARIABLE_COLLECTIONS}


def save_variables(directory: str | os.PathLike, variables: dict) -> None:
  """Exports model variables (params, batch_stats, quant_state) atomically."""
  directory = pathlib.Path(directory).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory, jax.device_get(_collections(variables)), force=True)


def load_variables(directory: str | os.PathLike, like: dict | None = None) -> dict:
  """Loads variables written by `save_variables` (shapes from `like` when given)."""
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"no exported model variables at {directory}")
  with ocp.StandardCheckpointer() as ckptr:
    if like is None:
      return ckptr.restore(directory)
    return ckptr.restore(directory, jax.tree.map(ocp.utils.to_shape_dtype_struct, _collections(like)))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON to a temporary file in the same folder, then renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=float)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
