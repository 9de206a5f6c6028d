"""Residual blocks and whole residual networks against a forward written out in NumPy.

The reference below is written from the architectures' definitions (MS-ResNet: membrane
shortcut, y = BN(conv(LIF(BN(conv(LIF(x)))))) + x; SEW-ResNet ADD: out = SN(BN(conv(SN(BN(
conv(s)))))) + s; a 1×1 conv + BN shortcut (+ SN for SEW) when the shape changes), not
from the library's code: convolutions as sums of shifted matrix products, BN in eval mode
from random running statistics, the LIF recurrence as a Python loop. Dropping a shortcut
(e.g. SEWBlock's `return y + s` → `return y`) makes these tests fail.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mdsnn_jax.nn.layers import NeuronConfig
from mdsnn_jax.nn.models import Builder, MSBlock, MSResNet, SEWBlock, SEWResNet, init_variables

SEED = 0
EPS = 1e-5  # TDBatchNorm's epsilon


# ------------------------------------------------------------------ NumPy reference


def np_conv(x, kernel, stride=1):
  """x [N, H, W, Cin] ∗ kernel [k, k, Cin, Cout], zero padding k//2 each side (PyTorch's)."""
  k = kernel.shape[0]
  p = k // 2
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  out = np.zeros((n, ho, wo, kernel.shape[-1]), np.float64)
  for i in range(k):
    for j in range(k):
      patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out += patch @ kernel[i, j]
  return out


def np_conv_bn(x, p, bs, stride=1):
  """conv (no bias) then eval-mode BN, on [T, B, H, W, C] (or [B, H, W, C])."""
  lead = x.shape[:-3]
  y = np_conv(x.reshape((-1,) + x.shape[-3:]), p["conv"]["kernel"], stride)
  y = y.reshape(lead + y.shape[1:])
  return (y - bs["bn"]["mean"]) / np.sqrt(bs["bn"]["var"] + EPS) * p["bn"]["scale"] + p["bn"]["bias"]


def np_lif(x, decay, threshold):
  """Hard-reset LIF over the leading time axis: h = λu + x, s = 1[h ≥ θ], u = h(1 − s)."""
  u = np.zeros(x.shape[1:])
  out = []
  for t in range(x.shape[0]):
    h = decay * u + x[t]
    s = (h >= threshold).astype(np.float64)
    u = h * (1 - s)
    out.append(s)
  return np.stack(out)


def np_ms_block(x, p, bs, lam, th, stride):
  s = np_lif(x, lam, th)
  y = np_conv_bn(s, p["conv1"], bs["conv1"], stride)
  y = np_lif(y, lam, th)
  y = np_conv_bn(y, p["conv2"], bs["conv2"])
  shortcut = np_conv_bn(s, p["downsample"], bs["downsample"], stride) if "downsample" in p else x
  return y + shortcut


def np_sew_block(s, p, bs, lam, th, stride):
  y = np_lif(np_conv_bn(s, p["conv1"], bs["conv1"], stride), lam, th)
  y = np_lif(np_conv_bn(y, p["conv2"], bs["conv2"]), lam, th)
  if "downsample" in p:
    s = np_lif(np_conv_bn(s, p["downsample"], bs["downsample"], stride), lam, th)
  return y + s


def np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


# ------------------------------------------------------------------ helpers


def randomize(variables, seed):
  """Random params (BN scales ~ U[0.5, 1.5], offsets ~ N(0.6, 0.5)) and running statistics
  (var > 0), float64 NumPy copies for the reference and float32 for the model."""
  rng = np.random.default_rng(seed)
  out = {}
  for col in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables[col]), sep="/")
    new = {}
    for path, v in flat.items():
      if path.endswith("bn/var"):
        new[path] = rng.uniform(0.5, 2.0, v.shape)
      elif path.endswith("bn/scale"):
        new[path] = rng.uniform(0.5, 1.5, v.shape)
      elif path.endswith("bn/bias"):  # positive on average, so that the LIFs fire
        new[path] = rng.normal(0.6, 0.5, v.shape)
      elif path.endswith("kernel"):
        fan_in = int(np.prod(v.shape[:-1]))
        new[path] = rng.normal(0, 1.5 / np.sqrt(fan_in), v.shape)
      else:
        new[path] = rng.normal(0, 0.3, v.shape)
    out[col] = traverse_util.unflatten_dict(new, sep="/")
  f32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)
  return out, f32


def to_np64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def check_close(got, want, seed, what):
  got = np.asarray(got, np.float64)
  # Spikes make the function discontinuous: the float32 model and the float64 reference agree
  # unless a membrane lies within rounding of θ (not the case for these fixed seeds).
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                             err_msg=f"{what} differs from the NumPy reference (seed {seed})")


BLOCK_CASES = [(4, 4, 1), (4, 8, 2), (4, 8, 1)]  # (C_in, C_out, stride): identity + 2 downsamples


# ------------------------------------------------------------------ blocks


