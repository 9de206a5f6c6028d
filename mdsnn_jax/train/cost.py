"""What a table's runs cost on one H100, from XLA's own count of each run's train step.

Per run (a teacher, or a student row as `experiments.run_student` makes it), the real train
step (`steps.train_step`: forward, backward, optimizer; the MD step's teacher forward too) is
lowered with abstract inputs at the run's global batch (`jax.jit(...).lower`: nothing is
compiled or executed), and `Lowered.cost_analysis()` gives its FLOPs and bytes accessed.
A step's time on one H100 is the roofline

    t_step = max(FLOPs / (PEAK_FLOPS[dtype] · EFFICIENCY), bytes / (HBM_BYTES_PER_S · EFFICIENCY))

and a run costs steps · t_step + RUN_OVERHEAD_S; at N devices (data parallel) the steps
split N ways and the overhead does not. XLA counts the bytes of the lowered, unfused program
(every op reads its inputs from and writes its output to memory), which the GPU compiler's
fusion cuts: the bytes term is an upper bound, so `low` (FLOPs alone, perfect fusion) and
`high` (the roofline above) bracket the estimate, and the hours quoted are `high`.

Estimates are cached in ESTIMATES_FILE (made by `python -m mdsnn_jax.train.cost`), keyed by
a fingerprint of everything the step depends on, so `--list` prints them without lowering
anything and marks a run whose config changed since as stale.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mdsnn_jax import provenance
from mdsnn_jax.train import tables as tables_lib

# NVIDIA H100 SXM5 (H100 Tensor Core GPU datasheet, 2023): dense tensor-core peaks (without
# sparsity) of 989.4 TFLOPS in bfloat16 and 494.7 TFLOPS in TF32, which XLA:GPU uses for
# float32 convolutions and matmuls at jax's default precision; HBM3 3.35 TB/s.
PEAK_FLOPS = {"bfloat16": 989.4e12, "float32": 494.7e12}
HBM_BYTES_PER_S = 3.35e12
# The share of both peaks a step reaches: small-batch SNN convolutions (T·B images of
# 32×32 with 64–512 channels) and the LIF recurrences between them are far from the
# datasheet's large-GEMM figures; half is an assumption, not a measurement.
EFFICIENCY = 0.5
# Per run, besides its steps: compiling the train and eval steps, the final evaluation and
# the table's own measuring pass, and loading the data (assumed, not measured).
RUN_OVERHEAD_S = 20.0
REPO = pathlib.Path(__file__).resolve().parents[2]
ESTIMATES_FILE = REPO / "results" / "cost" / "estimates.json"
COMMAND = "python -m mdsnn_jax.train.cost"
ESTIMATED_SCALES = ("smoke", "full", "gpu_short")
SOURCE = ("XLA cost analysis of the lowered (uncompiled) train step at the run's global batch; "
          f"H100 roofline at {EFFICIENCY:.0%} of the datasheet peaks (bf16 989.4 / TF32 494.7 "
          f"TFLOPS dense, HBM3 3.35 TB/s) + {RUN_OVERHEAD_S:.0f} s per run")


# ------------------------------------------------------------------------- the runs
@dataclasses.dataclass
class RunPlan:
  """One run of a table on one dataset: the config it trains with (`stages`, steps and the
  distillation weights as `experiments` sets them), its stage, the teacher's model config
  (md students), and whether it runs once per seed or once for the table."""
  dataset: str
  key: str  # the teacher key ('teacher', 'teacher2t') or the row key
  stage: str
  config: ml_collections.ConfigDict
  teacher_model_cfg: ml_collections.ConfigDict | None
  steps: int
  per_seed: bool

  @property
  def batch(self) -> int:
    return int(self.config.train.global_batch)


def _as_student(base, method: str) -> tuple[str, ml_collections.ConfigDict]:
  """(stage, config) of a student as `experiments.run_student` trains it (the distillation
  terms its method switches on), without the seed and folders, which do not change a step."""
  from mdsnn_jax.train.experiments import METHODS
  stage, terms = METHODS[method]
  cfg = copy.deepcopy(base)
  with cfg.unlocked():
    cfg.stages = stage
    weights = {"alpha": float(base.distill.alpha), "beta": float(base.distill.beta),
               "gamma": float(base.distill.gamma) or 1.0}
    for term, weight in weights.items():
      cfg.distill[term] = weight if term in terms else 0.0
  return stage, cfg


def table_runs(table: tables_lib.Table, dataset_key: str, configs: dict) -> list[RunPlan]:
  """The runs `reproduce.run_dataset` trains for `table` on one dataset, from
  `tables.plan(...)[0]` (its configs)."""
  from mdsnn_jax.train.stages import stage_model_config
  runs = []
  for key, cfg in configs.items():
    if key in tables_lib.TEACHERS or key.startswith("teacher"):
      c = copy.deepcopy(cfg)
      with c.unlocked():
        c.stages = "fp"
        c.train.steps = int(cfg.get("teacher_steps", cfg.train.steps))
      runs.append(RunPlan(dataset_key, key, "fp", c, None, int(c.train.steps),
                          not table.shared_teacher))
  by_key = {r.key: r for r in table.rows}
  for key, cfg in configs.items():
    row = by_key.get(key)
    if row is None or row.kind != "student":
      continue
    stage, c = _as_student(cfg, row.method)
    teacher = (stage_model_config(configs[row.teacher], "fp") if stage == "md" else None)
    runs.append(RunPlan(dataset_key, key, stage, c, teacher, int(c.train.steps), True))
  return runs


# ---------------------------------------------------------------------- the step
def step_program(run: RunPlan, info, batch: int | None = None):
  """(fn, abstract args) of `run`'s train step at `batch` (default: its global batch), the
  function `steps.make_train_step` jits, on inputs of the shapes `info` gives; builds every
  model and quantizer (shapes only, no compute)."""
  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train import loop, stages as stages_lib, steps as steps_lib
  from mdsnn_jax.train.state import TrainState, make_optimizer
  cfg = run.config
  model = nn_lib.create_model(stages_lib.stage_model_config(cfg, run.stage), info.num_classes)
  timesteps = int(cfg.model.timesteps)
  sample = stages_lib.sample_input(info, timesteps)
  b = int(cfg.train.global_batch) if batch is None else int(batch)
  data = {"image": jax.ShapeDtypeStruct((b,) + sample.shape[1:], jnp.float32),
          "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  tx = make_optimizer(cfg.optim, int(cfg.train.steps))
  variables = stages_lib.abstract_variables(model, sample)
  teacher_model = t_vars = projectors = None
  distill_cfg = None
  if run.stage == "md":
    distill_cfg = cfg.distill
    teacher_model = nn_lib.create_model(run.teacher_model_cfg, info.num_classes)
    t_vars = stages_lib.abstract_variables(teacher_model, sample)
    if float(cfg.distill.gamma) > 0:
      projectors = jax.eval_shape(lambda v, tv: loop.init_feature_projectors(
          cfg, jax.random.PRNGKey(0), model, v, teacher_model, tv, sample), variables, t_vars)
  state = jax.eval_shape(lambda v, p: TrainState.create(variables=v, tx=tx, distill_params=p),
                         variables, projectors)

  def fn(state, batch, teacher_variables):
    return steps_lib.train_step(state, batch, teacher_variables, model=model,
                                loss_cfg=cfg.loss, distill_cfg=distill_cfg,
                                teacher_model=teacher_model, timesteps=timesteps)

  return fn, (state, data, t_vars)


def state_bytes(tree) -> int:
  import numpy as np
  return int(sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree) if hasattr(x, "shape")))


def fingerprint(run: RunPlan, info) -> str:
  """Everything a run's step cost depends on: stage, model (and teacher), loss, optimizer,
  distillation, batch and input shape."""
  from mdsnn_jax.train.stages import stage_model_config
  c = run.config
  parts = {"stage": run.stage, "model": stage_model_config(c, run.stage).to_dict(),
           "loss": c.loss.to_dict(), "optim": c.optim.to_dict(), "batch": run.batch,
           "input": [list(info.image_shape), info.timesteps, info.num_classes, info.is_event],
           "distill": c.distill.to_dict() if run.stage == "md" else None,
           "teacher": run.teacher_model_cfg.to_dict() if run.teacher_model_cfg else None}
  text = json.dumps(_switched_on(parts), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _switched_on(tree):
  """`tree` without its None and False leaves: a config field added later, off by default,
  leaves every stored fingerprint as it was (as `stages.diff_fields` treats None)."""
  if isinstance(tree, dict):
    return {k: _switched_on(v) for k, v in tree.items() if v is not None and v is not False}
  return tree


@dataclasses.dataclass(frozen=True)
class StepCost:
  """One train step's FLOPs and bytes accessed (XLA's count), in the run's compute dtype."""
  flops: float
  bytes: float
  dtype: str
  source: str = "xla-lowered"

  def seconds(self, devices: int = 1) -> tuple[float, float]:
    """(low, high) seconds per step on `devices` H100s: FLOPs alone, and the roofline."""
    low = self.flops / (PEAK_FLOPS[self.dtype] * EFFICIENCY)
    high = max(low, self.bytes / (HBM_BYTES_PER_S * EFFICIENCY))
    return low / devices, high / devices


