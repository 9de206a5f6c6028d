"""The "beyond accuracy" report of a trained workdir: accuracy, firing behaviour, hardware.

    report = build_report(workdir, out_dir=workdir / 'report')

For every trained stage ('fp' teacher, 'qat' / 'md' students) of a workdir written by
`mdsnn_jax.train.loop.train_and_evaluate`:

- test accuracy in percent: the one in the stage's summary.json and the one re-measured here;
- firing (docs/method.md): per-neuron rates r_j = (1/(N·T)) Σ_n Σ_t s_j^(n)[t] over the test split,
  streamed batch by batch (`firing.update_rates`); per layer the mean rate, the dead
  fraction (r_j = 0) and the neuron count;
- EMD (docs/method.md): Wasserstein-1 distance between the FP teacher's and each quantized stage's
  per-neuron rate distributions, per layer and pooled over all spiking layers;
- hardware (docs/method.md): `hardware.crossbar_cost` of the model's conv / dense layers in dense
  mode (SpikeSim's reference) and in event mode (crossbar reads charged at the layer's input
  spike rate), and the ratios of each quantized stage over the FP teacher (`compare_costs`).

Bits charged to the crossbar model (the extensions of docs/method.md, 'Crossbar hardware model'):
- FP teacher: 16-bit weights (4 columns of 4-bit cells per weight) and 22-bit membranes, the
  width of SpikeSim's neuron memory.
- Quantized student: the weight grid's stored bits ⌈log2(#levels)⌉ (`weight_grid_info`):
  b-bit symmetric grid (2^b − 1 levels; 2 bits = ternary {−1, 0, 1}) and b-bit full grid
  (2^b levels, LSQ's default) are both stored in b bits; ternary weights: 2 bits
  (log2 3 = 1.58 rounded up). Every stage states its grid and number of levels beside the
  bits (`weight_grid`, `weight_levels`). The membrane grid's stored bits
  ⌈log2(#levels)⌉ (ternary {−1, 0, 1}: ⌈1.58⌉ = 2; uniform b-bit: b; integer {−3..1}: 3).
- First / last layer (`layer_weight_bits`): the first conv / dense layer in call order (VGG
  'conv0', ResNet 'stem', MLP 'fc1') is stored at `model.quant.first_layer`'s bits and the
  classifier 'fc' (last in call order) at `model.quant.last_layer`'s: {'kind': 'same'} → the
  network's bits, {'kind': 'none'} → 16, else the quantizer's bits (e.g. 8). Every model
  applies these overrides to exactly those two layers. Only their crossbar columns change
  (c_w,i = ⌈b_w,i / b_cell⌉ with 4-bit cells); membranes are charged network-wide. The
  per-layer bits are in each stage's `layers[i]['weight_bits']`; the stage's `weight_bits`
  is the network's.

Saliency consistency **[reconstruction]** (`mdsnn_jax.saliency`): for every student stage
('qat', 'md') when a teacher is found (workdir/fp, else `distill.teacher_workdir`), the
input-gradient saliency maps of teacher and student on the first `saliency_examples` test
images (64 by default; 0 turns the section off), compared by the mean Spearman rank
correlation and the mean IoU of their top-k % pixels (k = `saliency_k`, 10 by default).

Event-mode input rates: a conv / dense layer's input rate is the mean rate of the LIF
layer whose output it reads (matched by identity of the traced array), else of the LIF
layer that most recently finished before it in call order. The latter is an approximation
where a residual sum sits in between (SEW-ResNet's spike-count ADD can exceed one spike).
A layer with no LIF before it (the first layer, fed analog pixels or event frames) is
charged dense, rate 1.0.

Outputs in `out_dir`, all written atomically (temporary file in the same folder, then
`os.replace`): report.json, report.md (markdown tables), firing_rates.png (per-layer
rate histograms FP vs quantized), emd_per_layer.png, energy_breakdown.png, and
saliency.png (input images with the teacher's and students' saliency maps) when there is a
saliency section.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mdsnn_jax import distill
from mdsnn_jax import firing
from mdsnn_jax import hardware as hw
from mdsnn_jax import provenance
from mdsnn_jax import saliency as sal

FP_WEIGHT_BITS = 16
FP_MEMBRANE_BITS = 22  # SpikeSim's neuron memory width
STAGE_ORDER = ("fp", "qat", "md")
BITS_NOTE = (f"Bits: FP teacher {FP_WEIGHT_BITS}-bit weights and {FP_MEMBRANE_BITS}-bit "
             "membranes (SpikeSim's neuron memory); quantized stages their stored weight bits "
             "ceil(log2 #weight levels) (b-bit symmetric grid: 2^b - 1 levels, so 2 bits = "
             "ternary; b-bit full grid: 2^b levels; both stored in b bits; ternary weights: 2) "
             "and ceil(log2 #membrane levels) stored membrane bits (ternary: 2), charged to "
             "every layer, except that the first and last (classifier) layers' weights are "
             "charged at their own precision (model.quant.first_layer / last_layer: 'same' = the "
             f"network's bits, 'none' = {FP_WEIGHT_BITS}).")
PLOT_FILES = ("firing_rates.png", "emd_per_layer.png", "energy_breakdown.png")
HARDWARE_FIELDS = ("energy_uj", "latency_ms", "area_mm2", "edp_js", "edap_js_mm2", "tops_per_w",
                   "tops_per_mm2")
SALIENCY_PLOT = "saliency.png"
SALIENCY_EXAMPLES = 64  # test images per student stage: one jitted backward each, cheap
SALIENCY_SHOWN = 4  # images drawn in saliency.png
RATIO_FIELDS = ("energy_reduction", "latency_reduction", "area_reduction", "edp_reduction",
                "edap_reduction", "tops_per_w_gain", "tops_per_mm2_gain")


class FiringResult(NamedTuple):
  """What `collect_firing` measured over the evaluated examples.

  rates: {layer: per-neuron rate r_j, float64 [neurons]} in spikes per neuron per timestep.
  accuracy: fraction of examples whose time-mean logits' argmax equals the label.
  examples: number of examples seen.
  """
  rates: dict[str, np.ndarray]
  accuracy: float
  examples: int


class HardwareResult(NamedTuple):
  """What `hardware_for` computed.

  layers: the conv / dense `LayerShape`s in call order (`weight_bits` set when `layer_bits`
  was given). input_rates: ρ_i charged in event mode (1.0 for a layer with no LIF before
  it). sources: the LIF layer each ρ_i came from (None for dense-charged layers). dense /
  event: `CrossbarCost`s (event is None when no spike rates were given).
  """
  layers: list[hw.LayerShape]
  input_rates: list[float]
  sources: list[str | None]
  dense: hw.CrossbarCost
  event: hw.CrossbarCost | None


# ----------------------------------------------------------------------------------------
# Streaming firing rates and accuracy.


def spike_forward(model, timesteps: int | None):
  """(variables, x) -> (time-mean logits [B, K], {layer: spikes [T, B, ...]}), not jitted."""

  def forward(variables, x):
    logits, cols = model.apply(variables, x, train=False, timesteps=timesteps, mutable=["spikes"])
    if "spikes" not in cols:
      raise ValueError(f"model {type(model).__name__} sowed no 'spikes' collection; every LIF "
                       "layer must call self.sow('spikes', 's', s)")
    return logits.mean(0), distill.flatten_taps(cols["spikes"])

  return forward


@functools.partial(jax.jit, static_argnums=(0, 1))
def _firing_step(model, timesteps, stats, variables, x, y):
  logits, taps = spike_forward(model, timesteps)(variables, x)
  correct = jnp.sum(jnp.argmax(logits, -1) == y)
  return firing.update_rates(stats, taps), correct


def collect_firing(model, variables, loader: Iterable[Mapping[str, Any]], timesteps: int | None,
                   max_batches: int | None = None) -> FiringResult:
  """Per-neuron firing rates and accuracy of `model` over `loader` (batches {'image','label'}).

  One jitted step per batch runs the forward with the 'spikes' collection mutable and adds
  the batch's spikes to the running sums (`firing.update_rates`): memory is constant in
  the number of batches. The step is compiled once per (model, timesteps, batch shape), so
  a last, smaller batch costs one extra compilation; `model` must be hashable (linen
  modules are). Stops after `max_batches` batches when given.
  """
  if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(
      max_batches, (int, np.integer)) or max_batches < 1):
    raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
  stats = None
  correct = examples = 0
  for i, batch in enumerate(loader):
    if max_batches is not None and i >= max_batches:
      break
    x = jnp.asarray(batch["image"], jnp.float32)
    y = jnp.asarray(batch["label"], jnp.int32)
    if stats is None:
      stats = firing.init_rates(jax.eval_shape(spike_forward(model, timesteps), variables, x)[1])
    stats, c = _firing_step(model, timesteps, stats, variables, x, y)
    correct += int(c)
    examples += int(y.shape[0])
  if stats is None:
    raise ValueError("the loader yielded no batch; allowed: at least one {'image', 'label'} batch")
  return FiringResult(firing.finalize_rates(stats), correct / examples, examples)


# ----------------------------------------------------------------------------------------
# Hardware figures.


def weight_grid_info(weight_cfg: Mapping[str, Any]) -> dict:
  """{'grid', 'levels', 'stored_bits'} of a weight-quantizer config (`quant.grid_info`).

  kind 'none' → {'grid': 'float', 'levels': None, 'stored_bits': 16} (the FP teacher);
  e.g. LSQ 2-bit full grid → ('full', 4, 2), symmetric → ('symmetric', 3, 2), ternary →
  ('ternary', 3, 2). stored_bits = ⌈log2 levels⌉.
  """
  from mdsnn_jax.quant.registry import make_weight_quantizer  # local: only this needs quant
  from mdsnn_jax.quant.weight import grid_info

  if weight_cfg.get("kind", "none") == "none":
    return {"grid": "float", "levels": None, "stored_bits": FP_WEIGHT_BITS}
  return grid_info(make_weight_quantizer(weight_cfg))


def weight_bits_of(weight_cfg: Mapping[str, Any]) -> int:
  """Stored weight bits of a weight-quantizer config: kind 'none' → 16 (the FP teacher),
  else ⌈log2 #levels⌉ of its grid (`weight_grid_info`; b-bit symmetric and full grids: b;
  ternary 2 = ⌈1.58⌉)."""
  return int(weight_grid_info(weight_cfg)["stored_bits"])


def membrane_bits_of(membrane_cfg: Mapping[str, Any]) -> int:
  """Stored membrane bits ⌈log2(#levels)⌉ of a membrane-quantizer config; 'none' → 22 (FP).

  Levels from `quant.make_membrane_quantizer(cfg).levels`: ternary {−1, 0, 1} → ⌈1.58⌉ = 2;
  uniform b bits (2^b − 1 levels) → b; integer {−3..1} → ⌈2.32⌉ = 3.
  """
  from mdsnn_jax.quant.registry import make_membrane_quantizer

  if membrane_cfg.get("kind", "none") == "none":
    return FP_MEMBRANE_BITS
  n_levels = len(make_membrane_quantizer(membrane_cfg).levels)
  if n_levels < 2:
    raise ValueError(f"membrane quantizer {dict(membrane_cfg)!r} has {n_levels} level(s); "
                     "the hardware model needs a grid of >= 2 levels")
  return max(1, math.ceil(math.log2(n_levels) - 1e-9))


def hardware_bits(model_cfg: Mapping[str, Any]) -> tuple[int, int]:
  """(weight_bits, membrane_bits) charged to the crossbar model for a stage's model config."""
  quant = model_cfg.get("quant", None) or {}
  return (weight_bits_of(quant.get("weight", None) or {"kind": "none"}),
          membrane_bits_of(quant.get("membrane", None) or {"kind": "none"}))


def layer_weight_bits(model_cfg: Mapping[str, Any], n_layers: int) -> list[int]:
  """Stored weight bits b_w,i of a model's `n_layers` conv / dense layers, in call order.

  Layer 0 (the first conv / dense called: VGG 'conv0', ResNet 'stem', MLP 'fc1') takes
  `quant.first_layer`, layer n−1 (the classifier 'fc', called last) `quant.last_layer`, as
  every model in `mdsnn_jax.nn.models` applies them: {'kind': 'same'} → the network's bits,
  'none' or unset → 16 (full precision, as `QuantConfig` treats None), else
  `weight_bits_of(cfg)`. All other layers: the network's bits (`hardware_bits`). A single
  layer is both first and last and is charged the wider of the two.
  """
  return [info["stored_bits"] for info in layer_weight_grids(model_cfg, n_layers)]


def layer_weight_grids(model_cfg: Mapping[str, Any], n_layers: int) -> list[dict]:
  """`weight_grid_info` of each of a model's `n_layers` conv / dense layers, in call order,
  with the first / last layer rules of `layer_weight_bits` (which is its 'stored_bits')."""
  from mdsnn_jax.nn.layers import SAME  # local: only this needs the layer definitions

  if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
    raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
  quant = model_cfg.get("quant", None) or {}
  net = weight_grid_info(quant.get("weight", None) or {"kind": "none"})

  def override(key: str) -> dict:
    cfg = quant.get(key, None) or {"kind": "none"}
    return net if cfg.get("kind", "none") == SAME else weight_grid_info(cfg)

  infos = [net] * int(n_layers)
  first, last = override("first_layer"), override("last_layer")
  if n_layers == 1:
    return [max(first, last, key=lambda i: i["stored_bits"])]
  infos[0], infos[-1] = first, last
  return infos


def _has_kernel(mod) -> bool:
  kernel = mod.variables.get("params", {}).get("kernel")
  return kernel is not None and not isinstance(kernel, Mapping) and np.ndim(kernel) in (2, 4)


def _sows_spikes(mod) -> bool:
  own = mod.variables.get("spikes", {})
  return isinstance(own, Mapping) and any(isinstance(v, (tuple, list)) for v in own.values())


def layer_input_sources(model, variables, sample_x, **apply_kwargs) -> list[str | None]:
  """For each conv / dense layer in call order (as `layer_shapes_from_model` lists them), the
  tap name of the LIF layer whose spikes it reads, or None when no LIF layer precedes it.

  Runs one abstract forward (`jax.eval_shape`) with 'spikes' mutable under
  `flax.linen.intercept_methods`. A LIF layer is a module that sows into 'spikes' itself;
  its name is its module path joined by '/', as `distill.flatten_taps` names the taps.
  A layer whose input is the very array a LIF layer returned (e.g. MS-ResNet's downsample
  conv reading lif1's spikes) gets that LIF; otherwise (a reshape, a residual sum in
  between) the LIF layer that most recently finished before it in call order.
  """
  import flax.linen as nn  # local: the rest of this module runs without Flax

  order: list[str | None] = []
  seen: set[tuple] = set()
  lif_outputs: list[tuple[str, Any]] = []  # (name, returned array), kept alive for `is`

  def interceptor(next_fun, fargs, fkwargs, context):
    mod = context.module
    if context.method_name != "__call__" or mod.scope is None:
      return next_fun(*fargs, **fkwargs)
    key = tuple(mod.scope.path)
    if fargs and key not in seen and _has_kernel(mod):
      seen.add(key)
      direct = [name for name, out in lif_outputs if out is fargs[0]]
      order.append(direct[-1] if direct else (lif_outputs[-1][0] if lif_outputs else None))
    out = next_fun(*fargs, **fkwargs)
    if _sows_spikes(mod):
      lif_outputs.append(("/".join(key), out))
    return out

  kwargs = dict(apply_kwargs)
  kwargs["mutable"] = ["spikes"]
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, sample_x)
  return order


