"""Linear(n→n, no bias) + LIF over T steps, batch B: the open-neuromorphic benchmark shape.

    python bench/lif.py [--n 4096] [--batch 16] [--timesteps 100] [--repeats 5]

One matmul on the merged T·B axis, then `lif_scan`. Forward and forward+backward (gradient
w.r.t. the weight) are timed as the median of `--repeats` runs after warm-up. The reference
is the time the matrix products alone take in the same run, at the rate one [T·B, n]×[n, n]
matmul reached there: one product forward, two (the product and the weight gradient)
forward+backward. A reference, not a floor: no machine peak is measured.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, time_fn, tee_results  # noqa: E402

from mdsnn_jax import lif_scan  # noqa: E402
from mdsnn_jax.lif_vjp import fused_lif_scan  # noqa: E402

IMPLS = {"scan": lif_scan, "fused": fused_lif_scan}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=4096)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--timesteps", type=int, default=100)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--surrogate", default="arctan")
  p.add_argument("--impls", default="scan,fused", help=f"comma-separated, of {list(IMPLS)}")
  a = p.parse_args()
  impls = a.impls.split(",")
  if any(i not in IMPLS for i in impls):
    raise ValueError(f"--impls: unknown in {impls}; allowed: {list(IMPLS)}")
  n, b, t = a.n, a.batch, a.timesteps

  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (t, b, n), jnp.float32)
  w = jax.random.normal(kw, (n, n), jnp.float32) / jnp.sqrt(n)

  def make(impl):
    def forward(w, x):
      currents = (x.reshape(t * b, n) @ w).reshape(t, b, n)
      spikes, _, _ = IMPLS[impl](currents, surrogate=a.surrogate)
      return spikes
    return jax.jit(forward), jax.jit(jax.value_and_grad(lambda w, x: forward(w, x).sum()))

  matmul = jax.jit(jnp.matmul)
  flops_mm = 2.0 * t * b * n * n
  t_mm = time_fn(matmul, x.reshape(t * b, n), w, repeats=a.repeats)
  times = {}
  for impl in impls:
    fwd, fwd_bwd = make(impl)
    times[impl] = (time_fn(fwd, w, x, repeats=a.repeats), time_fn(fwd_bwd, w, x, repeats=a.repeats))
  peak = flops_mm / t_mm / 1e9

  print(f"machine: {machine()}, {os.cpu_count()} cpus")
  print(f"shape: Linear({n}->{n}) + LIF, batch {b}, T {t}, surrogate {a.surrogate}; reference = "
        f"one [{t*b}x{n}]x[{n}x{n}] matmul measured in this run: {peak:.1f} GFLOP/s; load (1 min) "
        f"{os.getloadavg()[0]:.2f}")
  print("| LIF impl | pass | ms | GFLOP/s | reference matmuls ms | time / reference |")
  print("|---|---|---|---|---|---|")
  for impl, (t_fwd, t_fb) in times.items():
    for name, sec, nmm in (("forward", t_fwd, 1), ("forward+backward", t_fb, 2)):
      print(f"| {impl} | {name} | {sec*1e3:.1f} | {nmm*flops_mm/sec/1e9:.1f} | {nmm*t_mm*1e3:.1f} | "
            f"{sec/(nmm*t_mm):.2f} |")


if __name__ == "__main__":
  with tee_results("lif"):
    main()
