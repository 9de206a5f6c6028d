"""Tests for mdsnn_jax.nn.layers against NumPy / flax / quant-package references."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import lif_scan
from mdsnn_jax.nn.layers import (LIF, NeuronConfig, QConv, QConvBN, QDense, QuantConfig,
                                 TDBatchNorm, batch_moments, inverse_softplus)
from mdsnn_jax.quant import (fold_batchnorm, make_membrane_quantizer, make_weight_quantizer,
                             qem_update, quantize_folded)


def key(seed):
  # RBG keys: XLA:CPU compiles threefry's init-time random numbers several seconds slower.
  return jax.random.key(seed, impl="rbg")


def rand(seed, shape, scale=1.0, loc=0.0):
  return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, size=shape).astype(np.float32))


def np_conv(x, w, stride, pad):
  """Direct NHWC × HWIO convolution with symmetric zero padding, by explicit loops (float64)."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  w = np.asarray(w, np.float64)
  kh, kw, _, co = w.shape
  n, h, wd, _ = x.shape
  ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, ho, wo, co))
  for i in range(ho):
    for j in range(wo):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
  return out


def np_lif(x, decay, threshold, reset="hard"):
  u = np.zeros(x.shape[1:])
  hs, ss = [], []
  for t in range(x.shape[0]):
    h = decay * u + x[t]
    s = (h >= threshold).astype(np.float64)
    u = h * (1 - s) if reset == "hard" else h - threshold * s
    hs.append(h)
    ss.append(s)
  return np.stack(ss), np.stack(hs)


# ------------------------------------------------------------------ LIF


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_lif_matches_numpy_and_sows_taps(reset):
  x = rand(0, (5, 3, 4, 4, 6), 0.8, 0.4)
  layer = LIF(NeuronConfig(decay=0.25, threshold=0.5, reset=reset))
  variables = layer.init(key(0), x)
  assert "params" not in variables  # nothing learnable with a fixed threshold
  s, taps = layer.apply({}, x, mutable=["membranes", "spikes"])
  rs, rh = np_lif(np.asarray(x, np.float64), 0.25, 0.5, reset)
  (h_tap,) = taps["membranes"]["h"]
  (s_tap,) = taps["spikes"]["s"]
  np.testing.assert_allclose(np.asarray(h_tap), rh, rtol=1e-5, atol=1e-6)
  near = np.abs(rh - 0.5) < 1e-5
  assert np.all((np.asarray(s) == rs) | near)
  np.testing.assert_array_equal(np.asarray(s_tap), np.asarray(s))
  assert h_tap.shape == s_tap.shape == x.shape


def test_lif_taps_do_not_accumulate_over_applies():
  x = rand(1, (3, 2, 5), 1.0, 0.5)
  layer = LIF()
  variables = layer.init(key(0), x)  # init returns the tap collections too
  _, taps = layer.apply(variables, x * 2, mutable=["membranes"])
  assert len(taps["membranes"]["h"]) == 1
  _, h, _ = lif_scan(x * 2)
  np.testing.assert_allclose(np.asarray(taps["membranes"]["h"][0]), np.asarray(h), rtol=1e-6)


def test_learnable_threshold_is_softplus_and_gets_analytic_gradient():
  x = rand(2, (4, 3, 5), 0.7, 0.6)
  layer = LIF(NeuronConfig(threshold=0.7, learn_threshold=True))
  variables = layer.init(key(0), x)
  raw = variables["params"]["theta_raw"]
  assert raw.shape == (5,)
  np.testing.assert_allclose(np.asarray(jax.nn.softplus(raw)), 0.7, rtol=1e-6)
  raw = raw + jnp.linspace(-0.3, 0.3, 5)  # distinct per-channel thresholds

  def loss_raw(r):
    return layer.apply({"params": {"theta_raw": r}}, x).sum()

  def loss_theta(theta):
    return lif_scan(x, decay=0.5, threshold=theta)[0].sum()

  g_raw = jax.grad(loss_raw)(raw)
  g_theta = jax.grad(loss_theta)(jax.nn.softplus(raw))
  # Chain rule through θ = softplus(raw): dθ/draw = sigmoid(raw).
  np.testing.assert_allclose(np.asarray(g_raw), np.asarray(g_theta * jax.nn.sigmoid(raw)), rtol=1e-5)
  assert np.all(np.asarray(g_raw) != 0)