def hardware_for(model, variables, sample_x, *, weight_bits: int, membrane_bits: int,
                 timesteps: int, spike_rates: Mapping[str, Any] | None = None,
                 crossbar: hw.CrossbarConfig = hw.CrossbarConfig(),
                 layer_bits: Sequence[int] | Callable[[int], Sequence[int]] | None = None
                 ) -> HardwareResult:
  """Crossbar cost of `model`'s conv / dense layers in dense and (with rates) event mode.

  spike_rates: {LIF layer: per-neuron rates or a mean rate} (e.g. `collect_firing(...).rates`).
  Layer i's event-mode input rate ρ_i is the mean rate of the LIF layer it reads
  (`layer_input_sources`); with no LIF before it (the first layer, fed analog pixels or
  event frames) ρ_i = 1.0, i.e. charged dense. weight_bits: every layer's stored weight
  bits, unless layer_bits gives them per layer (in call order), as a sequence or as a
  function of the layer count (e.g. `functools.partial(layer_weight_bits, model_cfg)`);
  they are set as `LayerShape.weight_bits` of the returned layers. `crossbar` supplies the
  other hardware parameters; timesteps, bits and mode are set here.
  """
  apply_kwargs = dict(train=False, timesteps=timesteps, mutable=["spikes"])
  layers = hw.layer_shapes_from_model(model, variables, sample_x, **apply_kwargs)
  if layer_bits is not None:
    bits = list(layer_bits(len(layers)) if callable(layer_bits) else layer_bits)
    if len(bits) != len(layers):
      raise ValueError(f"layer_bits has {len(bits)} entries but the model has {len(layers)} "
                       "crossbar layers; allowed: one per conv / dense layer in call order")
    layers = [dataclasses.replace(l, weight_bits=b) for l, b in zip(layers, bits)]
  sources = layer_input_sources(model, variables, sample_x, train=False, timesteps=timesteps)
  if len(sources) != len(layers):
    raise ValueError(f"found {len(sources)} layer inputs but {len(layers)} crossbar layers")
  dense_cfg = dataclasses.replace(crossbar, timesteps=int(timesteps), weight_bits=int(weight_bits),
                                  membrane_bits=int(membrane_bits), mode="dense")
  dense = hw.crossbar_cost(layers, dense_cfg)
  if spike_rates is None:
    return HardwareResult(layers, [1.0] * len(layers), [None] * len(layers), dense, None)
  means = {name: float(np.mean(np.asarray(r, np.float64))) for name, r in spike_rates.items()}
  rates = []
  for src in sources:
    if src is None:
      rates.append(1.0)
    elif src not in means:
      raise ValueError(f"no spike rate for LIF layer {src!r}; spike_rates name {sorted(means)}")
    else:
      rates.append(means[src])
  event = hw.crossbar_cost(layers, dataclasses.replace(dense_cfg, mode="event"), spike_rates=rates)
  return HardwareResult(layers, rates, list(sources), dense, event)


