"""The training loop: stages 'fp' (teacher), 'qat' (student without KD), 'md' (distilled student).

    plan = check(config, workdir)            # everything that can fail, before any training
    results = train_and_evaluate(config, workdir)

Each stage runs in `workdir/<stage>/`: its resolved config (`config.json`), orbax
checkpoints, metrics as JSON lines (`metrics.jsonl`), the exported final variables
(`final_variables/`) and a summary (`summary.json`, written last: a stage is finished when
it exists). `workdir/summary.json` collects every stage. On a re-run, a finished stage with
an identical config is skipped untouched, an unfinished one resumes from its latest good
checkpoint, and any difference is refused with the differing fields unless `overwrite`
(which restarts that stage and the ones after it).

Multi-process: every process runs this same code; orbax saves and restores are collective
and called by all, plain file writes by process 0 alone. The global batch of step s does not
depend on the process count (`data.make_train_stream`), so a run resumes on any topology.
SIGTERM / SIGINT finish the current step, save a checkpoint and raise `Interrupted`; a
non-finite loss or gradient is never applied (`train.nan_policy`).

The report is not built here: `launch/train.py` builds it after this returns.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import socket
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mdsnn_jax import data as data_lib
from mdsnn_jax import distill
from mdsnn_jax import nn as nn_lib
from mdsnn_jax import provenance
from mdsnn_jax.quant import registry
from mdsnn_jax.train import checkpoint as ckpt
from mdsnn_jax.train import sharding as shd
from mdsnn_jax.train import stages as stages_lib
from mdsnn_jax.train import steps as steps_lib
from mdsnn_jax.train import tensorboard as tb_lib
from mdsnn_jax.train.metrics import MetricsWriter, format_progress, pct
from mdsnn_jax.train.prefetch import Prefetcher
from mdsnn_jax.train.stages import (STAGES, StaleRunError, parse_stages, sample_input,
                                    stage_model_config)
from mdsnn_jax.train.config import QUANT_FIELDS, quant_args
from mdsnn_jax.train.state import TrainState, make_optimizer

__all__ = ["STAGES", "parse_stages", "stage_model_config", "sample_input", "check",
           "train_and_evaluate", "run_stage", "evaluate", "Interrupted", "DivergenceError",
           "StaleRunError", "WorkdirLockedError", "NAN_POLICIES"]

NAN_POLICIES = ("stop", "skip")
LOCK_FILE = ".lock"


class Interrupted(RuntimeError):
  """SIGTERM / SIGINT: the current step finished and a checkpoint was saved."""

  def __init__(self, stage: str, step: int, signum: int):
    self.stage, self.step, self.signum = stage, step, signum
    super().__init__(f"[{stage}] stopped by {signal.Signals(signum).name} after step {step}; "
                     f"a checkpoint of step {step} was saved")


class DivergenceError(RuntimeError):
  """A non-finite loss or gradient (the update was not applied)."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _is_main() -> bool:
  return jax.process_index() == 0


def _say(line: str) -> None:
  if _is_main():
    print(line, flush=True)


# ------------------------------------------------------------------------ the dry check
@dataclasses.dataclass
class StagePlan:
  """What a run will do with one stage, decided before any training."""
  stage: str
  action: str  # 'train' (from scratch), 'resume', 'skip' (finished, identical), 'restart'
  result: dict  # stages.result_fields of this run
  teacher_dir: pathlib.Path | None = None
  teacher_model_cfg: ml_collections.ConfigDict | None = None
  resume_step: int | None = None


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def _check_schedule(config, num_train: int) -> None:
  t = config.train
  _positive_int("train.steps", t.steps)
  _positive_int("train.log_every", t.log_every)
  _positive_int("train.checkpoint_every", t.checkpoint_every)
  _positive_int("train.keep_checkpoints", t.keep_checkpoints)
  _positive_int("train.eval_every", t.eval_every, minimum=0)
  _positive_int("train.eval_batch", t.eval_batch)
  batch = _positive_int("train.global_batch", t.global_batch)
  if batch > num_train:
    raise ValueError(f"train.global_batch={batch} is larger than the {num_train} training "
                     f"examples of {config.data.name!r}; use at most {num_train}")
  policy = t.get("nan_policy", "stop")
  if policy not in NAN_POLICIES:
    raise ValueError(f"unknown train.nan_policy {policy!r}; allowed: {list(NAN_POLICIES)}")
  _positive_int("train.max_skipped", t.get("max_skipped", 10))
  _positive_int("model.timesteps", config.model.timesteps)