def test_lif_membrane_quantizer_matches_lif_scan_hook():
  x = rand(3, (6, 2, 7), 1.0, 0.3)
  mq = make_membrane_quantizer({"kind": "ternary"})
  layer = LIF(NeuronConfig(), {"kind": "ternary"})
  s, taps = layer.apply({}, x, mutable=["membranes"])
  rs, rh, _ = lif_scan(x, membrane_quantizer=functools.partial(mq.apply, {}))
  np.testing.assert_array_equal(np.asarray(s), np.asarray(rs))
  np.testing.assert_allclose(np.asarray(taps["membranes"]["h"][0]), np.asarray(rh), rtol=1e-6)
  # Pre-reset h of step t is λ·u_{t−1} + x_t with u on the ternary grid.
  u_prev = (np.asarray(rh[1:]) - np.asarray(x[1:])) / 0.5
  assert set(np.round(np.unique(u_prev), 5)) <= {-1.0, 0.0, 1.0}


def test_lif_learned_membrane_clip_lives_in_params():
  x = rand(4, (3, 2, 4))
  layer = LIF(NeuronConfig(), {"kind": "uniform", "bits": 3, "clip": 2.0, "learn_clip": True})
  variables = layer.init(key(0), x)
  np.testing.assert_allclose(float(variables["params"]["mq"]["clip"]), 2.0)


def test_neuron_config_validation():
  with pytest.raises(ValueError, match="1.5"):
    NeuronConfig(decay=1.5)
  with pytest.raises(ValueError, match="-1"):
    NeuronConfig(threshold=-1.0)
  with pytest.raises(ValueError, match="'bogus'"):
    NeuronConfig(surrogate="bogus")
  with pytest.raises(ValueError, match="'wrong'"):
    NeuronConfig.from_dict({"wrong": 1})
  assert NeuronConfig.from_dict({"decay": None, "threshold": 0.5}) == NeuronConfig(threshold=0.5)


def test_inverse_softplus():
  for y in [1e-3, 0.5, 1.0, 30.0]:
    np.testing.assert_allclose(float(jax.nn.softplus(inverse_softplus(y))), y, rtol=1e-6)
  with pytest.raises(ValueError, match="0.0"):
    inverse_softplus(0.0)


# ------------------------------------------------------------------ QConv / QDense