def cost_summary(cost: hw.CrossbarCost) -> dict[str, Any]:
  """Display units: energy µJ, latency ms, area mm², EDP J·s, EDAP J·s·mm², TOPS/W, TOPS/mm²."""
  return dict(
      energy_uj=cost.energy_j * 1e6, latency_ms=cost.latency_s * 1e3, area_mm2=cost.area_mm2,
      edp_js=cost.edp, edap_js_mm2=cost.edap, tops_per_w=cost.tops_per_w,
      tops_per_mm2=cost.tops_per_mm2, tiles=cost.tiles, total_pes=cost.total_pes,
      energy_breakdown_uj={k: v * 1e6 for k, v in cost.energy_breakdown_j.items()},
      area_breakdown_mm2=dict(cost.area_breakdown_mm2))


# ----------------------------------------------------------------------------------------
# Atomic writers.


write_text_atomic = provenance.write_text_atomic


def save_figure_atomic(fig, path: str | os.PathLike) -> None:
  with provenance.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


# ----------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend).


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # no display; a no-op when Agg is already active
  import matplotlib.pyplot as plt
  return plt


def plot_firing_histograms(rates_by_stage: Mapping[str, Mapping[str, Any]], path, bins: int = 20):
  """Grid of per-layer histograms of per-neuron rates on [0, 1], one outline per stage."""
  plt = _pyplot()
  stages = list(rates_by_stage)
  layers = list(next(iter(rates_by_stage.values())))
  cols = min(3, len(layers))
  rows = -(-len(layers) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
  for ax, layer in zip(axes.flat, layers):
    for stage in stages:
      if layer not in rates_by_stage[stage]:
        continue
      counts, edges = firing.rate_histograms({layer: rates_by_stage[stage][layer]}, bins)[layer]
      frac = counts / max(counts.sum(), 1)
      ax.stairs(frac, edges, label=stage, linewidth=1.6, fill=stage == stages[0],
                alpha=0.35 if stage == stages[0] else 1.0)
    ax.set_title(layer, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xlabel("firing rate (spikes / neuron / step)", fontsize=8)
    ax.set_ylabel("fraction of neurons", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(layers):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.suptitle("Per-neuron firing-rate distributions", fontsize=11)
  fig.tight_layout()
  save_figure_atomic(fig, path)
  plt.close(fig)


def plot_emd(emd_by_stage: Mapping[str, Mapping[str, Any]], path):
  """Grouped bars: EMD(fp, stage) per layer, one bar group per layer, one color per stage."""
  plt = _pyplot()
  stages = list(emd_by_stage)
  layers = list(next(iter(emd_by_stage.values()))["per_layer"]) if stages else []
  fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(layers) + 2), 3.6))
  width = 0.8 / max(len(stages), 1)
  x = np.arange(len(layers))
  for i, stage in enumerate(stages):
    vals = [emd_by_stage[stage]["per_layer"][l] for l in layers]
    ax.bar(x + (i - (len(stages) - 1) / 2) * width, vals, width,
           label=f"fp vs {stage} (pooled {emd_by_stage[stage]['pooled']:.3g})")
  ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8)
  ax.set_xlabel("LIF layer")
  ax.set_ylabel("EMD of firing rates (spikes / neuron / step)")
  ax.set_title("Firing-rate EMD per layer (FP teacher vs quantized)")
  if stages:
    ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure_atomic(fig, path)
  plt.close(fig)


