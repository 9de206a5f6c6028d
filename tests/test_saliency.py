"""Tests of input-gradient saliency and saliency consistency (mdsnn_jax/saliency.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mdsnn_jax import saliency as sal

T, K = 3, 5


# ----------------------------------------------------------------------------------------
# A smooth model where finite differences are valid: z_t = tanh(W_t · vec(x) + b_t).


def _weights(in_dim, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(0, 0.4, (T, in_dim, K)), rng.normal(0, 0.1, (T, K))


def _static_np(w, b, x):
  """float64 NumPy reference: x [B, H, W, C] → logits [T, B, K]."""
  flat = x.reshape(x.shape[0], -1)
  return np.tanh(np.einsum("bi,tik->tbk", flat, w) + b[:, None])


def _static_jax(w, b):
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  return lambda x: jnp.tanh(jnp.einsum("bi,tik->tbk", x.reshape(x.shape[0], -1), w) + b[:, None])


def _events_np(w, b, x):
  """x [B, T, H, W, C]: frame t feeds only timestep t."""
  flat = x.reshape(x.shape[0], x.shape[1], -1)
  return np.tanh(np.einsum("bti,tik->tbk", flat, w) + b[:, None])


def _events_jax(w, b):
  w, b = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
  return lambda x: jnp.tanh(
      jnp.einsum("bti,tik->tbk", x.reshape(x.shape[:2] + (-1,)), w) + b[:, None])


def _fd_maps(f, x, reduce="max", eps=1e-5):
  """Central finite differences of Σ_t z_t,c (c: the predicted class), float64, then the
  documented map: Σ over event frames, |·|, max / sum over channels."""
  c = np.argmax(f(x).mean(0), -1)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape[1:]):
    for n in range(x.shape[0]):
      xp, xm = x.copy(), x.copy()
      xp[(n,) + i] += eps
      xm[(n,) + i] -= eps
      g[(n,) + i] = (f(xp)[:, n, c[n]].sum() - f(xm)[:, n, c[n]].sum()) / (2 * eps)
  if g.ndim == 5:
    g = g.sum(1)
  return np.abs(g).max(-1) if reduce == "max" else np.abs(g).sum(-1)


@pytest.mark.parametrize("reduce", ["max", "sum"])
def test_saliency_equals_finite_differences_static(reduce):
  x = np.random.default_rng(1).uniform(0, 1, (3, 4, 4, 2))
  w, b = _weights(32)
  got = sal.saliency_maps(_static_jax(w, b), jnp.asarray(x, jnp.float32), reduce=reduce)
  want = _fd_maps(lambda v: _static_np(w, b, v), x, reduce)
  assert got.shape == (3, 4, 4)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  assert want.max() > 0.05  # the maps are not trivially zero


def test_saliency_equals_finite_differences_events():
  x = np.random.default_rng(2).uniform(0, 1, (2, T, 4, 4, 2))
  w, b = _weights(32, seed=3)
  got = sal.saliency_maps(_events_jax(w, b), jnp.asarray(x, jnp.float32))
  want = _fd_maps(lambda v: _events_np(w, b, v), x)
  assert got.shape == (2, 4, 4)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_predicted_class_and_two_dim_logits():
  x = np.random.default_rng(4).uniform(0, 1, (4, 4, 4, 2))
  w, b = _weights(32, seed=5)
  f3 = _static_jax(w, b)
  g, c = sal.input_gradient(f3, jnp.asarray(x, jnp.float32))
  np.testing.assert_array_equal(c, np.argmax(_static_np(w, b, x).mean(0), -1))
  # [B, K] logits: the time-summed model as one logit vector gives the same gradient.
  g2, c2 = sal.input_gradient(lambda v: f3(v).sum(0), jnp.asarray(x, jnp.float32))
  np.testing.assert_array_equal(c, c2)
  np.testing.assert_allclose(g, g2, rtol=1e-5, atol=1e-6)
  # Explicit classes are used as given.
  other = (c + 1) % K
  _, c3 = sal.input_gradient(f3, jnp.asarray(x, jnp.float32), other)
  np.testing.assert_array_equal(c3, other)


@pytest.mark.integration
def test_smoothgrad():
  x = jnp.asarray(np.random.default_rng(6).uniform(0, 1, (2, 4, 4, 2)), jnp.float32)
  w, b = _weights(32, seed=7)
  key = jax.random.PRNGKey(0)
  # A linear model has the same gradient everywhere: SmoothGrad = the plain gradient.
  lin = lambda v: jnp.einsum("bi,tik->tbk", v.reshape(v.shape[0], -1), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(sal.saliency_maps(lin, x, smoothgrad_samples=8, sigma=0.3, key=key),
                             sal.saliency_maps(lin, x), rtol=1e-5, atol=1e-6)
  f = _static_jax(w, b)
  plain = np.asarray(sal.saliency_maps(f, x))
  tiny = sal.saliency_maps(f, x, smoothgrad_samples=4, sigma=1e-4, key=key)
  np.testing.assert_allclose(tiny, plain, rtol=1e-2, atol=1e-3)
  big = sal.saliency_maps(f, x, smoothgrad_samples=4, sigma=0.5, key=key)
  assert np.abs(np.asarray(big) - plain).max() > 1e-2
  np.testing.assert_array_equal(big, sal.saliency_maps(f, x, smoothgrad_samples=4, sigma=0.5, key=key))
  # Traceable under jit with the model closed over.
  jitted = jax.jit(lambda v, k: sal.saliency_maps(f, v, smoothgrad_samples=4, sigma=0.5, key=k))
  np.testing.assert_allclose(jitted(x, key), big, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="PRNG key"):
    sal.saliency_maps(f, x, smoothgrad_samples=2)
  with pytest.raises(ValueError, match="sigma"):
    sal.saliency_maps(f, x, smoothgrad_samples=2, sigma=0.0, key=key)
  with pytest.raises(ValueError, match="smoothgrad_samples"):
    sal.saliency_maps(f, x, smoothgrad_samples=-1)


# ----------------------------------------------------------------------------------------
# A spiking model of the library: the batched saliency (one vjp) equals each image's own
# jax.grad of its time-summed predicted logit through the surrogate gradient.


@pytest.mark.integration
@pytest.mark.parametrize("events", [False, True])
def test_spiking_model_saliency_matches_per_image_grad(events):
  from mdsnn_jax import nn as nn_lib

  model = nn_lib.create_model({"name": "digits_cnn", "timesteps": 2, "width": 0.5}, 10)
  shape = (3, 2, 8, 8, 2) if events else (3, 8, 8, 1)
  x = jnp.asarray(np.random.default_rng(8).uniform(0, 1, shape), jnp.float32)
  variables = nn_lib.init_variables(model, jax.random.PRNGKey(0), x[:1])
  apply_fn = lambda v: model.apply(variables, v, train=False)
  maps = np.asarray(jax.jit(lambda v: sal.saliency_maps(apply_fn, v))(x))
  assert maps.shape == (3, 8, 8)
  for n in range(3):
    c = int(jnp.argmax(apply_fn(x[n:n + 1]).mean(0)[0]))
    g = jax.grad(lambda v: apply_fn(v[None])[:, 0, c].sum())(x[n])
    if events:
      g = g.sum(0)
    np.testing.assert_allclose(maps[n], np.abs(np.asarray(g)).max(-1), rtol=1e-4, atol=1e-6)
    assert maps[n].max() > 0  # the surrogate gradient reaches the input


# ----------------------------------------------------------------------------------------
# Consistency.


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(9)
  a = rng.integers(0, 5, (6, 7, 7)).astype(np.float32)  # many ties
  b = (a + rng.integers(0, 3, a.shape)).astype(np.float32)
  c = rng.normal(size=a.shape).astype(np.float32)
  for x, y in ((a, b), (a, c), (c, c[::-1])):
    want = [scipy.stats.spearmanr(x[n].ravel(), y[n].ravel()).statistic for n in range(len(x))]
    np.testing.assert_allclose(sal.spearman(x, y), want, rtol=0, atol=1e-5)
  np.testing.assert_allclose(sal.average_ranks(a.reshape(6, -1)),
                             np.stack([scipy.stats.rankdata(r) for r in a.reshape(6, -1)]))


@pytest.mark.integration
def test_consistency_identical_symmetric_scale_invariant():
  rng = np.random.default_rng(10)
  a = rng.uniform(0, 1, (8, 6, 6)).astype(np.float32)
  b = (a + rng.normal(0, 0.3, a.shape)).astype(np.float32)
  same = sal.consistency(a, a)
  assert same.spearman == pytest.approx(1.0, abs=1e-6) and same.iou == 1.0
  assert same.spearman_defined == 8 and same.k == 10.0
  ab, ba = sal.consistency(a, b, k=20), sal.consistency(b, a, k=20)
  assert ab.spearman == pytest.approx(ba.spearman, abs=1e-7) and ab.iou == ba.iou
  assert 0 < ab.spearman < 0.99 and 0 < ab.iou < 1  # a real, partial agreement
  for sa, sb in ((3.0, 1.0), (1.0, 0.01), (250.0, 7.0)):
    scaled = sal.consistency(sa * a, sb * b, k=20)
    assert scaled.spearman == pytest.approx(ab.spearman, abs=1e-6)
    assert scaled.iou == ab.iou
  # With a model: the same function twice is perfectly consistent with itself.
  w, bias = _weights(32, seed=11)
  x = jnp.asarray(rng.uniform(0, 1, (4, 4, 4, 2)), jnp.float32)
  f = _static_jax(w, bias)
  res, ma, mb = sal.model_consistency(f, lambda v: 2.0 * f(v), x)
  assert res.spearman == pytest.approx(1.0, abs=1e-6) and res.iou == 1.0
  np.testing.assert_allclose(mb, 2 * ma, rtol=1e-6)


def test_top_k_iou_disjoint_partial_and_by_hand():
  p = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
  # Top 10 % of p: pixels 90..99; of -p: pixels 0..9. Disjoint.
  assert float(sal.top_k_iou(p, -p)[0]) == 0.0
  assert sal.consistency(p, -p).iou == 0.0
  # Rolled by 5 (q[i] = p[i − 5 mod 100]): top 10 % sets {90..99} and {95..99, 0..4} share
  # 5 of 15 pixels.
  q = np.roll(p.ravel(), 5).reshape(p.shape)
  assert float(sal.top_k_iou(p, q)[0]) == pytest.approx(5 / 15)
  # k = 100: every pixel in both sets.
  assert float(sal.top_k_iou(p, -p, k=100)[0]) == 1.0
  # ⌈k·P/100⌉ pixels, at least one.
  assert int(sal.top_k_mask(p, k=0.5).sum()) == 1
  assert int(sal.top_k_mask(p, k=25).sum()) == 25
  assert int(sal.top_k_mask(p, k=2.5).sum()) == 3


def test_constant_map_has_no_spearman():
  a = np.zeros((2, 3, 3), np.float32)
  b = np.random.default_rng(12).uniform(size=(2, 3, 3)).astype(np.float32)
  a[1] = b[1]
  res = sal.consistency(a, b)
  assert np.isnan(res.per_image_spearman[0]) and res.spearman_defined == 1
  assert res.spearman == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("k", [0, -5, 100.5, 1000, True, "10", None])
def test_bad_k(k):
  a = np.ones((1, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"k must be a percentage of pixels in \(0, 100\]"):
    sal.consistency(a, a, k=k)
  with pytest.raises(ValueError, match="k must be a percentage"):
    sal.top_k_iou(a, a, k=k)
  f = lambda v: v.reshape(v.shape[0], -1)
  with pytest.raises(ValueError, match="k must be a percentage"):
    sal.model_consistency(f, f, jnp.ones((1, 2, 2, 1)), k=k)


def test_bad_inputs():
  f = lambda v: v.reshape(v.shape[0], -1)[:, :3]
  with pytest.raises(ValueError, match=r"image input.*\[B, H, W, C\].*got shape \(3, 32\)"):
    sal.saliency_maps(f, jnp.ones((3, 32)))
  with pytest.raises(ValueError, match=r"got shape \(2, 1, 3, 4, 4, 2\)"):
    sal.saliency_maps(f, jnp.ones((2, 1, 3, 4, 4, 2)))
  with pytest.raises(ValueError, match="floating-point.*int32"):
    sal.saliency_maps(f, jnp.ones((2, 4, 4, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"image input.*got shape \(5,\)"):
    sal.model_consistency(f, f, jnp.ones((5,)))
  with pytest.raises(ValueError, match=r"logits \[T, B, K\] or \[B, K\] with B = 2.*\(3,\)"):
    sal.saliency_maps(lambda v: jnp.ones(3) * v.sum(), jnp.ones((2, 4, 4, 1)))
  with pytest.raises(ValueError, match="reduce"):
    sal.saliency_maps(f, jnp.ones((2, 4, 4, 1)), reduce="mean")
  with pytest.raises(ValueError, match="same shape"):
    sal.consistency(np.ones((2, 3, 3)), np.ones((2, 3, 4)))
