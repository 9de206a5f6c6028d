"""Runs a paper table (`tables.TABLES`) and writes it: <workdir>/<table>.{md,csv,json,png}.

    result = run_table('md_snn', workdir, scale='smoke', seeds=[0, 1, 2])

Every run goes through `loop.train_and_evaluate` (via `experiments`): a finished run with
the same config is read back, an unfinished one resumes from its checkpoint, a changed one is
refused unless `overwrite`. Runs live in <workdir>/<table>/<dataset>/<row>_seed<s>/ (with
`config=`, a user's config: in <workdir> itself); each seed has its own FP teacher
(teacher_seed<s>), which its students start from and distil, except in the MD evidence tables
(`Table.shared_teacher`), where one teacher (<root>/teacher) serves every seed.
Each row's final and best-epoch accuracy come from the evaluations its loop recorded while
training (`eval_history`: metrics.jsonl; every epoch at full scale), and each dataset's
recipe from its runs' configs (`tables.dataset_recipe`); both go into the table files.
After training, every row of every seed is measured on the test split (`data.test_subset`
when set) from its saved variables: accuracy, per-neuron firing rates (EMD to the FP teacher
of the same seed), the crossbar model in dense and event mode (`report.hardware_for`, first
/ last layers at their own bits), the FLOPs that the membrane-prior and learned-gate masks
the model produced let it skip (`FlopsCounter`), weight / membrane memory, the per-layer EMD
and dead fraction (`emd`, with `emd_verdict`), and the saliency consistency of each student
with its teacher on the first SALIENCY_EXAMPLES test images (`feature_kd`,
`report.saliency_maps_of`).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import io
import json
import math
import pathlib
import time
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdsnn_jax import data as data_lib
from mdsnn_jax import distill, firing
from mdsnn_jax import hardware as hw
from mdsnn_jax import nn as nn_lib
from mdsnn_jax import prune
from mdsnn_jax import provenance
from mdsnn_jax import report as report_lib
from mdsnn_jax import saliency as sal
from mdsnn_jax.train import cost as cost_lib
from mdsnn_jax.train import experiments, stages as stages_lib
from mdsnn_jax.train import tables as tables_lib
from mdsnn_jax.train.config import PRECISION_NOTE, PRECISIONS, precision_dtype

FP_BITS_MAIN = report_lib.FP_WEIGHT_BITS  # the FP weight width the headline gains assume
FP_BITS_SHOWN = (8, 16, 32)
MEMORY_FP_BITS = 32  # float32, as this library stores FP weights and membranes
GAIN_FIELDS = ("edap_reduction", "tops_per_w_gain", "tops_per_mm2_gain")
SALIENCY_EXAMPLES = report_lib.SALIENCY_EXAMPLES  # test images the saliency consistency uses
SALIENCY_K = sal.DEFAULT_TOP_K  # top-k % of pixels for the IoU
SHARED_TEACHER_TABLES = ("md_evidence", "md_ablation")  # rendered as accuracy tables
CONFIG_SCALE = tables_lib.CONFIG_SCALE


# ------------------------------------------------------------------- model structure
@dataclasses.dataclass(frozen=True)
class KernelLayer:
  """A conv / dense layer for FLOPs: k×k kernel, c_in → c_out, output h × w (before any
  pooling), the LIF layers whose masks gate its input / output channels (None: dense), and
  its learned channel gate: the gate's tap name in 'gate_masks' (None: no gate) and the
  gate's own FLOPs per sample and step (`prune.gate_flops` on the layer's input)."""
  name: str
  k: int
  c_in: int
  c_out: int
  h: int
  w: int
  in_lif: str | None = None
  out_lif: str | None = None
  gate: str | None = None
  gate_flops: int = 0

  @property
  def macs(self) -> int:
    return self.k * self.k * self.c_in * self.c_out * self.h * self.w


@dataclasses.dataclass(frozen=True)
class LifLayer:
  """A LIF layer: C channels of h × w neurons (dense layers: 1 × 1)."""
  name: str
  c: int
  h: int
  w: int

  @property
  def neurons(self) -> int:
    return self.c * self.h * self.w


def model_structure(model, variables, sample, timesteps) -> tuple[list[KernelLayer], list[LifLayer]]:
  """The conv / dense and LIF layers of `model` in call order, from one abstract forward.

  A layer's input is gated by a LIF when it reads that LIF's spikes directly (or, in a VGG,
  through the 2×2 average pooling, which keeps an inactive channel at zero); its output when
  it is that LIF's input current, directly or through its learned gate (`ChannelGate`, whose
  masks then gate the layer's output). Anything else in between (a residual sum, a flatten,
  the static stem's broadcast over T) is counted dense: conservative."""
  import flax.linen as fnn

  kernels: list[dict] = []
  lifs: list[LifLayer] = []
  lif_out: list[tuple[str, Any, int]] = []  # (name, returned array, channels)
  kernel_out: list[tuple[int, Any]] = []
  seen: set = set()
  vgg = isinstance(model, nn_lib.models.SpikingVGG)

  def interceptor(next_fun, fargs, fkwargs, context):
    mod = context.module
    if context.method_name != "__call__" or mod.scope is None or not fargs:
      return next_fun(*fargs, **fkwargs)
    key = tuple(mod.scope.path)
    name = "/".join(key)
    x = fargs[0]
    if isinstance(mod, nn_lib.layers.ChannelGate):
      y = fargs[1] if len(fargs) > 1 else fkwargs["y"]
      feeding = [i for i, o in kernel_out if o is y]
      if not feeding:
        raise ValueError(f"learned gate {name!r} does not gate a conv / dense layer's output")
      out = next_fun(*fargs, **fkwargs)
      layer = kernels[feeding[-1]]
      spatial = x.shape[2:-1]  # the gate pools the layer's input: [T, B, H, W, C] or [T, B, C]
      layer["gate"] = name
      layer["gate_flops"] = prune.gate_flops(int(x.shape[-1]), int(y.shape[-1]),
                                             *(map(int, spatial) if spatial else (1, 1)))
      kernel_out.append((feeding[-1], out))  # a LIF fed by the gate is fed by the layer
      return out
    direct = [n for n, o, _ in lif_out if o is x]
    last_lif = lif_out[-1] if lif_out else None
    before = len(kernels)
    if report_lib._has_kernel(mod) and key not in seen:
      seen.add(key)
      kshape = tuple(mod.variables["params"]["kernel"].shape)
      kernels.append(dict(name=name, k=kshape[0] if len(kshape) == 4 else 1, c_in=kshape[-2],
                          c_out=kshape[-1], h=1, w=1, in_lif=None, out_lif=None, gate=None,
                          gate_flops=0, conv=len(kshape) == 4))
    out = next_fun(*fargs, **fkwargs)
    if len(kernels) > before:
      # A wrapper (conv + BN) and the conv inside it: the layer's input is the outermost
      # call's input, its output the outermost call's output.
      first = kernels[before]
      if first["conv"] and len(kernels) - before == 1:
        first["h"], first["w"] = int(out.shape[-3]), int(out.shape[-2])
      if first["in_lif"] is None and direct:
        first["in_lif"] = direct[-1]
      elif (first["in_lif"] is None and vgg and last_lif is not None
            and first["conv"] and last_lif[2] == first["c_in"]):
        first["in_lif"] = last_lif[0]  # read through the average pooling
      if len(kernels) - before == 1:
        kernel_out.append((before, out))
    if report_lib._sows_spikes(mod):
      feeding = [i for i, o in kernel_out if o is x]
      if feeding:
        kernels[feeding[-1]]["out_lif"] = name
      spatial = x.shape[2:-1]
      lifs.append(LifLayer(name, int(x.shape[-1]), int(np.prod(spatial)) if spatial else 1, 1))
      lif_out.append((name, out, int(x.shape[-1])))
    return out

  with fnn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False, timesteps=timesteps,
                                            mutable=["spikes", "prune_masks"]), variables, sample)
  return [KernelLayer(**{f: v for f, v in k.items() if f != "conv"}) for k in kernels], lifs


