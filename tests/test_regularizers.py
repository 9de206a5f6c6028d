"""Firing regularisers against NumPy formulas, their gradients and the return convention."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import regularizers as R
from mdsnn_jax.neuron import lif_scan


def _taps(seed=0):
  rng = np.random.default_rng(seed)
  a = (rng.random((4, 3, 5)) < 0.3).astype(np.float32)
  b = (rng.random((4, 3, 2, 2, 3)) < 0.1).astype(np.float32)
  b[..., 0] = 0.0  # a silent channel
  # Flax's sow layout: {module path: {'s': (array,)}}, flattened to 'block/l2'.
  return {"l1": jnp.asarray(a), "block": {"l2": {"s": (jnp.asarray(b),)}}}, a, b


def _np_rates(s):
  return s.reshape(s.shape[0], s.shape[1], -1).mean(axis=(0, 1))


def test_rate_target_matches_numpy():
  taps, a, b = _taps()
  loss, terms = R.rate_target_loss(taps, 0.2, return_terms=True)
  ref = {"l1": np.mean((_np_rates(a) - 0.2) ** 2), "block/l2": np.mean((_np_rates(b) - 0.2) ** 2)}
  assert set(terms) == set(ref)
  for k in ref:
    np.testing.assert_allclose(float(terms[k]), ref[k], rtol=1e-6)
  np.testing.assert_allclose(float(loss), np.mean(list(ref.values())), rtol=1e-6)
  layer = R.rate_target_loss(taps["l1"], 0.2, mode="layer")
  np.testing.assert_allclose(float(layer), (a.mean() - 0.2) ** 2, rtol=1e-6)


@pytest.mark.parametrize("order", [1, 2])
def test_spike_count_matches_numpy(order):
  taps, a, b = _taps(1)
  counts = lambda s: s.sum(0).reshape(s.shape[1], -1)  # noqa: E731
  ref = np.mean([np.mean(counts(s) ** order) for s in (a, b)])
  np.testing.assert_allclose(float(R.spike_count_loss(taps, order=order)), ref, rtol=1e-6)


def test_silent_neuron_penalty_matches_numpy():
  taps, a, b = _taps(2)
  r_min = 0.15
  ref = np.mean([np.mean(np.maximum(0, r_min - _np_rates(s)) ** 2) for s in (a, b)])
  got = R.silent_neuron_loss(taps, r_min)
  np.testing.assert_allclose(float(got), ref, rtol=1e-6)
  # A fully silent layer costs exactly r_min².
  np.testing.assert_allclose(float(R.silent_neuron_loss(jnp.zeros((2, 2, 4)), r_min)), r_min**2,
                             rtol=1e-6)


def test_gradients_flow_through_the_surrogate():
  x = jax.random.normal(jax.random.key(0), (4, 8, 6))

  def loss(scale):
    s, _, _ = lif_scan(x * scale)
    return (R.rate_target_loss(s, 0.05) + R.spike_count_loss(s, order=2)
            + R.silent_neuron_loss({"lif": s}, 0.5))

  g = jax.grad(loss)(1.0)
  assert np.isfinite(float(g)) and float(g) != 0.0
  # Analytic check of the chain rule on rates: d/dr (r − ρ)² = 2(r − ρ), by finite
  # differences on a continuous "spike" array (the losses are plain functions of s).
  s = jax.random.uniform(jax.random.key(1), (3, 2, 4))
  gs = jax.grad(lambda s: R.rate_target_loss(s, 0.3, mode="layer"))(s)
  np.testing.assert_allclose(np.asarray(gs), 2 * (float(s.mean()) - 0.3) / s.size, rtol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: R.rate_target_loss(jnp.zeros((2, 2)), 1.5), "target"),
    (lambda: R.rate_target_loss(jnp.zeros((2, 2)), 0.1, mode="x"), "mode"),
    (lambda: R.spike_count_loss(jnp.zeros((2, 2)), order=3), "order"),
    (lambda: R.silent_neuron_loss(jnp.zeros((2, 2)), 0.0), "min_rate"),
    (lambda: R.silent_neuron_loss(jnp.zeros((2,)), 0.1), "ndim"),
    (lambda: R.spike_count_loss(jnp.full((2, 2), 0.5)), "non-binary"),
])
def test_bad_arguments_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()
