from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import quant as Q


def _conv(x, kernel, bias, strides=(1, 1), padding="SAME"):
  y = jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision=jax.lax.Precision.HIGHEST)
  return y + bias


def _bn_stats(rng, c):
  return dict(
      mean=rng.normal(0.0, 0.5, size=c).astype(np.float32),
      var=rng.uniform(0.2, 3.0, size=c).astype(np.float32),
      scale=rng.normal(1.0, 0.3, size=c).astype(np.float32),
      offset=rng.normal(0.0, 0.4, size=c).astype(np.float32),
  )


def _flax_bn(y, stats, use_scale=True, use_bias=True, eps=1e-5):
  bn = nn.BatchNorm(use_running_average=True, epsilon=eps, use_scale=use_scale, use_bias=use_bias)
  params = {}
  if use_scale:
    params["scale"] = stats["scale"]
  if use_bias:
    params["bias"] = stats["offset"]
  variables = {"params": params, "batch_stats": {"mean": stats["mean"], "var": stats["var"]}}
  return bn.apply(variables, y)


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("seed,shape,with_bias", [
    (0, (2, 7, 7, 3, 5, 3), True),
    (1, (3, 6, 5, 4, 8, 1), False),
    (2, (1, 9, 9, 2, 6, 5), True),
])
def test_conv_bn_equals_folded_conv(seed, shape, with_bias):
  b, h, w, cin, cout, k = shape
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
  kernel = jnp.asarray(rng.normal(0, 0.4, size=(k, k, cin, cout)), jnp.float32)
  bias = jnp.asarray(rng.normal(0, 0.3, size=cout), jnp.float32) if with_bias else None
  stats = _bn_stats(rng, cout)
  ref = _flax_bn(_conv(x, kernel, 0.0 if bias is None else bias), stats)
  k2, b2 = Q.fold_batchnorm(kernel, bias, stats["mean"], stats["var"], stats["scale"], stats["offset"])
  assert _rel_err(_conv(x, k2, b2), ref) < 1e-5


@pytest.mark.parametrize("use_scale,use_bias", [(True, True), (False, True), (True, False)])
def test_dense_bn_equals_folded_dense(use_scale, use_bias):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
  kernel = jnp.asarray(rng.normal(0, 0.4, size=(10, 7)), jnp.float32)
  bias = jnp.asarray(rng.normal(0, 0.3, size=7), jnp.float32)
  stats = _bn_stats(rng, 7)
  eps = 1e-3
  ref = _flax_bn(jnp.dot(x, kernel, precision="highest") + bias, stats, use_scale, use_bias, eps)
  k2, b2 = Q.fold_batchnorm(kernel, bias, stats["mean"], stats["var"], stats["scale"] if use_scale else None,
                            stats["offset"] if use_bias else None, eps=eps)
  assert _rel_err(jnp.dot(x, k2, precision="highest") + b2, ref) < 1e-5


def test_fold_formula_matches_numpy():
  rng = np.random.default_rng(4)
  kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  s = _bn_stats(rng, 4)
  k2, b2 = Q.fold_batchnorm(kernel, bias, s["mean"], s["var"], s["scale"], s["offset"], eps=1e-5)
  f = s["scale"] / np.sqrt(s["var"].astype(np.float64) + 1e-5)
  np.testing.assert_allclose(k2, kernel * f, rtol=1e-6)
  np.testing.assert_allclose(b2, s["offset"] + (bias - s["mean"]) * f, rtol=1e-6, atol=1e-7)


def test_quantize_folded_accumulator_scale():
  rng = np.random.default_rng(5)
  kernel = jnp.asarray(rng.normal(0, 0.3, size=(3, 3, 2, 4)), jnp.float32)
  bias = jnp.asarray(rng.normal(0, 2.0, size=4), jnp.float32)
  wq = Q.uniform(4, per_channel=True)
  kq, bq = Q.quantize_folded(kernel, bias, wq, {}, {}, bias_bits=16)
  np.testing.assert_array_equal(kq, wq.apply({}, {}, kernel))
  _, w_scale = wq.to_integer({}, {}, kernel)
  k = np.round(np.asarray(bias) / np.asarray(w_scale))
  np.testing.assert_allclose(bq, np.clip(k, -32767, 32767) * np.asarray(w_scale), rtol=1e-6)
  # the bias is an integer multiple of the weight scale
  ratio = np.asarray(bq, np.float64) / np.asarray(w_scale, np.float64)
  np.testing.assert_allclose(ratio, np.round(ratio), atol=1e-3)


def test_quantize_folded_own_grid_and_lqnet_fallback():
  rng = np.random.default_rng(6)
  kernel = jnp.asarray(rng.normal(0, 0.3, size=(5, 3)), jnp.float32)
  bias = jnp.asarray(rng.normal(0, 1.0, size=3), jnp.float32)
  step = np.max(np.abs(np.asarray(bias))) / 7
  want = step * np.round(np.asarray(bias) / step)
  _, own = Q.quantize_folded(kernel, bias, Q.uniform(4), {}, {}, bias_bits=4, bias_mode="own")
  np.testing.assert_allclose(own, want, rtol=1e-6)
  lq = Q.lqnet(2)
  _, fallback = Q.quantize_folded(kernel, bias, lq, {}, lq.init_state(kernel), bias_bits=4)
  np.testing.assert_allclose(fallback, want, rtol=1e-6)


def test_quantize_bias_saturates_and_has_ste():
  bias = jnp.asarray([0.3, -5.0, 9.0, 0.06], jnp.float32)
  scale = jnp.asarray([0.1, 0.1, 0.5, 0.02], jnp.float32)
  q, k = Q.quantize_bias(bias, scale, bits=4)
  np.testing.assert_array_equal(k, [3, -7, 7, 3])
  np.testing.assert_allclose(q, np.asarray(k) * np.asarray(scale), rtol=1e-6)
  g = jax.grad(lambda b: jnp.sum(Q.quantize_bias(b, scale, bits=4)[0]))(bias)
  np.testing.assert_array_equal(g, [1.0, 0.0, 0.0, 1.0])  # zero where the grid saturates


def test_bad_inputs_raise():
  kernel = jnp.ones((3, 4))
  with pytest.raises(ValueError, match=r"\(3,\)"):
    Q.fold_batchnorm(kernel, None, jnp.zeros(3), jnp.ones(4), None, None)
  with pytest.raises(ValueError, match="-1"):
    Q.fold_batchnorm(kernel, None, jnp.zeros(4), jnp.ones(4), None, None, eps=-1)
  with pytest.raises(ValueError, match=r"bias_bits.*2\.\.32.*got 33"):
    Q.quantize_folded(kernel, None, Q.uniform(4), {}, {}, bias_bits=33)
  with pytest.raises(ValueError, match="'weird'"):
    Q.quantize_folded(kernel, None, Q.uniform(4), {}, {}, bias_mode="weird")
