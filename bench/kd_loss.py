"""Membrane KD on VGG-9's taps: the library's moment form vs the standardised form.

    python bench/kd_loss.py [--batch 32] [--timesteps 4] [--rounds 7]

`distill.membrane_kd_loss` (forward + backward: jitted `value_and_grad` w.r.t. the student
taps) on the seven LIF taps of a VGG-9 training step, [T, B, H, W, C] float32, against the
reference timed in the same run, call by call: the textbook form that standardises both
membranes per (t, c) as tensors, takes their MSE and builds the T×T correlations as [T, N]
products (what distill computed before issue 13's rewrite). Each round also times the
library's plain-MSE term (`decorrelate=False`) as a floor: one pass over the taps. The value
and the gradient of the two forms are compared as well.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, publish  # noqa: E402

from mdsnn_jax import distill  # noqa: E402

# VGG-9's LIF taps per image on 32×32×3 inputs (H, W, C).
VGG9_TAPS = ((32, 32, 64), (32, 32, 64), (16, 16, 128), (16, 16, 128), (8, 8, 256), (8, 8, 256),
             (8, 8, 256))
EPS = 1e-5


def standardized_md(student: list, teacher: list) -> jax.Array:
  """L_MD with Ũ materialised: the reference (same value as `membrane_kd_loss`)."""
  def standardize(u):
    axes = tuple(range(1, u.ndim - 1))
    d = u - jax.lax.stop_gradient(u[:, :1, :1, :1])
    d = d - jnp.mean(d, axis=axes, keepdims=True)
    return d * jax.lax.rsqrt(jnp.mean(jnp.square(d), axis=axes, keepdims=True) + EPS * EPS)

  def corr(z):
    flat = z.reshape(z.shape[0], -1)
    return jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST) / (flat.shape[1] * z.shape[0])

  total = 0.0
  for u_s, u_t in zip(student, teacher):
    z_s, z_t = standardize(u_s), standardize(jax.lax.stop_gradient(u_t))
    total = total + jnp.mean(jnp.square(z_s - z_t)) + jnp.mean(jnp.square(corr(z_s) - corr(z_t)))
  return total / len(student)


def library_md(student: list, teacher: list, **kw) -> jax.Array:
  names = [f"tap{i}" for i in range(len(student))]
  return distill.membrane_kd_loss(dict(zip(names, student)), dict(zip(names, teacher)), **kw)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--timesteps", type=int, default=4)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--out", default=None, help="results folder (default results/bench)")
  a = p.parse_args()
  for flag, v in (("--batch", a.batch), ("--timesteps", a.timesteps), ("--rounds", a.rounds)):
    if v < 1:
      raise ValueError(f"{flag} must be a positive int, got {v}")
  key = jax.random.PRNGKey(0)
  student, teacher = [], []
  for shape in VGG9_TAPS:
    k1, k2, key = jax.random.split(key, 3)
    u = 0.7 * jax.random.normal(k1, (a.timesteps, a.batch, *shape)) + 0.3
    student.append(u)
    teacher.append(u + 0.5 * jax.random.normal(k2, u.shape))
  runners = {
      "moment form (library)": jax.jit(jax.value_and_grad(library_md)),
      "standardised form (reference)": jax.jit(jax.value_and_grad(standardized_md)),
      "plain MSE, decorrelate=False (floor)": jax.jit(jax.value_and_grad(
          lambda s, t: library_md(s, t, decorrelate=False))),
  }
  results, compile_s = {}, {}
  for name, fn in runners.items():
    start = time.perf_counter()
    results[name] = jax.block_until_ready(fn(student, teacher))
    compile_s[name] = time.perf_counter() - start
  times = {name: [] for name in runners}
  for _ in range(a.rounds):
    for name, fn in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(student, teacher))
      times[name].append(time.perf_counter() - start)
  (v_lib, g_lib), (v_ref, g_ref) = (results[n] for n in list(runners)[:2])
  value_rel = abs(float(v_lib) - float(v_ref)) / abs(float(v_ref))
  grad_rel = max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))) for x, y in zip(g_lib, g_ref))
  ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
  ref_ms = ms["standardised form (reference)"]
  n_elems = sum(int(np.prod(u.shape)) for u in student)
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus, load (1 min) {os.getloadavg()[0]:.2f}",
           f"membrane KD forward + backward on VGG-9's 7 taps, T = {a.timesteps}, batch {a.batch} "
           f"({n_elems / 1e6:.1f} M float32 per side), median of {a.rounds} interleaved rounds; "
           f"moment vs standardised form: value rel. diff {value_rel:.1e}, gradient max rel. "
           f"diff {grad_rel:.1e}", "",
           "| membrane KD form | ms (fwd + bwd) | reference ÷ this | compile s |", "|---|---|---|---|"]
  for name in runners:
    lines.append(f"| {name} | {ms[name]:.1f} | {ref_ms / ms[name]:.2f} | {compile_s[name]:.1f} |")
  publish("kd_loss", lines, {"ms": ms, "compile_s": compile_s, "value_rel_diff": value_rel,
                             "grad_max_rel_diff": grad_rel, "args": vars(a)}, a.out)


if __name__ == "__main__":
  main()
