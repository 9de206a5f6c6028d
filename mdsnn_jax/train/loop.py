"""The training loop: stages 'fp' (teacher), 'qat' (student without KD), 'md' (distilled student).

    train_and_evaluate(config, workdir)

Each stage runs in `workdir/<stage>/`: orbax checkpoints (resumed automatically), metrics as
JSON lines (`metrics.jsonl`), the exported final variables (`final_variables/`) and a
summary (`summary.json`). `workdir/summary.json` collects every stage. The configuration is
validated before any training starts.
"""
from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mdsnn_jax import data as data_lib
from mdsnn_jax import distill
from mdsnn_jax import nn as nn_lib
from mdsnn_jax.train import checkpoint as ckpt
from mdsnn_jax.train import sharding as shd
from mdsnn_jax.train import steps as steps_lib
from mdsnn_jax.train import tensorboard as tb_lib
from mdsnn_jax.train.metrics import MetricsWriter, format_progress
from mdsnn_jax.train.state import TrainState, make_optimizer

STAGES = ("fp", "qat", "md")
QUANT_OFF = {"kind": "none"}


def parse_stages(stages: str | tuple | list) -> list[str]:
  names = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
  names = [n for n in names if n]
  bad = [n for n in names if n not in STAGES]
  if bad or not names:
    raise ValueError(f"unknown stage(s) {bad or names!r} in config.stages={stages!r}; "
                     f"allowed stages: {list(STAGES)} (comma-separated, run in order)")
  return names


def stage_model_config(config, stage: str) -> ml_collections.ConfigDict:
  """The model config of a stage: the FP teacher has every quantizer off."""
  model_cfg = ml_collections.ConfigDict(config.model.to_dict())
  if stage == "fp":
    for key in ("weight", "membrane", "first_layer", "last_layer"):
      if key in model_cfg.quant:
        model_cfg.quant[key] = dict(QUANT_OFF)
    model_cfg.quant.bn_fold = False
  return model_cfg


def teacher_dir(config, workdir: pathlib.Path) -> pathlib.Path:
  path = config.distill.get("teacher_workdir") or None
  return pathlib.Path(path) if path else workdir / "fp"


def validate_config(config, workdir: str | pathlib.Path) -> list[str]:
  """Fails fast, before any training, on unknown names, bad sizes or a missing teacher."""
  workdir = pathlib.Path(workdir)
  stages = parse_stages(config.stages)
  info = data_lib.dataset_info(config.data)
  for stage in stages:
    nn_lib.create_model(stage_model_config(config, stage), info.num_classes)
  steps_lib.task_loss(jnp.zeros((1, 1, 2)), jnp.zeros((1,), jnp.int32), config.loss.kind)
  make_optimizer(config.optim, int(config.train.steps))
  source = config.distill.get("feature_source", "membranes")
  if "md" in stages and source not in steps_lib.FEATURE_SOURCES:
    raise ValueError(f"unknown distill.feature_source {source!r}; allowed: "
                     f"{list(steps_lib.FEATURE_SOURCES)}")
  mesh = shd.make_mesh(config.mesh.get("data", -1))
  shd.check_batch_divisible(int(config.train.global_batch), mesh)
  shd.check_batch_divisible(int(config.train.eval_batch), mesh)
  needs_teacher = [s for s in stages if s == "md" or (s == "qat" and config.init_from_teacher)]
  for stage in needs_teacher:
    if "fp" in stages and stages.index("fp") < stages.index(stage):
      continue  # the teacher is trained earlier in this run
    tdir = teacher_dir(config, workdir) / "final_variables"
    if not tdir.is_dir():
      raise FileNotFoundError(
          f"stage {stage!r} needs a trained FP teacher, but no teacher checkpoint was found at "
          f"{tdir}; run the 'fp' stage first (config.stages='fp,{stage}') or set "
          f"config.distill.teacher_workdir to a finished fp stage folder")
  return stages


def sample_input(info, timesteps: int) -> np.ndarray:
  """A zero batch of one input of the dataset's shape (events: [1, T, H, W, 2])."""
  if info.is_event:
    return np.zeros((1, info.timesteps or timesteps) + tuple(info.image_shape), np.float32)
  return np.zeros((1,) + tuple(info.image_shape), np.float32)


def load_trained_variables(model, sample: np.ndarray, directory: pathlib.Path) -> dict:
  """The variables `save_variables` exported for `model` (tree shapes from an abstract init)."""
  like = jax.eval_shape(lambda k: model.init({"params": k}, sample, train=False),
                        jax.random.PRNGKey(0))
  return ckpt.load_variables(directory, like)


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


