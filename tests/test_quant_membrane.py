from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdsnn_jax import lif_scan
from mdsnn_jax import quant as Q


def _u(seed=0, shape=(4, 5, 6), low=-5.0, high=3.0):
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, size=shape), jnp.float32)


def _np_nearest(u, levels):
  """Nearest level; a tie goes to the level of smaller magnitude."""
  levels = np.asarray(levels, np.float64)
  u = np.asarray(u, np.float64)
  d = np.abs(u[..., None] - levels)
  best = d.min(axis=-1, keepdims=True)
  cand = np.where(d == best, np.abs(levels), np.inf)
  return levels[np.argmin(cand, axis=-1)]


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("lower,levels", [(-1, (-1, 0, 1)), (-3, (-3, -2, -1, 0, 1)), (0, (0, 1))])
def test_integer_levels_and_bits(lower, levels):
  mq = Q.integer_membrane(lower=lower)
  assert mq.levels == tuple(float(v) for v in levels)
  assert mq.effective_bits == pytest.approx(math.log2(len(levels)))
  assert Q.ternary_membrane().effective_bits == pytest.approx(1.58496, abs=1e-5)


def test_integer_levels_with_other_step():
  assert Q.integer_levels(-1.0, 0.5, 1.0) == (-1.0, -0.5, 0.0, 0.5, 1.0)
  assert Q.integer_levels(-2.0, 1.0, 2.0) == (-2.0, -1.0, 0.0, 1.0, 2.0)


@pytest.mark.integration
@pytest.mark.parametrize("lower", [-1, -3])
def test_integer_forward_is_nearest_level_of_clip(lower):
  mq = Q.integer_membrane(lower=lower)
  u = np.concatenate([np.asarray(_u(1)).ravel(), [-0.5, 0.5, -1.5, -2.5, 1.5, 0.0, -0.0, 7.0, -9.0]])
  got = mq.apply({}, jnp.asarray(u, jnp.float32))
  want = _np_nearest(np.clip(u, lower, 1.0), mq.levels)
  np.testing.assert_array_equal(got, want)
  # The leak wins at exact ties: ±0.5 -> 0, −1.5 -> −1, −2.5 -> −2.
  zeros = np.asarray(mq.apply({}, jnp.asarray([0.5, -0.5, 0.3, -0.2], jnp.float32)))
  np.testing.assert_array_equal(zeros, [0.0, 0.0, 0.0, 0.0])
  assert not np.any(np.signbit(zeros))  # +0.0, not −0.0


