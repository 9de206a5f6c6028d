from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import prune
from mdsnn_jax.neuron import lif_scan


def _np_gated_lif(x, prior, decay=0.5, theta=1.0):
  """NumPy reference: hard-reset LIF whose input at t ≥ 1 is gated by mean h_{t-1} ≥ prior."""
  t_steps, b, _, _, c = x.shape
  u = np.zeros(x.shape[1:], np.float64)
  h_prev = None
  spikes, membranes, masks = [], [], []
  for t in range(t_steps):
    m = np.ones((b, 1, 1, c)) if t == 0 else (h_prev.mean(axis=(1, 2), keepdims=True) >= prior)
    h = decay * u + m * x[t]
    s = (h >= theta).astype(np.float64)
    u = h * (1 - s)
    h_prev = h
    spikes.append(s)
    membranes.append(h)
    masks.append(m.reshape(b, c))
  return np.stack(spikes), np.stack(membranes), u, np.stack(masks)


def _currents(seed=0, shape=(5, 2, 3, 3, 4)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape) * 1.2


def test_membrane_prior_mask_matches_numpy():
  h = np.random.default_rng(0).normal(-0.8, 0.5, (3, 4, 4, 5)).astype(np.float32)
  m = prune.membrane_prior_mask(jnp.asarray(h), prior=-0.8)
  assert m.shape == (3, 1, 1, 5) and m.dtype == jnp.float32
  want = (h.mean(axis=(1, 2), keepdims=True) >= -0.8).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(m), want)
  assert 0 < want.sum() < want.size  # both branches exercised
  with pytest.raises(ValueError, match=r"\(5,\)"):
    prune.membrane_prior_mask(jnp.zeros(5))
  with pytest.raises(ValueError, match="nan"):
    prune.membrane_prior_mask(jnp.asarray(h), prior=float("nan"))


def test_prior_minus_inf_equals_lif_scan_exactly():
  x = _currents()
  for kw in (dict(), dict(reset="soft", decay=0.25, threshold=0.5)):
    s, h, u, m = prune.gated_lif_scan(x, prior=-jnp.inf, **kw)
    s_ref, h_ref, u_ref = lif_scan(x, **kw)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))
    np.testing.assert_array_equal(np.asarray(h), np.asarray(h_ref))
    np.testing.assert_array_equal(np.asarray(u), np.asarray(u_ref))
    np.testing.assert_array_equal(np.asarray(m), np.ones((5, 2, 4)))


def test_gated_lif_scan_matches_numpy_reference():
  x = _currents(1) - 0.5  # negative drift so that some channels fall below the prior
  for prior in (-0.8, -0.2):
    s, h, u, m = jax.jit(prune.gated_lif_scan)(x, prior=prior)  # traced prior
    s_ref, h_ref, u_ref, m_ref = _np_gated_lif(np.asarray(x, np.float64), prior)
    np.testing.assert_array_equal(np.asarray(m), m_ref)
    np.testing.assert_array_equal(np.asarray(s), s_ref)
    np.testing.assert_allclose(np.asarray(h), h_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(u), u_ref, rtol=1e-6, atol=1e-6)
    assert 0 < m_ref[1:].sum() < m_ref[1:].size  # gating actually happened


def test_gated_lif_scan_gradient_flows_and_validates():
  x = _currents(2)
  g = jax.grad(lambda c: prune.gated_lif_scan(c, prior=-0.5)[0].sum())(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  with pytest.raises(ValueError, match="sparkle"):
    prune.gated_lif_scan(x, reset="sparkle")
  with pytest.raises(ValueError, match=r"\(4, 3\)"):
    prune.gated_lif_scan(jnp.zeros((4, 3)))


def test_channel_gate_logits_matches_numpy():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  w = rng.normal(size=(4, 4)).astype(np.float32)
  b = rng.normal(size=4).astype(np.float32)
  pooled = x.mean(axis=(1, 2))
  soft = np.exp(pooled) / np.exp(pooled).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(prune.channel_gate_logits(x, w, b)), soft @ w + b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"\(3, 4\)"):
    prune.channel_gate_logits(x, w[:3], b)


def test_gate_mask_forward_and_ste_gradient():
  logits = jnp.array([-2.0, -0.1, 0.0, 0.3, 4.0])
  np.testing.assert_array_equal(np.asarray(prune.gate_mask(logits)), [0, 0, 0, 1, 1])
  g = jax.grad(lambda z: jnp.sum(prune.gate_mask(z) * jnp.arange(1.0, 6.0)))(logits)
  sig = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  np.testing.assert_allclose(np.asarray(g), sig * (1 - sig) * np.arange(1, 6), rtol=1e-5)
  assert np.all(np.asarray(g) != 0)