def evaluate(eval_fn, variables, config, mesh) -> float:
  """Accuracy on this process's shard of the test split (summed over all processes)."""
  local = int(config.train.eval_batch) // jax.process_count()
  loader = data_lib.make_loader(config.data, "test", batch_size=local, seed=0, shuffle=False,
                                num_epochs=1, shard_index=jax.process_index(),
                                shard_count=jax.process_count(), drop_remainder=False)
  correct = count = 0.0
  for batch in loader:
    b = _local_batch(batch)
    n = b["label"].shape[0]
    pad = local - n  # the last batch is padded to a full, device-divisible one and masked
    b = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
    b["mask"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    out = eval_fn(variables, shd.global_batch_from_local(b, mesh))
    correct += float(out["correct"])
    count += float(out["count"])
  return correct / max(count, 1.0)


def run_stage(config, stage: str, workdir: pathlib.Path) -> dict:
  """Trains one stage to `config.train.steps` (resuming if checkpoints exist)."""
  stage_dir = workdir / stage
  stage_dir.mkdir(parents=True, exist_ok=True)
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
  if stage != "fp":
    tdir = teacher_dir(config, workdir) / "final_variables"
    if stage == "md" or config.init_from_teacher:
      teacher_model = nn_lib.create_model(stage_model_config(config, "fp"), info.num_classes)
      teacher_variables = load_trained_variables(teacher_model, sample, tdir)
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
    teacher_variables = jax.device_put(teacher_variables, shd.replicated(mesh))

  loader = data_lib.make_loader(
      config.data, "train", batch_size=global_batch // jax.process_count(), seed=int(config.seed),
      shuffle=True, num_epochs=None, shard_index=jax.process_index(),
      shard_count=jax.process_count(), worker_count=int(config.data.get("worker_count", 0)))
  data_iter = iter(loader)
  manager = ckpt.make_manager(stage_dir / "checkpoints", max_to_keep=int(config.train.keep_checkpoints))
  state, data_iter, resumed = ckpt.restore_latest(manager, state, data_iter)
  start = int(state.step)
  writer = MetricsWriter(stage_dir / "metrics.jsonl", resume_step=start if resumed else None)
  # TensorBoard (issue 14): every record also goes to <stage>/tb/; firing rates at eval.
  tb = tb_lib.StageTensorBoard(stage_dir / "tb", resume_step=start if resumed else None,
                               enabled=bool(config.train.get("tensorboard", True)))
  writer = tb.tee(writer)
  if resumed is not None:
    logging.info("[%s] resumed from step %d", stage, start)
    state = jax.device_put(state, shd.replicated(mesh))

  train_fn = steps_lib.make_train_step(
      mesh, model=model, loss_cfg=config.loss, distill_cfg=distill_cfg,
      teacher_model=teacher_model, timesteps=timesteps)
  eval_fn = steps_lib.make_eval_step(mesh, model=model, timesteps=timesteps)

  ptq_accuracy = None
  if (stage != "fp" and config.init_from_teacher and resumed is None
      and config.train.get("eval_ptq", True)):
    # The starting point of QAT: the teacher's weights quantized, before any training (PTQ).
    ptq_accuracy = evaluate(eval_fn, state.variables, config, mesh)
    writer.write({"step": 0, "stage": stage, "ptq_accuracy": ptq_accuracy})
    print(f"[{stage}] post-training-quantization accuracy (step 0) {ptq_accuracy:.4f}", flush=True)

  log_every, eval_every = int(config.train.log_every), int(config.train.eval_every)
  ckpt_every = int(config.train.checkpoint_every)
  t0, t_last, step_last = time.time(), time.time(), start
  metrics = {}
  accuracy = None
  for step in range(start + 1, total_steps + 1):
    batch = shd.global_batch_from_local(_local_batch(next(data_iter)), mesh)
    state, metrics = train_fn(state, batch, teacher_variables)
    if step % log_every == 0 or step == total_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.time()
      rate = (step - step_last) / max(now - t_last, 1e-9)
      t_last, step_last = now, step
      writer.write({"step": step, "stage": stage, "steps_per_s": rate, **metrics})
      logging.info("[%s] %s", stage, format_progress(step, total_steps, metrics, rate))
      print(f"[{stage}] {format_progress(step, total_steps, metrics, rate)}", flush=True)
    if eval_every and step % eval_every == 0 and step != total_steps:
      accuracy = evaluate(eval_fn, state.variables, config, mesh)
      writer.write({"step": step, "stage": stage, "eval_accuracy": accuracy})
      tb.eval_firing(step, model, state.variables, config.data, timesteps)  # TensorBoard only
      print(f"[{stage}] step {step}: test accuracy {accuracy:.4f}", flush=True)
    if step % ckpt_every == 0 or step == total_steps:
      ckpt.save(manager, step, state, data_iter)

  accuracy = evaluate(eval_fn, state.variables, config, mesh)
  writer.write({"step": total_steps, "stage": stage, "eval_accuracy": accuracy})
  tb.eval_firing(total_steps, model, state.variables, config.data, timesteps)  # TensorBoard only
  tb.close()
  print(f"[{stage}] final test accuracy {accuracy:.4f}", flush=True)
  if jax.process_index() == 0:
    ckpt.save_variables(stage_dir / "final_variables", state.variables)
  summary = {"stage": stage, "steps": total_steps, "test_accuracy": accuracy,
             "ptq_accuracy": ptq_accuracy,
             "final_train_metrics": metrics, "wall_seconds": time.time() - t0,
             "resumed_from_step": resumed, "num_devices": mesh.size,
             "num_processes": jax.process_count(), "dataset": info.name,
             "model": config.model.name}
  if jax.process_index() == 0:
    ckpt.write_json_atomic(stage_dir / "summary.json", summary)
  manager.close()
  return summary


def maybe_initialize_distributed(config) -> None:
  """`jax.distributed.initialize()` for multi-host runs (config.distributed.initialize)."""
  dist = config.get("distributed", None)
  if dist is None or not dist.get("initialize", False):
    return
  kwargs = {k: dist[k] for k in ("coordinator_address", "num_processes", "process_id")
            if dist.get(k) is not None}
  jax.distributed.initialize(**kwargs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of `config.stages` in order and writes workdir/summary.json."""
  workdir = pathlib.Path(workdir)
  maybe_initialize_distributed(config)
  stages = validate_config(config, workdir)
  results = {}
  for stage in stages:
    results[stage] = run_stage(config, stage, workdir)
  if jax.process_index() == 0:
    ckpt.write_json_atomic(workdir / "summary.json", {
        "stages": results, "config": config.to_dict()})
    if config.get("report", True):
      from mdsnn_jax.report import build_report  # matplotlib only when a report is asked for
      build_report(workdir, workdir / "report")
      print(f"report: {workdir / 'report' / 'report.md'}", flush=True)
  return results
