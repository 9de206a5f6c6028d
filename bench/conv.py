"""Convolution pieces, impl 'xla' vs 'fast': forward, input gradient, weight gradient, fwd+bwd.

    python bench/conv.py [--repeats 5] [--variants] [--shapes all|N,H,W,Cin,Cout,k,s;...]

Every piece is jitted and timed as the median of `--repeats` rounds after a warm-up run; in
each round every piece of a shape runs once, together with a 2048³ float32 matmul whose rate
is that shape's peak (other processes on a shared machine slow all of them alike).
FLOPs per piece = 2·N·Ho·Wo·kh·kw·Cin·Cout (fwd+bwd counts 3×). For 'xla' the gradients are
jax's autodiff of lax.conv_general_dilated (`jax.vjp`); for 'fast' they are
`conv_input_grad` / `conv_kernel_grad` of mdsnn_jax.nn.conv, and fwd+bwd is `jax.value_and_grad`
through `conv2d(impl=...)`. `--variants` also times the alternatives that were considered for
each backward piece (im2col by conv_general_dilated_patches or by concatenated shifted slices
with one big matmul, the chunked scan at several chunk sizes and with its two product forms,
kh·kw products of K = Cin ('taps') or kh of K = kw·Cin ('rows'); zero-inserted vs lhs-dilated
output gradient for stride 2; lhs-dilated conv vs matmul for 1×1), so the choices in conv.py
can be re-checked on another machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, matmul_peak_gflops, time_fn, tee_results  # noqa: E402

from mdsnn_jax.nn import conv as conv_lib  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
PEAK_N = 2048  # the matmul-peak reference: one PEAK_N³ float32 matmul
# (N, H, W, Cin, Cout, k, stride)
SHAPES = (
    (256, 32, 32, 32, 32, 3, 1),
    (128, 32, 32, 64, 64, 3, 1),
    (128, 16, 16, 128, 128, 3, 1),
    (128, 8, 8, 256, 256, 3, 1),
    (128, 32, 32, 64, 128, 3, 2),
    (128, 16, 16, 128, 128, 1, 1),
    (128, 32, 32, 64, 128, 1, 2),
)


def _im2col_patches(x, kh, kw, strides, pads):
  # Feature order of conv_general_dilated_patches is (Cin, kh, kw).
  p = lax.conv_general_dilated_patches(x, (kh, kw), strides, pads, dimension_numbers=DN)
  return p.reshape(-1, p.shape[-1])


def _wgrad_patches(x, g, kh, kw, strides, pads):
  p = _im2col_patches(x, kh, kw, strides, pads)
  d = p.T @ g.reshape(-1, g.shape[-1])
  return d.reshape(x.shape[-1], kh, kw, -1).transpose(1, 2, 0, 3)


def _wgrad_concat(x, g, kh, kw, strides, pads):
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = g.shape[1:3]
  sh, sw = strides
  cols = [xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
          for i in range(kh) for j in range(kw)]
  p = jnp.concatenate(cols, axis=-1).reshape(-1, kh * kw * x.shape[-1])
  return (p.T @ g.reshape(-1, g.shape[-1])).reshape(kh, kw, x.shape[-1], -1)


def _dgrad_conv(gd, kernel, input_hw, strides, pads, lhs_dilation):
  """dx as one stride-1 conv of the (lhs-dilated or already zero-inserted) output gradient."""
  kh, kw = kernel.shape[:2]
  k_t = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dilated = [(n - 1) * d + 1 for n, d in zip(gd.shape[1:3], lhs_dilation)]
  grad_pads = [(k - 1 - lo, size - dil + lo)
               for k, (lo, _), size, dil in zip((kh, kw), pads, input_hw, dilated)]
  return lax.conv_general_dilated(gd, k_t, (1, 1), grad_pads, lhs_dilation=lhs_dilation,
                                  dimension_numbers=DN)


def _dgrad_zero_insert(g, kernel, input_hw, strides, pads):
  n, ho, wo, c = g.shape
  sh, sw = strides
  gd = jnp.zeros((n, (ho - 1) * sh + 1, (wo - 1) * sw + 1, c), g.dtype).at[:, ::sh, ::sw].set(g)
  return _dgrad_conv(gd, kernel, input_hw, strides, pads, (1, 1))


def _round_robin(cands: list[tuple], repeats: int) -> list[float]:
  """Median seconds of each (fn, args): one run of every candidate per round, `repeats`
  rounds after one warm-up each, so a shared machine's changing load hits all alike."""
  fns = [(jax.jit(fn), args) for fn, args in cands]
  for fn, args in fns:
    time_fn(fn, *args, repeats=1, warmup=1)
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, (fn, args) in enumerate(fns):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def bench_shape(shape, repeats: int, variants: bool) -> tuple[list[tuple], float]:
  """Rows (impl, piece, ms, GFLOP/s) and the matmul peak (GFLOP/s) timed alongside them."""
  n, h, w, cin, cout, k, s = shape
  strides = (s, s)
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (n, h, w, cin), jnp.float32)
  kernel = jax.random.normal(kk, (k, k, cin, cout), jnp.float32) / (k * k * cin) ** 0.5
  pads = conv_lib._resolve_padding("SAME", (h, w), (k, k), strides)
  y = conv_lib._conv(x, kernel, strides, pads)
  g = jax.random.normal(kg, y.shape, jnp.float32)
  ho, wo = y.shape[1:3]
  flops = 2.0 * n * ho * wo * k * k * cin * cout
  entries = []  # (impl, piece, flop multiplier, fn, args)

  def add(impl, piece, fn, *args, mult=1):
    entries.append((impl, piece, mult, fn, args))

  fwd_xla = lambda x, kernel: conv_lib._conv(x, kernel, strides, pads)
  conv = lambda impl: (lambda x, kernel: conv_lib.conv2d(x, kernel, strides=strides,
                                                         padding="SAME", impl=impl))
  for impl in ("xla", "fast"):
    add(impl, "forward", conv(impl), x, kernel)
    if impl == "xla":
      add(impl, "input grad",
          lambda x, kernel, g: jax.vjp(lambda x: fwd_xla(x, kernel), x)[1](g)[0], x, kernel, g)
      add(impl, "weight grad",
          lambda x, kernel, g: jax.vjp(lambda kernel: fwd_xla(x, kernel), kernel)[1](g)[0],
          x, kernel, g)
    else:
      add(impl, "input grad",
          lambda kernel, g: conv_lib.conv_input_grad(g, kernel, (h, w), strides, pads), kernel, g)
      add(impl, "weight grad",
          lambda x, g: conv_lib.conv_kernel_grad(x, g, (k, k), strides, pads), x, g)
    loss = lambda x, kernel, g, impl=impl: jnp.vdot(conv(impl)(x, kernel), g)
    add(impl, "fwd+bwd", jax.value_and_grad(loss, argnums=(0, 1)), x, kernel, g, mult=3)
  if variants:
    add("variant", "wgrad im2col patches+matmul",
        lambda x, g: _wgrad_patches(x, g, k, k, strides, pads), x, g)
    add("variant", "wgrad concat slices+matmul",
        lambda x, g: _wgrad_concat(x, g, k, k, strides, pads), x, g)
    if k > 1:  # conv_kernel_grad's two product forms ('auto' picks one of them)
      for products in ("taps", "rows"):
        add("variant", f"wgrad products={products}",
            lambda x, g, products=products: conv_lib.conv_kernel_grad(
                x, g, (k, k), strides, pads, products=products), x, g)
    for kib in (256, 512, 2048, 4096):
      add("variant", f"wgrad scan chunk {kib} KiB",
          lambda x, g, kib=kib: conv_lib.conv_kernel_grad(x, g, (k, k), strides, pads,
                                                          chunk_bytes=kib * 1024), x, g)
    if s > 1:
      add("variant", "dgrad zero-insert + conv",
          lambda kernel, g: _dgrad_zero_insert(g, kernel, (h, w), strides, pads), kernel, g)
    if k == 1:  # 'fast' uses matmul + lax.pad for 1x1; this is the general conv formula
      add("variant", "dgrad lhs-dilated conv",
          lambda kernel, g: _dgrad_conv(g, kernel, (h, w), strides, pads, strides), kernel, g)
  a = jnp.ones((PEAK_N, PEAK_N), jnp.float32)
  seconds = _round_robin([(fn, args) for *_, fn, args in entries] + [(jnp.matmul, (a, a))],
                         repeats)
  peak = 2.0 * PEAK_N**3 / seconds[-1] / 1e9
  rows = [(impl, piece, sec * 1e3, mult * flops / sec / 1e9)
          for (impl, piece, mult, _, _), sec in zip(entries, seconds)]
  return rows, peak


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--variants", action="store_true", help="also time the rejected variants")
  p.add_argument("--shapes", default="all",
                 help="'all' or 'N,H,W,Cin,Cout,k,stride;...' (SAME padding)")
  a = p.parse_args()
  shapes = SHAPES if a.shapes == "all" else [
      tuple(int(v) for v in item.split(",")) for item in a.shapes.split(";")]
  for shape in shapes:
    if len(shape) != 7:
      raise ValueError(f"a shape needs 7 ints N,H,W,Cin,Cout,k,stride; got {shape}")
  if a.repeats < 1:
    raise ValueError(f"--repeats must be >= 1, got {a.repeats}")

  print(f"machine: {machine()}, {os.cpu_count()} cpus")
  print(f"matmul peak ({PEAK_N}^3 float32) at start: {matmul_peak_gflops():.1f} GFLOP/s; "
        f"medians of {a.repeats} round-robin runs; '% peak' is against the matmul timed in the "
        f"same rounds")
  print("| shape (N,H,W,Cin->Cout, k, stride) | impl | piece | ms | GFLOP/s | % peak |")
  print("|---|---|---|---|---|---|")
  for shape in shapes:
    n, h, w, cin, cout, k, s = shape
    label = f"{n}x{h}x{w}, {cin}->{cout}, {k}x{k}, s{s}"
    rows, peak = bench_shape(shape, a.repeats, a.variants)
    for impl, piece, ms, gflops in rows:
      print(f"| {label} | {impl} | {piece} | {ms:.2f} | {gflops:.1f} | {100 * gflops / peak:.0f} |")
    print(f"| {label} | matmul {PEAK_N}^3 | peak | {2e3 * PEAK_N**3 / peak / 1e9:.2f} | {peak:.1f} "
          f"| 100 |", flush=True)


if __name__ == "__main__":
  with tee_results("conv"):
    main()
