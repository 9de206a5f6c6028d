"""Integer export of one quantized dense / conv layer followed by a LIF neuron (see docs/method.md,
'Integer export').

The fake-quantized float layer computes, per output channel c with weight scale s_c,

    x_t = s_c · A_t,   A_t = Σ spikes·int_w + int_bias     (A_t an int32 accumulator)
    h_t = λ·u_{t−1} + x_t,  fire iff h_t ≥ θ,  hard reset,  u_t = Q(h_t·(1 − s_t))

with the membrane u on an integer level grid {ℓ_0 < … < ℓ_{L−1}} (e.g. {−1, 0, 1}). λ·u is
a half-integer and s_c is arbitrary, so the membrane in units of s_c is not an integer.
Scheme used here: the stored membrane is kept as its level INDEX i (the integer level ℓ_i)
and every comparison the float forward makes is moved onto the integer accumulator:

    fire        ⇔  λℓ_i + s_c·A ≥ θ_c  ⇔  A ≥ ⌈(θ_c − λℓ_i)/s_c⌉             = int_threshold[i, c]
    level > k   ⇔  λℓ_i + s_c·A crosses the midpoint b_k of levels k, k+1
                ⇔  A ≥ ⌈(b_k − λℓ_i)/s_c⌉        for b_k ≤ 0   (tie goes up, toward zero)
                   A ≥ ⌊(b_k − λℓ_i)/s_c⌋ + 1    for b_k > 0   (tie goes down, toward zero)
                                                                    = level_thresholds[i, c, k]

The tables are computed once at export in exact rational arithmetic (`fractions.Fraction`
of the float32 values the float forward uses). The integer forward is then int32
accumulation and integer compares only; the leak is folded into the per-level thresholds,
so any decay λ works (no shifts).

Exactness: the integer forward reproduces the float forward's spikes EXACTLY whenever the
float forward itself is exact arithmetic. That holds (`IntegerLayer.exact`) when every
weight scale and the membrane level step are powers of two and all intermediate values fit
the float mantissa (checked at export); e.g. `uniform(bits, power_of_two=True)` weights,
λ = 0.5 and the ternary membrane. Otherwise the float forward rounds (Σ fl(k·s_c) ≠ s_c·A)
and may disagree at near-ties, which are common (cancelling inputs give A = 0 and h = ±0.5
exactly in real arithmetic); the integer forward then follows exact arithmetic.
The float forward must run with full float32 precision (CPU default; on GPU pass
precision=HIGHEST and avoid TF32).
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mdsnn_jax.quant.base import MembraneQuantizer, WeightQuantizer
from mdsnn_jax.quant.batchnorm import bias_scale, default_weight_params, quantize_folded

PyTree = Any

KINDS = ("dense", "conv")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


class IntegerLayer(NamedTuple):
  """An exported quantized layer + LIF neuron (C output channels, L membrane levels).

  int_weight: int32 kernel codes (dense (in, C), conv HWIO).
  weight_scale: (C,) float, the fake-quantized kernel is int_weight · weight_scale.
  int_bias: (C,) int32 on the accumulator scale (weight_scale × input scale 1 for spikes).
  int_threshold: (L, C) int32; a neuron stored at level index i fires iff acc ≥ int_threshold[i, c].
  level_thresholds: (L, C, L−1) int32; without a spike the next level index is
    #{k : acc ≥ level_thresholds[i, c, k]}.
  membrane_levels: (L,) int32 level values; rest_index: index of 0 (u_0 = 0);
  reset_index: index of Q(0) (hard reset).
  decay, threshold ((C,) float): the float neuron's λ and θ, for reference.
  kind: 'dense' or 'conv'; strides, padding: conv geometry (NHWC / HWIO).
  exact: True when the fake-quantized float forward is exact arithmetic (see module doc).
  """
  int_weight: jax.Array
  weight_scale: jax.Array
  int_bias: jax.Array
  int_threshold: jax.Array
  level_thresholds: jax.Array
  membrane_levels: jax.Array
  rest_index: int
  reset_index: int
  decay: float
  threshold: jax.Array
  kind: str
  strides: tuple[int, ...]
  padding: Any
  exact: bool


def _min_acc(r: Fraction, s: Fraction, strict: bool) -> int:
  """Smallest integer A with s·A ≥ r (s·A > r when strict), clamped to int32 (s >= 0)."""
  if s == 0:
    ok = 0 > r if strict else 0 >= r
    return _INT32_MIN if ok else _INT32_MAX
  q = r / s
  a = math.floor(q) + 1 if strict else math.ceil(q)
  return min(max(a, _INT32_MIN), _INT32_MAX)


def _is_power_of_two(x: Fraction) -> bool:
  # Floats are dyadic: the denominator is always a power of two.
  return x > 0 and x.numerator & (x.numerator - 1) == 0 and x.denominator & (x.denominator - 1) == 0


def _check_membrane(mq: MembraneQuantizer, dtype) -> tuple[list[int], int]:
  """Integral levels containing 0, and an `apply` that rounds to the nearest, ties toward zero."""
  if mq.init_params():
    raise ValueError(
        f"membrane quantizer {mq.kind!r} has learned parameters; export needs a fixed grid "
        "(re-create it with the trained values, e.g. uniform_membrane(bits, clip=c))")
  levels = [float(v) for v in mq.levels]
  if len(levels) < 2 or any(v != round(v) for v in levels) or 0.0 not in levels:
    raise ValueError(
        f"integer export needs >= 2 integer membrane levels including 0, got {tuple(mq.levels)} "
        f"from membrane quantizer {mq.kind!r}")
  if any(b <= a for a, b in zip(levels, levels[1:])):
    raise ValueError(f"membrane levels must be strictly increasing, got {tuple(mq.levels)}")
  probes, expected = [], []
  for i, lv in enumerate(levels):
    probes.append(lv)
    expected.append(lv)
    if i + 1 < len(levels):
      b = 0.5 * (lv + levels[i + 1])
      probes += [b, float(np.nextafter(dtype.type(b), dtype.type(-np.inf))),
                 float(np.nextafter(dtype.type(b), dtype.type(np.inf)))]
      expected += [levels[i + 1] if b <= 0 else lv, lv, levels[i + 1]]
  probes += [levels[0] - 1.0]
  expected += [levels[0]]
  got = np.asarray(mq.apply({}, jnp.asarray(probes, dtype)), np.float64)
  if not np.array_equal(got, np.asarray(expected)):
    raise ValueError(
        f"membrane quantizer {mq.kind!r} does not round to the nearest of its levels "
        f"{tuple(levels)} with ties toward zero (probes {probes} gave {got.tolist()})")
  return [int(v) for v in levels], levels.index(0.0)


def export_layer(
    kernel: jax.Array,
    bias: jax.Array | None,
    wq: WeightQuantizer,
    wq_params: PyTree = None,
    wq_state: PyTree = None,
    mq: MembraneQuantizer | None = None,
    *,
    decay: float = 0.5,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    bias_bits: int = 32,
    kind: str | None = None,
    strides: tuple[int, ...] = (1, 1),
    padding: Any = "SAME",
) -> IntegerLayer:
  """Exports kernel/bias (already BN-folded), fake-quantized as in `quantize_folded`, + LIF.

  kind: 'dense' ((in, C) kernel) or 'conv' (HWIO kernel); None infers it from kernel.ndim.
  The float reference is `quantize_folded(kernel, bias, wq, ..., bias_bits)` followed by
  `lif_scan(..., decay, threshold, reset='hard', membrane_quantizer=mq.apply)`.
  wq_params / wq_state None: the weight quantizer's init from `kernel`; mq is required.
  Cost O(L²·C) exact rational operations.

  Bias grid: the bias is an integer on the accumulator scale, int_bias_c = round(b_c/s_c)
  with s_c the weight scale (spike inputs are 0/1), so it moves in steps of s_c; the
  exported spikes match a float forward that used `quantize_folded`'s bias_q, not the raw
  bias. A nonzero bias that rounds to 0 in every channel warns (`BiasRoundsToZeroWarning`).
  """
  if mq is None:
    raise ValueError("export_layer needs the membrane quantizer mq (e.g. quant.ternary_membrane())")
  kernel = jnp.asarray(kernel)
  wq_params, wq_state = default_weight_params(wq, kernel, wq_params, wq_state)
  if kind is None:
    kind = {2: "dense", 4: "conv"}.get(kernel.ndim)
  if kind not in KINDS:
    raise ValueError(f"unknown layer kind {kind!r} for a kernel of shape {kernel.shape}; allowed: {list(KINDS)}")
  if kernel.ndim != (2 if kind == "dense" else 4):
    raise ValueError(f"a {kind} kernel must have {2 if kind == 'dense' else 4} axes, got shape {kernel.shape}")
  if reset != "hard":
    raise ValueError(f"integer export supports reset='hard' only, got {reset!r}")
  dtype = np.dtype(kernel.dtype)
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"kernel must be floating point, got dtype {dtype}")
  c = kernel.shape[-1]
  decay_f = float(dtype.type(decay))
  if not 0.0 <= decay_f <= 1.0:
    raise ValueError(f"decay must lie in [0, 1], got {decay}")
  theta = np.broadcast_to(np.asarray(threshold, dtype), (c,)) if np.ndim(threshold) <= 1 else None
  if theta is None or not np.all(theta > 0):
    raise ValueError(f"threshold must be positive, a scalar or shape ({c},), got {threshold}")
  levels, rest = _check_membrane(mq, dtype)

  kernel_q, bias_q = quantize_folded(kernel, bias, wq, wq_params, wq_state, bias_bits)
  try:
    int_w, w_scale = wq.to_integer(wq_params, wq_state, kernel)
  except NotImplementedError as err:
    raise ValueError(f"weight quantizer {wq.kind!r} has no integer form: {err}") from err
  int_w = np.asarray(int_w, np.int64)
  w_scale = np.broadcast_to(np.asarray(w_scale, dtype), (c,))
  acc_scale = np.asarray(bias_scale(kernel, bias, wq, wq_params, wq_state, bias_bits), dtype)
  # Channels with weight scale 0 contribute nothing in float either; their accumulator
  # carries only the bias, on the bias's own step.
  int_w = np.where(w_scale > 0, int_w, 0)
  if not np.allclose(int_w * acc_scale.astype(np.float64), np.asarray(kernel_q, np.float64), rtol=1e-6, atol=0):
    raise ValueError(f"weight quantizer {wq.kind!r} breaks its contract apply == int_w * scale")
  int_bias = np.round(np.asarray(bias_q, np.float64) / acc_scale.astype(np.float64)).astype(np.int64)
  _warn_if_bias_vanishes(bias, int_bias, acc_scale)

  lam = Fraction(decay_f)
  lv = [Fraction(v) for v in levels]
  bounds = [(a + b) / 2 for a, b in zip(lv, lv[1:])]
  n_lv = len(lv)
  fire = np.empty((n_lv, c), np.int64)
  cross = np.empty((n_lv, c, n_lv - 1), np.int64)
  for ch in range(c):
    s = Fraction(float(acc_scale[ch]))
    th = Fraction(float(theta[ch]))
    for i, l in enumerate(lv):
      fire[i, ch] = _min_acc(th - lam * l, s, strict=False)
      for k, b in enumerate(bounds):
        cross[i, ch, k] = _min_acc(b - lam * l, s, strict=b > 0)

  exact = _float_forward_is_exact(int_w, int_bias, acc_scale, lam, theta, lv, dtype)
  return IntegerLayer(
      int_weight=jnp.asarray(int_w, jnp.int32),
      weight_scale=jnp.asarray(acc_scale),
      int_bias=jnp.asarray(int_bias, jnp.int32),
      int_threshold=jnp.asarray(fire, jnp.int32),
      level_thresholds=jnp.asarray(cross, jnp.int32),
      membrane_levels=jnp.asarray(levels, jnp.int32),
      rest_index=rest,
      reset_index=rest,  # hard reset stores Q(0) = 0
      decay=decay_f,
      threshold=jnp.asarray(theta),
      kind=kind,
      strides=tuple(int(v) for v in strides),
      padding=padding,
      exact=exact,
  )


class BiasRoundsToZeroWarning(UserWarning):
  """Every channel of a layer's nonzero bias rounded to 0 on the accumulator grid."""


