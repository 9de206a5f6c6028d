"""2-D convolution, NHWC × HWIO → NHWC, with a CPU-fast hand-written backward.

    y[n, a, b, o] = Σ_{i, j, c} x_pad[n, s_h·a + i, s_w·b + j, c] · k[i, j, c, o]

x_pad is x zero-padded by (lo, hi) along H and W; Ho = ⌊(H + lo + hi − kh) / s_h⌋ + 1, same
for W.

`impl='xla'` is `jax.lax.conv_general_dilated` and its autodiff. `impl='fast'` keeps the same
XLA forward and replaces the backward (`jax.custom_vjp`) with

    dx = conv(dilate_s(g), flip_hw(k)ᵀ)      a stride-1 forward conv, HWIO kernel [kh, kw, Cout,
                                             Cin], padding (kh − 1 − lo, H − 1 − (Ho − 1)·s + lo);
                                             1×1 kernels: g·k[0, 0]ᵀ spread out by lax.pad
    dk[i, j] = Σ_c g_cᵀ · x_pad,c[:, i::s, j::s]     per chunk c, kh·kw matrix products
                                                     [Cout, M_c] × [M_c, Cin], or kh products
                                                     [Cout, M_c] × [M_c, kw·Cin] of the kw
                                                     slices of a kernel row side by side

where the weight-gradient sum runs over chunks of a few images (`lax.scan`), so every shifted
slice (the im2col of that chunk) stays in cache instead of a kh·kw-times-larger im2col copy of
the whole input going through memory (bench/conv.py measures these variants; this one won).
Products accumulate in float32 for low-precision inputs. It was written for XLA:CPU's default
convolution library (YNNPACK in jax 0.10), whose autodiff backward, the weight gradient above
all, ran several times slower than its forward. With XLA:CPU's convolutions on XNNPACK
(`mdsnn_jax.xla_cpu`, what the launchers set) XLA's own autodiff is the faster one, per
convolution and in the VGG-9 step (bench/conv_library.py, bench/train_step.py; BENCHMARKS.md).

`impl='auto'` picks 'xla' on GPU/TPU, whose own convolution backward is fast, and on a CPU
whose XLA_FLAGS give the convolutions to XNNPACK (`xla_cpu.xnnpack_convolutions_active()`);
'fast' on a CPU with XLA's default library. The fast path is reverse-mode only (`jax.custom_vjp`):
use impl='xla' for `jax.jvp` / `jax.jacfwd`.
"""
from __future__ import annotations

import functools
from typing import Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from mdsnn_jax import xla_cpu

IMPLS = ("xla", "fast", "auto")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Bytes of input + output-gradient per weight-gradient chunk: the chunk and its kh·kw shifted
# slices should fit the per-core L2 (2 MiB on the machine we tuned on, see bench/conv.py).
_WGRAD_CHUNK_BYTES = 1 << 20
WGRAD_PRODUCTS = ("auto", "taps", "rows")
# 'auto' takes 'rows' for few input channels on a large input map, where the kh·kw products
# with K = Cin are too narrow: VGG-9's 64→64 conv on 32×32 (118 → 95 ms for N = 128) and the
# stride-2 64→128 one (56 → 43 ms); at 16×16 or Cin ≥ 128 'rows' was no faster (bench/conv.py
# --variants, BENCHMARKS.md).
_ROWS_MAX_CIN, _ROWS_MIN_POSITIONS = 64, 32 * 32

Padding = Union[str, Sequence[Sequence[int]]]


# ---------------------------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------------------------


def _pair(value, name: str) -> tuple[int, int]:
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value, value)
  try:
    pair = tuple(int(v) for v in value)
    ok = len(pair) == 2 and all(int(v) == v for v in value) and all(p >= 1 for p in pair)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
  return pair


