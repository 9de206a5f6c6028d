from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import lif_scan, lif_step
from mdsnn_jax.surrogate import get_surrogate, surrogate_grad


def numpy_lif(x, decay, threshold, reset):
  """Plain NumPy loop of SPEC §1 (the reference)."""
  u = np.zeros(x.shape[1:], np.float64)
  spikes, membranes = [], []
  for t in range(x.shape[0]):
    h = decay * u + x[t]
    s = (h >= threshold).astype(np.float64)
    if reset == "hard":
      u = h * (1 - s)
    elif reset == "soft":
      u = h - threshold * s
    else:
      u = h
    spikes.append(s)
    membranes.append(h)
  return np.stack(spikes), np.stack(membranes), u


@pytest.mark.parametrize("reset", ["hard", "soft", "none"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("decay", [0.0, 0.25, 0.5, 1.0])
def test_matches_numpy_loop(reset, per_channel, decay):
  rng = np.random.default_rng(hash((reset, per_channel, decay)) % 2**32)
  x = rng.normal(0.4, 0.8, size=(7, 3, 5, 6)).astype(np.float32)
  threshold = rng.uniform(0.3, 1.5, size=(6,)).astype(np.float32) if per_channel else 0.8
  s, h, u = lif_scan(jnp.asarray(x), decay=decay, threshold=threshold, reset=reset)
  rs, rh, ru = numpy_lif(x.astype(np.float64), decay, np.asarray(threshold, np.float64), reset)
  np.testing.assert_allclose(np.asarray(h), rh, rtol=1e-5, atol=1e-5)
  # A spike may differ only where h sits within float error of θ.
  near = np.abs(rh - np.broadcast_to(threshold, rh.shape)) < 1e-4
  assert np.all((np.asarray(s) == rs) | near)
  np.testing.assert_allclose(np.asarray(u), ru, rtol=1e-5, atol=1e-5)
  assert s.shape == h.shape == x.shape and u.shape == x.shape[1:]


def test_u0_and_membrane_quantizer_hook():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
  u0 = jnp.full((4,), 0.3)
  seen = []

  def quant(u):
    seen.append(u.shape)
    return jnp.round(u * 4) / 4

  s, h, u = lif_scan(x, u0=u0, membrane_quantizer=quant)
  assert seen  # the hook was traced inside the scan
  np.testing.assert_allclose(np.asarray(h[0]), 0.5 * 0.3 + np.asarray(x[0]), rtol=1e-6)
  # The stored state is on the quantizer's grid; h is the pre-reset value built from it.
  np.testing.assert_allclose(np.asarray(u) * 4, np.round(np.asarray(u) * 4), atol=1e-6)


def test_gradient_flows_through_time():
  x = jnp.asarray([[0.6], [0.3], [0.4], [0.2]], jnp.float32)
  loss = lambda c: lif_scan(c, decay=0.9, threshold=1.0)[0][2:].sum()
  g = jax.grad(loss)(x)
  assert float(jnp.abs(g[0, 0])) > 0, "later spikes depend on currents[0]"


@pytest.mark.parametrize("detach", [False, True])
def test_detach_reset_gradient_is_analytic(detach):
  # h_0 = x_0 fires (x_0 > θ), u_0 = h_0 (1 − s_0), h_1 = λ u_0 + x_1.
  # dh_1/dx_0 = λ (1 − s_0 − h_0 · H'(h_0 − θ))   or   λ (1 − s_0) with detach_reset.
  lam, theta, x0 = 0.5, 1.0, 1.2
  x = jnp.asarray([[x0], [0.1]], jnp.float32)
  g = jax.grad(lambda c: lif_scan(c, decay=lam, threshold=theta, detach_reset=detach)[1][1].sum())(x)
  sg = float(surrogate_grad("arctan", jnp.float32(x0 - theta)))
  expected = lam * (1 - 1.0) if detach else lam * (1 - 1.0 - x0 * sg)
  np.testing.assert_allclose(float(g[0, 0]), expected, rtol=1e-6, atol=1e-7)


def test_learnable_per_channel_threshold_gets_gradient():
  x = jnp.asarray(np.random.default_rng(1).normal(0.5, 1.0, size=(6, 8, 3)).astype(np.float32))
  th = jnp.asarray([0.5, 1.0, 1.5])
  g = jax.grad(lambda t: lif_scan(x, threshold=t, reset="soft")[0].mean())(th)
  assert g.shape == (3,) and np.all(np.asarray(g) < 0), "raising θ lowers the spike count"


def test_lif_step_matches_scan():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32))
  spike = get_surrogate("arctan")
  u = jnp.zeros(4)
  s_all, h_all, _ = lif_scan(x)
  for t in range(3):
    u, s, h = lif_step(u, x[t], decay=0.5, threshold=1.0, spike_fn=spike)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_all[t]))
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_all[t]))


def test_jit_vmap_grad_compose():
  x = jnp.asarray(np.random.default_rng(3).normal(0.5, 1, size=(4, 5, 2, 3)).astype(np.float32))

  def loss(c):
    s, h, _ = lif_scan(c, surrogate="sigmoid")
    return (s * h).sum()

  per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=1, out_axes=1))(x)
  whole = jax.grad(loss)(x)
  np.testing.assert_allclose(np.asarray(per_example), np.asarray(whole), rtol=1e-5, atol=1e-6)


def test_bf16_in_bf16_out():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 2, 3)), jnp.bfloat16)
  s, h, u = lif_scan(x, threshold=jnp.ones(3))
  assert s.dtype == h.dtype == u.dtype == jnp.bfloat16
  g = jax.grad(lambda c: lif_scan(c)[0].astype(jnp.float32).sum())(x)
  assert g.dtype == jnp.bfloat16


def test_callable_surrogate_and_unroll():
  x = jnp.asarray(np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32))
  a = lif_scan(x, surrogate=get_surrogate("triangle"), unroll=4)
  b = lif_scan(x, surrogate="triangle")
  for p, q in zip(a, b):
    np.testing.assert_allclose(np.asarray(p), np.asarray(q))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(decay=1.5), "1.5"),
    (dict(decay=-0.1), "-0.1"),
    (dict(threshold=0.0), "0.0"),
    (dict(threshold=-2.0), "-2.0"),
    (dict(threshold=np.array([1.0, -1.0, 1.0])), "-1."),
    (dict(threshold=np.ones(4)), r"\(4,\)"),
    (dict(reset="soft-ish"), "soft-ish"),
    (dict(surrogate="nope"), "nope"),
])
def test_bad_inputs_name_the_value(kwargs, pattern):
  x = jnp.zeros((2, 5, 3))
  with pytest.raises(ValueError, match=pattern):
    lif_scan(x, **kwargs)


def test_integer_currents_rejected():
  with pytest.raises(ValueError, match="int32"):
    lif_scan(jnp.zeros((2, 3), jnp.int32))


def test_traced_decay_and_threshold_skip_concrete_checks():
  x = jnp.ones((3, 2))
  f = jax.jit(lambda d, t: lif_scan(x, decay=d, threshold=t)[1])
  np.testing.assert_allclose(np.asarray(f(0.5, 2.0))[:, 0], [1.0, 1.5, 0.0 + 1.75])
