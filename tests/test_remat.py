"""model.remat: 'layer' and 'time' give the same outputs and gradients as 'none', with the
same variable names; `time_chunked_lif_scan` equals `lif_scan`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mdsnn_jax.neuron import lif_scan
from mdsnn_jax.nn import create_model, default_model_config, init_variables
from mdsnn_jax.nn.layers import (LIF, NeuronConfig, parameter_free_lif, time_chunk_for,
                                 time_chunked_lif_scan)

QAT = {"weight": {"kind": "lsq", "bits": 2}, "membrane": {"kind": "ternary"},
       "first_layer": {"kind": "uniform", "bits": 8}, "last_layer": {"kind": "uniform", "bits": 8},
       "bn_fold": True}


def _grads(name, remat, quant=None, timesteps=4, size=16, width=0.125, taps=True):
  cfg = default_model_config()
  cfg.name, cfg.width, cfg.timesteps, cfg.remat = name, width, timesteps, remat
  if quant is not None:
    cfg.quant = quant
  model = create_model(cfg, 10)
  x = jax.random.uniform(jax.random.key(0, impl="rbg"), (2, size, size, 3))
  variables = init_variables(model, jax.random.key(1, impl="rbg"), x)

  def loss(params):
    logits, cols = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats", "quant_state"] + ["membranes"] * taps)
    tap_loss = sum(jnp.mean(h[0] ** 2) for h in jax.tree_util.tree_leaves(
        cols.get("membranes", {}), is_leaf=lambda l: isinstance(l, tuple)))
    return jnp.sum(jnp.sin(logits.mean(0))) + 0.1 * tap_loss, cols["batch_stats"]

  (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return variables, value, stats, grads


def _flat(tree):
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")


@pytest.mark.integration
@pytest.mark.parametrize("name,remat,quant", [
    ("vgg9", "layer", None), ("vgg9", "time", None), ("vgg9", "time", QAT),
    ("vgg9", "layer", QAT), ("msresnet18", "layer", QAT), ("sewresnet18", "time", None)])
def test_remat_gradients_equal_none(name, remat, quant, taps=True, timesteps=4, size=None,
                                    width=None):
  size = size or (32 if "resnet" in name else 16)
  width = width or (1 / 16 if "resnet" in name else 0.125)
  v0, l0, s0, g0 = _grads(name, "none", quant, timesteps, size=size, width=width, taps=taps)
  v1, l1, s1, g1 = _grads(name, remat, quant, timesteps, size=size, width=width, taps=taps)
  f0, f1 = _flat(v0), _flat(v1)
  assert f0.keys() == f1.keys()  # remat renames nothing
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for path, (a, b) in {k: (f0[k], f1[k]) for k in f0}.items():
    np.testing.assert_array_equal(a, b, err_msg=path)
  for tree0, tree1 in ((g0, g1), (s0, s1)):
    t0, t1 = _flat(tree0), _flat(tree1)
    assert t0.keys() == t1.keys()
    for path in t0:
      scale = np.max(np.abs(t0[path])) + 1e-12
      np.testing.assert_allclose(t1[path] / scale, t0[path] / scale, atol=1e-5, err_msg=path)


@pytest.mark.integration
@pytest.mark.parametrize("quant", [None, QAT])
def test_remat_layer_recomputing_the_lif_gradients_equal_none(quant):
  # Without collected taps, VGG's conv + BN + LIF run as one recomputed unit
  # (Builder.conv_bn_lif): same values, gradients and BN statistics as no remat.
  test_remat_gradients_equal_none("vgg9", "layer", quant, taps=False)


def test_remat_layer_of_a_quantized_model_equals_none_fast():
  """The fast tier's quantized remat case: VGG-9 at 1/16 width on 8×8 inputs, T = 2, the
  low-bit student (LSQ weights, folded BN, ternary membranes): values and gradients as no
  remat (the integration tier runs the larger sizes)."""
  test_remat_gradients_equal_none("vgg9", "layer", QAT, timesteps=2, size=8, width=1 / 16)


def test_remat_of_a_residual_block_equals_none_fast():
  """The fast tier's residual case: SEW-ResNet-18's blocks under remat 'time' at 1/32 width,
  8×8 inputs, T = 2."""
  test_remat_gradients_equal_none("sewresnet18", "time", None, timesteps=2, size=8,
                                  width=1 / 32)


@pytest.mark.integration
def test_parameter_free_lif_is_the_lif_layer_or_none():
  x = 1.5 * jax.random.normal(jax.random.key(2, impl="rbg"), (5, 2, 3, 3, 4))
  for neuron, mq in ((NeuronConfig(), None), (NeuronConfig(reset="soft", decay=0.25), None),
                     (NeuronConfig(), {"kind": "ternary"})):
    spikes = parameter_free_lif(neuron, mq)
    layer = LIF(neuron, mq, impl="fused", full_unroll=True)
    variables = layer.init(jax.random.key(0, impl="rbg"), x)
    if jax.tree_util.tree_leaves(variables.get("params", {})):
      assert spikes is None  # a quantizer with parameters
      continue
    np.testing.assert_array_equal(spikes(x), layer.apply(variables, x))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jnp.sin(spikes(x)) * x))(x),
                               jax.grad(lambda x: jnp.sum(jnp.sin(layer.apply(variables, x)) * x))(x),
                               rtol=1e-6)
  assert parameter_free_lif(NeuronConfig(learn_threshold=True), None) is None
  assert parameter_free_lif(NeuronConfig(prune_prior=0.1), None) is None


@pytest.mark.integration
@pytest.mark.parametrize("t,chunk", [(8, 4), (6, 3), (5, 5), (4, 1)])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_time_chunked_lif_scan_equals_lif_scan(t, chunk, reset):
  x = 1.5 * jax.random.normal(jax.random.key(2, impl="rbg"), (t, 3, 7))
  u0 = jnp.linspace(-0.5, 0.5, 21).reshape(3, 7)
  theta = jnp.linspace(0.5, 1.5, 7)
  kw = dict(decay=0.5, reset=reset, surrogate="arctan")

  def ref(x, theta):
    s, h, _ = lif_scan(x, threshold=theta, u0=u0, **kw)
    return s, h

  def chunked(x, theta):
    return time_chunked_lif_scan(x, chunk, threshold=theta, u0=u0, **kw)

  for fn_out, ref_out in zip(chunked(x, theta), ref(x, theta)):
    np.testing.assert_array_equal(fn_out, ref_out)
  w = jax.random.normal(jax.random.key(3, impl="rbg"), (t, 3, 7))
  loss = lambda f: lambda x, th: jnp.sum(f(x, th)[0] * w) + jnp.sum(jnp.tanh(f(x, th)[1]))
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(x, theta)
  g = jax.jit(jax.grad(loss(chunked), argnums=(0, 1)))(x, theta)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_time_chunk_for():
  assert [time_chunk_for(t) for t in (1, 2, 4, 8, 16, 12, 7)] == [1, 2, 2, 4, 4, 4, 7]
  with pytest.raises(ValueError, match="positive int"):
    time_chunk_for(0)


def test_bad_remat_values_raise():
  cfg = default_model_config()
  cfg.remat = "block"
  with pytest.raises(ValueError, match="model.remat 'block'.*allowed"):
    create_model(cfg, 10)
  with pytest.raises(ValueError, match="positive divisor of T = 6"):
    time_chunked_lif_scan(jnp.zeros((6, 2, 3)), 4)
  lif = LIF(NeuronConfig(prune_prior=-0.5), remat_time=True)
  with pytest.raises(ValueError, match="prune_prior"):
    lif.init(jax.random.key(0, impl="rbg"), jnp.zeros((4, 2, 3, 3, 5)))


def _digits_grad_fn(remat, dtype="float32"):
  cfg = default_model_config()
  cfg.name, cfg.timesteps, cfg.remat, cfg.dtype = "digits_cnn", 3, remat, dtype
  model = create_model(cfg, 10)
  x = jax.random.uniform(jax.random.key(4, impl="rbg"), (3, 2, 8, 8, 1))  # 3 groups of 2
  variables = init_variables(model, jax.random.key(5, impl="rbg"), x[0])

  def grad(params, xb):
    loss = lambda p: jnp.sum(jnp.sin(model.apply({**variables, "params": p}, xb, train=True,
                                                 mutable=["batch_stats"])[0]))
    return jax.grad(loss)(params)
  return grad, variables["params"], x


@pytest.mark.integration
@pytest.mark.parametrize("remat", ["layer", "time"])
def test_remat_custom_vjp_under_vmap_and_bf16(remat):
  g_none, params, x = _digits_grad_fn("none")
  g_remat, _, _ = _digits_grad_fn(remat)
  ref = jax.vmap(g_none, in_axes=(None, 0))(params, x)
  got = jax.jit(jax.vmap(g_remat, in_axes=(None, 0)))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  g16_none, _, _ = _digits_grad_fn("none", "bfloat16")
  g16_remat, _, _ = _digits_grad_fn(remat, "bfloat16")
  for a, b in zip(jax.tree_util.tree_leaves(jax.jit(g16_remat)(params, x[0])),
                  jax.tree_util.tree_leaves(g16_none(params, x[0]))):
    assert a.dtype == jnp.float32
    scale = float(np.max(np.abs(b))) + 1e-6
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=0.05)


@pytest.mark.integration
def test_sew_resnet_remat_layer_recomputing_the_lif_gradients_equal_none():
  test_remat_gradients_equal_none("sewresnet18", "layer", None, taps=False)
