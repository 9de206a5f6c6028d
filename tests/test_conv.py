"""conv2d: forward equals XLA's, the hand-written backward equals XLA's autodiff."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import xla_cpu
from mdsnn_jax.nn import conv as conv_lib
from mdsnn_jax.nn.conv import conv2d, conv_input_grad, conv_kernel_grad, resolve_impl

# (N, H, W, Cin, Cout, kh, kw, strides, padding)
CASES = [
    (2, 8, 8, 3, 4, 3, 3, (1, 1), "SAME"),
    (3, 7, 9, 4, 5, 3, 3, (2, 2), "SAME"),
    (2, 8, 8, 3, 6, 3, 3, (2, 2), "VALID"),
    (2, 9, 7, 3, 5, 3, 3, (1, 1), "VALID"),
    (2, 9, 6, 3, 6, 1, 1, (1, 1), "SAME"),
    (2, 9, 6, 3, 6, 1, 1, (2, 2), "VALID"),
    (3, 11, 10, 3, 4, 3, 2, (2, 1), ((0, 2), (1, 1))),
    # Padding wider than the kernel: the input-gradient conv gets negative (cropping) padding.
    (2, 5, 6, 3, 4, 1, 1, (1, 1), ((2, 1), (0, 3))),
    (2, 6, 6, 3, 4, 3, 3, (2, 2), "VALID"),  # last input row/column unused by any output
    (2, 7, 6, 3, 4, 1, 1, (2, 2), ((1, 0), (1, 1))),
]


def _random(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _xla(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _numpy_conv(x, kernel, strides, pads):
  """Direct-loop NumPy reference of y[n,a,b,o] = Σ x_pad[n, s·a+i, s·b+j, c] k[i,j,c,o]."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho = (xp.shape[1] - kh) // strides[0] + 1
  wo = (xp.shape[2] - kw) // strides[1] + 1
  y = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
  for a in range(ho):
    for b in range(wo):
      patch = xp[:, a * strides[0]:a * strides[0] + kh, b * strides[1]:b * strides[1] + kw]
      y[:, a, b] = np.einsum("nijc,ijco->no", patch, kernel)
  return y


@pytest.mark.parametrize("case", CASES, ids=[f"{c[5]}x{c[6]}_s{c[7]}_{c[8]}" for c in CASES])
def test_forward_and_grads_match_xla(case):
  n, h, w, cin, cout, kh, kw, strides, padding = case
  x, kernel = _random((n, h, w, cin), 0), _random((kh, kw, cin, cout), 1)
  pads = conv_lib._resolve_padding(padding, (h, w), (kh, kw), strides)
  y_ref = _xla(x, kernel, strides, padding)
  np.testing.assert_allclose(y_ref, _numpy_conv(x, kernel, strides, pads), rtol=1e-4, atol=1e-4)
  # A non-uniform cotangent (sin), so every output position weighs differently.
  def loss(impl):
    def f(x, k):
      y = conv2d(x, k, strides=strides, padding=padding, impl=impl)
      return jnp.sum(jnp.sin(y)), y
    return f

  grads = lambda impl: jax.value_and_grad(loss(impl), (0, 1), has_aux=True)(x, kernel)
  (_, y_xla), (dx_xla, dk_xla) = grads("xla")
  (_, y_fast), (dx_fast, dk_fast) = grads("fast")
  np.testing.assert_array_equal(y_xla, y_ref)
  np.testing.assert_array_equal(y_fast, y_ref)
  np.testing.assert_allclose(dx_fast, dx_xla, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dk_fast, dk_xla, rtol=1e-4, atol=1e-5)


