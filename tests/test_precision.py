"""--precision: the launchers' compute-precision choice, mapped onto model.dtype."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax.train.config import PRECISIONS, base_config, set_precision

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_set_precision_maps_names_and_refuses_others():
  c = base_config()
  assert set_precision(c, None).model.dtype == "float32"
  assert set_precision(c, "bf16").model.dtype == "bfloat16"
  assert set_precision(c, "fp32").model.dtype == "float32"
  with pytest.raises(ValueError, match=r"unknown --precision 'fp16'; allowed: \['fp32', 'bf16'\]"):
    set_precision(c, "fp16")
  assert set(PRECISIONS.values()) <= {"float32", "bfloat16"}


def test_bf16_computes_in_bfloat16_and_keeps_params_and_logits_float32():
  from mdsnn_jax import nn
  c = set_precision(base_config(), "bf16")
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  model = nn.create_model(c.model, 10)
  x = jnp.asarray(np.random.default_rng(0).random((3, 8, 8, 1)), jnp.float32)
  variables = nn.init_variables(model, jax.random.PRNGKey(0), x[:1])
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables["params"]))
  logits, cols = model.apply(variables, x, train=False, mutable=["membranes"])
  assert logits.dtype == jnp.float32
  # The membranes of the recurrence are computed in bfloat16 (then kept as float32 taps).
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
  assert "bf16" in jaxpr


@pytest.mark.integration
def test_train_launcher_precision_flag(tmp_path):
  out = subprocess.run(
      [sys.executable, "launch/train.py", "--config=launch/configs/default.py", "--print_config",
       "--precision=bf16"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "dtype: bfloat16" in out.stdout
  bad = subprocess.run(
      [sys.executable, "launch/train.py", "--config=launch/configs/default.py", "--print_config",
       "--precision=fp16"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: unknown --precision 'fp16'; allowed: ['fp32', 'bf16']") or (
      "error: unknown --precision 'fp16'" in bad.stdout + bad.stderr)