def plot_energy_breakdown(hardware_by_stage: Mapping[str, Mapping[str, Any]], path):
  """Stacked bars of energy (µJ) by component, one bar per (stage, mode)."""
  plt = _pyplot()
  bars = [(f"{stage}\n{mode}", hwd[mode]["energy_breakdown_uj"])
          for stage, hwd in hardware_by_stage.items() for mode in ("dense", "event")
          if hwd.get(mode)]
  fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(bars) + 3), 4.0))
  bottom = np.zeros(len(bars))
  cmap = plt.get_cmap("tab10")
  for j, comp in enumerate(hw.ENERGY_COMPONENTS):
    vals = np.array([b[1].get(comp, 0.0) for b in bars])
    ax.bar(np.arange(len(bars)), vals, 0.6, bottom=bottom, label=comp, color=cmap(j % 10))
    bottom += vals
  ax.set_xticks(np.arange(len(bars)), [b[0] for b in bars], fontsize=8)
  ax.set_ylabel("energy per inference (µJ)")
  ax.set_title("Crossbar energy by component")
  ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
  fig.tight_layout()
  save_figure_atomic(fig, path)
  plt.close(fig)


# ----------------------------------------------------------------------------------------
# Saliency consistency (teacher vs student).


@functools.partial(jax.jit, static_argnums=(0, 1))
def _saliency_step(model, timesteps, variables, x):
  return sal.saliency_maps(
      lambda v: model.apply(variables, v, train=False, timesteps=timesteps), x)