def _warn_if_bias_vanishes(bias, int_bias, acc_scale) -> None:
  """Warns when a nonzero float bias becomes int_bias = 0 in every channel: the bias step
  is the accumulator step (the weight scale), so a low-bit layer's small biases vanish."""
  if bias is None:
    return
  b = np.asarray(bias, np.float64).ravel()
  if not np.any(b != 0) or np.any(int_bias != 0):
    return
  warnings.warn(
      f"every bias of this layer rounds to 0 on the accumulator grid (bias step = weight scale "
      f"s_c, here {float(np.min(acc_scale)):.3g} to {float(np.max(acc_scale)):.3g}; largest "
      f"|bias| {float(np.max(np.abs(b))):.3g}): the exported layer has no bias. Train through "
      "quant.quantize_folded(kernel, bias, wq, ...) so the float forward rounds the bias the "
      "same way, or drop the bias", BiasRoundsToZeroWarning, stacklevel=3)


def _float_forward_is_exact(int_w, int_bias, scale, lam, theta, lv, dtype) -> bool:
  """Sufficient condition for the fake-quantized float forward to be exact arithmetic."""
  steps = {b - a for a, b in zip(lv, lv[1:])}
  if len(steps) != 1 or not _is_power_of_two(steps.pop()):
    return False
  mant = 2 ** (np.finfo(dtype).nmant + 1)
  abs_w = np.abs(int_w).reshape(-1, int_w.shape[-1]).sum(axis=0)
  top_level = max(abs(v) for v in lv)
  for ch in range(int_w.shape[-1]):
    s, th = Fraction(float(scale[ch])), Fraction(float(theta[ch]))
    if not _is_power_of_two(s):
      return False
    den = max(x.denominator for x in (s, th, lam, Fraction(1, 2)))
    bound = (int(abs_w[ch]) + abs(int(int_bias[ch]))) * s + abs(lam) * top_level + max(abs(th), top_level) + 2
    if bound * den >= mant:
      return False
  return True


