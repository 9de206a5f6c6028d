"""Learnable decay, merge_time, hardware.layer_shapes, membrane-grid naming and checks, and
the export's bias warning."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import hardware, quant
from mdsnn_jax.neuron import lif_scan
from mdsnn_jax.nn import LIF, NeuronConfig, merge_time


# ------------------------------------------------------------------ learnable decay


def test_decay_logit_is_sigmoid_and_its_gradient_matches_finite_differences():
  x = jax.random.normal(jax.random.key(0), (6, 4, 3))
  w = jnp.array([-0.5, 0.3, 1.2])
  lam = 1 / (1 + np.exp(-np.asarray(w)))
  np.testing.assert_array_equal(np.asarray(lif_scan(x, decay_logit=w)[1]),
                                np.asarray(lif_scan(x, decay=jnp.asarray(lam, jnp.float32))[1]))
  # reset='none': the membranes are smooth in w, so central differences (float64 via NumPy
  # on the closed form h_t = Σ_k λ^(t−k) x_k) check the gradient exactly.
  f = lambda w: jnp.sum(lif_scan(x, decay_logit=w, reset="none")[1] ** 2)  # noqa: E731
  g = np.asarray(jax.grad(f)(w))

  def f_np(wv):
    lam = 1 / (1 + np.exp(-wv))
    xs = np.asarray(x, np.float64)
    h, tot = np.zeros(xs.shape[1:]), 0.0
    for t in range(xs.shape[0]):
      h = lam * h + xs[t]
      tot += np.sum(h**2)
    return tot

  eps = 1e-6
  fd = [(f_np(np.asarray(w, np.float64) + eps * e) - f_np(np.asarray(w, np.float64) - eps * e)) / (2 * eps)
        for e in np.eye(3)]
  np.testing.assert_allclose(g, fd, rtol=1e-4)


def test_decay_and_decay_logit_are_exclusive():
  with pytest.raises(ValueError, match="decay_logit"):
    lif_scan(jnp.zeros((2, 3)), decay=0.5, decay_logit=jnp.zeros(()))


def test_lif_layer_learns_its_decay():
  x = jax.random.normal(jax.random.key(1), (4, 2, 5)) * 2
  layer = LIF(NeuronConfig(decay=0.25, learn_decay=True), impl="auto")
  v = layer.init(jax.random.key(0), x)
  np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(v["params"]["decay_raw"]))), 0.25, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(layer.apply(v, x)), np.asarray(lif_scan(x, decay=0.25)[0]))
  g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) * x))(v["params"])
  assert np.all(np.isfinite(np.asarray(g["decay_raw"]))) and np.any(np.asarray(g["decay_raw"]) != 0)
  with pytest.raises(ValueError, match="learn_decay needs 0 < decay < 1"):
    NeuronConfig(decay=1.0, learn_decay=True)


def test_learned_decay_exports_to_nir_per_channel():
  pytest.importorskip("nir")
  from mdsnn_jax.interop.nir import lif_to_nir_params
  p = lif_to_nir_params(np.array([0.25, 0.5, 0.75]), 1.0, (3,), dt=1e-3)
  np.testing.assert_allclose(1 - 1e-3 / p["tau"], [0.25, 0.5, 0.75])
  with pytest.raises(ValueError, match="IF"):
    lif_to_nir_params(np.array([0.5, 1.0]), 1.0, (2,))


# ------------------------------------------------------------------ merge_time


def test_merge_time_applies_on_t_times_b_and_splits_back():
  x = jax.random.normal(jax.random.key(2), (3, 4, 5))
  w = jax.random.normal(jax.random.key(3), (5, 2))
  calls = []

  def f(rows, scale):
    calls.append(rows.shape)
    return {"y": rows @ w * scale, "n": jnp.sum(rows, axis=1)}

  out = merge_time(f)(x, 2.0)
  assert calls == [(12, 5)]
  ref = np.stack([np.asarray(x[t]) @ np.asarray(w) * 2.0 for t in range(3)])
  np.testing.assert_allclose(np.asarray(out["y"]), ref, rtol=1e-5, atol=1e-6)
  assert out["n"].shape == (3, 4)
  with pytest.raises(ValueError, match="leading axis must be T·B"):
    merge_time(lambda r: r.sum(0))(x)
  with pytest.raises(ValueError, match="time-major"):
    merge_time(lambda r: r)(jnp.ones(3))


def test_merge_time_with_a_flax_layer():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return merge_time(nn.Dense(3))(x)

  x = jnp.ones((2, 4, 6))
  v = Net().init(jax.random.key(0), x)
  assert Net().apply(v, x).shape == (2, 4, 3)


# ------------------------------------------------------------------ hardware


def test_layer_shapes_from_plain_kernels():
  ks = [np.zeros((3, 3, 1, 8)), np.zeros((3, 3, 8, 16)), (3, 3, 16, 16), np.zeros((16 * 2 * 2, 10))]
  shapes = hardware.layer_shapes(ks, [8, 8, 4, None], strides=[1, 1, 1, 1],
                                 padding=["SAME", "SAME", "VALID", "SAME"], weight_bits=4)
  # conv1: 8x8 'SAME' -> 8, MACs 9·1·8·64; then the next conv reads 8: no pooling.
  assert shapes[0] == hardware.LayerShape(1, 8, 8, 8, kernel=3, macs=9 * 8 * 64, weight_bits=4)
  # conv2 feeds a conv that reads 4: a 2×2 pooling in between.
  assert (shapes[1].h_in, shapes[1].h_out, shapes[1].macs) == (8, 4, 9 * 8 * 16 * 64)
  # conv3: 3×3 'VALID' on 4 -> 2; the dense layer reads 16·2·2, a flatten of that 2×2 map.
  assert (shapes[2].h_in, shapes[2].h_out, shapes[2].macs) == (4, 2, 9 * 16 * 16 * 4)
  assert shapes[3] == hardware.LayerShape.dense(64, 10, weight_bits=4)


def test_layer_shapes_matches_the_flax_model_walk():
  from mdsnn_jax.nn import create_model, default_model_config, init_variables
  cfg = default_model_config()
  cfg.name = "digits_cnn"
  cfg.timesteps = 2
  model = create_model(cfg, 10)
  x = jnp.zeros((2, 8, 8, 1))
  v = init_variables(model, jax.random.key(0), x)
  from_model = hardware.layer_shapes_from_model(model, v, x, train=False)
  kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(v["params"])
             if path[-1].key == "kernel"]
  sizes = []
  for s in from_model:
    sizes.append(s.h_in if s.kernel > 1 or s.h_in > 1 else None)
  assert hardware.layer_shapes(kernels, sizes) == from_model


def test_layer_shapes_errors_name_the_argument():
  with pytest.raises(ValueError, match="input_sizes has 1 entries for 2"):
    hardware.layer_shapes([np.zeros((2, 3)), np.zeros((3, 4))], [None])
  with pytest.raises(ValueError, match=r"input_sizes\[0\]"):
    hardware.layer_shapes([np.zeros((3, 3, 1, 2))], [None])
  with pytest.raises(ValueError, match="rank 2"):
    hardware.layer_shapes([np.zeros((3, 3, 2))], [None])
  with pytest.raises(ValueError, match="VALID"):
    hardware.layer_shapes([np.zeros((5, 5, 1, 2))], [4], padding="VALID")


# ------------------------------------------------------------------ membrane grids


def test_ternary_membrane_is_three_levels_or_refused():
  assert quant.ternary_membrane().levels == (-1.0, 0.0, 1.0)
  assert quant.ternary_membrane(1.5).kind == "ternary"
  with pytest.raises(ValueError, match=r"4 levels.*integer_membrane\(-1.0, threshold=2.0\)"):
    quant.ternary_membrane(threshold=2.0)
  mq = quant.integer_membrane(-1.0, threshold=2.0)
  assert mq.kind == "integer" and len(mq.levels) == 4 and mq.effective_bits == 2.0
  for bad in (-1.0, 0.0):
    with pytest.raises(ValueError, match="threshold must be > 0"):
      quant.ternary_membrane(threshold=bad)
    with pytest.raises(ValueError, match="threshold must be > 0"):
      quant.integer_membrane(threshold=bad)


def test_lif_scan_refuses_a_threshold_above_the_grid():
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match=r"threshold 2.0 lies above the upper clip 1.0"):
    lif_scan(x, threshold=2.0, membrane_quantizer=quant.ternary_membrane())
  with pytest.raises(ValueError, match="upper clip 0.5"):
    lif_scan(x, threshold=1.0, membrane_quantizer=quant.uniform_membrane(3, clip=0.5))
  lif_scan(x, threshold=2.0, membrane_quantizer=quant.integer_membrane(-1.0, threshold=2.0))
  lif_scan(x, threshold=0.5, membrane_quantizer=quant.ternary_membrane())


# ------------------------------------------------------------------ export bias rule


def test_export_warns_when_every_bias_rounds_to_zero_and_matches_quantize_folded():
  from mdsnn_jax.quant.export import BiasRoundsToZeroWarning
  k = jax.random.normal(jax.random.key(4), (16, 8))
  bias = jnp.full((8,), 0.05)
  wq = quant.make_weight_quantizer({"kind": "uniform", "bits": 2, "power_of_two": True})
  mq = quant.ternary_membrane()
  with pytest.warns(BiasRoundsToZeroWarning, match="quantize_folded"):
    layer = quant.export_layer(k, bias, wq, mq=mq)
  assert not np.any(np.asarray(layer.int_bias))
  # The float forward that trains through quantize_folded sees the same (zero) bias, so the
  # integer layer reproduces its spikes exactly.
  kq, bq = quant.quantize_folded(k, bias, wq, bias_bits=32)
  spikes = (jax.random.uniform(jax.random.key(5), (5, 4, 16)) < 0.4).astype(jnp.float32)
  s, _, _ = lif_scan(spikes @ kq + bq, membrane_quantizer=mq)
  np.testing.assert_array_equal(np.asarray(quant.integer_lif_forward(layer, spikes)), np.asarray(s))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    quant.export_layer(k, jnp.full((8,), 5.0), wq, mq=mq)  # representable: no warning


# ------------------------------------------------------------------ the example script


@pytest.mark.integration
def test_own_model_example_trains(capsys):
  """examples/own_model.py (rate code, recurrent LIF, rate regulariser) learns the digits."""
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "own_model.py"
  spec = importlib.util.spec_from_file_location("own_model", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  out = mod.main(steps=40, timesteps=4, batch=64)
  assert out["last_loss"] < out["first_loss"]
  assert out["accuracy"] > 0.3  # chance is 0.1
  assert 0.0 < out["rate"] < 1.0
  assert "test accuracy" in capsys.readouterr().out