def saliency_maps_of(model, variables, images, timesteps: int | None) -> np.ndarray:
  """`saliency.saliency_maps` of a linen model in eval mode, jitted: [N, H, W] float."""
  return np.asarray(_saliency_step(model, timesteps, variables, jnp.asarray(images, jnp.float32)))


def first_test_images(loader: Iterable[Mapping[str, Any]], n: int) -> np.ndarray:
  """The first `n` images of `loader` (fewer when the split is smaller), float32."""
  out, have = [], 0
  for batch in loader:
    out.append(np.asarray(batch["image"], np.float32)[:n - have])
    have += len(out[-1])
    if have >= n:
      break
  if not out:
    raise ValueError("the loader yielded no batch; allowed: at least one {'image', 'label'} batch")
  return np.concatenate(out)


def saliency_summary(teacher_maps: np.ndarray, student_maps: np.ndarray, k: float,
                     teacher: str) -> dict[str, Any]:
  """The report's saliency entry of one student: mean Spearman ρ, mean top-k IoU, counts."""
  c = sal.consistency(teacher_maps, student_maps, k)
  return dict(teacher=teacher, spearman=c.spearman, iou=c.iou, k=c.k,
              examples=int(len(c.per_image_iou)), spearman_defined=c.spearman_defined)


def plot_saliency(images: np.ndarray, maps_by_stage: Mapping[str, np.ndarray],
                  summary: Mapping[str, Mapping[str, Any]], path, shown: int = SALIENCY_SHOWN):
  """Grid: one row per image; columns the input, then each stage's saliency map (teacher
  first), each map scaled to its own maximum (saliency is compared by rank, not value)."""
  plt = _pyplot()
  n = min(int(shown), len(images))
  stages = list(maps_by_stage)
  fig, axes = plt.subplots(n, 1 + len(stages), figsize=(1.9 * (1 + len(stages)), 1.9 * n),
                           squeeze=False)
  for i in range(n):
    img = images[i]
    if img.ndim == 4:  # events [T, H, W, 2]: all frames' counts of both polarities
      img = img.sum((0, -1))
    elif img.shape[-1] == 1:
      img = img[..., 0]
    else:
      img = img[..., :3]
      img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    axes[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    for j, stage in enumerate(stages):
      m = maps_by_stage[stage][i]
      axes[i, 1 + j].imshow(m / max(float(m.max()), 1e-12), cmap="inferno", vmin=0, vmax=1)
  axes[0, 0].set_title("input", fontsize=8)
  for j, stage in enumerate(stages):
    s = summary.get(stage)
    title = (f"{stage}\nρ={fmt(s['spearman'])}, IoU@{fmt(s['k'])}%={fmt(s['iou'])}" if s
             else f"{stage} (teacher)")
    axes[0, 1 + j].set_title(title, fontsize=8)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("Input-gradient saliency of the predicted class (|∂Σ_t z_c/∂x|, max over channels)",
               fontsize=9)
  fig.tight_layout()
  save_figure_atomic(fig, path)
  plt.close(fig)


def stage_saliency(config, workdir: pathlib.Path, info, loaded: Mapping[str, tuple[Any, Any]],
                   timesteps: int, n_images: int, k: float
                   ) -> tuple[dict[str, dict], tuple[np.ndarray, dict[str, np.ndarray]] | None]:
  """({student stage: `saliency_summary`}, (images, {stage: maps}) for `plot_saliency`).

  The teacher is workdir's 'fp' stage when it was trained there, else the FP stage that
  `distill.teacher_workdir` names (loaded with its stored model config); every other loaded
  stage is compared with it. Empty ({} , None) when n_images is 0, no teacher is found or
  no student stage was trained.
  """
  from mdsnn_jax import data as data_lib
  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train import stages as stages_lib

  students = [s for s in loaded if s != "fp"]
  if n_images == 0 or not students:
    return {}, None
  if "fp" in loaded:
    teacher_name, (t_model, t_vars) = "fp", loaded["fp"]
  else:
    tdir = stages_lib.teacher_stage_dir(config, workdir)
    if not (tdir / "final_variables").is_dir():
      return {}, None
    t_model = nn_lib.create_model(stages_lib.teacher_model_config(config, tdir), info.num_classes)
    t_vars = stages_lib.load_trained_variables(
        t_model, stages_lib.sample_input(info, timesteps), tdir / "final_variables")
    teacher_name = str(tdir)
  loader = data_lib.make_loader(config.data, "test", batch_size=int(n_images), seed=0,
                                shuffle=False, num_epochs=1, drop_remainder=False)
  images = first_test_images(loader, int(n_images))
  maps = {"fp": saliency_maps_of(t_model, t_vars, images, timesteps)}
  out = {}
  for stage in students:
    maps[stage] = saliency_maps_of(*loaded[stage], images, timesteps)
    out[stage] = saliency_summary(maps["fp"], maps[stage], k, teacher_name)
  return out, (images, maps)


def _saliency_markdown(report: Mapping[str, Any]) -> list[str]:
  entries = report.get("saliency") or {}
  if not entries:
    return []
  first = next(iter(entries.values()))
  out = ["## Saliency consistency vs the teacher **[reconstruction]**", "",
         f"Input-gradient saliency of the predicted class (|∂Σ_t z_c/∂x|, max over channels; "
         f"`mdsnn_jax.saliency`) on the first {fmt(first['examples'])} test images. Spearman: "
         f"mean rank correlation of the teacher's and the student's maps; IoU: mean overlap of "
         f"their top-{fmt(first['k'])} % pixels. 1 = the same pixels matter, in the same order.",
         ""]
  out += _table(["stage", "teacher", "mean Spearman ρ", "mean top-k IoU", "k (%)", "images"],
                [[s, v["teacher"], v["spearman"], v["iou"], v["k"], v["examples"]]
                 for s, v in entries.items()])
  return out


# ----------------------------------------------------------------------------------------
# Markdown.


def fmt(x: Any) -> str:
  """How report.md prints a number: 4 significant digits (ints as ints); None as '–'."""
  if x is None:
    return "–"
  if isinstance(x, (bool, np.bool_)):
    return str(bool(x))
  if isinstance(x, (int, np.integer)):
    return str(int(x))
  x = float(x)
  if not math.isfinite(x):
    return str(x)
  return f"{x:.4g}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
  return lines + [""]


def render_markdown(report: Mapping[str, Any]) -> str:
  """report.md from the report dict (every number comes from the dict, printed by `fmt`)."""
  stages = report["stages"]
  counts = ", ".join(f"{s} {fmt(v['examples'])}" for s, v in stages.items())
  limit = f" (first {report['max_batches']} batches)" if report.get("max_batches") else ""
  out = [f"# Beyond-accuracy report: {report['model']} on {report['dataset']}", "",
         f"workdir `{report['workdir']}`; T = {report['timesteps']}; test examples evaluated per "
         f"stage: {counts}{limit}.", "", "## Accuracy", ""]
  out += _table(["stage", "weight bits", "weight grid", "weight levels", "membrane bits",
                 "test accuracy (%), end of training", "test accuracy (%), re-measured here",
                 "examples"],
                [[s + (" (stale)" if v.get("stale") else ""), v["weight_bits"],
                  v.get("weight_grid") or "–", v.get("weight_levels"), v["membrane_bits"],
                  v["accuracy_trained"], v["accuracy_measured"], v["examples"]]
                 for s, v in stages.items()])
  stale = {s: v["stale"] for s, v in stages.items() if v.get("stale")}
  if stale:
    out += [f"**Stale**: {s}: {why}; it is left out of the comparisons with the teacher. "
            f"Retrain it (`--overwrite`) or remove its folder." for s, why in stale.items()]
    out += [""]

  out += ["## Firing behaviour", "",
          "Per-neuron rate r = spikes / (examples · T); dead = fraction of neurons that never fired.",
          ""]
  for s, v in stages.items():
    out += [f"### {s}", ""]
    out += _table(["layer", "neurons", "mean rate", "dead fraction"],
                  [[layer, f["n_neurons"], f["mean_rate"], f["dead_fraction"]]
                   for layer, f in v["firing"].items()])

  if report["emd"]:
    out += ["## Firing-rate EMD vs the FP teacher", "",
            "1-D Wasserstein-1 distance between the per-neuron rate distributions.", ""]
    q_stages = list(report["emd"])
    layers = list(report["emd"][q_stages[0]]["per_layer"])
    rows = [[layer] + [report["emd"][q]["per_layer"].get(layer) for q in q_stages] for layer in layers]
    rows.append(["**pooled**"] + [report["emd"][q]["pooled"] for q in q_stages])
    out += _table(["layer"] + [f"EMD fp vs {q}" for q in q_stages], rows)

  out += _saliency_markdown(report)

  out += ["## Hardware (SpikeSim-style crossbar model)", "",
          "Dense: every crossbar read charged (SpikeSim reference). Event: crossbar reads charged "
          "at each layer's input spike rate (first layer dense). " + report["bits_note"], ""]
  rows = []
  for s, v in stages.items():
    for mode in ("dense", "event"):
      h = v["hardware"].get(mode)
      if h:
        rows.append([s, mode] + [h[k] for k in HARDWARE_FIELDS])
  out += _table(["stage", "mode", "energy (µJ)", "latency (ms)", "area (mm²)", "EDP (J·s)",
                 "EDAP (J·s·mm²)", "TOPS/W", "TOPS/mm²"], rows)

  if report["ratios"]:
    out += ["## Gains over the FP teacher", "",
            "Reductions are fp / quantized; gains are quantized / fp (> 1 is better).", ""]
    rows = [[s, mode] + [r[k] for k in RATIO_FIELDS]
            for s, by_mode in report["ratios"].items() for mode, r in by_mode.items()]
    out += _table(["stage", "mode", "energy ×", "latency ×", "area ×", "EDP ×", "EDAP ×",
                   "TOPS/W ×", "TOPS/mm² ×"], rows)

  out += ["## Plots", ""] + [f"![{p}]({p})" for p in report["files"]["plots"]] + [""]
  return "\n".join(out)


# ----------------------------------------------------------------------------------------
# The whole report of a workdir.


def _to_jsonable(obj: Any) -> Any:
  if isinstance(obj, Mapping):
    return {str(k): _to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_jsonable(v) for v in obj]
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating, float)):
    return float(obj)
  return obj


