"""Membrane-prior channel gating and FLOPs accounting (SpQuant-SNN; see docs/method.md, 'Pruning').

**[reconstruction]**: SpQuant-SNN's published code could not be read; the forms below are
our reconstruction of it.

Membrane prior. At timestep t ≥ 1 (zero-based; the first step is always dense) channel c of
sample b is active when the spatial mean of its membrane at t − 1 reaches the prior p:

    m_{t,b,c} = 1[ mean_{h,w} h_{t−1}[b, h, w, c] ≥ p ]      (p = −0.8 on the integer grid)
    x̃_t = m_t · x_t                                          (inactive: zero input current)

"Membrane at t − 1" is the pre-reset h_{t−1}, the quantity MD-SNN distils (after a spike the
stored state u is reset to 0, which would hide that the channel just fired).

Learned gate (optional):

    logits = Conv1×1(softmax_c(avgpool(x)))       mask = 1[σ(logits) > 0.5]  (STE: dσ)

trained by BCE against a "mass" target: per sample, channels sorted by their normalised
peak |y_c| (share_c = max|y_c| / Σ_c' max|y_c'|) are kept in decreasing order until the
cumulative share reaches ρ = 0.85 (the channel that crosses ρ is kept). Models use it through
`mdsnn_jax.nn.layers.ChannelGate` (model.neuron.gate_rho; its BCE weight is loss.gate_weight).

FLOPs (per sample, per timestep). One multiply-accumulate counts as one FLOP (the
convention of the pruning literature's FLOPs tables, e.g. thop); the LIF membrane update
counts 3 per neuron: the decay multiply-add λu + x, the threshold compare and the reset.

    reduction = (dense conv + dense LIF − active conv − active LIF − gate) / (dense conv + dense LIF)

Active conv FLOPs scale with the active input and output channels of each (t, b); active
LIF FLOPs count only neurons of active output channels: an inactive channel receives no
current, so with a hard reset and λ ≤ 1 it cannot fire, and its leak can be applied lazily
(λ^k) when it becomes active again.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mdsnn_jax.neuron import lif_step, prepare_lif
from mdsnn_jax.surrogate import SpikeFn

LIF_OPS_PER_NEURON = 3


def _check_prior(prior) -> None:
  if jnp.ndim(prior) != 0:
    raise ValueError(f"prior must be a scalar number (-inf allowed), got shape {jnp.shape(prior)}")
  try:
    value = np.asarray(prior)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return  # a traced (e.g. scheduled) prior is checked only for its shape
  if np.isnan(value):
    raise ValueError(f"prior must be a scalar number (-inf allowed), got {prior!r}")


def membrane_prior_mask(prev_membrane: jax.Array, prior: float = -0.8) -> jax.Array:
  """m = 1[spatial mean of h_{t−1} ≥ prior], [B, H, W, C] -> [B, 1, 1, C] in its dtype.

  Any [B, ..., C] works: the mean runs over the axes between batch and channels. The mask
  carries no gradient.
  """
  _check_prior(prior)
  if jnp.ndim(prev_membrane) < 2:
    raise ValueError(
        f"prev_membrane must be [B, ..., C] (ndim >= 2), got shape {jnp.shape(prev_membrane)}")
  axes = tuple(range(1, jnp.ndim(prev_membrane) - 1))
  mean = jnp.mean(prev_membrane, axis=axes, keepdims=True)
  return jax.lax.stop_gradient((mean >= prior).astype(prev_membrane.dtype))


def gated_lif_scan(
    currents: jax.Array,
    *,
    prior: float = -0.8,
    decay: float | jax.Array = 0.5,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    surrogate: str | SpikeFn = "arctan",
    alpha: float | None = None,
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | None = None,
    u0: jax.Array | None = None,
    unroll: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`lif_scan` with membrane-prior channel gating of the input currents.

  x̃_0 = x_0;  x̃_t = membrane_prior_mask(h_{t−1}, prior) · x_t for t ≥ 1; then the LIF
  recurrence of `mdsnn_jax.neuron.lif_step` on x̃. Keyword arguments other than `prior`
  are those of `lif_scan`. With prior = −inf every channel stays active and the result
  equals `lif_scan` exactly.

  Args:
    currents: [T, B, H, W, C] (any [T, B, ..., C]).

  Returns:
    (spikes [T, B, ...], membranes h [T, B, ...] (pre-reset, of the gated input),
    final state u_T [B, ...], masks [T, B, C] (1 = active; masks[0] is all ones)).
  """
  _check_prior(prior)
  if jnp.ndim(currents) < 3:
    raise ValueError(f"currents must be [T, B, ..., C] (ndim >= 3), got shape {jnp.shape(currents)}")
  spike_fn, decay, threshold, u = prepare_lif(
      currents, decay=decay, threshold=threshold, reset=reset, surrogate=surrogate, alpha=alpha,
      u0=u0)
  dtype = currents.dtype
  step_shape = currents.shape[1:]
  mask_shape = (step_shape[0],) + (1,) * (len(step_shape) - 2) + (step_shape[-1],)
  step = functools.partial(lif_step, decay=decay, threshold=threshold, spike_fn=spike_fn, reset=reset,
                           detach_reset=detach_reset, membrane_quantizer=membrane_quantizer)

  u, s0, h0 = step(u, currents[0])
  m0 = jnp.ones(mask_shape, dtype)

  def body(carry, x):
    u_prev, h_prev = carry
    m = membrane_prior_mask(h_prev, prior)
    u_new, s, h = step(u_prev, m * x)
    return (u_new, h), (s, h, m)

  (final, _), (spikes, membranes, masks) = jax.lax.scan(body, (u, h0), currents[1:], unroll=unroll)
  spikes = jnp.concatenate([s0[None], spikes])
  membranes = jnp.concatenate([h0[None], membranes])
  masks = jnp.concatenate([m0[None], masks]).reshape(currents.shape[:2] + (step_shape[-1],))
  return spikes, membranes, final, masks


