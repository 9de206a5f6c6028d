"""XLA:CPU's convolution library: XNNPACK instead of YNNPACK.

jax 0.10's XLA:CPU hands convolutions to YNNPACK by default. On the 2-core AVX2 machine we
measure on, XNNPACK ran VGG-9's convolutions and its training step markedly faster
(bench/conv_library.py, bench/train_step.py; BENCHMARKS.md, "XLA:CPU's convolution
library"). Two XLA flags make that choice:

    --xla_cpu_experimental_xnn_fusion_type=individual_convolution   convolutions to XNNPACK
    --xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce    YNNPACK keeps the dots and
                                                                    reductions it takes by
                                                                    default, not convolutions

XLA reads XLA_FLAGS once, when jax creates its CPU backend, so `use_xnnpack_convolutions()`
must run before the process's first jax computation; every launcher (`train.cli.run`), the
benchmarks and the tests call it at start. In your own code:

    from mdsnn_jax import xla_cpu
    xla_cpu.use_xnnpack_convolutions()   # first thing, before any jax computation

It only touches the environment variable, and leaves it alone when
- MDSNN_CPU_CONV=xla asks for XLA's own default (MDSNN_CPU_CONV=xnnpack, the default, or
  unset: XNNPACK);
- XLA_FLAGS already sets either fusion-type flag (your choice wins);
- the installed jaxlib is not one these flags were checked on (`CHECKED_JAXLIB`): XLA aborts
  the process on a flag it does not know, and these are experimental flags.
"""
from __future__ import annotations

import os
from typing import MutableMapping

ENV = "MDSNN_CPU_CONV"
CHOICES = ("xnnpack", "xla")
XNN_FLAG = "--xla_cpu_experimental_xnn_fusion_type"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XNNPACK_FLAGS = (f"{XNN_FLAG}=individual_convolution", f"{YNN_FLAG}=individual_dot,reduce")
# jaxlib (major, minor) releases whose XLA knows both flags and was measured with them.
CHECKED_JAXLIB = ((0, 10),)


def _jaxlib_release() -> tuple[int, int] | None:
  try:
    from jaxlib import version
  except ImportError:
    return None
  parts = version.__version__.split(".")
  try:
    return int(parts[0]), int(parts[1])
  except (IndexError, ValueError):
    return None


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a jax without the helper: assume not started
    return False


def choice(environ: MutableMapping[str, str] | None = None) -> str:
  """The convolution library MDSNN_CPU_CONV asks for: 'xnnpack' (default) or 'xla'."""
  environ = os.environ if environ is None else environ
  value = environ.get(ENV, "").strip().lower() or "xnnpack"
  if value not in CHOICES:
    raise ValueError(f"{ENV}={environ.get(ENV)!r} is not a convolution library choice; "
                     f"allowed: {list(CHOICES)} ('xla' keeps XLA's default)")
  return value


def use_xnnpack_convolutions(environ: MutableMapping[str, str] | None = None,
                             jaxlib_release: tuple[int, int] | None = None) -> str:
  """Appends XNNPACK_FLAGS to XLA_FLAGS where that is safe; returns what it did, one line.

  environ: the environment to edit (default os.environ); jaxlib_release: (major, minor) of the
  installed jaxlib (default: read it). Raises ValueError for a bad MDSNN_CPU_CONV.
  """
  environ = os.environ if environ is None else environ
  if choice(environ) == "xla":
    return f"{ENV}=xla: XLA's default convolution library"
  flags = environ.get("XLA_FLAGS", "")
  if XNN_FLAG in flags or YNN_FLAG in flags:
    return "XLA_FLAGS already chooses the convolution library: left as it is"
  release = _jaxlib_release() if jaxlib_release is None else tuple(jaxlib_release)
  if release not in CHECKED_JAXLIB:
    return (f"jaxlib {release} is not one the XNNPACK flags were checked on "
            f"{list(CHECKED_JAXLIB)}: XLA's default convolution library")
  if environ is os.environ and _backend_started():
    return "jax's backend already started: XLA_FLAGS would not be read again, left as it is"
  environ["XLA_FLAGS"] = " ".join(f for f in (flags.strip(), *XNNPACK_FLAGS) if f)
  return "XLA:CPU convolutions on XNNPACK"


def xnnpack_convolutions_active(environ: MutableMapping[str, str] | None = None) -> bool:
  """Whether XLA_FLAGS gives XLA:CPU's convolutions to XNNPACK (as use_xnnpack_convolutions
  sets it, or a user's own flag that names individual_convolution for XNNPACK and not YNNPACK)."""
  environ = os.environ if environ is None else environ
  xnn = ynn = None
  for flag in environ.get("XLA_FLAGS", "").split():
    name, _, value = flag.partition("=")
    if name == XNN_FLAG:
      xnn = value.split(",")
    elif name == YNN_FLAG:
      ynn = value.split(",")
  return xnn is not None and "individual_convolution" in xnn and (
      ynn is not None and "individual_convolution" not in ynn)