def _check_distill(config, stages: list[str]) -> None:
  d = config.distill
  if "md" not in stages:
    return
  for name in ("alpha", "beta", "gamma", "temperature", "temporal_weight"):
    value = d[name]
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
      raise ValueError(f"distill.{name} must be a finite number >= 0, got {value!r}")
  if d.temperature <= 0:
    raise ValueError(f"distill.temperature must be > 0, got {d.temperature!r}")
  if d.align not in distill._ALIGN_MODES:
    raise ValueError(f"unknown distill.align {d.align!r}; allowed: {list(distill._ALIGN_MODES)}")
  tt, t = int(d.teacher_timesteps), int(config.model.timesteps)
  if tt != 0 and tt < t:
    raise ValueError(f"distill.teacher_timesteps={tt} is fewer than the student's "
                     f"model.timesteps={t}; use 0 (the student's T) or a value >= {t}")
  if d.feature_source not in steps_lib.FEATURE_SOURCES:
    raise ValueError(f"unknown distill.feature_source {d.feature_source!r}; allowed: "
                     f"{list(steps_lib.FEATURE_SOURCES)}")
  if not (d.alpha or d.beta or d.gamma):
    logging.warning("distill.alpha, beta and gamma are all 0: the md stage trains without KD")


def _check_gate(config) -> None:
  rho = config.model.neuron.get("gate_rho")
  if rho is None:
    return
  nn_lib.NeuronConfig(gate_rho=rho)  # ρ ∈ (0, 1], or ValueError naming it
  w = config.loss.get("gate_weight", 1.0)
  if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
    raise ValueError(f"loss.gate_weight (the learned gate's BCE weight) must be a finite number "
                     f">= 0, got {w!r}")


def _teacher_result(plan_fp: StagePlan | None, tdir: pathlib.Path,
                    workdir: pathlib.Path) -> dict:
  """The identity of a student's teacher (`stages.teacher_identity`): its folder relative to
  the workdir, or, outside it, its stored config and a checksum of its weights."""
  if plan_fp is not None:
    return stages_lib.teacher_identity(workdir, tdir, plan_fp.result)
  stored = stages_lib.read_stage_config(tdir)
  return stages_lib.teacher_identity(workdir, tdir, stored["result"] if stored else None,
                                     checksum=lambda: stages_lib.teacher_checksum(tdir))


def _check_data(config, info) -> None:
  """Both splits non-empty after the dataset's split rule, before any step: an empty test
  split would otherwise fail only at the first evaluation, after training."""
  if info.num_train and info.num_test:
    return
  empty = [s for s, n in (("train", info.num_train), ("test", info.num_test)) if not n]
  raise ValueError(f"the {' and '.join(empty)} split of {config.data.name!r} is empty: "
                   f"{data_lib.registry.describe(config.data)}; give a dataset folder with more "
                   f"examples per class")


def _state_bytes(tree) -> int:
  return int(sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree) if hasattr(x, "shape")))


def _check_teacher_structure(tdir: pathlib.Path, teacher_model, sample) -> None:
  """The saved teacher's variable tree against the one its config builds."""
  import orbax.checkpoint as ocp
  want = stages_lib.abstract_variables(teacher_model, sample)
  want = {k: want.get(k, {}) for k in ckpt.VARIABLE_COLLECTIONS}
  with ocp.StandardCheckpointer() as c:
    meta = c.metadata(str((tdir / "final_variables").absolute()))
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  got = {jax.tree_util.keystr(p): tuple(getattr(v, "shape", ()) or ())
         for p, v in jax.tree_util.tree_flatten_with_path(meta)[0]}
  exp = {jax.tree_util.keystr(p): tuple(v.shape)
         for p, v in jax.tree_util.tree_flatten_with_path(want)[0]}
  problems = [f"{k}: saved {got.get(k, 'missing')} vs config {v}" for k, v in exp.items()
              if got.get(k) != v]
  problems += [f"{k}: saved but not in the config's model" for k in got if k not in exp]
  if problems:
    raise ValueError(f"the teacher in {tdir} does not match the model its config builds "
                     f"({len(problems)} differences): " + "; ".join(problems[:6]))


