"""Shared fixtures. Tests run on CPU; x64 stays off (the library's default precision)."""
from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest


def _share_compiled_programs() -> None:
  """One persistent XLA compilation cache for the whole test session: its workers (pytest-xdist
  spawns them with this process's environment) and every launcher the tests start as a
  subprocess. Many end-to-end tests compile the same digits programs in fresh processes; a hit
  loads the executable XLA compiled before, so the results are the same, only sooner. A cache the
  caller set (JAX_COMPILATION_CACHE_DIR) is used as it is."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  path = tempfile.mkdtemp(prefix="mdsnn-jax-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  # No size limit: with one, jax rescans the whole folder at every write (thousands of entries
  # here), which made the suite slower, not faster. An entry a worker reads while another
  # still writes it fails to decompress, and jax then compiles instead (a warning, no error).
  atexit.register(shutil.rmtree, path, ignore_errors=True)


def _launchers_convolutions() -> None:
  """XLA:CPU's convolutions on XNNPACK, as every launcher sets them (`mdsnn_jax.xla_cpu`), so
  that in-process tests run the programs the launchers run; the workers and subprocesses inherit
  it. Importing jax here is fine: XLA reads XLA_FLAGS when jax starts its backend, not at
  import (the compilation-cache variables above are read at import, hence set first)."""
  from mdsnn_jax import xla_cpu
  xla_cpu.use_xnnpack_convolutions()


# At import, before any test module runs a jax computation (jax reads these variables then).
_share_compiled_programs()
_launchers_convolutions()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("MDSNN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data (real MNIST, CIFAR-10 subset, N-MNIST); skips when absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real-data folder {SHARED_DATA} is absent (set MDSNN_SHARED_DATA)")
  return SHARED_DATA


def _digits_stages_config(stages: str, **fields):
  """A launcher config of `stages` on the digits MLP: T = 2, 2-bit LSQ weights and ternary
  membranes for the students, 10 steps at batch 32, lr 2e-3, no report or TensorBoard.
  `fields`: dotted overrides applied last, e.g. **{"optim.lr": 1e-2}."""
  from mdsnn_jax.train import config as config_lib
  c = config_lib.base_config()
  c.stages = stages
  c.model.name = "digits_mlp"
  c.model.timesteps = 2
  c.report = False
  config_lib.set_quant(c, "weight", "lsq", bits=2)
  config_lib.set_quant(c, "membrane", "ternary")
  c.train.update(dict(global_batch=32, eval_batch=128, steps=10, log_every=5,
                      checkpoint_every=10, eval_ptq=False, tensorboard=False))
  c.optim.lr = 2e-3
  c.update_from_flattened_dict(fields)
  return c


@pytest.fixture(scope="session")
def digits_stages_config():
  """`_digits_stages_config`: the small staged config the launcher and report tests share."""
  return _digits_stages_config


@pytest.fixture
def fake_cifar(tmp_path):
  """A cifar-10-batches-py folder of 40 train / 8 test random images in the real pickled
  format; returns the data config that reads it."""
  import pickle

  import numpy as np
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  for name, n in (("data_batch_1", 40), ("test_batch", 8)):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    with open(folder / name, "wb") as f:
      pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                   "labels": list(rng.integers(0, 10, n))}, f)
  return {"name": "cifar10", "root": str(tmp_path), "source": "folder"}