class FlopsCounter:
  """FLOPs of a forward pass from the active-channel masks a model produced (docs/method.md, membrane-prior pruning).

  Per timestep t and sample b, with n_in / n_out the active input / output channels (the
  count of the LIF it reads / feeds, else of its learned gate's mask on the output side,
  else all channels; `active_channel_counts` makes a LIF's count from every mask on it):

      conv / dense:  dense k²·H·W·C_in·C_out,   active k²·H·W·n_in·n_out
      LIF:           dense 3·H·W·C,             active 3·H·W·n  (masked LIFs; else dense)
      prior:         H·W·C + 2·C per gated LIF  (`prune.prior_mask_flops`), every (t, b)
      learned gate:  `KernelLayer.gate_flops` per gated layer, every (t, b)

  reduction = (dense − active − prior − gates) / dense; factor = dense / (active + prior +
  gates). `gated` names the membrane-prior LIFs (charged the prior's cost)."""

  def __init__(self, layers: list[KernelLayer], lifs: list[LifLayer], gated: Iterable[str] = ()):
    self.layers, self.lifs, self.gated = list(layers), list(lifs), set(gated)
    self.dense = self.active = self.gate = 0

  def add(self, counts: Mapping[str, Any], t: int, b: int) -> None:
    """counts: {masked LIF or learned gate: active channels per (t, b), int [T, B]} of one
    batch (`active_channel_counts`)."""
    full = np.ones((t, b), np.int64)
    n = {k: np.asarray(v, np.int64) for k, v in counts.items()}
    for m in n.values():
      if m.shape != (t, b):
        raise ValueError(f"mask counts must be [T, B] = {(t, b)}, got {m.shape}")
    for l in self.layers:
      n_in = n.get(l.in_lif, full * l.c_in)
      n_out = n.get(l.out_lif, n.get(l.gate, full * l.c_out))
      self.dense += t * b * l.macs
      self.active += int(np.sum(l.k * l.k * l.h * l.w * n_in * n_out))
      if l.gate is not None:
        self.gate += t * b * l.gate_flops
    for l in self.lifs:
      per_channel = prune.LIF_OPS_PER_NEURON * l.h * l.w
      self.dense += t * b * per_channel * l.c
      self.active += int(np.sum(per_channel * n.get(l.name, full * l.c)))
      if l.name in self.gated:
        self.gate += t * b * prune.prior_mask_flops(l.c, l.h, l.w)

  def result(self) -> dict:
    spent = self.active + self.gate
    return dict(dense=float(self.dense), active=float(self.active), gate=float(self.gate),
                reduction=prune.flops_reduction(self.dense, self.active, self.gate),
                factor=float(self.dense / spent) if spent else math.inf)


def active_channel_counts(prior_masks: Mapping[str, Any], gate_masks: Mapping[str, Any],
                          links: Iterable[tuple[str, str]], timesteps: int) -> dict:
  """{LIF or gate: active channels per (t, b), int32 [T, B]} from one batch's sown masks.

  prior_masks {LIF: [T, B, C]} ('prune_masks'); gate_masks {gate: [T or 1, B, C]}
  ('gate_masks'; a static stem's [1, B, C] holds at every step); links: (gate, LIF) pairs
  where the gate's output is the LIF's input current (`KernelLayer.gate` / `out_lif`). A
  LIF's channel is active when every mask on it keeps it: m = m_prior · m_gate (either
  zeroes its current). Works on NumPy and JAX arrays (jit-able)."""
  gates = {g: jnp.broadcast_to(m, (timesteps,) + tuple(m.shape[1:])) for g, m in gate_masks.items()}
  active = dict(prior_masks)
  for g, lif in links:
    if g in gates:
      active[lif] = gates[g] * active[lif] if lif in active else gates[g]
  return {k: jnp.sum(m, -1).astype(jnp.int32) for k, m in {**gates, **active}.items()}


# ------------------------------------------------------------------------ measurement
@dataclasses.dataclass
class Run:
  model: Any
  variables: Any
  model_cfg: dict
  data_cfg: ml_collections.ConfigDict
  info: Any
  timesteps: int
  sample: np.ndarray
  eval_batch: int


def load_run(stage_dir: pathlib.Path, *, ptq_teacher: pathlib.Path | None = None) -> Run:
  """A finished stage's model and variables, from its stored config. With `ptq_teacher`: the
  stage's student initialised from that teacher as its training started (PTQ), untrained."""
  stored = stages_lib.read_stage_config(stage_dir)
  if stored is None:
    raise FileNotFoundError(f"no {stages_lib.CONFIG_FILE} in {stage_dir}; run the table first")
  res = stored["result"]
  model_cfg = res["model"]
  data_cfg = ml_collections.ConfigDict(res["data"])
  info = data_lib.dataset_info(data_cfg)
  timesteps = int(model_cfg["timesteps"])
  model = nn_lib.create_model(model_cfg, info.num_classes)
  sample = stages_lib.sample_input(info, timesteps)
  if ptq_teacher is None:
    variables = stages_lib.load_trained_variables(model, sample, stage_dir / "final_variables")
  else:  # as loop.run_stage builds a student before its first step
    t_cfg = stages_lib.read_stage_config(ptq_teacher)["result"]["model"]
    t_model = nn_lib.create_model(t_cfg, info.num_classes)
    t_vars = stages_lib.load_trained_variables(t_model, sample, ptq_teacher / "final_variables")
    key = jax.random.PRNGKey(int(res["seed"]))
    variables = nn_lib.init_variables(model, key, sample)
    variables = nn_lib.init_student_from_teacher(variables, t_vars, student_model=model,
                                                 sample_input=sample, rng=jax.random.fold_in(key, 1))
  eval_batch = int(stored["config"]["train"]["eval_batch"])
  return Run(model, variables, model_cfg, data_cfg, info, timesteps, sample, eval_batch)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _eval_step(model, timesteps, prior, learned, links, stats, variables, x, y):
  cols = (["spikes"] + (["prune_masks"] if prior else [])
          + (["gate_masks"] if learned else []))
  logits, c = model.apply(variables, x, train=False, timesteps=timesteps, mutable=cols)
  counts = {}
  if prior or learned:
    counts = active_channel_counts(distill.flatten_taps(c.get("prune_masks", {})),
                                   distill.flatten_taps(c.get("gate_masks", {})), links,
                                   int(logits.shape[0]))
  correct = jnp.sum(jnp.argmax(logits.mean(0), -1) == y)
  return firing.update_rates(stats, distill.flatten_taps(c["spikes"])), correct, counts


def evaluate_run(run: Run) -> dict:
  """One pass over the whole test split: accuracy (%), per-neuron rates and (membrane-prior
  or learned-gate models) the FLOPs counted from the masks of every test example."""
  neuron = run.model_cfg.get("neuron") or {}
  prior = neuron.get("prune_prior") is not None
  learned = neuron.get("gate_rho") is not None
  layers, lifs = model_structure(run.model, run.variables, run.sample, run.timesteps)
  links = tuple((l.gate, l.out_lif) for l in layers if l.gate and l.out_lif)
  counter = FlopsCounter(layers, lifs, [l.name for l in lifs] if prior else ())
  loader = data_lib.make_loader(run.data_cfg, "test", batch_size=run.eval_batch, seed=0,
                                shuffle=False, num_epochs=1, drop_remainder=False)
  stats = None
  correct = examples = 0
  t_steps = None
  for batch in loader:
    x = jnp.asarray(batch["image"], jnp.float32)
    y = jnp.asarray(batch["label"], jnp.int32)
    if stats is None:
      spikes = jax.eval_shape(report_lib.spike_forward(run.model, run.timesteps), run.variables, x)[1]
      stats = firing.init_rates(spikes)
      t_steps = int(next(iter(spikes.values())).shape[0])
    stats, c, counts = _eval_step(run.model, run.timesteps, prior, learned, links, stats,
                                  run.variables, x, y)
    counter.add(jax.device_get(counts), t_steps, int(y.shape[0]))
    correct += int(c)
    examples += int(y.shape[0])
  if stats is None:
    raise ValueError(f"the test split of {run.info.name!r} yielded no batch")
  return dict(accuracy=100.0 * correct / examples, examples=examples,
              rates=firing.finalize_rates(stats), flops=counter.result(), layers=layers,
              lifs=lifs)


def _hw_timesteps(run: Run) -> int:
  return int(run.info.timesteps or run.timesteps) if run.info.is_event else run.timesteps


def hardware(run: Run, rates, *, fp_bits: int | None = None) -> dict:
  """{'dense', 'event'} crossbar costs (`report.cost_summary`) and the raw costs. fp_bits:
  charge every layer at that weight width and 22-bit membranes (the FP teacher)."""
  if fp_bits is None:
    w_bits, u_bits = report_lib.hardware_bits(run.model_cfg)
    layer_bits = functools.partial(report_lib.layer_weight_bits, run.model_cfg)
  else:
    w_bits, u_bits = fp_bits, report_lib.FP_MEMBRANE_BITS
    layer_bits = lambda n: [fp_bits] * n  # noqa: E731
  r = report_lib.hardware_for(run.model, run.variables, run.sample, weight_bits=w_bits,
                              membrane_bits=u_bits, timesteps=_hw_timesteps(run),
                              spike_rates=rates, layer_bits=layer_bits)
  return {"dense": r.dense, "event": r.event, "weight_bits": w_bits, "membrane_bits": u_bits,
          "layer_bits": [l.weight_bits for l in r.layers]}


