from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import hardware as hw

VGG9 = hw.VGG9_CIFAR10_SPIKESIM
REF = hw.CrossbarConfig()


def test_vgg9_reference_shapes():
  assert [l.c_in for l in VGG9] == [3, 64, 64, 128, 128, 256, 256]
  assert [l.c_out for l in VGG9] == [64, 64, 128, 128, 256, 256, 256]
  assert [l.h_in for l in VGG9] == [32, 32, 16, 16, 8, 8, 8]
  assert [l.h_out for l in VGG9] == [32, 16, 16, 8, 8, 8, 4]


def test_spikesim_reference_within_0p1_percent():
  # SpikeSim's published VGG9/CIFAR-10, T = 5 figures (docs/method.md).
  c = hw.crossbar_cost(VGG9, REF)
  assert c.total_pes == 48 and c.tiles == 6
  assert c.n_pe == (1, 1, 2, 4, 8, 16, 16)
  assert c.energy_per_cycle_pj == pytest.approx(828.49, rel=1e-3)
  assert c.energy_j == pytest.approx(15.907e-6, rel=1e-3)
  assert c.latency_s == pytest.approx(62.833e-3, rel=1e-3)
  assert c.area_mm2 == pytest.approx(8.4255, rel=1e-3)


def test_breakdowns_sum_to_totals_and_derived_figures():
  c = hw.crossbar_cost(VGG9, REF)
  assert set(c.energy_breakdown_j) == set(hw.ENERGY_COMPONENTS)
  assert set(c.area_breakdown_mm2) == set(hw.AREA_COMPONENTS)
  assert sum(c.energy_breakdown_j.values()) == pytest.approx(c.energy_j, rel=1e-12)
  assert sum(c.area_breakdown_mm2.values()) == pytest.approx(c.area_mm2, rel=1e-12)
  # Tile buffer: 397 pJ per cycle, Σ N_cyc = 3840 cycles per step, 5 steps.
  assert c.energy_breakdown_j["tile_buffer"] == pytest.approx(397e-12 * 3840 * 5, rel=1e-12)
  macs = sum(9 * l.c_in * l.c_out * l.h_in**2 for l in VGG9)
  assert c.ops == 2 * macs * 5
  assert c.edp == pytest.approx(c.energy_j * c.latency_s, rel=1e-12)
  assert c.edap == pytest.approx(c.energy_j * c.latency_s * c.area_mm2, rel=1e-12)
  assert c.tops_per_w == pytest.approx(c.ops / c.energy_j / 1e12, rel=1e-12)
  assert c.tops_per_mm2 == pytest.approx(c.ops / c.latency_s / c.area_mm2 / 1e12, rel=1e-12)


def test_energy_and_latency_scale_linearly_with_timesteps():
  costs = [hw.crossbar_cost(VGG9, dataclasses.replace(REF, timesteps=t)) for t in (1, 2, 5)]
  for c, t in zip(costs, (1, 2, 5)):
    assert c.energy_j == pytest.approx(costs[0].energy_j * t, rel=1e-12)
    assert c.latency_s == pytest.approx(costs[0].latency_s * t, rel=1e-12)
    assert c.area_mm2 == costs[0].area_mm2


def test_weight_bits_add_columns():
  c8 = hw.crossbar_cost(VGG9, dataclasses.replace(REF, weight_bits=8))
  # c_w = ⌈8/4⌉ = 2: ⌈C_in/64⌉·⌈2·C_out/64⌉ per layer.
  assert c8.n_pe == (2, 2, 4, 8, 16, 32, 32) and c8.total_pes == 96 and c8.tiles == 12
  ref = hw.crossbar_cost(VGG9, REF)
  assert c8.energy_j > ref.energy_j and c8.area_mm2 > ref.area_mm2
  # Same cycle energy, twice the cycles.
  assert c8.energy_j == pytest.approx(2 * ref.energy_j, rel=1e-12)
  # 2-bit weights still need one 4-bit cell: the reference.
  c2 = hw.crossbar_cost(VGG9, dataclasses.replace(REF, weight_bits=2))
  assert c2.energy_j == ref.energy_j
  # 1-bit cells with 4-bit weights: 4 columns per weight.
  c1 = hw.crossbar_cost(VGG9, dataclasses.replace(REF, bits_per_cell=1))
  assert c1.total_pes == sum(math.ceil(l.c_in / 64) * math.ceil(4 * l.c_out / 64) for l in VGG9)