def test_mass_target_hand_example():
  # Peaks |y| per channel: sample 0: [4, 1, 3, 2] (shares .4 .1 .3 .2);
  # sorted 0(.4), 2(.3), 3(.2) -> cumulative .4, .7, .9 ≥ .85: keep 0, 2, 3.
  # sample 1: [0, 9, 1, 0] (shares 0 .9 .1 0): 1 alone reaches .9: keep channel 1.
  y = np.zeros((2, 2, 1, 4), np.float32)
  y[0, 0] = [4, -1, 0.5, 2]
  y[0, 1] = [1, 0.5, -3, 0]
  y[1, 1] = [0, -9, 1, 0]
  np.testing.assert_array_equal(np.asarray(prune.mass_target(y, 0.85)), [[1, 0, 1, 1], [0, 1, 0, 0]])
  np.testing.assert_array_equal(np.asarray(prune.mass_target(y, 0.4)), [[1, 0, 0, 0], [0, 1, 0, 0]])
  np.testing.assert_array_equal(np.asarray(prune.mass_target(y, 1.0)), [[1, 1, 1, 1], [0, 1, 1, 0]])
  with pytest.raises(ValueError, match="1.5"):
    prune.mass_target(y, 1.5)


def test_gate_bce_loss_matches_numpy():
  logits = np.array([[-1.0, 2.0], [0.5, -3.0]], np.float32)
  target = np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  want = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
  assert float(prune.gate_bce_loss(logits, target)) == pytest.approx(want, rel=1e-5)


def test_flops_formulas():
  assert prune.conv_flops(3, 4, 3, 5, 6) == 9 * 3 * 4 * 5 * 6
  assert prune.lif_flops(4, 5, 6) == 3 * 4 * 5 * 6
  assert prune.gate_flops(4, 4, 2, 2) == 16 + 12 + 16 + 8
  assert prune.prior_mask_flops(4, 2, 2) == 16 + 8
  assert prune.flops_reduction(100, 30, 5) == 0.65
  with pytest.raises(ValueError, match="0"):
    prune.conv_flops(0, 4, 3, 5, 5)
  with pytest.raises(ValueError, match="-1"):
    prune.flops_reduction(-1, 0)


def test_conv_lif_flops_hand_count():
  # Layer: C_in 2, C_out 3, k 3, 2x2 output; T 2, B 1.
  # Dense per (t, b): conv 9·2·3·4 = 216, LIF 3·3·4 = 36 -> 252; × 2 steps = 504.
  # t=0: all active: 252.  t=1: out [1,0,1] (2 ch), in [0,1] (1 ch): conv 9·1·2·4 = 72, LIF 3·2·4 = 24.
  out_masks = np.array([[[1, 1, 1]], [[1, 0, 1]]])
  in_masks = np.array([[[1, 1]], [[0, 1]]])
  r = prune.conv_lif_flops(out_masks, c_in=2, k=3, h_out=2, w_out=2, in_masks=in_masks, overhead_per_step=10)
  assert r["dense"] == 504 and r["active"] == 252 + 96 and r["gate"] == 20
  assert r["reduction"] == pytest.approx((504 - 348 - 20) / 504, rel=1e-12)
  # Without an input mask only the output channels count: t=1 conv 9·2·2·4 = 144.
  r2 = prune.conv_lif_flops(out_masks, c_in=2, k=3, h_out=2, w_out=2)
  assert r2["active"] == 252 + 144 + 24
  with pytest.raises(ValueError, match=r"\(2, 1, 2\)"):
    prune.conv_lif_flops(out_masks, c_in=2, k=3, h_out=2, w_out=2, in_masks=in_masks[..., :1])


def test_conv_lif_flops_from_gated_scan_masks():
  x = _currents(4) - 0.5
  _, _, _, masks = prune.gated_lif_scan(x, prior=-0.3)
  r = prune.conv_lif_flops(masks, c_in=4, k=3, h_out=3, w_out=3)
  frac = float(np.asarray(masks).mean())
  # Without an input mask active FLOPs are exactly proportional to the active output share.
  assert r["active"] == pytest.approx(frac * r["dense"], rel=1e-12)
  assert 0 < r["reduction"] < 1
