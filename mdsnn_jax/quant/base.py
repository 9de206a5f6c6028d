"""The two quantizer contracts every quantizer in `mdsnn_jax.quant` implements.

They are plain tuples of pure functions (like optax's `GradientTransformation`), so a
quantizer can be used from any JAX code; the Flax layers in `mdsnn_jax.nn` store
`params` in the 'params' collection (trained by gradient) and `state` in the
'quant_state' collection (updated outside the gradient, like batch-norm statistics).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

PyTree = Any


class WeightQuantizer(NamedTuple):
  """A fake-quantizer for a weight tensor (output channels on the last axis).

  init_params(w) -> params     learnable pytree (may be {}), trained by gradient.
  init_state(w) -> state       non-gradient pytree (may be {}), e.g. LQ-Net's basis.
  apply(params, state, w) -> w_q   fake-quantized float weights, same shape and dtype,
                               straight-through gradient to `w` (and to `params`).
  update_state(state, w) -> state  one non-gradient update (LQ-Net's QEM step); identity
                               for quantizers without state. Called on stop_gradient(w).
  to_integer(params, state, w) -> (int_w, scale)   integer codes (int32) and the
                               per-output-channel (or scalar) float scale such that
                               apply(...) == int_w * scale. Raises NotImplementedError
                               for non-uniform grids (LQ-Net).
  grid: the integer grid: 'symmetric' (codes −n … n, n = 2^(b−1) − 1), 'full'
        (−2^(b−1) … 2^(b−1) − 1), 'ternary', 'learned' (LQ-Net) or 'float' (identity).
  levels: the number of values a weight can take (None for 'float'); the stored bits are
        ⌈log2 levels⌉ (`quant.grid_info`).
  """
  init_params: Callable[[jax.Array], PyTree]
  init_state: Callable[[jax.Array], PyTree]
  apply: Callable[[PyTree, PyTree, jax.Array], jax.Array]
  update_state: Callable[[PyTree, jax.Array], PyTree]
  to_integer: Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, jax.Array]]
  kind: str
  bits: int
  grid: str = "symmetric"
  levels: int | None = None


class MembraneQuantizer(NamedTuple):
  """A quantizer of the stored membrane state u_t (after reset).

  init_params() -> params      learnable pytree (may be {}), e.g. a learned clip range.
  apply(params, u) -> u_q      quantized membrane, same shape and dtype, with the
                               quantizer's surrogate backward. Plug into
                               `lif_scan(membrane_quantizer=functools.partial(mq.apply, params))`.
  levels: the sorted float levels of the grid (a tuple).
  effective_bits: log2(len(levels)).
  """
  init_params: Callable[[], PyTree]
  apply: Callable[[PyTree, jax.Array], jax.Array]
  levels: tuple
  effective_bits: float
  kind: str