def _read_json(path: pathlib.Path) -> dict:
  with open(path) as f:
    return json.load(f)


def _stage_configs(workdir: pathlib.Path, stage: str, summary: Mapping[str, Any]):
  """(the whole config, the model config) that trained `stage`: its own stored config.json,
  so a stage trained by another command (e.g. qat at 4 bits, then md at 2) is rebuilt as it
  was trained; workdir/summary.json's config only for a stage stored without one."""
  import ml_collections

  from mdsnn_jax.train import stages as stages_lib

  stored = stages_lib.read_stage_config(workdir / stage)
  if stored is not None and stored.get("config"):
    return (ml_collections.ConfigDict(stored["config"]),
            ml_collections.ConfigDict(stored["result"]["model"]))
  if not summary.get("config"):
    raise FileNotFoundError(f"stage {stage!r} of {workdir} has no stored config.json and there "
                            f"is no training summary at {workdir / 'summary.json'}; it cannot be "
                            f"rebuilt as it was trained")
  config = ml_collections.ConfigDict(summary["config"])
  return config, stages_lib.stage_model_config(config, stage)


def _file_digest(*paths: pathlib.Path) -> str | None:
  import hashlib
  h, seen = hashlib.sha256(), False
  for p in paths:
    if p.is_file():
      h.update(p.name.encode() + b"\0" + p.read_bytes())
      seen = True
  return h.hexdigest() if seen else None


