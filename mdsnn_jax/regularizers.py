"""Firing-activity regularisers: differentiable losses on spike taps (through the surrogate).

Taps: a spike array [T, B, ...] or a (nested, Flax-sown) dict {layer: spikes [T, B, ...]},
as `distill.flatten_taps` reads them. For layer l with neurons j (every axis after B), the
per-neuron rate and per-sample spike count are

    r_j = (1 / (T·B)) · Σ_t Σ_b s_t,b,j     ∈ [0, 1]   (spikes per neuron per step)
    c_b,j = Σ_t s_t,b,j                     ∈ [0, T]   (spikes per neuron per sample)

    rate_target_loss       mean_j (r_j − ρ)²           ('neuron'), or (mean_j r_j − ρ)² ('layer')
    spike_count_loss       mean_b,j c_b,j  (order 1, L1)  or  mean_b,j c_b,j²  (order 2, L2)
    silent_neuron_loss     mean_j max(0, r_min − r_j)²   (lower bound: keeps neurons alive)

Every loss averages its per-layer values over the layers (each layer weighs the same) and,
like every loss in `distill`, returns a scalar; `return_terms=True` returns
(loss, {layer: the layer's value}). Computed in float32 whatever the spikes' dtype.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mdsnn_jax.distill import flatten_taps
from mdsnn_jax.firing import _check_binary

Array = jax.Array
RATE_TARGET_MODES = ("neuron", "layer")


def _taps(spikes: Any) -> dict[str, Array]:
  taps = flatten_taps(spikes) if isinstance(spikes, Mapping) else {"spikes": spikes}
  if not taps:
    raise ValueError("spike taps are empty; allowed: an array [T, B, ...] or {layer: spikes}")
  out = {}
  for name, s in taps.items():
    if jnp.ndim(s) < 2:
      raise ValueError(f"tap {name!r} has shape {jnp.shape(s)}; allowed: time-major spikes "
                       "[T, B, ...] (ndim >= 2)")
    _check_binary(name, s)
    out[name] = jnp.asarray(s).astype(jnp.float32)
  return out


def _neurons(s: Array) -> Array:
  """[T, B, ...] -> [T, B, neurons]."""
  return s.reshape(s.shape[:2] + (-1,))


def _fraction(name: str, value: Any, low_open: bool = False) -> float:
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
        and (0.0 < value if low_open else 0.0 <= value) and value <= 1.0)
  if not ok:
    raise ValueError(f"{name} must be a rate in {'(0' if low_open else '[0'}, 1] (spikes per "
                     f"neuron per step), got {value!r}")
  return float(value)


def _combine(per_layer: dict[str, Array], return_terms: bool):
  loss = jnp.mean(jnp.stack(list(per_layer.values())))
  return (loss, per_layer) if return_terms else loss


def rate_target_loss(spikes: Any, target: float, *, mode: str = "neuron",
                     return_terms: bool = False):
  """Mean squared distance of the firing rates from a target rate ρ ∈ [0, 1].

  mode='neuron': mean_j (r_j − ρ)², every neuron pulled to ρ; mode='layer':
  (mean_j r_j − ρ)², only the layer's mean rate.
  """
  rho = _fraction("target", target)
  if mode not in RATE_TARGET_MODES:
    raise ValueError(f"unknown mode {mode!r}; allowed: {list(RATE_TARGET_MODES)}")
  per_layer = {}
  for name, s in _taps(spikes).items():
    r = jnp.mean(_neurons(s), axis=(0, 1))
    per_layer[name] = (jnp.mean(jnp.square(r - rho)) if mode == "neuron"
                       else jnp.square(jnp.mean(r) - rho))
  return _combine(per_layer, return_terms)


def spike_count_loss(spikes: Any, *, order: int = 1, return_terms: bool = False):
  """Sparsity: mean per-sample spike count per neuron (order=1, L1) or its mean square
  (order=2, L2, which punishes the busiest neurons most), in spikes per neuron per sample."""
  if isinstance(order, bool) or order not in (1, 2):
    raise ValueError(f"order must be 1 (L1) or 2 (L2), got {order!r}")
  per_layer = {}
  for name, s in _taps(spikes).items():
    c = jnp.sum(_neurons(s), axis=0)  # [B, neurons]
    per_layer[name] = jnp.mean(c if order == 1 else jnp.square(c))
  return _combine(per_layer, return_terms)


def silent_neuron_loss(spikes: Any, min_rate: float = 0.01, *, return_terms: bool = False):
  """mean_j max(0, r_min − r_j)²: zero for neurons firing at least r_min ∈ (0, 1] per step,
  growing quadratically for quieter ones (a silent neuron costs r_min²)."""
  r_min = _fraction("min_rate", min_rate, low_open=True)
  per_layer = {}
  for name, s in _taps(spikes).items():
    r = jnp.mean(_neurons(s), axis=(0, 1))
    per_layer[name] = jnp.mean(jnp.square(jax.nn.relu(r_min - r)))
  return _combine(per_layer, return_terms)