def _with_bits(layers, bits):
  return [dataclasses.replace(l, weight_bits=b) for l, b in zip(layers, bits)]


def test_per_layer_weight_bits_equal_to_config_give_identical_cost():
  ref = hw.crossbar_cost(VGG9, REF)
  assert hw.crossbar_cost(_with_bits(VGG9, [4] * 7), REF) == ref
  # Bits sharing the config's c_w = ⌈b/4⌉ are the same columns too.
  assert hw.crossbar_cost(_with_bits(VGG9, [2, 4, 3, 1, 4, 4, 2]), REF) == ref
  c8 = dataclasses.replace(REF, weight_bits=8)
  assert hw.crossbar_cost(_with_bits(VGG9, [8] * 7), c8) == hw.crossbar_cost(VGG9, c8)


def test_per_layer_weight_bits_add_columns_of_that_layer_only():
  ref = hw.crossbar_cost(VGG9, REF)
  sram = ref.area_breakdown_mm2["neuron_memory"]
  tile_mm2 = (ref.area_mm2 - sram) / ref.tiles  # everything but the SRAM is per tile
  # 8-bit first layer (3 → 64): c_w = 2, ⌈3/64⌉·⌈2·64/64⌉ = 1·2 PEs instead of 1.
  first = hw.crossbar_cost(_with_bits(VGG9, [8, None, None, None, None, None, None]), REF)
  assert first.n_pe == (2, 1, 2, 4, 8, 16, 16) and first.total_pes == 49 and first.tiles == 7
  # Layer 0 runs twice the cycles (2·32² instead of 32²); E_cyc is unchanged.
  assert first.cycles == (2048,) + ref.cycles[1:]
  assert first.energy_j == pytest.approx(ref.energy_j * (3840 + 1024) / 3840, rel=1e-12)
  assert first.area_mm2 == pytest.approx(ref.area_mm2 + tile_mm2, rel=1e-12)
  assert first.latency_s == ref.latency_s and first.ops == ref.ops
  # 16-bit last layer (256 → 256): c_w = 4, ⌈256/64⌉·⌈4·256/64⌉ = 4·16 = 64 PEs instead of 16.
  last = hw.crossbar_cost(_with_bits(VGG9, [None] * 6 + [16]), REF)
  assert last.n_pe == ref.n_pe[:6] + (64,) and last.total_pes == 96 and last.tiles == 12
  assert last.energy_j == pytest.approx(ref.energy_j * (3840 + 48 * 16) / 3840, rel=1e-12)
  assert last.area_mm2 == pytest.approx(ref.area_mm2 + 6 * tile_mm2, rel=1e-12)
  # A layer's own bits win over the config's in both directions: 2 bits under an 8-bit config.
  c8 = dataclasses.replace(REF, weight_bits=8)
  low = hw.crossbar_cost(_with_bits(VGG9, [2] + [None] * 6), c8)
  assert low.n_pe == (1, 2, 4, 8, 16, 32, 32)


def test_membrane_bits_scale_neuron_energy_and_memory():
  ref = hw.crossbar_cost(VGG9, REF)
  c = hw.crossbar_cost(VGG9, dataclasses.replace(REF, membrane_bits=2))
  assert c.energy_breakdown_j["neuron"] == pytest.approx(ref.energy_breakdown_j["neuron"] * 2 / 22, rel=1e-12)
  assert c.area_breakdown_mm2["neuron_memory"] == pytest.approx(
      ref.area_breakdown_mm2["neuron_memory"] * 2 / 22, rel=1e-12)
  sram_values = sum(l.c_in * l.h_in**2 for l in VGG9) + sum(l.c_out * l.h_out**2 for l in VGG9[:5])
  assert c.area_breakdown_mm2["neuron_memory"] == pytest.approx(0.7391 * 2 * sram_values * 1e-6, rel=1e-12)
  for k in ("crossbar", "adc", "tile_buffer"):
    assert c.energy_breakdown_j[k] == ref.energy_breakdown_j[k]