def report_inputs(workdir: str | os.PathLike, **options: Any) -> dict:
  """What a report is built from: each trained stage's stored config and summary (and those of
  a teacher outside the workdir), and the options. Equal inputs give the same report, so a
  re-run whose stages were all skipped does not rebuild it."""
  from mdsnn_jax.train import stages as stages_lib

  workdir = pathlib.Path(workdir)
  out = {"options": _to_jsonable(options),
         "summary": _file_digest(workdir / "summary.json"), "stages": {}}
  for stage in STAGE_ORDER:
    sdir = workdir / stage
    if not (sdir / "final_variables").is_dir():
      continue
    entry = {"files": _file_digest(sdir / "config.json", sdir / "summary.json")}
    stored = stages_lib.read_stage_config(sdir)
    teacher = ((stored or {}).get("result") or {}).get("teacher") or {}
    if teacher and "checksum" in teacher:
      import ml_collections
      tdir = stages_lib.teacher_stage_dir(ml_collections.ConfigDict(stored["config"]), workdir)
      entry["teacher"] = _file_digest(tdir / "config.json", tdir / "summary.json")
    out["stages"][stage] = entry
  return out


def report_is_current(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      **options: Any) -> bool:
  """Whether out_dir (default workdir/report) holds a complete report of the same inputs."""
  workdir = pathlib.Path(workdir)
  out_dir = pathlib.Path(out_dir) if out_dir is not None else workdir / "report"
  try:
    old = _read_json(out_dir / "report.json")
  except (OSError, ValueError):
    return False
  files = [old.get("files", {}).get("markdown", "report.md"), *old.get("files", {}).get("plots", [])]
  return (old.get("inputs") == _to_jsonable(report_inputs(workdir, **options))
          and all((out_dir / f).is_file() for f in files))


