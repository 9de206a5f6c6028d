"""The fused LIF's scans as a loop vs fully unrolled, over T: where `FULL_UNROLL_MAX_T` comes from.

    python bench/lif_unroll.py [--timesteps 2,4,6,8,10,12,16] [--rounds 7] [--shape 16,16,16,128]

`lif_vjp.fused_lif_scan` forward + backward (jitted `value_and_grad` of a weighted spike sum)
on currents [T, *shape], the layer size of a VGG-9 block at batch 16, with the FP membrane and
the ternary one (`quant.ternary_membrane`, stacked-sigmoid surrogate). For every T, unroll=1
(a `lax.scan` loop) and unroll=T (no loop) take turns call by call for `--rounds` rounds after
a compile call; the table gives the median ms per timestep and the compile-and-first-call time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, publish  # noqa: E402

from mdsnn_jax.lif_vjp import FULL_UNROLL_MAX_T, fused_lif_scan  # noqa: E402
from mdsnn_jax.quant import make_membrane_quantizer  # noqa: E402

TERNARY = make_membrane_quantizer({"kind": "ternary"})
MEMBRANES = {"FP": None, "ternary": lambda u: TERNARY.apply({}, u)}


def _ints(text: str, flag: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if not values or any(v < 1 for v in values):
    raise ValueError(f"{flag} must be comma-separated positive ints, got {text!r}")
  return values


def _step(unroll: int, mq):
  def loss(x):
    s, _, _ = fused_lif_scan(x, membrane_quantizer=mq, unroll=unroll)
    return jnp.sum(s * jnp.arange(x.shape[-1], dtype=x.dtype))
  return jax.jit(jax.value_and_grad(loss))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--timesteps", default="2,4,6,8,10,12,16")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--shape", default="16,16,16,128", help="per-step shape B,H,W,C")
  p.add_argument("--out", default=None, help="results folder (default results/bench)")
  a = p.parse_args()
  ts, shape = _ints(a.timesteps, "--timesteps"), tuple(_ints(a.shape, "--shape"))
  if a.rounds < 1:
    raise ValueError(f"--rounds must be positive, got {a.rounds}")
  rows = []
  for t in ts:
    x = jax.random.normal(jax.random.PRNGKey(0), (t, *shape), jnp.float32)
    for name, mq in MEMBRANES.items():
      runners = {}
      for unroll in (1, t):
        fn = _step(unroll, mq)
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        runners[unroll] = (fn, time.perf_counter() - start, [])
      for _ in range(a.rounds):
        for fn, _, times in runners.values():
          start = time.perf_counter()
          jax.block_until_ready(fn(x))
          times.append(time.perf_counter() - start)
      loop, full = (1e3 * statistics.median(runners[u][2]) / t for u in (1, t))
      rows.append({"T": t, "membrane": name, "loop_ms_per_step": loop,
                   "unrolled_ms_per_step": full, "loop_compile_s": runners[1][1],
                   "unrolled_compile_s": runners[t][1]})
      print(f"T={t} {name}: loop {loop:.2f} ms/step, unrolled {full:.2f} ms/step", flush=True)
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus, load (1 min) {os.getloadavg()[0]:.2f}",
           f"fused_lif_scan forward+backward on [T, {', '.join(map(str, shape))}] float32, "
           f"median of {a.rounds} interleaved rounds; FULL_UNROLL_MAX_T = {FULL_UNROLL_MAX_T}", "",
           "| T | membrane | loop ms/step | unrolled ms/step | loop ÷ unrolled | compile s "
           "(loop / unrolled) |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['T']} | {r['membrane']} | {r['loop_ms_per_step']:.2f} | "
                 f"{r['unrolled_ms_per_step']:.2f} | "
                 f"{r['loop_ms_per_step'] / r['unrolled_ms_per_step']:.2f} | "
                 f"{r['loop_compile_s']:.2f} / {r['unrolled_compile_s']:.2f} |")
  publish("lif_unroll", lines, {"rows": rows, "args": vars(a)}, a.out)


if __name__ == "__main__":
  main()