def lowered_cost(fn, args, dtype: str) -> StepCost:
  """XLA's cost analysis of `fn` lowered on `args` (abstract; nothing compiled or run)."""
  analysis = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  return StepCost(float(analysis["flops"]), float(analysis["bytes accessed"]), dtype)


def step_cost(run: RunPlan, info) -> StepCost:
  """XLA's cost analysis of `run`'s lowered train step (abstract inputs; not compiled)."""
  fn, args = step_program(run, info)
  return lowered_cost(fn, args, str(run.config.model.get("dtype", "float32")))


def run_seconds(cost: StepCost, steps: int, devices: int = 1) -> tuple[float, float]:
  low, high = cost.seconds(devices)
  return steps * low + RUN_OVERHEAD_S, steps * high + RUN_OVERHEAD_S


def instances(run: RunPlan, seeds: int) -> int:
  return seeds if run.per_seed else 1


# ------------------------------------------------------------------ the cached file
@functools.lru_cache(maxsize=1)
def _stored() -> dict:
  if not ESTIMATES_FILE.is_file():
    return {}
  return json.loads(ESTIMATES_FILE.read_text())


def stored_table_seconds(table: str, scale: str, seeds: int | None = None,
                         dataset: str | None = None) -> float | None:
  """The table's total (high) seconds at `seeds` (default: its scale's minimum) on one H100,
  as ESTIMATES_FILE holds it (no check against the current configs; `describe_runs` does);
  `dataset`: that dataset's runs only (None when the file has no entry for it)."""
  # gpu_short's runs are full's at `tables.gpu_short_steps`: read from full's entries, so
  # that describing gpu_short never builds gpu_short's own datasets (whose text holds this).
  entry = _stored().get("tables", {}).get(table, {}).get(
      "full" if scale == "gpu_short" else scale)
  if entry is None or (dataset is not None and dataset not in entry):
    return None
  seeds = tables_lib.MIN_SEEDS[scale] if seeds is None else seeds
  total = 0.0
  for ds_key, runs in entry.items():
    if dataset is not None and ds_key != dataset:
      continue
    for key, r in runs.items():
      steps = r["steps"]
      if scale == "gpu_short":
        steps = tables_lib.gpu_short_steps(ds_key)[0 if r["stage"] == "fp" else 1]
      total += (seeds if r["per_seed"] else 1) * (steps * r["seconds_high"] + RUN_OVERHEAD_S)
  return total


