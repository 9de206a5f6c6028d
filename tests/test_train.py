"""The launcher end to end, resume after SIGKILL, sharding, config validation, distill step."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = [
    "--config.model.name=digits_mlp", "--config.model.timesteps=2",
    "--config.train.global_batch=32", "--config.train.eval_batch=64",
    "--config.train.log_every=10",
]


def _launch(workdir, *overrides, config="launch/configs/default.py:fp", env=None, **popen):
  cmd = [sys.executable, "launch/train.py", f"--config={config}", f"--workdir={workdir}",
         *TINY, *overrides]
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def _run(workdir, *overrides, **kw):
  proc = _launch(workdir, *overrides, **kw)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  return out


def _final_params(stage_dir):
  from mdsnn_jax.train.checkpoint import load_variables
  return jax.tree.map(np.asarray, load_variables(pathlib.Path(stage_dir) / "final_variables"))


@pytest.mark.integration
def test_end_to_end_digits_fp_then_md(tmp_path):
  out = _run(tmp_path, "--config.train.steps=60", "--config.train.checkpoint_every=30",
             "--config.distill.gamma=0.5", config="launch/configs/default.py:fp,md")
  summary = json.loads((tmp_path / "summary.json").read_text())
  for stage in ("fp", "md"):
    acc = summary["stages"][stage]["test_accuracy"]
    assert acc > 30, f"{stage} test accuracy {acc} % not above chance (10 %)\n{out}"
    assert (tmp_path / stage / "final_variables").is_dir()
    records = [json.loads(l) for l in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r for r in records)
    assert any("loss" in r and "steps_per_s" in r for r in records)
  md = [json.loads(l) for l in (tmp_path / "md" / "metrics.jsonl").read_text().splitlines()]
  assert md[0].get("ptq_accuracy", 0) > 10, md[0]  # the quantized start, evaluated at step 0
  train_records = [r for r in md if "loss" in r]
  assert all(train_records[0][k] > 0 for k in ("md", "kd", "ce", "feature")), train_records[0]
  assert "ETA" in out and "steps/s" in out


@pytest.mark.integration
def test_resume_after_sigkill_is_bit_identical(tmp_path):
  args = ("--config.train.steps=40", "--config.train.checkpoint_every=5")
  _run(tmp_path / "straight", *args)

  killed = tmp_path / "killed"
  proc = _launch(killed, *args)
  ckpt_dir = killed / "fp" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
    if steps and max(steps) >= 10:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed; make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "fp" / "final_variables").exists()

  out = _run(killed, *args)
  summary = json.loads((killed / "fp" / "summary.json").read_text())
  assert summary["resumed_from_step"] >= 10, out
  a, b = _final_params(tmp_path / "straight" / "fp"), _final_params(killed / "fp")
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


SHARDING_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from mdsnn_jax.train.config import base_config
    from mdsnn_jax.train import sharding as shd, steps
    from mdsnn_jax.train.state import TrainState, make_optimizer
    from mdsnn_jax import nn, data
    assert len(jax.devices()) == 4, jax.devices()
    c = base_config(); c.model.name = 'digits_cnn'; c.model.timesteps = 2
    info = data.dataset_info(c.data)
    model = nn.create_model(c.model, info.num_classes)
    batch = next(iter(data.make_loader(c.data, 'train', batch_size=32, seed=0, shuffle=True)))
    batch = {'image': np.asarray(batch['image']), 'label': np.asarray(batch['label'])}
    variables = model.init({'params': jax.random.PRNGKey(0)}, batch['image'][:1], train=False)
    variables = jax.tree.map(np.asarray, dict(variables))  # host copies: each mesh's step donates its own
    results = []
    for n in (1, 4):
      mesh = shd.make_mesh(n)
      state = TrainState.create(variables=dict(variables), tx=make_optimizer(c.optim, 10))
      state = jax.device_put(state, shd.replicated(mesh))
      fn = steps.make_train_step(mesh, model=model, loss_cfg=c.loss, timesteps=2)
      for _ in range(3):
        state, m = fn(state, shd.global_batch_from_local(batch, mesh), None)
      results.append((jax.tree.map(np.asarray, state.params), float(m['loss'])))
    (p1, l1), (p4, l4) = results
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
      np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
    try:
      shd.check_batch_divisible(30, shd.make_mesh(4))
    except ValueError as e:
      assert '30' in str(e) and '4' in str(e), e
    else:
      raise AssertionError('indivisible batch accepted')
    print('SHARDING_OK')
""")