def test_pieces_match_xla_vjp_with_chunking():
  n, h, w, cin, cout = 7, 6, 5, 3, 4
  strides, padding = (2, 2), "SAME"
  x, kernel = _random((n, h, w, cin), 4), _random((3, 3, cin, cout), 5)
  pads = conv_lib._resolve_padding(padding, (h, w), (3, 3), strides)
  y, vjp = jax.vjp(lambda x, k: _xla(x, k, strides, pads), x, kernel)
  g = _random(y.shape, 6)
  dx_ref, dk_ref = vjp(g)
  np.testing.assert_allclose(conv_input_grad(g, kernel, (h, w), strides, pads), dx_ref,
                             rtol=1e-4, atol=1e-5)
  # The pieces resolve padding names and int strides like conv2d.
  np.testing.assert_allclose(conv_input_grad(g, kernel, (h, w), 2, padding), dx_ref,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(conv_kernel_grad(x, g, (3, 3), 2, padding), dk_ref,
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="chunk_bytes must be a positive int, got 0"):
    conv_kernel_grad(x, g, (3, 3), strides, pads, chunk_bytes=0)
  per_image = (h * w * cin + y.shape[1] * y.shape[2] * cout) * 4
  # Chunks of 1 image, of 3 (7 = 2·3 + 1: the leftover image is its own chunk) and of all 7.
  for images in (1, 3, n):
    dk = conv_kernel_grad(x, g, (3, 3), strides, pads, chunk_bytes=images * per_image)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("products", ["taps", "rows"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[5]}x{c[6]}_s{c[7]}_{c[8]}" for c in CASES])
def test_kernel_grad_products_match_xla_vjp(case, products):
  n, h, w, cin, cout, kh, kw, strides, padding = case
  x, kernel = _random((n, h, w, cin), 9), _random((kh, kw, cin, cout), 10)
  pads = conv_lib._resolve_padding(padding, (h, w), (kh, kw), strides)
  y, vjp = jax.vjp(lambda k: _xla(x, k, strides, pads), kernel)
  g = _random(y.shape, 11)
  per_image = (h * w * cin + y.shape[1] * y.shape[2] * cout) * 4
  for chunk_bytes in (per_image, 2 * per_image, 1 << 20):  # chunks of 1, 2 and all images
    dk = conv_kernel_grad(x, g, (kh, kw), strides, pads, chunk_bytes=chunk_bytes,
                          products=products)
    np.testing.assert_allclose(dk, vjp(g)[0], rtol=1e-4, atol=1e-5)


def test_kernel_grad_auto_takes_rows_for_few_channels_on_a_large_map():
  # 'auto' = 'rows' iff Cin ≤ 64 and H·W ≥ 32·32: same result either way, and the jaxpr
  # shows the choice (kh products of K = kw·Cin vs kh·kw products of K = Cin).
  def n_products(x, g):
    jaxpr = jax.make_jaxpr(lambda x, g: conv_kernel_grad(x, g, (3, 3), 1, "SAME"))(x, g)
    return str(jaxpr).count("dot_general")
  big = _random((1, 32, 32, 4), 12), _random((1, 32, 32, 5), 13)
  small = _random((1, 31, 32, 4), 12), _random((1, 31, 32, 5), 13)
  wide = _random((1, 32, 32, 65), 12), _random((1, 32, 32, 5), 13)
  strided = _random((1, 32, 32, 4), 12), _random((1, 16, 16, 5), 13)  # stride 2, 16×16 out
  assert n_products(*big) == 3
  assert n_products(*small) == n_products(*wide) == 9
  jaxpr = jax.make_jaxpr(lambda x, g: conv_kernel_grad(x, g, (3, 3), 2, "SAME"))(*strided)
  assert str(jaxpr).count("dot_general") == 3


def test_kernel_grad_bad_products_names_the_value():
  x, g = _random((1, 4, 4, 2), 0), _random((1, 4, 4, 3), 1)
  with pytest.raises(ValueError, match=r"products must be one of \['auto', 'taps', 'rows'\], "
                                       r"got 'cols'"):
    conv_kernel_grad(x, g, (3, 3), 1, "SAME", products="cols")


def test_second_order_reverse_mode_matches_xla():
  x, kernel = _random((2, 6, 6, 2), 7), _random((3, 3, 2, 3), 8)

  def grad_norm(impl):
    def f(k):
      dx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv2d(x, k, strides=2, impl=impl))))(x)
      return jnp.sum(dx ** 2)
    return jax.grad(f)(kernel)

  np.testing.assert_allclose(grad_norm("fast"), grad_norm("xla"), rtol=1e-4, atol=1e-5)


def test_jit_and_vmap_compose():
  x, kernel = _random((3, 2, 8, 8, 3), 9), _random((3, 3, 3, 4), 10)

  def loss(impl):
    f = lambda x, k: conv2d(x, k, strides=(2, 2), padding="SAME", impl=impl)
    return lambda x, k: jnp.sum(jax.vmap(f, in_axes=(0, None))(x, k) ** 2)

  g_fast = jax.jit(jax.grad(loss("fast"), argnums=(0, 1)))(x, kernel)
  g_xla = jax.grad(loss("xla"), argnums=(0, 1))(x, kernel)
  for a, b in zip(g_fast, g_xla):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # vmap over the kernel too (per-example kernels).
  kernels = _random((3, 3, 3, 3, 4), 11)
  per_ex = lambda impl: jax.vmap(
      jax.grad(lambda x, k: jnp.sum(conv2d(x, k, impl=impl) ** 2), argnums=1))(x, kernels)
  np.testing.assert_allclose(per_ex("fast"), per_ex("xla"), rtol=1e-4, atol=1e-4)