@pytest.mark.parametrize("lower,k", [(-1, 2.0), (-3, 2.0), (-3, 5.0)])
def test_stacked_sigmoid_backward(lower, k):
  mq = Q.integer_membrane(lower=lower, k=k)
  u = _u(2)
  r = _u(3, low=-1.0, high=1.0)
  got = jax.grad(lambda x: jnp.sum(r * mq.apply({}, x)))(u)
  bounds = np.arange(lower, 1) + 0.5
  z = k * (np.asarray(u, np.float64)[..., None] - bounds)
  bumps = np.sum(k * _sigmoid(z) * (1 - _sigmoid(z)), axis=-1)
  np.testing.assert_allclose(got, np.asarray(r) * bumps, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(Q.stacked_sigmoid_grad(u, tuple(bounds), k), bumps, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("mq", [Q.ternary_membrane(), Q.uniform_membrane(3, clip=2.0)], ids=["ternary", "uniform"])
def test_dtype_preserved_and_values_on_grid(dtype, mq):
  u = _u(4).astype(dtype)
  out = mq.apply(mq.init_params(), u)
  assert out.dtype == dtype
  dist = np.min(np.abs(np.asarray(out, np.float64)[..., None] - np.asarray(mq.levels)), axis=-1)
  assert np.max(dist) <= 2 * float(jnp.finfo(dtype).eps) * max(mq.levels)


@pytest.mark.parametrize("mq", [Q.ternary_membrane(), Q.integer_membrane(-3), Q.uniform_membrane(4, clip=3.0)],
                         ids=["ternary", "integer-3", "uniform4"])
def test_idempotent_and_at_most_2_to_the_bits(mq):
  params = mq.init_params()
  once = mq.apply(params, _u(5))
  np.testing.assert_array_equal(mq.apply(params, once), once)
  assert len(np.unique(np.asarray(once))) <= 2 ** math.ceil(mq.effective_bits)


def test_more_integer_levels_reduce_error():
  u = _u(6, low=-4.0, high=1.0)
  errors = [float(jnp.mean((Q.integer_membrane(lower=lb).apply({}, u) - u) ** 2)) for lb in (0, -1, -2, -3, -4)]
  assert all(b < a for a, b in zip(errors, errors[1:])), errors


def numpy_quantized_lif(x, decay, threshold, levels):
  u = np.zeros(x.shape[1:])
  spikes, stored = [], []
  for t in range(x.shape[0]):
    h = decay * u + x[t]
    s = (h >= threshold).astype(np.float64)
    u = _np_nearest(np.clip(h * (1 - s), min(levels), threshold), levels)
    spikes.append(s)
    stored.append(u)
  return np.stack(spikes), np.stack(stored)


@pytest.mark.parametrize("lower", [-1, -3])
def test_plugs_into_lif_scan(lower):
  mq = Q.integer_membrane(lower=lower)
  # Currents on a 1/4 grid: every float op is exact and ties (h = ±0.5) really happen.
  x = np.random.default_rng(7).integers(-8, 8, size=(6, 3, 10)) / 4.0
  quantizer = functools.partial(mq.apply, mq.init_params())
  spikes, _, final = lif_scan(jnp.asarray(x, jnp.float32), membrane_quantizer=quantizer)
  ref_spikes, ref_stored = numpy_quantized_lif(x, 0.5, 1.0, mq.levels)
  np.testing.assert_array_equal(spikes, ref_spikes)
  np.testing.assert_array_equal(final, ref_stored[-1])
  for t in range(1, x.shape[0] + 1):  # every stored state u_t is on the grid
    _, _, u_t = lif_scan(jnp.asarray(x[:t], jnp.float32), membrane_quantizer=quantizer)
    assert set(np.unique(np.asarray(u_t))) <= set(mq.levels)
    np.testing.assert_array_equal(u_t, ref_stored[t - 1])


# ---------------------------------------------------------------------------------------
# Uniform membrane.


@pytest.mark.parametrize("bits,clip", [(2, 1.0), (3, 2.0), (4, 1.5)])
def test_uniform_membrane_forward(bits, clip):
  mq = Q.uniform_membrane(bits, clip=clip)
  n = 2 ** (bits - 1) - 1
  assert len(mq.levels) == 2 * n + 1
  assert mq.effective_bits == pytest.approx(math.log2(2 * n + 1))
  u = _u(8)
  np.testing.assert_allclose(mq.apply({}, u), _np_nearest(np.clip(np.asarray(u), -clip, clip), mq.levels),
                             rtol=1e-6, atol=1e-7)


def test_uniform_membrane_error_decreases_with_bits():
  u = _u(9, low=-2.0, high=2.0)
  errors = [float(jnp.mean((Q.uniform_membrane(b, clip=2.0).apply({}, u) - u) ** 2)) for b in range(2, 11)]
  assert all(b < a for a, b in zip(errors, errors[1:])), errors


def test_uniform_membrane_gradients():
  bits, n, clip = 3, 3, 1.5
  u = _u(10, low=-3.0, high=3.0)
  r = _u(11, low=-1.0, high=1.0)
  fixed = Q.uniform_membrane(bits, clip=clip)
  inside = np.abs(np.asarray(u)) <= clip
  assert 0 < inside.sum() < inside.size
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(r * fixed.apply({}, x)))(u), np.asarray(r) * inside,
                             rtol=1e-6)
  learned = Q.uniform_membrane(bits, clip=clip, learn_clip=True)
  params = learned.init_params()
  assert float(params["clip"]) == clip
  g = jax.grad(lambda p: jnp.sum(r * learned.apply(p, u)))(params)["clip"]
  v = np.asarray(u, np.float64) / (clip / n)
  want = np.sum(np.asarray(r) * np.where(inside, (np.round(v) - v) / n, np.sign(v)))
  np.testing.assert_allclose(g, want, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Bad input and the registry.


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match=r"2\.\.16.*got 1"):
    Q.uniform_membrane(1)
  with pytest.raises(ValueError, match="got 17"):
    Q.uniform_membrane(17)
  with pytest.raises(ValueError, match="2.0"):
    Q.integer_membrane(lower=2.0)
  with pytest.raises(ValueError, match="-1.0"):
    Q.integer_membrane(step=-1.0)
  with pytest.raises(ValueError, match="-2.0"):
    Q.integer_membrane(k=-2.0)
  with pytest.raises(ValueError, match="int32"):
    Q.ternary_membrane().apply({}, jnp.ones(3, jnp.int32))


def test_registry_builds_membrane_kinds():
  assert Q.make_membrane_quantizer({"kind": "ternary"}).levels == (-1.0, 0.0, 1.0)
  assert Q.make_membrane_quantizer(ml_collections.ConfigDict({"kind": "integer", "lower": -3})).levels[0] == -3.0
  assert len(Q.make_membrane_quantizer({"kind": "uniform", "bits": 3}).levels) == 7
  ident = Q.make_membrane_quantizer({"kind": "none"})
  u = _u(12)
  np.testing.assert_array_equal(ident.apply(ident.init_params(), u), u)
  with pytest.raises(ValueError, match=r"'binary'.*known kinds.*'ternary'"):
    Q.make_membrane_quantizer({"kind": "binary"})
  with pytest.raises(ValueError, match=r"\['bits'\]"):
    Q.make_membrane_quantizer({"kind": "ternary", "bits": 2})


