"""Leaky integrate-and-fire neuron as pure functions (SPEC §1).

Per timestep t = 1..T with input current x_t (all quantities dimensionless, in units of the
threshold's scale):

    h_t = λ · u_{t−1} + x_t        membrane before firing (what MD-SNN distils)
    s_t = H(h_t − θ)               spike; surrogate gradient in the backward pass
    u_t = h_t · (1 − s_t)          hard reset (default)
    u_t = h_t − θ · s_t            soft (subtractive) reset
    u_t = h_t                      no reset
    u_t = Q_u(u_t)                 optional membrane quantizer on the stored state

Only the recurrence is scanned (`jax.lax.scan`); callers compute all T input currents with
one matrix product / convolution on the merged T·B axis and hand them in time-major.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mdsnn_jax.surrogate import SpikeFn, resolve_spike_fn

RESETS = ("hard", "soft", "none")


def _concrete(x) -> np.ndarray | None:
  """The value of `x` as a NumPy array, or None when it is a tracer (checked at trace time)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _validate(currents, decay, threshold, reset) -> None:
  if reset not in RESETS:
    raise ValueError(f"unknown reset {reset!r}; allowed resets: {list(RESETS)}")
  if not jnp.issubdtype(jnp.result_type(currents), jnp.floating):
    raise ValueError(f"currents must be floating point, got dtype {jnp.result_type(currents)}")
  if jnp.ndim(currents) < 1:
    raise ValueError(f"currents must be time-major [T, ...], got a scalar of shape {jnp.shape(currents)}")
  d = _concrete(decay)
  if d is not None and (np.any(~np.isfinite(d)) or np.any(d < 0) or np.any(d > 1)):
    raise ValueError(f"decay must lie in [0, 1], got {d}")
  th = _concrete(threshold)
  if th is not None and np.any(~(th > 0)):
    raise ValueError(f"threshold must be positive, got {th}")
  step_shape = tuple(jnp.shape(currents)[1:])
  try:
    ok = np.broadcast_shapes(jnp.shape(threshold), step_shape) == step_shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
        f"threshold of shape {jnp.shape(threshold)} does not broadcast to the per-step shape "
        f"{step_shape}; use a scalar or a per-channel array of shape ({step_shape[-1] if step_shape else ''},)")


def lif_step(
    u_prev: jax.Array,
    x: jax.Array,
    *,
    decay: float | jax.Array,
    threshold: float | jax.Array,
    spike_fn: SpikeFn,
    reset: str = "hard",
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One LIF update. Returns (u_t stored state, s_t spikes, h_t pre-reset membrane)."""
  h = decay * u_prev + x
  s = spike_fn(h - threshold)
  # detach_reset: the reset path carries no gradient (SpikingJelly's convention).
  s_reset = jax.lax.stop_gradient(s) if detach_reset else s
  if reset == "hard":
    u = h * (1 - s_reset)
  elif reset == "soft":
    u = h - threshold * s_reset
  elif reset == "none":
    u = h
  else:
    raise ValueError(f"unknown reset {reset!r}; allowed resets: {list(RESETS)}")
  if membrane_quantizer is not None:
    u = membrane_quantizer(u)
  return u, s, h


def prepare_lif(currents, *, decay, threshold, reset, surrogate, alpha, u0):
  """Validates `lif_scan`'s arguments (ValueError naming a bad value) and returns
  (spike_fn, decay, threshold, u0) with the numbers cast to the dtype of `currents`.

  Shared by every scan over `lif_step` (e.g. `mdsnn_jax.prune.gated_lif_scan`).
  """
  _validate(currents, decay, threshold, reset)
  spike_fn = resolve_spike_fn(surrogate, alpha)
  dtype = currents.dtype
  threshold = jnp.asarray(threshold).astype(dtype)
  decay = jnp.asarray(decay).astype(dtype)
  u = jnp.zeros(currents.shape[1:], dtype) if u0 is None else jnp.asarray(u0, dtype)
  return spike_fn, decay, threshold, u


def lif_scan(
    currents: jax.Array,
    *,
    decay: float | jax.Array = 0.5,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    surrogate: str | SpikeFn = "arctan",
    alpha: float | None = None,
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | None = None,
    u0: jax.Array | None = None,
    unroll: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Runs the LIF recurrence over the leading time axis.

  Args:
    currents: input currents x_t, time-major [T, ...] (e.g. [T, B, C] or [T, B, H, W, C]).
    decay: leak λ in [0, 1].
    threshold: θ > 0, a scalar or an array broadcastable to currents.shape[1:] (per-channel:
      shape (C,)). Traced (learned) thresholds receive gradients.
    reset: 'hard', 'soft' or 'none'.
    surrogate: surrogate name (see `mdsnn_jax.surrogate.SURROGATES`) or a spike function.
    alpha: surrogate slope when `surrogate` is a name (None: the surrogate's default).
    detach_reset: stop the gradient through the reset term.
    membrane_quantizer: pure function applied to the stored state u_t after reset.
    u0: initial state (default zeros).
    unroll: `jax.lax.scan` unroll factor.

  Returns:
    (spikes [T, ...], membranes h [T, ...] (pre-reset), final state u_T [...]), all in the
    dtype of `currents`.
  """
  spike_fn, decay, threshold, u = prepare_lif(
      currents, decay=decay, threshold=threshold, reset=reset, surrogate=surrogate, alpha=alpha,
      u0=u0)

  def body(u_prev, x):
    u_new, s, h = lif_step(
        u_prev, x, decay=decay, threshold=threshold, spike_fn=spike_fn, reset=reset,
        detach_reset=detach_reset, membrane_quantizer=membrane_quantizer)
    return u_new, (s, h)

  final, (spikes, membranes) = jax.lax.scan(body, u, currents, unroll=unroll)
  return spikes, membranes, final