@pytest.mark.parametrize("c_in,c_out,stride", BLOCK_CASES)
def test_ms_block_matches_numpy(c_in, c_out, stride):
  seed = SEED + c_out + stride
  lam, th = 0.25, 0.5
  build = Builder(neuron=NeuronConfig(lam, th))
  block = MSBlock(build, c_out, stride)
  rng = np.random.default_rng(seed)
  x = rng.normal(0.3, 1.0, (3, 2, 6, 6, c_in))  # membrane-valued stream [T, B, H, W, C]
  variables = block.init(jax.random.PRNGKey(seed), jnp.asarray(x, jnp.float32))
  ref_vars, model_vars = randomize(variables, seed)
  got = block.apply(model_vars, jnp.asarray(x, jnp.float32))
  want = np_ms_block(x, ref_vars["params"], ref_vars["batch_stats"], lam, th, stride)
  assert ("downsample" in ref_vars["params"]) == (c_in != c_out or stride != 1)
  check_close(got, want, seed, f"MSBlock({c_in}→{c_out}, stride {stride})")
  # The shortcut carries real signal: the residual branch alone is far from the output.
  p, bs = ref_vars["params"], ref_vars["batch_stats"]
  branch = np_conv_bn(np_lif(np_conv_bn(np_lif(x, lam, th), p["conv1"], bs["conv1"], stride),
                             lam, th), p["conv2"], bs["conv2"])
  assert np.abs(want - branch).max() > 0.1


@pytest.mark.parametrize("c_in,c_out,stride", BLOCK_CASES)
def test_sew_block_matches_numpy(c_in, c_out, stride):
  seed = SEED + 10 + c_out + stride
  lam, th = 0.5, 1.0
  build = Builder(neuron=NeuronConfig(lam, th))
  block = SEWBlock(build, c_out, stride)
  rng = np.random.default_rng(seed)
  s = (rng.random((3, 2, 6, 6, c_in)) < 0.4).astype(np.float64)  # input spikes
  variables = block.init(jax.random.PRNGKey(seed), jnp.asarray(s, jnp.float32))
  ref_vars, model_vars = randomize(variables, seed)
  got = block.apply(model_vars, jnp.asarray(s, jnp.float32))
  want = np_sew_block(s, ref_vars["params"], ref_vars["batch_stats"], lam, th, stride)
  check_close(got, want, seed, f"SEWBlock({c_in}→{c_out}, stride {stride})")
  # Spike counts: the ADD of two spike trains takes the value 2 somewhere in this input.
  assert set(np.unique(want)) <= {0.0, 1.0, 2.0} and (want == 2).any(), np.unique(want)


# ------------------------------------------------------------------ whole networks


def np_msresnet(x, p, bs, lam, th, t, stages):
  h = np_conv_bn(x, p["stem"], bs["stem"])  # static image: stem once, then broadcast over T
  h = np.broadcast_to(h[None], (t,) + h.shape)
  for i, (_, n, stride) in enumerate(stages):
    for j in range(n):
      name = f"layer{i + 1}"
      h = np_ms_block(h, p[name][f"block{j}"], bs[name][f"block{j}"], lam, th,
                      stride if j == 0 else 1)
  h = np_lif(h, lam, th).mean(axis=(2, 3))
  return np_dense(h, p["fc"])


def np_sewresnet(x, p, bs, lam, th, t, stages):
  h = np_conv_bn(x, p["stem"], bs["stem"])
  h = np_lif(np.broadcast_to(h[None], (t,) + h.shape), lam, th)
  for i, (_, n, stride) in enumerate(stages):
    for j in range(n):
      name = f"layer{i + 1}"
      h = np_sew_block(h, p[name][f"block{j}"], bs[name][f"block{j}"], lam, th,
                       stride if j == 0 else 1)
  return np_dense(h.mean(axis=(2, 3)), p["fc"])


# Two stages: an identity-shortcut block, then a stride-2 widening block (1×1 shortcut),
# then an identity block at the new width.
STAGES = ((4, 1, 1), (8, 2, 2))


@pytest.mark.integration
@pytest.mark.parametrize("family", ["ms", "sew"])
def test_resnet_matches_numpy(family):
  seed = SEED + (20 if family == "ms" else 30)
  t = 3
  lam, th = (0.25, 0.5) if family == "ms" else (0.5, 1.0)
  cls = MSResNet if family == "ms" else SEWResNet
  model = cls(num_classes=5, timesteps=t, stem_channels=4, stages=STAGES,
              neuron=NeuronConfig(lam, th), conv_impl="xla")
  rng = np.random.default_rng(seed)
  x = rng.normal(0.0, 1.0, (2, 8, 8, 3))
  variables = init_variables(model, jax.random.PRNGKey(seed), jnp.asarray(x, jnp.float32))
  ref_vars, model_vars = randomize(variables, seed)
  got = jax.jit(lambda v, x: model.apply(v, x))(model_vars, jnp.asarray(x, jnp.float32))
  ref = np_msresnet if family == "ms" else np_sewresnet
  want = ref(x, ref_vars["params"], ref_vars["batch_stats"], lam, th, t, STAGES)
  assert got.shape == want.shape == (t, 2, 5)
  check_close(got, want, seed, f"{cls.__name__} logits")
  # Not a degenerate case: the logits change over time and across the batch.
  assert np.ptp(want, axis=0).max() > 1e-2 and np.ptp(want, axis=1).max() > 1e-2
