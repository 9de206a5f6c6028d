"""Recurrent LIF: `rlif_scan` against a NumPy loop, its Flax layer, and its NIR export run
by snnTorch's importer (the independent reference for the NIR mapping)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax.neuron import lif_scan, rlif_scan
from mdsnn_jax.nn import RLIF, NeuronConfig


def np_rlif(x, w, decay=0.5, theta=1.0, reset="hard"):
  """h_t = λu + x_t + s_{t−1} W; s = 1[h ≥ θ]; hard / soft reset (float64)."""
  x = np.asarray(x, np.float64)
  u = np.zeros(x.shape[1:])
  s = np.zeros(x.shape[1:])
  ss, hs = [], []
  for t in range(x.shape[0]):
    h = decay * u + x[t] + s @ np.asarray(w, np.float64)
    s = (h >= theta).astype(np.float64)
    u = h * (1 - s) if reset == "hard" else h - theta * s
    ss.append(s)
    hs.append(h)
  return np.stack(ss), np.stack(hs), u


def _case(seed=0, t=6, b=3, n=5):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (t, b, n)) * 0.9, jax.random.normal(k2, (n, n)) * 0.6


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_rlif_scan_matches_numpy(reset):
  x, w = _case()
  s, h, u = rlif_scan(x, w, decay=0.7, threshold=0.8, reset=reset)
  rs, rh, ru = np_rlif(x, w, 0.7, 0.8, reset)
  # Spikes may differ only where h is within float32 rounding of θ; none are here.
  assert np.min(np.abs(rh - 0.8)) > 1e-4
  np.testing.assert_array_equal(np.asarray(s), rs)
  np.testing.assert_allclose(np.asarray(h), rh, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(u), ru, rtol=1e-5, atol=1e-5)
  assert 0 < rs.mean() < 1


def test_zero_recurrence_is_lif_scan_and_gradients_reach_w():
  x, w = _case(1)
  np.testing.assert_array_equal(np.asarray(rlif_scan(x, jnp.zeros_like(w))[1]),
                                np.asarray(lif_scan(x)[1]))
  # Gradient in W_rec against autodiff of a plain-JAX loop whose spike has the arctan
  # surrogate derivative through a stop_gradient identity (no custom rule).
  from mdsnn_jax.surrogate import SMOOTH

  def ref(w):
    smooth = lambda z: SMOOTH["arctan"](z, 2.0)  # noqa: E731
    u = s = jnp.zeros_like(x[0])
    total = 0.0
    for t in range(x.shape[0]):
      h = 0.5 * u + x[t] + s @ w
      z = h - 1.0
      s = (z >= 0).astype(z.dtype) + smooth(z) - jax.lax.stop_gradient(smooth(z))
      u = h * (1 - s)
      total = total + h.sum()
    return total

  g = jax.grad(lambda w: rlif_scan(x, w)[1].sum())(w)
  np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(ref)(w)), rtol=1e-5, atol=1e-5)
  assert np.any(np.asarray(g) != 0)


def test_continuing_a_sequence_with_u0_and_s0():
  x, w = _case(2, t=8)
  s, h, _ = rlif_scan(x, w)
  s1, _, u1 = rlif_scan(x[:3], w)
  s2, h2, _ = rlif_scan(x[3:], w, u0=u1, s0=s1[-1])
  np.testing.assert_array_equal(np.asarray(s[3:]), np.asarray(s2))
  np.testing.assert_allclose(np.asarray(h[3:]), np.asarray(h2), rtol=1e-6, atol=1e-6)


def test_bad_recurrent_weight_and_s0_are_named():
  x, w = _case()
  with pytest.raises(ValueError, match="recurrent_weight must have shape"):
    rlif_scan(x, w[:, :4])
  with pytest.raises(ValueError, match="s0"):
    rlif_scan(x, w, s0=jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="threshold must be positive"):
    rlif_scan(x, w, threshold=-1.0)


def test_rlif_layer_runs_the_pure_function_and_sows_taps():
  x, _ = _case(3)
  layer = RLIF(NeuronConfig(decay=0.6, learn_decay=True, learn_threshold=True))
  v = layer.init(jax.random.key(0), x)
  assert set(v["params"]) == {"recurrent_kernel", "theta_raw", "decay_raw"}
  s, cols = layer.apply({"params": v["params"]}, x, mutable=["membranes", "spikes"])
  w = v["params"]["recurrent_kernel"]
  rs, rh, _ = np_rlif(x, w, 0.6, 1.0)
  np.testing.assert_array_equal(np.asarray(s), rs)
  np.testing.assert_allclose(np.asarray(cols["membranes"]["h"][0]), rh, rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda p: layer.apply({"params": p}, x).sum() + 0.0)(v["params"])
  assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(g))


def test_nir_nodes_of_the_recurrent_layer():
  pytest.importorskip("nir")
  from mdsnn_jax.interop.nir import rlif_to_nir_nodes
  w = np.arange(9, dtype=np.float32).reshape(3, 3)
  nodes, edges = rlif_to_nir_nodes("r1", w, decay=0.75, threshold=0.5)
  assert set(edges) == {("r1.lif", "r1.w_rec"), ("r1.w_rec", "r1.lif")}
  np.testing.assert_array_equal(nodes["r1.w_rec"].weight, w.T)  # NIR weights are (out, in)
  lif = nodes["r1.lif"]
  np.testing.assert_allclose(1 - 1e-4 / lif.tau, 0.75)  # λ = 1 − dt/τ
  np.testing.assert_allclose(lif.r * 1e-4 / lif.tau, 1.0)  # unit input gain
  with pytest.raises(ValueError, match="name"):
    rlif_to_nir_nodes("a.b", w, decay=0.5, threshold=1.0)
  with pytest.raises(ValueError, match="square"):
    rlif_to_nir_nodes("r", w[:2], decay=0.5, threshold=1.0)


def test_nir_export_runs_the_same_in_snntorch():
  """Dense input + recurrent LIF exported to NIR; snnTorch's NIR importer turns the (LIF,
  W_rec) pair into an RLeaky and the Affine into a Linear, which we step here: the same
  spikes and membranes as ours at every step (membranes far from θ).

  snnTorch 1.0's `import_from_nir` itself wires the recurrent subgraph's input into W_rec
  instead of the LIF (`_create_rnn_subgraph`), so its graph executor runs a different
  network; its own RNN parser (`_nir_to_snntorch_module` of the subgraph) is used instead.
  """
  pytest.importorskip("snntorch")
  import torch
  from snntorch import import_nir as sn_nir

  from mdsnn_jax.interop.nir import rlif_to_nir
  t_steps, n_in, n = 6, 4, 5
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  w_in = np.asarray(jax.random.normal(k1, (n_in, n)) * 0.8, np.float32)
  b_in = np.asarray(jax.random.normal(k2, (n,)) * 0.1, np.float32)
  w_rec = np.asarray(jax.random.normal(k3, (n, n)) * 0.5, np.float32)
  inp = np.asarray(jax.random.uniform(jax.random.key(8), (t_steps, 2, n_in)) * 1.5, np.float32)
  s, h, _ = rlif_scan(jnp.asarray(inp) @ w_in + b_in, w_rec, decay=0.75, threshold=1.0)
  assert np.min(np.abs(np.asarray(h) - 1.0)) > 1e-4 and 0 < float(s.mean()) < 1

  graph = rlif_to_nir(w_rec, decay=0.75, threshold=1.0, input_weight=w_in, input_bias=b_in,
                      timesteps=t_steps)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    graph = sn_nir._replace_rnn_subgraph_with_nirgraph(graph)
    fc = sn_nir._nir_to_snntorch_module(graph.nodes["fc"])
    rleaky = sn_nir._nir_to_snntorch_module(graph.nodes["rlif"])
  assert type(rleaky).__name__ == "RLeaky"
  spk, mem = torch.zeros(2, n), torch.zeros(2, n)
  theirs_s, theirs_h = [], []
  with torch.no_grad():
    for t in range(t_steps):
      cur = fc(torch.as_tensor(inp[t]))
      theirs_h.append((rleaky.beta * mem + cur + rleaky.recurrent(spk)).numpy().copy())
      spk, mem = rleaky(cur, spk, mem)
      theirs_s.append(spk.numpy().copy())
  np.testing.assert_array_equal(np.stack(theirs_s), np.asarray(s))
  np.testing.assert_allclose(np.stack(theirs_h), np.asarray(h), rtol=1e-5, atol=1e-5)
