"""ResNet-18 / ResNet-19 with the spike after the residual add (`SpikeAfterAddBlock`,
`SpikingResNet`: SpQuant-SNN's and tdBN's form), against a NumPy forward written here from the
definition, not from the library's code:

    out = LIF(BN(conv3×3(LIF(BN(conv3×3_s(s))))) + shortcut(s)),
    shortcut = s, or BN(conv1×1_s(s)) when the shape changes,

convolutions as explicit loops over the kernel taps, BN in inference mode from given running
statistics, the LIF recurrence as a Python loop (h = λu + I; s = 1[h ≥ θ]; hard reset
u = h(1 − s), as `neuron.spike_and_reset`). Plus the whole networks' structure (parameter
counts by hand, tap names), the quantized student's gradient and remat.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from mdsnn_jax import distill, firing, hardware
from mdsnn_jax.nn.layers import NeuronConfig
from mdsnn_jax.nn.models import (MODELS, NEURON_DEFAULTS, RESNET18_STAGES, RESNET19_STAGES,
                                 Builder, SpikeAfterAddBlock, SpikingResNet, create_model,
                                 default_model_config, init_variables, param_count)

LAM, TH = 0.25, 0.5  # the ResNet family's neuron defaults
EPS = 1e-5  # TDBatchNorm's epsilon
TAPS = ["membranes", "spikes"]
STUDENT = {"weight": {"kind": "sawb", "bits": 4}, "membrane": {"kind": "ternary"},
           "first_layer": {"kind": "none"}, "last_layer": {"kind": "none"}, "bn_fold": True}
# Compiling these deep graphs with XLA's backend optimisations off takes a fraction of the time.
FAST_COMPILE = {"xla_backend_optimization_level": "0"}


def key(seed):
  return jax.random.key(seed, impl="rbg")


def flat(tree):
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/")


def tap_names(collection):
  return {"/".join(path[:-1]) for path in traverse_util.flatten_dict(collection)}


def config(name, **kw):
  cfg = default_model_config()
  cfg.name = name
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


# ------------------------------------------------------------------ NumPy reference


def np_conv(x, kernel, stride):
  """[N, H, W, Cin] ∗ [k, k, Cin, Cout], zero padding k//2 per side, as a loop over the taps."""
  k = kernel.shape[0]
  p = k // 2
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  out = np.zeros((n, ho, wo, kernel.shape[-1]))
  for i in range(ho):
    for j in range(wo):
      window = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]  # [N, k, k, Cin]
      out[:, i, j, :] = np.einsum("nabc,abcd->nd", window, kernel)
  return out


def np_conv_bn(x, p, bs, stride=1):
  """conv (no bias), then BN in inference mode, on [T, B, H, W, C] or [B, H, W, C]."""
  lead = x.shape[:-3]
  y = np_conv(x.reshape((-1,) + x.shape[-3:]), p["conv"]["kernel"], stride)
  y = y.reshape(lead + y.shape[1:])
  bn = p["bn"]
  return (y - bs["bn"]["mean"]) / np.sqrt(bs["bn"]["var"] + EPS) * bn["scale"] + bn["bias"]


def np_lif(current, lam=LAM, th=TH):
  """(spikes, pre-reset membranes h) over the leading time axis, hard reset."""
  u = np.zeros(current.shape[1:])
  spikes, membranes = [], []
  for t in range(current.shape[0]):
    h = lam * u + current[t]
    s = (h >= th).astype(np.float64)
    u = h * (1.0 - s)
    spikes.append(s)
    membranes.append(h)
  return np.stack(spikes), np.stack(membranes)


def np_block(s, p, bs, stride):
  """Spike after the add. Returns (out spikes, {tap: (spikes, membranes)})."""
  s1, h1 = np_lif(np_conv_bn(s, p["conv1"], bs["conv1"], stride))
  y = np_conv_bn(s1, p["conv2"], bs["conv2"])
  shortcut = np_conv_bn(s, p["downsample"], bs["downsample"], stride) if "downsample" in p else s
  s2, h2 = np_lif(y + shortcut)
  return s2, {"lif1": (s1, h1), "lif2": (s2, h2)}