def test_event_mode_charges_crossbar_reads_by_rate():
  ref = hw.crossbar_cost(VGG9, REF)
  ev = dataclasses.replace(REF, mode="event")
  assert hw.crossbar_cost(VGG9, ev, spike_rates=1.0).energy_j == pytest.approx(ref.energy_j, rel=1e-12)
  rho = np.array([1.0, 0.1, 0.2, 0.05, 0.3, 0.15, 0.1])
  c = hw.crossbar_cost(VGG9, ev, spike_rates=rho)
  cycles = np.array([1024, 256, 512, 256, 512, 1024, 256])
  saved = 5 * 8 * 9 * 1.76423e-12 * np.sum((1 - rho) * cycles)
  assert c.energy_j == pytest.approx(ref.energy_j - saved, rel=1e-12)
  assert c.latency_s == ref.latency_s and c.area_mm2 == ref.area_mm2
  energies = [hw.crossbar_cost(VGG9, ev, spike_rates=r).energy_j for r in (0.0, 0.1, 0.5, 1.0)]
  assert all(a < b for a, b in zip(energies, energies[1:]))


def test_compare_costs():
  fp = hw.crossbar_cost(VGG9, dataclasses.replace(REF, weight_bits=16, bits_per_cell=2, membrane_bits=16))
  q = hw.crossbar_cost(VGG9, dataclasses.replace(REF, weight_bits=4, membrane_bits=2))
  r = hw.compare_costs(fp, q)
  assert r["edap_reduction"] == pytest.approx(fp.edap / q.edap, rel=1e-12)
  assert r["tops_per_w_gain"] == pytest.approx(q.tops_per_w / fp.tops_per_w, rel=1e-12)
  assert r["tops_per_mm2_gain"] == pytest.approx(q.tops_per_mm2 / fp.tops_per_mm2, rel=1e-12)
  # Same OPS, so TOPS/W gain is the energy reduction.
  assert r["tops_per_w_gain"] == pytest.approx(r["energy_reduction"], rel=1e-12)
  assert r["edap_reduction"] > 1


def test_unrolled_row_mapping_of_small_kernels():
  # 1×1 conv with 1152 inputs on 3×3 PEs: 1152 rows fill ⌈1152/(9·64)⌉ = 2 row-PEs.
  c = hw.crossbar_cost([hw.LayerShape(1152, 64, 4, 4, kernel=1)], REF)
  assert c.n_pe == (2,)
  assert c.ops == 2 * 1152 * 64 * 16 * 5


@pytest.mark.parametrize("field,value", [("c_in", 0), ("c_out", -3), ("h_in", 0), ("kernel", 0),
                                         ("h_out", 2.5), ("macs", 0), ("weight_bits", 0),
                                         ("weight_bits", -8), ("weight_bits", 2.5),
                                         ("weight_bits", True), ("weight_bits", "8")])
def test_invalid_layer_shapes(field, value):
  kwargs = dict(c_in=3, c_out=4, h_in=8, h_out=8)
  kwargs[field] = value
  with pytest.raises(ValueError, match=f"{field}.*{value}"):
    hw.LayerShape(**kwargs)


@pytest.mark.parametrize("field,value", [("xbar", 0), ("xbar", 60), ("timesteps", 0), ("mode", "sparse"),
                                         ("clock_mhz", 0), ("weight_bits", 0), ("membrane_bits", -1)])
def test_invalid_config(field, value):
  with pytest.raises(ValueError, match=f"{field}.*{value}"):
    hw.CrossbarConfig(**{field: value})


def test_invalid_spike_rates():
  ev = dataclasses.replace(REF, mode="event")
  with pytest.raises(ValueError, match="None"):
    hw.crossbar_cost(VGG9, ev)
  with pytest.raises(ValueError, match="1.5"):
    hw.crossbar_cost(VGG9, ev, spike_rates=[1.5] * 7)
  with pytest.raises(ValueError, match=r"\(3,\)"):
    hw.crossbar_cost(VGG9, ev, spike_rates=[0.5] * 3)
  with pytest.raises(ValueError, match="dense"):
    hw.crossbar_cost(VGG9, REF, spike_rates=0.5)
  with pytest.raises(ValueError, match="empty"):
    hw.crossbar_cost([], REF)


class _OwnKernel(nn.Module):
  """A conv that owns its kernel directly (like a quantized conv would)."""
  features: int

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.avg_pool(nn.relu(nn.Conv(self.features, (3, 3))(x)), (2, 2), (2, 2))


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):  # x [T, B, H, W, C]
    t, b = x.shape[:2]
    x = x.reshape((t * b,) + x.shape[2:])  # convs run on the merged T·B axis
    x = _Block(4)(x)  # 8 -> 4
    x = _Block(8)(x)  # 4 -> 2
    x = _OwnKernel(6)(x)  # 1x1 at 2x2
    head = nn.Dense(10)
    y = x.reshape(t * b, -1)
    return head(y) + head(y)  # called twice, recorded once


