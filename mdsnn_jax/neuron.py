"""Leaky integrate-and-fire neuron as pure functions (see docs/method.md, 'LIF neuron').

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

`lif_scan` is jitted internally with reset, the surrogate's name (or spike function),
detach_reset, the quantizer function and unroll static, so eager calls compile once per
configuration and shape (decay, threshold, the surrogate slope alpha, u0 and quantizer
parameters are traced arguments: they may change freely and be vmapped over).

Autodiff: every spike is a `jax.custom_jvp` (`mdsnn_jax.surrogate`), so reverse mode
(grad, vjp) and forward mode (jvp, jacfwd, hessian) both work through `lif_scan` and
`rlif_scan`. One caveat for second derivatives: when reverse mode linearizes the scan, the
saved spikes s_t of the reset term h·(1 − s) act as constants, so `jax.hessian` (forward
over reverse) and jacrev∘jacrev omit the surrogate's contribution through the reset (as the
earlier custom-VJP spike did); `jax.jacfwd(jax.jacfwd(f))` includes it. The default state u_0 = 0 is built from the input (`zeros_like(x_0)`), so it
carries the input's sharding type under `jax.shard_map`.
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
from mdsnn_jax.surrogate import DEFAULT_ALPHA, SpikeFn, resolve_spike_fn, spike_with_slope

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


def _check_alpha(alpha, step_shape) -> None:
  if alpha is None:
    return
  a = _concrete(alpha)
  if a is not None and (a.dtype == object or not np.issubdtype(a.dtype, np.number)
                        or np.any(~np.isfinite(a)) or np.any(a <= 0)):
    raise ValueError(f"surrogate slope alpha must be positive and finite, got {alpha!r}")
  try:
    ok = np.broadcast_shapes(jnp.shape(alpha), step_shape) == step_shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"alpha of shape {jnp.shape(alpha)} does not broadcast to the per-step "
                     f"shape {step_shape}; use a scalar (or a per-channel array)")


def split_surrogate(surrogate, alpha, dtype=jnp.float32):
  """(spike, alpha) for a scan body: a surrogate name gives the cached two-argument
  `spike_with_slope(name)` and α as an array of `dtype` (the default slope when None), so
  α is traced; a spike function gives (itself, None), refusing an alpha (its slope is
  built in)."""
  if isinstance(surrogate, str):
    spike = spike_with_slope(surrogate)  # ValueError for an unknown name
    a = DEFAULT_ALPHA[surrogate] if alpha is None else alpha
    return spike, jnp.asarray(a).astype(dtype)
  return resolve_spike_fn(surrogate, alpha), None


def unary_spike(spike, alpha) -> SpikeFn:
  """z -> H(z) from `split_surrogate`'s pair."""
  return spike if alpha is None else (lambda z: spike(z, alpha))


def _check_quantizer_clip(membrane_quantizer, mq_params, threshold) -> None:
  """A membrane grid whose top level lies below θ cannot hold a state near the threshold
  (the quantizer clips it), so the grid and θ disagree: refuse it."""
  if not isinstance(membrane_quantizer, MembraneQuantizer) or not membrane_quantizer.levels:
    return
  top = float(max(membrane_quantizer.levels))
  if isinstance(mq_params, dict) and "clip" in mq_params:
    c = _concrete(mq_params["clip"])
    if c is None:
      return
    top = float(np.max(c))
  th = _concrete(threshold)
  if th is not None and np.any(th > top * (1 + 1e-6)):
    raise ValueError(
        f"threshold {th} lies above the upper clip {top} of the {membrane_quantizer.kind!r} "
        f"membrane quantizer (levels {tuple(membrane_quantizer.levels)}): the stored state is "
        "clipped below θ; build the quantizer for this threshold, e.g. "
        "quant.integer_membrane(lower, threshold=θ) or quant.uniform_membrane(bits, clip=θ)")


def prepare_lif(currents, *, decay, threshold, reset, surrogate, alpha, u0, traced_alpha=False):
  """Validates `lif_scan`'s arguments (ValueError naming a bad value) and returns
  (spike_fn, decay, threshold, u0) with the numbers cast to the dtype of `currents`.

  traced_alpha=True returns (spike, alpha, decay, threshold, u0) with `split_surrogate`'s
  pair instead, so α stays a traced array. Shared by every scan over `lif_step` (e.g.
  `mdsnn_jax.prune.gated_lif_scan`).
  """
  _validate(currents, decay, threshold, reset)
  step_shape = tuple(jnp.shape(currents)[1:])
  if u0 is not None:
    _check_u0(u0, step_shape)
  if isinstance(surrogate, str):
    _check_alpha(alpha, step_shape)  # (a spike function refuses any alpha in split_surrogate)
  dtype = currents.dtype
  spike, alpha = split_surrogate(surrogate, alpha, dtype)
  threshold = jnp.asarray(threshold).astype(dtype)
  decay = jnp.asarray(decay).astype(dtype)
  # zeros_like(x_0), not zeros(shape): under shard_map the carry must vary over the same
  # mesh axes as the input, or scan refuses the carry types.
  u = (jnp.zeros_like(currents[0]) if u0 is None
       else jnp.broadcast_to(jnp.asarray(u0, dtype), step_shape))
  if traced_alpha:
    return spike, alpha, decay, threshold, u
  a = None if alpha is None else _concrete(alpha)
  if a is not None and a.ndim == 0:
    # The cached one-argument spike: equal arguments give the same (hashable) object.
    return resolve_spike_fn(surrogate, float(a)), decay, threshold, u
  return unary_spike(spike, alpha), decay, threshold, u