def np_ms_block(x, p, bs, stride):
  """The membrane-shortcut (MS-ResNet) form with the same parameters, for contrast:
  y = BN(conv(LIF(BN(conv(LIF(x)))))) + shortcut, no spike after the add."""
  s = np_lif(x)[0]
  y = np_conv_bn(np_lif(np_conv_bn(s, p["conv1"], bs["conv1"], stride))[0], p["conv2"], bs["conv2"])
  shortcut = np_conv_bn(s, p["downsample"], bs["downsample"], stride) if "downsample" in p else x
  return y + shortcut


def np_network(x, p, bs, t, stages, hidden, form="spike_after_add"):
  """Logits [T, B, classes] of a static image x [B, H, W, 3]. 'spike_after_add': stem
  conv-BN-LIF, blocks, avgpool, (fc1, LIF), fc. 'ms': the same parameters wired as MS-ResNet
  (stem without LIF, membrane stream, LIF before the pooling)."""
  stem = np_conv_bn(x, p["stem"], bs["stem"])  # static image: once, then over T
  h = np.broadcast_to(stem[None], (t,) + stem.shape)
  if form == "spike_after_add":
    h = np_lif(h)[0]
  for i, (_, n, stride) in enumerate(stages):
    for j in range(n):
      pb, bb = p[f"layer{i + 1}"][f"block{j}"], bs[f"layer{i + 1}"][f"block{j}"]
      st = stride if j == 0 else 1
      h = np_block(h, pb, bb, st)[0] if form == "spike_after_add" else np_ms_block(h, pb, bb, st)
  if form == "ms":
    h = np_lif(h)[0]
  h = h.mean(axis=(2, 3))
  if hidden:
    h = np_lif(h @ p["fc1"]["kernel"] + p["fc1"]["bias"])[0]
  return h @ p["fc"]["kernel"] + p["fc"]["bias"]


def randomize(variables, seed):
  """Random parameters and running statistics (var > 0, BN offsets positive on average so
  that the LIFs fire): (float64 NumPy for the reference, the same values in float32 for the
  model; the reference reads the float32-rounded values, so both see the same numbers)."""
  rng = np.random.default_rng(seed)
  out = {}
  for col in ("params", "batch_stats"):
    new = {}
    for path, v in flat(variables[col]).items():
      if path.endswith("bn/var"):
        a = rng.uniform(0.5, 2.0, v.shape)
      elif path.endswith("bn/scale"):
        a = rng.uniform(0.5, 1.5, v.shape)
      elif path.endswith("bn/bias"):
        a = rng.normal(0.4, 0.4, v.shape)
      elif path.endswith("kernel"):
        a = rng.normal(0, 1.5 / np.sqrt(np.prod(v.shape[:-1])), v.shape)
      else:
        a = rng.normal(0, 0.3, v.shape)
      new[path] = a.astype(np.float32)
    out[col] = traverse_util.unflatten_dict(new, sep="/")
  ref = jax.tree.map(lambda a: np.asarray(a, np.float64), out)
  return ref, jax.tree.map(jnp.asarray, out)


# ------------------------------------------------------------------ one block vs NumPy


