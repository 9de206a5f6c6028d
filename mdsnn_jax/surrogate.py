"""Heaviside spike with a surrogate-gradient backward (see docs/method.md, 'Surrogate gradients').

Forward, for z = h − θ (membrane minus threshold):

    H(z) = 1 if z >= 0 else 0

Backward: dH/dz is replaced by a smooth surrogate with slope α:

    arctan          α / (2 · (1 + (π/2 · α · z)²))
    sigmoid         α · σ(αz) · (1 − σ(αz))
    fast_sigmoid    1 / (1 + α·|z|)²                    (SuperSpike)
    triangle        max(0, 1/γ − |z|/γ²),  γ = 1/α
    rectangle       1[|z| < a] / (2a),     a = 1/α
    straight_through 1

Each surrogate is the exact derivative of a smooth counterpart (`SMOOTH`), which the tests
check with `jax.grad`. Spike functions are built once per (name, α) and cached, so the same
Python object (and therefore the same jit cache entry) is returned for equal arguments.

The spike is a `jax.custom_jvp` whose tangent rule dH = surrogate(z)·dz is linear in dz:
forward mode (`jax.jvp`, `jacfwd`, `hessian`) and reverse mode (`grad`, `vjp`, by JAX's
transposition of that rule) both use the surrogate. `spike_with_slope(name)` takes α as a
traced second argument (vmap over α, no recompile per value).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

SpikeFn = Callable[[jax.Array], jax.Array]


def _arctan_grad(z, alpha):
  return alpha / (2.0 * (1.0 + (0.5 * math.pi * alpha * z) ** 2))


def _sigmoid_grad(z, alpha):
  sig = jax.nn.sigmoid(alpha * z)
  return alpha * sig * (1.0 - sig)


def _fast_sigmoid_grad(z, alpha):
  return 1.0 / (1.0 + alpha * jnp.abs(z)) ** 2


def _triangle_grad(z, alpha):
  gamma = 1.0 / alpha
  return jnp.maximum(0.0, 1.0 / gamma - jnp.abs(z) / gamma**2)


def _rectangle_grad(z, alpha):
  a = 1.0 / alpha
  return jnp.where(jnp.abs(z) < a, 1.0 / (2.0 * a), 0.0)


def _straight_through_grad(z, alpha):
  del alpha
  return jnp.ones_like(z)


# Smooth functions whose exact derivatives are the surrogates above.
def _arctan_smooth(z, alpha):
  return jnp.arctan(0.5 * math.pi * alpha * z) / math.pi + 0.5


def _sigmoid_smooth(z, alpha):
  return jax.nn.sigmoid(alpha * z)


def _fast_sigmoid_smooth(z, alpha):
  return z / (1.0 + alpha * jnp.abs(z))


def _triangle_smooth(z, alpha):
  # Integral of the triangle: a piecewise quadratic ramp from 0 (z <= -γ) to 1 (z >= γ).
  gamma = 1.0 / alpha
  zc = jnp.clip(z, -gamma, gamma)
  return zc / gamma - zc * jnp.abs(zc) / (2.0 * gamma**2) + 0.5


def _rectangle_smooth(z, alpha):
  a = 1.0 / alpha
  return jnp.clip(z / (2.0 * a) + 0.5, 0.0, 1.0)


def _straight_through_smooth(z, alpha):
  del alpha
  return z


SURROGATES: dict[str, Callable] = {
    "arctan": _arctan_grad,
    "sigmoid": _sigmoid_grad,
    "fast_sigmoid": _fast_sigmoid_grad,
    "triangle": _triangle_grad,
    "rectangle": _rectangle_grad,
    "straight_through": _straight_through_grad,
}

SMOOTH: dict[str, Callable] = {
    "arctan": _arctan_smooth,
    "sigmoid": _sigmoid_smooth,
    "fast_sigmoid": _fast_sigmoid_smooth,
    "triangle": _triangle_smooth,
    "rectangle": _rectangle_smooth,
    "straight_through": _straight_through_smooth,
}

# Common defaults in the field: SpikingJelly's ATan (α=2) and Sigmoid (α=4), snnTorch's
# fast sigmoid slope 25; triangle γ=1; rectangle of width 1 and height 1.
DEFAULT_ALPHA: dict[str, float] = {
    "arctan": 2.0,
    "sigmoid": 4.0,
    "fast_sigmoid": 25.0,
    "triangle": 1.0,
    "rectangle": 2.0,
    "straight_through": 1.0,
}


def heaviside(z: jax.Array) -> jax.Array:
  """H(z) = 1[z >= 0] in the dtype of `z` (no surrogate; zero gradient)."""
  return (z >= 0).astype(z.dtype)


def _check_name(name: str) -> None:
  if name not in SURROGATES:
    raise ValueError(
        f"unknown surrogate {name!r}; known surrogates: {sorted(SURROGATES)}")


def surrogate_grad(name: str, z: jax.Array, alpha: float | None = None) -> jax.Array:
  """The surrogate dH/dz of `name` at z (docs/method.md's table), in the dtype of z."""
  _check_name(name)
  alpha = DEFAULT_ALPHA[name] if alpha is None else alpha
  return SURROGATES[name](z, alpha).astype(z.dtype)


@functools.lru_cache(maxsize=None)
def spike_with_slope(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """spike(z, alpha) = H(z) whose derivative in z is the `name` surrogate with slope alpha.

  alpha is an ordinary (traceable) argument: it may be a jax array, vmapped over or changed
  between jitted calls without recompiling. The rule is a `jax.custom_jvp` with the tangent
  dH = surrogate(z, α)·dz, which is linear in dz, so JAX transposes it for reverse mode:
  jvp, jacfwd, hessian, grad and vjp all see the same surrogate. H does not depend on α,
  so α gets a zero derivative. One function object per name (cached).
  """
  _check_name(name)
  grad_fn = SURROGATES[name]

  @jax.custom_jvp
  def spike(z, alpha):
    del alpha
    return heaviside(z)

  @spike.defjvp
  def _jvp(primals, tangents):
    z, alpha = primals
    dz, _ = tangents
    # The primal through `spike` itself (not bare heaviside), so that a second derivative
    # of it again sees the surrogate (hessian = jacfwd of jacrev).
    return spike(z, alpha), (dz * grad_fn(z, alpha)).astype(z.dtype)

  spike.__name__ = f"spike_{name}"
  spike.__doc__ = f"Heaviside spike H(z) with the {name!r} surrogate derivative of slope alpha."
  return spike


@functools.lru_cache(maxsize=None)
def _build_spike_fn(name: str, alpha: float) -> SpikeFn:
  binary = spike_with_slope(name)

  def spike(z):
    return binary(z, alpha)

  spike.__name__ = f"spike_{name}"
  spike.__doc__ = f"Heaviside spike with the {name!r} surrogate derivative, alpha={alpha}."
  return spike


def get_surrogate(name: str, alpha: float | None = None) -> SpikeFn:
  """Returns spike_fn(z) = H(z) whose backward is the `name` surrogate with slope `alpha`.

  Works under jit, vmap and grad; output dtype equals input dtype.
  """
  _check_name(name)
  if alpha is None:
    alpha = DEFAULT_ALPHA[name]
  alpha = float(alpha)
  if not math.isfinite(alpha) or alpha <= 0:
    raise ValueError(f"surrogate slope alpha must be a positive finite number, got {alpha}")
  return _build_spike_fn(name, alpha)


def resolve_spike_fn(surrogate: str | SpikeFn, alpha: float | None = None) -> SpikeFn:
  """A spike function from a surrogate name or an already-built callable.

  `alpha` applies to a name only: a callable has its slope built in, so an alpha given with
  one is refused rather than ignored.
  """
  if callable(surrogate):
    if alpha is not None:
      raise ValueError(
          f"alpha={alpha!r} was given with a spike function {getattr(surrogate, '__name__', surrogate)!r}, "
          "which has its slope built in; pass alpha only with a surrogate name, e.g. "
          "surrogate='fast_sigmoid', alpha=..., or build get_surrogate(name, alpha)")
    return surrogate
  if isinstance(surrogate, str):
    return get_surrogate(surrogate, alpha)
  raise ValueError(
      f"surrogate must be a name in {sorted(SURROGATES)} or a callable, got {surrogate!r}")
