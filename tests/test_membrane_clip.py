"""The learned membrane clip (uniform membrane quantizer, learn_clip=True) inside a LIF layer
and a model: the forward uses the trained clip value, and the clip receives the gradient of
the LSQ-style rule dQ/dc = (round(u/Δ) − u/Δ)/n inside [−c, c], sign(u) outside.

The reference is a NumPy LIF loop with the quantizer written out (Δ = c/n, n = 3 for 3 bits,
rounding half toward zero), not the library's scan.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mdsnn_jax.nn.layers import LIF, NeuronConfig
from mdsnn_jax.nn.models import create_model, default_model_config, init_variables

SEED = 0
BITS, N = 3, 3  # 2n + 1 = 2^3 − 1 levels
MQ = {"kind": "uniform", "bits": BITS, "clip": 2.0, "learn_clip": True}
LAM, TH = 0.5, 1.0


def np_quant(u, c):
  v = u / (c / N)
  q = np.sign(v) * np.ceil(np.abs(v) - 0.5)  # nearest integer, ties toward zero
  return np.clip(q, -N, N) * (c / N)


def np_lif(x, c):
  """Hard-reset LIF with the stored state quantized: returns (spikes, pre-reset h, u_t)."""
  u = np.zeros(x.shape[1:])
  ss, hs, us = [], [], []
  for t in range(x.shape[0]):
    h = LAM * u + x[t]
    s = (h >= TH).astype(np.float64)
    u = np_quant(h * (1 - s), c)
    ss.append(s), hs.append(h), us.append(u)
  return np.stack(ss), np.stack(hs), np.stack(us)


def inputs(seed):
  # Currents mostly below θ, so the stored states spread over the clip range and beyond it.
  return np.random.default_rng(seed).normal(-0.3, 1.2, (4, 3, 16))


def run(layer, c, x):
  variables = {"params": {"mq": {"clip": jnp.asarray(c, jnp.float32)}}}
  s, cols = layer.apply(variables, jnp.asarray(x, jnp.float32), mutable=["membranes"])
  return np.asarray(s), np.asarray(cols["membranes"]["h"][0])


@pytest.mark.parametrize("c", [0.4, 2.0])
def test_forward_uses_the_learned_clip(c):
  x = inputs(SEED)
  layer = LIF(NeuronConfig(LAM, TH), MQ)
  s, h = run(layer, c, x)
  want_s, want_h, _ = np_lif(x, c)
  np.testing.assert_array_equal(s, want_s, err_msg=f"seed {SEED}, clip {c}")
  np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-6, err_msg=f"seed {SEED}, clip {c}")


def test_changing_the_clip_param_changes_the_membranes():
  # The init value (2.0, from the config) is not baked into the forward: the param is read.
  x = inputs(SEED)
  layer = LIF(NeuronConfig(LAM, TH), MQ)
  _, h_small = run(layer, 0.4, x)
  _, h_init = run(layer, 2.0, x)
  assert np.abs(h_small - h_init).max() > 0.1


def test_clip_gradient_through_the_layer_matches_the_rule():
  x = inputs(SEED + 1)
  c = 0.9
  r = np.random.default_rng(SEED + 2).normal(size=x.shape[1:])
  layer = LIF(NeuronConfig(LAM, TH), MQ)

  def loss(clip):
    # h_1 = λ·Q(u_0) + x_1: the clip enters step 1's membrane through the stored state.
    _, cols = layer.apply({"params": {"mq": {"clip": clip}}}, jnp.asarray(x[:2], jnp.float32),
                          mutable=["membranes"])
    return jnp.sum(jnp.asarray(r, jnp.float32) * cols["membranes"]["h"][0][1])

  g = float(jax.grad(loss)(jnp.asarray(c, jnp.float32)))
  h0 = x[0]
  u0 = h0 * (h0 < TH)
  v = u0 / (c / N)
  inside = np.abs(u0) <= c
  assert 0 < inside.sum() < inside.size, f"seed {SEED + 1}"
  rule = np.where(inside, (np.sign(v) * np.ceil(np.abs(v) - 0.5) - v) / N, np.sign(v))
  want = LAM * np.sum(r * rule)
  assert g == pytest.approx(want, rel=1e-4), f"seed {SEED + 1}"
  assert abs(g) > 1e-3


@pytest.mark.integration
def test_every_lif_clip_of_a_model_receives_a_gradient():
  cfg = default_model_config()
  cfg.name, cfg.timesteps = "digits_cnn", 3
  cfg.quant.membrane = MQ
  model = create_model(cfg, 10)
  x = jnp.asarray(np.random.default_rng(SEED).random((8, 8, 8, 1)), jnp.float32)
  variables = init_variables(model, jax.random.PRNGKey(SEED), x)
  clips = {k: v for k, v in traverse_util.flatten_dict(variables["params"], sep="/").items()
           if k.endswith("mq/clip")}
  assert sorted(clips) == ["lif0/mq/clip", "lif1/mq/clip"]

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats", "quant_state"])
    return jnp.mean(logits ** 2)

  grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(variables["params"]), sep="/")
  for k in clips:
    g = float(grads[k])
    assert np.isfinite(g) and g != 0.0, f"{k}: gradient {g} (seed {SEED})"