def _quantize_fn(mq_apply, mq_unary, mq_params):
  if mq_apply is None:
    return None
  if mq_unary:
    return mq_apply
  return functools.partial(mq_apply, mq_params)


def _scan_impl(currents, decay, threshold, u, mq_params, alpha, *, reset, spike_fn, detach_reset,
               mq_apply, mq_unary, unroll):
  quantize = _quantize_fn(mq_apply, mq_unary, mq_params)
  spike_fn = unary_spike(spike_fn, alpha)

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
    decay: float | jax.Array | None = None,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    surrogate: str | SpikeFn = "arctan",
    alpha: float | jax.Array | None = None,
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | MembraneQuantizer | None = None,
    u0: jax.Array | None = None,
    unroll: int = 1,
    mq_params: Any = None,
    runtime_checks: bool = False,
    decay_logit: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Runs the LIF recurrence over the leading time axis.

  Args:
    currents: input currents x_t, time-major [T, ...] (e.g. [T, B, C] or [T, B, H, W, C]).
    decay: leak λ in [0, 1], a scalar or an array broadcastable to currents.shape[1:]
      (None: 0.5, or σ(decay_logit)). Traced: it may be learned directly.
    threshold: θ > 0, a scalar or an array broadcastable to currents.shape[1:] (per-channel:
      shape (C,)). Traced (learned) thresholds receive gradients.
    reset: 'hard', 'soft' or 'none'.
    surrogate: surrogate name (see `mdsnn_jax.surrogate.SURROGATES`) or a spike function.
    alpha: surrogate slope > 0 when `surrogate` is a name (None: the surrogate's default),
      a scalar or an array broadcastable to currents.shape[1:]; traced (vmap over it, change
      it without recompiling). An error with a spike function, which has its slope built in.
    detach_reset: stop the gradient through the reset term.
    membrane_quantizer: applied to the stored state u_t after reset: a `MembraneQuantizer`
      (e.g. `quant.ternary_membrane()`, used with `mq_params`), or any function u -> Q(u).
      A threshold above a `MembraneQuantizer`'s top level is refused (ValueError).
    u0: initial state (default zeros like x_0), of shape currents.shape[1:] or
      broadcastable to it.
    unroll: `jax.lax.scan` unroll factor.
    mq_params: the MembraneQuantizer's parameters (default `membrane_quantizer.init_params()`);
      traced, so they may be learned.
    runtime_checks: under an outer `jit`, where θ and λ are tracers, also emit
      `jax.experimental.checkify` checks θ > 0 and λ ∈ [0, 1]; the jitted caller must then
      be wrapped in `checkify.checkify`. Concrete values are always checked (ValueError).
    decay_logit: w, a learnable decay λ = σ(w) = 1/(1 + e^{−w}), always inside (0, 1)
      (PLIF's parametrisation); scalar or per-channel. Exclusive with `decay`.

  Returns:
    (spikes [T, ...], membranes h [T, ...] (pre-reset), final state u_T [...]), all in the
    dtype of `currents`.
  """
  decay = resolve_decay(decay, decay_logit)
  mq_apply, mq_params, mq_unary = split_membrane_quantizer(membrane_quantizer, mq_params)
  spike, alpha, decay, threshold, u = prepare_lif(
      currents, decay=decay, threshold=threshold, reset=reset, surrogate=surrogate, alpha=alpha,
      u0=u0, traced_alpha=True)
  _check_quantizer_clip(membrane_quantizer, mq_params, threshold)
  if runtime_checks:
    _runtime_checks(decay, threshold)
  static = dict(reset=reset, spike_fn=spike, detach_reset=bool(detach_reset),
                mq_apply=mq_apply, mq_unary=mq_unary, unroll=unroll)
  scan = _scan_jit if _hashable(*static.values()) else _scan_impl
  return scan(currents, decay, threshold, u, mq_params, alpha, **static)


DEFAULT_DECAY = 0.5


def resolve_decay(decay, decay_logit):
  """λ from `decay` (None: DEFAULT_DECAY) or σ(decay_logit); both given is a ValueError."""
  if decay_logit is None:
    return DEFAULT_DECAY if decay is None else decay
  if decay is not None:
    raise ValueError("pass either decay (λ itself) or decay_logit (λ = sigmoid(decay_logit)), "
                     f"not both; got decay={decay!r}")
  w = jnp.asarray(decay_logit)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"decay_logit must be floating point, got dtype {w.dtype}")
  wc = _concrete(w)
  if wc is not None and np.any(~np.isfinite(wc)):
    raise ValueError(f"decay_logit must be finite, got {wc}")
  return jax.nn.sigmoid(w)


def _rlif_impl(currents, w_rec, decay, threshold, u, s, mq_params, alpha, *, reset, spike_fn,
               detach_reset, mq_apply, mq_unary, unroll):
  quantize = _quantize_fn(mq_apply, mq_unary, mq_params)
  spike_fn = unary_spike(spike_fn, alpha)

  def body(carry, x):
    u_prev, s_prev = carry
    # The recurrent current of the previous step's spikes, then the plain LIF update.
    h = decay * u_prev + x + jnp.matmul(s_prev, w_rec)
    s_t, u_t = spike_and_reset(h, threshold, spike_fn=spike_fn, reset=reset,
                               detach_reset=detach_reset, membrane_quantizer=quantize)
    return (u_t, s_t), (s_t, h)

  (final, _), (spikes, membranes) = jax.lax.scan(body, (u, s), currents, unroll=unroll)
  return spikes, membranes, final


_rlif_jit = jax.jit(_rlif_impl, static_argnames=_STATIC)


def rlif_scan(
    currents: jax.Array,
    recurrent_weight: jax.Array,
    *,
    decay: float | jax.Array | None = None,
    threshold: float | jax.Array = 1.0,
    reset: str = "hard",
    surrogate: str | SpikeFn = "arctan",
    alpha: float | jax.Array | None = None,
    detach_reset: bool = False,
    membrane_quantizer: Callable[[jax.Array], jax.Array] | MembraneQuantizer | None = None,
    u0: jax.Array | None = None,
    s0: jax.Array | None = None,
    unroll: int = 1,
    mq_params: Any = None,
    decay_logit: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Recurrent LIF (snnTorch's RLeaky, spyx's RLIF) over the leading time axis:

      h_t = λ·u_{t−1} + x_t + s_{t−1} @ W_rec        W_rec [N, N]: row i feeds neuron j
      s_t = H(h_t − θ),  u_t = reset(h_t, s_t),  then Q_u(u_t)    (as `lif_scan`)

  currents: x_t, time-major [T, ..., N] (e.g. [T, B, N]); the recurrence mixes the last axis.
  s0: the spikes before the first step (default zeros); u0: the initial state (default
  zeros). Every other argument is `lif_scan`'s, with the same checks and the same traced /
  static split (W_rec is traced and receives gradients through the spikes' surrogate).
  Returns (spikes [T, ..., N], membranes h [T, ..., N] (pre-reset), final state u_T); to
  continue a sequence pass u0=u_T and s0=spikes[-1].
  """
  decay = resolve_decay(decay, decay_logit)
  if jnp.ndim(currents) < 2:
    raise ValueError(f"currents must be time-major [T, ..., N] with a neuron axis, got shape "
                     f"{jnp.shape(currents)}")
  n = jnp.shape(currents)[-1]
  if tuple(jnp.shape(recurrent_weight)) != (n, n):
    raise ValueError(f"recurrent_weight must have shape (N, N) = ({n}, {n}) for currents of "
                     f"shape {jnp.shape(currents)}, got {jnp.shape(recurrent_weight)}")
  mq_apply, mq_params, mq_unary = split_membrane_quantizer(membrane_quantizer, mq_params)
  spike, alpha, decay, threshold, u = prepare_lif(
      currents, decay=decay, threshold=threshold, reset=reset, surrogate=surrogate, alpha=alpha,
      u0=u0, traced_alpha=True)
  _check_quantizer_clip(membrane_quantizer, mq_params, threshold)
  step_shape = tuple(jnp.shape(currents)[1:])
  if s0 is None:
    s = jnp.zeros_like(currents[0])
  else:
    try:
      ok = np.broadcast_shapes(jnp.shape(s0), step_shape) == step_shape
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(f"s0 of shape {jnp.shape(s0)} does not match the per-step shape "
                       f"{step_shape} (currents.shape[1:])")
    s = jnp.broadcast_to(jnp.asarray(s0, currents.dtype), step_shape)
  w = jnp.asarray(recurrent_weight).astype(currents.dtype)
  static = dict(reset=reset, spike_fn=spike, detach_reset=bool(detach_reset),
                mq_apply=mq_apply, mq_unary=mq_unary, unroll=unroll)
  scan = _rlif_jit if _hashable(*static.values()) else _rlif_impl
  return scan(currents, w, decay, threshold, u, s, mq_params, alpha, **static)
