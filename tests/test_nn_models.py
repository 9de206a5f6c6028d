"""Tests for mdsnn_jax.nn.models. Full-size models only through jax.eval_shape (no compile);
numerics on small widths."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from mdsnn_jax.nn.layers import NeuronConfig, QuantConfig
from mdsnn_jax.nn.models import (MODELS, MSResNet, SEWResNet, create_model, default_model_config,
                                 init_student_from_teacher, init_variables, param_count)
from mdsnn_jax.quant import make_weight_quantizer

TAPS = ["membranes", "spikes"]
QUANT = {"weight": {"kind": "lsq", "bits": 4}, "membrane": {"kind": "ternary"},
         "first_layer": {"kind": "uniform", "bits": 8}, "last_layer": {"kind": "same"},
         "bn_fold": True, "bias_bits": 16}
# Two input sizes per model; digits models work on 8×8 digits.
SIZES = {name: (8, 16) if name.startswith("digits") else (32, 64) for name in MODELS}


def key(seed):
  # RBG keys: XLA:CPU compiles threefry's init-time random numbers several seconds slower.
  return jax.random.key(seed, impl="rbg")


def config(name, quant=None, **kw):
  cfg = default_model_config()
  cfg.name = name
  for k, v in kw.items():
    setattr(cfg, k, v)
  if quant is not None:
    cfg.quant = quant
  return cfg


def image(size, channels=3, batch=2):
  return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)


def input_channels(name):
  return 1 if name.startswith("digits") else 3


@functools.lru_cache(maxsize=None)
def abstract_vars(name, size, quantized=False):
  model = create_model(config(name, QUANT if quantized else None), 10)
  x = image(size, input_channels(name))
  return model, jax.eval_shape(lambda: init_variables(model, key(0), jnp.zeros(x.shape)))


def abstract_apply(model, variables, x, timesteps=None, train=False):
  fn = lambda v, x: model.apply(v, x, train=train, timesteps=timesteps,
                                mutable=TAPS + (["batch_stats", "quant_state"] if train else []))
  return jax.eval_shape(fn, variables, x)


def flat(tree):
  return {k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def tap_shapes(collection):
  # Drop the sow leaf ('h' / 's') and the tuple index: the tap name is the module path.
  out = {}
  for path, leaf in traverse_util.flatten_dict(collection).items():
    out["/".join(path[:-1])] = leaf[0].shape if isinstance(leaf, tuple) else leaf.shape
  return out


# ------------------------------------------------------------------ shapes and taps


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_and_tap_shapes_at_any_T_and_two_sizes(name):
  for size in SIZES[name]:
    model, variables = abstract_vars(name, size)
    x = image(size, input_channels(name))
    for t in (1, 2, 4):
      logits, taps = abstract_apply(model, variables, x, timesteps=t)
      assert logits.shape == (t, 2, 10)
      mem, spk = tap_shapes(taps["membranes"]), tap_shapes(taps["spikes"])
      assert mem and mem == spk
      for tap, shape in mem.items():
        assert shape[:2] == (t, 2), (tap, shape)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quantized_variant_has_same_taps_and_superset_params(name):
  size = SIZES[name][0]
  x = image(size, input_channels(name))
  fp_model, fp_vars = abstract_vars(name, size)
  q_model, q_vars = abstract_vars(name, size, quantized=True)
  _, fp_taps = abstract_apply(fp_model, fp_vars, x, timesteps=2, train=True)
  logits, q_taps = abstract_apply(q_model, q_vars, x, timesteps=2, train=True)
  assert logits.shape == (2, 2, 10)
  for col in TAPS:
    assert tap_shapes(fp_taps[col]) == tap_shapes(q_taps[col])
  fp_p, q_p = flat(fp_vars["params"]), flat(q_vars["params"])
  assert set(fp_p) < set(q_p)
  assert all(fp_p[k].shape == q_p[k].shape for k in fp_p)
  assert all("/wq/" in k for k in set(q_p) - set(fp_p))
  assert flat(fp_vars.get("batch_stats", {})).keys() == flat(q_vars.get("batch_stats", {})).keys()


GATE_COLS = ["gate_masks", "gate_losses"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gated_variant_gates_every_unit_and_sows_masks_and_losses(name):
  """gate_rho on: a '<unit>_gate' beside every conv + BN unit (and hidden dense layer), the
  rest of the tree unchanged; a training forward sows [T or 1, B, C] masks and scalar BCEs."""
  size = SIZES[name][0]
  x = image(size, input_channels(name))
  model, plain = abstract_vars(name, size)
  gated = create_model(config(name, neuron={"gate_rho": 0.85}), 10)
  variables = jax.eval_shape(lambda: init_variables(gated, key(0), jnp.zeros(x.shape)))
  p, g = flat(plain["params"]), flat(variables["params"])
  assert set(p) < set(g) and all(p[k].shape == g[k].shape for k in p)
  extra = set(g) - set(p)
  assert all(k.rsplit("/", 2)[-2].endswith("_gate") and k.endswith(("gate_w", "gate_b"))
             for k in extra), extra
  units = {k[:-len("/conv/kernel")] for k in p if k.endswith("/conv/kernel")}
  if name == "digits_mlp":
    units = {"fc1"}
  assert {k.rsplit("/", 1)[0][:-len("_gate")] for k in extra} >= units
  fn = lambda v, x: gated.apply(v, x, train=True, timesteps=2,
                                mutable=GATE_COLS + ["batch_stats", "quant_state"])
  logits, cols = jax.eval_shape(fn, variables, x)
  masks, losses = tap_shapes(cols["gate_masks"]), tap_shapes(cols["gate_losses"])
  assert set(masks) == set(losses) == {k.rsplit("/", 1)[0] for k in extra}
  for tap, shape in masks.items():
    assert shape[0] in (1, 2) and shape[1] == 2, (tap, shape)
    assert shape[-1] == g[f"{tap}/gate_b"].shape[0]
  assert all(shape == () for shape in losses.values())


@pytest.mark.integration
def test_gated_model_with_remat_layer_has_the_same_loss_and_gradients():
  """The gate sits outside the recomputed conv + BN unit, so its sown BCE keeps its gradient."""
  x = _rgb(0, 4, 8)[..., :1]
  labels = jnp.arange(4) % 10

  def loss_and_grads(remat):
    model = create_model(config("digits_cnn", timesteps=2, remat=remat, conv_impl="xla",
                                lif_impl="scan", neuron={"gate_rho": 0.85}), 10)
    variables = _init(model, 0, x)

    def loss(params):
      logits, cols = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats", "gate_losses"])
      bce = jnp.mean(jnp.stack(jax.tree_util.tree_leaves(cols["gate_losses"])))
      return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), labels).mean() + bce

    return _compiled(jax.value_and_grad(loss), variables["params"])

  (l0, g0), (l1, g1) = loss_and_grads("none"), loss_and_grads("layer")
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  for (path, a), b in zip(flat(g0).items(), flat(g1).values()):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6, err_msg=path)
  assert float(jnp.abs(g0["conv1_gate"]["gate_w"]).max()) > 0


def test_event_input_shapes_and_two_polarity_stem():
  model, _ = abstract_vars("vgg9", 32)
  x = jax.ShapeDtypeStruct((2, 5, 48, 48, 2), jnp.float32)  # [B, T, H, W, 2]
  variables = jax.eval_shape(lambda: init_variables(model, key(0), jnp.zeros(x.shape)))
  assert variables["params"]["conv0"]["conv"]["kernel"].shape == (3, 3, 2, 64)
  logits, taps = abstract_apply(model, variables, x)
  assert logits.shape == (5, 2, 10)
  assert tap_shapes(taps["membranes"])["lif0"] == (5, 2, 48, 48, 64)
  with pytest.raises(ValueError, match="T=5"):
    abstract_apply(model, variables, x, timesteps=4)
  with pytest.raises(ValueError, match=r"\(2, 32, 32\)"):
    abstract_apply(model, variables, jax.ShapeDtypeStruct((2, 32, 32), jnp.float32))


def test_vgg9_matches_spikesim_layer_table():
  # docs/method.md (SpikeSim VGG9 on CIFAR-10): the crossbar model's layer list.
  c_in = [3, 64, 64, 128, 128, 256, 256]
  c_out = [64, 64, 128, 128, 256, 256, 256]
  h_in = [32, 32, 16, 16, 8, 8, 8]
  h_out = [32, 16, 16, 8, 8, 8, 4]  # after pooling
  model, variables = abstract_vars("vgg9", 32)
  _, taps = abstract_apply(model, variables, image(32))
  mem = tap_shapes(taps["membranes"])
  pooled_after = {1, 3, 6}
  for i in range(7):
    assert variables["params"][f"conv{i}"]["conv"]["kernel"].shape == (3, 3, c_in[i], c_out[i])
    assert mem[f"lif{i}"][2:] == (h_in[i], h_in[i], c_out[i])
    assert h_out[i] == (h_in[i] // 2 if i in pooled_after else h_in[i])
  assert variables["params"]["fc"]["kernel"].shape == (h_out[-1] ** 2 * c_out[-1], 10)
  assert len(mem) == 7


def test_msresnet18_tap_names():
  model, variables = abstract_vars("msresnet18", 32)
  _, taps = abstract_apply(model, variables, image(32))
  names = set(tap_shapes(taps["membranes"]))
  expected = {f"layer{s}/block{b}/lif{k}" for s in range(1, 5) for b in range(2) for k in (1, 2)}
  assert names == expected | {"head_lif"}


# ------------------------------------------------------------------ parameter counts


def conv_kernel_count(variables):
  return sum(v.size for k, v in flat(variables["params"]).items() if k.endswith("conv/kernel"))


def test_param_count_resnet18_family():
  # ResNet-18 for CIFAR-10 (3×3 stem, no max-pool, 1×1-conv+BN shortcuts, fc 512→10), counting
  # conv + BN (γ, β) + fc weights and biases, no running stats: 11,173,962 (≈ 11.2 M; the
  # figure of the widely used kuangliu/pytorch-cifar ResNet18). LIFs add no parameters.
  for name in ("msresnet18", "sewresnet18"):
    assert param_count(abstract_vars(name, 32)[1]["params"]) == 11_173_962


def test_param_count_vgg16():
  # VGG-16 conv part (13 3×3 convs, torchvision vgg16 features without biases): 14,710,464
  # ≈ 14.7 M; + 4,224 BN channels × 2 + classifier 512·10 + 10 = 14,724,042.
  variables = abstract_vars("vgg16", 32)[1]
  assert conv_kernel_count(variables) == 14_710_464
  assert param_count(variables["params"]) == 14_710_464 + 2 * 4_224 + 5_130


def test_param_count_vgg9():
  # SpikeSim VGG9 (docs/method.md layer list): Σ 9·C_in·C_out = 1,734,336 conv weights; + BN
  # 2·1,152 + fc 4·4·256·10 + 10.
  variables = abstract_vars("vgg9", 32)[1]
  c_in, c_out = [3, 64, 64, 128, 128, 256, 256], [64, 64, 128, 128, 256, 256, 256]
  assert conv_kernel_count(variables) == sum(9 * a * b for a, b in zip(c_in, c_out)) == 1_734_336
  assert param_count(variables["params"]) == 1_734_336 + 2 * 1_152 + 40_970


def test_param_count_resnet19():
  # ResNet-19 of tdBN (Zheng et al. 2021) as in the TET / SpQuant-SNN code: stem 3×3 conv 128,
  # stages 128×3, 256×3, 512×2 basic blocks with 1×1+BN shortcuts, fc 512→256, fc 256→10:
  # conv 12,553,600 + BN 2·5,248 + fc 131,328 + 2,570 = 12,697,994 (≈ 12.7 M).
  variables = abstract_vars("msresnet19", 32)[1]
  assert conv_kernel_count(variables) == 12_553_600
  assert param_count(variables["params"]) == 12_697_994


def test_width_scales_channels():
  model = create_model(config("vgg9", width=0.5), 10)
  variables = jax.eval_shape(lambda: init_variables(model, key(0), jnp.zeros((1, 32, 32, 3))))
  assert variables["params"]["conv6"]["conv"]["kernel"].shape == (3, 3, 128, 128)


# ------------------------------------------------------------------ numerics (small widths)


@pytest.fixture(scope="module")
def digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images[:64] / 16.0).astype(np.float32)[..., None]
  return jnp.asarray(x), jnp.asarray(d.target[:64])


def small_resnets():
  # One stage whose block downsamples (1×1 conv shortcut); identity shortcuts are a plain add.
  kw = dict(num_classes=10, timesteps=2, stem_channels=4, stages=((8, 1, 2),))
  return {"ms": MSResNet(neuron=NeuronConfig(0.25, 0.5, learn_threshold=True), **kw),
          "sew": SEWResNet(neuron=NeuronConfig(learn_threshold=True), **kw)}


def test_same_params_run_at_any_T_and_static_equals_repeated_events(digits):
  x = digits[0][:8]
  model = create_model(config("digits_cnn"), 10)
  variables = init_variables(model, key(0), x)

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def both(variables, t, train):
    out = model.apply(variables, x, train=train, timesteps=t, mutable=["batch_stats"])[0]
    frames = jnp.repeat(x[:, None], t, axis=1)  # [B, T, H, W, C]
    return out, model.apply(variables, frames, train=train, mutable=["batch_stats"])[0]

  outs = {}
  for t, train in [(1, False), (3, False), (3, True)]:
    out, ref = both(variables, t, train)
    assert out.shape == (t, 8, 10)
    # The stem is computed once on [B, H, W, C] and broadcast over T: the same as feeding the
    # image as T identical event frames (incl. the BN batch statistics over T·B in training).
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    outs[t, train] = out
  # The same parameters at T = 1 and 3, and steps are causal: step 0 does not depend on T.
  np.testing.assert_allclose(np.asarray(outs[3, False][:1]), np.asarray(outs[1, False]), rtol=1e-5, atol=1e-6)


def test_quant_none_equals_fp_model(digits):
  x = digits[0][:16]
  fp = create_model(config("digits_cnn"), 10)
  none = {"weight": {"kind": "none"}, "membrane": {"kind": "none"}, "first_layer": {"kind": "same"},
          "last_layer": {"kind": "same"}, "bn_fold": False, "bias_bits": 8}
  q = create_model(config("digits_cnn", none), 10)
  qf = create_model(config("digits_cnn", {**none, "bn_fold": True}), 10)
  variables = init_variables(fp, key(1), x)
  for m in (q, qf):
    assert (jax.tree_util.tree_structure(jax.eval_shape(lambda: init_variables(m, key(1), x)))
            == jax.tree_util.tree_structure(variables))

  @jax.jit
  def run(variables):
    return [m.apply(variables, x, train=train, mutable=["batch_stats"])
            for m in (fp, q, qf) for train in (False, True)]

  (e_fp, t_fp, e_q, t_q, e_f, t_f) = run(variables)
  for y_fp, y_q in [(e_fp, e_q), (t_fp, t_q)]:
    jax.tree_util.tree_map(np.testing.assert_array_equal, y_q, y_fp)
  # BN folding changes float rounding only.
  for y_fp, y_f in [(e_fp, e_f), (t_fp, t_f)]:
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), y_f, y_fp)


# Gradient checks only need the values to be finite and non-zero, not fast code: compiling
# with XLA's backend optimisations off takes a fraction of the time for these deep graphs,
# which keeps the full-architecture checks in the default suite.
FAST_COMPILE = {"xla_backend_optimization_level": "0"}


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def _init(model, seed, x):
  variables = _compiled(lambda k, x: model.init(k, x, train=False), key(seed), x)
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats", "quant_state")}


def _check_grads(model, variables, x, seed):
  def loss(params):
    logits, upd = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats", "quant_state"])
    return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), jnp.arange(x.shape[0]) % 10).mean()

  grads = _compiled(jax.grad(loss), variables["params"])
  for path, g in flat(grads).items():
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), f"{path}: non-finite gradient (seed {seed})"
    assert np.any(g != 0), f"no gradient reaches {path} (seed {seed})"
  return grads


def _rgb(seed, batch, size):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, 3)), jnp.float32)


@pytest.mark.integration
def test_jit_grad_through_quantized_model_reaches_every_param_incl_thresholds():
  # A small MS-ResNet with every quantizer on (LSQ body, 8-bit first layer, BN folding, ternary
  # membranes) and learnable thresholds: jit(grad) reaches the kernels, BN, LSQ steps and θ.
  model = small_resnets()["ms"].clone(quant=QuantConfig.from_dict(QUANT))
  rgb = _rgb(0, 4, 8)
  grads = flat(_check_grads(model, _init(model, 3, rgb), rgb, seed=3))
  assert sum(k.endswith("theta_raw") for k in grads) == 3  # lif1, lif2, head_lif
  assert {"layer1/block0/conv1/conv/wq/step", "fc/wq/step"} <= set(grads)


@pytest.mark.integration
def test_jit_grad_small_sew_resnet():
  rgb = _rgb(0, 4, 8)
  model = small_resnets()["sew"]
  grads = _check_grads(model, _init(model, 3, rgb), rgb, seed=3)
  assert sum(k.endswith("theta_raw") for k in flat(grads)) == 4


# LIF layers (one learnable θ each) and LSQ-quantized layers (one step each) of the full
# architectures: every conv / dense but the 8-bit uniform first layer ('last_layer': 'same').
FULL_ARCH = {"vgg9": (7, 7), "msresnet18": (17, 20), "msresnet19": (18, 20),
             "sewresnet18": (20, 20), "resnet18": (17, 20), "resnet19": (18, 20),
             "resnet19_spquant": (18, 21)}  # (LIF layers, LSQ layers: every kernel but one)


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(FULL_ARCH))
def test_jit_grad_full_architectures_small_width(name):
  # Full depth at 1/8 width on 16×16 inputs, T = 2, with LSQ weights, BN folding, ternary
  # membranes and learnable thresholds: a gradient reaches every parameter.
  model = create_model(config(name, QUANT, width=1 / 8, timesteps=2, conv_impl="xla"), 10)
  model = model.clone(neuron=dataclasses.replace(model.neuron, learn_threshold=True))
  x = _rgb(0, 4, 16)
  grads = flat(_check_grads(model, _init(model, 0, x), x, seed=0))
  n_lif, n_lsq = FULL_ARCH[name]
  assert sum(k.endswith("theta_raw") for k in grads) == n_lif
  assert sum(k.endswith("wq/step") for k in grads) == n_lsq


@pytest.mark.integration
def test_init_student_from_teacher(digits):
  x = digits[0][:16]
  teacher = create_model(config("digits_cnn"), 10)
  forward = jax.jit(lambda v: teacher.apply(v, x))
  t_vars = init_variables(teacher, key(4), x)
  # Give the teacher trained-looking BN statistics.
  _, upd = jax.jit(lambda v: teacher.apply(v, x, train=True, mutable=["batch_stats"]))(t_vars)
  t_vars = {**t_vars, **upd}

  # A student with quantization 'none' (but a different init) equals the teacher after the copy.
  plain = init_variables(teacher, key(5), x)
  assert not np.array_equal(np.asarray(forward(plain)), np.asarray(forward(t_vars)))
  copied = init_student_from_teacher(plain, t_vars)
  np.testing.assert_array_equal(np.asarray(forward(copied)), np.asarray(forward(t_vars)))

  # A quantized BN-folded student: teacher leaves copied, quantizer re-calibrated on the folded
  # kernels (eval fold with the copied running stats), learnable thresholds kept.
  q = {**QUANT, "membrane": {"kind": "none"}}
  student = create_model(config("digits_cnn", q), 10).clone(neuron=NeuronConfig(learn_threshold=True))
  s_vars = init_variables(student, key(6), x)
  out = init_student_from_teacher(s_vars, t_vars, student_model=student, sample_input=x)
  s_flat, t_flat = flat(out["params"]), flat(t_vars["params"])
  for k, v in t_flat.items():
    np.testing.assert_array_equal(np.asarray(s_flat[k]), np.asarray(v))
  np.testing.assert_array_equal(np.asarray(out["batch_stats"]["conv1"]["bn"]["var"]),
                                np.asarray(t_vars["batch_stats"]["conv1"]["bn"]["var"]))
  np.testing.assert_array_equal(np.asarray(s_flat["lif0/theta_raw"]),
                                np.asarray(flat(s_vars["params"])["lif0/theta_raw"]))
  p, bs = t_vars["params"]["conv1"], t_vars["batch_stats"]["conv1"]["bn"]
  folded = p["conv"]["kernel"] * p["bn"]["scale"] / jnp.sqrt(bs["var"] + 1e-5)
  expected = make_weight_quantizer(QUANT["weight"]).init_params(folded)["step"]
  np.testing.assert_allclose(np.asarray(s_flat["conv1/conv/wq/step"]), np.asarray(expected), rtol=1e-5)
  assert not np.allclose(np.asarray(flat(s_vars["params"])["conv1/conv/wq/step"]), np.asarray(expected))
  # First layer (8-bit uniform, no params) and the last ('same' = LSQ, a step).
  assert "fc/wq/step" in s_flat and not any(k.startswith("conv0/conv/wq") for k in s_flat)

  wide = create_model(config("digits_cnn", width=2.0), 10)
  wide_vars = jax.eval_shape(lambda: init_variables(wide, key(0), x))
  with pytest.raises(ValueError, match="teacher shape"):
    init_student_from_teacher(wide_vars, t_vars)
  with pytest.raises(ValueError, match="'conv0/bn/bias' has no counterpart"):
    init_student_from_teacher({"params": {}}, t_vars)


@pytest.mark.integration
def test_small_model_fits_64_real_digits(digits):
  x, y = digits
  model = create_model(config("digits_cnn", timesteps=4), 10)
  variables = init_variables(model, key(0), x)
  opt = optax.adam(1e-2)
  opt_state = opt.init(variables["params"])

  @jax.jit
  def step(variables, opt_state):
    def loss_fn(params):
      logits, upd = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean(), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = opt.update(grads, opt_state, variables["params"])
    return {**variables, **upd, "params": optax.apply_updates(variables["params"], updates)}, opt_state

  accuracy = jax.jit(lambda v: jnp.mean(model.apply(v, x).mean(0).argmax(-1) == y))
  acc = 0.0
  for i in range(300):
    variables, opt_state = step(variables, opt_state)
    if i % 10 == 9:
      acc = float(accuracy(variables))
      if acc == 1.0:
        break
  assert acc == 1.0, f"train accuracy {acc} after {i + 1} steps"


# ------------------------------------------------------------------ configuration


def test_create_model_config_handling():
  cfg = default_model_config()
  assert set(cfg.keys()) == {"name", "width", "timesteps", "conv_impl", "remat", "dtype",
                             "lif_impl", "neuron", "quant"}
  assert set(cfg.quant.keys()) == {"weight", "membrane", "first_layer", "last_layer", "bn_fold", "bias_bits"}
  with pytest.raises(ValueError, match="'resnet50'.*vgg9"):
    create_model(config("resnet50"), 10)
  with pytest.raises(ValueError, match="'depth'"):
    create_model({**cfg.to_dict(), "depth": 3}, 10)
  # MS-ResNet family defaults λ = 0.25, θ = 0.5 (docs/method.md) unless the config sets them.
  ms = create_model(config("msresnet18"), 100)
  assert (ms.neuron.decay, ms.neuron.threshold, ms.num_classes) == (0.25, 0.5, 100)
  cfg = config("msresnet18")
  cfg.neuron.threshold = 1.0
  assert create_model(cfg, 10).neuron.threshold == 1.0
  assert create_model(config("vgg9"), 10).neuron == NeuronConfig()
  q = create_model(config("vgg9", QUANT), 10).quant
  assert q.bn_fold and q.first["bits"] == 8 and q.last == q.weight and q == QuantConfig.from_dict(QUANT)
  with pytest.raises(ValueError, match="-1"):
    model, _ = abstract_vars("vgg9", 32)
    jax.eval_shape(lambda: model.clone(width=-1.0).init(key(0), jnp.zeros((1, 32, 32, 3))))