@pytest.mark.integration
def test_four_device_step_equals_one_device_step():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert "SHARDING_OK" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.data.name=imagenet9000", "imagenet9000"),
    ("--config.model.name=resnet1000", "resnet1000"),
    ("--config.stages=fp,distill", "distill"),
    ("--config.train.global_batch=0", "train.global_batch must be an int >= 1, got 0"),
    ("--config.loss.kind=hinge", "hinge"),
    ("--config.model.neuron.gate_rho=1.5", "gate_rho must be None (no learned gate) or lie in (0, 1]"),
])
def test_bad_config_fails_before_training(tmp_path, override, message):
  proc = _launch(tmp_path, override)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0
  assert message in out, out
  assert not (tmp_path / "fp" / "checkpoints").exists(), "training started despite a bad config"


def test_md_without_teacher_fails_with_where_to_find_it(tmp_path):
  proc = _launch(tmp_path, config="launch/configs/default.py:md")
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0
  assert "teacher" in out and str(tmp_path / "fp" / "final_variables") in out, out


def _count_convs(jaxpr) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      n += 1
    for v in eqn.params.values():
      if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        n += _count_convs(v.jaxpr)
      elif hasattr(v, "eqns"):
        n += _count_convs(v)
  return n


def test_distill_step_computes_no_teacher_backward():
  """Student convs appear 3× (forward, input grad, weight grad); the teacher's once."""
  from mdsnn_jax import nn
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train import steps
  from mdsnn_jax.train.loop import stage_model_config
  from mdsnn_jax.train.state import TrainState, make_optimizer
  c = base_config()
  c.stages = "md"
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  c.model.conv_impl = "xla"
  c.model.quant.weight = {"kind": "lsq", "bits": 2}
  teacher = nn.create_model(stage_model_config(c, "fp"), 10)
  student = nn.create_model(stage_model_config(c, "md"), 10)
  x = jnp.zeros((4, 8, 8, 1))
  batch = {"image": x, "label": jnp.zeros((4,), jnp.int32)}
  tv = teacher.init({"params": jax.random.PRNGKey(0)}, x[:1], train=False)
  sv = student.init({"params": jax.random.PRNGKey(1)}, x[:1], train=False)
  state = TrainState.create(variables=dict(sv), tx=make_optimizer(c.optim, 10))

  def only_teacher(tv):
    return teacher.apply(tv, x, train=False, timesteps=2)

  def only_student_grad(state):
    return steps.train_step(state, batch, None, model=student, loss_cfg=c.loss, timesteps=2)

  def distill(state, tv):
    return steps.train_step(state, batch, tv, model=student, loss_cfg=c.loss, distill_cfg=c.distill,
                            teacher_model=teacher, timesteps=2)

  n_teacher = _count_convs(jax.make_jaxpr(only_teacher)(tv).jaxpr)
  n_student = _count_convs(jax.make_jaxpr(only_student_grad)(state).jaxpr)
  n_distill = _count_convs(jax.make_jaxpr(distill)(state, tv).jaxpr)
  assert n_teacher > 0 and n_student > n_teacher
  assert n_distill == n_student + n_teacher, (n_distill, n_student, n_teacher)


def _feature_kd_setup(source: str, feature_layers: str):
  from mdsnn_jax import nn
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train.loop import init_feature_projectors, stage_model_config
  from mdsnn_jax.train.state import TrainState, make_optimizer
  c = base_config()
  c.stages = "md"
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  c.model.quant.weight = {"kind": "lsq", "bits": 2}
  c.distill.alpha, c.distill.beta, c.distill.gamma = 0.0, 0.0, 1.0
  c.distill.feature_source, c.distill.feature_layers = source, feature_layers
  teacher = nn.create_model(stage_model_config(c, "fp"), 10)
  student = nn.create_model(stage_model_config(c, "md"), 10)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((8, 8, 8, 1)), jnp.float32)
  batch = {"image": x, "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  tv = nn.init_variables(teacher, jax.random.PRNGKey(0), x[:1])
  sv = nn.init_variables(student, jax.random.PRNGKey(1), x[:1])
  projectors = init_feature_projectors(c, jax.random.PRNGKey(2), student, sv, teacher, tv,
                                       np.asarray(x[:1]))
  state = TrainState.create(variables=dict(sv), tx=make_optimizer(c.optim, 10),
                            distill_params=projectors)
  return c, teacher, student, tv, state, batch


@pytest.mark.parametrize("source", ["membranes", "spikes"])
def test_feature_kd_trains_projectors_with_the_student(source):
  from mdsnn_jax.train import steps
  c, teacher, student, tv, state, batch = _feature_kd_setup(source, "all")
  assert set(state.distill_params) == {"lif0", "lif1"}, list(state.distill_params)
  assert all(set(p) == {"gamma", "beta"} for p in state.distill_params.values())
  before = jax.tree.map(np.asarray, state.distill_params)
  step = jax.jit(lambda s, b, t: steps.train_step(
      s, b, t, model=student, loss_cfg=c.loss, distill_cfg=c.distill, teacher_model=teacher,
      timesteps=2))
  losses = []
  for _ in range(5):
    state, m = step(state, batch, tv)
    losses.append(float(m["feature"]))
  assert all(np.isfinite(losses)) and losses[0] > 0, losses
  assert float(m["md"]) == 0.0 and float(m["kd"]) == 0.0  # switched off: not computed
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                       state.distill_params, before)
  assert all(v > 0 for v in jax.tree.leaves(moved)), moved  # every projector is trained
  assert "distill_params" not in state.variables and set(state.variables) == {
      "params", "batch_stats", "quant_state"}  # dropped at export