@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (2, 1)])
def test_qconv_matches_numpy_on_merged_time_axis(stride, kernel):
  x = rand(5, (2, 3, 8, 8, 4))  # [T, B, H, W, C]
  layer = QConv(5, kernel, stride)
  variables = layer.init(key(0), x)
  w = variables["params"]["kernel"]
  assert w.shape == (kernel, kernel, 4, 5)
  y = layer.apply(variables, x)
  ref = np_conv(np.asarray(x).reshape(6, 8, 8, 4), w, stride, kernel // 2)
  assert y.shape == (2, 3) + ref.shape[1:] and ref.shape[1] == 8 // stride
  np.testing.assert_allclose(np.asarray(y).reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


def test_qconv_quantized_kernel_and_params():
  x = rand(6, (2, 6, 6, 3))
  wq = make_weight_quantizer({"kind": "lsq", "bits": 3})
  layer = QConv(4, weight_quant={"kind": "lsq", "bits": 3})
  variables = layer.init(key(1), x)
  w = variables["params"]["kernel"]
  np.testing.assert_allclose(np.asarray(variables["params"]["wq"]["step"]),
                             np.asarray(wq.init_params(w)["step"]), rtol=1e-6)
  y = layer.apply(variables, x)
  wq_w = wq.apply(variables["params"]["wq"], {}, w)
  assert len(np.unique(np.asarray(wq_w))) <= 2**3
  np.testing.assert_allclose(np.asarray(y), np_conv(x, wq_w, 1, 1), rtol=1e-4, atol=1e-4)


def test_qconv_lqnet_state_updates_only_in_training():
  x = rand(7, (2, 6, 6, 3))
  layer = QConv(4, weight_quant={"kind": "lqnet", "bits": 2})
  variables = layer.init(key(2), x)
  basis = variables["quant_state"]["wq"]["basis"]
  _, new = layer.apply(variables, x, train=True, mutable=["quant_state"])
  expected = qem_update(basis, variables["params"]["kernel"])
  np.testing.assert_allclose(np.asarray(new["quant_state"]["wq"]["basis"]), np.asarray(expected), rtol=1e-5)
  _, same = layer.apply(variables, x, train=False, mutable=["quant_state"])
  np.testing.assert_array_equal(np.asarray(same["quant_state"]["wq"]["basis"]), np.asarray(basis))


def test_qdense_matches_matmul_and_quantizes():
  x = rand(8, (3, 2, 7))
  for cfg in [None, {"kind": "uniform", "bits": 4, "per_channel": True}]:
    layer = QDense(5, weight_quant=cfg)
    variables = layer.init(key(3), x)
    w, b = variables["params"]["kernel"], rand(9, (5,))
    variables = {"params": {**variables["params"], "bias": b}}
    if cfg is not None:
      w = make_weight_quantizer(cfg).apply({}, {}, w)
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b)
    np.testing.assert_allclose(np.asarray(layer.apply(variables, x)), ref, rtol=1e-5, atol=1e-5)


def test_bad_conv_arguments():
  x = rand(10, (1, 4, 4, 2))
  with pytest.raises(ValueError, match="'cudnn'"):
    QConv(3, conv_impl="cudnn").init(key(0), x)
  with pytest.raises(ValueError, match="0"):
    QConv(3, kernel_size=0).init(key(0), x)
  with pytest.raises(ValueError, match="'nope'"):
    QConv(3, weight_quant={"kind": "nope"}).init(key(0), x)


def test_quant_config_validation_and_first_last():
  q = QuantConfig(weight={"kind": "lsq", "bits": 4}, first_layer={"kind": "same"})
  assert q.first == q.weight and q.last["kind"] == "none"
  hash(q)  # frozen and hashable, so modules holding it are hashable
  with pytest.raises(ValueError, match="'same'"):
    QuantConfig(weight={"kind": "same"})
  with pytest.raises(ValueError, match="1"):
    QuantConfig(bias_bits=1)
  with pytest.raises(ValueError, match="'bogus'"):
    QuantConfig.from_dict({"bogus": 1})


# ------------------------------------------------------------------ BN


def test_tdbn_equals_flax_batchnorm_on_merged_axis():
  x = rand(11, (3, 4, 5, 5, 6), 2.0, 1.0)
  td = TDBatchNorm(momentum=0.9, epsilon=1e-5)
  ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)
  v_td = td.init(key(0), x)
  v_ref = ref.init(key(0), x.reshape(-1, 6), use_running_average=False)
  assert jax.tree_util.tree_structure(v_td) == jax.tree_util.tree_structure(v_ref)
  y, upd = td.apply(v_td, x, train=True, mutable=["batch_stats"])
  y_ref, upd_ref = ref.apply(v_ref, x.reshape(-1, 6), use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 6), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
  for k in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(upd["batch_stats"][k]), np.asarray(upd_ref["batch_stats"][k]),
                               rtol=1e-5, atol=1e-6)
  v2 = {**v_td, **upd}
  y_eval = td.apply(v2, x, train=False)
  xm = np.asarray(x, np.float64)
  m, var = np.asarray(upd["batch_stats"]["mean"]), np.asarray(upd["batch_stats"]["var"])
  np.testing.assert_allclose(np.asarray(y_eval), (xm - m) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_batch_moments():
  x = rand(12, (2, 3, 4, 5), 3.0, 2.0)
  m, v = batch_moments(x)
  xm = np.asarray(x, np.float64).reshape(-1, 5)
  np.testing.assert_allclose(np.asarray(m), xm.mean(0), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(v), xm.var(0), rtol=1e-5)


def _random_bn(variables, seed):
  rng = np.random.default_rng(seed)
  c = variables["params"]["bn"]["scale"].shape[0]
  params = {**variables["params"], "bn": {"scale": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
                                          "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}}
  stats = {"bn": {"mean": jnp.asarray(rng.normal(size=c), jnp.float32),
                  "var": jnp.asarray(rng.uniform(0.2, 3, c), jnp.float32)}}
  return {**variables, "params": params, "batch_stats": stats}


@pytest.mark.parametrize("stride", [1, 2])
def test_qconvbn_folded_eval_equals_conv_then_bn(stride):
  x = rand(13, (2, 3, 8, 8, 4))
  plain, folded = QConvBN(6, strides=stride), QConvBN(6, strides=stride, bn_fold=True)
  variables = _random_bn(plain.init(key(4), x), 14)
  # Identical variable trees: a folded student loads an unfolded teacher.
  assert (jax.tree_util.tree_structure(folded.init(key(4), x))
          == jax.tree_util.tree_structure(variables))
  y_plain = np.asarray(plain.apply(variables, x), np.float64)
  y_fold = np.asarray(folded.apply(variables, x), np.float64)
  rel = np.linalg.norm(y_fold - y_plain) / np.linalg.norm(y_plain)
  assert rel < 1e-5, rel
  # And both equal the NumPy conv followed by the eval BN formula.
  p, s = variables["params"]["bn"], variables["batch_stats"]["bn"]
  conv = np_conv(np.asarray(x).reshape(6, 8, 8, 4), variables["params"]["conv"]["kernel"], stride, 1)
  ref = (conv - np.asarray(s["mean"])) / np.sqrt(np.asarray(s["var"]) + 1e-5) * np.asarray(p["scale"]) \
      + np.asarray(p["bias"])
  np.testing.assert_allclose(y_plain.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


def test_qconvbn_folded_training_uses_batch_stats():
  x = rand(15, (2, 3, 6, 6, 4), 1.0, 0.5)
  plain, folded = QConvBN(5), QConvBN(5, bn_fold=True)
  variables = _random_bn(plain.init(key(5), x), 16)
  y_p, up = plain.apply(variables, x, train=True, mutable=["batch_stats"])
  y_f, uf = folded.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y_f), np.asarray(y_p), rtol=1e-4, atol=1e-4)
  for k in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(uf["batch_stats"]["bn"][k]),
                               np.asarray(up["batch_stats"]["bn"][k]), rtol=1e-5, atol=1e-6)
  # The batch statistics, not the running ones, normalise the output in training.
  y_c = np.asarray(y_p).reshape(-1, 5)
  np.testing.assert_allclose((y_c.mean(0) - np.asarray(variables["params"]["bn"]["bias"])), 0, atol=1e-4)


def test_qconvbn_folded_quantized_equals_quant_package_reference():
  x = rand(17, (2, 2, 6, 6, 3))
  cfg = {"kind": "lsq", "bits": 4, "per_channel": True}
  layer = QConvBN(4, weight_quant=cfg, bn_fold=True, bias_bits=8)
  variables = _random_bn(layer.init(key(6), x), 18)
  wq = make_weight_quantizer(cfg)
  p, s = variables["params"], variables["batch_stats"]["bn"]
  for train in (False, True):
    if train:
      conv = np_conv(np.asarray(x).reshape(4, 6, 6, 3), p["conv"]["kernel"], 1, 1)
      mean, var = conv.reshape(-1, 4).mean(0), conv.reshape(-1, 4).var(0)
    else:
      mean, var = s["mean"], s["var"]
    w_f, b_f = fold_batchnorm(p["conv"]["kernel"], None, jnp.asarray(mean, jnp.float32),
                              jnp.asarray(var, jnp.float32), p["bn"]["scale"], p["bn"]["bias"])
    w_q, b_q = quantize_folded(w_f, b_f, wq, p["conv"]["wq"], {}, bias_bits=8)
    ref = np_conv(np.asarray(x).reshape(4, 6, 6, 3), w_q, 1, 1) + np.asarray(b_q)
    y = layer.apply(variables, x, train=train, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(np.asarray(y).reshape(ref.shape), ref, rtol=2e-4, atol=2e-4)


def test_quantizer_kind_none_is_exactly_float():
  x = rand(19, (2, 2, 6, 6, 3))
  fp, q = QConvBN(4), QConvBN(4, weight_quant={"kind": "none"})
  variables = fp.init(key(7), x)
  assert (jax.tree_util.tree_structure(q.init(key(7), x))
          == jax.tree_util.tree_structure(variables))
  np.testing.assert_array_equal(np.asarray(fp.apply(variables, x)), np.asarray(q.apply(variables, x)))


def test_conv_impls_agree_in_value_and_gradient():
  x = rand(20, (2, 2, 6, 6, 3))
  fast, xla = QConv(4, strides=2, conv_impl="fast"), QConv(4, strides=2, conv_impl="xla")
  variables = xla.init(key(8), x)
  np.testing.assert_allclose(np.asarray(fast.apply(variables, x)), np.asarray(xla.apply(variables, x)),
                             rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda p, m=m: jnp.sum(m.apply({"params": p}, x) ** 2))(variables["params"])["kernel"]
           for m in (fast, xla)]
  np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), rtol=1e-4, atol=1e-4)


