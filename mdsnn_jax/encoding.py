"""Input encoders: static values x (e.g. pixel intensities in [0, 1]) to time-major spike
trains or currents [T, *x.shape], for `lif_scan` and the layers above it.

    rate     s_t ~ Bernoulli(p),  p = clip(x, 0, 1), independent over t and elements
             (Poisson / rate coding: E[s_t] = p)
    latency  one spike at t* = round((T − 1)·(1 − p)) (linear) or at the step the RC
             charge V(t) = p·(1 − e^{−t/τ}) reaches θ (log), none at or below θ:
             bright inputs fire first (time-to-first-spike)
    direct   x_t = x for every t (the static input repeated: the first layer encodes)

Outputs are in the dtype of x (float32 for integer inputs). Pure functions, jit-able; the
number of timesteps is static.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

LATENCY_KINDS = ("linear", "log")


def _check_timesteps(timesteps) -> int:
  if (isinstance(timesteps, bool) or not isinstance(timesteps, (numbers.Integral, np.integer))
      or timesteps < 1):
    raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
  return int(timesteps)


def _float(x) -> jax.Array:
  dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
  if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
    raise ValueError(f"x must be a numeric array, got dtype {dtype}")
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def rate(key: jax.Array, x: jax.Array, timesteps: int) -> jax.Array:
  """Bernoulli (rate / Poisson) spikes [T, *x.shape]: s_t = 1 with probability clip(x, 0, 1),
  independently per step and element (`key`: a `jax.random` key). Mean rate = p per step."""
  t = _check_timesteps(timesteps)
  x = _float(x)
  p = jnp.clip(x, 0.0, 1.0)
  u = jax.random.uniform(key, (t,) + x.shape, dtype=jnp.float32)
  return (u < p.astype(jnp.float32)).astype(x.dtype)


def latency(x: jax.Array, timesteps: int, *, kind: str = "linear", tau: float = 5.0,
            threshold: float = 0.01) -> jax.Array:
  """Time-to-first-spike code [T, *x.shape]: at most one spike per element; p = clip(x, 0, 1).

  kind='linear': t* = round((T − 1)·(1 − p)); every p > threshold fires, p = 1 at t = 0
    and p → 0 at t = T − 1.
  kind='log': t* = round(τ·ln(p / (p − θ))), the step (τ in steps) at which an RC circuit
    charging towards p, V(t) = p·(1 − e^{−t/τ}), crosses θ (snnTorch's `spikegen.latency`
    formula, not normalised); p ≤ θ and t* > T − 1 do not fire.
  """
  t = _check_timesteps(timesteps)
  if kind not in LATENCY_KINDS:
    raise ValueError(f"unknown latency kind {kind!r}; allowed: {list(LATENCY_KINDS)}")
  if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
      or not 0.0 <= threshold < 1.0):
    raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")
  if (isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not math.isfinite(tau)
      or tau <= 0):
    raise ValueError(f"tau must be a positive finite number (in steps), got {tau!r}")
  x = _float(x)
  p = jnp.clip(x, 0.0, 1.0).astype(jnp.float32)
  fires = p > threshold
  if kind == "linear":
    t_star = jnp.round((t - 1) * (1.0 - p))
  else:
    safe = jnp.where(fires, p, 1.0)  # no log of a non-positive ratio where nothing fires
    t_star = jnp.round(tau * jnp.log(safe / (safe - threshold)))
  fires = fires & (t_star <= t - 1)
  steps = jnp.arange(t, dtype=jnp.float32).reshape((t,) + (1,) * x.ndim)
  return ((steps == t_star) & fires).astype(x.dtype)


def direct(x: jax.Array, timesteps: int) -> jax.Array:
  """The input repeated over time, [T, *x.shape] with x_t = x (direct / constant-current
  coding: the first layer turns the analogue values into spikes)."""
  t = _check_timesteps(timesteps)
  x = _float(x)
  return jnp.broadcast_to(x, (t,) + x.shape)
