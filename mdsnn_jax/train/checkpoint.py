"""Orbax checkpoints of the training state.

Saves are synchronous and orbax writes each step into a temporary directory that it
renames only when complete, so a process killed at any moment leaves either the previous
checkpoint or the new one, never a half-written one; restarting resumes from the latest.
The final model variables of a stage are exported separately (`save_variables`) for
evaluation, reporting and as the teacher of a distillation stage.
"""
from __future__ import annotations

import errno
import contextlib
import os
import pathlib
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from mdsnn_jax import provenance


def make_manager(directory: str | os.PathLike, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options,
                               item_names=("state",))


_NO_SPACE_MARKS = ("No space left on device", "os_error_code='28'", "[Errno 28]",
                   "Disk quota exceeded", "os_error_code='122'")


def _tree_bytes(tree: Any) -> int:
  return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


def no_space_error(e: BaseException, directory: os.PathLike, what: str) -> OSError | None:
  """An OSError(ENOSPC) naming `directory` for a failure that is a full disk, however orbax
  and tensorstore wrapped it (a ValueError 'RESOURCE_EXHAUSTED ... [os_error_code='28']'),
  else None."""
  chain, cause = [], e
  while cause is not None and len(chain) < 8:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  for c in chain:
    if isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT):
      break
    if any(m in str(c) for m in _NO_SPACE_MARKS):
      break
  else:
    return None
  return OSError(errno.ENOSPC, f"no space left on device while writing {what}",
                 str(directory))


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves the train state at `step` (collective: every process calls it). The data position
  is not stored: the stream of step s is a function of s (`data.make_train_stream`).

  A full disk is an OSError(ENOSPC) naming the folder, raised before orbax starts when the
  free space is short of the state's size, else converted from orbax's error; the
  half-written step is orbax's temporary folder, which a resume ignores."""
  directory = pathlib.Path(manager.directory)
  need = _tree_bytes(state)
  try:
    free = shutil.disk_usage(directory).free
  except OSError:
    free = None
  if free is not None and free < need:
    raise OSError(errno.ENOSPC, f"no space left on device for the checkpoint of step {step} "
                  f"({need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free)", str(directory))
  with _captured_stderr() as captured:
    try:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                   force=True)
      manager.wait_until_finished()
    except Exception as e:  # orbax wraps the OSError of its writer threads in several types
      converted = no_space_error(e, directory, f"the checkpoint of step {step}")
      if converted is None:
        raise
      # The writer threads cut off by the full disk print 'Event loop is closed' tracebacks
      # while they wind down: let them finish here, where that noise is dropped.
      try:
        manager.close()
      except Exception:  # noqa: BLE001  (closing a manager whose write failed)
        pass
      captured.settle()
      captured.drop()
      raise converted from e


class _StderrCapture:
  def __init__(self):
    self.keep = True
    self.file = None

  def drop(self) -> None:
    self.keep = False

  def settle(self, quiet_s: float = 0.3, limit_s: float = 3.0) -> None:
    """Waits until nothing more was written for `quiet_s` (at most `limit_s`)."""
    import time
    if self.file is None:
      return
    end, size = time.time() + limit_s, -1
    while time.time() < end:
      now = os.fstat(self.file.fileno()).st_size
      if now == size:
        return
      size = now
      time.sleep(quiet_s)


@contextlib.contextmanager
def _captured_stderr():
  """File descriptor 2 into a temporary file for the block (C++ and Python writers alike);
  written back afterwards unless the block called `.drop()`."""
  import sys
  import tempfile
  capture = _StderrCapture()
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no usable fd 2 (an embedding host): nothing to capture
    yield capture
    return
  with tempfile.TemporaryFile() as tmp:
    capture.file = tmp
    os.dup2(tmp.fileno(), 2)
    try:
      yield capture
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if capture.keep:
        tmp.seek(0)
        data = tmp.read()
        if data:
          sys.stderr.write(data.decode(errors="replace"))
          sys.stderr.flush()


def restore(manager: ocp.CheckpointManager, step: int, state: Any) -> Any:
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  return restored["state"]


def error_summary(e: BaseException, limit: int = 200) -> str:
  """'<Type>: <first meaningful line>' of an exception, for a one-line warning. Some orbax
  and pybind11 errors start with an object's repr ('<bound method ...>'), which says
  nothing: the first line that is not one, else the cause's, is used; a long line is cut
  at a word with '…'."""
  chain, cause = [], e
  while cause is not None and len(chain) < 6:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  for c in chain:
    for line in str(c).splitlines():
      line = line.strip()
      if line and not (line.startswith("<") and (" at 0x" in line or "bound method" in line
                                                  or line.endswith(">"))):
        if len(line) > limit:
          line = line[:limit].rsplit(" ", 1)[0] + " …"
        return f"{type(c).__name__}: {line}"
  return type(e).__name__


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
      failures.append(f"step {step}: {error_summary(e)}")
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