def memory_layer_bits(model_cfg: Mapping[str, Any], n: int) -> list[int]:
  """Stored bits of each conv / dense layer's weights for the memory columns: as
  `report.layer_weight_bits`, but full precision is float32 (32 bits), as stored here."""
  quant = model_cfg.get("quant") or {}

  def bits(cfg, net=None):
    cfg = cfg or {"kind": "none"}
    if cfg.get("kind") == "same":
      return net
    return MEMORY_FP_BITS if cfg.get("kind", "none") == "none" else report_lib.weight_bits_of(cfg)

  net = bits(quant.get("weight"))
  out = [net] * n
  first, last = bits(quant.get("first_layer"), net), bits(quant.get("last_layer"), net)
  if n == 1:
    return [max(first, last)]
  out[0], out[-1] = first, last
  return out


def memory(run: Run, layers: list[KernelLayer], lifs: list[LifLayer]) -> dict:
  """Weight memory Σ_i k²·C_in·C_out·b_w,i and membrane memory Σ_LIF neurons·b_u, in MB
  (10^6 bytes); FP is float32, a quantized membrane its stored bits ⌈log2 #levels⌉."""
  bits = memory_layer_bits(run.model_cfg, len(layers))
  counts = [l.k * l.k * l.c_in * l.c_out for l in layers]
  mcfg = (run.model_cfg.get("quant") or {}).get("membrane") or {"kind": "none"}
  u_bits = MEMORY_FP_BITS if mcfg.get("kind", "none") == "none" else report_lib.membrane_bits_of(mcfg)
  neurons = sum(l.neurons for l in lifs)
  return dict(weight_mb=sum(c * b for c, b in zip(counts, bits)) / 8e6, weight_count=sum(counts),
              weight_bits=bits, membrane_mb=neurons * u_bits / 8e6, membrane_count=neurons,
              membrane_bits=u_bits)


def quantization_of(model_cfg: Mapping[str, Any]) -> str:
  """The row's quantization in words: weight quantizer, grid, levels and stored bits (body
  and first / last layers), and the membrane's levels and stored bits, e.g. 'W: lsq 2-bit
  full grid, 4 levels, 2 bits stored (first / last: same); U: ternary, 3 levels, 2 bits'."""
  quant = model_cfg.get("quant") or {}
  weight = quant.get("weight") or {"kind": "none"}

  def w_text(cfg) -> str:
    if (cfg or {}).get("kind", "none") == "none":
      return "float"
    g = report_lib.weight_grid_info(cfg)
    levels = "learned levels" if g["grid"] == "learned" else f"{g['grid']} grid"
    return (f"{cfg['kind']} {cfg.get('bits', g['stored_bits'])}-bit {levels}, {g['levels']} "
            f"levels, {g['stored_bits']} bits stored")

  text = f"W: {w_text(weight)}"
  if weight.get("kind", "none") != "none":
    ends = ["same" if (quant.get(k) or {}).get("kind") == "same" else w_text(quant.get(k))
            for k in ("first_layer", "last_layer")]
    text += f" (first / last layer: {ends[0]} / {ends[1]})"
  membrane = quant.get("membrane") or {"kind": "none"}
  if membrane.get("kind", "none") == "none":
    return text + "; U: float"
  from mdsnn_jax.quant.registry import make_membrane_quantizer
  n = len(make_membrane_quantizer(membrane).levels)
  return text + (f"; U: {membrane['kind']}, {n} levels, "
                 f"{report_lib.membrane_bits_of(membrane)} bits stored")


# ------------------------------------------------------------------------------ driver
def _mean_std(values) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else 0.0)


def _seed_mean(dicts: list[dict]) -> dict:
  """Mean over seeds of every number in a list of equally shaped dicts."""
  first = dicts[0]
  if isinstance(first, Mapping):
    return {k: _seed_mean([d[k] for d in dicts]) for k in first}
  if isinstance(first, (int, float, np.floating, np.integer)) and not isinstance(first, bool):
    return float(np.mean(dicts))
  return first


def _gains(fp_cost, q_cost) -> dict:
  return hw.compare_costs(fp_cost, q_cost)


def run_dataset(table: tables_lib.Table, dataset: tables_lib.Dataset, root: pathlib.Path,
                seeds: list[int], *, overwrite: bool = False,
                plan: tuple[dict, dict] | None = None) -> dict:
  """Trains (or reads back) every run of `table` on `dataset`, then measures every row.
  plan: `tables.plan(table, dataset)` when the caller already made it."""
  configs, notes = plan if plan is not None else tables_lib.plan(table, dataset)
  rows = list(table.rows)
  students = [r for r in rows if r.kind == "student" and r.key not in notes]
  teachers = [k for k in configs if k in tables_lib.TEACHERS or k.startswith("teacher")]
  training_seconds = 0.0  # the runs' own wall times, however many invocations trained them
  for i, seed in enumerate(seeds):
    for key in teachers:
      if table.shared_teacher and i > 0:
        continue  # one teacher (the config's seed) for every seed
      summary = experiments.run_teacher(configs[key], root, overwrite=overwrite,
                                        name=table.teacher_run(key, seed),
                                        seed=None if table.shared_teacher else seed)
      training_seconds += float(summary.get("wall_seconds", 0.0))
    for row in students:
      summary = experiments.run_student(
          configs[row.key], root, row.method, seed, name=table.student_run(row.key),
          teacher_dir=root / table.teacher_run(row.teacher, seed) / "fp", overwrite=overwrite)
      training_seconds += float(summary.get("wall_seconds", 0.0))

  out_rows = []
  measured: dict[str, list[dict]] = {}
  fp_rates: dict[int, dict] = {}
  fp_hw: dict[int, dict] = {}
  fp_saliency: dict[int, tuple] = {}
  by_key = {r.key: r for r in rows}
  loaded: dict[tuple, tuple] = {}

  def student_dir(r, seed):
    return root / f"{table.student_run(r.key)}_seed{seed}" / experiments.METHODS[r.method][0]

  for row in rows:
    if row.key in notes:
      out_rows.append(dict(key=row.key, label=row.label, available=False, note=notes[row.key]))
      continue
    per_seed = []
    for seed in seeds:
      teacher_dir = root / table.teacher_run(tables_lib.TEACHERS[0], seed) / "fp"
      if row.kind == "teacher":
        stage_dir, ptq = teacher_dir, None
      elif row.kind == "ptq":
        stage_dir, ptq = student_dir(by_key[row.ptq_of], seed), teacher_dir
      else:
        stage_dir, ptq = student_dir(row, seed), None
      key = (str(stage_dir), str(ptq))
      if key not in loaded:  # a shared teacher is one run for every seed: measured once
        run = load_run(stage_dir, ptq_teacher=ptq)
        loaded[key] = run, evaluate_run(run)
      run, ev = loaded[key]
      summary = json.loads((stage_dir / stages_lib.SUMMARY_FILE).read_text())
      m = dict(seed=seed, accuracy=ev["accuracy"] if row.kind == "ptq" else summary["test_accuracy"],
               accuracy_remeasured=ev["accuracy"], examples=ev["examples"],
               steps=0 if row.kind == "ptq" else summary["steps"],
               quantization=quantization_of(run.model_cfg))
      if row.kind != "ptq":  # the final and best evaluation the loop recorded as it trained
        m.update(eval_history(stage_dir, summary))
      if row.kind == "teacher":
        fp_rates[seed] = ev["rates"]
      m["mean_rate"] = float(np.concatenate([r.ravel() for r in ev["rates"].values()]).mean())
      if "emd_to_fp" in table.columns:
        m["emd_to_fp"] = firing.pooled_emd(fp_rates[seed], ev["rates"])
      if "layer_emd" in table.columns:
        m["layer_emd"] = firing.layer_emd(fp_rates[seed], ev["rates"])
      if "dead_fraction" in table.columns:
        m["dead_fraction"] = firing.dead_fraction(
            np.concatenate([r.ravel() for r in ev["rates"].values()]))
      if "saliency" in table.columns:
        if row.kind == "teacher":
          fp_saliency[seed] = teacher_saliency(run)
        else:
          images, t_maps = fp_saliency[seed]
          m["saliency"] = report_lib.saliency_summary(
              t_maps, report_lib.saliency_maps_of(run.model, run.variables, images, run.timesteps),
              SALIENCY_K, f"teacher_seed{seed}")
      if "hardware" in table.columns:
        h = hardware(run, ev["rates"])
        if row.kind == "teacher":
          fp_hw[seed] = {b: hardware(run, ev["rates"], fp_bits=b) for b in FP_BITS_SHOWN}
          h = fp_hw[seed][FP_BITS_MAIN]
        m["weight_bits"], m["membrane_bits"] = h["weight_bits"], h["membrane_bits"]
        m["layer_weight_bits"] = h["layer_bits"]
        m["hardware"] = {mode: {k: report_lib.cost_summary(h[mode])[k]
                                for k in report_lib.HARDWARE_FIELDS} for mode in ("dense", "event")}
        m["gains"] = {f"fp{b}": {mode: _gains(fp_hw[seed][b][mode], h[mode])
                                 for mode in ("dense", "event")} for b in FP_BITS_SHOWN}
      if "flops_reduction" in table.columns:
        m["flops"] = ev["flops"]
      if "memory" in table.columns:
        m["memory"] = memory(run, ev["layers"], ev["lifs"])
      per_seed.append(m)
    measured[row.key] = per_seed
    acc = [m["accuracy"] for m in per_seed]
    mean, std = _mean_std(acc)
    entry = dict(key=row.key, label=row.label, available=True, seeds=list(seeds), accuracy=acc,
                 accuracy_mean=mean, accuracy_std=std, per_seed=per_seed)
    entry.update(best_summary(per_seed))
    for col in ("emd_to_fp", "hardware", "gains", "flops", "memory", "weight_bits",
                "membrane_bits", "mean_rate", "layer_emd", "dead_fraction", "saliency",
                "quantization"):
      if col in per_seed[0]:
        entry[col] = _seed_mean([m[col] for m in per_seed])
    for col in ("emd_to_fp", "dead_fraction", "mean_rate"):  # the seed spread of scalars
      if col in per_seed[0] and col in table.columns + ("mean_rate",):
        entry[f"{col}_std"] = _mean_std([m[col] for m in per_seed])[1]
    out_rows.append(entry)

  fp_mem = out_rows[0].get("memory")
  for entry in out_rows:
    if not entry["available"]:
      continue
    base_key = tables_lib.baseline_of(table, entry["key"])
    base = measured.get(base_key)
    entry["baseline"] = base_key
    entry["delta_vs_baseline"] = (None if entry["key"] == base_key or base is None else
                                  experiments.paired_delta(entry["accuracy"],
                                                           [m["accuracy"] for m in base]))
    if fp_mem is not None and "memory" in entry:
      entry["memory"]["weight_reduction"] = fp_mem["weight_mb"] / entry["memory"]["weight_mb"]
      entry["memory"]["membrane_reduction"] = fp_mem["membrane_mb"] / entry["memory"]["membrane_mb"]
      total = entry["memory"]["weight_mb"] + entry["memory"]["membrane_mb"]
      entry["memory"]["total_reduction"] = (fp_mem["weight_mb"] + fp_mem["membrane_mb"]) / total
  add_delta_tests(table.name, out_rows)
  out = dict(key=dataset.key, description=dataset.description, is_event=dataset.is_event,
             rows=out_rows, training_seconds=training_seconds)
  if table.name == "emd":
    out["verdict"] = emd_verdict(out_rows, len(seeds))
  return out