def test_feature_kd_unknown_tap_lists_the_available_ones():
  from mdsnn_jax.distill import TapNotFoundError
  with pytest.raises(TapNotFoundError, match=r"lif9.*available taps: \[.lif0., .lif1.\]"):
    _feature_kd_setup("membranes", "lif0,lif9")


def test_unknown_feature_source_fails_before_training(tmp_path):
  proc = _launch(tmp_path, "--config.distill.feature_source=currents",
                 config="launch/configs/default.py:fp,md")
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0 and "currents" in out and "membranes" in out, out
  assert not (tmp_path / "fp" / "checkpoints").exists(), "training started despite a bad config"


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["fp", "qat", "md", "md_gated_teacher"])
def test_gated_model_trains_its_gate_and_reports_it_in_every_stage(stage):
  """L = task (+ KD) + loss.gate_weight · mean gate BCE, 'gate' in the metrics; the gate's
  parameters move; eval and the (ungated, or gated) teacher's forward run."""
  from mdsnn_jax import nn
  from mdsnn_jax.train import steps
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train.loop import stage_model_config
  from mdsnn_jax.train.state import TrainState, make_optimizer
  c = base_config()
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  c.model.quant.weight = {"kind": "lsq", "bits": 2}
  c.loss.gate_weight = 0.5
  c.distill.alpha, c.distill.beta = 1.0, 1.0
  c.model.neuron.gate_rho = 0.85
  md = stage.startswith("md")
  student = nn.create_model(stage_model_config(c, stage[:3] if md else stage), 10)
  teacher = (nn.create_model(stage_model_config(c if stage == "md_gated_teacher" else
                                                _ungated(c), "fp"), 10) if md else None)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((8, 8, 8, 1)), jnp.float32)
  batch = {"image": x, "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  sv = nn.init_variables(student, jax.random.PRNGKey(1), x[:1])
  tv = nn.init_variables(teacher, jax.random.PRNGKey(0), x[:1]) if md else None
  assert (tv is None or ("conv1_gate" in tv["params"]) == (stage == "md_gated_teacher"))
  state = TrainState.create(variables=dict(sv), tx=make_optimizer(c.optim, 10))
  before = jax.tree.map(np.asarray, state.params["conv1_gate"])
  step = jax.jit(lambda s, b, t: steps.train_step(
      s, b, t, model=student, loss_cfg=c.loss, distill_cfg=c.distill if md else None,
      teacher_model=teacher, timesteps=2))
  for _ in range(3):
    state, m = step(state, batch, tv)
    m = {k: float(v) for k, v in m.items()}
    assert np.isfinite(m["gate"]) and m["gate"] > 0, m
    task = m["total"] if md else m["ce"]
    np.testing.assert_allclose(m["loss"], task + 0.5 * m["gate"], rtol=1e-5)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                       state.params["conv1_gate"], before)
  assert all(v > 0 for v in jax.tree.leaves(moved)), moved
  ev = steps.eval_step(state.variables, {**batch, "mask": jnp.ones(8)}, model=student, timesteps=2)
  assert float(ev["count"]) == 8


def _ungated(c):
  import copy
  u = copy.deepcopy(c)
  u.model.neuron.gate_rho = None
  return u


def test_gate_fields_leave_ungated_and_older_runs_unchanged():
  """gate_rho None and loss.gate_weight (read only by the gate) are no part of an ungated
  run's identity, so a run stored before the fields existed is the same run."""
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train.stages import diff_fields, result_fields
  c = base_config()
  new = result_fields(c, "fp")
  assert "gate_weight" not in new["loss"] and new["model"]["neuron"]["gate_rho"] is None
  old = json.loads(json.dumps(new))
  del old["model"]["neuron"]["gate_rho"]
  assert diff_fields(old, new) == []
  c.loss.gate_weight = 3.0
  assert diff_fields(old, result_fields(c, "fp")) == []
  c.model.neuron.gate_rho = 0.85
  gated = result_fields(c, "qat")
  assert gated["loss"]["gate_weight"] == 3.0
  assert "loss.gate_weight: (absent) -> 3.0" in diff_fields(old, gated)