# ------------------------------------------------ issue 17: the cheap stacked-sigmoid backward


def _reference_stacked_sigmoid_grad(u, boundaries, k=2.0):
  """The stacked-sigmoid backward as implemented before issue 17 (a boundary axis)."""
  z = k * (u[..., None] - jnp.asarray(boundaries, u.dtype))
  return jnp.sum(k * jax.nn.sigmoid(z) * jax.nn.sigmoid(-z), axis=-1).astype(u.dtype)


@pytest.mark.parametrize("lower, step, k", [
    (-1.0, 1.0, 2.0),    # ternary
    (-3.0, 1.0, 2.0),    # 5 levels
    (-3.0, 0.5, 4.0),
    (-15.0, 1.0, 2.0),   # 17 levels: every bump still summed
    (-40.0, 1.0, 2.0),   # 42 levels: windowed (nearest 2m boundaries)
    (-40.0, 0.25, 0.5),  # slow decay: a wide window
])
@pytest.mark.integration
def test_backward_equals_the_reference_within_1e6(lower, step, k):
  mq = Q.integer_membrane(lower=lower, step=step, k=k)
  bounds = tuple(mq.levels[i] + 0.5 * step for i in range(len(mq.levels) - 1))
  u = jnp.concatenate([jnp.linspace(lower - 8.0, 9.0, 20001, dtype=jnp.float32),
                       jnp.asarray(bounds, jnp.float32),
                       jnp.asarray([-1e30, 1e30, -60.0, 60.0], jnp.float32)])
  g = jax.vmap(jax.grad(lambda x: mq.apply({}, x)))(u)
  ref = _reference_stacked_sigmoid_grad(u, bounds, k)
  np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(Q.stacked_sigmoid_grad(u, bounds, k)), np.asarray(ref),
                             rtol=0, atol=1e-6)


def test_window_tail_bound_holds():
  # The omitted bumps of the windowed sum are below BUMP_TAIL_TOL: compare the full and the
  # windowed sums on a grid that needs the window.
  from mdsnn_jax.quant.membrane import BUMP_TAIL_TOL, bump_window, grid_bump_sum
  m = bump_window(2.0, 1.0)
  assert m == 9
  count = 4 * m
  u = jnp.linspace(-5.0, count + 5.0, 40001, dtype=jnp.float64 if jax.config.x64_enabled else jnp.float32)
  full = sum(2.0 * jax.nn.sigmoid(2.0 * (u - b)) * jax.nn.sigmoid(-2.0 * (u - b)) for b in range(count))
  win = grid_bump_sum(u, 0.0, 1.0, count, 2.0)
  err = float(jnp.max(jnp.abs(win - full)))
  assert err < 1e-6 and BUMP_TAIL_TOL <= 1e-6, err


@pytest.mark.integration
def test_lif_gradients_with_a_ternary_membrane_equal_the_reference():
  # The whole LIF MLP gradient, new backward against the pre-issue-17 one.
  import functools as ft
  from mdsnn_jax import lif_scan
  from mdsnn_jax.quant import membrane as M

  @ft.partial(jax.custom_vjp, nondiff_argnums=(1,))
  def ref_ternary(u, dummy):
    return M._integer_grid(u, -1.0, 1.0, 3, 2.0)

  ref_ternary.defvjp(
      lambda u, d: (ref_ternary(u, d), u),
      lambda d, u, g: (g * _reference_stacked_sigmoid_grad(u, (-0.5, 0.5), 2.0),))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((4, 32, 16)), jnp.float32)
  w1 = jnp.asarray(rng.normal(0, 0.5, (16, 24)), jnp.float32)
  w2 = jnp.asarray(rng.normal(0, 0.5, (24, 10)), jnp.float32)

  def loss(ws, mq):
    s, _, _ = lif_scan(x @ ws[0], membrane_quantizer=mq)
    _, h, _ = lif_scan(s @ ws[1], membrane_quantizer=mq)
    return jnp.sum(jnp.sin(h))

  got = jax.grad(loss)((w1, w2), Q.ternary_membrane())
  want = jax.grad(loss)((w1, w2), lambda u: ref_ternary(u, 0))
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(a).max()) > 0


def test_factories_return_the_same_quantizer_for_equal_arguments():
  # One jit cache entry per configuration in lif_scan (the quantizer function is static).
  assert Q.ternary_membrane() is Q.ternary_membrane()
  assert Q.integer_membrane(-3.0).apply is Q.make_membrane_quantizer(
      {"kind": "integer", "lower": -3}).apply
  assert Q.uniform_membrane(4).apply is Q.uniform_membrane(4, 1.0).apply
  assert Q.uniform_membrane(4).apply is not Q.uniform_membrane(4, learn_clip=True).apply
