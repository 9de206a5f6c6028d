"""Membrane-potential quantizers (SPEC §2, "Membrane potential") as `MembraneQuantizer`s.

Applied to the stored LIF state u_t after reset:

    lif_scan(currents, membrane_quantizer=functools.partial(mq.apply, params))

Both grids round to the nearest level; an exact tie between two levels goes to the level of
smaller magnitude (toward zero: "the leak wins"). Ties are common, not corner cases: with
λ = 0.5 a stored ±1 decays to ±0.5, exactly half-way between two integer levels, and this
rule returns it to 0 on both sides (`jnp.round`'s half-to-even would send −1.5 to −2 but
−2.5 to −2). `mdsnn_jax.quant.export` reproduces this rule in integers.
The output dtype equals the input dtype.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from mdsnn_jax.quant.base import MembraneQuantizer
from mdsnn_jax.quant.weight import MAX_BITS, _round_clip_ste, check_bits, signed_levels

PyTree = Any


def _check_float(u: jax.Array) -> None:
  if not jnp.issubdtype(jnp.result_type(u), jnp.floating):
    raise ValueError(f"membrane must be floating point, got dtype {jnp.result_type(u)}")


def _plus_zero(q: jax.Array) -> jax.Array:
  # ceil(−0.3) is −0.0; store +0.0 so a decayed state reads as a plain 0 (−0 + +0 = +0).
  # The correction carries no gradient, so the surrogate / STE backward is untouched.
  return q + jax.lax.stop_gradient(jnp.where(q == 0, -q, jnp.zeros_like(q)))


def _finite(name: str, value: Any) -> float:
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  return value


# ----------------------------------------------------------------------------------------
# Identity (kind 'none').


def identity_membrane() -> MembraneQuantizer:
  """No membrane quantization (reported as 32 effective bits, no level set)."""

  def apply(params, u):
    del params
    return u

  return MembraneQuantizer(lambda: {}, apply, (), 32.0, "none")


# ----------------------------------------------------------------------------------------
# Integer-only membrane (SpQuant) with the stacked sigmoid surrogate.


def stacked_sigmoid_grad(u: jax.Array, boundaries: tuple[float, ...], k: float = 2.0) -> jax.Array:
  """dQ/du ≈ Σ_b k·σ(k(u − b))·(1 − σ(k(u − b))), one sigmoid bump per decision boundary b."""
  z = k * (u[..., None] - jnp.asarray(boundaries, u.dtype))
  # σ(z)(1 − σ(z)) written as σ(z)σ(−z): no cancellation in the tails.
  return jnp.sum(k * jax.nn.sigmoid(z) * jax.nn.sigmoid(-z), axis=-1).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _integer_grid(u: jax.Array, lower: float, step: float, count: int, k: float) -> jax.Array:
  first = lower / step
  # With 0 on the grid, round u/step itself (exact for a power-of-two step): the shift
  # u − lower would round values a hair off a midpoint onto it.
  origin = 0.0 if first == round(first) else lower
  lo = round(first) if origin == 0.0 else 0
  v = (u - origin) / step
  # Nearest level, ties toward zero: round down above 0, up at or below 0.
  idx = jnp.where(u > 0, jnp.ceil(v - 0.5), jnp.floor(v + 0.5))
  idx = jnp.clip(idx, lo, lo + count - 1)
  return _plus_zero((origin + step * idx).astype(u.dtype))


def _integer_grid_fwd(u, lower, step, count, k):
  return _integer_grid(u, lower, step, count, k), u


def _integer_grid_bwd(lower, step, count, k, u, g):
  bounds = tuple(lower + (i + 0.5) * step for i in range(count - 1))
  return (g * stacked_sigmoid_grad(u, bounds, k),)


_integer_grid.defvjp(_integer_grid_fwd, _integer_grid_bwd)


def integer_levels(lower: float = -1.0, step: float = 1.0, threshold: float = 1.0) -> tuple[float, ...]:
  """L = {lb + kΔ : k = 0 … ⌊(θ + Δ − lb)/Δ⌋ − 1} (SPEC writes θ + 1: identical for Δ = 1).

  The Δ generalisation keeps max L <= θ for Δ ≠ 1 (SPEC's literal form would add levels
  above θ that clip(u, min L, θ) can never reach).
  """
  lower = _finite("lower", lower)
  step = _finite("step", step)
  threshold = _finite("threshold", threshold)
  if step <= 0:
    raise ValueError(f"membrane step must be positive, got {step}")
  if not lower < threshold:
    raise ValueError(f"membrane lower bound must be below the threshold {threshold}, got {lower}")
  count = int(math.floor((threshold + step - lower) / step + 1e-9))
  if count < 2:
    raise ValueError(
        f"membrane grid lower={lower}, step={step}, threshold={threshold} has {count} level(s); need >= 2")
  return tuple(lower + i * step for i in range(count))


def integer_membrane(
    lower: float = -1.0, step: float = 1.0, threshold: float = 1.0, k: float = 2.0
) -> MembraneQuantizer:
  """Integer-only membrane (SpQuant): nearest level of clip(u, min L, θ), L = `integer_levels`.

  lower=−1: {−1, 0, 1} (ternary, 1.58 bits); lower=−3: {−3, …, 1} (2.32 bits).
  Backward: the stacked sigmoid surrogate (`stacked_sigmoid_grad`) with slope k at the
  midpoints between neighbouring levels. No parameters.
  """
  levels = integer_levels(lower, step, threshold)
  k = _finite("k", k)
  if k <= 0:
    raise ValueError(f"surrogate slope k must be positive, got {k}")
  lower, step, count = float(levels[0]), float(step), len(levels)

  def apply(params, u):
    del params
    _check_float(u)
    return _integer_grid(u, lower, step, count, k)

  return MembraneQuantizer(lambda: {}, apply, levels, math.log2(count), "integer")


def ternary_membrane(threshold: float = 1.0, k: float = 2.0) -> MembraneQuantizer:
  """The {−1, 0, 1} integer membrane (lower = −1, Δ = 1), log2 3 = 1.58 bits."""
  return integer_membrane(-1.0, 1.0, threshold, k)._replace(kind="ternary")


# ----------------------------------------------------------------------------------------
# Uniform b-bit membrane with a fixed or learned clip range.


def uniform_membrane(bits: int, clip: float = 1.0, learn_clip: bool = False) -> MembraneQuantizer:
  """b-bit symmetric uniform grid on [−c, c]: q(u) = Δ·clip(round(u/Δ), −n, n), Δ = c/n.

  2n + 1 = 2^b − 1 levels (effective bits log2(2^b − 1)); ties toward zero.
  learn_clip=False: c fixed, params {}. learn_clip=True: params {'clip': c}, trained with
  the LSQ-style gradient dq/dc = (round(u/Δ) − u/Δ)/n inside, ±1 outside (no gradient
  scaling); `levels` then reports the initial grid. Backward to u: STE, 1 on [−c, c], 0 outside.
  """
  bits = check_bits(bits, 2, MAX_BITS)
  clip = _finite("clip", clip)
  if clip <= 0:
    raise ValueError(f"membrane clip must be positive, got {clip}")
  n = signed_levels(bits)
  levels = tuple(clip * i / n for i in range(-n, n + 1))

  def init_params():
    return {"clip": jnp.asarray(clip, jnp.float32)} if learn_clip else {}

  def apply(params, u):
    _check_float(u)
    c = jnp.asarray(params["clip"], u.dtype) if learn_clip else jnp.asarray(clip, u.dtype)
    return _plus_zero(_round_clip_ste(u, c / n, n, ties="toward_zero").astype(u.dtype))

  return MembraneQuantizer(init_params, apply, levels, math.log2(len(levels)), "uniform")
