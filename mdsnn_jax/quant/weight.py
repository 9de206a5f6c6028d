"""Weight fake-quantizers (docs/method.md) as `WeightQuantizer` tuples of pure functions.

The output channel is the LAST axis of a kernel (flax layout: conv HWIO, dense (in, out)).
Two signed b-bit integer grids (`grid`), codes −Q_n … Q_p:

    symmetric   Q_n = Q_p = n = 2^(b−1) − 1   2^b − 1 levels (2 bits: ternary {−1, 0, 1})
    full        Q_n = 2^(b−1), Q_p = 2^(b−1) − 1   2^b levels (2 bits: {−2, −1, 0, 1})

    uniform   q(w) = Δ·clip(round(w/Δ), −Q_n, Q_p),  Δ = c/Q_n,  c = max|w| or a percentile
              of |w| (symmetric: Δ = c/n; full: the most negative code is −c, the most
              positive c − Δ)
    sawb      the same grid with c = 2·E|w|
    lsq       the same grid with a learned Δ (init 2·E|w|/√Q_p), Δ-gradient scaled by
              1/√(N·Q_p); default grid 'full' as in the LSQ paper (uniform, SAWB: 'symmetric')
    ternary   q(w) = W̄·sign(w)·1[|w| ≥ r·max|w|],  W̄ = mean(|w| : |w| ≥ r·max|w|)
    mint      q(x) = α/n·round(clip(tanh(x)/α, −1, 1)·n), learned α
    lqnet     learned non-uniform levels vᵀe, e ∈ {−1,+1}^K, basis v updated by QEM

Backward (straight-through estimator, STE): the rounding is treated as the identity, so
dq/dw = 1 inside the clip range and 0 outside it (the clip saturates). Quantizers without a
clip range (ternary, LQ-Net) pass the gradient through unchanged everywhere. Scales that are
computed from `w` (uniform, SAWB, ternary) carry no gradient.

`round` is `jnp.round` (half to even); `to_integer` uses the same rounding, so
`apply(...) == int_w * scale` holds bitwise for every uniform-grid quantizer.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdsnn_jax.quant.base import WeightQuantizer

PyTree = Any

MAX_BITS = 16
CLIP_MODES = ("max", "percentile")
SQUASHES = ("tanh", "none")
GRIDS = ("symmetric", "full")


def check_bits(bits: Any, low: int = 2, high: int = MAX_BITS, what: str = "bits") -> int:
  """Returns `bits` as int, or raises ValueError naming the value and the allowed range."""
  if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
    raise ValueError(f"{what} must be an int in {low}..{high}, got {bits!r}")
  if not low <= int(bits) <= high:
    raise ValueError(f"{what} must be an int in {low}..{high}, got {bits}")
  return int(bits)


def signed_levels(bits: int) -> int:
  """n = 2^(b−1) − 1, the largest integer code of a signed symmetric b-bit grid."""
  return 2 ** (bits - 1) - 1


def check_grid(grid: Any) -> str:
  """Returns `grid`, or raises ValueError naming the value and the allowed grids."""
  if not isinstance(grid, str) or grid not in GRIDS:
    raise ValueError(f"unknown weight grid {grid!r}; allowed: {list(GRIDS)}")
  return grid


def grid_codes(bits: int, grid: str = "symmetric") -> tuple[int, int]:
  """(Q_n, Q_p): the codes of a signed b-bit grid are −Q_n … Q_p.

  symmetric: Q_n = Q_p = 2^(b−1) − 1 (2^b − 1 levels); full: Q_n = 2^(b−1),
  Q_p = 2^(b−1) − 1 (2^b levels).
  """
  grid = check_grid(grid)
  n = signed_levels(bits)
  return (n + 1 if grid == "full" else n), n


def grid_info(wq: WeightQuantizer) -> dict:
  """{'grid', 'levels', 'stored_bits'} of a weight quantizer.

  grid: 'symmetric' / 'full' (uniform, SAWB, LSQ, MINT: symmetric), 'ternary', 'learned'
  (LQ-Net: 2^K levels vᵀe), 'float' (the identity: levels None, stored_bits its `bits`).
  stored_bits = ⌈log2 levels⌉ (ternary: 3 levels in 2 bits).
  """
  if not isinstance(wq, WeightQuantizer):
    raise ValueError(f"grid_info needs a WeightQuantizer (e.g. quant.lsq(2)), got {type(wq).__name__}")
  if wq.levels is None:
    return {"grid": wq.grid, "levels": None, "stored_bits": int(wq.bits)}
  levels = int(wq.levels)
  return {"grid": wq.grid, "levels": levels,
          "stored_bits": max(1, math.ceil(math.log2(levels) - 1e-9))}


def _channel_axes(w: jax.Array, per_channel: bool) -> tuple[int, ...] | None:
  """Axes reduced to get one statistic per output channel (last axis), or None (all)."""
  if not per_channel:
    return None
  if jnp.ndim(w) < 1:
    raise ValueError(f"per-channel quantization needs a kernel with a channel axis, got shape {jnp.shape(w)}")
  return tuple(range(jnp.ndim(w) - 1))


def _positive(step: jax.Array) -> jax.Array:
  # An all-zero tensor (or channel) gives c = 0; any positive step then quantizes it to 0.
  return jnp.where(step > 0, step, jnp.ones_like(step))


def _power_of_two_ceil(x: jax.Array) -> jax.Array:
  """Smallest power of two >= x (x > 0), computed exactly with frexp/ldexp."""
  mant, expo = jnp.frexp(x)
  expo = jnp.where(mant == 0.5, expo - 1, expo)
  return jnp.ldexp(jnp.ones_like(x), expo)


def _round_clip_ste(
    x: jax.Array, step: jax.Array, n: int, *, inclusive: bool = True, ties: str = "even",
    n_neg: int | None = None,
) -> jax.Array:
  """step·clip(round(x/step), −Q_n, Q_p) with the LSQ straight-through backward.

  Q_p = n, Q_n = n_neg (None: n, the symmetric grid).
  d/dx = 1 inside the clip range −Q_n <= x/step <= Q_p (strict < when `inclusive=False`),
  else 0. d/dstep = round(x/step) − x/step inside, −Q_n or +Q_p outside (the LSQ paper's
  formula). The forward value is exactly `step * k` with integer k, like `to_integer`.
  ties: 'even' (jnp.round, half to even) or 'toward_zero' (the smaller-magnitude level).
  """
  lo = n if n_neg is None else n_neg
  v = x / step
  inside = (v >= -lo) & (v <= n) if inclusive else (v > -lo) & (v < n)
  vc = jnp.where(inside, v, jnp.clip(v, -lo, n))
  if ties == "even":
    k = jnp.round(v)
  else:
    k = jnp.where(v > 0, jnp.ceil(v - 0.5), jnp.floor(v + 0.5))
  k = jax.lax.stop_gradient(jnp.clip(k, -lo, n))
  # vc − sg(vc) is exactly 0 forward and carries the straight-through gradient backward.
  return step * (k + (vc - jax.lax.stop_gradient(vc)))


def check_param(params: Any, key: str, shape: tuple[int, ...], what: str) -> Any:
  """params[key], after checking it exists, has `shape` and (when concrete) is positive.

  Raises ValueError naming the quantizer, the field, the expected shape and what was found.
  Value checks are skipped for tracers (under jit), shape checks never are.
  """
  if not isinstance(params, Mapping) or key not in params:
    keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
    raise ValueError(f"{what} params need the field {key!r} (shape {shape}), got {keys}; "
                     "use the quantizer's init_params")
  value = params[key]
  if tuple(jnp.shape(value)) != tuple(shape):
    raise ValueError(f"{what} params[{key!r}] must have shape {tuple(shape)}, got "
                     f"{tuple(jnp.shape(value))}")
  if not isinstance(value, jax.core.Tracer):
    v = np.asarray(value)
    if not np.all(v > 0):
      raise ValueError(f"{what} params[{key!r}] must be positive, got {v}")
  return value


def _param_shape(w: jax.Array, per_channel: bool) -> tuple[int, ...]:
  return (jnp.shape(w)[-1],) if per_channel else ()


def _integer_codes(w: jax.Array, step: jax.Array, n: int, n_neg: int | None = None) -> jax.Array:
  lo = n if n_neg is None else n_neg
  return jnp.clip(jnp.round(w / step), -lo, n).astype(jnp.int32)


def _no_state(w: jax.Array) -> PyTree:
  del w
  return {}


def _keep_state(state: PyTree, w: jax.Array) -> PyTree:
  del w
  return state


# ----------------------------------------------------------------------------------------
# Identity (kind 'none').


def identity_weight() -> WeightQuantizer:
  """No quantization: apply(w) = w (reported as 32 bits); `to_integer` is undefined."""

  def apply(params, state, w):
    del params, state
    return w

  def to_integer(params, state, w):
    raise NotImplementedError("the identity weight quantizer has no integer form")

  return WeightQuantizer(_no_state, _no_state, apply, _keep_state, to_integer, "none", 32,
                         "float", None)


# ----------------------------------------------------------------------------------------
# Calibrated uniform grids: uniform (max / percentile) and SAWB.


def _calibrated(kind: str, bits: int, clip_fn, per_channel: bool, power_of_two: bool,
                grid: str) -> WeightQuantizer:
  q_n, q_p = grid_codes(bits, grid)

  def step_of(w):
    axes = _channel_axes(w, per_channel)
    c = clip_fn(jnp.abs(w), axes)
    step = _positive(c / q_n)
    if power_of_two:
      step = _power_of_two_ceil(step)
    return jax.lax.stop_gradient(step.astype(w.dtype))

  def apply(params, state, w):
    del params, state
    return _round_clip_ste(w, step_of(w), q_p, n_neg=q_n)

  def to_integer(params, state, w):
    del params, state
    step = step_of(w)
    return _integer_codes(w, step, q_p, q_n), step

  return WeightQuantizer(_no_state, _no_state, apply, _keep_state, to_integer, kind, bits,
                         grid, q_n + q_p + 1)


def uniform(
    bits: int,
    per_channel: bool = False,
    clip: str = "max",
    percentile: float = 99.9,
    power_of_two: bool = False,
    grid: str = "symmetric",
) -> WeightQuantizer:
  """Signed uniform quantizer q(w) = Δ·clip(round(w/Δ), −Q_n, Q_p), Δ = c/Q_n.

  grid: 'symmetric' (Q_n = Q_p = 2^(b−1) − 1, Δ = c/n) or 'full' (Q_n = 2^(b−1),
  Q_p = Q_n − 1: one more negative level, so Δ = c/Q_n and positive values clip at c − Δ).
  c = max|w| (clip='max') or the `percentile`-th percentile of |w| (clip='percentile'),
  per tensor or per output channel, recomputed from `w` at every call (no gradient).
  power_of_two: round Δ up to the next power of two (hardware-friendly shift scales; makes
  the fake-quantized float forward exact, see `mdsnn_jax.quant.export`).
  bits in 2..16 (bits=1 has n = 0; use `ternary` for 1.58 bits).
  """
  bits = check_bits(bits, 2, MAX_BITS)
  grid = check_grid(grid)
  if clip not in CLIP_MODES:
    raise ValueError(f"unknown clip {clip!r}; allowed: {list(CLIP_MODES)}")
  percentile = float(percentile)
  if not 0.0 < percentile <= 100.0:
    raise ValueError(f"percentile must lie in (0, 100], got {percentile}")

  if clip == "max":
    clip_fn = lambda a, axes: jnp.max(a, axis=axes)
  else:
    clip_fn = lambda a, axes: jnp.percentile(a, percentile, axis=axes)
  return _calibrated("uniform", bits, clip_fn, per_channel, power_of_two, grid)


def sawb(bits: int, per_channel: bool = False, power_of_two: bool = False,
         grid: str = "symmetric") -> WeightQuantizer:
  """SAWB (SpQuant's 'asymm' variant): the uniform grid (see `uniform`, `grid` too) with
  clip c = 2·E|w|.

  Published for 4 and 8 bits; any bits in 2..16 is accepted.
  """
  bits = check_bits(bits, 2, MAX_BITS)
  grid = check_grid(grid)
  clip_fn = lambda a, axes: 2.0 * jnp.mean(a, axis=axes)
  return _calibrated("sawb", bits, clip_fn, per_channel, power_of_two, grid)


# ----------------------------------------------------------------------------------------
# LSQ: learned step size.


def lsq(bits: int, per_channel: bool = False, grid: str = "full") -> WeightQuantizer:
  """Learned step size quantization (Esser et al. 2020): q = Δ·clip(round(w/Δ), −Q_n, Q_p).

  grid: 'full' (the paper's: Q_n = 2^(b−1), Q_p = 2^(b−1) − 1, 2^b levels) or 'symmetric'
  (Q_n = Q_p = 2^(b−1) − 1; 2 bits is ternary).
  params = {'step': Δ} (scalar, or shape (C,) per channel), init 2·E|w|/√Q_p.
  Backward: dq/dw = 1[−Q_n < w/Δ < Q_p]; dq/dΔ = round(w/Δ) − w/Δ inside, −Q_n / +Q_p
  outside, multiplied by g = 1/√(N·Q_p), N = number of weights sharing one Δ. A missing
  'step', one of the wrong shape, or (outside jit) a non-positive one raises ValueError.
  """
  bits = check_bits(bits, 2, MAX_BITS)
  grid = check_grid(grid)
  q_n, q_p = grid_codes(bits, grid)

  def init_params(w):
    axes = _channel_axes(w, per_channel)
    step = 2.0 * jnp.mean(jnp.abs(w), axis=axes) / math.sqrt(q_p)
    return {"step": _positive(step).astype(w.dtype)}

  def apply(params, state, w):
    del state
    step = check_param(params, "step", _param_shape(w, per_channel), f"LSQ ({bits}-bit)")
    per_step = max(1, int(np.prod(jnp.shape(w))) // max(1, int(np.prod(jnp.shape(step)))))
    g = 1.0 / math.sqrt(per_step * q_p)
    # Forward value exactly `step`; backward scaled by g.
    step = jax.lax.stop_gradient(step) + g * (step - jax.lax.stop_gradient(step))
    return _round_clip_ste(w, step, q_p, inclusive=False, n_neg=q_n)

  def to_integer(params, state, w):
    del state
    step = check_param(params, "step", _param_shape(w, per_channel), f"LSQ ({bits}-bit)")
    return _integer_codes(w, step, q_p, q_n), step

  return WeightQuantizer(init_params, _no_state, apply, _keep_state, to_integer, "lsq", bits,
                         grid, q_n + q_p + 1)


# ----------------------------------------------------------------------------------------
# Ternary weight networks.


def _ternary_parts(w: jax.Array, ratio: float, per_channel: bool):
  a = jnp.abs(w)
  axes = _channel_axes(w, per_channel)
  thr = ratio * jnp.max(a, axis=axes, keepdims=per_channel)
  keep = a >= thr
  count = jnp.sum(keep, axis=axes)
  w_bar = jnp.sum(jnp.where(keep, a, 0.0), axis=axes) / jnp.maximum(count, 1)
  return keep, jax.lax.stop_gradient(w_bar.astype(w.dtype))


def ternary(ratio: float = 0.05, per_channel: bool = False) -> WeightQuantizer:
  """Ternary weights (TWN; SpQuant's r = 0.05): q = W̄·sign(w)·1[|w| ≥ Δ_w].

  Δ_w = r·max|w|, W̄ = mean(|w| : |w| ≥ Δ_w), per tensor or per output channel.
  Three levels: reported as 2 bits (log2 3 = 1.58 effective). STE: dq/dw = 1 everywhere.
  """
  ratio = float(ratio)
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"ternary ratio must lie in [0, 1), got {ratio}")

  def apply(params, state, w):
    del params, state
    keep, w_bar = _ternary_parts(w, ratio, per_channel)
    q = w_bar * jnp.sign(w) * keep.astype(w.dtype)
    return jax.lax.stop_gradient(q) + (w - jax.lax.stop_gradient(w))

  def to_integer(params, state, w):
    del params, state
    keep, w_bar = _ternary_parts(w, ratio, per_channel)
    return (jnp.sign(w) * keep).astype(jnp.int32), w_bar

  return WeightQuantizer(_no_state, _no_state, apply, _keep_state, to_integer, "ternary", 2,
                         "ternary", 3)


# ----------------------------------------------------------------------------------------
# MINT-style shared scale.


def mint_quantize(x: jax.Array, alpha: jax.Array, bits: int, squash: str = "tanh") -> jax.Array:
  """q(x) = α/n · round(clip(f(x)/α, −1, 1)·n), f = tanh (squash='tanh') or identity ('none').

  Computed as Δ·clip(round(f(x)/Δ), −n, n) with Δ = α/n (the same grid). α may be shared
  between a layer's weights and its membrane (call this with the same α; use squash='none'
  for membranes). Backward (STE): dq/dx = f'(x)·1[|f(x)| ≤ α];
  dq/dα = (round(f(x)/Δ) − f(x)/Δ)/n inside, ±1 outside (LSQ-style, no gradient scaling).
  With squash='tanh' the map is not idempotent (tanh(q) ≠ q); its outputs are fixed points
  of the grid projection (squash='none').
  """
  bits = check_bits(bits, 2, MAX_BITS)
  if squash not in SQUASHES:
    raise ValueError(f"unknown squash {squash!r}; allowed: {list(SQUASHES)}")
  n = signed_levels(bits)
  t = jnp.tanh(x) if squash == "tanh" else x
  step = jnp.asarray(alpha, x.dtype) / n
  return _round_clip_ste(t, step, n)


def mint(bits: int, per_channel: bool = False, squash: str = "tanh") -> WeightQuantizer:
  """MINT-style weight quantizer (see `mint_quantize`); params = {'alpha': α}.

  α is initialised to max|f(w)| (per tensor or per output channel), so nothing clips.
  """
  bits = check_bits(bits, 2, MAX_BITS)
  if squash not in SQUASHES:
    raise ValueError(f"unknown squash {squash!r}; allowed: {list(SQUASHES)}")
  n = signed_levels(bits)

  def squashed(w):
    return jnp.tanh(w) if squash == "tanh" else w

  def init_params(w):
    alpha = jnp.max(jnp.abs(squashed(w)), axis=_channel_axes(w, per_channel))
    return {"alpha": _positive(alpha).astype(w.dtype)}

  def apply(params, state, w):
    del state
    alpha = check_param(params, "alpha", _param_shape(w, per_channel), f"MINT ({bits}-bit)")
    return mint_quantize(w, alpha, bits, squash)

  def to_integer(params, state, w):
    del state
    alpha = check_param(params, "alpha", _param_shape(w, per_channel), f"MINT ({bits}-bit)")
    step = jnp.asarray(alpha, w.dtype) / n
    return _integer_codes(squashed(w), step, n), step

  return WeightQuantizer(init_params, _no_state, apply, _keep_state, to_integer, "mint", bits,
                         "symmetric", 2 * n + 1)


# ----------------------------------------------------------------------------------------
# LQ-Net: learned non-uniform levels.


def _all_codes(k: int, dtype) -> jax.Array:
  """All 2^K codes e ∈ {−1,+1}^K, shape (2^K, K)."""
  idx = np.arange(2**k)[:, None]
  return jnp.asarray(2 * ((idx >> np.arange(k)) & 1) - 1, dtype)


def lqnet_levels(basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sorted levels vᵀe of every channel and their codes.

  basis: (C, K). Returns levels (C, 2^K) ascending and codes (C, 2^K, K) with
  codes[c, i] @ basis[c] == levels[c, i].
  """
  if jnp.ndim(basis) != 2:
    raise ValueError(f"LQ-Net basis must have shape (C, K), got {jnp.shape(basis)}")
  codes = _all_codes(basis.shape[1], basis.dtype)
  raw = basis @ codes.T
  order = jnp.argsort(raw, axis=-1)
  return jnp.take_along_axis(raw, order, axis=-1), codes[order]


def lqnet_encode(w: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Nearest-level quantization with thresholds at the midpoints of the sorted levels.

  w: kernel (..., C); basis: (C, K). Returns (q same shape as w, codes (..., C, K)).
  Ties at a midpoint go to the lower level. No gradient (see `lqnet` for the STE).
  """
  if jnp.shape(w)[-1:] != jnp.shape(basis)[:1]:
    raise ValueError(
        f"LQ-Net basis of shape {jnp.shape(basis)} does not match kernel of shape {jnp.shape(w)}; "
        "need basis.shape[0] == w.shape[-1]")
  return _lqnet_encode(w, basis)


@jax.jit
def _lqnet_encode(w, basis):
  levels, codes = lqnet_levels(basis)
  mids = 0.5 * (levels[:, 1:] + levels[:, :-1])
  flat = w.reshape(-1, w.shape[-1]).T  # (C, N)
  method = "compare_all" if mids.shape[-1] <= 64 else "scan"
  idx = jax.vmap(lambda m, x: jnp.searchsorted(m, x, side="left", method=method))(mids, flat)
  q = jnp.take_along_axis(levels, idx, axis=-1)
  e = jax.vmap(lambda cd, i: cd[i])(codes, idx)  # (C, N, K)
  return q.T.reshape(w.shape), jnp.swapaxes(e, 0, 1).reshape(*w.shape, basis.shape[1])


def lqnet_init_basis(w: jax.Array, bits: int) -> jax.Array:
  """v_j = 2^j · 0.6745·√(2/n_in) / 2^(K−1), the same for every channel; shape (C, K)."""
  bits = check_bits(bits, 1, MAX_BITS)
  n_in = max(1, int(np.prod(jnp.shape(w)[:-1])))
  v = (2.0 ** np.arange(bits)) * 0.6745 * math.sqrt(2.0 / n_in) / 2.0 ** (bits - 1)
  return jnp.broadcast_to(jnp.asarray(v, w.dtype), (w.shape[-1], bits))


def qem_update(basis: jax.Array, w: jax.Array, delta: float = 1e-4, momentum: float = 0.9) -> jax.Array:
  """One quantization-error-minimisation step of LQ-Net, per output channel (pure).

  B = codes of the nearest levels of w under `basis`;
  v* = (BᵀB + δI)⁻¹(Bᵀx + δ·v_old);  v_new = momentum·v_old + (1 − momentum)·v*.
  Never increases the quantization MSE (for momentum in [0, 1], δ >= 0).
  """
  if not (math.isfinite(delta) and delta >= 0):
    raise ValueError(f"QEM delta must be a finite number >= 0, got {delta}")
  if not 0.0 <= momentum <= 1.0:
    raise ValueError(f"QEM momentum must lie in [0, 1], got {momentum}")
  if jnp.shape(w)[-1:] != jnp.shape(basis)[:1] or jnp.ndim(basis) != 2:
    raise ValueError(
        f"LQ-Net basis of shape {jnp.shape(basis)} does not match kernel of shape {jnp.shape(w)}; "
        "need basis of shape (w.shape[-1], K)")
  return _qem_update(jax.lax.stop_gradient(basis), jax.lax.stop_gradient(w), delta, momentum)


@jax.jit
def _qem_update(basis, w, delta, momentum):
  _, codes = _lqnet_encode(w, basis)
  k = basis.shape[1]
  b = jnp.moveaxis(codes.reshape(-1, w.shape[-1], k), 1, 0)  # (C, N, K)
  x = w.reshape(-1, w.shape[-1]).T  # (C, N)
  gram = jnp.einsum("cnk,cnj->ckj", b, b) + delta * jnp.eye(k, dtype=w.dtype)
  rhs = jnp.einsum("cnk,cn->ck", b, x) + delta * basis
  v_star = jnp.linalg.solve(gram, rhs[..., None])[..., 0]
  return momentum * basis + (1.0 - momentum) * v_star


def lqnet(bits: int, delta: float = 1e-4, momentum: float = 0.9) -> WeightQuantizer:
  """LQ-Net weight quantizer with K = bits basis values per output channel.

  state = {'basis': (C, K)} (not trained by gradient; `update_state` runs `qem_update`).
  Levels vᵀe, e ∈ {−1,+1}^K, nearest level. STE: dq/dw = 1 everywhere.
  Costs O(C·2^K) memory per call; `to_integer` raises NotImplementedError (non-uniform grid).
  """
  bits = check_bits(bits, 1, MAX_BITS)

  def init_state(w):
    return {"basis": lqnet_init_basis(w, bits)}

  def apply(params, state, w):
    del params
    q, _ = lqnet_encode(jax.lax.stop_gradient(w), state["basis"].astype(w.dtype))
    return jax.lax.stop_gradient(q) + (w - jax.lax.stop_gradient(w))

  def update_state(state, w):
    return {**state, "basis": qem_update(state["basis"], w, delta, momentum)}

  def to_integer(params, state, w):
    raise NotImplementedError("LQ-Net levels are non-uniform; there is no integer grid with one scale")

  return WeightQuantizer(_no_state, init_state, apply, update_state, to_integer, "lqnet", bits,
                         "learned", 2**bits)
