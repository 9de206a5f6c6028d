"""Analytical compute-in-memory crossbar model of energy, latency and area (see docs/method.md,
'Crossbar hardware model').

SpikeSim-compatible: X×X RRAM crossbars (X = 64), k² crossbars and X/8 ADC/MUX pairs per
processing element (PE), P = 8 PEs per tile, T timesteps, 250 MHz, 65 nm constants. Per
layer i with C_in, C_out, H_in, H_out (H_out after pooling):

    n_PE,i  = ⌈C_in/X⌉ · ⌈C_out·c_w,i/X⌉          tiles = ⌈Σ_i n_PE,i / P⌉
    E_PE    = k²·E_xbar + (X/8)(E_ADC + E_MUX)                                   [pJ]
    E_cyc   = E_Htree + E_memfetch + E_neuron + (X/8)·E_PE + (X/8)·16·E_Sub
              + (X/8)·E_TempBuf + E_TileBuf                                      [pJ]
    N_cyc,i = n_PE,i · H_out,i²                     E = T · E_cyc · Σ_i N_cyc,i  [pJ]
    t_cyc   = 26 · 1000 / f_MHz                     N_i = C_out,i · H_out,i²
    L       = t_cyc · T · (N_last + Σ_{i<last} ⌊0.75·N_i⌋)                      [ns]
    A_PE    = k²·A_xbar + (X/8)(A_ADC + A_MUX)
    A_tile  = (X/8)·A_Sub + A_TempBuf + A_TileBuf + P·A_PE + A_Htree
    A       = tiles·A_tile + 0.7391·b_u·Σ_i C_in,i·H_in,i²
              + 0.7391·b_u·Σ_{first 5 layers} C_out,i·H_out,i²                  [µm²]

Reference mode (the defaults: 4-bit weights in 4-bit cells, b_u = 22, dense) reproduces
SpikeSim's VGG9/CIFAR-10 figures. Extensions (ours):

- weight bits: c_w,i = ⌈b_w,i / b_cell⌉ crossbar columns per weight, with b_w,i the layer's
  own bits (`LayerShape.weight_bits`, e.g. an 8-bit first / last layer) or else the
  config's b_w. Only the column PEs depend on it; with no per-layer bits every layer uses
  the config's c_w, which is the reference.
- membrane bits: the neuron SRAM stores b_u bits per value (both SRAM area terms) and
  E_neuron scales by b_u / 22. `CrossbarConfig.membrane_bits` may be the stored bits (an
  int) or the effective bits of a level grid (e.g. log2 3 = 1.585 for a ternary membrane);
  `membrane_charge='stored'` (default) charges ⌈b_u⌉ bits, the width of an SRAM word,
  'effective' charges b_u as given (an ideal packed encoding). `CrossbarCost` reports
  which (`membrane_charge`, `membrane_bits_charged`).
- event mode: a crossbar read is charged only for the active input rows. With ρ_i the
  fraction of active inputs of layer i (its input spike rate), exactly one term scales:
  the crossbar term (X/8)·k²·E_xbar of E_cyc becomes (X/8)·k²·E_xbar·ρ_i. ADC, MUX,
  H-tree, memory fetch, neuron, subtractor and buffer energies stay dense (the ADCs still
  convert every column every cycle); latency and area do not change. ρ = 1 equals dense.
- layers whose kernel differs from the PE's k (1×1 convs, dense layers with kernel=1)
  are mapped by unrolled rows: ⌈k_i²·C_in/(k²·X)⌉ row-PEs, which is ⌈C_in/X⌉ when k_i = k.

Derived figures (SI units in `CrossbarCost`): EDP = E·L [J·s], EDAP = E·L·A [J·s·mm²],
OPS = 2·Σ_i MAC_i·T (a MAC is two operations), TOPS/W = OPS/E/1e12,
TOPS/mm² = OPS/L/A/1e12. MAC_i = LayerShape.macs if given, else k_i²·C_in·C_out·H_in²
(a stride-1 'same' convolution, whose pre-pooling output is H_in × H_in; the model's H_out is
after pooling and so cannot be used).

Pure NumPy/Python; no JAX needed except in `layer_shapes_from_model`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

MODES = ("dense", "event")
MEMBRANE_CHARGES = ("stored", "effective")
ENERGY_COMPONENTS = ("crossbar", "adc", "mux", "htree", "memfetch", "neuron", "subtractor",
                     "temp_buffer", "tile_buffer")
AREA_COMPONENTS = ("crossbar", "adc", "mux", "htree", "subtractor", "temp_buffer", "tile_buffer",
                   "neuron_memory")


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
      math.isfinite(value) and value > 0):
    raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LayerShape:
  """One conv or dense layer mapped onto crossbars.

  c_in, c_out: channels (features for dense layers, with h_in = h_out = 1, kernel = 1).
  h_in: input height (= width); h_out: output height after pooling (SpikeSim's H_out).
  kernel: square kernel size k_i; None means 3 for h_in > 1 and is refused for h_in = 1,
  where a dense layer was likely meant (use `LayerShape.dense`; a 3×3 kernel would count
  9× its MACs). macs: multiply-accumulates per sample per timestep;
  None means k_i²·C_in·C_out·H_in² (stride-1 'same' conv). weight_bits: stored bits b_w,i
  of this layer's weights; None means the `CrossbarConfig`'s weight_bits.
  Prefer the named constructors `LayerShape.dense(c_in, c_out)` and
  `LayerShape.conv(c_in, c_out, h_in, ...)`.
  """
  c_in: int
  c_out: int
  h_in: int
  h_out: int
  kernel: int | None = None
  macs: int | None = None
  weight_bits: int | None = None

  @classmethod
  def dense(cls, c_in: int, c_out: int, *, weight_bits: int | None = None) -> "LayerShape":
    """A dense layer: h_in = h_out = kernel = 1, C_in·C_out MACs."""
    _check_positive_int("c_in", c_in)
    _check_positive_int("c_out", c_out)
    return cls(c_in, c_out, 1, 1, kernel=1, macs=c_in * c_out, weight_bits=weight_bits)

  @classmethod
  def conv(cls, c_in: int, c_out: int, h_in: int, *, kernel: int = 3, h_out: int | None = None,
           macs: int | None = None, weight_bits: int | None = None) -> "LayerShape":
    """A k×k conv on an h_in × h_in input; h_out (after pooling) defaults to h_in."""
    return cls(c_in, c_out, h_in, h_in if h_out is None else h_out, kernel=kernel, macs=macs,
               weight_bits=weight_bits)

  def __post_init__(self):
    if self.kernel is None:
      if self.h_in == 1:
        raise ValueError(
            f"LayerShape(c_in={self.c_in}, c_out={self.c_out}, h_in=1, h_out={self.h_out}) "
            "has no kernel: for a dense layer use LayerShape.dense(c_in, c_out) (kernel=1), "
            "for a conv on a 1×1 input pass kernel= explicitly")
      object.__setattr__(self, "kernel", 3)
    for f in ("c_in", "c_out", "h_in", "h_out", "kernel"):
      _check_positive_int(f, getattr(self, f))
    for f in ("macs", "weight_bits"):
      if getattr(self, f) is not None:
        _check_positive_int(f, getattr(self, f))

  @property
  def mac_count(self) -> int:
    if self.macs is not None:
      return int(self.macs)
    return self.kernel**2 * self.c_in * self.c_out * self.h_in**2


@dataclasses.dataclass(frozen=True)
class CrossbarConstants:
  """Per-component energy (pJ per access) and area (µm²), plus architectural constants."""
  e_xbar: float = 1.76423
  e_adc: float = 2.03084
  e_mux: float = 0.094245
  e_htree: float = 157.12  # 19.64 · 8
  e_memfetch: float = 4.64
  e_neuron: float = 5.096  # 1.274 · 4, at ref_membrane_bits
  e_tilebuf: float = 397.0
  e_tempbuf: float = 0.2
  e_sub: float = 1.15e-6
  a_xbar: float = 26.2144
  a_adc: float = 693.633
  a_mux: float = 45.9
  a_htree: float = 433660.0  # 216830 · 2
  a_tilebuf: float = 6054.68  # 0.7391 · 64 · 128
  a_tempbuf: float = 484.644
  a_sub: float = 13411.41
  a_sram_bit: float = 0.7391
  cycles_per_step: int = 26
  pipeline_overlap: float = 0.75  # layer i+1 starts when this share of layer i is done
  subtractors_per_pe: int = 16
  out_buffer_layers: int = 5  # SpikeSim buffers the outputs of the first 5 layers only
  ref_membrane_bits: int = 22

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        raise ValueError(f"constant {f.name} must be a finite non-negative number, got {v!r}")
    for f in ("cycles_per_step", "subtractors_per_pe", "ref_membrane_bits"):
      _check_positive_int(f, getattr(self, f))
    if not 0.0 <= self.pipeline_overlap <= 1.0:
      raise ValueError(f"pipeline_overlap must lie in [0, 1], got {self.pipeline_overlap}")


RRAM_65NM = CrossbarConstants()


@dataclasses.dataclass(frozen=True)
class CrossbarConfig:
  """Hardware and run parameters; the defaults are SpikeSim's reference mode.

  xbar: crossbar size X (a multiple of 8: one ADC serves 8 columns). kernel: k, the PE
  holds k² crossbars. weight_bits / bits_per_cell: c_w = ⌈b_w/b_cell⌉ columns per weight
  (every layer's, unless its `LayerShape.weight_bits` says otherwise).
  membrane_bits: b_u bits per stored neuron value: the stored bits (an int, e.g. 2 or 22) or
  the effective bits of a level grid (a real, e.g. math.log2(3) for a ternary membrane).
  membrane_charge: which the model charges, 'stored' (default: ⌈b_u⌉, the SRAM word) or
  'effective' (b_u as given); see `charged_membrane_bits`. mode: 'dense' or 'event'.
  """
  xbar: int = 64
  pes_per_tile: int = 8
  timesteps: int = 5
  clock_mhz: float = 250.0
  weight_bits: int = 4
  bits_per_cell: int = 4
  membrane_bits: float = 22
  mode: str = "dense"
  kernel: int = 3
  constants: CrossbarConstants = RRAM_65NM
  membrane_charge: str = "stored"

  def __post_init__(self):
    for f in ("xbar", "pes_per_tile", "timesteps", "weight_bits", "bits_per_cell", "kernel"):
      _check_positive_int(f, getattr(self, f))
    _check_positive("membrane_bits", self.membrane_bits)
    if self.membrane_charge not in MEMBRANE_CHARGES:
      raise ValueError(f"unknown membrane_charge {self.membrane_charge!r}; allowed: "
                       f"{list(MEMBRANE_CHARGES)}")
    if self.xbar % 8:
      raise ValueError(f"xbar must be a multiple of 8 (one ADC per 8 columns), got {self.xbar}")
    _check_positive("clock_mhz", self.clock_mhz)
    if self.mode not in MODES:
      raise ValueError(f"unknown mode {self.mode!r}; allowed modes: {list(MODES)}")
    if not isinstance(self.constants, CrossbarConstants):
      raise ValueError(f"constants must be a CrossbarConstants, got {type(self.constants).__name__}")

  @property
  def charged_membrane_bits(self) -> float:
    """b_u charged to the neuron SRAM and E_neuron: ⌈membrane_bits⌉ ('stored') or as given."""
    if self.membrane_charge == "effective":
      return float(self.membrane_bits)
    # 1e-9: an effective width computed as log2(2^b) may land a hair above the integer b.
    return float(math.ceil(self.membrane_bits - 1e-9))

  @property
  def columns_per_weight(self) -> int:
    return -(-self.weight_bits // self.bits_per_cell)

  def layer_columns_per_weight(self, layer: LayerShape) -> int:
    """c_w,i = ⌈b_w,i / b_cell⌉ with the layer's own bits, else the config's c_w."""
    if layer.weight_bits is None:
      return self.columns_per_weight
    return -(-layer.weight_bits // self.bits_per_cell)


@dataclasses.dataclass(frozen=True)
class CrossbarCost:
  """Result of `crossbar_cost`. Energy in J, latency in s, area in mm²."""
  n_pe: tuple[int, ...]
  total_pes: int
  tiles: int
  cycles: tuple[int, ...]  # N_cyc,i, per timestep
  energy_per_cycle_pj: float  # dense E_cyc
  energy_j: float
  energy_breakdown_j: dict[str, float]
  latency_s: float
  area_mm2: float
  area_breakdown_mm2: dict[str, float]
  ops: float
  edp: float  # J·s
  edap: float  # J·s·mm²
  tops_per_w: float
  tops_per_mm2: float
  membrane_charge: str = "stored"  # which membrane bits were charged, see CrossbarConfig
  membrane_bits_charged: float = 22.0


def _spike_rates(spike_rates, n_layers: int, mode: str) -> np.ndarray:
  if spike_rates is None:
    if mode == "event":
      raise ValueError("mode 'event' needs spike_rates (input spike rate per layer, in [0, 1]); got None")
    return np.ones(n_layers)
  if mode == "dense":
    raise ValueError("spike_rates are only used in mode 'event'; got them with mode 'dense'")
  rho = np.broadcast_to(np.asarray(spike_rates, np.float64), (n_layers,)) if np.ndim(
      spike_rates) == 0 else np.asarray(spike_rates, np.float64)
  if rho.shape != (n_layers,):
    raise ValueError(f"spike_rates must be a scalar or have one value per layer ({n_layers}), got shape {rho.shape}")
  if not np.all((rho >= 0) & (rho <= 1)):
    raise ValueError(f"spike_rates must lie in [0, 1], got {rho}")
  return rho


def crossbar_cost(layers: Sequence[LayerShape], config: CrossbarConfig = CrossbarConfig(),
                  spike_rates: float | Sequence[float] | None = None) -> CrossbarCost:
  """Energy, latency, area and derived figures of `layers` on the crossbar `config`.

  spike_rates (mode 'event' only): ρ_i, the fraction of layer i's input rows that carry a
  spike per timestep (e.g. the previous spiking layer's mean rate from `firing.py`; use
  1.0 for a first layer fed analog pixels). A scalar applies to every layer.
  """
  layers = list(layers)
  if not layers:
    raise ValueError("layers is empty; allowed: at least one LayerShape")
  for i, layer in enumerate(layers):
    if not isinstance(layer, LayerShape):
      raise ValueError(f"layers[{i}] must be a LayerShape, got {type(layer).__name__}")
  cfg, c = config, config.constants
  x, k, t_steps = cfg.xbar, cfg.kernel, cfg.timesteps
  per_pe = x / 8  # ADCs (and MUXes) per PE; also PE-level multipliers in E_cyc
  rho = _spike_rates(spike_rates, len(layers), cfg.mode)

  row_pes = [-(-(l.kernel**2 * l.c_in) // (k**2 * x)) for l in layers]
  col_pes = [-(-(l.c_out * cfg.layer_columns_per_weight(l)) // x) for l in layers]
  n_pe = tuple(r * q for r, q in zip(row_pes, col_pes))
  total_pes = sum(n_pe)
  tiles = -(-total_pes // cfg.pes_per_tile)
  cycles = tuple(n * l.h_out**2 for n, l in zip(n_pe, layers))

  # Energy per cycle by component (pJ); only 'crossbar' depends on the input rate.
  e_cyc = dict(
      crossbar=per_pe * k**2 * c.e_xbar,
      adc=per_pe * per_pe * c.e_adc,
      mux=per_pe * per_pe * c.e_mux,
      htree=c.e_htree,
      memfetch=c.e_memfetch,
      neuron=c.e_neuron * cfg.charged_membrane_bits / c.ref_membrane_bits,
      subtractor=per_pe * c.subtractors_per_pe * c.e_sub,
      temp_buffer=per_pe * c.e_tempbuf,
      tile_buffer=c.e_tilebuf,
  )
  total_cycles = float(sum(cycles))
  rate_cycles = float(np.dot(rho, cycles))
  energy_pj = {name: t_steps * v * (rate_cycles if name == "crossbar" else total_cycles)
               for name, v in e_cyc.items()}
  energy_j = sum(energy_pj.values()) * 1e-12

  t_cyc_ns = c.cycles_per_step * 1000.0 / cfg.clock_mhz
  n_out = [l.c_out * l.h_out**2 for l in layers]
  pipelined = n_out[-1] + sum(math.floor(c.pipeline_overlap * n) for n in n_out[:-1])
  latency_s = t_cyc_ns * t_steps * pipelined * 1e-9

  sram = c.a_sram_bit * cfg.charged_membrane_bits * (
      sum(l.c_in * l.h_in**2 for l in layers)
      + sum(l.c_out * l.h_out**2 for l in layers[:c.out_buffer_layers]))
  pes = tiles * cfg.pes_per_tile
  area_um2 = dict(
      crossbar=pes * k**2 * c.a_xbar,
      adc=pes * per_pe * c.a_adc,
      mux=pes * per_pe * c.a_mux,
      htree=tiles * c.a_htree,
      subtractor=tiles * per_pe * c.a_sub,
      temp_buffer=tiles * c.a_tempbuf,
      tile_buffer=tiles * c.a_tilebuf,
      neuron_memory=sram,
  )
  area_mm2 = sum(area_um2.values()) * 1e-6

  ops = 2.0 * sum(l.mac_count for l in layers) * t_steps
  edp = energy_j * latency_s
  return CrossbarCost(
      n_pe=n_pe, total_pes=total_pes, tiles=tiles, cycles=cycles,
      energy_per_cycle_pj=float(sum(e_cyc.values())),
      energy_j=energy_j,
      energy_breakdown_j={n: v * 1e-12 for n, v in energy_pj.items()},
      latency_s=latency_s,
      area_mm2=area_mm2,
      area_breakdown_mm2={n: v * 1e-6 for n, v in area_um2.items()},
      ops=ops, edp=edp, edap=edp * area_mm2,
      tops_per_w=ops / energy_j / 1e12,
      tops_per_mm2=ops / latency_s / area_mm2 / 1e12,
      membrane_charge=cfg.membrane_charge,
      membrane_bits_charged=cfg.charged_membrane_bits,
  )


def compare_costs(fp_cost: CrossbarCost, q_cost: CrossbarCost) -> dict[str, float]:
  """Gains of a quantized model over its full-precision twin (> 1 means q is better).

  *_reduction = fp / q for energy, latency, area, EDP, EDAP; *_gain = q / fp for
  TOPS/W and TOPS/mm².
  """
  return dict(
      energy_reduction=fp_cost.energy_j / q_cost.energy_j,
      latency_reduction=fp_cost.latency_s / q_cost.latency_s,
      area_reduction=fp_cost.area_mm2 / q_cost.area_mm2,
      edp_reduction=fp_cost.edp / q_cost.edp,
      edap_reduction=fp_cost.edap / q_cost.edap,
      tops_per_w_gain=q_cost.tops_per_w / fp_cost.tops_per_w,
      tops_per_mm2_gain=q_cost.tops_per_mm2 / fp_cost.tops_per_mm2,
  )


# SpikeSim's VGG9 on CIFAR-10 (docs/method.md's reference check): the 7 conv layers, H_out after pooling.
VGG9_CIFAR10_SPIKESIM: tuple[LayerShape, ...] = tuple(
    LayerShape(ci, co, hi, ho) for ci, co, hi, ho in zip(
        (3, 64, 64, 128, 128, 256, 256), (64, 64, 128, 128, 256, 256, 256),
        (32, 32, 16, 16, 8, 8, 8), (32, 16, 16, 8, 8, 8, 4)))


def layer_shapes_from_model(model, variables, x, *args, method=None, **apply_kwargs) -> list[LayerShape]:
  """LayerShapes of the conv / dense layers a Flax linen model calls on input `x`.

  Runs `model.apply(variables, x, *args, method=method, **apply_kwargs)` under
  `flax.linen.intercept_methods` and records, in call order, every module that owns a
  'kernel' param of rank 4 (conv, HWIO) or rank 2 (dense). A module called more than once
  (e.g. once per timestep) is recorded once. Spatial sizes come from axes -3 of the
  input/output, so time-merged [T·B, H, W, C] and time-major [T, B, H, W, C] both work.

  H_out after pooling is approximated by the next layer's input: the next conv's h_in, or,
  before a dense layer whose C_in is C_out·h² (flatten) or C_out (global pooling), that h.
  Otherwise (the last layer) the conv's own output size. MACs are exact:
  kh·kw·(C_in/groups)·C_out·H_conv·W_conv. Dense layers get h_in = h_out = kernel = 1.
  """
  import flax.linen as nn  # local: the cost model itself needs no Flax
  import jax

  records: dict[tuple, dict] = {}

  def interceptor(next_fun, fargs, fkwargs, context):
    out = next_fun(*fargs, **fkwargs)
    mod = context.module
    if context.method_name != "__call__" or mod.scope is None or not fargs:
      return out
    kernel = mod.variables.get("params", {}).get("kernel")
    if kernel is None or isinstance(kernel, dict) or np.ndim(kernel) not in (2, 4):
      return out
    key = tuple(mod.scope.path)
    if key in records:
      return out
    in_shape, out_shape = np.shape(fargs[0]), np.shape(out)
    kshape = np.shape(kernel)
    if len(kshape) == 4:
      kh, kw, cin_g, cout = kshape
      records[key] = dict(
          kind="conv", c_in=int(in_shape[-1]), c_out=int(cout), kernel=int(kh),
          h_in=int(in_shape[-3]), h_conv=int(out_shape[-3]),
          macs=int(kh * kw * cin_g * cout * out_shape[-3] * out_shape[-2]))
    else:
      cin, cout = kshape
      records[key] = dict(kind="dense", c_in=int(cin), c_out=int(cout), kernel=1, h_in=1,
                          h_conv=1, macs=int(cin * cout))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, inp: model.apply(v, inp, *args, method=method, **apply_kwargs),
                   variables, x)
  recs = list(records.values())
  if not recs:
    raise ValueError(f"model {type(model).__name__} called no module owning a rank-2 or rank-4 'kernel' param")
  return _shapes_from_records(recs)


def _shapes_from_records(recs: list[dict]) -> list[LayerShape]:
  """LayerShapes from per-layer records (kind, c_in, c_out, kernel, h_in, h_conv, macs[,
  weight_bits]), with H_out after pooling read from the next layer's input (see
  `layer_shapes_from_model`)."""
  shapes = []
  for i, r in enumerate(recs):
    h_out = r["h_conv"]
    if r["kind"] == "conv" and i + 1 < len(recs):
      nxt = recs[i + 1]
      if nxt["kind"] == "conv":
        h_out = nxt["h_in"]
      elif nxt["c_in"] % r["c_out"] == 0:
        side = math.isqrt(nxt["c_in"] // r["c_out"])
        if side * side * r["c_out"] == nxt["c_in"]:
          h_out = side
    shapes.append(LayerShape(r["c_in"], r["c_out"], r["h_in"], h_out, kernel=r["kernel"], macs=r["macs"],
                             weight_bits=r.get("weight_bits")))
  return shapes


def _conv_out(h: int, k: int, stride: int, padding: Any, what: str) -> int:
  if padding == "SAME":
    return -(-h // stride)
  if padding == "VALID":
    if h < k:
      raise ValueError(f"{what}: a {k}×{k} 'VALID' conv does not fit an input of size {h}")
    return (h - k) // stride + 1
  if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
    return (h + 2 * int(padding) - k) // stride + 1
  raise ValueError(f"{what}: padding must be 'SAME', 'VALID' or a non-negative int (pixels "
                   f"per side), got {padding!r}")


def layer_shapes(kernels: Sequence[Any], input_sizes: Sequence[int | None], *,
                 strides: int | Sequence[int] = 1, padding: Any = "SAME",
                 weight_bits: int | Sequence[int | None] | None = None) -> list[LayerShape]:
  """LayerShapes of a network given as plain kernels, in layer order (no Flax needed).

  kernels: arrays (or shape tuples): rank 2 (C_in, C_out) is a dense layer, rank 4 HWIO
  (kh, kw, C_in/groups, C_out) a conv with C_in = input channels (groups = 1).
  input_sizes: the input height (= width) of each conv, None for dense layers.
  strides / padding / weight_bits: one value for every layer or one per layer; padding
  'SAME' (H_conv = ⌈h/s⌉), 'VALID' ((h − k)//s + 1) or an int p ((h + 2p − k)//s + 1).
  MACs per sample per step are kh·kw·C_in·C_out·H_conv² (conv) and C_in·C_out (dense); a
  conv's H_out (after pooling) is the next conv's input size, or before a dense layer whose
  C_in is C_out·h² (flatten) or C_out (global pooling) that h, else H_conv, as
  `layer_shapes_from_model` does.
  """
  kernels = list(kernels)
  n = len(kernels)
  if n == 0:
    raise ValueError("kernels is empty; allowed: a list of rank-2 (dense) or rank-4 HWIO (conv) kernels")
  sizes = list(input_sizes)
  if len(sizes) != n:
    raise ValueError(f"input_sizes has {len(sizes)} entries for {n} kernels; give one per layer "
                     "(None for dense layers)")

  def per_layer(name, value):
    if isinstance(value, (list, tuple)):
      if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} kernels; give one value or one per layer")
      return list(value)
    return [value] * n

  strides_l, padding_l, bits_l = (per_layer("strides", strides), per_layer("padding", padding),
                                  per_layer("weight_bits", weight_bits))
  recs = []
  for i, k in enumerate(kernels):
    shape = tuple(int(d) for d in (k if isinstance(k, tuple) else np.shape(k)))
    what = f"layer {i} (kernel shape {shape})"
    if any(d <= 0 for d in shape):
      raise ValueError(f"{what}: every kernel dimension must be positive")
    if len(shape) == 2:
      cin, cout = shape
      recs.append(dict(kind="dense", c_in=cin, c_out=cout, kernel=1, h_in=1, h_conv=1,
                       macs=cin * cout, weight_bits=bits_l[i]))
    elif len(shape) == 4:
      kh, kw, cin, cout = shape
      h = sizes[i]
      if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
        raise ValueError(f"{what}: input_sizes[{i}] must be the conv's positive input height, got {h!r}")
      if kh != kw:
        raise ValueError(f"{what}: the crossbar model takes square kernels, got {kh}×{kw}")
      st = strides_l[i]
      if isinstance(st, bool) or not isinstance(st, (int, np.integer)) or st < 1:
        raise ValueError(f"{what}: strides must be a positive int, got {st!r}")
      h_conv = _conv_out(int(h), kh, int(st), padding_l[i], what)
      if h_conv < 1:
        raise ValueError(f"{what}: the conv output is empty (input {h}, stride {st}, padding {padding_l[i]!r})")
      recs.append(dict(kind="conv", c_in=cin, c_out=cout, kernel=kh, h_in=int(h), h_conv=h_conv,
                       macs=kh * kw * cin * cout * h_conv * h_conv, weight_bits=bits_l[i]))
    else:
      raise ValueError(f"{what}: allowed kernels are rank 2 (C_in, C_out) for dense layers and "
                       "rank 4 HWIO for convs")
  return _shapes_from_records(recs)