def test_lif_layer_membrane_prior_pruning():
  """prune_prior=-inf equals the plain layer; a high prior gates channels and sows masks."""
  from mdsnn_jax.nn.layers import LIF, NeuronConfig
  from mdsnn_jax.prune import gated_lif_scan
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 2, 5, 5, 6)) + 0.3
  plain = LIF(NeuronConfig())
  s0 = plain.apply({}, x)
  s_inf = LIF(NeuronConfig(prune_prior=float("-inf"))).apply({}, x)
  np.testing.assert_array_equal(np.asarray(s0), np.asarray(s_inf))
  gated = LIF(NeuronConfig(prune_prior=0.2))
  s, cols = gated.apply({}, x, mutable=["prune_masks"])
  (masks,) = cols["prune_masks"]["m"]
  ref_s, _, _, ref_masks = gated_lif_scan(x, prior=0.2)
  np.testing.assert_array_equal(np.asarray(s), np.asarray(ref_s))
  np.testing.assert_array_equal(np.asarray(masks), np.asarray(ref_masks))
  assert 0 < float(masks[1:].mean()) < 1, "some but not all channels gated at this prior"


# ------------------------------------------------------------ learned channel gate


def np_mass_target(y, rho):
  """Per row: channels by decreasing peak share (ties: lower index first), kept while the
  share before them is < ρ."""
  peak = np.abs(y).max(axis=tuple(range(1, y.ndim - 1)))
  share = peak / peak.sum(-1, keepdims=True)
  out = np.zeros_like(share)
  for n in range(share.shape[0]):
    before = 0.0
    for c in sorted(range(share.shape[1]), key=lambda c: (-share[n, c], c)):
      out[n, c] = before < rho
      before += share[n, c]
  return out