@pytest.mark.parametrize("c_in,c_out,stride", [(4, 4, 1), (4, 6, 2)])
@pytest.mark.parametrize("t", [2, 3])
def test_block_matches_numpy(c_in, c_out, stride, t):
  """Identity and downsampling shortcut, float32, B = 2: spikes exactly, membranes to 1e-5."""
  seed = 100 * t + 10 * c_out + stride
  block = SpikeAfterAddBlock(Builder(neuron=NeuronConfig(LAM, TH)), c_out, stride)
  rng = np.random.default_rng(seed)
  s = (rng.random((t, 2, 8, 8, c_in)) < 0.4).astype(np.float32)  # input spikes
  variables = block.init(key(seed), jnp.asarray(s))
  assert ("downsample" in variables["params"]) == (stride != 1 or c_in != c_out)
  ref, model_vars = randomize(variables, seed)
  out, taps = jax.jit(lambda v, x: block.apply(v, x, mutable=TAPS))(model_vars, jnp.asarray(s))
  want, want_taps = np_block(s.astype(np.float64), ref["params"], ref["batch_stats"], stride)
  assert out.shape == want.shape == (t, 2, 8 // stride, 8 // stride, c_out)
  np.testing.assert_array_equal(np.asarray(out), want)
  got_mem, got_spk = distill.flatten_taps(taps["membranes"]), distill.flatten_taps(taps["spikes"])
  assert set(got_mem) == set(got_spk) == {"lif1", "lif2"}
  for name, (spk, mem) in want_taps.items():
    # spikes are exact only if no membrane sits within float32 rounding of θ (true here)
    assert np.abs(mem - TH).min() > 1e-5, name
    np.testing.assert_array_equal(np.asarray(got_spk[name]), spk, err_msg=name)
    np.testing.assert_allclose(np.asarray(got_mem[name]), mem, rtol=1e-5, atol=1e-5, err_msg=name)
  # not degenerate: both LIFs fire and stay silent somewhere, the output is binary and the
  # shortcut matters (the branch alone would give other spikes)
  for spk, _ in want_taps.values():
    assert 0 < spk.mean() < 1
  p, bs = ref["params"], ref["batch_stats"]
  branch_only = np_lif(np_conv_bn(want_taps["lif1"][0], p["conv2"], bs["conv2"]))[0]
  assert not np.array_equal(branch_only, want)


def test_hand_made_case_spikes_after_the_add():
  """Constant branch −0.3, identity shortcut, input spikes s: the block's output is
  LIF(s − 0.3) (fires exactly where s = 1, since 0.7 ≥ θ = 0.5 and −0.3 < θ), where the
  MS form would return the membrane s − 0.3 itself and SEW the count 0 + s."""
  block = SpikeAfterAddBlock(Builder(neuron=NeuronConfig(LAM, TH)), 2, 1)
  s = np.zeros((3, 1, 4, 4, 2), np.float32)
  s[0, 0, 1, 2, 0] = s[1, 0, 3, 3, 1] = s[2, 0, :2, :, 0] = 1.0
  variables = jax.tree.map(np.array, block.init(key(0), jnp.asarray(s)))  # writable
  p, bs = variables["params"], variables["batch_stats"]
  p["conv2"]["conv"]["kernel"][:] = 0.0  # branch = BN(0) = bias
  p["conv2"]["bn"]["bias"][:] = -0.3
  bs["conv2"]["bn"]["mean"][:], bs["conv2"]["bn"]["var"][:] = 0.0, 1.0
  out, taps = block.apply(variables, jnp.asarray(s), mutable=["membranes"])
  np.testing.assert_array_equal(np.asarray(out), s)
  h = np.asarray(distill.flatten_taps(taps["membranes"])["lif2"])
  # h_t = λ·u_{t−1} + (s_t − 0.3): the reset empties u where it fired, the rest leaks
  want_h = np_lif(s.astype(np.float64) - 0.3)[1]
  np.testing.assert_allclose(h, want_h, rtol=1e-6, atol=1e-6)
  assert not np.allclose(h, s - 0.3)  # the leak of the non-firing −0.3 shows at t ≥ 1


# ------------------------------------------------------------------ whole network vs NumPy

@pytest.mark.parametrize("name,width,seed", [("resnet19", 1 / 32, 1), ("resnet18", 1 / 16, 0)])
def test_network_is_the_spike_after_add_form_not_ms(name, width, seed):
  """The registered model, full depth at small width (ResNet-19: stem 4, stages 4/8/16 with
  3/3/2 blocks, avgpool → fc1 8 → LIF → fc; ResNet-18: stem 4, 4/8/16/32 × 2, avgpool → fc),
  T = 3, 8×8 images, equals the NumPy spike-after-add network; the MS wiring of the same
  parameters (spike before the conv, membranes added) gives other logits. (Seeds whose
  logits vary over time and batch: with random weights a few readouts are constant.)"""
  t = 3
  model = create_model(config(name, width=width, timesteps=t, conv_impl="xla"), 5)
  stages = [(model.ch(c), n, s) for c, n, s in model.stages]
  assert model.ch(model.stem_channels) == 4 and stages[0][0] == 4
  x = np.random.default_rng(seed).normal(0.0, 1.0, (2, 8, 8, 3)).astype(np.float32)
  variables = init_variables(model, key(seed), jnp.asarray(x))
  ref, model_vars = randomize(variables, seed)
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(model_vars, jnp.asarray(x)))
  args = (x.astype(np.float64), ref["params"], ref["batch_stats"], t, stages, model.hidden)
  want = np_network(*args)
  assert got.shape == want.shape == (t, 2, 5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.ptp(want, axis=0).max() > 1e-2 and np.ptp(want, axis=1).max() > 1e-2
  ms = np_network(*args, form="ms")
  assert np.abs(ms - want).max() > 0.1


def test_resnet19_blocks_are_spike_after_add_blocks():
  """The registered 'resnet19' / 'resnet18' are `SpikingResNet`s of `SpikeAfterAddBlock`s with
  the reference stages and head; 'msresnet19' keeps the MS form."""
  r19 = create_model(config("resnet19"), 10)
  r18 = create_model(config("resnet18"), 10)
  assert isinstance(r19, SpikingResNet) and isinstance(r18, SpikingResNet)
  assert (r19.stem_channels, r19.stages, r19.hidden) == (128, RESNET19_STAGES, 256)
  assert (r18.stem_channels, r18.stages, r18.hidden) == (64, RESNET18_STAGES, None)
  assert RESNET19_STAGES == ((128, 3, 1), (256, 3, 2), (512, 2, 2))
  assert RESNET18_STAGES == ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))
  assert not isinstance(create_model(config("msresnet19"), 10), SpikingResNet)
  for name in ("resnet18", "resnet19"):
    assert NEURON_DEFAULTS[name] == NEURON_DEFAULTS["msresnet19"] == {"decay": LAM, "threshold": TH}
    assert name in MODELS