def test_bfloat16_runs_and_matches_float32():
  x, kernel = _random((2, 8, 8, 4), 12), _random((3, 3, 4, 5), 13)
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  loss = lambda x, k: jnp.sum(conv2d(x, k, strides=2, impl="fast").astype(jnp.float32) ** 2)
  y = conv2d(xb, kb, strides=2, impl="fast")
  dx, dk = jax.grad(loss, argnums=(0, 1))(xb, kb)
  assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
  dx32, dk32 = jax.grad(loss, argnums=(0, 1))(xb.astype(jnp.float32), kb.astype(jnp.float32))
  # bf16 has an 8-bit mantissa: compare to the float32 result on the same (rounded) inputs.
  for low, ref in ((dx, dx32), (dk, dk32)):
    np.testing.assert_allclose(np.asarray(low, np.float32), ref, rtol=5e-2,
                               atol=5e-2 * np.abs(ref).max())


def test_mixed_dtypes_are_promoted():
  x, kernel = _random((1, 5, 5, 2), 14, jnp.bfloat16), _random((3, 3, 2, 3), 15)
  y = conv2d(x, kernel, impl="fast")
  assert y.dtype == jnp.float32
  np.testing.assert_array_equal(y, _xla(x.astype(jnp.float32), kernel, (1, 1), "SAME"))


@pytest.mark.parametrize("xla_flags, on_cpu", [
    ("", "fast"),  # XLA's default convolution library: the custom-VJP backward
    (" ".join(xla_cpu.XNNPACK_FLAGS), "xla"),  # XNNPACK: XLA's own autodiff
])
def test_auto_follows_backend_and_cpu_convolution_library(monkeypatch, xla_flags, on_cpu):
  monkeypatch.setenv("XLA_FLAGS", xla_flags)
  expected = on_cpu if jax.default_backend() == "cpu" else "xla"
  assert resolve_impl("auto") == expected
  assert resolve_impl("xla") == "xla" and resolve_impl("fast") == "fast"


@pytest.mark.parametrize("kwargs, match", [
    ({"impl": "cudnn"}, "cudnn"),
    ({"strides": 0}, "strides"),
    ({"strides": (1, 2, 3)}, r"\(1, 2, 3\)"),
    ({"padding": "FULL"}, "FULL"),
    ({"padding": ((1, 1),)}, "padding"),
    ({"padding": ((-1, 1), (1, 1))}, "-1"),
])
def test_bad_arguments_raise(kwargs, match):
  x, kernel = jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 3))
  with pytest.raises(ValueError, match=match):
    conv2d(x, kernel, **kwargs)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r"\(5, 5, 2\)"):
    conv2d(jnp.zeros((5, 5, 2)), jnp.zeros((3, 3, 2, 3)))
  with pytest.raises(ValueError, match="4 input channels"):
    conv2d(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 2, 3)))
  with pytest.raises(ValueError, match="smaller than the kernel"):
    conv2d(jnp.zeros((1, 2, 5, 2)), jnp.zeros((3, 3, 2, 3)), padding="VALID")
  with pytest.raises(ValueError, match="int32"):
    conv2d(jnp.zeros((1, 5, 5, 2), jnp.int32), jnp.zeros((3, 3, 2, 3), jnp.int32))


@pytest.mark.integration
def test_spiking_vgg_grads_equal_across_conv_impls():
  from mdsnn_jax.nn import create_model, default_model_config

  x = _random((2, 8, 8, 3), 16)
  models = {}
  for impl in ("xla", "fast"):
    cfg = default_model_config()
    cfg.name, cfg.width, cfg.timesteps, cfg.conv_impl = "vgg9", 0.125, 2, impl
    models[impl] = create_model(cfg, num_classes=3)
  # Random variables of the model's shapes (eval_shape: compiling the initializers is slow);
  # conv_impl does not change the variable tree.
  shapes = jax.eval_shape(lambda: models["xla"].init(jax.random.PRNGKey(0), x, train=False))
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  variables = jax.tree_util.tree_unflatten(
      treedef, [_random(leaf.shape, 100 + i) * 0.5 + 1.0 for i, leaf in enumerate(leaves)])
  variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}

  grads = {}
  for impl, model in models.items():
    def loss(params, model=model):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return jnp.sum(logits.mean(0) ** 2)

    grads[impl] = jax.jit(jax.grad(loss))(variables["params"])
  flat_xla = jax.tree_util.tree_leaves_with_path(grads["xla"])
  flat_fast = jax.tree_util.tree_leaves(grads["fast"])
  assert len(flat_xla) == len(flat_fast) and any(np.abs(g).max() > 0 for _, g in flat_xla)
  for (path, a), b in zip(flat_xla, flat_fast):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * (np.abs(a).max() + 1e-12),
                               err_msg=jax.tree_util.keystr(path))