def build_report(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 max_batches: int | None = None, eval_batch: int | None = None,
                 saliency_examples: int = SALIENCY_EXAMPLES,
                 saliency_k: float = sal.DEFAULT_TOP_K, only_if_changed: bool = False) -> dict:
  """Evaluates every trained stage of `workdir` and writes report.{json,md} and plots to `out_dir`.

  out_dir defaults to workdir/report. In a multi-process run every process calls this (the
  variable restores are collective) and process 0 writes the files. A stage counts as
  trained when workdir/<stage>/final_variables exists; each is rebuilt from its own stored
  config.json (the model, data and T it was trained with). A student whose teacher was
  retrained after it is marked stale (`stages.stale_reason`) and left out of the EMD, the
  gains and the saliency, which compare it with that teacher. EMD and hardware ratios are
  against the 'fp' stage and are left out when it is absent. max_batches limits the test
  batches per stage (None: all); eval_batch defaults to each stage's train.eval_batch.
  saliency_examples / saliency_k: test images and top-k percent of the saliency section
  (`stage_saliency`; 0 images: no section). only_if_changed: return the report already in
  out_dir when it was built from the same inputs (`report_is_current`).
  Returns the dict written to report.json.
  """
  from mdsnn_jax import data as data_lib
  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train import stages as stages_lib
  from mdsnn_jax.train.stages import load_trained_variables, sample_input

  if (isinstance(saliency_examples, bool) or not isinstance(saliency_examples, (int, np.integer))
      or saliency_examples < 0):
    raise ValueError(f"saliency_examples must be an int >= 0 (0: no saliency section), got "
                     f"{saliency_examples!r}")
  saliency_k = sal.check_k(saliency_k)
  workdir = pathlib.Path(workdir)
  out_dir = pathlib.Path(out_dir) if out_dir is not None else workdir / "report"
  options = dict(max_batches=max_batches, eval_batch=eval_batch,
                 saliency_examples=saliency_examples, saliency_k=saliency_k)
  if only_if_changed and report_is_current(workdir, out_dir, **options):
    return _read_json(out_dir / "report.json")
  if (workdir / "summary.json").is_file() or any((workdir / s).is_dir() for s in STAGE_ORDER):
    stages_lib.ensure_writable_dir(out_dir, "the report folder")  # before the evaluation
  summary_path = workdir / "summary.json"
  stages = [s for s in STAGE_ORDER if (workdir / s / "final_variables").is_dir()]
  if not stages and not summary_path.is_file():
    raise FileNotFoundError(f"no training summary at {summary_path} and no trained stage; "
                            f"train the workdir first")
  summary = _read_json(summary_path) if summary_path.is_file() else {}
  if not stages:
    raise FileNotFoundError(f"no trained stage in {workdir}: none of "
                            f"{[str(workdir / s / 'final_variables') for s in STAGE_ORDER]} exists")
  inputs = report_inputs(workdir, **options)

  results: dict[str, dict] = {}
  rates_by_stage: dict[str, dict] = {}
  costs: dict[str, HardwareResult] = {}
  loaded: dict[str, tuple[Any, Any]] = {}  # stage -> (model, variables), for the saliency
  stale: dict[str, str] = {}
  first = None
  for stage in stages:
    config, model_cfg = _stage_configs(workdir, stage, summary)
    info = data_lib.dataset_info(config.data)
    timesteps = int(config.model.timesteps)
    hw_timesteps = int(info.timesteps or timesteps) if info.is_event else timesteps
    batch = int(eval_batch or config.train.eval_batch)
    sample = sample_input(info, timesteps)
    if first is None:
      first = (config, info, timesteps, hw_timesteps)
    reason = stages_lib.stale_reason(workdir, stage)
    if reason:
      stale[stage] = reason
    model = nn_lib.create_model(model_cfg, info.num_classes)
    variables = load_trained_variables(model, sample, workdir / stage / "final_variables")
    loader = data_lib.make_loader(config.data, "test", batch_size=batch, seed=0, shuffle=False,
                                  num_epochs=1, drop_remainder=False)
    fr = collect_firing(model, variables, loader, timesteps, max_batches)
    w_bits, u_bits = hardware_bits(model_cfg)
    w_grid = weight_grid_info(model_cfg.get("quant", {}).get("weight", None) or {"kind": "none"})
    hwr = hardware_for(model, variables, sample, weight_bits=w_bits, membrane_bits=u_bits,
                       timesteps=hw_timesteps, spike_rates=fr.rates,
                       layer_bits=functools.partial(layer_weight_bits, model_cfg))
    grids = layer_weight_grids(model_cfg, len(hwr.layers))
    stage_summary = None
    if (workdir / stage / "summary.json").is_file():
      stage_summary = _read_json(workdir / stage / "summary.json")
    if stage_summary is None:
      stage_summary = summary.get("stages", {}).get(stage)
    if reason is None:
      loaded[stage] = (model, variables)
    rates_by_stage[stage] = fr.rates
    costs[stage] = hwr
    results[stage] = dict(
        accuracy_trained=(stage_summary or {}).get("test_accuracy"),  # percent
        accuracy_measured=100.0 * fr.accuracy, examples=fr.examples,
        weight_bits=w_bits, weight_grid=w_grid["grid"], weight_levels=w_grid["levels"],
        membrane_bits=u_bits, stale=reason,
        firing=firing.layer_summary(fr.rates),
        mean_rate=float(np.concatenate([r.ravel() for r in fr.rates.values()]).mean()),
        hardware=dict(dense=cost_summary(hwr.dense),
                      event=cost_summary(hwr.event) if hwr.event is not None else None),
        layers=[dict(c_in=l.c_in, c_out=l.c_out, h_in=l.h_in, h_out=l.h_out, kernel=l.kernel,
                     macs=l.mac_count, weight_bits=l.weight_bits, weight_grid=g["grid"],
                     weight_levels=g["levels"])
                for l, g in zip(hwr.layers, grids)],
        input_rates=hwr.input_rates, input_rate_sources=hwr.sources)
  config, info, timesteps, hw_timesteps = first
  students = [s for s in stages if s != "fp" and s not in stale]
  if students:
    # The saliency's teacher and data: the config of the last student (its teacher_workdir).
    config, _ = _stage_configs(workdir, students[-1], summary)

  emd, ratios = {}, {}
  if "fp" in stages:
    for stage in students:
      emd[stage] = dict(per_layer=firing.layer_emd(rates_by_stage["fp"], rates_by_stage[stage]),
                        pooled=firing.pooled_emd(rates_by_stage["fp"], rates_by_stage[stage]))
      ratios[stage] = {"dense": hw.compare_costs(costs["fp"].dense, costs[stage].dense)}
      if costs["fp"].event is not None and costs[stage].event is not None:
        ratios[stage]["event"] = hw.compare_costs(costs["fp"].event, costs[stage].event)

  saliency, saliency_plot = stage_saliency(config, workdir, info, loaded, timesteps,
                                           saliency_examples, saliency_k)

  plots = [PLOT_FILES[0]] + ([PLOT_FILES[1]] if emd else []) + [PLOT_FILES[2]]
  plots += [SALIENCY_PLOT] if saliency else []
  report = dict(
      workdir=str(workdir), dataset=info.name, model=str(config.model.name), timesteps=hw_timesteps,
      max_batches=max_batches, stages=results, emd=emd, ratios=ratios, saliency=saliency,
      bits_note=BITS_NOTE, inputs=inputs,
      files=dict(json="report.json", markdown="report.md", plots=plots))
  report = _to_jsonable(report)

  if jax.process_index() != 0:
    # Multi-process: every process evaluates (the orbax restores above are collective);
    # process 0 alone writes the files.
    return report
  plot_firing_histograms(rates_by_stage, out_dir / PLOT_FILES[0])
  if emd:
    plot_emd(emd, out_dir / PLOT_FILES[1])
  plot_energy_breakdown({s: v["hardware"] for s, v in report["stages"].items()},
                        out_dir / PLOT_FILES[2])
  if saliency:
    plot_saliency(*saliency_plot, report["saliency"], out_dir / SALIENCY_PLOT)
  write_text_atomic(out_dir / "report.md", render_markdown(report))
  provenance.write_json_atomic(out_dir / "report.json", report)
  return report