def nominal(dataset_cfg):
  info = tables_lib.nominal_info(dataset_cfg)
  if info is None:
    from mdsnn_jax import data as data_lib
    info = data_lib.dataset_info(dataset_cfg)
  return info


def plan_runs(table: tables_lib.Table, scale: str) -> list[tuple[tables_lib.Dataset, Any, list[RunPlan]]]:
  """[(dataset, its nominal info, its runs)] of `table` at `scale` (its default rows)."""
  t = tables_lib.select_rows(table, None)
  out = []
  for ds in t.datasets(scale):
    configs, _ = tables_lib.plan(t, ds)
    base = ds.build()
    out.append((ds, nominal(base.data), table_runs(t, ds.key, configs)))
  return out


def stored_run(fp: str) -> dict | None:
  return _stored().get("runs", {}).get(fp)


@dataclasses.dataclass
class TableEstimate:
  """A table's runs at one scale with their stored step costs (None: not in ESTIMATES_FILE
  or made with another config, i.e. stale) and the totals over `seeds`."""
  seeds: int
  datasets: list  # [(Dataset, info, [(RunPlan, StepCost | None)])]
  low_s: float
  high_s: float
  missing: list[str]

  def at(self, devices: int) -> tuple[float, float]:
    lo = hi = 0.0
    for _, _, runs in self.datasets:
      for run, c in runs:
        if c is not None:
          a, b = run_seconds(c, run.steps, devices)
          lo += instances(run, self.seeds) * a
          hi += instances(run, self.seeds) * b
    return lo, hi