BEST_LABEL = "best epoch (the papers' code reports this)"
NO_BEST = "no per-epoch evaluation (final only)"


def eval_history(stage_dir: pathlib.Path, summary: Mapping[str, Any] | None = None) -> dict:
  """The run's final and best test accuracy, read from the evaluations its loop recorded as it
  trained (<stage_dir>/metrics.jsonl: `eval_accuracy` at every `train.eval_every` step and at
  the end; nothing is re-evaluated): {'final_accuracy', 'final_step', 'best_accuracy' (None
  when the run evaluated only at the end), 'best_step', 'evals' (evaluations before the
  end)}. Only the last record of a step counts (a resumed run rewrote the later ones)."""
  path = pathlib.Path(stage_dir) / "metrics.jsonl"
  by_step: dict[int, float] = {}
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "eval_accuracy" in rec and rec.get("step") is not None:
        by_step[int(rec["step"])] = float(rec["eval_accuracy"])
  total = int(summary["steps"]) if summary and "steps" in summary else (max(by_step) if by_step else 0)
  final = (float(summary["test_accuracy"]) if summary and "test_accuracy" in summary
           else by_step.get(total))
  during = {k: v for k, v in by_step.items() if 0 < k < total}
  out = dict(final_accuracy=final, final_step=total, evals=len(during),
             best_accuracy=None, best_step=None)
  if during:
    scored = dict(during)
    if final is not None:
      scored[total] = final
    best_step = max(sorted(scored), key=lambda k: scored[k])  # the earliest of equal bests
    out.update(best_accuracy=scored[best_step], best_step=best_step)
  return out


def best_summary(per_seed: list[dict]) -> dict:
  """A row's best-epoch accuracy over its seeds: mean ± std of each seed's best (only when
  every seed evaluated during training), the best steps, and the evaluation count."""
  if not per_seed or any("best_accuracy" not in m for m in per_seed):
    return {}
  best = [m["best_accuracy"] for m in per_seed]
  out = dict(accuracy_best=None if any(b is None for b in best) else best,
             best_steps=[m["best_step"] for m in per_seed],
             evals=[m["evals"] for m in per_seed])
  if out["accuracy_best"] is not None:
    out["accuracy_best_mean"], out["accuracy_best_std"] = _mean_std(best)
  return out


def accuracy_lines(result: dict, ds: dict) -> list[str]:
  """The final and best-epoch accuracy of each row (rows the loop evaluated during training;
  empty for a result made before these were recorded)."""
  rows = [e for e in ds["rows"] if e.get("available") and "evals" in e]
  if not rows:
    return []
  lines = ["Accuracy as trained (read from each run's metrics.jsonl, not re-evaluated): final "
           "= after the last step (the accuracy column above); best epoch = the highest test "
           "accuracy of the run's evaluations during training (every epoch at full scale; "
           "`train.eval_every` steps otherwise), the final one included, mean ± std over the "
           "seeds.", "",
           f"| row | final (%) | {BEST_LABEL} (%) | best at step (per seed) | evaluations "
           "during training (per seed) |", "|" + "---|" * 5]
  for e in rows:
    if e.get("accuracy_best") is None:
      best, at = NO_BEST, "—"
    else:
      best = f"{e['accuracy_best_mean']:.2f} ± {e['accuracy_best_std']:.2f}"
      at = ", ".join(str(s) for s in e["best_steps"])
    lines.append(f"| {e['label']} | {_acc(e)} | {best} | {at} | "
                 f"{', '.join(str(n) for n in e['evals'])} |")
  return lines


