"""The training loop keeps the device busy: batches prepared ahead, no host read between steps."""
from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from mdsnn_jax.train.prefetch import Prefetcher


def test_prefetcher_keeps_the_order_and_applies_put():
  got = list(Prefetcher(range(50), lambda b: b * 10, depth=3))
  assert got == [b * 10 for b in range(50)]
  assert list(Prefetcher(range(5), lambda b: -b, depth=0)) == [0, -1, -2, -3, -4]


def test_prefetcher_prepares_ahead_while_the_consumer_works():
  built = []

  def put(b):
    built.append(b)
    return b

  with Prefetcher(iter(range(100)), put, depth=4) as it:
    assert next(it) == 0
    deadline = time.time() + 5.0
    while len(built) < 5 and time.time() < deadline:  # 0 taken, then 4 queued ahead
      time.sleep(0.01)
    assert len(built) == 5, built  # and no more than depth ahead: memory stays bounded
    time.sleep(0.1)
    assert len(built) <= 6, built


def test_prefetcher_raises_the_producers_error_in_the_consumer():

  def batches():
    yield 1
    raise OSError("disk went away at batch 2")

  it = Prefetcher(batches(), lambda b: b, depth=2)
  assert next(it) == 1
  with pytest.raises(OSError, match="batch 2"):
    next(it)


def test_prefetcher_close_stops_the_thread_of_an_endless_stream():

  def endless():
    i = 0
    while True:
      yield i
      i += 1

  before = threading.active_count()
  it = Prefetcher(endless(), lambda b: b, depth=2)
  assert next(it) == 0 and next(it) == 1
  it.close()
  assert threading.active_count() == before


@pytest.mark.parametrize("depth", [-1, 1.5, True, "2"])
def test_prefetcher_rejects_a_bad_depth(depth):
  with pytest.raises(ValueError, match=r"prefetch depth must be an int >= 0.*got"):
    Prefetcher(range(3), lambda b: b, depth=depth)


def _config(steps, **train):
  from mdsnn_jax.train.config import base_config
  c = base_config()
  c.stages = "fp"
  c.model.name = "digits_mlp"
  c.model.timesteps = 2
  c.report = False
  c.train.update(dict(global_batch=16, eval_batch=400, steps=steps, eval_ptq=False,
                      tensorboard=False), **train)
  return c


def _count_reads(monkeypatch):
  """Counts every device-to-host read of a jax array (ArrayImpl._value is where each host
  copy, implicit like bool() / float() or explicit like jax.device_get, ends) and every call
  of the loop's host_get."""
  from jax._src import array as jax_array

  from mdsnn_jax.train import loop
  counts = {"value": 0, "host_get": 0}
  real_value = jax_array.ArrayImpl._value
  real_host_get = loop.host_get

  def value(self):
    counts["value"] += 1
    return real_value.fget(self)

  def host_get(tree):
    counts["host_get"] += 1
    return real_host_get(tree)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(value))
  monkeypatch.setattr(loop, "host_get", host_get)
  return counts


def test_no_device_to_host_read_between_boundaries(tmp_path, monkeypatch):
  """6 steps and 18 steps with the same boundaries (one log, one checkpoint, the final
  evaluation) read the same number of device values: nothing is read per step."""
  from mdsnn_jax.train import loop
  seen = {}
  for steps in (6, 18):
    cfg = _config(steps, log_every=steps, checkpoint_every=steps)
    counts = _count_reads(monkeypatch)
    loop.train_and_evaluate(cfg, tmp_path / f"s{steps}")
    seen[steps] = dict(counts)
    monkeypatch.undo()
  assert seen[6] == seen[18], seen
  # With a log every 3 steps the reads grow with the boundaries, not with the steps.
  cfg = _config(18, log_every=3, checkpoint_every=18)
  counts = _count_reads(monkeypatch)
  loop.train_and_evaluate(cfg, tmp_path / "log3")
  assert counts["host_get"] == seen[18]["host_get"] + 2 * (18 // 3 - 1), (counts, seen)


def test_prefetch_depth_does_not_change_the_run(tmp_path):
  """The same steps on the same batches whatever the prefetch depth: bit-identical weights."""
  from mdsnn_jax.train import loop
  from mdsnn_jax.train.checkpoint import load_variables
  out = {}
  for depth in (0, 3):
    cfg = _config(8, log_every=4, checkpoint_every=8)
    cfg.data.prefetch = depth
    loop.train_and_evaluate(cfg, tmp_path / f"d{depth}")
    out[depth] = jax.tree.leaves(load_variables(tmp_path / f"d{depth}" / "fp" / "final_variables"))
  for a, b in zip(out[0], out[3]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