def _accumulate(layer: IntegerLayer, spikes: jax.Array) -> jax.Array:
  """int32 accumulator Σ spikes·int_w + int_bias, time-major [T, ..., C]."""
  if layer.kind == "dense":
    acc = jnp.matmul(spikes, layer.int_weight, preferred_element_type=jnp.int32)
  else:
    t, b = spikes.shape[:2]
    merged = spikes.reshape(t * b, *spikes.shape[2:])
    acc = jax.lax.conv_general_dilated(
        merged, layer.int_weight, layer.strides, layer.padding,
        dimension_numbers=_CONV_DIMS, preferred_element_type=jnp.int32)
    acc = acc.reshape(t, b, *acc.shape[1:])
  return acc + layer.int_bias


def integer_lif_forward(
    layer: IntegerLayer, spikes_in: jax.Array, return_state: bool = False
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Integer-only forward: int32 accumulate, int compares, integer membrane levels.

  spikes_in: binary, time-major ([T, B, in] dense, [T, B, H, W, C_in] conv).
  Returns spikes [T, ..., C] int32 (and, with return_state, the final membrane level
  values u_T as int32).
  """
  x = jnp.asarray(spikes_in)
  if layer.kind == "dense" and x.ndim < 2:
    raise ValueError(f"dense spikes must be time-major [T, ..., in], got shape {x.shape}")
  if layer.kind == "conv" and x.ndim != 5:
    raise ValueError(f"conv spikes must be time-major [T, B, H, W, C], got shape {x.shape}")
  if x.shape[-1] != layer.int_weight.shape[-2]:
    raise ValueError(f"spikes have {x.shape[-1]} input channels, the layer expects {layer.int_weight.shape[-2]}")
  try:
    values = np.unique(np.asarray(x))
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    values = None  # traced under jit: the binary check runs only on concrete inputs
  if values is not None and np.setdiff1d(values, [0, 1]).size:
    raise ValueError(f"spikes_in must be binary (0/1), got values {np.setdiff1d(values, [0, 1])[:5].tolist()}")
  acc = _accumulate(layer, x.astype(jnp.int32))
  ch = jnp.arange(acc.shape[-1])

  def step(idx, a):
    fire = a >= layer.int_threshold[idx, ch]
    nxt = jnp.sum(a[..., None] >= layer.level_thresholds[idx, ch], axis=-1, dtype=jnp.int32)
    return jnp.where(fire, layer.reset_index, nxt).astype(jnp.int32), fire.astype(jnp.int32)

  idx0 = jnp.full(acc.shape[1:], layer.rest_index, jnp.int32)
  final, spikes = jax.lax.scan(step, idx0, acc)
  if return_state:
    return spikes, layer.membrane_levels[final]
  return spikes