def test_layer_shapes_from_model():
  model = _Net()
  x = jnp.zeros((2, 3, 8, 8, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  shapes = hw.layer_shapes_from_model(model, variables, x)
  assert shapes == [
      hw.LayerShape(3, 4, 8, 4, kernel=3, macs=9 * 3 * 4 * 8 * 8),
      hw.LayerShape(4, 8, 4, 2, kernel=3, macs=9 * 4 * 8 * 4 * 4),
      # Before a flatten-dense: 24 = 6·2², so H_out = 2.
      hw.LayerShape(8, 6, 2, 2, kernel=1, macs=8 * 6 * 2 * 2),
      hw.LayerShape(24, 10, 1, 1, kernel=1, macs=240),
  ]
  cost = hw.crossbar_cost(shapes, REF)
  assert cost.ops == 2 * sum(s.macs for s in shapes) * 5


def test_layer_shapes_from_model_without_kernels():
  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return x * 2

  with pytest.raises(ValueError, match="Plain"):
    hw.layer_shapes_from_model(Plain(), {}, jnp.zeros((1, 4, 4, 1)))


def test_dense_layershape_needs_a_kernel_and_named_constructors_count_macs():
  # Issue 17 (3): LayerShape(64, 128, 1, 1) defaulted to kernel=3: 73,728 MACs for 8,192.
  with pytest.raises(ValueError, match=r"h_in=1.*LayerShape\.dense"):
    hw.LayerShape(64, 128, 1, 1)
  dense = hw.LayerShape.dense(64, 128)
  assert (dense.kernel, dense.h_in, dense.h_out, dense.mac_count) == (1, 1, 1, 64 * 128)
  assert hw.LayerShape.dense(64, 128, weight_bits=8).weight_bits == 8
  conv = hw.LayerShape.conv(3, 64, 32, h_out=16)
  assert conv == hw.LayerShape(3, 64, 32, 16, kernel=3)
  assert conv.mac_count == 9 * 3 * 64 * 32 * 32
  assert hw.LayerShape(3, 64, 32, 16).kernel == 3  # the positional form still defaults to 3
  assert hw.LayerShape(8, 8, 1, 1, kernel=3).mac_count == 9 * 64  # explicit: allowed
  with pytest.raises(ValueError, match="c_out"):
    hw.LayerShape.dense(64, 0)


def test_membrane_bits_effective_or_stored_and_the_cost_says_which():
  # Issue 17 (6): CrossbarConfig(membrane_bits=1.58) was refused.
  layers = [hw.LayerShape.conv(3, 16, 8, h_out=4), hw.LayerShape.dense(256, 10)]
  two = hw.crossbar_cost(layers, hw.CrossbarConfig(membrane_bits=2))
  stored = hw.crossbar_cost(layers, hw.CrossbarConfig(membrane_bits=math.log2(3)))
  eff = hw.crossbar_cost(layers, hw.CrossbarConfig(membrane_bits=math.log2(3),
                                                    membrane_charge="effective"))
  assert (stored.membrane_charge, stored.membrane_bits_charged) == ("stored", 2.0)
  assert (eff.membrane_charge, eff.membrane_bits_charged) == ("effective", math.log2(3))
  assert stored.energy_j == two.energy_j and stored.area_mm2 == two.area_mm2
  c = hw.RRAM_65NM
  # Only the neuron energy and the SRAM area depend on b_u, both linearly.
  d_neuron = two.energy_breakdown_j["neuron"] * (math.log2(3) / 2 - 1)
  assert eff.energy_j == pytest.approx(two.energy_j + d_neuron, rel=1e-12)
  assert eff.area_breakdown_mm2["neuron_memory"] == pytest.approx(
      two.area_breakdown_mm2["neuron_memory"] * math.log2(3) / 2, rel=1e-12)
  assert two.energy_breakdown_j["neuron"] > 0 and c.ref_membrane_bits == 22
  assert hw.CrossbarConfig(membrane_bits=4.0).charged_membrane_bits == 4.0
  with pytest.raises(ValueError, match="membrane_charge"):
    hw.CrossbarConfig(membrane_charge="packed")
  with pytest.raises(ValueError, match="membrane_bits"):
    hw.CrossbarConfig(membrane_bits=0)
