"""TensorBoard summaries of a stage, next to `metrics.jsonl` (tensorboardX: no TensorFlow).

    tb = StageTensorBoard(stage_dir / "tb", enabled=config.train.tensorboard, resume_step=...)
    writer = tb.tee(MetricsWriter(...))     # every JSONL record's scalars also go to TensorBoard
    tb.eval_firing(step, model, variables, config.data, timesteps)   # per-layer firing rates
    tb.close()

Tags: a record's 'eval_accuracy' / 'ptq_accuracy' become 'eval/accuracy' /
'eval/ptq_accuracy', keys that already hold a '/' are kept, every other numeric key goes
under 'train/' (loss terms, accuracy, steps_per_s). Firing rates at eval are
'firing/<layer>': the mean spikes per neuron per timestep over the first `FIRING_BATCHES`
test batches. Only process 0 writes; elsewhere, or with enabled=False, every method
is a no-op and no event file is created. On resume, `purge_step` makes TensorBoard drop the
events after the checkpoint that are about to be recomputed.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

FIRING_BATCHES = 4
_EVAL_KEYS = {"eval_accuracy": "eval/accuracy", "ptq_accuracy": "eval/ptq_accuracy"}


def scalar_tags(record: Mapping[str, Any]) -> dict[str, float]:
  """{tag: value} of a metrics record's numeric scalars ('step' and strings left out)."""
  out = {}
  for key, value in record.items():
    if key == "step" or isinstance(value, (str, bool)) or value is None:
      continue
    try:
      value = float(np.asarray(value))
    except (TypeError, ValueError):
      continue  # not a scalar
    tag = _EVAL_KEYS.get(key) or (key if "/" in key else f"train/{key}")
    out[tag] = value
  return out


class StageTensorBoard:
  """Scalar summaries of one stage in `logdir` (see the module docstring)."""

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True,
               resume_step: int | None = None):
    if not isinstance(enabled, bool):
      raise ValueError(f"train.tensorboard must be True or False, got {enabled!r}")
    self.logdir = str(logdir)
    self._writer = None
    if enabled and jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(logdir=self.logdir, purge_step=resume_step, flush_secs=10)

  @property
  def active(self) -> bool:
    return self._writer is not None

  def write(self, record: Mapping[str, Any]) -> None:
    """Logs a metrics record's scalars at record['step']."""
    if self._writer is None:
      return
    step = int(record["step"])
    for tag, value in scalar_tags(record).items():
      self._writer.add_scalar(tag, value, step)  # NaN too: a diverged run should show
    self._writer.flush()

  def tee(self, metrics_writer) -> "_Tee":
    """A writer with `write(record)` that writes to `metrics_writer` and to TensorBoard."""
    return _Tee(metrics_writer, self)

  def eval_firing(self, step: int, model, variables, data_cfg, timesteps: int | None) -> dict:
    """Logs 'firing/<layer>' mean rates over the first FIRING_BATCHES test batches; returns them."""
    if self._writer is None:
      return {}
    rates = eval_firing_rates(model, variables, data_cfg, timesteps)
    self.write({"step": step, **rates})
    return rates

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class _Tee:
  def __init__(self, metrics_writer, tb: StageTensorBoard):
    self.metrics_writer, self.tb = metrics_writer, tb

  def write(self, record: Mapping[str, Any]) -> None:
    self.metrics_writer.write(record)
    self.tb.write(record)


def eval_firing_rates(model, variables, data_cfg, timesteps: int | None,
                      max_batches: int = FIRING_BATCHES, batch_size: int = 128) -> dict[str, float]:
  """{'firing/<layer>': mean rate} of `model` on the first test batches (process-local)."""
  # pylint: disable=import-outside-toplevel
  from mdsnn_jax import data as data_lib
  from mdsnn_jax.report import collect_firing
  loader = data_lib.make_loader(data_cfg, "test", batch_size=batch_size, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False)
  local = jax.tree_util.tree_map(np.asarray, variables)  # replicated: every process holds a copy
  result = collect_firing(model, local, loader, timesteps, max_batches)
  return {f"firing/{layer}": float(np.mean(r)) for layer, r in result.rates.items()}
