"""Membrane-potential quantizers (docs/method.md, 'Membrane quantizers') as `MembraneQuantizer`s.

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
import numpy as np

from mdsnn_jax.quant.base import MembraneQuantizer
from mdsnn_jax.quant.weight import MAX_BITS, _round_clip_ste, check_bits, check_param, signed_levels

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


# Bumps whose summed tail is below this are left out of the windowed backward.
BUMP_TAIL_TOL = 1e-7


def _compute_dtype(u: jax.Array):
  return jnp.promote_types(u.dtype, jnp.float32)


def _bump(u: jax.Array, b, k: float) -> jax.Array:
  # σ(z)σ(−z) = e/(1 + e)², e = exp(−|z|): one exp, no cancellation in the tails, and no
  # trailing boundary axis (an extra [..., n] axis blocks XLA's fusion into the scan body).
  e = jnp.exp(-k * jnp.abs(u - b))
  return e / ((1.0 + e) * (1.0 + e))


def _pairwise_sum(terms: list) -> jax.Array:
  # Pairwise (tree) summation: rounding error grows with log2(n), not n, so sums of many
  # float32 bumps stay within 1e-6 of the exact value.
  while len(terms) > 1:
    terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
             for i in range(0, len(terms), 2)]
  return terms[0]


def stacked_sigmoid_grad(u: jax.Array, boundaries: tuple[float, ...], k: float = 2.0) -> jax.Array:
  """dQ/du ≈ Σ_b k·σ(k(u − b))·(1 − σ(k(u − b))), one sigmoid bump per decision boundary b.

  Every boundary is evaluated (no truncation); the sum is unrolled over the boundaries.
  """
  uc = u.astype(_compute_dtype(u))
  if not boundaries:
    return jnp.zeros_like(u)
  return (k * _pairwise_sum([_bump(uc, float(b), k) for b in boundaries])).astype(u.dtype)


def bump_window(k: float, step: float) -> int:
  """Smallest m with 2k·e^{−kmΔ}/(1 − e^{−kΔ}) < BUMP_TAIL_TOL.

  kσ(kd)σ(−kd) ≤ k·e^{−kd}, so the bumps more than m boundaries away on either side of u
  (at distance ≥ mΔ, then (m+1)Δ, …) sum to less than that bound: evaluating the 2m nearest
  boundaries changes dQ/du by less than BUMP_TAIL_TOL.
  """
  r = math.exp(-k * step)
  m = 1
  while 2.0 * k * math.exp(-k * m * step) / (1.0 - r) >= BUMP_TAIL_TOL:
    m += 1
  return m


def grid_bump_sum(u: jax.Array, first: float, step: float, count: int, k: float) -> jax.Array:
  """`stacked_sigmoid_grad` for the evenly spaced boundaries first + iΔ, i = 0 … count − 1.

  Grids with at most 2m boundaries (m = `bump_window(k, Δ)`, 9 for k = 2, Δ = 1: every
  integer / ternary grid up to 19 levels) sum every bump. Larger grids sum only the 2m
  boundaries nearest to u; the omitted tail is below BUMP_TAIL_TOL (tested against the
  full sum).
  """
  m = bump_window(k, step)
  uc = u.astype(_compute_dtype(u))
  if count <= 2 * m:
    terms = [_bump(uc, first + i * step, k) for i in range(count)]
  else:
    # b_j <= u < b_{j+1}; evaluate i = j − m + 1 … j + m, masked to the grid.
    j = jnp.clip(jnp.floor((uc - first) / step), -m - 1, count + m)
    terms = []
    for o in range(-m + 1, m + 1):
      i = j + o
      valid = (i >= 0) & (i <= count - 1)
      terms.append(jnp.where(valid, _bump(uc, first + i * step, k), 0.0))
  return (k * _pairwise_sum(terms)).astype(u.dtype)


# A custom_jvp (tangent dQ = bump_sum(u)·du, linear in du, so JAX transposes it for the
# backward): forward-mode autodiff (jvp, jacfwd, hessian) works through the quantizer too.
@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
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


@_integer_grid.defjvp
def _integer_grid_jvp(lower, step, count, k, primals, tangents):
  (u,), (du,) = primals, tangents
  # Same value as stacked_sigmoid_grad(u, midpoints, k), without a boundary axis.
  slope = grid_bump_sum(u, lower + 0.5 * step, step, count - 1, k)
  return _integer_grid(u, lower, step, count, k), du * slope


def integer_levels(lower: float = -1.0, step: float = 1.0, threshold: float = 1.0) -> tuple[float, ...]:
  """L = {lb + kΔ : k = 0 … ⌊(θ + Δ − lb)/Δ⌋ − 1} (written θ + 1 elsewhere: identical for Δ = 1).

  The Δ generalisation keeps max L <= θ for Δ ≠ 1 (the literal θ + 1 form would add levels
  above θ that clip(u, min L, θ) can never reach).
  """
  lower = _finite("lower", lower)
  step = _finite("step", step)
  threshold = _finite("threshold", threshold)
  if threshold <= 0:
    raise ValueError(f"membrane threshold must be > 0 (the grid's upper clip), got {threshold}")
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
  return _integer_membrane(levels, float(step), k)


# Built once per configuration: equal arguments give the same `apply`, hence one jit cache
# entry in `lif_scan` (which keeps the quantizer function static).
@functools.lru_cache(maxsize=256)
def _integer_membrane(levels: tuple[float, ...], step: float, k: float) -> MembraneQuantizer:
  lower, count = float(levels[0]), len(levels)

  def apply(params, u):
    del params
    _check_float(u)
    return _integer_grid(u, lower, step, count, k)

  return MembraneQuantizer(lambda: {}, apply, levels, math.log2(count), "integer")


def ternary_membrane(threshold: float = 1.0, k: float = 2.0) -> MembraneQuantizer:
  """The {−1, 0, 1} integer membrane (lower = −1, Δ = 1), log2 3 = 1.58 bits.

  The grid clips at θ, so it has exactly three levels for 1 ≤ θ < 2 only; any other θ is
  a ValueError (θ ≥ 2 adds levels 2, 3, …: use `integer_membrane(-1.0, threshold=θ)`, whose
  kind 'integer' and effective bits report the real level count).
  """
  threshold = _finite("threshold", threshold)
  if threshold <= 0:
    raise ValueError(f"ternary membrane threshold must be > 0, got {threshold}")
  mq = integer_membrane(-1.0, 1.0, threshold, k)
  if len(mq.levels) != 3:
    raise ValueError(
        f"ternary_membrane(threshold={threshold}) would have {len(mq.levels)} levels "
        f"{mq.levels}, not the three {{-1, 0, 1}}: a ternary grid needs 1 <= threshold < 2; "
        f"for this grid use integer_membrane(-1.0, threshold={threshold}) (kind 'integer', "
        f"{mq.effective_bits:.2f} bits)")
  return _as_ternary(mq)


@functools.lru_cache(maxsize=256)
def _as_ternary(mq: MembraneQuantizer) -> MembraneQuantizer:
  return mq._replace(kind="ternary")


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
  if not isinstance(learn_clip, (bool, np.bool_)):
    raise ValueError(f"learn_clip must be a bool, got {learn_clip!r}")
  return _uniform_membrane(bits, clip, bool(learn_clip))


@functools.lru_cache(maxsize=256)
def _uniform_membrane(bits: int, clip: float, learn_clip: bool) -> MembraneQuantizer:
  n = signed_levels(bits)
  levels = tuple(clip * i / n for i in range(-n, n + 1))

  def init_params():
    return {"clip": jnp.asarray(clip, jnp.float32)} if learn_clip else {}

  def apply(params, u):
    _check_float(u)
    if learn_clip:
      c = check_param(params, "clip", (), "uniform membrane (learn_clip=True)")
      c = jnp.asarray(c, u.dtype)
    else:
      c = jnp.asarray(clip, u.dtype)
    return _plus_zero(_round_clip_ste(u, c / n, n, ties="toward_zero").astype(u.dtype))

  return MembraneQuantizer(init_params, apply, levels, math.log2(len(levels)), "uniform")