def teacher_saliency(run: Run, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(the first `n` test images, the teacher's saliency maps of them) (`report` helpers)."""
  n = SALIENCY_EXAMPLES if n is None else int(n)
  loader = data_lib.make_loader(run.data_cfg, "test", batch_size=n, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False)
  images = report_lib.first_test_images(loader, n)
  return images, report_lib.saliency_maps_of(run.model, run.variables, images, run.timesteps)


def emd_verdict(rows: list[dict], n_seeds: int) -> dict:
  """Whether "uniform drifts, LQ-Net preserves" holds, from the pooled EMD to FP per bit width.

  At each bit width it holds when LQ-Net's mean + std lies below every uniform row's mean − std
  (the seed spreads do not overlap), is reversed when LQ-Net's mean − std lies above a uniform
  row's mean + std, and is unsettled otherwise; with one seed there is no spread to judge."""
  by_key = {e["key"]: e for e in rows if e.get("available") and "emd_to_fp" in e}
  per_bits, lines = {}, []
  for bits in tables_lib.EMD_BITS:
    lq = by_key.get(f"lqnet_w{bits}")
    uni = [by_key[k] for k in (f"{q}_w{bits}" for q in tables_lib.UNIFORM_QUANTIZERS) if k in by_key]
    if lq is None or not uni:
      continue
    lq_hi = lq["emd_to_fp"] + lq["emd_to_fp_std"]
    lq_lo = lq["emd_to_fp"] - lq["emd_to_fp_std"]
    below = all(lq_hi < u["emd_to_fp"] - u["emd_to_fp_std"] for u in uni)
    above = any(lq_lo > u["emd_to_fp"] + u["emd_to_fp_std"] for u in uni)
    if n_seeds < 2:
      word = ("lower" if all(lq["emd_to_fp"] < u["emd_to_fp"] for u in uni) else "not lower")
      status = "unsettled"
      why = f"one seed, no spread: LQ-Net's pooled EMD is {word} than the uniform rows'"
    elif below:
      status, why = "holds", "LQ-Net's mean + std lies below every uniform row's mean − std"
    elif above:
      status, why = "reversed", "LQ-Net's mean − std lies above a uniform row's mean + std"
    else:
      status, why = "unsettled", "the seed spreads of LQ-Net and the uniform rows overlap"
    nums = "; ".join(f"{u['label']} {u['emd_to_fp']:.4f} ± {u['emd_to_fp_std']:.4f}" for u in uni)
    per_bits[str(bits)] = status  # str: the same keys after a json round trip
    lines.append(f"{bits}-bit: **{status}** ({why}): LQ-Net {lq['emd_to_fp']:.4f} ± "
                 f"{lq['emd_to_fp_std']:.4f} vs {nums}.")
  overall = ("holds" if per_bits and all(v == "holds" for v in per_bits.values()) else
             "reversed" if per_bits and all(v == "reversed" for v in per_bits.values()) else
             "unsettled")
  return dict(status=overall, per_bits=per_bits, lines=lines)


def use_compile_cache(workdir) -> None:
  """Keep XLA's compiled programs in <workdir>/.jax_cache (unless the user set a cache).

  Each run of a table is a fresh train_and_evaluate that would recompile the same train and
  eval steps (~8 s each on 2 CPU cores); jax's persistent cache makes seeds 1.. reuse seed 0's."""
  if jax.config.jax_compilation_cache_dir:  # the user's own cache wins
    return
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(workdir) / ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def check_inputs(table: str, scale: str, seeds: str,
                 rows: Iterable[str] | None = None) -> tuple[tables_lib.Table, list[int]]:
  """Everything about the command line that can be wrong, before any training: the table
  (with only `rows` and what they need, `tables.select_rows`) and the seed list."""
  t = tables_lib.select_rows(tables_lib.get_table(table), rows)
  return t, tables_lib.parse_seeds(seeds, scale)  # checks the scale first


def config_dataset(config: ml_collections.ConfigDict) -> tables_lib.Dataset:
  """A table's dataset made of a user's training config (`--config`): its rows run on it.
  Nothing is read here: the pre-flight opens the data with every other check."""
  name = data_lib.registry.parse_config(config.data).name
  teacher_steps = int(config.get("teacher_steps", config.train.steps))
  return tables_lib.Dataset(
      name, f"the given config: {name}, {config.model.name}, T = "
      f"{int(config.model.timesteps)}, {teacher_steps} teacher / {int(config.train.steps)} student "
      f"steps at batch {int(config.train.global_batch)}", name in data_lib.registry.EVENT_NAMES,
      lambda: copy.deepcopy(config))


# --precision -> model.dtype: one rule for every launcher (train.config).
parse_precision = precision_dtype


@dataclasses.dataclass
class Prepared:
  """A table run after its pre-flight: the table (selected rows), seeds, datasets (with the
  data roots and precision applied), the folder of each, and the pre-flight's report."""
  table: tables_lib.Table
  scale: str
  seeds: list[int]
  datasets: tuple
  roots: list
  report: Any


def prepare(table: str, workdir, *, scale: str = "smoke", seeds: str | list = "0,1,2",
            rows: Iterable[str] | None = None, config: ml_collections.ConfigDict | None = None,
            data_roots: Mapping[str, str] | str | None = None, dtype: str | None = None,
            allow_cpu: bool = False, dry_run: bool = False,
            student_epochs: int | str | None = None,
            datasets: Iterable[str] | None = None) -> Prepared:
  """Every check before training (`preflight.run_preflight`; a PreflightError lists every
  problem). data_roots: {data name: folder} or the --data_root text; dtype: every run's
  model.dtype (None: as the table sets it). dry_run: the step costs are computed and the
  backend is not checked (nothing will train). student_epochs: the students' epochs (scale
  'full' only; None: the table's default). datasets: the dataset keys to run (None: all)."""
  from mdsnn_jax.train import preflight
  if config is not None:
    scale = CONFIG_SCALE
  t, seed_list = check_inputs(table, scale, ",".join(map(str, seeds))
                              if isinstance(seeds, (list, tuple)) else seeds, rows)
  roots = (preflight.parse_data_roots(data_roots) if isinstance(data_roots, str)
           else dict(data_roots or {}))
  if dtype is not None and dtype not in PRECISIONS.values():
    raise ValueError(f"unknown model dtype {dtype!r}; allowed: {list(PRECISIONS.values())}")
  workdir = pathlib.Path(workdir)
  epochs = tables_lib.check_student_epochs(student_epochs, scale)
  keys = [k for k in (datasets or []) if k]
  if config is not None:
    if keys:
      raise ValueError(f"--datasets={','.join(keys)} was given with --config; a table on your "
                       "config runs on its one dataset")
    datasets = (config_dataset(config),)
    folders = [workdir]
  else:
    datasets = tables_lib.select_datasets(t.datasets(scale), keys)
    folders = [workdir / t.name / ds.key for ds in datasets]
  datasets = tuple(tables_lib.with_settings(ds, roots=roots, dtype=dtype, student_epochs=epochs)
                   for ds in datasets)
  report = preflight.run_preflight(t, datasets, scale=scale, workdir=workdir, seeds=seed_list,
                                   roots=roots, allow_cpu=allow_cpu,
                                   check_backend_now=not dry_run, lower=dry_run)
  return Prepared(t, scale, seed_list, datasets, folders, report)


def dry_run(table: str, workdir, *, devices: int = 8, **kwargs) -> str:
  """The pre-flight, then what the table would train and cost (`preflight.describe_report`);
  trains nothing and creates nothing."""
  from mdsnn_jax.train import preflight
  prepared = prepare(table, workdir, dry_run=True, **kwargs)
  lines = [preflight.describe_report(prepared.report, devices)]
  labels = {r.key: r.label for r in prepared.table.rows}
  for ds in prepared.datasets:  # what each run will train, as the table file will state it
    lines += ["", f"{ds.key}:"] + tables_lib.recipe_lines(
        tables_lib.dataset_recipe(prepared.table, ds), labels)
  return "\n".join(lines)


def run_table(table: str, workdir, *, scale: str = "smoke", seeds: str | list = "0,1,2",
              overwrite: bool = False, command: str | None = None,
              rows: Iterable[str] | None = None, config: ml_collections.ConfigDict | None = None,
              out: str | None = None, data_roots: Mapping[str, str] | str | None = None,
              dtype: str | None = None, allow_cpu: bool = False,
              compile_cache: bool = False, student_epochs: int | str | None = None,
              datasets: Iterable[str] | None = None) -> dict:
  """Runs (or reads back) every row of `table` at `scale` and writes the table files
  <workdir>/<out or table>.{md,csv,json,png}.

  rows: the row keys to run (with the rows they need); None: the table's default rows.
  config: run the rows on this training config instead of the scale's datasets (scale
  'config', >= 1 seed); its runs then live in <workdir> itself, not <workdir>/<table>/<dataset>
  (the layout of `launch/md_table.py` and `md_ablation.py`).
  data_roots, dtype: as `prepare`; allow_cpu: train an accelerator scale on a CPU anyway;
  compile_cache: keep compiled programs in <workdir>/.jax_cache (set after the pre-flight,
  which creates nothing)."""
  t0 = time.time()
  prepared = prepare(table, workdir, scale=scale, seeds=seeds, rows=rows, config=config,
                     data_roots=data_roots, dtype=dtype, allow_cpu=allow_cpu,
                     student_epochs=student_epochs, datasets=datasets)
  t, seed_list, scale = prepared.table, prepared.seeds, prepared.scale
  datasets, roots = prepared.datasets, prepared.roots
  workdir = pathlib.Path(workdir)
  if compile_cache:
    use_compile_cache(workdir)
  plans = [tables_lib.plan(t, ds) for ds in datasets]
  results = [run_dataset(t, ds, root, seed_list, overwrite=overwrite, plan=plan)
             for ds, root, plan in zip(datasets, roots, plans)]
  for res, ds, plan in zip(results, datasets, plans):  # each run's recipe, from its config
    res["recipe"] = tables_lib.dataset_recipe(t, ds, plan)
  result = dict(table=t.name, title=t.title, scale=scale, seeds=seed_list, baseline=t.baseline,
                paper=list(t.paper), datasets=results, unit="percent",
                shared_teacher=t.shared_teacher,
                fp_weight_bits_main=FP_BITS_MAIN, fp_weight_bits_shown=list(FP_BITS_SHOWN),
                memory_fp_bits=MEMORY_FP_BITS, bits_note=report_lib.BITS_NOTE,
                wall_seconds=time.time() - t0, provenance=provenance.record(command),
                basename=out or t.name, model_dtype=dtype or "as each config sets it")
  if scale == "full":  # the students' training length: the table's default or --student_epochs
    result["student_epochs"] = dict(
        given=tables_lib.check_student_epochs(student_epochs, scale), note=t.epochs_note,
        per_dataset={ds.key: _student_epochs(ds, plan) for ds, plan in zip(datasets, plans)})
  write_table(result, workdir, result["basename"])
  return result


def _student_epochs(ds: tables_lib.Dataset, plan: tuple) -> float | None:
  """The students' epochs on `ds` (from the first student's config), or None."""
  students = [c for k, c in plan[0].items() if not k.startswith("teacher")]
  if not students or not ds.steps_per_epoch:
    return None
  e = int(students[0].train.steps) / ds.steps_per_epoch
  return int(e) if e == int(e) else round(e, 2)


# ------------------------------------------------------------------------------ output
def _f(x, digits=2) -> str:
  if x is None:
    return "—"
  return f"{x:.{digits}f}"


def _acc(entry) -> str:
  return f"{entry['accuracy_mean']:.2f} ± {entry['accuracy_std']:.2f}"


TEST_FIELDS = ("t", "df", "p_t_one_sided", "p_t_holm", "p_wilcoxon_one_sided", "p_wilcoxon_holm")
TESTS_NOTE = ("p: one-sided paired t-test of Δ > 0 over the seeds, raw and Holm-adjusted across "
              "the tested rows of the dataset (every student paired against a student row; Δ vs "
              "the FP teacher and PTQ points are not tested); read Δ > 0 as shown only where the "
              "adjusted p < 0.05.")


def add_delta_tests(table_name: str, rows: list[dict]) -> list[dict]:
  """Adds 'tests' (`experiments.one_sided_tests` of the paired Δ, Holm-adjusted across the
  family) to each row's 'delta_vs_baseline', in place. The family is one dataset of one
  table: every student row paired against another student row over >= 2 seeds."""
  kinds = {r.key: r.kind for r in tables_lib.get_table(table_name).rows}
  family = {e["key"]: experiments.one_sided_tests(e["delta_vs_baseline"]["delta"])
            for e in rows if e["available"] and e.get("delta_vs_baseline")
            and kinds.get(e["key"]) == "student" and kinds.get(e.get("baseline")) == "student"
            and e["delta_vs_baseline"]["n"] >= 2}
  experiments.add_holm(family)
  for e in rows:
    if e["key"] in family:
      e["delta_vs_baseline"]["tests"] = {k: family[e["key"]][k] for k in TEST_FIELDS}
  return rows


def _delta(entry) -> str:
  d = entry.get("delta_vs_baseline")
  if d is None:
    return "—"
  tests = d.get("tests")
  p = (f"; p = {tests['p_t_one_sided']:.3f}, Holm {tests['p_t_holm']:.3f}" if tests else "")
  return f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['positive']}/{d['n']} > 0{p})"