# ------------------------------------------------------------------ structure at small width


def hand_param_count(stem, stages, hidden, classes=10, c_in=3, stem_kernel=3):
  """conv kernels + BN (γ, β) + dense (W, b); a 1×1 conv + BN shortcut where the shape changes."""
  n = stem_kernel ** 2 * c_in * stem + 2 * stem
  prev = stem
  for c, blocks, stride in stages:
    for j in range(blocks):
      n += 9 * prev * c + 2 * c + 9 * c * c + 2 * c
      if prev != c or (j == 0 and stride != 1):
        n += prev * c + 2 * c
      prev = c
  if hidden:
    n += prev * hidden + hidden
    prev = hidden
  return n + prev * classes + classes


ARCH = {  # name: (stem, stages, hidden)
    "resnet19": (128, RESNET19_STAGES, 256),
    "resnet18": (64, RESNET18_STAGES, None),
}


@pytest.mark.parametrize("name", sorted(ARCH))
def test_param_counts_tap_names_and_layer_shapes(name):
  stem, stages, hidden = ARCH[name]
  x = jnp.zeros((2, 8, 8, 3))
  # Full width: the published counts (ResNet-19 ≈ 12.7 M as tdBN / TET; ResNet-18 for CIFAR
  # 11,173,962); 1/16 width: the hand count of the narrowed architecture.
  full = create_model(config(name), 10)
  published = {"resnet19": 12_697_994, "resnet18": 11_173_962}[name]
  assert param_count(jax.eval_shape(lambda: init_variables(full, key(0), x))["params"]) == published
  assert hand_param_count(stem, stages, hidden) == published
  w = 1 / 16
  model = create_model(config(name, width=w, timesteps=2), 10)
  variables = jax.eval_shape(lambda: init_variables(model, key(0), x))
  narrow = [(int(c * w), n, s) for c, n, s in stages]
  assert param_count(variables["params"]) == hand_param_count(
      int(stem * w), narrow, hidden and int(hidden * w))
  # Block / shortcut structure from the parameter tree.
  params = variables["params"]
  blocks = {f"layer{i + 1}/block{j}" for i, (_, n, _) in enumerate(stages) for j in range(n)}
  layers = {f"layer{i + 1}" for i in range(len(stages))}
  assert {k for k in params if k.startswith("layer")} == layers
  downsample = {f"layer{i + 1}/block0" for i, (c, _, s) in enumerate(stages)
                if s != 1 or (stem if i == 0 else stages[i - 1][0]) != c}
  assert downsample == ({"layer2/block0", "layer3/block0"} if name == "resnet19"
                        else {"layer2/block0", "layer3/block0", "layer4/block0"})
  for b in blocks:
    layer, block = b.split("/")
    expected = {"conv1", "conv2"} | ({"downsample"} if b in downsample else set())
    assert set(params[layer][block]) == expected, b
  assert ("fc1" in params) == (hidden is not None)
  # One membrane tap (and spike tap) per LIF: stem, two per block, the hidden layer's.
  logits, taps = jax.eval_shape(lambda v: model.apply(v, x, mutable=TAPS), variables)
  assert logits.shape == (2, 2, 10)  # [T, B, classes]; the trainer averages over T
  lifs = {"stem_lif"} | {f"{b}/lif{k}" for b in blocks for k in (1, 2)} | (
      {"fc1_lif"} if hidden else set())
  assert len(lifs) == {"resnet19": 18, "resnet18": 17}[name]
  assert tap_names(taps["membranes"]) == tap_names(taps["spikes"]) == lifs
  assert set(distill.flatten_taps(taps["membranes"])) == lifs
  # The crossbar model sees every conv and dense layer: stem, 2 per block, shortcuts, fc(s).
  shapes = hardware.layer_shapes_from_model(model, variables, x)
  assert len(shapes) == 1 + 2 * len(blocks) + len(downsample) + 1 + (hidden is not None)


