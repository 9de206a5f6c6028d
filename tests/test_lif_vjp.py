"""fused_lif_scan: spikes / membranes / state identical to lif_scan, gradients equal to
jax.grad of lif_scan (the plain reference), under jit, vmap and bf16, with the scans as a
loop (unroll=1) and fully unrolled (unroll=None at T ≤ FULL_UNROLL_MAX_T, or an explicit
factor)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax.lif_vjp import FULL_UNROLL_MAX_T, fused_lif_scan
from mdsnn_jax.neuron import lif_scan
from mdsnn_jax.quant import make_membrane_quantizer

TERNARY = make_membrane_quantizer({"kind": "ternary"})


def _inputs(dtype=jnp.float32, shape=(7, 3, 5)):
  k = jax.random.split(jax.random.key(0, impl="rbg"), 4)
  x = (1.5 * jax.random.normal(k[0], shape)).astype(dtype)
  theta = jnp.linspace(0.6, 1.4, shape[-1]).astype(dtype)
  u0 = (0.3 * jax.random.normal(k[1], shape[1:])).astype(dtype)
  w = jax.random.normal(k[2], shape).astype(dtype)
  v = jax.random.normal(k[3], shape[1:]).astype(dtype)
  return x, theta, u0, w, v


def _loss(fn, kw, w, v):
  def loss(x, theta, u0):
    s, h, u = fn(x, threshold=theta, u0=u0, **kw)
    return (jnp.sum(s * w) + jnp.sum(jnp.tanh(h)) + jnp.sum(u * v)).astype(jnp.float32)
  return loss


CASES = [dict(reset=r, detach_reset=d) for r in ("hard", "soft", "none") for d in (False, True)]
CASES += [dict(reset="hard", membrane_quantizer=lambda u: TERNARY.apply({}, u)),
          dict(reset="soft", surrogate="sigmoid", alpha=2.0, decay=0.25)]


@pytest.mark.parametrize("unroll", [1, None, 3])
@pytest.mark.parametrize("kw", CASES)
def test_forward_identical_and_grads_match_under_jit(kw, unroll):
  x, theta, u0, w, v = _inputs()
  assert x.shape[0] <= FULL_UNROLL_MAX_T  # so unroll=None is the fully unrolled path
  fused = functools.partial(fused_lif_scan, unroll=unroll)
  for a, b in zip(fused(x, threshold=theta, u0=u0, **kw),
                  lif_scan(x, threshold=theta, u0=u0, **kw)):
    np.testing.assert_array_equal(a, b)
  g_ref = jax.grad(_loss(lif_scan, kw, w, v), argnums=(0, 1, 2))(x, theta, u0)
  g = jax.jit(jax.grad(_loss(fused, kw, w, v), argnums=(0, 1, 2)))(x, theta, u0)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_grads_match_under_vmap():
  x, theta, u0, w, v = _inputs(shape=(4, 6, 2, 5))  # vmapped over the first axis
  kw = dict(reset="hard")
  per = lambda fn: jax.vmap(jax.grad(_loss(fn, kw, w[:, 0], v[0]), argnums=(0, 1)),
                            in_axes=(1, None, 0))
  g = jax.jit(per(fused_lif_scan))(x, theta, u0)
  g_ref = per(lif_scan)(x, theta, u0)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_bf16_spikes_identical_grads_close():
  x, theta, u0, w, v = _inputs(jnp.bfloat16)
  kw = dict(reset="hard", membrane_quantizer=lambda u: TERNARY.apply({}, u))
  for a, b in zip(fused_lif_scan(x, threshold=theta, u0=u0, **kw),
                  lif_scan(x, threshold=theta, u0=u0, **kw)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a.astype(jnp.float32), b.astype(jnp.float32))
  g = jax.jit(jax.grad(_loss(fused_lif_scan, kw, w, v), argnums=(0, 1)))(x, theta, u0)
  g_ref = jax.grad(_loss(lif_scan, kw, w, v), argnums=(0, 1))(x, theta, u0)
  for a, b in zip(g, g_ref):
    assert a.dtype == jnp.bfloat16
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * np.max(np.abs(b)))


@pytest.mark.integration
def test_long_sequences_keep_the_loop_and_agree():
  # T above FULL_UNROLL_MAX_T: unroll=None is the loop; an explicit full unroll agrees with it.
  x, theta, u0, w, v = _inputs(shape=(FULL_UNROLL_MAX_T + 3, 2, 4))
  kw = dict(reset="hard", membrane_quantizer=lambda u: TERNARY.apply({}, u))
  g = {u: jax.jit(jax.grad(_loss(functools.partial(fused_lif_scan, unroll=u), kw, w, v),
                           argnums=(0, 1)))(x, theta, u0) for u in (None, x.shape[0])}
  g_ref = jax.grad(_loss(lif_scan, kw, w, v), argnums=(0, 1))(x, theta, u0)
  for u in g:
    for a, b in zip(g[u], g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_unroll_names_the_value(bad):
  with pytest.raises(ValueError, match=f"unroll must be a positive int or None, got {bad!r}"):
    fused_lif_scan(jnp.ones((3, 2)), unroll=bad)


def test_traced_decay_raises():
  with pytest.raises(ValueError, match="concrete scalar decay"):
    jax.jit(lambda d: fused_lif_scan(jnp.ones((3, 2)), decay=d))(0.5)


@pytest.mark.integration
def test_model_lif_impls_agree():
  from mdsnn_jax.nn import create_model, default_model_config, init_variables
  x = jax.random.uniform(jax.random.key(1, impl="rbg"), (2, 8, 8, 1))
  grads = {}
  for impl in ("scan", "fused"):
    cfg = default_model_config()
    cfg.name, cfg.lif_impl, cfg.timesteps = "digits_cnn", impl, 3
    cfg.quant.membrane = {"kind": "ternary"}
    model = create_model(cfg, 10)
    variables = init_variables(model, jax.random.key(2, impl="rbg"), x)
    loss = lambda p: jnp.sum(jnp.sin(model.apply({**variables, "params": p}, x, train=True,
                                                 mutable=["batch_stats"])[0]))
    grads[impl] = jax.grad(loss)(variables["params"])
  for a, b in zip(jax.tree_util.tree_leaves(grads["fused"]), jax.tree_util.tree_leaves(grads["scan"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