def _pm(entry, col, digits) -> str:
  if col not in entry:
    return "—"
  return f"{entry[col]:.{digits}f} ± {entry.get(col + '_std', 0.0):.{digits}f}"


def csv_rows(result: dict) -> list[dict]:
  """One flat dict per (dataset, row): what the .csv holds."""
  out = []
  for ds in result["datasets"]:
    for e in ds["rows"]:
      row = {"dataset": ds["key"], "row": e["key"], "label": e["label"],
             "available": e["available"], "quantization": e.get("quantization", "")}
      if e["available"]:
        row.update(accuracy_mean=e["accuracy_mean"], accuracy_std=e["accuracy_std"],
                   accuracy_per_seed=" ".join(f"{a:.4f}" for a in e["accuracy"]))
        d = e.get("delta_vs_baseline")
        row.update(delta_mean=d["mean"] if d else "", delta_std=d["std"] if d else "",
                   delta_positive=d["positive"] if d else "")
        tests = (d or {}).get("tests") or {}
        row.update(p_t_one_sided=tests.get("p_t_one_sided", ""), p_t_holm=tests.get("p_t_holm", ""))
        for k in ("emd_to_fp", "emd_to_fp_std", "dead_fraction", "dead_fraction_std",
                  "mean_rate", "mean_rate_std"):
          if k in e:
            row[k] = e[k]
        for layer, v in e.get("layer_emd", {}).items():
          row[f"emd_{layer}"] = v
        if "saliency" in e:
          row.update(saliency_spearman=e["saliency"]["spearman"], saliency_iou=e["saliency"]["iou"],
                     saliency_k=e["saliency"]["k"], saliency_examples=e["saliency"]["examples"])
        for mode, h in e.get("hardware", {}).items():
          for k, v in h.items():
            row[f"{mode}_{k}"] = v
        for fpb, by_mode in e.get("gains", {}).items():
          for mode, g in by_mode.items():
            for k in GAIN_FIELDS:
              row[f"{mode}_{k}_vs_{fpb}"] = g[k]
        if "flops" in e:
          row.update(flops_dense=e["flops"]["dense"], flops_spent=e["flops"]["active"] +
                     e["flops"]["gate"], flops_reduction=e["flops"]["reduction"],
                     flops_factor=e["flops"]["factor"])
        if "memory" in e:
          for k in ("weight_mb", "membrane_mb", "weight_reduction", "membrane_reduction",
                    "total_reduction"):
            row[k] = e["memory"].get(k)
      else:
        row["note"] = e["note"]
      out.append(row)
  return out


def render_csv(result: dict) -> str:
  rows = csv_rows(result)
  fields = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow(r)
  return buf.getvalue()


def _not_run(entry, columns: int) -> str:
  """A table line for a row that did not run: its label, the reason, empty cells."""
  return f"| {entry['label']} | not run: {entry['note']} |" + " |" * (columns - 2)


def main_table_lines(result: dict, ds: dict) -> list[str]:
  """The headline table of one dataset of a table (the README shows exactly these lines)."""
  rows = ds["rows"]
  table = result["table"]
  if table == "md_snn":
    lines = ["| row | accuracy (%) | Δ vs QAT, no KD (pp) | pooled firing EMD to FP | bits W/U "
             "| EDAP ×, dense | TOPS/W ×, dense | TOPS/mm² ×, dense | EDAP ×, event "
             "| TOPS/W ×, event | TOPS/mm² ×, event |", "|" + "---|" * 11]
    for e in rows:
      if not e["available"]:
        lines.append(_not_run(e, 11))
        continue
      g = e["gains"][f"fp{FP_BITS_MAIN}"]
      lines.append(
          f"| {e['label']} | {_acc(e)} | {_delta(e)} | {e['emd_to_fp']:.4f} | "
          f"{e['weight_bits']:.0f}/{e['membrane_bits']:.0f} | "
          + " | ".join(f"{g[m][k]:.2f}" for m in ("dense", "event") for k in GAIN_FIELDS) + " |")
    return lines
  if table in SHARED_TEACHER_TABLES:
    fp = next((e for e in rows if e["available"] and e["key"] == "fp"), None)
    lines = ["| row | test accuracy (%): mean ± std (per seed) | gap to FP (pp) | Δ vs its "
             "no-KD row, paired by seed (pp) | pooled firing EMD to FP |", "|" + "---|" * 5]
    for e in rows:
      if not e["available"]:
        lines.append(_not_run(e, 5))
        continue
      seeds = ", ".join(f"{a:.2f}" for a in e["accuracy"])
      gap = "—" if fp is None else f"{fp['accuracy_mean'] - e['accuracy_mean']:.2f}"
      base = e.get("baseline")
      delta = _delta(e) + (f" vs `{base}`" if e.get("delta_vs_baseline") and base != "none" else "")
      lines.append(f"| {e['label']} | {_acc(e)} ({seeds}) | {gap} | {delta} | "
                   f"{_pm(e, 'emd_to_fp', 4)} |")
    return lines
  if table == "emd":
    lines = ["| row | accuracy (%) | Δ vs FP (pp) | pooled firing EMD to FP | dead fraction "
             "| mean rate |", "|" + "---|" * 6]
    for e in rows:
      lines.append(f"| {e['label']} | {_acc(e)} | {_delta(e)} | {_pm(e, 'emd_to_fp', 4)} | "
                   f"{_pm(e, 'dead_fraction', 3)} | {_pm(e, 'mean_rate', 4)} |")
    return lines + ["", f"**\"Uniform drifts, LQ-Net preserves\" (pooled EMD to FP, mean ± std "
                        f"over {len(result['seeds'])} seed(s)): {ds['verdict']['status']}.**"]
  if table == "feature_kd":
    lines = ["| row | accuracy (%) | Δ vs no KD at the same T (pp) | saliency Spearman ρ vs "
             f"teacher | saliency top-{SALIENCY_K:g} % IoU vs teacher |", "|" + "---|" * 5]
    for e in rows:
      sa = e.get("saliency")
      lines.append(f"| {e['label']} | {_acc(e)} | {_delta(e)} | "
                   f"{_f(sa['spearman'], 3) if sa else '—'} | {_f(sa['iou'], 3) if sa else '—'} |")
    return lines
  lines = ["| row | accuracy (%) | Δ vs FP (pp) | FLOPs reduction (measured) | weight MB | "
           "membrane MB | weight ×↓ | membrane ×↓ | total ×↓ |", "|" + "---|" * 9]
  for e in rows:
    if not e["available"]:
      lines.append(_not_run(e, 9))
      continue
    f, mem = e["flops"], e["memory"]
    lines.append(f"| {e['label']} | {_acc(e)} | {_delta(e)} | {100 * f['reduction']:.1f} % "
                 f"({f['factor']:.2f}×) | {mem['weight_mb']:.4g} | {mem['membrane_mb']:.4g} | "
                 f"{mem['weight_reduction']:.2f} | {mem['membrane_reduction']:.2f} | "
                 f"{mem['total_reduction']:.2f} |")
  return lines


