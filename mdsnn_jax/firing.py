"""Firing-behaviour diagnostics: per-neuron rates, dead neurons, rate EMD (see docs/method.md,
'Firing behaviour and EMD').

Per-neuron firing rate over an evaluation set of N samples, T timesteps each:

    r_j = (1 / (N·T)) · Σ_n Σ_t s_j^(n)[t]    ∈ [0, 1]   (spikes per neuron per timestep)

accumulated in a streaming way: the state holds one running spike sum per neuron and one
count of (sample, timestep) pairs per layer, so memory is constant in N and `update_rates`
is jit-able. A neuron is dead when r_j = 0 over the whole set.

The distance between a full-precision and a quantized model's firing behaviour is the 1-D
Wasserstein-1 (Earth Mover's) distance between the two empirical distributions of
per-neuron rates, exactly as `scipy.stats.wasserstein_distance` computes it (sort-based, no
binning):

    W1(a, b) = ∫ |F_a(x) − F_b(x)| dx

with F the empirical CDFs, evaluated as a finite sum over the merged sorted support.

Spike taps are dicts {layer_name: spikes [T, B, ...]}; nested dicts are flattened with '/'
and a one-element tuple (what Flax `sow` stores) is unwrapped.

Input checks: spikes must be binary and rates must lie in [0, 1] (a membrane tap passed as
spikes, or a spike count passed as a rate, is refused with a ValueError). The spike check
is one pass over concrete arrays and is skipped for tracers, so it costs nothing under jit.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FiringStats(NamedTuple):
  """Streaming firing-rate state (a pytree).

  spike_sums: {layer: Σ_n Σ_t s_j, float32 [neurons]}; exact up to 2^24 spikes per neuron.
  counts: {layer: number of (sample, timestep) pairs seen, int32 scalar}.
  """
  spike_sums: dict[str, jax.Array]
  counts: dict[str, jax.Array]


def _flatten_taps(taps: Any, prefix: str = "") -> dict[str, Any]:
  """{name: array} from a possibly nested dict of taps; unwraps Flax `sow` 1-tuples."""
  if not isinstance(taps, Mapping):
    raise ValueError(f"spike taps must be a dict {{layer_name: spikes [T, B, ...]}}, got {type(taps).__name__}")
  flat: dict[str, Any] = {}
  for key, value in taps.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(_flatten_taps(value, name))
      continue
    if isinstance(value, (tuple, list)):
      if len(value) != 1:
        raise ValueError(
            f"tap {name!r} holds {len(value)} sown values; allowed: exactly one array [T, B, ...]")
      value = value[0]
    if len(jnp.shape(value)) < 2:
      raise ValueError(
          f"tap {name!r} has shape {jnp.shape(value)}; allowed: time-major spikes [T, B, ...] (ndim >= 2)")
    flat[name] = value
  if not flat:
    raise ValueError("spike taps are empty; allowed: at least one layer {layer_name: spikes [T, B, ...]}")
  return flat


def _n_neurons(shape) -> int:
  return int(np.prod(shape[2:], dtype=np.int64))


def _check_binary(name: str, spikes: Any) -> None:
  if isinstance(spikes, jax.core.Tracer):
    return  # under jit: no concrete values to check
  x = np.asarray(spikes)
  bad = (x != 0) & (x != 1)
  if np.any(bad):
    raise ValueError(
        f"tap {name!r} holds non-binary values (e.g. {x[bad][:3].tolist()}); firing rates "
        "need spikes in {0, 1}, e.g. the 'spikes' collection rather than the membranes")


def init_rates(spike_taps: Mapping[str, Any]) -> FiringStats:
  """Zero state shaped after `spike_taps` (arrays or `jax.ShapeDtypeStruct`s [T, B, ...])."""
  taps = _flatten_taps(spike_taps)
  sums = {k: jnp.zeros((_n_neurons(jnp.shape(v)),), jnp.float32) for k, v in taps.items()}
  counts = {k: jnp.zeros((), jnp.int32) for k in taps}
  return FiringStats(sums, counts)


def update_rates(stats: FiringStats, spike_taps: Mapping[str, Any]) -> FiringStats:
  """Adds one batch of spikes [T, B, ...] per layer to the running sums (jit-able).

  Concrete (non-traced) spikes must be binary, else ValueError.
  """
  taps = _flatten_taps(spike_taps)
  if set(taps) != set(stats.spike_sums):
    raise ValueError(
        f"layers of the taps {sorted(taps)} differ from the layers of the state {sorted(stats.spike_sums)}")
  sums, counts = {}, {}
  for name, spikes in taps.items():
    shape = jnp.shape(spikes)
    n = _n_neurons(shape)
    if n != stats.spike_sums[name].shape[0]:
      raise ValueError(
          f"tap {name!r} of shape {shape} has {n} neurons; the state holds {stats.spike_sums[name].shape[0]}")
    _check_binary(name, spikes)
    t_b = shape[0] * shape[1]
    sums[name] = stats.spike_sums[name] + jnp.reshape(
        jnp.asarray(spikes, jnp.float32), (t_b, n)).sum(axis=0)
    counts[name] = stats.counts[name] + jnp.int32(t_b)
  return FiringStats(sums, counts)


def finalize_rates(stats: FiringStats) -> dict[str, np.ndarray]:
  """{layer: r_j = spike_sum_j / (N·T)} as float64 NumPy arrays [neurons]."""
  rates = {}
  for name, total in stats.spike_sums.items():
    count = int(stats.counts[name])
    if count <= 0:
      raise ValueError(f"layer {name!r} has seen {count} (sample, timestep) pairs; update_rates first")
    rates[name] = np.asarray(total, np.float64) / count
  return rates


def firing_rates(spike_taps: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """One-shot per-neuron rates of a single batch of taps (= init, update, finalize)."""
  return finalize_rates(update_rates(init_rates(spike_taps), spike_taps))


def _as_rates(rates, name: str = "rates") -> np.ndarray:
  r = np.asarray(rates, np.float64).ravel()
  if r.size == 0:
    raise ValueError(f"{name} is empty; allowed: at least one neuron's rate")
  if not np.all(np.isfinite(r)):
    raise ValueError(f"{name} holds non-finite values {r[~np.isfinite(r)][:5]}; allowed: finite rates")
  outside = (r < 0) | (r > 1)
  if np.any(outside):
    raise ValueError(f"{name} holds values outside [0, 1] (e.g. {r[outside][:3].tolist()}); "
                     "rates are spikes per neuron per timestep, in [0, 1]")
  return r


def dead_fraction(rates) -> float:
  """Fraction of neurons with r_j == 0 (never fired over the whole set)."""
  r = _as_rates(rates)
  return float(np.mean(r == 0.0))


def layer_summary(rates: Mapping[str, Any]) -> dict[str, dict[str, float | int]]:
  """{layer: dict(mean_rate, dead_fraction, n_neurons)}."""
  out = {}
  for name, r in rates.items():
    r = _as_rates(r, f"rates[{name!r}]")
    out[name] = dict(mean_rate=float(r.mean()), dead_fraction=dead_fraction(r), n_neurons=int(r.size))
  return out


def firing_emd(rates_a, rates_b) -> float:
  """Wasserstein-1 distance between the empirical distributions of two rate sets.

  W1 = Σ_i |F_a(x_i) − F_b(x_i)| · (x_{i+1} − x_i) over the merged sorted support x,
  with F the right-continuous empirical CDFs; the sets may differ in size. Equals
  `scipy.stats.wasserstein_distance(rates_a, rates_b)`; in units of the rates
  (spikes per neuron per timestep).
  """
  a = np.sort(_as_rates(rates_a, "rates_a"))
  b = np.sort(_as_rates(rates_b, "rates_b"))
  support = np.sort(np.concatenate([a, b]))
  widths = np.diff(support)
  cdf_a = np.searchsorted(a, support[:-1], side="right") / a.size
  cdf_b = np.searchsorted(b, support[:-1], side="right") / b.size
  return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def _check_same_layers(rates_fp: Mapping, rates_q: Mapping) -> None:
  if set(rates_fp) != set(rates_q):
    raise ValueError(
        f"layer names differ: full-precision {sorted(rates_fp)} vs quantized {sorted(rates_q)}")
  if not rates_fp:
    raise ValueError("no layers given; allowed: at least one spiking layer")


def layer_emd(rates_fp: Mapping[str, Any], rates_q: Mapping[str, Any]) -> dict[str, float]:
  """{layer: firing_emd(rates_fp[layer], rates_q[layer])}; the two must name the same layers."""
  _check_same_layers(rates_fp, rates_q)
  return {name: firing_emd(rates_fp[name], rates_q[name]) for name in rates_fp}


def pooled_emd(rates_fp: Mapping[str, Any], rates_q: Mapping[str, Any]) -> float:
  """EMD over all spiking layers: every neuron's rate from every layer in one distribution.

  Each neuron weighs equally, so wide layers dominate; the per-layer values of `layer_emd`
  show where the difference comes from.
  """
  _check_same_layers(rates_fp, rates_q)
  names = sorted(rates_fp)
  all_fp = np.concatenate([_as_rates(rates_fp[k], f"rates_fp[{k!r}]") for k in names])
  all_q = np.concatenate([_as_rates(rates_q[k], f"rates_q[{k!r}]") for k in names])
  return firing_emd(all_fp, all_q)


def rate_histograms(rates: Mapping[str, Any], bins: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{layer: (counts [bins], edges [bins + 1])} of the per-neuron rates on [0, 1]."""
  if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
    raise ValueError(f"bins must be a positive integer, got {bins!r}")
  return {name: np.histogram(_as_rates(r, f"rates[{name!r}]"), bins=int(bins), range=(0.0, 1.0))
          for name, r in rates.items()}
