"""VGG-9's convolutions, mdsnn-jax (conv impl 'auto', as the step runs them) against PyTorch's
CPU convolution (oneDNN, channels-last, as SpikingJelly's step runs them), piece by piece on
the same shapes.

    python bench/conv_torch.py [--repeats 5] [--torch-threads 2] [--batch-divisor 1]
                               [--impl auto]

XLA:CPU's convolutions run on XNNPACK as the launchers set them (bench/common.py,
`mdsnn_jax.xla_cpu`); MDSNN_CPU_CONV=xla times XLA's default library instead.

The training step's shapes at batch 32, T = 4 (N = T·B = 128; the static stem runs once on
B = 32; `--batch-divisor d` divides every N by d, for a quick check): forward, and forward +
backward (input and weight gradients of Σ y·g). Both libraries
take turns call by call for `--repeats` rounds after a warm-up; medians. Tells how much of the
step gap to SpikingJelly (bench/train_step.py) is the convolution kernels themselves.
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
from common import CONV_LIBRARY, conv_impl_label, machine, publish  # noqa: E402

from mdsnn_jax.nn.conv import conv2d, resolve_impl  # noqa: E402

# (N, H, W, Cin, Cout) of VGG-9's 3×3 stride-1 convs in the step; stem first (once per image).
SHAPES = ((32, 32, 32, 3, 64), (128, 32, 32, 64, 64), (128, 16, 16, 64, 128),
          (128, 16, 16, 128, 128), (128, 8, 8, 128, 256), (128, 8, 8, 256, 256),
          (128, 8, 8, 256, 256))


def _jax_pieces(impl, n, h, w, cin, cout):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (n, h, w, cin), jnp.float32)
  k = jax.random.normal(kk, (3, 3, cin, cout), jnp.float32) / (9 * cin) ** 0.5
  g = jax.random.normal(kg, (n, h, w, cout), jnp.float32)
  fwd = jax.jit(lambda x, k: conv2d(x, k, impl=impl))
  fwd_bwd = jax.jit(jax.grad(lambda x, k, g: jnp.vdot(conv2d(x, k, impl=impl), g), (0, 1)))
  return (lambda: jax.block_until_ready(fwd(x, k)),
          lambda: jax.block_until_ready(fwd_bwd(x, k, g)))


def _torch_pieces(torch, n, h, w, cin, cout):
  x = torch.randn(n, cin, h, w).to(memory_format=torch.channels_last).requires_grad_()
  conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
  g = torch.randn(n, cout, h, w).to(memory_format=torch.channels_last)

  def fwd():
    with torch.no_grad():
      conv(x)

  def fwd_bwd():
    x.grad = conv.weight.grad = None
    (conv(x) * g).sum().backward()

  return fwd, fwd_bwd


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--torch-threads", type=int, default=2)
  p.add_argument("--batch-divisor", type=int, default=1)
  p.add_argument("--impl", default="auto", help="mdsnn-jax conv_impl: auto, xla or fast")
  p.add_argument("--out", default=None, help="results folder (default results/bench)")
  a = p.parse_args()
  impl = resolve_impl(a.impl)
  if min(a.repeats, a.torch_threads, a.batch_divisor) < 1:
    raise ValueError(f"--repeats, --torch-threads and --batch-divisor must be positive, got "
                     f"{a.repeats}, {a.torch_threads}, {a.batch_divisor}")
  try:
    import torch
  except ImportError as e:
    raise SystemExit(f"bench/conv_torch.py needs torch (pip install torch==2.13.0): {e}")
  torch.set_num_threads(a.torch_threads)
  rows, totals = [], {"jax": [0.0, 0.0], "torch": [0.0, 0.0]}
  for n, *rest in SHAPES:
    shape = (max(1, n // a.batch_divisor), *rest)
    pieces = {"jax": _jax_pieces(impl, *shape), "torch": _torch_pieces(torch, *shape)}
    times = {(lib, i): [] for lib in pieces for i in range(2)}
    for lib, fns in pieces.items():
      for fn in fns:
        fn()  # warm-up (and compile)
    for _ in range(a.repeats):
      for lib, fns in pieces.items():
        for i, fn in enumerate(fns):
          start = time.perf_counter()
          fn()
          times[(lib, i)].append(time.perf_counter() - start)
    n, h, w, cin, cout = shape
    flops = 2.0 * n * h * w * 9 * cin * cout
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    for lib in pieces:
      totals[lib][0] += ms[(lib, 0)]
      totals[lib][1] += ms[(lib, 1)]
    rows.append({"shape": shape, "ms": {f"{lib}/{'fwd' if i == 0 else 'fwd+bwd'}": v
                                        for (lib, i), v in ms.items()}, "gflop": flops / 1e9})
    print(f"{shape}: jax {ms[('jax', 0)]:.1f} / {ms[('jax', 1)]:.1f} ms, torch "
          f"{ms[('torch', 0)]:.1f} / {ms[('torch', 1)]:.1f} ms", flush=True)
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus, load (1 min) {os.getloadavg()[0]:.2f}; "
           f"torch {torch.__version__}, {a.torch_threads} threads, channels-last; medians of "
           f"{a.repeats} interleaved rounds",
           f"mdsnn-jax conv impl {conv_impl_label(a.impl)}; XLA:CPU convolution library: "
           f"{CONV_LIBRARY}",
           "",
           "| N×H×W, Cin→Cout (3×3) | jax fwd ms (GFLOP/s) | torch fwd ms (GFLOP/s) | "
           "jax fwd+bwd ms (GFLOP/s) | torch fwd+bwd ms (GFLOP/s) | fwd+bwd jax ÷ torch |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    n, h, w, cin, cout = r["shape"]
    m, gf = r["ms"], r["gflop"]
    cell = lambda key, mult: f"{m[key]:.1f} ({mult * gf / m[key] * 1e3:.0f})"
    lines.append(f"| {n}×{h}×{w}, {cin}→{cout} | {cell('jax/fwd', 1)} | {cell('torch/fwd', 1)} | "
                 f"{cell('jax/fwd+bwd', 3)} | {cell('torch/fwd+bwd', 3)} | "
                 f"{m['jax/fwd+bwd'] / m['torch/fwd+bwd']:.2f} |")
  lines.append(f"| all seven | {totals['jax'][0]:.1f} | {totals['torch'][0]:.1f} | "
               f"{totals['jax'][1]:.1f} | {totals['torch'][1]:.1f} | "
               f"{totals['jax'][1] / totals['torch'][1]:.2f} |")
  publish("conv_torch", lines, {"rows": rows, "totals_ms": totals, "args": vars(a),
                                "impl": impl, "conv_library": CONV_LIBRARY}, a.out)


if __name__ == "__main__":
  main()
