"""Apply a per-sample function on the merged time·batch axis (SpikingJelly's SeqToANNContainer).

    y = merge_time(f)(x)      x [T, B, ...] -> f(x as [T·B, ...]) -> y [T, B, ...]

Layers without state over time (conv, dense, pooling, batch norm over T·B) need no scan:
one call on T·B rows runs them for every step at once. Pure JAX: f may be any function or a
Flax module called inside a parent's `__call__`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax


def merge_time(f: Callable[..., Any]) -> Callable[..., Any]:
  """g(x, *args, **kwargs) = split(f(merge(x), *args, **kwargs)).

  merge: [T, B, ...] -> [T·B, ...] (row t·B + b is step t, sample b); split undoes it on
  every array leaf of f's output, whose leading axis must be T·B (ValueError otherwise).
  Only x is merged; other arguments are passed through unchanged.
  """
  if not callable(f):
    raise ValueError(f"merge_time needs a callable f, got {f!r}")

  def g(x, *args, **kwargs):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
      raise ValueError(f"merge_time input x must be time-major [T, B, ...] (ndim >= 2), got "
                       f"shape {shape}")
    t, b = shape[:2]
    y = f(x.reshape((t * b,) + tuple(shape[2:])), *args, **kwargs)

    def split(leaf):
      lead = getattr(leaf, "shape", ())[:1]
      if lead != (t * b,):
        raise ValueError(f"merge_time: {getattr(f, '__name__', type(f).__name__)} returned a leaf "
                         f"of shape {getattr(leaf, 'shape', ())}; its leading axis must be T·B = "
                         f"{t * b} to split back into [T={t}, B={b}, ...]")
      return leaf.reshape((t, b) + tuple(leaf.shape[1:]))

    return jax.tree_util.tree_map(split, y)

  return g
