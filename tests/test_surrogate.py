from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import surrogate as sg

Z = np.linspace(-3.0, 3.0, 601, dtype=np.float32)


def _analytic(name, z, a):
  """docs/method.md table, written independently in NumPy."""
  if name == "arctan":
    return a / (2 * (1 + (math.pi / 2 * a * z) ** 2))
  if name == "sigmoid":
    s = 1 / (1 + np.exp(-a * z))
    return a * s * (1 - s)
  if name == "fast_sigmoid":
    return 1 / (1 + a * np.abs(z)) ** 2
  if name == "triangle":
    g = 1 / a
    return np.maximum(0, 1 / g - np.abs(z) / g**2)
  if name == "rectangle":
    w = 1 / a
    return (np.abs(z) < w) / (2 * w)
  if name == "straight_through":
    return np.ones_like(z)
  raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(sg.SURROGATES))
@pytest.mark.parametrize("alpha", [0.7, 2.0, 5.0])
def test_backward_equals_analytic_derivative(name, alpha):
  spike = sg.get_surrogate(name, alpha)
  grad = jax.vmap(jax.grad(spike))(jnp.asarray(Z))
  np.testing.assert_allclose(np.asarray(grad), _analytic(name, Z, alpha), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(sg.SURROGATES))
def test_backward_equals_grad_of_smooth_counterpart(name):
  alpha = 1.7
  # Avoid the kinks of the piecewise surrogates, where the one-sided derivative is ambiguous.
  kinks = {"triangle": [0.0, -1 / alpha, 1 / alpha], "rectangle": [-1 / alpha, 1 / alpha]}.get(name, [])
  z = Z[np.all([np.abs(Z - k) > 1e-3 for k in kinks], axis=0)] if kinks else Z
  smooth_grad = jax.vmap(jax.grad(lambda v: sg.SMOOTH[name](v, alpha)))(jnp.asarray(z))
  spike_grad = jax.vmap(jax.grad(sg.get_surrogate(name, alpha)))(jnp.asarray(z))
  np.testing.assert_allclose(np.asarray(spike_grad), np.asarray(smooth_grad), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(sg.SURROGATES))
def test_forward_is_heaviside(name):
  z = jnp.asarray([-2.0, -1e-6, 0.0, 1e-6, 3.0])
  np.testing.assert_array_equal(np.asarray(sg.get_surrogate(name)(z)), [0, 0, 1, 1, 1])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_preserved_forward_and_backward(dtype):
  spike = sg.get_surrogate("arctan")
  z = jnp.linspace(-1, 1, 8, dtype=dtype)
  assert spike(z).dtype == dtype
  g = jax.grad(lambda v: spike(v).sum())(z)
  assert g.dtype == dtype
  np.testing.assert_allclose(np.asarray(g, np.float32), _analytic("arctan", np.asarray(z, np.float32), 2.0),
                             rtol=2e-2)


def test_jit_vmap_grad_compose():
  spike = sg.get_surrogate("sigmoid", 3.0)
  z = jnp.linspace(-1, 1, 12).reshape(3, 4)
  f = jax.jit(jax.vmap(jax.grad(lambda v: (spike(v) * v).sum())))
  got = f(z)
  s = 1 / (1 + np.exp(-3 * np.asarray(z)))
  expected = (np.asarray(z) >= 0) + np.asarray(z) * 3 * s * (1 - s)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_same_object_for_same_arguments():
  assert sg.get_surrogate("arctan", 2.0) is sg.get_surrogate("arctan")


def test_unknown_surrogate_lists_known_names():
  with pytest.raises(ValueError, match=r"'nope'.*arctan.*straight_through"):
    sg.get_surrogate("nope")


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_bad_alpha(alpha):
  with pytest.raises(ValueError, match="alpha"):
    sg.get_surrogate("arctan", alpha)