def check(config, workdir: str | os.PathLike, *, overwrite: bool = False,
          note: Callable[[str], None] | None = None) -> list[StagePlan]:
  """Everything that can fail, before any training; returns what each stage will do.

  Builds every stage's model and quantizers and traces its real training step on abstract
  inputs (`jax.eval_shape`: no compute), which checks every distill field and tap name;
  opens the data (both splits non-empty after the split rule); checks the schedule fields,
  the batch against the dataset, the teacher's saved structure against its own config, each
  stage folder against the stored config, and the workdir (a folder, writable, with room for
  one checkpoint)."""
  note = note or (lambda s: logging.warning("%s", s))
  workdir = pathlib.Path(workdir)
  stages = parse_stages(config.stages)
  for field in QUANT_FIELDS:  # a misspelled key is refused even where a stage ignores it
    if field in config.model.quant:
      quant_args(field, config.model.quant[field])
  _check_gate(config)
  info = data_lib.dataset_info(config.data)
  _check_data(config, info)
  _check_schedule(config, info.num_train)
  _check_distill(config, stages)
  steps_lib.task_loss(jnp.zeros((1, 1, 2)), jnp.zeros((1,), jnp.int32), config.loss.kind)
  tx = make_optimizer(config.optim, int(config.train.steps))
  mesh = shd.make_mesh(config.mesh.get("data", -1))
  shd.check_batch_divisible(int(config.train.global_batch), mesh)
  shd.check_batch_divisible(int(config.train.eval_batch), mesh)

  tw = str(config.distill.get("teacher_workdir") or "")
  if tw and "fp" in stages:
    tdir = stages_lib.teacher_stage_dir(config, workdir)
    if tdir.resolve() != (workdir / "fp").resolve():
      raise ValueError(f"config.stages={config.stages!r} trains a teacher (fp) here, but "
                       f"distill.teacher_workdir={tw!r} names another one; drop one of them")

  timesteps = int(config.model.timesteps)
  sample = sample_input(info, timesteps)
  batch = {"image": jax.ShapeDtypeStruct((2,) + sample.shape[1:], jnp.float32),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  plans: dict[str, StagePlan] = {}
  restart_rest = False
  need_bytes = 0
  for stage in stages:
    model_cfg = stage_model_config(config, stage, note)
    for field, what in QUANT_FIELDS.items():  # every quantizer, used by this model or not
      spec = model_cfg.quant[field].to_dict()
      if spec["kind"] != "same":
        try:
          (registry.make_membrane_quantizer if what == "membrane" else
           registry.make_weight_quantizer)(spec)
        except ValueError as e:
          raise ValueError(f"model.quant.{field}: {e}") from e
    model = nn_lib.create_model(model_cfg, info.num_classes)
    variables = stages_lib.abstract_variables(model, sample)  # builds every quantizer
    tdir = tmodel_cfg = teacher = None
    trained_here = False
    # qat with init_from_teacher=False is a quantized run from scratch: no teacher at all.
    if stage == "md" or (stage == "qat" and config.init_from_teacher):
      tdir = stages_lib.teacher_stage_dir(config, workdir)
      trained_here = "fp" in stages and stages.index("fp") < stages.index(stage)
      if not trained_here and not (tdir / "final_variables").is_dir():
        raise FileNotFoundError(
            f"stage {stage!r} needs a trained FP teacher, but none was found at "
            f"{tdir / 'final_variables'}; run the 'fp' stage first (config.stages='fp,{stage}')"
            f" or set config.distill.teacher_workdir to a finished workdir or its fp folder")
      tmodel_cfg = (stage_model_config(config, "fp") if trained_here else
                    stages_lib.teacher_model_config(config, tdir, note))
      teacher = _teacher_result(plans.get("fp") if trained_here else None, tdir, workdir)
    result = stages_lib.result_fields(config, stage, teacher)

    if tdir is not None:
      teacher_model = nn_lib.create_model(tmodel_cfg, info.num_classes)
      if not trained_here:
        _check_teacher_structure(tdir, teacher_model, sample)
      t_vars = stages_lib.abstract_variables(teacher_model, sample)
    else:
      teacher_model = t_vars = None
    if stage == "md":
      projectors = None
      if float(config.distill.gamma) > 0:
        projectors = jax.eval_shape(lambda v, tv: init_feature_projectors(
            config, jax.random.PRNGKey(0), model, v, teacher_model, tv, sample), variables, t_vars)
      state = jax.eval_shape(lambda v, p: TrainState.create(variables=v, tx=tx, distill_params=p),
                             variables, projectors)
      jax.eval_shape(lambda s, b, tv: steps_lib.train_step(
          s, b, tv, model=model, loss_cfg=config.loss, distill_cfg=config.distill,
          teacher_model=teacher_model, timesteps=timesteps), state, batch, t_vars)
    else:
      state = jax.eval_shape(lambda v: TrainState.create(variables=v, tx=tx), variables)
      jax.eval_shape(lambda s, b: steps_lib.train_step(
          s, b, None, model=model, loss_cfg=config.loss, timesteps=timesteps), state, batch)
    # One checkpoint of the state next to the exported variables, with room for metadata.
    need_bytes = max(need_bytes, _state_bytes(state) + _state_bytes(variables) + 2**20)

    sdir = workdir / stage
    status = stages_lib.stage_status(sdir)
    stored = stages_lib.read_stage_config(sdir)
    if restart_rest and status != "new":
      action = "restart"
    elif status == "new":
      action = "train"
    elif stored is None:
      if not overwrite:
        raise StaleRunError(
            f"{sdir} holds a run with no stored config.json (an older version, or not made "
            f"by this launcher), so it cannot be checked against this config; re-run with "
            f"--overwrite to restart stage {stage!r} (and the stages after it)")
      action, restart_rest = "restart", True
    else:
      old = dict(stored["result"])
      if old.get("teacher") and result.get("teacher"):
        old["teacher"] = stages_lib.comparable_teacher(old["teacher"], result["teacher"])
      diff = stages_lib.diff_fields(old, result)
      if diff and not overwrite:
        raise StaleRunError(
            f"{sdir} was run with a different config ({len(diff)} field(s) differ: "
            + "; ".join(diff[:12]) + ("; …" if len(diff) > 12 else "")
            + f"); re-run with --overwrite to restart stage {stage!r} and the stages after "
            f"it, or use another --workdir")
      if diff:
        action, restart_rest = "restart", True
      else:
        action = "skip" if status == "finished" else "resume"
    plans[stage] = StagePlan(stage, action, result, tdir, tmodel_cfg)
  # Even an all-skip re-run writes the lock (and the launcher the report).
  stages_lib.check_workdir(
      workdir, need_bytes if any(p.action != "skip" for p in plans.values()) else 0)
  return [plans[s] for s in stages]


# -------------------------------------------------------------------------- workdir lock
def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def acquire_lock(workdir: pathlib.Path) -> pathlib.Path:
  """workdir/.lock holding this pid and host; refuses a live holder, takes over a dead one."""
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        held = json.loads(path.read_text() or "{}")
      except (OSError, json.JSONDecodeError):
        held = {}
      same_host = held.get("host") == me["host"]
      if same_host and isinstance(held.get("pid"), int) and not _pid_alive(held["pid"]):
        print(f"warning: taking over the stale lock {path} (pid {held.get('pid')} is not "
              f"running)", flush=True)
        path.unlink(missing_ok=True)
        continue
      since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("since", 0)))
      raise WorkdirLockedError(
          f"workdir {workdir} is in use by pid {held.get('pid')} on host {held.get('host')} "
          f"(since {since}); wait for that run, or delete {path} if it is gone")
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise WorkdirLockedError(f"could not take the lock {path}")


