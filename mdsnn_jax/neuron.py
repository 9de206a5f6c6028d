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

`lif_scan` is jitted internally with reset, surrogate, detach_reset, the quantizer function
and unroll static, so eager calls compile once per configuration and shape (decay,
threshold, u0 and quantizer parameters are traced arguments and may change freely).
Argument checks on values (θ > 0, λ ∈ [0, 1]) run when the values are concrete; under an
outer `jit` they are skipped unless `runtime_checks=True`, which emits
`jax.experimental.checkify` checks (wrap the jitted caller in `checkify.checkify`).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from mdsnn_jax.quant.base import MembraneQuantizer
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


def _is_array_tree(tree: Any) -> bool:
  leaves = jax.tree_util.tree_leaves(tree)
  return all(isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)) for x in leaves)


def _required_positional(fn: Callable) -> int | None:
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):
    return None
  return sum(1 for p in sig.parameters.values()
             if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def split_membrane_quantizer(membrane_quantizer, mq_params=None):
  """(apply, params, unary) for `lif_scan`'s membrane quantizer argument.

  A `MembraneQuantizer` gives (mq.apply, mq_params or mq.init_params(), False);
  `functools.partial(f, params)` gives (f, params, False) so params are traced, not baked in;
  any other one-argument callable q gives (q, None, True). Raises ValueError for anything
  else, e.g. a bare `mq.apply`, which takes (params, u).
  """
  if membrane_quantizer is None:
    if mq_params is not None:
      raise ValueError("mq_params was given without a membrane_quantizer; pass the "
                       "MembraneQuantizer it belongs to")
    return None, None, True
  if isinstance(membrane_quantizer, MembraneQuantizer):
    params = membrane_quantizer.init_params() if mq_params is None else mq_params
    return membrane_quantizer.apply, params, False
  if mq_params is not None:
    raise ValueError(
        f"mq_params is only used with a MembraneQuantizer; membrane_quantizer is a "
        f"{type(membrane_quantizer).__name__}")
  if not callable(membrane_quantizer):
    raise ValueError(
        f"membrane_quantizer must be a MembraneQuantizer or a function u -> Q(u), got "
        f"{membrane_quantizer!r}")
  f = membrane_quantizer
  if (isinstance(f, functools.partial) and len(f.args) == 1 and not f.keywords
      and _is_array_tree(f.args[0]) and _required_positional(f.func) == 2):
    return f.func, f.args[0], False
  if _required_positional(f) not in (None, 1):
    raise ValueError(
        f"membrane_quantizer is called as f(u) but {getattr(f, '__name__', f)!r} takes "
        f"{_required_positional(f)} required arguments; for a quantizer's apply(params, u) "
        "pass the MembraneQuantizer itself (membrane_quantizer=mq, mq_params=...) or "
        "functools.partial(mq.apply, params)")
  return f, None, True


def lif_step(
    u_prev: jax.Array,
    x: jax.Array,
    *,
    decay: float | jax.Array,
    threshold: float | jax.Array,
    spike_fn: SpikeFn,
    reset: str = "hard",
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | MembraneQuantizer | None = None,
    mq_params: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One LIF update. Returns (u_t stored state, s_t spikes, h_t pre-reset membrane).

  membrane_quantizer: a function u -> Q(u), or a `MembraneQuantizer` applied with
  `mq_params` (default `mq.init_params()`).
  """
  h = decay * u_prev + x
  s, u = spike_and_reset(h, threshold, spike_fn=spike_fn, reset=reset,
                         detach_reset=detach_reset, membrane_quantizer=membrane_quantizer,
                         mq_params=mq_params)
  return u, s, h


def spike_and_reset(
    h: jax.Array,
    threshold: float | jax.Array,
    *,
    spike_fn: SpikeFn,
    reset: str = "hard",
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | MembraneQuantizer | None = None,
    mq_params: Any = None,
) -> tuple[jax.Array, jax.Array]:
  """(s_t, u_t) from the pre-reset membrane h_t: s = H(h − θ); u = h·(1 − s) (hard),
  h − θ·s (soft) or h (none), then the membrane quantizer Q(u) when given. The second half
  of `lif_step`, shared with the fused LIF's backward."""
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
  if isinstance(membrane_quantizer, MembraneQuantizer):
    params = membrane_quantizer.init_params() if mq_params is None else mq_params
    u = membrane_quantizer.apply(params, u)
  elif membrane_quantizer is not None:
    u = membrane_quantizer(u)
  return s, u


def _check_u0(u0, step_shape) -> None:
  shape = tuple(jnp.shape(u0))
  try:
    ok = np.broadcast_shapes(shape, step_shape) == step_shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"u0 of shape {shape} does not match the per-step shape {step_shape} "
                     "(currents.shape[1:]); pass an array of that shape (or broadcastable to it)")


def prepare_lif(currents, *, decay, threshold, reset, surrogate, alpha, u0):
  """Validates `lif_scan`'s arguments (ValueError naming a bad value) and returns
  (spike_fn, decay, threshold, u0) with the numbers cast to the dtype of `currents`.

  Shared by every scan over `lif_step` (e.g. `mdsnn_jax.prune.gated_lif_scan`).
  """
  _validate(currents, decay, threshold, reset)
  step_shape = tuple(jnp.shape(currents)[1:])
  if u0 is not None:
    _check_u0(u0, step_shape)
  spike_fn = resolve_spike_fn(surrogate, alpha)
  dtype = currents.dtype
  threshold = jnp.asarray(threshold).astype(dtype)
  decay = jnp.asarray(decay).astype(dtype)
  u = (jnp.zeros(step_shape, dtype) if u0 is None
       else jnp.broadcast_to(jnp.asarray(u0, dtype), step_shape))
  return spike_fn, decay, threshold, u


def _scan_impl(currents, decay, threshold, u, mq_params, *, reset, spike_fn, detach_reset,
               mq_apply, mq_unary, unroll):
  if mq_apply is None:
    quantize = None
  elif mq_unary:
    quantize = mq_apply
  else:
    quantize = functools.partial(mq_apply, mq_params)

  def body(u_prev, x):
    u_new, s, h = lif_step(
        u_prev, x, decay=decay, threshold=threshold, spike_fn=spike_fn, reset=reset,
        detach_reset=detach_reset, membrane_quantizer=quantize)
    return u_new, (s, h)

  final, (spikes, membranes) = jax.lax.scan(body, u, currents, unroll=unroll)
  return spikes, membranes, final


_STATIC = ("reset", "spike_fn", "detach_reset", "mq_apply", "mq_unary", "unroll")
_scan_jit = jax.jit(_scan_impl, static_argnames=_STATIC)


def _hashable(*xs) -> bool:
  try:
    hash(xs)
  except TypeError:
    return False
  return True


def _runtime_checks(decay, threshold) -> None:
  if _concrete(decay) is not None and _concrete(threshold) is not None:
    return  # already checked by `_validate`
  checkify.check(jnp.all(threshold > 0), "threshold must be positive, got {t}", t=threshold)
  checkify.check(jnp.all((decay >= 0) & (decay <= 1)), "decay must lie in [0, 1], got {d}",
                 d=decay)


def lif_scan(
    currents: jax.Array,
    *,
    decay: float | jax.Array = 0.5,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    surrogate: str | SpikeFn = "arctan",
    alpha: float | None = None,
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | MembraneQuantizer | None = None,
    u0: jax.Array | None = None,
    unroll: int = 1,
    mq_params: Any = None,
    runtime_checks: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Runs the LIF recurrence over the leading time axis.

  Args:
    currents: input currents x_t, time-major [T, ...] (e.g. [T, B, C] or [T, B, H, W, C]).
    decay: leak λ in [0, 1].
    threshold: θ > 0, a scalar or an array broadcastable to currents.shape[1:] (per-channel:
      shape (C,)). Traced (learned) thresholds receive gradients.
    reset: 'hard', 'soft' or 'none'.
    surrogate: surrogate name (see `mdsnn_jax.surrogate.SURROGATES`) or a spike function.
    alpha: surrogate slope when `surrogate` is a name (None: the surrogate's default); an
      error with a spike function, which has its slope built in.
    detach_reset: stop the gradient through the reset term.
    membrane_quantizer: applied to the stored state u_t after reset: a `MembraneQuantizer`
      (e.g. `quant.ternary_membrane()`, used with `mq_params`), or any function u -> Q(u).
    u0: initial state (default zeros), of shape currents.shape[1:] or broadcastable to it.
    unroll: `jax.lax.scan` unroll factor.
    mq_params: the MembraneQuantizer's parameters (default `membrane_quantizer.init_params()`);
      traced, so they may be learned.
    runtime_checks: under an outer `jit`, where θ and λ are tracers, also emit
      `jax.experimental.checkify` checks θ > 0 and λ ∈ [0, 1]; the jitted caller must then
      be wrapped in `checkify.checkify`. Concrete values are always checked (ValueError).

  Returns:
    (spikes [T, ...], membranes h [T, ...] (pre-reset), final state u_T [...]), all in the
    dtype of `currents`.
  """
  mq_apply, mq_params, mq_unary = split_membrane_quantizer(membrane_quantizer, mq_params)
  spike_fn, decay, threshold, u = prepare_lif(
      currents, decay=decay, threshold=threshold, reset=reset, surrogate=surrogate, alpha=alpha,
      u0=u0)
  if runtime_checks:
    _runtime_checks(decay, threshold)
  static = dict(reset=reset, spike_fn=spike_fn, detach_reset=bool(detach_reset),
                mq_apply=mq_apply, mq_unary=mq_unary, unroll=unroll)
  scan = _scan_jit if _hashable(*static.values()) else _scan_impl
  return scan(currents, decay, threshold, u, mq_params, **static)
