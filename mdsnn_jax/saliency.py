"""Input-gradient saliency and the saliency consistency of two models **[reconstruction]**.

The KD paper ("aligning features and saliency") reports that teacher and student come to
agree on which input pixels are salient, but its exact measure could not be read. The
measure here is our own reconstruction, built from standard parts:

Saliency of one image x (Simonyan et al. 2014, vanilla gradient), for the predicted class
c = argmax_k (1/T) Σ_t z_t,k(x) (the time-mean logits; fixed, not differentiated):

    g(x)     = ∂/∂x Σ_t z_t,c(x)                      (same shape as x)
    M[h, w]  = max_ch | Σ_τ g[τ, h, w, ch] |           (static x: no τ axis)

i.e. the gradient of the time-summed predicted logit; for event input [T, H, W, 2] the
gradient is summed (signed) over the frames τ first, so M is the sensitivity to a
perturbation held constant over time. Channels are reduced by the max of the absolute value
(Simonyan's choice; `reduce='sum'` sums them instead). Units: logit per unit of input.

SmoothGrad (Smilkov et al. 2017), optional: g is averaged over n noisy copies
x + ε, ε ~ N(0, σ²), σ = `sigma` · (max x − min x) per image, before the |·| and the channel
reduction; the class c stays the clean image's prediction.

Consistency of two models A and B over N images (maps flattened to P pixels):
- Spearman: ρ_n = Pearson correlation of the average ranks of M_A^(n) and M_B^(n) (ties get
  the mean of the ranks they span, as `scipy.stats.spearmanr`); the mean over images. A
  constant map has no ranking: its ρ_n is NaN and is left out of the mean.
- Top-k IoU: S^(n) = the ⌈k·P/100⌉ most salient pixels of a map (ties broken by pixel
  index); IoU_n = |S_A ∩ S_B| / |S_A ∪ S_B|; the mean over images.

Both are invariant to a positive scaling of either map, symmetric, and 1 for identical
maps. Everything is jax.numpy and traceable (no Flax): `apply_fn(images) -> logits`
([T, B, K] or [B, K]) may be any JAX callable, e.g.
`lambda x: model.apply(variables, x, train=False)`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("max", "sum")
DEFAULT_TOP_K = 10.0  # percent of pixels


class Consistency(NamedTuple):
  """Saliency consistency of two models over N images (see the module docstring).

  spearman: mean of the defined per-image ρ_n (NaN when none is defined).
  iou: mean top-k IoU. per_image_spearman / per_image_iou: float [N].
  spearman_defined: how many images had a ρ_n (both maps non-constant). k: the percent used.
  """
  spearman: float
  iou: float
  per_image_spearman: np.ndarray
  per_image_iou: np.ndarray
  spearman_defined: int
  k: float


# ----------------------------------------------------------------------------------------
# Validation.


def _check_images(images) -> None:
  shape, dtype = tuple(np.shape(images)), getattr(images, "dtype", None)
  if len(shape) not in (4, 5):
    raise ValueError(
        f"saliency needs an image input: static images [B, H, W, C] (4-d) or events "
        f"[B, T, H, W, C] (5-d); got shape {shape}")
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"saliency needs a floating-point image input (its gradient is taken); "
                     f"got dtype {dtype} for shape {shape}")


def check_k(k) -> float:
  """k as a float percentage; ValueError unless 0 < k ≤ 100."""
  if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not (
      0 < float(k) <= 100):
    raise ValueError(f"k must be a percentage of pixels in (0, 100], got {k!r}")
  return float(k)


def _check_maps(a, b) -> None:
  if np.shape(a) != np.shape(b) or np.ndim(a) < 2:
    raise ValueError(f"saliency maps must have the same shape [N, ...] with N images; got "
                     f"{np.shape(a)} and {np.shape(b)}")


# ----------------------------------------------------------------------------------------
# Saliency.


def predicted_class(logits: jax.Array) -> jax.Array:
  """argmax of the time-mean logits: [T, B, K] → [B] (int), or [B, K] → [B]."""
  logits = jnp.asarray(logits)
  return jnp.argmax(logits.mean(0) if logits.ndim == 3 else logits, axis=-1)


def input_gradient(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                   classes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(g, c): g = ∂ Σ_t z_t,c / ∂x per image (shape of `images`), c the class used [B].

  One forward and one backward (`jax.vjp`) for the whole batch; examples must not interact
  in `apply_fn` (eval mode), so the batch sum's gradient is each image's own gradient.
  classes: the class per image (default: the predicted one, `predicted_class`).
  """
  _check_images(images)
  logits, vjp = jax.vjp(apply_fn, images)
  b = images.shape[0]
  if logits.ndim not in (2, 3) or logits.shape[-2] != b:
    raise ValueError(f"apply_fn must return logits [T, B, K] or [B, K] with B = {b}; got "
                     f"shape {logits.shape}")
  c = predicted_class(logits) if classes is None else jnp.asarray(classes)
  # d(Σ_t z_t,c)/dz: one-hot of c on every timestep (the cotangent of the sum over t).
  cot = jnp.broadcast_to(jax.nn.one_hot(c, logits.shape[-1], dtype=logits.dtype), logits.shape)
  (g,) = vjp(cot)
  return g, c


def gradient_to_map(g: jax.Array, reduce: str = "max") -> jax.Array:
  """[B, H, W, C] or [B, T, H, W, C] gradient → map [B, H, W]: Σ over T (signed), |·|, then
  max (or sum) over channels."""
  if reduce not in REDUCTIONS:
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
  if g.ndim == 5:
    g = g.sum(1)
  a = jnp.abs(g)
  return a.max(-1) if reduce == "max" else a.sum(-1)