# ------------------------------------------------------------------ signals (preemption)
class _StopRequest:
  """Turns SIGTERM / SIGINT into a flag read between steps (a second SIGINT interrupts at
  once). Several processes agree on the step to stop at through an all-gather, done every
  SIGNAL_AGREE_EVERY steps and at every boundary (`run_stage`)."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals stay with the caller
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)

  def agreed(self) -> int | None:
    """The signal to stop for, the same on every process (None: go on)."""
    mine = 0 if self.signum is None else int(self.signum)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      mine = int(np.max(multihost_utils.process_allgather(np.int32(mine))))
    return mine or None


# ------------------------------------------------------------------------------- stages
def init_feature_projectors(config, key, model, variables, teacher_model, teacher_variables,
                            sample: np.ndarray) -> dict:
  """{tap: projector} for feature KD, sized from abstract forward passes (no compute)."""
  source = config.distill.get("feature_source", "membranes")
  timesteps = int(config.model.timesteps)

  def taps(m, v, t):
    _, cols = jax.eval_shape(
        lambda v: m.apply(v, sample, train=False, timesteps=t, mutable=[source]), v)
    return distill.flatten_taps(cols[source])

  return distill.init_projectors(
      key, taps(model, variables, timesteps),
      taps(teacher_model, teacher_variables, int(config.distill.teacher_timesteps) or timesteps),
      layers=steps_lib.layer_spec(config.distill.get("feature_layers", "all")))


def _local_batch(batch: dict) -> dict:
  return {"image": np.asarray(batch["image"], np.float32),
          "label": np.asarray(batch["label"], np.int32)}


def evaluate(eval_fn, variables, config, mesh, num_test: int) -> float:
  """Test accuracy in percent over the whole test split (each process reads its shard; every
  process runs the same number of padded, masked batches)."""
  pc = jax.process_count()
  local = int(config.train.eval_batch) // pc
  loader = data_lib.make_loader(config.data, "test", batch_size=local, seed=0, shuffle=False,
                                num_epochs=1, shard_index=jax.process_index(), shard_count=pc,
                                drop_remainder=False)
  n_batches = math.ceil(math.ceil(num_test / pc) / local)
  it = iter(loader)
  sums = []  # on device; read once at the end (one transfer, not one per batch)
  template = None
  for _ in range(n_batches):
    batch = next(it, None)
    if batch is None:  # this shard is exhausted while another still has a batch
      b = {k: np.zeros((0,) + v.shape[1:], v.dtype) for k, v in template.items()}
    else:
      b = _local_batch(batch)
      template = b
    n = b["label"].shape[0]
    pad = local - n  # padded to a full, device-divisible batch and masked
    b = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    b["mask"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    sums.append(eval_fn(variables, shd.global_batch_from_local(b, mesh)))
  totals = host_get(sums)
  correct = float(sum(float(o["correct"]) for o in totals))
  count = float(sum(float(o["count"]) for o in totals))
  return 100.0 * correct / max(count, 1.0)


# Multi-process runs agree on a stop signal every this many steps (and at every log / eval /
# checkpoint boundary): a preempted job stops within a few steps without a per-step sync.
SIGNAL_AGREE_EVERY = 10


def host_get(tree: Any) -> Any:
  """The training loop's device-to-host reads go through here (tests count them): only at
  log / eval / checkpoint / signal boundaries, never between two steps."""
  return jax.device_get(tree)


def _rate_window(t_ref, step_ref, step, now):
  return (step - step_ref) / max(now - t_ref, 1e-9) if t_ref is not None and step > step_ref else 0.0


def run_stage(config, plan: StagePlan, workdir: pathlib.Path, *,
              stop: _StopRequest | None = None, tag: str = "") -> dict:
  """Trains one stage to `config.train.steps`, resuming from its latest good checkpoint.
  `tag` names the run in progress lines (table runners: the row and seed)."""
  stage = plan.stage
  head = f"[{tag} {stage}]" if tag else f"[{stage}]"
  stage_dir = workdir / stage
  if plan.action == "skip":
    summary = json.loads((stage_dir / stages_lib.SUMMARY_FILE).read_text())
    _say(f"{head} finished earlier with this config: skipped "
         f"(test accuracy {pct(summary.get('test_accuracy'))})")
    return summary
  if plan.action == "restart" and _is_main() and stage_dir.exists():
    shutil.rmtree(stage_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"stage {stage} folder ready")
  stage_dir.mkdir(parents=True, exist_ok=True)
  if _is_main():
    stages_lib.write_stage_config(stage_dir, plan.result, config, provenance.record())

  info = data_lib.dataset_info(config.data)
  mesh = shd.make_mesh(config.mesh.get("data", -1))
  global_batch = int(config.train.global_batch)
  total_steps = int(config.train.steps)
  timesteps = int(config.model.timesteps)

  model = nn_lib.create_model(stage_model_config(config, stage), info.num_classes)
  sample = sample_input(info, timesteps)
  key = jax.random.PRNGKey(int(config.seed))
  variables = nn_lib.init_variables(model, key, sample)

  teacher_model = teacher_variables = distill_cfg = distill_params = None
  if stage != "fp" and (stage == "md" or config.init_from_teacher):
    teacher_model = nn_lib.create_model(plan.teacher_model_cfg, info.num_classes)
    teacher_variables = stages_lib.load_trained_variables(
        teacher_model, sample, plan.teacher_dir / "final_variables", shd.replicated(mesh))
    if config.init_from_teacher:
      # Re-calibrates the student's quantizers (e.g. LSQ steps) on the copied weights.
      variables = nn_lib.init_student_from_teacher(
          variables, teacher_variables, student_model=model, sample_input=sample,
          rng=jax.random.fold_in(key, 1))
  if stage == "md":
    distill_cfg = config.distill
    if float(distill_cfg.gamma) > 0:
      distill_params = init_feature_projectors(
          config, jax.random.fold_in(key, 2), model, variables, teacher_model,
          teacher_variables, sample)

  tx = make_optimizer(config.optim, total_steps)
  state = TrainState.create(variables=variables, tx=tx, distill_params=distill_params)
  state = jax.device_put(state, shd.replicated(mesh))
  if teacher_variables is not None:
    # A copy: the student was initialised from these arrays, and the step donates the
    # student's state, which must not alias the teacher's buffers.
    teacher_variables = jax.device_put(jax.tree.map(jnp.copy, teacher_variables),
                                       shd.replicated(mesh))

  manager = ckpt.make_manager(stage_dir / "checkpoints",
                              max_to_keep=int(config.train.keep_checkpoints))
  state, resumed = ckpt.restore_latest_good(manager, state, warn=_say)
  start = int(state.step)
  if resumed is not None:
    state = jax.device_put(state, shd.replicated(mesh))
  writer = MetricsWriter(stage_dir / "metrics.jsonl", resume_step=start if resumed else None,
                         enabled=_is_main())
  # TensorBoard: every record also goes to <stage>/tb/ (process 0); firing rates at eval.
  tb = tb_lib.StageTensorBoard(stage_dir / "tb", resume_step=start if resumed else None,
                               enabled=bool(config.train.get("tensorboard", True)))
  writer = tb.tee(writer)

  def tb_firing(step):
    if tb.active:  # host copies: process 0 evaluates alone, outside the collective mesh
      tb.eval_firing(step, model, jax.tree.map(np.asarray, state.variables), config.data,
                     timesteps)
  _say(f"{head} " + (f"resuming from step {start} of {total_steps} "
                        f"(checkpoint in {stage_dir / 'checkpoints'})" if resumed is not None
                        else f"training {total_steps} steps " + (
                            "from the teacher's weights" if teacher_variables is not None
                            and config.init_from_teacher else "from scratch"))
       + f" | {info.name} | global batch {global_batch} | {jax.process_count()} process(es), "
         f"{mesh.size} device(s)")

  train_fn = steps_lib.make_train_step(
      mesh, model=model, loss_cfg=config.loss, distill_cfg=distill_cfg,
      teacher_model=teacher_model, timesteps=timesteps)
  eval_fn = steps_lib.make_eval_step(mesh, model=model, timesteps=timesteps)

  ptq_accuracy = None
  if (stage != "fp" and config.init_from_teacher and resumed is None
      and config.train.get("eval_ptq", True)):
    # The starting point of QAT: the teacher's weights quantized, before any training (PTQ).
    ptq_accuracy = evaluate(eval_fn, state.variables, config, mesh, info.num_test)
    writer.write({"step": 0, "stage": stage, "ptq_accuracy": ptq_accuracy})
    _say(f"{head} post-training-quantization test accuracy (step 0) {pct(ptq_accuracy)}")

  stream = data_lib.make_train_stream(
      config.data, global_batch=global_batch, seed=int(config.seed),
      process_index=jax.process_index(), process_count=jax.process_count(), start_step=start,
      worker_count=int(config.data.get("worker_count", 0)))
  batches = Prefetcher(stream, lambda b: shd.global_batch_from_local(_local_batch(b), mesh),
                       depth=int(config.data.get("prefetch", 2)))
  log_every, eval_every = int(config.train.log_every), int(config.train.eval_every)
  ckpt_every = int(config.train.checkpoint_every)
  policy = config.train.get("nan_policy", "stop")
  max_skipped = int(config.train.get("max_skipped", 10))
  t0 = time.time()
  t_ref = step_ref = None  # the rate counts from the end of the first (compiling) step
  t_last, step_last = None, start
  metrics: dict = {}
  # (step, its on-device metrics) since the last boundary: their finiteness flags are read in
  # one transfer at the next log / eval / checkpoint / signal boundary, so no step waits for
  # the one before it.
  pending: list = []
  skipped_seen = int(host_get(state.skipped))

  def check_finite() -> None:
    """The non-finite policy over the steps since the last boundary, in step order. The
    state counts every update it did not apply (TrainState.skipped): one scalar read when
    nothing went wrong; the per-step flags are read only when the count moved."""
    nonlocal skipped_seen
    skipped_now = int(host_get(state.skipped))
    if skipped_now == skipped_seen:
      pending.clear()
      return
    flags = host_get([m["finite"] for _, m in pending])
    bad = [(s, m) for (s, m), ok in zip(pending, flags) if not bool(ok)]
    pending.clear()
    skipped_seen = skipped_now
    # The count at each bad step is the count now minus the bad steps after it.
    for i, (bad_step, bad_metrics) in enumerate(bad):
      skipped = skipped_now - (len(bad) - 1 - i)
      terms = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(host_get(bad_metrics).items())
                        if k != "finite")
      last_good = manager.latest_step()
      where = (f"the last good checkpoint is step {last_good} in {stage_dir / 'checkpoints'}"
               if last_good is not None else "no checkpoint was saved yet")
      if policy == "stop" or skipped > max_skipped:
        batches.close()
        manager.close()
        tb.close()
        reason = ("train.nan_policy='stop'" if policy == "stop" else
                  f"{skipped} skipped updates exceed train.max_skipped={max_skipped}")
        raise DivergenceError(
            f"[{stage}] non-finite loss or gradient at step {bad_step} ({terms}); the update "
            f"was not applied and the stage stops ({reason}); {where}. Lower optim.lr, check "
            f"the data, or set --config.train.nan_policy=skip")
      _say(f"{head} warning: non-finite loss or gradient at step {bad_step} ({terms}); update "
           f"skipped ({skipped} of at most {max_skipped})")
      writer.write({"step": bad_step, "stage": stage, "skipped_update": True,
                    "skipped": skipped})

  with batches:
    for step in range(start + 1, total_steps + 1):
      state, step_metrics = train_fn(state, next(batches), teacher_variables)
      pending.append((step, step_metrics))
      if t_ref is None:
        jax.block_until_ready(state.step)
        t_ref = t_last = time.time()
        step_ref = step
      logs = step % log_every == 0 or step == total_steps
      evals = bool(eval_every) and step % eval_every == 0 and step != total_steps
      saves = step % ckpt_every == 0 or step == total_steps
      signum = None
      if stop is not None and (jax.process_count() == 1 or logs or evals or saves
                               or step % SIGNAL_AGREE_EVERY == 0):
        # One process reads its own flag (no device work); several agree through an
        # all-gather, a host sync, so only every few steps and at the other boundaries.
        signum = stop.agreed()
      saves = saves or bool(signum)
      if not (logs or evals or saves):
        continue
      check_finite()
      if logs:
        metrics = {k: float(v) for k, v in host_get(step_metrics).items() if k != "finite"}
        metrics["accuracy"] = 100.0 * metrics["accuracy"]
        now = time.time()
        rate = _rate_window(t_last, step_last if step_last >= step_ref else step_ref, step, now)
        overall = _rate_window(t_ref, step_ref, step, now)
        t_last, step_last = now, step
        writer.write({"step": step, "stage": stage, "steps_per_s": rate, **metrics})
        _say(f"{head} {format_progress(step, total_steps, metrics, rate, overall)}")
      if evals:
        t_eval = time.time()
        accuracy = evaluate(eval_fn, state.variables, config, mesh, info.num_test)
        writer.write({"step": step, "stage": stage, "eval_accuracy": accuracy})
        tb_firing(step)
        _say(f"{head} step {step}: test accuracy {pct(accuracy)}")
        # Training rates count training only: the evaluation's time is taken out of both clocks.
        spent = time.time() - t_eval
        t_ref = None if t_ref is None else t_ref + spent
        t_last = None if t_last is None else t_last + spent
      if saves:
        ckpt.save(manager, step, state)
      if signum:
        manager.close()
        tb.close()
        raise Interrupted(stage, step, signum)

  accuracy = evaluate(eval_fn, state.variables, config, mesh, info.num_test)
  writer.write({"step": total_steps, "stage": stage, "eval_accuracy": accuracy})
  tb_firing(total_steps)
  tb.close()
  _say(f"{head} final test accuracy {pct(accuracy)}")
  # Collective: every process calls the orbax save; process 0 writes the files.
  ckpt.save_variables(stage_dir / "final_variables", state.variables)
  summary = {"stage": stage, "steps": total_steps, "test_accuracy": accuracy,
             "accuracy_unit": "percent", "ptq_accuracy": ptq_accuracy,
             "final_train_metrics": metrics, "wall_seconds": time.time() - t0,
             "resumed_from_step": resumed, "skipped_updates": int(state.skipped),
             "num_devices": mesh.size, "num_processes": jax.process_count(),
             "dataset": info.name, "model": config.model.name}
  if _is_main():
    provenance.write_json_atomic(stage_dir / stages_lib.SUMMARY_FILE, summary)
  manager.close()
  return summary


def maybe_initialize_distributed(config) -> None:
  """`jax.distributed.initialize()` for multi-process runs (config.distributed.initialize).

  Unset fields are left to jax, which finds them itself on SLURM, Open MPI and TPU pods."""
  dist = config.get("distributed", None)
  if dist is None or not dist.get("initialize", False):
    return
  if jax.distributed.is_initialized():
    return
  kwargs = {k: dist[k] for k in ("coordinator_address", "num_processes", "process_id")
            if dist.get(k) is not None}
  if dist.get("local_device_ids"):
    kwargs["local_device_ids"] = [int(i) for i in str(dist.local_device_ids).split(",")]
  jax.distributed.initialize(**kwargs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       overwrite: bool = False, tag: str = "") -> dict:
  """Checks everything (`check`), then runs every stage of `config.stages` in order and
  writes workdir/summary.json. Returns {stage: summary}."""
  workdir = pathlib.Path(workdir)
  maybe_initialize_distributed(config)
  plans = check(config, workdir, overwrite=overwrite,
                note=lambda s: _say(f"note: {s}"))
  lock = acquire_lock(workdir) if _is_main() else None
  try:
    _say(f"{tag + ' | ' if tag else ''}workdir {workdir} | stages {','.join(p.stage for p in plans)} | "
         + ", ".join(f"{p.stage}: {p.action}" for p in plans))
    results = {}
    with _StopRequest() as stop:
      for plan in plans:
        results[plan.stage] = run_stage(config, plan, workdir, stop=stop, tag=tag)
    if _is_main() and not all(p.action == "skip" for p in plans):
      provenance.write_json_atomic(workdir / "summary.json", {
          "stages": results, "config": config.to_dict(), "provenance": provenance.record()})
  finally:
    if lock is not None:
      lock.unlink(missing_ok=True)
  if jax.process_count() > 1:
    # Nobody reads workdir/summary.json (e.g. the report) before process 0 has written it.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("train_and_evaluate done")
  return results
