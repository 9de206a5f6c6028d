"""mdsnn_jax.xla_cpu: XLA:CPU's convolutions on XNNPACK, set through XLA_FLAGS before jax starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mdsnn_jax import xla_cpu

CHECKED = xla_cpu.CHECKED_JAXLIB[0]


def test_appends_both_flags_to_the_users_own():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  what = xla_cpu.use_xnnpack_convolutions(env, jaxlib_release=CHECKED)
  assert what == "XLA:CPU convolutions on XNNPACK"
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                      *xla_cpu.XNNPACK_FLAGS]
  assert xla_cpu.xnnpack_convolutions_active(env)


def test_sets_the_flags_when_xla_flags_is_unset_and_is_idempotent():
  env = {}
  xla_cpu.use_xnnpack_convolutions(env, jaxlib_release=CHECKED)
  first = env["XLA_FLAGS"]
  assert first.split() == list(xla_cpu.XNNPACK_FLAGS)
  what = xla_cpu.use_xnnpack_convolutions(env, jaxlib_release=CHECKED)
  assert "already chooses" in what and env["XLA_FLAGS"] == first


@pytest.mark.parametrize("own", [
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "--xla_cpu_experimental_xnn_fusion_type=individual_dot --xla_cpu_use_xnnpack=true",
])
def test_a_users_fusion_type_flag_wins(own):
  env = {"XLA_FLAGS": own}
  what = xla_cpu.use_xnnpack_convolutions(env, jaxlib_release=CHECKED)
  assert "left as it is" in what and env["XLA_FLAGS"] == own
  assert not xla_cpu.xnnpack_convolutions_active(env)


@pytest.mark.parametrize("value", ["xla", "XLA", " xla "])
def test_mdsnn_cpu_conv_xla_keeps_xlas_default(value):
  env = {xla_cpu.ENV: value}
  what = xla_cpu.use_xnnpack_convolutions(env, jaxlib_release=CHECKED)
  assert "default" in what and "XLA_FLAGS" not in env
  assert not xla_cpu.xnnpack_convolutions_active(env)


def test_a_bad_choice_is_refused_naming_it_and_the_allowed_values():
  with pytest.raises(ValueError, match=r"MDSNN_CPU_CONV='onednn'.*\['xnnpack', 'xla'\]"):
    xla_cpu.use_xnnpack_convolutions({xla_cpu.ENV: "onednn"}, jaxlib_release=CHECKED)


@pytest.mark.parametrize("release", [(0, 4), (0, 9), (0, 11), (1, 0)])
def test_an_unchecked_jaxlib_gets_xlas_default(release):
  # XLA aborts the process on a flag it does not know: never pass these to an unchecked one.
  env = {}
  what = xla_cpu.use_xnnpack_convolutions(env, jaxlib_release=release)
  assert "not one the XNNPACK flags were checked on" in what and "XLA_FLAGS" not in env


@pytest.mark.parametrize("flags, active", [
    ("", False),
    ("--xla_cpu_experimental_xnn_fusion_type=individual_convolution", False),  # YNN's default
    ("--xla_cpu_experimental_xnn_fusion_type=individual_convolution "
     "--xla_cpu_experimental_ynn_fusion_type=individual_dot", True),
    ("--xla_cpu_experimental_xnn_fusion_type=individual_dot,individual_convolution "
     "--xla_cpu_experimental_ynn_fusion_type=", True),
    ("--xla_cpu_experimental_xnn_fusion_type=individual_convolution "
     "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution", False),
])
def test_active_reads_both_flags(flags, active):
  assert xla_cpu.xnnpack_convolutions_active({"XLA_FLAGS": flags}) is active


_PROBE = r"""
import json, sys
from mdsnn_jax import xla_cpu
what = xla_cpu.use_xnnpack_convolutions()
import jax, jax.numpy as jnp, numpy as np
from mdsnn_jax.nn import conv
x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 32))
k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32)) / 17.0
f = jax.jit(lambda x, k: conv.conv2d(x, k, impl="xla"))
hlo = f.lower(x, k).compile().as_text()
print(json.dumps({"what": what, "ynn_conv": "ynn_fusion" in hlo, "auto": conv.resolve_impl("auto"),
                  "y": np.asarray(f(x, k)).ravel()[::97].tolist()}))
"""


def _probe(extra_env: dict) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.ENV)}
  env.update(JAX_PLATFORMS="cpu", **extra_env)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(xla_cpu._jaxlib_release() not in xla_cpu.CHECKED_JAXLIB,
                    reason="the flags are only passed to a checked jaxlib")
@pytest.mark.integration
def test_in_a_fresh_process_the_flags_move_convolutions_off_ynnpack():
  """What XLA compiles: a convolution YNNPACK takes by default is no YNNPACK fusion with the
  flags, gives the same numbers, and conv_impl='auto' then resolves to XLA's autodiff."""
  default = _probe({xla_cpu.ENV: "xla"})
  xnnpack = _probe({})
  assert default["what"].startswith("MDSNN_CPU_CONV=xla") and default["ynn_conv"]
  assert default["auto"] == "fast"
  assert xnnpack["what"] == "XLA:CPU convolutions on XNNPACK" and not xnnpack["ynn_conv"]
  assert xnnpack["auto"] == "xla"
  import numpy as np
  np.testing.assert_allclose(xnnpack["y"], default["y"], rtol=1e-4, atol=1e-4)


def test_a_launcher_sets_the_flags_before_main_and_refuses_a_bad_choice():
  code = ("import os; from mdsnn_jax.train import cli; "
          "cli.run(lambda argv: print('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', '')))")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.ENV)}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  flags = out.stdout.strip().splitlines()[-1].removeprefix("XLA_FLAGS=").split()
  assert flags[0] == "--xla_force_host_platform_device_count=2"
  if xla_cpu._jaxlib_release() in xla_cpu.CHECKED_JAXLIB:
    assert flags[1:] == list(xla_cpu.XNNPACK_FLAGS)
  bad = subprocess.run([sys.executable, "-c", code], env={**env, xla_cpu.ENV: "mkl"},
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "XLA_FLAGS=" not in bad.stdout
  assert "error: MDSNN_CPU_CONV='mkl'" in bad.stderr
