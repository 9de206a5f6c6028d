"""Orbax checkpoints of the training state.

Saves are synchronous and orbax writes each step into a temporary directory that it
renames only when complete, so a process killed at any moment leaves either the previous
checkpoint or the new one, never a half-written one; restarting resumes from the latest.
The final model variables of a stage are exported separately (`save_variables`) for
evaluation, reporting and as the teacher of a distillation stage.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from mdsnn_jax import provenance


def make_manager(directory: str | os.PathLike, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                               item_names=("state",))


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves the train state at `step` (collective: every process calls it). The data position
  is not stored: the stream of step s is a function of s (`data.make_train_stream`)."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, state: Any) -> Any:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  return restored["state"]


def restore_latest_good(manager: ocp.CheckpointManager, state: Any,
                        warn: Callable[[str], None] = print) -> tuple[Any, int | None]:
  """(state, step) from the newest checkpoint that restores, or (state, None) when there is
  none. A corrupt or partial newer one gives a warning and the previous one is tried; when
  checkpoints exist but none restores, a clear error names the folder."""
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = restore(manager, step, state)
    except Exception as e:  # orbax raises many kinds for damaged files
      failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      warn(f"warning: checkpoint of step {step} in {manager.directory} cannot be restored "
           f"({failures[-1]}); trying the previous one")
      continue
    bad = [s for s in steps if s > step]
    if bad:
      # Kept for inspection, out of orbax's way (a step folder must be a bare number), so
      # the resumed run can save those steps again.
      if jax.process_index() == 0:
        for s in bad:
          path = pathlib.Path(manager.directory) / str(s)
          path.rename(path.with_name(f"{s}.damaged"))
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("damaged checkpoints moved")
      manager.reload()
      warn(f"warning: resuming from step {step}; the damaged checkpoint(s) {bad} were moved "
           f"to <step>.damaged in {manager.directory}")
    return restored, step
  if steps:
    raise RuntimeError(f"no checkpoint in {manager.directory} can be restored "
                       f"({'; '.join(failures)}); delete the folder to start over")
  return state, None


VARIABLE_COLLECTIONS = ("params", "batch_stats", "quant_state")


def _collections(variables: dict) -> dict:
  """The exported collections, each present (possibly empty) so saved and expected trees match."""
  return {k: variables.get(k, {}) for k in VARIABLE_COLLECTIONS}


def save_variables(directory: str | os.PathLike, variables: dict) -> None:
  """Exports model variables (params, batch_stats, quant_state) atomically."""
  directory = pathlib.Path(directory).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    # Global jax arrays, not host copies: in a multi-process run every process calls this
    # (orbax saves are collective) and the primary one writes.
    ckptr.save(directory, _collections(variables), force=True)


def load_variables(directory: str | os.PathLike, like: dict | None = None,
                   sharding: jax.sharding.Sharding | None = None) -> dict:
  """Loads variables written by `save_variables` (shapes from `like`, else from the files).

  Arrays land with `sharding` (default: this process's first local device), whatever
  topology saved them, so a teacher trained on 2 processes loads on 1 and vice versa.
  Collective in a multi-process run: every process calls it."""
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"no exported model variables at {directory}")
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    if like is None:
      meta = ckptr.metadata(directory)
      like = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding),
        _collections(like))
    return ckptr.restore(directory, target)


write_json_atomic = provenance.write_json_atomic