def _extra_lines(result: dict, ds: dict) -> list[str]:
  """What the full .md adds below a dataset's headline table."""
  rows = ds["rows"]
  avail = [e for e in rows if e["available"]]
  table = result["table"]
  if table == "md_snn":
    lines = [f"Gains are over the FP teacher charged at {FP_BITS_MAIN}-bit weights and "
             f"{report_lib.FP_MEMBRANE_BITS}-bit membranes (EDAP ×: FP / ours, lower is better "
             "for EDAP so > 1 is a gain; TOPS ×: ours / FP). The paper does not state its FP "
             "weight width; the gains at 8, 16 and 32 bits:", "",
             "| row | mode | " + " | ".join(f"{k} vs FP{b}" for b in FP_BITS_SHOWN
                                          for k in ("EDAP ×", "TOPS/W ×", "TOPS/mm² ×")) + " |",
             "|" + "---|" * (2 + 3 * len(FP_BITS_SHOWN))]
    for e in avail:
      for mode in ("dense", "event"):
        lines.append(f"| {e['label']} | {mode} | " + " | ".join(
            f"{e['gains'][f'fp{b}'][mode][k]:.2f}" for b in FP_BITS_SHOWN for k in GAIN_FIELDS)
            + " |")
    lines += ["", "Crossbar figures (mean over seeds; dense is seed-independent):", "",
              "| row | mode | energy (µJ) | latency (ms) | area (mm²) | EDAP (J·s·mm²) | TOPS/W "
              "| TOPS/mm² |", "|" + "---|" * 8]
    for e in avail:
      for mode in ("dense", "event"):
        h = e["hardware"][mode]
        lines.append(f"| {e['label']} | {mode} | {h['energy_uj']:.4g} | {h['latency_ms']:.4g} | "
                     f"{h['area_mm2']:.4g} | {h['edap_js_mm2']:.4g} | {h['tops_per_w']:.4g} | "
                     f"{h['tops_per_mm2']:.4g} |")
    return lines + ["", result["bits_note"]]
  if table in SHARED_TEACHER_TABLES:
    return ["One FP teacher, trained once with the config's seed, for every row and seed: every "
            "student starts from its weights and distils it, so a row's seeds differ only in the "
            "student's data order and initialisation of what the teacher does not give. Δ: the "
            "row minus the no-KD row of the same setting (`none`, or the named one), paired by "
            "seed. PTQ: the teacher's weights quantized as its source row's student, before any "
            "step. EMD: 1-D Wasserstein-1 distance between the teacher's and the row's per-neuron "
            "firing rates on the test images, pooled over the spiking layers."]
  if table == "emd":
    return [f"- {l}" for l in ds["verdict"]["lines"]] + [
        "", "EMD: 1-D Wasserstein-1 distance between the FP teacher's and the row's per-neuron "
        "firing rates on the test images of the dataset line (pooled: all spiking layers in one "
        "distribution; per layer in the figure), each student against the teacher of its own "
        "seed, whose weights it started from. Dead fraction: neurons that never fired on those "
        "images. ± is the sample std over seeds."]
  if table == "feature_kd":
    first = next((e["saliency"] for e in rows if e.get("saliency")), None)
    return ["Students are full precision, trained from scratch, distilled from the FP teacher of "
            "their seed (T = 2 students from the T = 4 teacher). Saliency consistency "
            "**[reconstruction]** (`mdsnn_jax.saliency`): input-gradient saliency of the "
            "predicted class (|∂Σ_t z_c/∂x|, max over channels) of student and teacher on the "
            f"first {int(first['examples']) if first else 0} test images; mean over images of "
            "the Spearman rank correlation, and of the IoU of their top-k % pixels; mean over "
            "seeds."]
  return ["FLOPs: per sample, counted from the membrane-prior and learned-gate masks each model "
          "produced on every test example (1 MAC = 1 FLOP, 3 per LIF update, the prior's and the "
          "gate's own cost charged); layers whose input or output passes a residual sum, a "
          "flatten or the static stem's broadcast are counted dense. Memory: weights "
          f"k²·C_in·C_out per conv / dense layer × its stored bits (FP: {MEMORY_FP_BITS}-bit "
          f"float), membranes one value per neuron × stored bits (FP {MEMORY_FP_BITS}, ternary "
          "2 = ⌈log2 3⌉), in MB = 10⁶ bytes; ×↓ = FP / row."]


def render_markdown(result: dict) -> str:
  prov = result["provenance"]
  lines = [f"# {result['title']}", "",
           f"Table `{result['table']}`, scale `{result['scale']}`, seeds {result['seeds']}. "
           f"Accuracy: test accuracy in percent, mean ± sample std over the seeds; Δ: paired per "
           f"seed against row `{result['baseline']}` (mean ± std, seeds with Δ > 0)."
           + ("" if not any((e.get("delta_vs_baseline") or {}).get("tests")
                            for ds in result["datasets"] for e in ds["rows"])
              else f" {TESTS_NOTE}"), "",
           "**The papers' reported figures, beside ours:**", ""]
  lines += [f"- {p}" for p in result["paper"]] + [""]
  se = result.get("student_epochs")
  if se:
    per = ", ".join(f"{k}: {v}" for k, v in se["per_dataset"].items() if v is not None)
    lines += [f"**Students' epochs** ({per}): " + (
        f"set by --student_epochs={se['given']}; the table's default: {se['note']}"
        if se.get("given") else se["note"]) + " (`--student_epochs=N` changes it at full scale.)",
        ""]
  for ds in result["datasets"]:
    lines += [f"## {ds['key']}", "", ds["description"] + ".", ""]
    avail = [e for e in ds["rows"] if e["available"]]
    if result["table"] != "feature_kd":  # (feature_kd's rows are all float)
      lines += ["Quantization of each row (weights W, membranes U; levels and stored bits):", ""]
      lines += [f"- {e['label']}: {e['quantization']}" for e in avail if "quantization" in e]
      lines += [""]
    if ds.get("recipe"):
      lines += tables_lib.recipe_lines(ds["recipe"], {e["key"]: e["label"] for e in ds["rows"]})
      lines += [""]
    lines += main_table_lines(result, ds) + [""]
    acc = accuracy_lines(result, ds)
    lines += (acc + [""] if acc else []) + _extra_lines(result, ds) + [""]
  lines += ["## Provenance", "",
            f"Command: `{prov.get('command')}`", "",
            f"Machine: {machine_line(result)}.", "",
            f"Files: `{result.get('basename', result['table'])}.json` (every seed's numbers), `.csv`, `.png`.", ""]
  return "\n".join(lines)


def machine_line(result: dict) -> str:
  """'<date · machine · load · commit>; training <s> s (...), this command <s> s'. Training:
  the sum of every run's own wall time (`summary.json`), which a later command that reads
  the runs back does not change."""
  training = sum(ds.get("training_seconds", 0.0) for ds in result["datasets"])
  return (f"{provenance.describe(result['provenance'])}; training {training:.0f} s (the sum of "
          f"the runs' wall times); wall time of this command {result['wall_seconds']:.0f} s")


DATA_ROOT_HELP = ("NAME=PATH[,NAME=PATH...]: read the config's dataset NAME from PATH instead "
                  "of its config.data.root.")


def run_on_config(table: str, workdir, config: ml_collections.ConfigDict, *,
                  rows: Iterable[str] | None, seeds: str, overwrite: bool, out: str,
                  data_roots: str | dict[str, str] | None = None) -> str:
  """`launch/md_table.py` / `md_ablation.py`: checks the inputs, keeps compiled programs in
  <workdir>/.jax_cache, runs `table`'s rows on `config` (runs in <workdir> itself; its data
  from data_roots, 'NAME=PATH,...' or a dict, when it names the config's dataset) and returns
  the summary (`render_summary`) and where the full table files are. A failed pre-flight
  raises `preflight.PreflightError` listing every problem."""
  check_inputs(table, CONFIG_SCALE, seeds, rows)
  result = run_table(table, workdir, config=config, rows=rows, seeds=seeds, overwrite=overwrite,
                     out=out, data_roots=data_roots, compile_cache=True)
  return f"{render_summary(result)}\nFull table: {workdir}/{out}.md (.json, .csv, .png)"


def render_summary(result: dict) -> str:
  """A table's headline results for README.md: per dataset its description and headline
  table (`main_table_lines`), then the command and the machine line. README quotes it
  verbatim (a test checks it against results/tables/<table>.json)."""
  lines = []
  for ds in result["datasets"]:
    lines += [f"*{ds['key']}*: {ds['description']}.", ""] + main_table_lines(result, ds) + [""]
    acc = accuracy_lines(result, ds)
    lines += acc + [""] if acc else []
  lines += [f"Command: `{result['provenance'].get('command')}`. Machine: {machine_line(result)}."]
  return "\n".join(lines)