def _resolve_padding(padding: Padding, spatial: tuple[int, int], window: tuple[int, int],
                     strides: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """Explicit ((lo_h, hi_h), (lo_w, hi_w)) from 'SAME' / 'VALID' / explicit pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID' or [(lo, hi), (lo, hi)], got {padding!r}")
    pads = lax.padtype_to_pads(spatial, window, strides, padding.upper())
    return tuple((int(lo), int(hi)) for lo, hi in pads)
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    ok = len(pads) == 2 and all(lo >= 0 and hi >= 0 for lo, hi in pads)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"padding must be 'SAME', 'VALID' or two non-negative (lo, hi) pairs, "
                     f"got {padding!r}")
  return pads


def resolve_impl(impl: str) -> str:
  """'xla' or 'fast': `impl`, with 'auto' resolved to 'fast' on a CPU with XLA's default
  convolution library and 'xla' elsewhere (see the module docstring)."""
  if impl not in IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; allowed: {list(IMPLS)}")
  if impl == "auto":
    on_default_cpu_library = (jax.default_backend() == "cpu"
                              and not xla_cpu.xnnpack_convolutions_active())
    return "fast" if on_default_cpu_library else "xla"
  return impl


# ---------------------------------------------------------------------------------------------
# Public entry point.
# ---------------------------------------------------------------------------------------------


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: int | Sequence[int] = (1, 1),
           padding: Padding = "SAME", impl: str = "xla") -> jax.Array:
  """Cross-correlation of x [N, H, W, Cin] with kernel [kh, kw, Cin, Cout] -> [N, Ho, Wo, Cout].

  strides: int or (s_h, s_w); padding: 'SAME', 'VALID' or ((lo_h, hi_h), (lo_w, hi_w)) with
  non-negative entries; impl: 'xla' (lax.conv_general_dilated + autodiff), 'fast' (same forward,
  custom CPU-friendly backward) or 'auto' ('fast' on CPU, 'xla' on GPU/TPU). Inputs of different
  float dtypes are promoted to a common one.
  """
  impl = resolve_impl(impl)
  if jnp.ndim(x) != 4:
    raise ValueError(f"x must be NHWC [N, H, W, Cin], got shape {jnp.shape(x)}")
  if jnp.ndim(kernel) != 4:
    raise ValueError(f"kernel must be HWIO [kh, kw, Cin, Cout], got shape {jnp.shape(kernel)}")
  if x.shape[3] != kernel.shape[2]:
    raise ValueError(f"x has {x.shape[3]} input channels but kernel {kernel.shape} expects "
                     f"{kernel.shape[2]} (HWIO layout)")
  dtype = jnp.promote_types(x.dtype, kernel.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"conv2d needs floating-point inputs, got {x.dtype} and {kernel.dtype}")
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  strides = _pair(strides, "strides")
  window = (int(kernel.shape[0]), int(kernel.shape[1]))
  pads = _resolve_padding(padding, (int(x.shape[1]), int(x.shape[2])), window, strides)
  for dim, size, (lo, hi), k in zip("HW", x.shape[1:3], pads, window):
    if size + lo + hi < k:
      raise ValueError(f"padded {dim} = {size} + {lo} + {hi} is smaller than the kernel's {k}; "
                       f"no output position fits")
  if impl == "xla":
    return _conv(x, kernel, strides, pads)
  return _conv_fast(x, kernel, strides, pads)


# ---------------------------------------------------------------------------------------------
# Pure pieces: forward, input gradient, weight gradient.
# ---------------------------------------------------------------------------------------------


def _conv(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMENSION_NUMBERS)


def conv_input_grad(g: jax.Array, kernel: jax.Array, input_hw: tuple[int, int],
                    strides: int | Sequence[int], pads: Padding) -> jax.Array:
  """dL/dx [N, H, W, Cin] of conv2d(x, kernel, strides, pads) from g = dL/dy [N, Ho, Wo, Cout].

  dx = conv(dilate_s(g), flip_hw(k) with I and O swapped), a stride-1 forward convolution with
  padding (kh − 1 − lo, H − 1 − (Ho − 1)·s + lo) per spatial dim; negative padding crops.
  A 1×1 kernel needs no convolution: dx = g·k[0, 0]ᵀ placed every s-th position (`lax.pad`
  with interior padding s − 1, low padding −lo), which is faster on XLA:CPU.
  """
  kh, kw = kernel.shape[:2]
  strides = _pair(strides, "strides")
  pads = _resolve_padding(pads, tuple(input_hw), (kh, kw), strides)
  out_hw = g.shape[1:3]
  grad_pads = [(k - 1 - lo, size - 1 - (out - 1) * s + lo)
               for k, (lo, _), size, out, s in zip((kh, kw), pads, input_hw, out_hw, strides)]
  if (kh, kw) == (1, 1):
    d = lax.dot_general(g, kernel[0, 0], (((3,), (1,)), ((), ())))
    spread = [(lo, hi, s - 1) for (lo, hi), s in zip(grad_pads, strides)]
    config = [(0, 0, 0), *spread, (0, 0, 0)]
    return lax.pad(d, jnp.zeros((), d.dtype), config)
  k_t = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return lax.conv_general_dilated(g, k_t, (1, 1), grad_pads, lhs_dilation=strides,
                                  dimension_numbers=_DIMENSION_NUMBERS)


def conv_kernel_grad(x: jax.Array, g: jax.Array, kernel_hw: tuple[int, int],
                     strides: int | Sequence[int], pads: Padding,
                     chunk_bytes: int = _WGRAD_CHUNK_BYTES, products: str = "auto") -> jax.Array:
  """dL/dk [kh, kw, Cin, Cout] = Σ_{n, a, b} x_pad[n, s·a + i, s·b + j, :]ᵀ g[n, a, b, :],
  the kernel gradient of conv2d(x, k, strides, pads) for g = dL/dy [N, Ho, Wo, Cout].

  A `lax.scan` over chunks of images, about `chunk_bytes` of x and g per chunk (a divisor of
  the batch when one is within 2× of that; otherwise the leftover images form one more
  chunk). Per chunk, kh·kw matrix products of the shifted input slice [M_c, Cin] with g
  [M_c, Cout]. For kh·kw > 1, g is transposed once to [Cout, M_c] so that every product
  contracts the minor dimension of its left operand (XLA:CPU runs that form about twice as
  fast as [M_c, Cin]ᵀ·[M_c, Cout]); a 1×1 kernel has a single product, which would not repay
  the transpose. products: 'taps' (kh·kw products, K = Cin), 'rows' (kh products whose right
  operand is the kw shifted slices of kernel row i side by side, K = kw·Cin) or 'auto' ('rows'
  when Cin ≤ 64 and the input has ≥ 32·32 positions, see WGRAD_PRODUCTS). Accumulates in
  float32 (or the input dtype if wider), returns x's dtype.
  """
  kernel_hw = tuple(int(k) for k in kernel_hw)
  strides = _pair(strides, "strides")
  pads = _resolve_padding(pads, tuple(x.shape[1:3]), kernel_hw, strides)
  if chunk_bytes < 1:
    raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
  if products not in WGRAD_PRODUCTS:
    raise ValueError(f"products must be one of {list(WGRAD_PRODUCTS)}, got {products!r}")
  if products == "auto":
    few_channels_large_map = (x.shape[3] <= _ROWS_MAX_CIN
                              and x.shape[1] * x.shape[2] >= _ROWS_MIN_POSITIONS)
    products = "rows" if few_channels_large_map else "taps"
  rows = products == "rows" and kernel_hw[1] > 1
  n = x.shape[0]
  per_image = x[0].size * x.dtype.itemsize + g[0].size * g.dtype.itemsize
  target = int(max(1, min(n, chunk_bytes // max(per_image, 1))))
  chunk = next(d for d in range(target, 0, -1) if n % d == 0)
  if 2 * chunk <= target:
    chunk = target
  main = n - n % chunk
  acc = _kernel_grad_scan(x[:main], g[:main], kernel_hw, strides, pads, chunk, rows)
  if main < n:
    acc = acc + _kernel_grad_scan(x[main:], g[main:], kernel_hw, strides, pads, n - main, rows)
  return acc.astype(x.dtype)


def _kernel_grad_scan(x, g, kernel_hw, strides, pads, chunk, rows):
  """conv_kernel_grad's scan over len(x) // chunk chunks (len(x) a multiple of chunk); rows:
  one product per kernel row (K = kw·Cin) instead of one per tap (K = Cin)."""
  kh, kw = kernel_hw
  n, _, _, cin = x.shape
  _, ho, wo, cout = g.shape
  sh, sw = strides
  steps = n // chunk
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  xs = x.reshape(steps, chunk, *x.shape[1:])
  gs = g.reshape(steps, chunk * ho * wo, cout)
  transpose_g = kh * kw > 1
  if transpose_g:
    gs = gs.transpose(0, 2, 1)  # [steps, Cout, M_c]
    dims = (((1,), (0,)), ((), ()))  # [Cout, M_c] · [M_c, Cin] -> [Cout, Cin]
  else:
    dims = (((0,), (0,)), ((), ()))  # [M_c, Cin]ᵀ · [M_c, Cout] -> [Cin, Cout]

  def tap(xp, i, j):  # the input slice that meets kernel tap (i, j): [chunk, Ho, Wo, Cin]
    return xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]

  def body(acc, xg):
    xc, gc = xg
    xp = jnp.pad(xc, ((0, 0), pads[0], pads[1], (0, 0)))
    if rows:
      rights = [jnp.concatenate([tap(xp, i, j) for j in range(kw)], axis=-1) for i in range(kh)]
    else:
      rights = [tap(xp, i, j) for i in range(kh) for j in range(kw)]
    products = []
    for right in rights:
      right = right.reshape(-1, right.shape[-1])
      operands = (gc, right) if transpose_g else (right, gc)
      products.append(lax.dot_general(*operands, dims, preferred_element_type=acc_dtype))
    return acc + jnp.stack(products), None

  k_rows = kw * cin if rows else cin
  n_products = kh if rows else kh * kw
  acc_shape = (n_products, cout, k_rows) if transpose_g else (n_products, k_rows, cout)
  acc, _ = lax.scan(body, jnp.zeros(acc_shape, acc_dtype), (xs, gs))
  if transpose_g:
    acc = acc.transpose(0, 2, 1)  # [n_products, k_rows, Cout]; k_rows = (j, c) for rows
  return acc.reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_fast(x, kernel, strides, pads):
  return _conv(x, kernel, strides, pads)


def _conv_fast_fwd(x, kernel, strides, pads):
  return _conv(x, kernel, strides, pads), (x, kernel)


def _conv_fast_bwd(strides, pads, residuals, g):
  x, kernel = residuals
  dx = conv_input_grad(g, kernel, x.shape[1:3], strides, pads)
  dk = conv_kernel_grad(x, g, kernel.shape[:2], strides, pads)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_fast.defvjp(_conv_fast_fwd, _conv_fast_bwd)