# ------------------------------------------------------------------ quantized student, remat


# 'small' (the default tier): a shallow `SpikingResNet` with the same parts (static stem, an
# identity block, a stride-2 widening block with the 1×1 shortcut, the hidden LIF head); the
# full depths at 1/16 width run in the integration tier (their compile takes ~10 s on 2 cores).
N_LIF = {"small": 6, "resnet19": 18, "resnet18": 17}


@functools.lru_cache(maxsize=None)
def _model(name, remat="none"):
  kw = dict(timesteps=2, remat=remat, conv_impl="xla", lif_impl="scan", quant=STUDENT,
            neuron={"learn_threshold": True})
  if name == "small":
    cfg = config("resnet19", **kw)
    model = create_model(cfg, 10).clone(stem_channels=4, stages=((4, 1, 1), (6, 1, 2)), hidden=6)
  else:
    model = create_model(config(name, width=1 / 16, **kw), 10)
  return model


X = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _student(name):
  variables = compiled(lambda k, x: _model(name).init(k, x, train=False), key(1), X)
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats", "quant_state")}


@functools.lru_cache(maxsize=None)
def _loss_and_grads(name, remat="none"):
  """((loss, spike taps), gradients) of a training step of `_model(name, remat)` from the
  variables of `_student(name)` (remat renames no variable)."""
  model, x, variables = _model(name, remat), X, _student(name)

  def loss(params):
    logits, cols = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats", "quant_state", "membranes", "spikes"])
    taps = distill.flatten_taps(cols["membranes"])
    tap_loss = sum(jnp.mean(h ** 2) for h in taps.values()) / len(taps)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), jnp.arange(2)).mean()
    return ce + 0.1 * tap_loss, cols["spikes"]

  return compiled(jax.value_and_grad(loss, has_aux=True), variables["params"])


