"""lif_scan under forward-mode autodiff, a traced surrogate slope and shard_map.

The reference is a plain-JAX LIF loop whose spike is H(z) forward with the derivative of
the surrogate's smooth counterpart (`surrogate.SMOOTH`) via a stop_gradient identity: it
has no custom rule at all, so JAX's own jvp / vjp / vmap of it are independent of ours.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mdsnn_jax import neuron, surrogate
from mdsnn_jax.lif_vjp import fused_lif_scan
from mdsnn_jax.neuron import lif_scan

T, B, C = 5, 3, 4


def ref_lif(x, decay=0.5, threshold=1.0, alpha=2.0, name="arctan", reset="hard"):
  """Pure-JAX LIF (hard or no reset); spike = H(z) with d/dz = SMOOTH[name]'(z)."""
  smooth = lambda z: surrogate.SMOOTH[name](z, alpha)  # noqa: E731

  def spike(z):
    return smooth(z) + jax.lax.stop_gradient((z >= 0).astype(z.dtype) - smooth(z))

  u = jnp.zeros_like(x[0])
  ss, hs = [], []
  for t in range(x.shape[0]):
    h = decay * u + x[t]
    s = spike(h - threshold)
    u = h * (1 - s) if reset == "hard" else h
    ss.append(s)
    hs.append(h)
  return jnp.stack(ss), jnp.stack(hs), u


def _x(seed=0):
  return jax.random.normal(jax.random.key(seed), (T, B, C)) * 1.2


def test_jvp_matches_reference():
  x = _x()
  dx = jax.random.normal(jax.random.key(1), x.shape)
  th = jnp.full((C,), 0.9)
  dth = jnp.linspace(-0.5, 0.5, C)
  ours = jax.jvp(lambda x, th: lif_scan(x, threshold=th), (x, th), (dx, dth))
  ref = jax.jvp(lambda x, th: ref_lif(x, threshold=th), (x, th), (dx, dth))
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_jacfwd_equals_jacrev_and_reference():
  x = _x(2)[:, :1, :2]
  f = lambda x: lif_scan(x, decay=0.7)[1].sum(0)  # noqa: E731
  fwd, rev = jax.jacfwd(f)(x), jax.jacrev(f)(x)
  ref = jax.jacrev(lambda x: ref_lif(x, decay=0.7)[1].sum(0))(x)
  np.testing.assert_allclose(np.asarray(fwd), np.asarray(rev), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(fwd), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_second_derivatives_in_threshold_match_reference():
  x = _x(3)[:, :2, :3]
  th = jnp.array([0.6, 0.8, 1.1])

  def loss(f, **kw):
    return lambda th: jnp.sum(f(x, threshold=th, **kw)[1] * f(x, threshold=th, **kw)[0])

  # Forward over forward: the full second derivative, through the reset path as well.
  ours = jax.jacfwd(jax.jacfwd(loss(lif_scan)))(th)
  ref = jax.jacfwd(jax.jacfwd(loss(ref_lif)))(th)
  assert np.any(np.asarray(ref) != 0)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-5)
  # jax.hessian (forward over reverse) agrees where no spike feeds back into the state.
  ours = jax.hessian(loss(lif_scan, reset="none"))(th)
  ref = jax.hessian(loss(ref_lif, reset="none"))(th)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_forward_mode_through_the_integer_membrane_quantizer():
  from mdsnn_jax import quant
  mq = quant.ternary_membrane()
  x = _x(4)
  dx = jnp.ones_like(x)
  _, tangent = jax.jvp(lambda x: lif_scan(x, membrane_quantizer=mq)[1].sum(), (x,), (dx,))
  grad = jax.grad(lambda x: lif_scan(x, membrane_quantizer=mq)[1].sum())(x)
  np.testing.assert_allclose(float(tangent), float(jnp.sum(grad * dx)), rtol=1e-5)


def test_fused_path_is_reverse_mode_only_and_says_so():
  assert "jvp" in fused_lif_scan.__doc__ and "lif_scan" in fused_lif_scan.__doc__
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda x: fused_lif_scan(x)[1], (_x(),), (_x(1),))


@pytest.mark.parametrize("name", ["arctan", "fast_sigmoid"])
def test_alpha_is_traced_vmappable_and_compiled_once(name):
  x = _x(5)
  alphas = jnp.array([0.5, 2.0, 7.0])
  grad = lambda a: jax.grad(lambda x: lif_scan(x, surrogate=name, alpha=a)[1].sum())(x)  # noqa: E731
  got = jax.vmap(grad)(alphas)
  for i, a in enumerate([0.5, 2.0, 7.0]):
    ref = jax.grad(lambda x: ref_lif(x, alpha=a, name=name)[1].sum())(x)
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(ref), rtol=1e-5, atol=1e-6)
  lif_scan(x, surrogate=name, alpha=1.0)
  before = neuron._scan_jit._cache_size()
  for a in (1.5, 3.0, 4.5, jnp.float32(9.0)):
    lif_scan(x, surrogate=name, alpha=a)[0].block_until_ready()
  assert neuron._scan_jit._cache_size() == before  # a new slope is new data, not a new program


def test_alpha_in_fused_path_may_be_traced():
  x = _x(6)
  g = jax.jit(lambda x, a: jax.grad(lambda x: fused_lif_scan(x, alpha=a)[1].sum())(x))
  np.testing.assert_allclose(
      np.asarray(g(x, 3.0)),
      np.asarray(jax.grad(lambda x: ref_lif(x, alpha=3.0)[1].sum())(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, -2.0, float("nan"), "big"])
def test_bad_alpha_is_named(alpha):
  with pytest.raises(ValueError, match="alpha"):
    lif_scan(_x(), alpha=alpha)


def _mesh():
  return Mesh(np.array(jax.devices()[:1]), ("b",))


@pytest.mark.parametrize("fn", [lif_scan, fused_lif_scan], ids=["scan", "fused"])
def test_shard_map_with_the_default_state(fn):
  x = _x(7)
  f = jax.jit(jax.shard_map(lambda x: fn(x)[0], mesh=_mesh(), in_specs=P(None, "b"),
                            out_specs=P(None, "b")))
  np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(ref_lif(x)[0]))
  # ... and its gradient w.r.t. a replicated threshold (a sum over the mesh axis).
  g = jax.grad(lambda th: jax.shard_map(
      lambda x, th: jax.lax.psum(fn(x, threshold=th)[1].sum() + fn(x, threshold=th)[0].sum(), "b"),
      mesh=_mesh(),
      in_specs=(P(None, "b"), P()), out_specs=P())(x, th))
  th = jnp.full((C,), 0.8)
  ref = jax.grad(lambda th: ref_lif(x, threshold=th)[1].sum() + ref_lif(x, threshold=th)[0].sum())(th)
  np.testing.assert_allclose(np.asarray(jax.jit(g)(th)), np.asarray(ref), rtol=1e-5, atol=1e-5)
