"""Everything a table run can find wrong before its first step, found in one pass.

    roots = parse_data_roots("cifar10=/data/cifar,ncaltech101=/data/ncal")
    report = run_preflight(table, datasets, scale="full", workdir=..., seeds=[0, 1, 2])

Every dataset of the table is opened and counted (at the accelerator scales, each must come
from --data_root with the real dataset's split sizes), every run's config is built and its
train step traced abstractly (`jax.eval_shape`, or lowered for its cost: nothing runs), the
backend is checked (an accelerator scale on a CPU is refused unless allowed), and the free
disk for every run's checkpoints is checked, without creating anything. All problems found
are raised together as one `PreflightError`, which the launchers (`cli.run`) print as one
`error:` line each (exit 2).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any, Sequence

import jax

from mdsnn_jax import data as data_lib
from mdsnn_jax.data import events as events_lib
from mdsnn_jax.train import cost as cost_lib
from mdsnn_jax.train import tables as tables_lib

# The real datasets' sizes the roots are checked against (`data.registry`): split sizes, and
# recordings for the event sets without an official split.
REAL_SPLITS = data_lib.registry.REAL_SPLITS
NCALTECH101_RECORDINGS = data_lib.registry.NCALTECH101_RECORDINGS
CIFAR10DVS_RECORDINGS = data_lib.registry.CIFAR10DVS_RECORDINGS
ROOT_NAMES = tuple(n for n in data_lib.NAMES if n != "digits")  # digits ships with sklearn


class PreflightError(ValueError):
  """Every problem found before training; str() joins them, `problems` lists them."""

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__("; ".join(self.problems))


# ----------------------------------------------------------------------- data roots
def parse_data_roots(text: str | None) -> dict[str, str]:
  """'NAME=PATH[,NAME=PATH...]' -> {NAME: PATH}; a bad entry is a ValueError naming it and
  what is allowed."""
  if not text:
    return {}
  allowed = (f"allowed: --data_root=NAME=PATH[,NAME=PATH...] with NAME one of "
             f"{list(ROOT_NAMES)} and PATH its folder (or a tfds data_dir for "
             f"{list(data_lib.registry.TFDS_NAMES)})")
  roots: dict[str, str] = {}
  for entry in str(text).split(","):
    entry = entry.strip()
    if not entry:
      continue
    name, eq, path = entry.partition("=")
    name, path = name.strip(), path.strip()
    if not eq or not path:
      raise ValueError(f"--data_root entry {entry!r} is not NAME=PATH; {allowed}")
    if name not in ROOT_NAMES:
      raise ValueError(f"--data_root names unknown dataset {name!r}; {allowed}")
    if name in roots:
      raise ValueError(f"--data_root names {name!r} twice ({roots[name]!r} and {path!r}); "
                       f"{allowed}")
    roots[name] = os.path.expanduser(path)
  if not roots:
    raise ValueError(f"--data_root={text!r} names no dataset; {allowed}")
  return roots


def real_size_problem(data_cfg, info) -> str | None:
  """Why the opened dataset is not the real one (its split sizes), or None."""
  c = data_lib.registry.parse_config(data_cfg)
  where = f"--data_root {c.name}={c.root}"
  if c.train_subset or c.test_subset:
    return None  # a config that asks for a subset counts the subset
  if c.name in REAL_SPLITS:
    want = REAL_SPLITS[c.name]
    got = (info.num_train, info.num_test)
    if got != want:
      return (f"{where} holds {got[0]:,} train / {got[1]:,} test examples, but the real "
              f"{c.name} has {want[0]:,} / {want[1]:,}; point it at the whole dataset")
    return None
  if c.name == "ncaltech101":
    n = sum(len(events_lib.ncaltech101_source(c.root, split, timesteps=c.timesteps or 1,
                                              background=True)) for split in ("train", "test"))
    if n != NCALTECH101_RECORDINGS:
      return (f"{where} holds {n:,} recordings (BACKGROUND_Google included), but the real "
              f"N-Caltech101 has {NCALTECH101_RECORDINGS:,}; point it at the whole dataset")
  if c.name == "cifar10dvs":
    n = info.num_train + info.num_test  # the split divides the recordings, whatever the fraction
    if n != CIFAR10DVS_RECORDINGS:
      return (f"{where} holds {n:,} recordings ({info.num_train:,} train / {info.num_test:,} "
              f"test), but the real CIFAR10-DVS has {CIFAR10DVS_RECORDINGS:,}; point it at the "
              "whole dataset")
  return None


# -------------------------------------------------------------------- the pre-flight
@dataclasses.dataclass
class DatasetCheck:
  key: str
  name: str  # the data config's name
  root: str | None
  info: Any  # DatasetInfo as opened, or the nominal one when the data could not be opened
  opened: bool
  runs: list  # [cost.RunPlan]
  notes: dict  # {row: why it does not run here}
  costs: dict = dataclasses.field(default_factory=dict)  # {run key: cost.StepCost}
  state_bytes: dict = dataclasses.field(default_factory=dict)  # {run key: its train state}


@dataclasses.dataclass
class Report:
  table: str
  scale: str
  seeds: list[int]
  datasets: list[DatasetCheck]
  backend: str
  need_bytes: int
  free_bytes: int | None
  problems: list[str]


def check_backend(scale: str, allow_cpu: bool) -> str | None:
  backend = jax.default_backend()
  if scale in tables_lib.ACCELERATOR_SCALES and backend == "cpu" and not allow_cpu:
    return (f"--scale={scale} trains the papers' models on the real datasets, but jax's "
            f"backend is {backend!r} ({jax.device_count()} device(s)); run it on a GPU or TPU, "
            "or pass --allow_cpu to train on the CPU anyway")
  return None


def _existing_parent(path: pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(os.path.abspath(path))
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def run_preflight(table: tables_lib.Table, datasets: Sequence[tables_lib.Dataset], *,
                  scale: str, workdir, seeds: Sequence[int], roots: dict | None = None,
                  allow_cpu: bool = False, check_backend_now: bool = True,
                  lower: bool = False) -> Report:
  """Checks everything before any training (see the module doc); raises PreflightError
  listing every problem. `datasets` are the table's, with the roots already applied
  (`tables.with_settings`); `roots` is what --data_root named (its names are checked against
  the datasets the table reads). lower: lower each step for its cost (`cost.step_cost`)
  instead of only tracing it (the dry run)."""
  problems: list[str] = []
  backend = jax.default_backend()
  if check_backend_now:
    p = check_backend(scale, allow_cpu)
    if p:
      problems.append(p)
  accelerator = scale in tables_lib.ACCELERATOR_SCALES
  checks: list[DatasetCheck] = []
  names_read = []
  traced: dict[str, tuple] = {}
  for ds in datasets:
    try:
      base = ds.build()
      configs, notes = tables_lib.plan(table, ds)
    except (ValueError, KeyError, AttributeError, TypeError) as e:
      problems.append(f"{table.name} / {ds.key}: its configs do not build: {e}")
      continue
    name = str(base.data.name)
    names_read.append(name)
    root = base.data.get("root")
    info, opened = None, False
    if accelerator and name != "digits" and not root:
      problems.append(f"no --data_root for {name} (table {table.name} at --scale={scale} "
                      f"reads {name}, from no default folder); give --data_root={name}=PATH")
    else:
      try:
        info = data_lib.dataset_info(base.data)
        opened = True
        if not (info.num_train and info.num_test):
          problems.append(f"{name} at {root}: {info.num_train} train / {info.num_test} test "
                          f"examples; both splits must be non-empty")
        elif accelerator:
          p = real_size_problem(base.data, info)
          if p:
            problems.append(p)
      except (OSError, ValueError, KeyError) as e:
        problems.append(f"{name}: cannot be opened: {' '.join(str(e).split())}")
    if info is None:
      info = tables_lib.nominal_info(base.data)
    runs = cost_lib.table_runs(table, ds.key, configs)
    check = DatasetCheck(ds.key, name, root, info, opened, runs, notes)
    checks.append(check)
    if info is None:
      continue  # no shapes to trace with: the data problem above says why
    if opened and int(base.train.global_batch) > info.num_train > 0:
      problems.append(f"{ds.key}: train.global_batch={int(base.train.global_batch)} exceeds "
                      f"its {info.num_train} training examples")
    for run in runs:
      fp = cost_lib.fingerprint(run, info)
      try:
        if fp not in traced:  # two runs of one step (a shared teacher's seeds) trace once
          fn, args = cost_lib.step_program(run, info)
          dtype = str(run.config.model.get("dtype", "float32"))
          if lower:
            traced[fp] = cost_lib.lowered_cost(fn, args, dtype), cost_lib.state_bytes(args[0])
          else:
            jax.eval_shape(fn, *args)
            traced[fp] = None, cost_lib.state_bytes(args[0])
        step, nbytes = traced[fp]
        if step is not None:
          check.costs[run.key] = step
        check.state_bytes[run.key] = nbytes
      except Exception as e:  # any failure of a row's step is that row's problem
        problems.append(f"{table.name} / {ds.key} / {run.key}: its train step does not trace: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
  for name in sorted(set(roots or {}) - set(names_read)):
    problems.append(f"--data_root names {name}, which table {table.name} at --scale={scale} "
                    f"does not read; it reads: {sorted(set(names_read))}")
  need = 0
  for c in checks:
    for run in c.runs:
      b = c.state_bytes.get(run.key)
      if b is None:
        continue
      keep = int(run.config.train.get("keep_checkpoints", 2))
      # Each run keeps `keep` checkpoints of its state and its exported variables (at most
      # the state's size).
      need += cost_lib.instances(run, len(seeds)) * b * (keep + 1)
  free = None
  try:
    free = shutil.disk_usage(_existing_parent(pathlib.Path(workdir))).free
  except OSError:
    pass
  if free is not None and free < need:
    problems.append(f"--workdir {workdir}: {free / 2**30:.2f} GiB free, but the table's "
                    f"checkpoints need about {need / 2**30:.2f} GiB; free space or choose "
                    "another folder")
  report = Report(table.name, scale, list(seeds), checks, backend, need, free, problems)
  if problems:
    raise PreflightError(problems)
  return report


# ------------------------------------------------------------------------ the dry run
def _fmt_h(s: float) -> str:
  return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min"


def fmt_range(lo: float, hi: float) -> str:
  """'a–b <unit>' (hours from 90 minutes up), or one figure when they agree."""
  a, b = _fmt_h(lo), _fmt_h(hi)
  if a == b:
    return a
  if a.split()[1] == b.split()[1]:
    return f"{a.split()[0]}–{b}"
  return f"{a}–{b}"


def describe_report(report: Report, devices: int = 8) -> str:
  """The dry run's account: per dataset its data path and sizes, per run its steps, epochs,
  step FLOPs / bytes and its time on one H100 and per device at `devices` (`cost`)."""
  seeds = len(report.seeds)
  lines = [f"{report.table} at --scale={report.scale}, seeds {report.seeds}: pre-flight passed "
           f"(backend {report.backend}; checkpoints need ~{report.need_bytes / 2**30:.2f} GiB, "
           + (f"{report.free_bytes / 2**30:.1f} GiB free)" if report.free_bytes is not None
              else "free space unknown)"),
           f"Estimate: {cost_lib.SOURCE}; low = FLOPs alone, high = the roofline with XLA's "
           f"unfused bytes; at {devices} devices: data parallel, communication not counted."]
  total = [0.0, 0.0]
  total_n = [0.0, 0.0]
  for c in report.datasets:
    n = c.info.num_train if c.opened else 0
    lines.append(f"  {c.key}: data {c.root or '(bundled)'}"
                 + (f", {c.info.num_train:,} train / {c.info.num_test:,} test" if c.opened else ""))
    for key, why in c.notes.items():
      lines.append(f"    {key:14s} not run: {why}")
    for run in c.runs:
      k = cost_lib.instances(run, seeds)
      epochs = f"{run.steps * run.batch / n:.1f} epochs" if n else "epochs unknown"
      sc = c.costs.get(run.key)
      if sc is None:
        lines.append(f"    {run.key:14s} {run.stage:3s} {run.steps} steps ({epochs}) × {k} run(s)")
        continue
      lo, hi = cost_lib.run_seconds(sc, run.steps)
      lo_n, hi_n = cost_lib.run_seconds(sc, run.steps, devices)
      total[0] += k * lo
      total[1] += k * hi
      total_n[0] += k * lo_n
      total_n[1] += k * hi_n
      lines.append(f"    {run.key:14s} {run.stage:3s} {run.steps} steps ({epochs}) at batch "
                   f"{run.batch}, {sc.dtype} × {k} run(s): {sc.flops:.3g} FLOPs, {sc.bytes:.3g} "
                   f"B a step; {fmt_range(lo, hi)} a run on one H100, "
                   f"{fmt_range(lo_n, hi_n)} per device at {devices}")
  lines.append(f"  total: {fmt_range(*total)} on one H100; "
               f"{fmt_range(*total_n)} per device at {devices} devices "
               "(training and the per-run overhead; nothing was trained)")
  return "\n".join(lines)
