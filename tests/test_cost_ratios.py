"""`hardware.compare_costs` and the report's FP-vs-quantized ratios, against a one-layer network
whose energy, latency and area are worked out by hand below from docs/method.md (constants in pJ and
µm² from its table; X = 64, k = 3, P = 8, 250 MHz → t_cyc = 104 ns; b_cell = 4).

Per-cycle energy with b_u membrane bits, written out term by term:
  (X/8)·E_PE = 8·(9·1.76423 + 8·(2.03084 + 0.094245))      = 263.03    (of which crossbar
                                                               8·9·1.76423 = 127.02456)
  E_Htree + E_memfetch + E_TileBuf                           = 157.12 + 4.64 + 397
  (X/8)·16·E_Sub + (X/8)·E_TempBuf                           = 128·1.15e-6 + 1.6
  E_neuron                                                   = 5.096·b_u/22
Tile area: 8·13411.41 + 484.644 + 6054.68 + 8·(9·26.2144 + 8·(693.633 + 45.9)) + 433660.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mdsnn_jax import hardware as hw
from mdsnn_jax import report as rep
from mdsnn_jax.nn.layers import LIF, QConv

E_PE_ALL = 8 * (9 * 1.76423 + 8 * (2.03084 + 0.094245))  # (X/8)·E_PE, pJ
E_XBAR_ALL = 8 * 9 * 1.76423                              # its crossbar part, pJ
E_FIXED = 157.12 + 4.64 + 397 + 128 * 1.15e-6 + 8 * 0.2   # H-tree, fetch, buffers, subtractors
A_TILE = 8 * 13411.41 + 484.644 + 6054.68 + 8 * (9 * 26.2144 + 8 * (693.633 + 45.9)) + 433660.0
SRAM_BIT = 0.7391


def e_cyc(b_u, rho=1.0):
  return E_FIXED + E_PE_ALL - E_XBAR_ALL * (1 - rho) + 5.096 * b_u / 22


FP = dict(weight_bits=16, membrane_bits=22)  # the report's FP teacher (16-bit weights, 22-bit u)
Q = dict(weight_bits=2, membrane_bits=2)     # 2-bit weights, ternary membranes (⌈log2 3⌉ = 2)


def test_hand_numbers_reproduce_the_spikesim_reference_cycle_energy():
  assert e_cyc(22) == pytest.approx(828.49, abs=0.005)  # docs/method.md reference E_cyc


@pytest.mark.parametrize("mode,rho", [("dense", 1.0), ("event", 0.25)])
def test_one_layer_costs_and_ratios_by_hand(mode, rho):
  # One 3×3 conv, 64 → 32 channels, 8×8 input pooled to 4×4, T = 2.
  layer = [hw.LayerShape(64, 32, 8, 4)]
  t = 2
  kw = dict(timesteps=t, mode=mode)
  rates = rho if mode == "event" else None
  fp = hw.crossbar_cost(layer, hw.CrossbarConfig(**FP, **kw), spike_rates=rates)
  q = hw.crossbar_cost(layer, hw.CrossbarConfig(**Q, **kw), spike_rates=rates)
  # FP: 16-bit weights take 4 columns: ⌈64/64⌉·⌈32·4/64⌉ = 2 PEs, 2·4² = 32 cycles.
  # 2-bit: 1 column: ⌈32/64⌉ = 1 PE, 16 cycles. One tile each.
  assert (fp.n_pe, fp.cycles, fp.tiles) == ((2,), (32,), 1)
  assert (q.n_pe, q.cycles, q.tiles) == ((1,), (16,), 1)
  e_fp = t * e_cyc(22, rho) * 32 * 1e-12                 # J
  e_q = t * e_cyc(2, rho) * 16 * 1e-12
  lat = 104e-9 * t * (32 * 4 * 4)                        # one layer: t_cyc·T·N_last, s
  a_fp = (A_TILE + SRAM_BIT * 22 * (64 * 8 * 8 + 32 * 4 * 4)) * 1e-6   # mm²
  a_q = (A_TILE + SRAM_BIT * 2 * (64 * 8 * 8 + 32 * 4 * 4)) * 1e-6
  ops = 2 * (9 * 64 * 32 * 8 * 8) * t
  assert fp.energy_j == pytest.approx(e_fp, rel=1e-9) and q.energy_j == pytest.approx(e_q, rel=1e-9)
  assert fp.latency_s == pytest.approx(lat, rel=1e-12) == q.latency_s
  assert fp.area_mm2 == pytest.approx(a_fp, rel=1e-9) and q.area_mm2 == pytest.approx(a_q, rel=1e-9)
  assert fp.ops == q.ops == ops

  r = hw.compare_costs(fp, q)
  want = dict(energy_reduction=e_fp / e_q, latency_reduction=1.0, area_reduction=a_fp / a_q,
              edp_reduction=e_fp / e_q, edap_reduction=(e_fp * a_fp) / (e_q * a_q),
              tops_per_w_gain=e_fp / e_q, tops_per_mm2_gain=a_fp / a_q)
  assert set(r) == set(want) == set(rep.RATIO_FIELDS)
  for k, v in want.items():
    assert r[k] == pytest.approx(v, rel=1e-9), k
  # > 1 means the quantized layer is better; by hand: ≈ 2.01× energy, ≈ 1.11× area.
  assert r["energy_reduction"] == pytest.approx(2.0 * e_cyc(22, rho) / e_cyc(2, rho), rel=1e-9)
  assert 2.0 < r["energy_reduction"] < 2.02 and 1.11 < r["area_reduction"] < 1.12


class OneConv(nn.Module):
  """A one-layer spiking network: 3×3 conv 16 → 32 on 8×8, then a LIF (time-major input)."""
  bits: int | None = None

  @nn.compact
  def __call__(self, x, train=False, timesteps=None):
    wq = None if self.bits is None else {"kind": "uniform", "bits": self.bits}
    y = QConv(32, weight_quant=wq, name="conv")(jnp.broadcast_to(x, (timesteps,) + x.shape), train)
    return LIF(name="lif")(y)


def test_report_ratios_of_a_one_layer_network_by_hand():
  # The path build_report takes: hardware_for on each stage's model, then compare_costs of
  # the FP stage over the quantized one, per mode.
  x = jnp.zeros((1, 8, 8, 16))
  t = 2
  costs = {}
  for stage, bits in (("fp", FP), ("qat", Q)):
    model = OneConv(None if stage == "fp" else 2)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, timesteps=t))
    costs[stage] = rep.hardware_for(model, variables, x, timesteps=t,
                                    spike_rates={"lif": jnp.full((32,), 0.3)},
                                    layer_bits=[bits["weight_bits"]], **bits)
    assert costs[stage].layers == [hw.LayerShape(16, 32, 8, 8, macs=9 * 16 * 32 * 64,
                                                 weight_bits=bits["weight_bits"])]
    assert costs[stage].input_rates == [1.0]  # the only layer reads pixels: charged dense
  # FP: ⌈16·9/(9·64)⌉·⌈32·4/64⌉ = 2 PEs, 2·8² = 128 cycles; 2-bit: 1 PE, 64 cycles.
  e_fp, e_q = t * e_cyc(22) * 128, t * e_cyc(2) * 64
  a_fp = A_TILE + SRAM_BIT * 22 * (16 * 64 + 32 * 64)
  a_q = A_TILE + SRAM_BIT * 2 * (16 * 64 + 32 * 64)
  for mode in ("dense", "event"):
    r = hw.compare_costs(getattr(costs["fp"], mode), getattr(costs["qat"], mode))
    assert r["energy_reduction"] == pytest.approx(e_fp / e_q, rel=1e-9), mode
    assert r["area_reduction"] == pytest.approx(a_fp / a_q, rel=1e-9), mode
    assert r["latency_reduction"] == pytest.approx(1.0, rel=1e-12), mode
    assert r["edap_reduction"] == pytest.approx(e_fp * a_fp / (e_q * a_q), rel=1e-9), mode
    assert r["tops_per_w_gain"] == pytest.approx(e_fp / e_q, rel=1e-9), mode
    assert r["tops_per_mm2_gain"] == pytest.approx(a_fp / a_q, rel=1e-9), mode
  # Display units of the report's hardware table (µJ, ms, mm²).
  s = rep.cost_summary(costs["fp"].dense)
  assert s["energy_uj"] == pytest.approx(e_fp * 1e-6, rel=1e-9)
  assert s["latency_ms"] == pytest.approx(104e-6 * t * 32 * 64, rel=1e-12)
  assert s["area_mm2"] == pytest.approx(a_fp * 1e-6, rel=1e-9)
