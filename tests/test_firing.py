from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mdsnn_jax import firing


def _spikes(rng, shape, p):
  return (rng.random(shape) < p).astype(np.float32)


def _reference_rates(batches):
  """r_j = (1/(N·T)) Σ_n Σ_t s_j computed on all batches at once."""
  allb = np.concatenate(batches, axis=1)  # [T, N, ...]
  t, n = allb.shape[:2]
  return allb.reshape(t * n, -1).sum(0) / (n * t)


def test_streaming_rates_equal_one_shot():
  rng = np.random.default_rng(0)
  conv = [_spikes(rng, (4, b, 3, 3, 5), 0.3) for b in (2, 5, 3)]
  fc = [_spikes(rng, (4, b, 7), 0.6) for b in (2, 5, 3)]
  update = jax.jit(firing.update_rates)
  stats = firing.init_rates({"conv": conv[0], "fc": fc[0]})
  for c, f in zip(conv, fc):
    stats = update(stats, {"conv": jnp.asarray(c), "fc": jnp.asarray(f)})
  rates = firing.finalize_rates(stats)
  assert int(stats.counts["conv"]) == 4 * 10
  np.testing.assert_allclose(rates["conv"], _reference_rates(conv), rtol=1e-6)
  np.testing.assert_allclose(rates["fc"], _reference_rates(fc), rtol=1e-6)
  np.testing.assert_allclose(firing.firing_rates({"fc": fc[1]})["fc"], _reference_rates([fc[1]]), rtol=1e-6)


def test_state_size_is_constant_in_n():
  rng = np.random.default_rng(1)
  stats = firing.init_rates({"a": jax.ShapeDtypeStruct((3, 2, 4, 4, 2), jnp.float32)})
  shapes0 = jax.tree.map(jnp.shape, stats)
  for b in (2, 9, 17):
    stats = firing.update_rates(stats, {"a": _spikes(rng, (3, b, 4, 4, 2), 0.5)})
  assert jax.tree.map(jnp.shape, stats) == shapes0


def test_nested_and_sown_taps_are_flattened():
  s = np.ones((2, 1, 3), np.float32)
  stats = firing.init_rates({"block": {"lif": (s,)}})
  rates = firing.finalize_rates(firing.update_rates(stats, {"block": {"lif": (s,)}}))
  assert list(rates) == ["block/lif"]
  np.testing.assert_array_equal(rates["block/lif"], np.ones(3))


def test_update_rejects_mismatched_layers_and_shapes():
  s = np.zeros((2, 1, 3), np.float32)
  stats = firing.init_rates({"a": s})
  with pytest.raises(ValueError, match="'b'"):
    firing.update_rates(stats, {"b": s})
  with pytest.raises(ValueError, match="4 neurons"):
    firing.update_rates(stats, {"a": np.zeros((2, 1, 4), np.float32)})
  with pytest.raises(ValueError, match=r"\(3,\)"):
    firing.init_rates({"a": np.zeros(3)})
  with pytest.raises(ValueError, match="update_rates first"):
    firing.finalize_rates(stats)


def test_dead_fraction_and_layer_summary():
  rates = {"a": np.array([0.0, 0.5, 0.0, 0.25]), "b": np.array([0.1, 0.2])}
  assert firing.dead_fraction(rates["a"]) == 0.5
  summary = firing.layer_summary(rates)
  assert summary["a"] == dict(mean_rate=0.1875, dead_fraction=0.5, n_neurons=4)
  assert summary["b"]["dead_fraction"] == 0.0
  np.testing.assert_allclose(summary["b"]["mean_rate"], 0.15)


@pytest.mark.parametrize("na,nb", [(50, 50), (37, 120), (1, 9)])
def test_emd_equals_scipy(na, nb):
  rng = np.random.default_rng(na * 1000 + nb)
  # Rates on the grid k/(N·T), with ties and zeros, like real rate sets.
  a = rng.integers(0, 11, na) / 10.0
  b = rng.beta(0.5, 2.0, nb)
  want = scipy.stats.wasserstein_distance(a, b)
  assert firing.firing_emd(a, b) == pytest.approx(want, rel=1e-12, abs=1e-15)
  assert firing.firing_emd(b, a) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_emd_identical_is_zero_and_shift_is_shift():
  a = 0.9 * np.random.default_rng(3).random(40)  # room for the shift inside [0, 1]
  assert firing.firing_emd(a, a.copy()) == 0.0
  assert firing.firing_emd(a, np.random.default_rng(4).permutation(a)) == 0.0
  # Translating a distribution by d moves every unit of mass by d.
  assert firing.firing_emd(a, a + 0.1) == pytest.approx(0.1, rel=1e-9)


def test_emd_rejects_bad_input():
  with pytest.raises(ValueError, match="empty"):
    firing.firing_emd([], [0.1])
  with pytest.raises(ValueError, match="nan"):
    firing.firing_emd([np.nan], [0.1])


def test_layer_and_pooled_emd():
  rng = np.random.default_rng(5)
  fp = {"l1": rng.random(30), "l2": rng.random(10)}
  q = {"l1": rng.random(20), "l2": rng.random(15)}
  per_layer = firing.layer_emd(fp, q)
  for k in fp:
    assert per_layer[k] == pytest.approx(scipy.stats.wasserstein_distance(fp[k], q[k]), rel=1e-12)
  pooled = scipy.stats.wasserstein_distance(np.concatenate([fp["l1"], fp["l2"]]),
                                            np.concatenate([q["l1"], q["l2"]]))
  assert firing.pooled_emd(fp, q) == pytest.approx(pooled, rel=1e-12)


def test_mismatched_layer_names_list_both_sets():
  with pytest.raises(ValueError, match=r"\['a', 'b'\].*\['a', 'c'\]"):
    firing.layer_emd({"a": [0.1], "b": [0.2]}, {"a": [0.1], "c": [0.2]})
  with pytest.raises(ValueError, match="'c'"):
    firing.pooled_emd({"a": [0.1]}, {"c": [0.2]})


def test_rate_histograms():
  rates = {"a": np.array([0.0, 0.05, 0.5, 0.51, 1.0])}
  counts, edges = firing.rate_histograms(rates, bins=4)["a"]
  np.testing.assert_allclose(edges, [0.0, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_array_equal(counts, [2, 0, 2, 1])
  with pytest.raises(ValueError, match="0"):
    firing.rate_histograms(rates, bins=0)


def test_rates_outside_unit_interval_and_non_binary_spikes_are_refused():
  # Issue 17 (3): firing_emd took rates above 1 and firing_rates took membranes, silently.
  with pytest.raises(ValueError, match=r"rates_b holds values outside \[0, 1\].*1\.5"):
    firing.firing_emd([0.1, 0.2], [0.3, 1.5])
  with pytest.raises(ValueError, match="outside"):
    firing.dead_fraction([-0.1, 0.0])
  membranes = {"lif": np.random.default_rng(0).normal(size=(4, 2, 5)).astype(np.float32)}
  with pytest.raises(ValueError, match="tap 'lif' holds non-binary values"):
    firing.firing_rates(membranes)
  spikes = {"lif": (membranes["lif"] > 0).astype(np.float32)}
  np.testing.assert_allclose(firing.firing_rates(spikes)["lif"],
                             spikes["lif"].reshape(8, 5).mean(0), rtol=1e-12)
  # Under jit the check is off (tracers have no values) and the update still works.
  stats = firing.init_rates(spikes)
  jitted = jax.jit(firing.update_rates)(stats, spikes)
  np.testing.assert_allclose(firing.finalize_rates(jitted)["lif"], spikes["lif"].reshape(8, 5).mean(0))
