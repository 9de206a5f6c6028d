"""XLA:CPU's convolution library, YNNPACK (jax 0.10's default) vs XNNPACK (`mdsnn_jax.xla_cpu`),
on VGG-9's convolutions, with both of the library's conv_impl backward passes.

    python bench/conv_library.py [--rounds 3] [--repeats 3] [--batch-divisor 1]

XLA reads the library choice once per process, so each library runs in its own child process
(MDSNN_CPU_CONV=xla or xnnpack); the two children take turns for `--rounds` rounds (a shared
machine's changing load falls on both alike), each timing every piece `--repeats` times after
a warm-up. Pieces, on the training step's shapes at batch 32, T = 4 (N = 128; the static stem
once on N = 32; `--batch-divisor d` divides every N by d): the forward, and forward + backward
(input and weight gradients of Σ y·g) with conv_impl 'xla' (XLA's autodiff) and 'fast' (the
custom VJP of `nn.conv`). Medians over all rounds; GFLOP/s counts 2·MACs per pass.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

LIBRARIES = ("xla", "xnnpack")  # MDSNN_CPU_CONV values: XLA's default (YNNPACK), XNNPACK
PIECES = ("fwd", "xla fwd+bwd", "fast fwd+bwd")
# (N, H, W, Cin, Cout) of VGG-9's 3×3 stride-1 convs in the step; stem first (once per image).
SHAPES = ((32, 32, 32, 3, 64), (128, 32, 32, 64, 64), (128, 16, 16, 64, 128),
          (128, 16, 16, 128, 128), (128, 8, 8, 128, 256), (128, 8, 8, 256, 256))


def child(repeats: int, divisor: int) -> dict:
  """{'library': what xla_cpu did, 'ms': {shape: {piece: [ms, ...]}}} in this process."""
  from common import CONV_LIBRARY  # sets XLA_FLAGS from MDSNN_CPU_CONV before jax starts

  import jax
  import jax.numpy as jnp

  from mdsnn_jax.nn.conv import conv2d
  out = {}
  for n, *rest in SHAPES:
    shape = (max(1, n // divisor), *rest)
    n, h, w, cin, cout = shape
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (n, h, w, cin), jnp.float32)
    k = jax.random.normal(kk, (3, 3, cin, cout), jnp.float32) / (9 * cin) ** 0.5
    g = jax.random.normal(kg, (n, h, w, cout), jnp.float32)
    fns = {"fwd": jax.jit(lambda x, k, g: conv2d(x, k, impl="xla"))}
    for impl in ("xla", "fast"):
      fns[f"{impl} fwd+bwd"] = jax.jit(jax.grad(
          lambda x, k, g, impl=impl: jnp.vdot(conv2d(x, k, impl=impl), g), (0, 1)))
    times = {}
    for piece, fn in fns.items():
      jax.block_until_ready(fn(x, k, g))  # compile + warm-up
      times[piece] = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x, k, g))
        times[piece].append(1e3 * (time.perf_counter() - start))
    out["x".join(map(str, shape))] = times
  return {"library": CONV_LIBRARY, "ms": out}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch-divisor", type=int, default=1)
  p.add_argument("--out", default=None, help="results folder (default results/bench)")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = p.parse_args()
  if min(a.rounds, a.repeats, a.batch_divisor) < 1:
    raise ValueError(f"--rounds, --repeats and --batch-divisor must be positive, got "
                     f"{a.rounds}, {a.repeats}, {a.batch_divisor}")
  if a.child:
    print(json.dumps(child(a.repeats, a.batch_divisor)))
    return
  from common import machine, publish
  times = {lib: {} for lib in LIBRARIES}
  described = {}
  load = [os.getloadavg()[0]]
  for _ in range(a.rounds):
    for lib in LIBRARIES:
      env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
      env["MDSNN_CPU_CONV"] = lib
      res = subprocess.run([sys.executable, __file__, "--child", f"--repeats={a.repeats}",
                            f"--batch-divisor={a.batch_divisor}"], env=env, check=True,
                           capture_output=True, text=True)
      got = json.loads(res.stdout.strip().splitlines()[-1])
      described[lib] = got["library"]
      for shape, pieces in got["ms"].items():
        for piece, ms in pieces.items():
          times[lib].setdefault(shape, {}).setdefault(piece, []).extend(ms)
  load.append(os.getloadavg()[0])
  med = {lib: {s: {pc: statistics.median(v) for pc, v in ps.items()} for s, ps in t.items()}
         for lib, t in times.items()}
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus, load (1 min) {load[0]:.2f} before, "
           f"{load[1]:.2f} after; {a.rounds} rounds of the two processes in turn, "
           f"{a.repeats} timings each; medians",
           *(f"child with MDSNN_CPU_CONV={lib} -> {described[lib]}" for lib in LIBRARIES), "",
           "| N×H×W, Cin→Cout (3×3) | piece | YNNPACK ms (GFLOP/s) | XNNPACK ms (GFLOP/s) | "
           "YNNPACK ÷ XNNPACK |", "|---|---|---|---|---|"]
  totals = {lib: dict.fromkeys(PIECES, 0.0) for lib in LIBRARIES}
  for shape in med["xla"]:
    n, h, w, cin, cout = map(int, shape.split("x"))
    gflop = 2.0 * n * h * w * 9 * cin * cout / 1e9
    for piece in PIECES:
      passes = 1 if piece == "fwd" else 3
      y, x = med["xla"][shape][piece], med["xnnpack"][shape][piece]
      totals["xla"][piece] += y
      totals["xnnpack"][piece] += x
      lines.append(f"| {n}×{h}×{w}, {cin}→{cout} | {piece} | {y:.1f} "
                   f"({passes * gflop / y * 1e3:.0f}) | {x:.1f} ({passes * gflop / x * 1e3:.0f}) "
                   f"| {y / x:.2f} |")
  for piece in PIECES:
    y, x = totals["xla"][piece], totals["xnnpack"][piece]
    lines.append(f"| all six | {piece} | {y:.1f} | {x:.1f} | {y / x:.2f} |")
  publish("conv_library", lines, {"median_ms": med, "totals_ms": totals, "args": vars(a),
                                  "libraries": described, "load": load}, a.out)


if __name__ == "__main__":
  main()