def table_estimate(table: tables_lib.Table, scale: str, seeds: int | None = None) -> TableEstimate:
  """The table's cost at `scale` from ESTIMATES_FILE, checked run by run against the
  current configs (by fingerprint): nothing is lowered."""
  seeds = tables_lib.MIN_SEEDS[scale] if seeds is None else seeds
  out, missing = [], []
  for ds, info, runs in plan_runs(table, scale):
    got = []
    for run in runs:
      entry = stored_run(fingerprint(run, info))
      c = None if entry is None else StepCost(entry["flops"], entry["bytes"], entry["dtype"])
      if c is None:
        missing.append(f"{ds.key}/{run.key}")
      got.append((run, c))
    out.append((ds, info, got))
  est = TableEstimate(seeds, out, 0.0, 0.0, missing)
  est.low_s, est.high_s = est.at(1)
  return est


def compute_estimates(scales=ESTIMATED_SCALES, tables=None, log=print,
                      reuse: dict | None = None) -> dict:
  """Every run's step cost of every table at `scales`: the content of ESTIMATES_FILE.
  reuse: {fingerprint: entry} already computed (the same fingerprint is the same step)."""
  runs: dict[str, dict] = dict(reuse or {})
  out_tables: dict[str, dict] = {}
  for name, table in tables_lib.TABLES.items():
    if tables is not None and name not in tables:
      continue
    for scale in scales:
      per_ds = {}
      for ds, info, plan in plan_runs(table, scale):
        entries = {}
        for run in plan:
          fp = fingerprint(run, info)
          if fp not in runs:
            t0 = time.time()
            c = step_cost(run, info)
            runs[fp] = {"flops": c.flops, "bytes": c.bytes, "dtype": c.dtype,
                        "batch": run.batch, "lower_seconds": round(time.time() - t0, 1)}
            log(f"{name} {scale} {ds.key} {run.key}: {c.flops:.3g} FLOPs, {c.bytes:.3g} B per "
                f"step ({time.time() - t0:.0f} s)")
          low, high = StepCost(runs[fp]["flops"], runs[fp]["bytes"], runs[fp]["dtype"]).seconds()
          entries[run.key] = {"fingerprint": fp, "stage": run.stage, "steps": run.steps,
                              "per_seed": run.per_seed, "seconds_low": low, "seconds_high": high}
        per_ds[ds.key] = entries
      out_tables.setdefault(name, {})[scale] = per_ds
  return {"command": COMMAND, "source": SOURCE,
          "constants": {"peak_flops": PEAK_FLOPS, "hbm_bytes_per_s": HBM_BYTES_PER_S,
                        "efficiency": EFFICIENCY, "run_overhead_s": RUN_OVERHEAD_S},
          "runs": runs, "tables": out_tables, "provenance": provenance.record(COMMAND)}


def main(argv: list[str]) -> None:
  """Writes ESTIMATES_FILE (atomically): `python -m mdsnn_jax.train.cost [--out=PATH]
  [--fresh]` (--fresh: lower every step again instead of reusing the file's entries)."""
  out = ESTIMATES_FILE
  for a in argv:
    if a == "--fresh":
      continue
    if a.startswith("--out="):
      out = pathlib.Path(a.split("=", 1)[1])
    else:
      raise SystemExit(f"error: unknown argument {a!r}; allowed: --out=PATH, --fresh")
  # A fingerprint names everything the step depends on: a stored entry is reused as it is.
  reuse = (json.loads(out.read_text()).get("runs", {})
           if out.is_file() and "--fresh" not in argv else {})
  result = compute_estimates(reuse=reuse)
  out.parent.mkdir(parents=True, exist_ok=True)
  provenance.write_json_atomic(out, result)
  print(f"wrote {out}")


if __name__ == "__main__":
  main(sys.argv[1:])
