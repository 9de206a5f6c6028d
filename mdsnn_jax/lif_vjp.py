"""The LIF recurrence with a hand-written backward that keeps only the membranes (docs/method.md).

`fused_lif_scan` computes exactly what `mdsnn_jax.neuron.lif_scan` computes (it runs it for
the forward) but is a `jax.custom_vjp` whose only residual is h [T, ...], the pre-reset
membrane (which the membrane taps hold anyway). Autodiff of the scan instead stacks about
four [T, ...] tensors per layer (h, the spikes, the reset factor and the surrogate input).
Everything else is recomputed from h inside one reverse scan of fused elementwise work:

    s_t, u_t = post(h_t) = (H(h_t − θ), Q_u(reset(h_t, s_t)))     spike and stored state
    a_T = ∂L/∂u_T                                                  (final-state cotangent)
    ∂L/∂h_t = ∂L/∂h_t|tap + vjp(post, h_t)(∂L/∂s_t, a_t)          surrogate and reset paths
    ∂L/∂x_t = ∂L/∂h_t,  a_{t−1} = λ · ∂L/∂h_t,  ∂L/∂u_0 = a_0

and ∂L/∂θ summed over t from the same vjp. The decay λ is a constant here (not
differentiated); the membrane quantizer must be a pure function of u (no traced
parameters closed over); use `lif_scan` otherwise.

Both scans are fully unrolled when T ≤ `FULL_UNROLL_MAX_T` (unroll=None): XLA:CPU then fuses
the T steps of each element into one pass over memory instead of a loop that writes one
[B, ...] slice per step, 2–4× faster per step for T ≤ 8 and no faster from T ≈ 10 on
(`bench/lif_unroll.py`, BENCHMARKS.md), where the compile time of a full unroll keeps growing.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from mdsnn_jax.neuron import _concrete, _hashable, _scan_impl, _scan_jit, prepare_lif, spike_and_reset, unary_spike
from mdsnn_jax.surrogate import SpikeFn

# The largest T whose scans run fully unrolled when unroll=None (see the module docstring).
FULL_UNROLL_MAX_T = 8


def fused_lif_scan(
    currents: jax.Array,
    *,
    decay: float = 0.5,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    surrogate: str | SpikeFn = "arctan",
    alpha: float | None = None,
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | None = None,
    u0: jax.Array | None = None,
    unroll: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`lif_scan` (same arguments, same (spikes, membranes h, final state) result) with the
  membrane-only backward above. decay must be a concrete number (ValueError otherwise);
  alpha may be traced (it gets a zero gradient, as in `lif_scan`).
  unroll: the `jax.lax.scan` unroll factor of the forward and the backward scan, a positive
  int; None: T (fully unrolled) when T ≤ FULL_UNROLL_MAX_T, else 1.

  Reverse mode only: a `jax.custom_vjp` cannot also carry a forward-mode rule, so `jax.jvp`,
  `jacfwd` and `hessian` raise "can't apply forward-mode autodiff (jvp) to a custom_vjp
  function" here. JAX linearizes before it transposes, so inside the trace a jvp and a grad
  look the same and this function cannot switch to the scan path for one only; call
  `lif_scan` (the same forward, with scan autodiff) for forward mode (in the Flax layers:
  impl='scan', model.lif_impl='scan').
  """
  spike, alpha, decay_arr, theta, u = prepare_lif(
      currents, decay=decay, threshold=threshold, reset=reset, surrogate=surrogate,
      alpha=alpha, u0=u0, traced_alpha=True)
  d = _concrete(decay)
  if d is None or jnp.ndim(d) != 0:
    raise ValueError(f"fused_lif_scan needs a concrete scalar decay, got {decay!r}; use lif_scan "
                     f"for a traced or per-channel decay")
  del decay_arr
  t = int(currents.shape[0])
  if unroll is None:
    unroll = t if t <= FULL_UNROLL_MAX_T else 1
  elif isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"unroll must be a positive int or None, got {unroll!r}")
  return _fused(float(d), spike, reset, bool(detach_reset), membrane_quantizer, min(unroll, t),
                currents, theta, u, alpha)


def _post(h, theta, alpha, *, spike_fn, reset, detach_reset, membrane_quantizer):
  """(s_t, u_t) from the pre-reset membrane h_t (`neuron.spike_and_reset`)."""
  return spike_and_reset(h, theta, spike_fn=unary_spike(spike_fn, alpha), reset=reset,
                         detach_reset=detach_reset, membrane_quantizer=membrane_quantizer)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5))
def _fused(decay, spike_fn, reset, detach_reset, mq, unroll, currents, theta, u0, alpha):
  static = dict(reset=reset, spike_fn=spike_fn, detach_reset=detach_reset, mq_apply=mq,
                mq_unary=True, unroll=unroll)
  scan = _scan_jit if _hashable(*static.values()) else _scan_impl
  return scan(currents, jnp.asarray(decay, currents.dtype), theta, u0, None, alpha, **static)


def _fused_fwd(decay, spike_fn, reset, detach_reset, mq, unroll, currents, theta, u0, alpha):
  s, h, u_t = _fused(decay, spike_fn, reset, detach_reset, mq, unroll, currents, theta, u0, alpha)
  return (s, h, u_t), (h, theta, alpha)


def _fused_bwd(decay, spike_fn, reset, detach_reset, mq, unroll, res, cotangents):
  h, theta, alpha = res
  g_s, g_h, g_final = cotangents
  post = functools.partial(_post, alpha=alpha, spike_fn=spike_fn, reset=reset,
                           detach_reset=detach_reset, membrane_quantizer=mq)

  def step(carry, inputs):
    a, d_theta = carry  # a = ∂L/∂u_t, the stored state's cotangent from step t + 1
    h_t, gs_t, gh_t = inputs
    _, vjp = jax.vjp(post, h_t, theta)
    dh_post, dth = vjp((gs_t, a))
    dh = dh_post + gh_t
    return (decay * dh, d_theta + dth), dh

  init = (g_final, jnp.zeros(theta.shape, jnp.float32))
  (a0, d_theta), dx = jax.lax.scan(step, init, (h, g_s, g_h), reverse=True,
                                            unroll=unroll)
  # H does not depend on the surrogate slope: α's cotangent is zero.
  d_alpha = None if alpha is None else jnp.zeros_like(alpha)
  return dx, d_theta.astype(theta.dtype), a0, d_alpha


_fused.defvjp(_fused_fwd, _fused_bwd)