def saliency_maps(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array, *,
                  reduce: str = "max", smoothgrad_samples: int = 0, sigma: float = 0.15,
                  key: jax.Array | None = None) -> jax.Array:
  """Saliency maps M [B, H, W] of the predicted class (module docstring), ≥ 0.

  smoothgrad_samples: 0 for the plain gradient, n > 0 for SmoothGrad over n noisy copies
  with noise σ = sigma · (per-image input range), drawn from `key` (required then).
  Traceable: jit it with apply_fn closed over, e.g.
  `jax.jit(lambda v, x: saliency_maps(lambda im: model.apply(v, im), x))`.
  """
  _check_images(images)
  if reduce not in REDUCTIONS:
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
  n = smoothgrad_samples
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"smoothgrad_samples must be an int >= 0 (0: plain gradient), got {n!r}")
  if n == 0:
    return gradient_to_map(input_gradient(apply_fn, images)[0], reduce)
  if not (isinstance(sigma, (int, float, np.floating)) and math.isfinite(sigma) and sigma > 0):
    raise ValueError(f"sigma must be a positive fraction of the input range, got {sigma!r}")
  if key is None:
    raise ValueError("SmoothGrad (smoothgrad_samples > 0) needs a PRNG key: pass key=")
  _, classes = input_gradient(apply_fn, images)
  axes = tuple(range(1, images.ndim))
  span = images.max(axis=axes, keepdims=True) - images.min(axis=axes, keepdims=True)
  std = sigma * span

  def one(total, k):
    noisy = images + std * jax.random.normal(k, images.shape, images.dtype)
    return total + input_gradient(apply_fn, noisy, classes)[0], None

  total, _ = jax.lax.scan(one, jnp.zeros_like(images), jax.random.split(key, n))
  return gradient_to_map(total / n, reduce)


# ----------------------------------------------------------------------------------------
# Consistency.


def average_ranks(x: jax.Array) -> jax.Array:
  """1-based ranks along the last axis, ties given the mean of the ranks they span
  (`scipy.stats.rankdata(method='average')`): rank = (#{< x} + #{≤ x} + 1) / 2."""
  x = jnp.asarray(x)

  def one(v):
    s = jnp.sort(v)
    less = jnp.searchsorted(s, v, side="left")
    leq = jnp.searchsorted(s, v, side="right")
    return (less + leq + 1) / 2.0

  flat = x.reshape(-1, x.shape[-1])
  return jax.vmap(one)(flat).reshape(x.shape)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-image Spearman ρ of maps a, b [N, ...] (flattened per image): [N]; NaN where a
  map is constant."""
  _check_maps(a, b)
  n = np.shape(a)[0]
  ra = average_ranks(jnp.reshape(jnp.asarray(a), (n, -1)))
  rb = average_ranks(jnp.reshape(jnp.asarray(b), (n, -1)))
  ra = ra - ra.mean(-1, keepdims=True)
  rb = rb - rb.mean(-1, keepdims=True)
  den = jnp.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
  return jnp.where(den > 0, (ra * rb).sum(-1) / jnp.where(den > 0, den, 1.0), jnp.nan)


def top_k_mask(maps: jax.Array, k: float = DEFAULT_TOP_K) -> jax.Array:
  """Boolean [N, P]: the ⌈k·P/100⌉ largest pixels of each flattened map (ties: lower index)."""
  k = check_k(k)
  n = np.shape(maps)[0]
  flat = jnp.reshape(jnp.asarray(maps), (n, -1))
  p = flat.shape[1]
  m = min(p, max(1, math.ceil(k * p / 100.0 - 1e-9)))
  idx = jnp.argsort(-flat, axis=-1, stable=True)[:, :m]
  return jnp.zeros(flat.shape, bool).at[jnp.arange(n)[:, None], idx].set(True)


def top_k_iou(a: jax.Array, b: jax.Array, k: float = DEFAULT_TOP_K) -> jax.Array:
  """Per-image IoU of the top-k % pixel sets of maps a, b [N, ...]: [N] in [0, 1]."""
  k = check_k(k)
  _check_maps(a, b)
  ma, mb = top_k_mask(a, k), top_k_mask(b, k)
  inter = (ma & mb).sum(-1)
  union = (ma | mb).sum(-1)
  return inter / union


def consistency(maps_a: jax.Array, maps_b: jax.Array, k: float = DEFAULT_TOP_K) -> Consistency:
  """Mean Spearman ρ and mean top-k IoU of two models' maps [N, H, W] of the same images."""
  k = check_k(k)
  _check_maps(maps_a, maps_b)
  rho = np.asarray(spearman(maps_a, maps_b), np.float64)
  iou = np.asarray(top_k_iou(maps_a, maps_b, k), np.float64)
  defined = int(np.sum(~np.isnan(rho)))
  return Consistency(spearman=float(np.nanmean(rho)) if defined else float("nan"),
                     iou=float(iou.mean()), per_image_spearman=rho, per_image_iou=iou,
                     spearman_defined=defined, k=k)


def model_consistency(apply_a: Callable[[jax.Array], jax.Array],
                      apply_b: Callable[[jax.Array], jax.Array], images: jax.Array,
                      k: float = DEFAULT_TOP_K, **saliency_kwargs
                      ) -> tuple[Consistency, jax.Array, jax.Array]:
  """(consistency, maps of A, maps of B) of two models on the same images.

  saliency_kwargs go to `saliency_maps` (reduce, smoothgrad_samples, sigma, key; the same
  key for both models, so both see the same noise).
  """
  k = check_k(k)
  _check_images(images)
  ma = saliency_maps(apply_a, images, **saliency_kwargs)
  mb = saliency_maps(apply_b, images, **saliency_kwargs)
  return consistency(ma, mb, k), ma, mb
