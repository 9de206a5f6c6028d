"""Plain helpers several test files share (importable because pytest puts tests/ on sys.path:
the folder has a conftest.py and no __init__.py). Fixtures live in conftest.py."""
from __future__ import annotations

import pathlib
import sys

import numpy as np


def parse_config_flags(config_path: pathlib.Path, overrides: list[str]):
  """A launcher config file with `--config.<field>=...` overrides, parsed as `app.run` does
  (ml_collections reads the overrides from sys.argv)."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["prog", f"--config={config_path}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
  saved, sys.argv = sys.argv, argv
  try:
    fv(argv)
  finally:
    sys.argv = saved
  return fv.config


def reference_frames(x, y, t, p, sensor_wh, timesteps, size=None):
  """Event frames by np.histogramdd of (bin, y', x', p), the independent reference of
  `events.events_to_frames`: bin = ⌊(t − t₀)/w⌋ with w = ⌊(t_last − t₀)/T⌋ (events of bin T
  dropped), x' = ⌊x·S/W⌋ and y' = ⌊y·S/H⌋ when resized to S×S; float32 [T, H', W', 2]."""
  width, height = sensor_wh
  x, y, t, p = (np.asarray(a, np.int64) for a in (x, y, t, p))
  if size is not None:
    x = np.floor(x * (size / width)).astype(np.int64)
    y = np.floor(y * (size / height)).astype(np.int64)
    width = height = size
  w = (t[-1] - t[0]) // timesteps
  b = (t - t[0]) // w
  keep = b < timesteps
  sample = np.stack([b[keep], y[keep], x[keep], p[keep]], axis=1)
  edges = [np.arange(n + 1) - 0.5 for n in (timesteps, height, width, 2)]
  hist, _ = np.histogramdd(sample, bins=edges)
  return hist.astype(np.float32)