@pytest.mark.parametrize("name", [
    "small", pytest.param("resnet19", marks=pytest.mark.integration),
    pytest.param("resnet18", marks=pytest.mark.integration)])
def test_quantized_student_forward_and_finite_gradient(name):
  """4-bit SAWB weights, ternary membranes, folded BN, learnable thresholds: the training
  forward runs, the spikes are binary (firing-rate stats accept them), the gradient is finite
  and reaches every LIF's threshold, the quantized convs and the classifier."""
  (value, spikes), grads = _loss_and_grads(name)
  assert np.isfinite(float(value))
  g = flat(grads)
  assert all(np.all(np.isfinite(v)) for v in g.values())
  assert sum(k.endswith("theta_raw") for k in g) == N_LIF[name]
  for path in ("layer1/block0/conv1/conv/kernel", "layer2/block0/downsample/conv/kernel",
               "fc1/kernel", "fc/kernel"):
    if path.startswith("fc1") and name == "resnet18":
      continue
    assert np.abs(g[path]).max() > 0, path
  rates = firing.firing_rates(distill.flatten_taps(spikes))
  assert len(rates) == N_LIF[name]


@pytest.mark.parametrize("name,remat", [
    ("small", "layer"), ("small", "time"),
    pytest.param("resnet19", "layer", marks=pytest.mark.integration),
    pytest.param("resnet18", "time", marks=pytest.mark.integration)])
def test_remat_gives_the_same_loss_and_gradients(name, remat):
  shapes = jax.eval_shape(lambda k: _model(name, remat).init(k, X, train=False), key(1))
  names = traverse_util.flatten_dict(dict(shapes), sep="/")
  assert flat(_student(name)).keys() == {k for k in names if k.split("/")[0] in
                                         ("params", "batch_stats", "quant_state")}
  (l0, _), g0 = _loss_and_grads(name)
  (l1, _), g1 = _loss_and_grads(name, remat)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  f0, f1 = flat(g0), flat(g1)
  assert f0.keys() == f1.keys()
  for path in f0:
    scale = np.abs(f0[path]).max() + 1e-12
    np.testing.assert_allclose(f1[path] / scale, f0[path] / scale, atol=1e-5, err_msg=path)


def test_resnet19_spquant_is_the_spquant_codes_layout():
  """`resnet19_spquant`: SpQuant-SNN's code's ResNet-19, a 7×7 stride-2 stem of 128 channels
  (a 32×32 image is 16×16 after it), then 64/256/512 channels, a 1×1 shortcut into the first
  stage (128 → 64), hidden FC 256; the spike-after-add block of `resnet19`."""
  from mdsnn_jax.nn.models import RESNET19_SPQUANT_STAGES
  assert RESNET19_SPQUANT_STAGES == ((64, 3, 1), (256, 3, 2), (512, 2, 2))
  m = create_model(config("resnet19_spquant"), 10)
  assert isinstance(m, SpikingResNet) and (m.stem_kernel, m.stem_stride, m.hidden) == (7, 2, 256)
  assert NEURON_DEFAULTS["resnet19_spquant"] == NEURON_DEFAULTS["resnet19"]
  x = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(lambda: init_variables(m, key(0), x))["params"]
  assert params["stem"]["conv"]["kernel"].shape == (7, 7, 3, 128)
  assert set(params["layer1"]["block0"]) == {"conv1", "conv2", "downsample"}  # 128 -> 64
  assert param_count(params) == hand_param_count(128, RESNET19_SPQUANT_STAGES, 256, stem_kernel=7)
  # The stem's stride: taps of the first stage are 16×16, the last stage's 4×4.
  variables = jax.eval_shape(lambda: init_variables(m, key(0), x))
  _, taps = jax.eval_shape(lambda v: m.apply(v, x, mutable=TAPS), variables)
  flat = distill.flatten_taps(taps["membranes"])
  assert flat["stem_lif"].shape[2:4] == (16, 16)
  assert flat["layer1/block0/lif2"].shape[2:] == (16, 16, 64)
  assert flat["layer3/block1/lif2"].shape[2:] == (4, 4, 512)