def channel_gate_logits(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """logits = Conv1×1(softmax_c(avgpool(x))): [N, H, W, C], w [C, C'], b [C'] -> [N, C']."""
  if jnp.ndim(x) < 2:
    raise ValueError(f"x must be [N, ..., C] (ndim >= 2), got shape {jnp.shape(x)}")
  c = jnp.shape(x)[-1]
  if jnp.ndim(w) != 2 or jnp.shape(w)[0] != c or jnp.shape(b) != (jnp.shape(w)[1],):
    raise ValueError(
        f"gate weights must be w [{c}, C'] and b [C'] for x with {c} channels; "
        f"got w {jnp.shape(w)} and b {jnp.shape(b)}")
  pooled = jnp.mean(x, axis=tuple(range(1, jnp.ndim(x) - 1)))
  return jax.nn.softmax(pooled, axis=-1) @ w + b


def gate_mask(logits: jax.Array) -> jax.Array:
  """1[σ(logits) > 0.5] forward; backward is dσ/dlogits (straight-through of σ).

  p + stop_gradient(hard − p) is exactly `hard` in the forward: for hard = 0, p − p = 0;
  for hard = 1, p ∈ (0.5, 1] so 1 − p is exact (Sterbenz) and p + (1 − p) = 1.
  """
  p = jax.nn.sigmoid(logits)
  hard = (p > 0.5).astype(p.dtype)
  return p + jax.lax.stop_gradient(hard - p)


def mass_target(y: jax.Array, rho: float = 0.85) -> jax.Array:
  """Per-sample channel-keep target [N, C] in {0, 1} from a layer output y [N, H, W, C].

  share_c = max|y_c| / Σ_c' max|y_c'|; channels sorted by decreasing share are kept while
  the share of the channels before them is < ρ (so the kept set first reaches ≥ ρ). An
  all-zero sample keeps every channel. Ties keep the lower channel index first.
  """
  if not 0.0 < float(rho) <= 1.0:
    raise ValueError(f"rho must lie in (0, 1], got {rho}")
  if jnp.ndim(y) < 2:
    raise ValueError(f"y must be [N, ..., C] (ndim >= 2), got shape {jnp.shape(y)}")
  peak = jnp.max(jnp.abs(y), axis=tuple(range(1, jnp.ndim(y) - 1)))  # [N, C]
  total = jnp.sum(peak, axis=-1, keepdims=True)
  share = jnp.where(total > 0, peak / jnp.where(total > 0, total, 1), 0)
  order = jnp.argsort(-share, axis=-1, stable=True)
  sorted_share = jnp.take_along_axis(share, order, axis=-1)
  before = jnp.cumsum(sorted_share, axis=-1) - sorted_share
  keep_sorted = (before < rho).astype(y.dtype)
  # Scatter back to channel order: inverse permutation of `order`.
  return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


def gate_bce_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean binary cross-entropy of σ(logits) against the 0/1 target (scalar)."""
  if jnp.shape(logits) != jnp.shape(target):
    raise ValueError(f"logits {jnp.shape(logits)} and target {jnp.shape(target)} must have the same shape")
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))


# ---------------------------------------------------------------------------------------------
# FLOPs accounting (per sample, per timestep; host-side integers).


def _check_dims(**dims) -> None:
  for name, v in dims.items():
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")


def conv_flops(c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> int:
  """k²·C_in·C_out·H_out·W_out multiply-accumulates (1 MAC = 1 FLOP)."""
  _check_dims(c_in=c_in, c_out=c_out, k=k, h_out=h_out, w_out=w_out)
  return k * k * c_in * c_out * h_out * w_out


def lif_flops(c: int, h: int, w: int, ops_per_neuron: int = LIF_OPS_PER_NEURON) -> int:
  """Membrane-update FLOPs of C·H·W neurons: 3 each (decay multiply-add, compare, reset)."""
  _check_dims(c=c, h=h, w=w, ops_per_neuron=ops_per_neuron)
  return ops_per_neuron * c * h * w


def gate_flops(c_in: int, c_out: int, h: int, w: int) -> int:
  """Learned-gate FLOPs: avg-pool H·W·C_in + softmax 3·C_in (exp, sum, divide)
  + 1×1 conv C_in·C_out MACs + bias and compare 2·C_out."""
  _check_dims(c_in=c_in, c_out=c_out, h=h, w=w)
  return h * w * c_in + 3 * c_in + c_in * c_out + 2 * c_out


def prior_mask_flops(c: int, h: int, w: int) -> int:
  """Membrane-prior FLOPs: spatial sum H·W·C + scale and compare 2·C."""
  _check_dims(c=c, h=h, w=w)
  return h * w * c + 2 * c


def flops_reduction(dense: float, active: float, gate: float = 0.0) -> float:
  """(dense − active − gate) / dense."""
  if not dense > 0:
    raise ValueError(f"dense FLOPs must be positive, got {dense}")
  if active < 0 or gate < 0:
    raise ValueError(f"active and gate FLOPs must be non-negative, got active={active}, gate={gate}")
  return (dense - active - gate) / dense


def _mask_counts(masks, name: str) -> np.ndarray:
  m = np.asarray(masks)
  if m.ndim != 3:
    raise ValueError(f"{name} must be [T, B, C], got shape {m.shape}")
  if not np.all((m == 0) | (m == 1)):
    raise ValueError(f"{name} must hold only 0 and 1, got values {np.unique(m)[:5]}")
  return m.sum(axis=-1, dtype=np.int64)  # active channels per (t, b)


def conv_lif_flops(
    out_masks,
    *,
    c_in: int,
    k: int,
    h_out: int,
    w_out: int,
    in_masks=None,
    overhead_per_step: int = 0,
) -> dict[str, float]:
  """Dense and active FLOPs of a conv + LIF layer over T timesteps and B samples.

  out_masks [T, B, C_out]: active output channels (e.g. `gated_lif_scan`'s masks);
  in_masks [T, B, C_in] (optional): active input channels (the previous gated layer's
  masks: an inactive channel gets no current and so emits no spikes).

      dense  = T·B·(conv_flops + lif_flops)
      active = Σ_{t,b} [k²·H·W·n_in(t,b)·n_out(t,b) + 3·H·W·n_out(t,b)]
      gate   = T·B·overhead_per_step (gate_flops / prior_mask_flops per sample and step)

  Returns dict(dense, active, gate, reduction).
  """
  n_out = _mask_counts(out_masks, "out_masks")
  t, b = n_out.shape
  c_out = int(np.shape(out_masks)[-1])
  _check_dims(c_in=c_in, k=k, h_out=h_out, w_out=w_out)
  if in_masks is None:
    n_in = np.full((t, b), c_in, np.int64)
  else:
    n_in = _mask_counts(in_masks, "in_masks")
    if np.shape(in_masks) != (t, b, c_in):
      raise ValueError(f"in_masks must have shape {(t, b, c_in)}, got {np.shape(in_masks)}")
  if isinstance(overhead_per_step, bool) or overhead_per_step < 0:
    raise ValueError(f"overhead_per_step must be a non-negative integer, got {overhead_per_step!r}")
  dense = t * b * (conv_flops(c_in, c_out, k, h_out, w_out) + lif_flops(c_out, h_out, w_out))
  active = int(np.sum(k * k * h_out * w_out * n_in * n_out + LIF_OPS_PER_NEURON * h_out * w_out * n_out))
  gate = t * b * int(overhead_per_step)
  return dict(dense=float(dense), active=float(active), gate=float(gate),
              reduction=flops_reduction(dense, active, gate))