def plot_table(result: dict, path: pathlib.Path) -> None:
  """Accuracy by row with each seed's point (one panel per dataset); md_snn adds the EDAP /
  TOPS/W / TOPS/mm² gains over FP at 16 bits, dense and event."""
  plt = report_lib._pyplot()
  n = len(result["datasets"])
  extra = result["table"] in ("md_snn", "emd")
  fig, axes = plt.subplots(1 + extra, n, figsize=(5.5 * n, 3.8 * (1 + extra)), squeeze=False)
  for j, ds in enumerate(result["datasets"]):
    rows = [e for e in ds["rows"] if e["available"]]
    ax = axes[0, j]
    x = np.arange(len(rows))
    ax.bar(x, [e["accuracy_mean"] for e in rows], 0.6,
           yerr=[e["accuracy_std"] for e in rows], capsize=3, color="#9ab", label="mean ± std")
    for i, e in enumerate(rows):
      ax.scatter([i] * len(e["accuracy"]), e["accuracy"], s=12, color="k", zorder=3)
    ax.set_xticks(x, [e["key"] for e in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['table']} · {ds['key']} ({result['scale']})", fontsize=9)
    if result["table"] == "emd":
      _plot_layer_emd(axes[1, j], [e for e in rows if e["key"] != "fp"])
    elif extra:
      ax = axes[1, j]
      width = 0.13
      q = [e for e in rows if e["key"] != "fp"]
      for k, (mode, field) in enumerate((m, f) for m in ("dense", "event") for f in GAIN_FIELDS):
        ax.bar(np.arange(len(q)) + (k - 2.5) * width,
               [e["gains"][f"fp{FP_BITS_MAIN}"][mode][field] for e in q], width,
               label=f"{field} ({mode})")
      ax.axhline(1.0, color="k", linewidth=0.8)
      ax.set_xticks(np.arange(len(q)), [e["key"] for e in q], rotation=30, ha="right", fontsize=8)
      ax.set_ylabel(f"gain over FP ({FP_BITS_MAIN}-bit W), ×")
      ax.legend(fontsize=6)
  fig.tight_layout()
  report_lib.save_figure_atomic(fig, path)
  plt.close(fig)


def _plot_layer_emd(ax, rows: list[dict]) -> None:
  """EMD to FP per spiking layer, one line per quantizer row: the seed mean, and the seed
  spread (min–max) shaded."""
  if not rows:
    return
  layers = list(rows[0]["layer_emd"])
  x = np.arange(len(layers))
  for e in rows:
    per = np.array([[m["layer_emd"][l] for l in layers] for m in e["per_seed"]])
    line, = ax.plot(x, per.mean(0), marker="o", markersize=3, linewidth=1,
                    linestyle="-" if e["key"].startswith(("uniform", "lqnet")) else ":",
                    label=e["key"])
    ax.fill_between(x, per.min(0), per.max(0), color=line.get_color(), alpha=0.15)
  ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=7)
  ax.set_ylabel("firing EMD to FP (seed mean, min–max shaded)")
  ax.legend(fontsize=6, ncol=2)


def rerender(path: pathlib.Path | str, record: dict) -> dict:
  """Re-writes a table's files (.json, .csv, .md, .png beside `path`, a table .json) from its
  stored per-seed numbers, with what the current renderer derives from them (the paired
  tests of `add_delta_tests`). Nothing is trained or measured: the numbers and the run's
  provenance are unchanged; `rendered` keeps the command, commit and date of `record` (a
  `provenance.record` taken before any file was rewritten)."""
  path = pathlib.Path(path)
  result = json.loads(path.read_text())
  if "datasets" not in result or "table" not in result:
    raise ValueError(f"{path} is not a table file of launch/reproduce.py (no 'table' / "
                     "'datasets')")
  for ds in result["datasets"]:
    add_delta_tests(result["table"], ds["rows"])
  result["rendered"] = {k: record[k] for k in ("command", "commit", "dirty", "date") if k in record}
  write_table(result, path.parent, path.stem)
  return result


def write_table(result: dict, workdir: pathlib.Path, name: str | None = None) -> None:
  name = name or result["table"]
  provenance.write_json_atomic(workdir / f"{name}.json", report_lib._to_jsonable(result))
  provenance.write_text_atomic(workdir / f"{name}.csv", render_csv(result))
  provenance.write_text_atomic(workdir / f"{name}.md", render_markdown(result))
  plot_table(result, workdir / f"{name}.png")


# ------------------------------------------------------------------------------- --list
def _fmt_s(s: float | None) -> str:
  if s is None:
    return "not estimated"
  return f"~{s / 60:.0f} min" if s < 5400 else f"~{s / 3600:.1f} h"


def describe_tables() -> str:
  lines = []
  for t in tables_lib.TABLES.values():
    per_row = sorted({tables_lib.baseline_of(t, r.key) for r in t.rows if r.kind != "teacher"})
    base = (f"{t.baseline}" if len(per_row) < 2 else
            f"per row: {', '.join(per_row)} (the no-KD row of the row's setting)")
    lines += [f"{t.name}: {t.title}", f"  baseline for Δ: {base}"]
    if t.shared_teacher:
      lines.append("  one FP teacher for every row and seed (trained once, the config's seed)")
    lines.append("  rows:")
    for r in t.rows:
      extra = f" [not run: {r.note}]" if r.kind == "unavailable" else (
          f" [not on event data: {r.event_note}]" if r.event_note else "")
      if t.default_rows is not None and r.key not in t.default_rows:
        extra += " [only with --rows]"
      lines.append(f"    {r.key:14s} {r.label}{extra}")
    for scale in tables_lib.SCALES:
      need = tables_lib.MIN_SEEDS[scale]
      est = None
      if scale in tables_lib.ACCELERATOR_SCALES:
        est = cost_lib.table_estimate(t, scale)
        lo, hi = est.at(1)
        lo8, hi8 = est.at(LIST_DEVICES)
        when = (f"{fmt_range(lo, hi)} on one H100 at {need} seed(s), "
                f"{fmt_range(lo8, hi8)} per device at {LIST_DEVICES}, estimated"
                + (f"; stale for {', '.join(est.missing)}: re-run `{cost_lib.COMMAND}`"
                   if est.missing else ""))
      else:
        when = _fmt_s(tables_lib.ESTIMATES_S[t.name][scale])
      lines.append(f"  --scale={scale} ({when}, seeds >= {need}):")
      if scale == "full" and t.epochs_note:
        lines.append(f"    {t.epochs_note} (--student_epochs=N changes it.)")
      for i, ds in enumerate(t.datasets(scale)):
        ts, ss = tables_lib.training_steps(tables_lib.select_rows(t, None), ds)
        teacher = f"{ts} teacher steps once; per seed:" if t.shared_teacher else \
            f"per seed: {ts} teacher +"
        lines.append(f"    {ds.key}: {ds.description} [{teacher} {ss} student training steps]")
        if est is not None:
          lines += _run_lines(est.datasets[i], need)
    lines.append("")
  lines.append(tables_lib.ESTIMATE_NOTE)
  lines.append(f"Estimates (full, gpu_short): {cost_lib.SOURCE}; low = FLOPs alone, high = the "
               "roofline with XLA's unfused bytes (an upper bound); at N devices: data "
               f"parallel, communication not counted. Stored in "
               f"{cost_lib.ESTIMATES_FILE.relative_to(cost_lib.REPO)} by `{cost_lib.COMMAND}`; "
               "`--dry_run` lowers every step again and opens the data.")
  return "\n".join(lines)


LIST_DEVICES = 8  # the device count --list quotes besides one H100


def fmt_range(lo: float, hi: float) -> str:
  from mdsnn_jax.train import preflight
  return preflight.fmt_range(lo, hi)


def _run_lines(entry, seeds: int) -> list[str]:
  """--list's line per run of an accelerator-scale dataset: steps, epochs, data, time."""
  from mdsnn_jax.train import preflight
  ds, info, runs = entry
  real = preflight.REAL_SPLITS.get(info.name)
  from mdsnn_jax.train.config import nominal_train_count
  lines = [f"      data: --data_root={info.name}=PATH"
           + (f" ({real[0]:,} train / {real[1]:,} test)" if real else
              f" (the whole dataset: {preflight.NCALTECH101_RECORDINGS:,} recordings)"
              if info.name == "ncaltech101" else
              f" (the whole dataset: {preflight.CIFAR10DVS_RECORDINGS:,} recordings)"
              if info.name == "cifar10dvs" else "")]
  for run, c in runs:
    n = real[0] if real else nominal_train_count(run.config.data)
    epochs = (f"{'' if real else '≈ '}{run.steps * run.batch / n:.1f} epochs" if n else
              "epochs counted by --dry_run")
    k = cost_lib.instances(run, seeds)
    head = f"      {run.key:14s} {run.stage:3s} {run.steps} steps ({epochs}) at batch {run.batch} × {k}"
    if c is None:
      lines.append(f"{head}: not estimated (stale)")
      continue
    lo, hi = cost_lib.run_seconds(c, run.steps)
    lo8, hi8 = cost_lib.run_seconds(c, run.steps, LIST_DEVICES)
    lines.append(f"{head}: {c.flops:.3g} FLOPs, {c.bytes:.3g} B a step; {fmt_range(lo, hi)} "
                 f"a run on one H100, {fmt_range(lo8, hi8)} per device at {LIST_DEVICES}")
  return lines
