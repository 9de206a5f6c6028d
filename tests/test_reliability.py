"""Multi-process training on localhost, preemption, divergence, damaged checkpoints, the
workdir lock: each run for real (several processes where the feature is about processes)."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.name=digits_mlp", "--config.model.timesteps=2",
        "--config.train.global_batch=32", "--config.train.eval_batch=64",
        "--config.train.log_every=5"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, config, *overrides):
  return [sys.executable, "launch/train.py", f"--config={config}", f"--workdir={workdir}",
          *TINY, *overrides]


def _env(devices: int = 1):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _run(workdir, *overrides, config="launch/configs/default.py:fp", devices=1, check=True):
  res = subprocess.run(_cmd(workdir, config, *overrides), cwd=REPO, env=_env(devices),
                       capture_output=True, text=True, timeout=600)
  if check:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return res


def _leaves(stage_dir):
  from mdsnn_jax.train.checkpoint import load_variables
  v = load_variables(pathlib.Path(stage_dir) / "final_variables")
  return [(jax.tree_util.keystr(p), np.asarray(x))
          for p, x in jax.tree_util.tree_leaves_with_path(v)]


def _assert_close(a_dir, b_dir, atol):
  a, b = _leaves(a_dir), _leaves(b_dir)
  assert [p for p, _ in a] == [p for p, _ in b]
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=path)


def _multiprocess(workdir, n_proc, devices_each, *overrides):
  port = _free_port()
  procs = []
  for i in range(n_proc):
    cmd = _cmd(workdir, "launch/configs/default.py:fp,md", *overrides,
               "--config.distributed.initialize=True",
               f"--config.distributed.coordinator_address=127.0.0.1:{port}",
               f"--config.distributed.num_processes={n_proc}",
               f"--config.distributed.process_id={i}")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(devices_each),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-4000:]}"
  return outs


# Parameters after 16 steps of a 2-process (or 2×2-device) run against one process with the
# same global batch: the batches are identical (the data order does not depend on the
# process count); only the cross-device gradient sum is added in another order, so the
# parameters agree to a few float32 ulps (measured 1.2e-7 on the digits, |w| ≤ 1.05).
MULTI_ATOL = 1e-5


@pytest.mark.integration
@pytest.mark.parametrize("n_proc,devices_each", [(2, 1), (2, 2)], ids=["2x1", "2x2"])
def test_multiprocess_fp_md_matches_one_process(tmp_path, n_proc, devices_each):
  args = ("--config.train.steps=16", "--config.train.checkpoint_every=8")
  outs = _multiprocess(tmp_path / "multi", n_proc, devices_each, *args)
  # The report and the summaries are written once, by process 0.
  assert sum("report: " in out for out in outs) == 1, outs[0][-2000:]
  assert (tmp_path / "multi" / "report" / "report.md").is_file()
  summary = json.loads((tmp_path / "multi" / "md" / "summary.json").read_text())
  assert summary["num_processes"] == n_proc and summary["num_devices"] == n_proc * devices_each
  _run(tmp_path / "single", *args, "--config.report=False",
       config="launch/configs/default.py:fp,md")
  for stage in ("fp", "md"):
    _assert_close(tmp_path / "single" / stage, tmp_path / "multi" / stage, MULTI_ATOL)
  single = json.loads((tmp_path / "single" / "md" / "summary.json").read_text())
  # Every test example is counted exactly once across the processes.
  assert abs(single["test_accuracy"] - summary["test_accuracy"]) <= 100 / 359 + 1e-9


def _wait_for_step(path: pathlib.Path, step: int, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if path.exists():
      steps = [json.loads(l).get("step", 0) for l in path.read_text().splitlines()
               if l.strip().endswith("}")]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise AssertionError(f"the run did not reach step {step} (exit {proc.poll()})")


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_exits_nonzero_and_resumes_bit_identical(tmp_path, sig):
  # Long enough (about a second of steps) that the signal lands before the end.
  args = ("--config.train.steps=400", "--config.train.checkpoint_every=1000",
          "--config.report=False")
  _run(tmp_path / "straight", *args)
  work = tmp_path / "stopped"
  proc = subprocess.Popen(_cmd(work, "launch/configs/default.py:fp", *args), cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_step(work / "fp" / "metrics.jsonl", 10, proc)
  proc.send_signal(sig)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 128 + int(sig), out
  assert "Re-run the same command to resume" in out and "launch/train.py" in out, out
  assert "Traceback" not in out, out
  saved = [int(p.name) for p in (work / "fp" / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved and 10 <= max(saved) < 400  # the current step, checkpointed at the signal
  res = _run(work, *args)
  assert f"resuming from step {max(saved)}" in res.stdout, res.stdout
  a, b = _leaves(tmp_path / "straight" / "fp"), _leaves(work / "fp")
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(x, y, err_msg=path)


# ------------------------------------------------------------------ in-process (library)
def _config(steps=20, **train):
  from mdsnn_jax.train.config import base_config
  c = base_config()
  c.stages = "fp"
  c.model.name = "digits_mlp"
  c.model.timesteps = 2
  c.report = False
  c.train.update(dict(global_batch=32, eval_batch=64, steps=steps, log_every=5,
                      checkpoint_every=10, eval_ptq=False), **train)
  return c


def _nan_stream(bad_step: int | None):
  """make_train_stream with a NaN image in the batch of `bad_step` (1-based; None: all)."""
  from mdsnn_jax import data as data_lib
  real = data_lib.make_train_stream

  def stream(*args, start_step=0, **kw):
    for s, batch in enumerate(real(*args, start_step=start_step, **kw), start=start_step + 1):
      if bad_step is None or s == bad_step:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch
  return stream


def test_nan_policy_stop_names_the_step_and_last_checkpoint(tmp_path, monkeypatch, capsys):
  from mdsnn_jax.train import loop
  monkeypatch.setattr(loop.data_lib, "make_train_stream", _nan_stream(13))
  with pytest.raises(loop.DivergenceError, match=r"non-finite loss or gradient at step 13 \(.*loss .*step 10 in .*checkpoints"):
    loop.train_and_evaluate(_config(), tmp_path)
  assert not (tmp_path / "fp" / "summary.json").exists()


def test_nan_policy_skip_drops_the_update_and_counts_it(tmp_path, monkeypatch):
  from mdsnn_jax.train import loop
  from mdsnn_jax.train.checkpoint import load_variables
  monkeypatch.setattr(loop.data_lib, "make_train_stream", _nan_stream(7))
  out = loop.train_and_evaluate(_config(nan_policy="skip"), tmp_path)
  assert out["fp"]["skipped_updates"] == 1
  params = load_variables(tmp_path / "fp" / "final_variables")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  # Every NaN step over the limit stops the run.
  monkeypatch.undo()
  monkeypatch.setattr(loop.data_lib, "make_train_stream", _nan_stream(None))
  with pytest.raises(loop.DivergenceError, match="exceed train.max_skipped=2"):
    loop.train_and_evaluate(_config(nan_policy="skip", max_skipped=2), tmp_path / "all_nan")


def test_the_guarded_update_keeps_state_and_advances_the_step():
  import jax.numpy as jnp
  import optax
  from mdsnn_jax.train.state import TrainState
  v = {"params": {"w": jnp.ones(3)}}
  s = TrainState.create(variables=v, tx=optax.sgd(0.1))
  bad = s.apply_gradients({"w": jnp.full(3, 2.0)} and ({"w": jnp.full(3, 2.0)}, {}),
                          batch_stats={}, quant_state={}, apply=jnp.bool_(False))
  np.testing.assert_array_equal(bad.params["w"], 1.0)
  assert int(bad.step) == 1 and int(bad.skipped) == 1
  good = s.apply_gradients(({"w": jnp.full(3, 2.0)}, {}), batch_stats={}, quant_state={},
                           apply=jnp.bool_(True))
  np.testing.assert_allclose(good.params["w"], 0.8)
  assert int(good.skipped) == 0


def _unfinish(stage_dir: pathlib.Path):
  """Make a finished stage look interrupted after its last checkpoint."""
  import shutil
  (stage_dir / "summary.json").unlink()
  shutil.rmtree(stage_dir / "final_variables")


def _corrupt(step_dir: pathlib.Path):
  for f in step_dir.rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
  from mdsnn_jax.train import loop
  cfg = _config(steps=20, checkpoint_every=10, keep_checkpoints=3)
  loop.train_and_evaluate(cfg, tmp_path / "straight")
  work = tmp_path / "damaged"
  loop.train_and_evaluate(cfg, work)
  _unfinish(work / "fp")
  _corrupt(work / "fp" / "checkpoints" / "20")
  out = loop.train_and_evaluate(cfg, work)
  assert out["fp"]["resumed_from_step"] == 10
  assert "checkpoint of step 20" in capsys.readouterr().out
  for (p, x), (_, y) in zip(_leaves(tmp_path / "straight" / "fp"), _leaves(work / "fp")):
    np.testing.assert_array_equal(x, y, err_msg=p)
  # None restorable: a clear error naming the folder.
  _unfinish(work / "fp")
  for step_dir in (work / "fp" / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      _corrupt(step_dir)
  with pytest.raises(RuntimeError, match=r"no checkpoint in .*damaged/fp/checkpoints can be restored"):
    loop.train_and_evaluate(cfg, work)


def test_changed_model_or_optimizer_is_refused_before_any_step(tmp_path):
  from mdsnn_jax.train import loop
  cfg = _config(steps=10)
  loop.train_and_evaluate(cfg, tmp_path)
  _unfinish(tmp_path / "fp")  # unfinished: a resume would load the checkpoint
  before = (tmp_path / "fp" / "metrics.jsonl").read_text()
  changed = _config(steps=10)
  changed.model.name = "digits_cnn"
  changed.optim.name = "sgd"
  with pytest.raises(loop.StaleRunError, match=r"model.name: 'digits_mlp' -> 'digits_cnn'.*"
                                               r"optim.name: 'adam' -> 'sgd'.*--overwrite"):
    loop.train_and_evaluate(changed, tmp_path)
  assert (tmp_path / "fp" / "metrics.jsonl").read_text() == before


def test_second_run_in_the_same_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
  from mdsnn_jax.train import loop
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                "since": time.time()}))
    with pytest.raises(loop.WorkdirLockedError, match=f"pid {holder.pid} on host"):
      loop.train_and_evaluate(_config(steps=5), tmp_path)
  finally:
    holder.kill()
    holder.wait()
  # The holder is dead now: its lock is stale and taken over with a warning.
  loop.train_and_evaluate(_config(steps=5), tmp_path)
  assert "stale lock" in capsys.readouterr().out
  assert not (tmp_path / ".lock").exists()  # released at the end


@pytest.mark.integration
def test_documented_multihost_command_runs_as_written(tmp_path):
  """The launcher guide's two-process command, exactly as written (only the port, made free,
  and the workdir, made temporary, are replaced): both processes exit 0 and the report is
  written."""
  import re
  guide = (REPO / "docs" / "launcher.md").read_text()
  block = guide.split("## Several devices and several hosts", 1)[1].split("```bash", 1)[1]
  block = block.split("```", 1)[0]
  joined = block.strip().replace("\\\n", " ")  # line continuations
  commands = [" ".join(line.split()) for line in joined.splitlines() if line.strip()]
  assert len(commands) == 2 and all("--config.distributed.initialize=True" in c for c in commands)
  port = _free_port()
  procs = []
  for c in commands:
    c = c.replace("127.0.0.1:12355", f"127.0.0.1:{port}").replace("/tmp/mdsnn_2proc",
                                                                    str(tmp_path / "run"))
    argv = [sys.executable if a == "python" else a for a in c.split()]
    procs.append(subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert (tmp_path / "run" / "report" / "report.md").is_file()
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["stages"]["md"]["num_processes"] == 2
  assert re.search(r"\[md\] final test accuracy \d+\.\d\d %", outs[0])