def np_gate(x, y, w, b, rho):
  """NumPy ChannelGate on time-major x [T, B, H, W, C_in], y [T, B, H, W, C_out]:
  (gated y, masks [T, B, C_out], logits [T·B, C_out], target [T·B, C_out], BCE)."""
  t, bsz = y.shape[:2]
  xm = np.asarray(x, np.float64).reshape((t * bsz,) + x.shape[2:])
  ym = np.asarray(y, np.float64).reshape((t * bsz,) + y.shape[2:])
  pooled = xm.mean(axis=(1, 2))
  soft = np.exp(pooled - pooled.max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  logits = soft @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
  mask = (1 / (1 + np.exp(-logits)) > 0.5).astype(np.float64)
  target = np_mass_target(ym, rho)
  p = 1 / (1 + np.exp(-logits))
  bce = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
  gated = ym * mask[:, None, None, :]
  return gated.reshape(y.shape), mask.reshape(t, bsz, -1), logits, target, bce


def _gate_inputs():
  x = (np.random.default_rng(0).random((2, 2, 3, 3, 3)) < 0.4).astype(np.float32)  # spikes
  y = rand(1, (2, 2, 3, 3, 4))
  w = rand(2, (3, 4), scale=3.0)
  b = jnp.asarray([0.5, -0.5, 0.2, -0.1], jnp.float32)
  return jnp.asarray(x), y, w, b


def test_channel_gate_matches_numpy_and_sows_masks_and_bce():
  from mdsnn_jax import prune
  from mdsnn_jax.nn.layers import ChannelGate
  x, y, w, b = _gate_inputs()
  gate = ChannelGate(0.85)
  out, cols = gate.apply({"params": {"gate_w": w, "gate_b": b}}, x, y,
                         mutable=["gate_masks", "gate_losses"])
  ref, masks, logits, target, bce = np_gate(x, y, w, b, 0.85)
  assert 0 < masks.mean() < 1, "the hand parameters close some but not all channels"
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-6)
  (sown,) = cols["gate_masks"]["m"]
  assert sown.shape == (2, 2, 4) and sown.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(sown), masks)
  (loss,) = cols["gate_losses"]["bce"]
  np.testing.assert_allclose(float(loss), bce, rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(prune.gate_bce_loss(
      jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.float32))), rtol=1e-5)
  # init: W = 0 and b = GATE_BIAS_INIT > 0, so every channel starts open
  v = gate.init(key(0), x, y)
  assert float(jnp.abs(v["params"]["gate_w"]).max()) == 0.0
  _, cols0 = gate.apply({"params": v["params"]}, x, y, mutable=["gate_masks"])
  assert float(cols0["gate_masks"]["m"][0].min()) == 1.0


