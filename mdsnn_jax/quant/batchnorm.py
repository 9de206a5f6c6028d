"""Batch-norm folding and folded quantization (see docs/method.md,
'Batch norm: folding and quantization').

Eval-mode BN after a conv / dense layer with per-output-channel statistics folds into it:

    W' = W · γ/√(σ² + ε)          (per output channel, the LAST kernel axis: HWIO or (in, out))
    b' = β + (b − μ) · γ/√(σ² + ε)

`quantize_folded` then fake-quantizes W' with a weight quantizer and b' on a higher-precision
grid (see there). During QAT, batch statistics are used in training and the running
statistics are folded for evaluation and export.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mdsnn_jax.quant.base import WeightQuantizer
from mdsnn_jax.quant.weight import _round_clip_ste, check_bits, signed_levels

PyTree = Any

BIAS_MODES = ("accumulator", "own")
_INT32_SAFE = 2**31 - 128


def _per_channel(name: str, value, channels: int, dtype, default: float) -> jax.Array:
  if value is None:
    return jnp.full((channels,), default, dtype)
  value = jnp.asarray(value, dtype)
  if value.shape not in ((), (channels,)):
    raise ValueError(f"{name} must have shape ({channels},) (one per output channel), got {value.shape}")
  return jnp.broadcast_to(value, (channels,))


def fold_batchnorm(
    kernel: jax.Array,
    bias: jax.Array | None,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    offset: jax.Array | None,
    eps: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
  """Folds eval-mode BN (mean μ, var σ², scale γ, offset β) into (kernel, bias).

  bias, scale or offset None mean 0, 1 and 0 (flax `use_bias` / `use_scale` off).
  Returns (W', b') with b' of shape (C,).
  """
  if jnp.ndim(kernel) < 2:
    raise ValueError(f"kernel must have an input and an output axis, got shape {jnp.shape(kernel)}")
  if not eps > 0:
    raise ValueError(f"eps must be positive, got {eps}")
  kernel = jnp.asarray(kernel)
  c, dtype = kernel.shape[-1], kernel.dtype
  bias = _per_channel("bias", bias, c, dtype, 0.0)
  mean = _per_channel("mean", mean, c, dtype, 0.0)
  var = _per_channel("var", var, c, dtype, 1.0)
  scale = _per_channel("scale", scale, c, dtype, 1.0)
  offset = _per_channel("offset", offset, c, dtype, 0.0)
  factor = scale * jax.lax.rsqrt(var + eps)
  return kernel * factor, offset + (bias - mean) * factor


def quantize_bias(
    bias: jax.Array, scale: jax.Array, bits: int = 32
) -> tuple[jax.Array, jax.Array]:
  """Bias on the grid `scale`·k, k ∈ [−n, n], n = 2^(bits−1) − 1.

  Returns (fake-quantized bias = scale·k, k as int32). STE backward (1 inside the range).
  bits in 2..32.
  """
  bits = check_bits(bits, 2, 32, what="bias_bits")
  bias = jnp.asarray(bias)
  scale = jnp.broadcast_to(jnp.asarray(scale, bias.dtype), bias.shape)
  n = signed_levels(bits)
  q = _round_clip_ste(bias, jax.lax.stop_gradient(scale), n)
  k = jnp.round(jax.lax.stop_gradient(q) / scale)
  # 2^31 − 1 is not a float32; saturate at the largest float32 below 2^31 before the cast.
  return q, jnp.clip(k, -_INT32_SAFE, _INT32_SAFE).astype(jnp.int32)


def default_weight_params(wq: WeightQuantizer, kernel: jax.Array, wq_params: PyTree,
                          wq_state: PyTree) -> tuple[PyTree, PyTree]:
  """(params, state) with None replaced by the quantizer's init from `kernel`."""
  if not isinstance(wq, WeightQuantizer):
    raise ValueError(f"wq must be a WeightQuantizer (e.g. quant.lsq(2)), got {type(wq).__name__}")
  params = wq.init_params(kernel) if wq_params is None else wq_params
  state = wq.init_state(kernel) if wq_state is None else wq_state
  return params, state


def bias_scale(
    kernel: jax.Array,
    bias: jax.Array | None,
    wq: WeightQuantizer,
    wq_params: PyTree = None,
    wq_state: PyTree = None,
    bias_bits: int = 32,
    input_scale: float = 1.0,
    bias_mode: str = "accumulator",
) -> jax.Array:
  """The per-channel bias step of `quantize_folded` (shape (C,)); see there.

  bias None means 0.
  """
  if bias_mode not in BIAS_MODES:
    raise ValueError(f"unknown bias_mode {bias_mode!r}; allowed: {list(BIAS_MODES)}")
  bits = check_bits(bias_bits, 2, 32, what="bias_bits")
  kernel = jnp.asarray(kernel)
  wq_params, wq_state = default_weight_params(wq, kernel, wq_params, wq_state)
  c = kernel.shape[-1]
  bias = _per_channel("bias", bias, c, kernel.dtype, 0.0)
  top = jnp.max(jnp.abs(bias))
  own = jnp.where(top > 0, top / signed_levels(bits), 1.0).astype(kernel.dtype)
  step = jnp.broadcast_to(own, (c,))
  if bias_mode == "accumulator":
    try:
      _, w_scale = wq.to_integer(wq_params, wq_state, kernel)
      acc = jnp.broadcast_to(jnp.asarray(w_scale, kernel.dtype) * input_scale, (c,))
      # A zero weight scale (an all-zero ternary channel) cannot carry a bias: own grid there.
      step = jnp.where(acc > 0, acc, step)
    except NotImplementedError:
      pass  # non-uniform weight grid (LQ-Net, identity): the bias's own grid
  return jax.lax.stop_gradient(step)


def quantize_folded(
    kernel: jax.Array,
    bias: jax.Array | None,
    wq: WeightQuantizer,
    wq_params: PyTree = None,
    wq_state: PyTree = None,
    bias_bits: int = 32,
    input_scale: float = 1.0,
    bias_mode: str = "accumulator",
) -> tuple[jax.Array, jax.Array]:
  """Fake-quantizes a (BN-folded) kernel with `wq` and its bias on a finer grid.

  bias_mode='accumulator' (default): the bias is an integer (bias_bits wide) on the
  accumulator scale, weight_scale × input_scale (input_scale = 1 for binary spikes), so an
  integer layer adds int_bias directly to its int32 accumulator. Falls back to 'own' when
  `wq` has no integer form (LQ-Net, identity), and per channel where the weight scale is 0.
  bias_mode='own': the bias gets its own per-tensor symmetric grid, step max|b|/n.
  Returns (kernel_q, bias_q), bias_q of shape (C,). bias None means 0.
  wq_params / wq_state None: `wq.init_params(kernel)` / `wq.init_state(kernel)`.
  """
  kernel = jnp.asarray(kernel)
  wq_params, wq_state = default_weight_params(wq, kernel, wq_params, wq_state)
  c = kernel.shape[-1]
  bias = _per_channel("bias", bias, c, kernel.dtype, 0.0)
  kernel_q = wq.apply(wq_params, wq_state, kernel)
  step = bias_scale(kernel, bias, wq, wq_params, wq_state, bias_bits, input_scale, bias_mode)
  bias_q, _ = quantize_bias(bias, step, bias_bits)
  return kernel_q, bias_q