def test_gated_conv_unit_masks_its_bn_output_from_its_input():
  """Builder.conv_bn with gate_rho: conv → BN → × the gate's mask, the gate reading the
  unit's input; '<name>_gate' beside the unit."""
  from mdsnn_jax.nn.layers import ChannelGate
  from mdsnn_jax.nn.models import Builder

  class Unit(nn.Module):
    rho: float | None = 0.85

    @nn.compact
    def __call__(self, x, train=False):
      return Builder(NeuronConfig(gate_rho=self.rho)).conv_bn(4, name="conv")(x, train)

  x, _, w, b = _gate_inputs()
  variables = Unit().init(key(0), x)
  assert set(variables["params"]) == {"conv", "conv_gate"}
  variables["params"]["conv_gate"] = {"gate_w": w, "gate_b": b}
  out, cols = Unit().apply(variables, x, mutable=["gate_masks", "gate_losses"])
  y = QConvBN(4, name="conv").apply({"params": variables["params"]["conv"],
                                     "batch_stats": variables["batch_stats"]["conv"]}, x)
  ref, masks, *_ = np_gate(x, y, w, b, 0.85)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(cols["gate_masks"]["conv_gate"]["m"][0]), masks)
  assert set(Unit(None).init(key(0), x)["params"]) == {"conv"}  # no gate: the plain unit
  assert isinstance(ChannelGate(0.5), nn.Module)


def test_gate_gradients_reach_its_parameters_through_bce_and_ste():
  from mdsnn_jax.nn.layers import ChannelGate
  x, y, w, b = _gate_inputs()
  gate = ChannelGate(0.85)
  r = rand(5, y.shape)

  def losses(params):
    out, cols = gate.apply({"params": params}, x, y, mutable=["gate_losses"])
    return jnp.sum(out * r), cols["gate_losses"]["bce"][0]  # task-like term (STE), BCE

  params = {"gate_w": w, "gate_b": b}
  for pick in (0, 1):  # each path alone
    g = jax.grad(lambda p: losses(p)[pick])(params)
    for name in ("gate_w", "gate_b"):
      assert np.all(np.isfinite(np.asarray(g[name]))) and float(jnp.abs(g[name]).max()) > 0, (pick, name)
  # the STE: the task term's gradient w.r.t. b is Σ y·r · dσ(logits) per channel
  _, _, logits, _, _ = np_gate(x, y, w, b, 0.85)
  s = 1 / (1 + np.exp(-logits))
  yr = (np.asarray(y, np.float64) * np.asarray(r)).sum(axis=(2, 3)).reshape(logits.shape)
  g_b = jax.grad(lambda p: losses(p)[0])(params)["gate_b"]
  np.testing.assert_allclose(np.asarray(g_b), (yr * s * (1 - s)).sum(0), rtol=1e-4, atol=1e-6)


@pytest.mark.integration
def test_gate_taps_do_not_accumulate_over_applies():
  from mdsnn_jax import nn as nn_lib
  model = nn_lib.create_model({"name": "digits_cnn", "timesteps": 2,
                               "neuron": {"gate_rho": 0.85}}, 10)
  x = jnp.ones((2, 8, 8, 1))
  variables = dict(model.init(key(0), x, train=False))  # every collection, the taps too
  assert "gate_masks" in variables and "gate_losses" in variables
  for _ in range(2):
    _, variables_out = model.apply(variables, x, train=False,
                                   mutable=["gate_masks", "gate_losses"])
    variables = {**variables, **variables_out}
  for col in ("gate_masks", "gate_losses"):
    for leaf in jax.tree_util.tree_leaves(variables[col], is_leaf=lambda v: isinstance(v, tuple)):
      assert isinstance(leaf, tuple) and len(leaf) == 1, (col, leaf)


@pytest.mark.parametrize("rho", [0.0, -0.2, 1.5, float("nan"), True])
def test_gate_rho_outside_0_1_is_refused(rho):
  from mdsnn_jax import nn as nn_lib
  with pytest.raises(ValueError, match=r"gate_rho .*\(0, 1\].*" + repr(rho).replace(".", r"\.")):
    NeuronConfig(gate_rho=rho)
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    nn_lib.create_model({"name": "vgg9", "neuron": {"gate_rho": rho}}, 10)
  assert NeuronConfig(gate_rho=1.0).gate_rho == 1.0 and NeuronConfig().gate_rho is None
