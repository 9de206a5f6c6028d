"""The launcher as a new user meets it: every check before training, no stale result reused,
and output a person can act on. One test per problem a review found."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.name=digits_mlp", "--config.model.timesteps=2",
        "--config.train.global_batch=32", "--config.train.eval_batch=64",
        "--config.train.log_every=5", "--config.train.checkpoint_every=10"]


def _launch(script, *args, env=None, timeout=600):
  full_env = {k: v for k, v in os.environ.items() if k != "MDSNN_TRACEBACK"}
  full_env.update({"JAX_PLATFORMS": "cpu", **(env or {})})
  return subprocess.run([sys.executable, script, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def _train(workdir, *args, config="launch/configs/default.py:fp", **kw):
  return _launch("launch/train.py", f"--config={config}", f"--workdir={workdir}", *TINY, *args,
                 **kw)


def _ok(res):
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return res


def _config(stages="fp", **fields):
  from mdsnn_jax.train.config import base_config, set_quant
  c = base_config()
  c.stages = stages
  c.model.name = "digits_mlp"
  c.model.timesteps = 2
  c.report = False
  set_quant(c, "weight", "lsq", bits=2)
  set_quant(c, "membrane", "ternary")
  c.train.update(dict(global_batch=32, eval_batch=64, steps=10, log_every=5,
                      checkpoint_every=10, eval_ptq=False))
  c.update_from_flattened_dict(fields)  # dotted names, e.g. **{"optim.lr": 1e-2}
  return c


# ------------------------------------------------------- 2. errors come before any work
BAD = [
    ("model.quant.weight.kind", "lsqq", r"unknown quantizer kind 'lsqq'.*allowed"),
    ("model.quant.weight.bits", 0, r"model.quant.weight: bits must be an int in 2..16, got 0"),
    ("model.quant.membrane.kind", "binary", r"unknown quantizer kind 'binary'.*allowed"),
    ("distill.layers", "lif1,lif7", r"tap\(s\) \['lif7'\] not found; available taps"),
    ("distill.align", "mean", r"unknown distill.align 'mean'; allowed: \['prefix', 'window_mean'\]"),
    ("distill.alpha", -1.0, r"distill.alpha must be a finite number >= 0, got -1"),
    ("distill.temperature", 0.0, r"distill.temperature must be > 0, got 0"),
    ("distill.teacher_timesteps", 1, r"teacher_timesteps=1 is fewer than the student's "
                                     r"model.timesteps=2"),
    ("train.log_every", 0, r"train.log_every must be an int >= 1, got 0"),
    ("train.checkpoint_every", 0, r"train.checkpoint_every must be an int >= 1, got 0"),
    ("train.steps", 0, r"train.steps must be an int >= 1, got 0"),
    ("train.global_batch", 4096, r"global_batch=4096 is larger than the 1438 training examples"),
    ("train.nan_policy", "ignore", r"unknown train.nan_policy 'ignore'; allowed"),
]


@pytest.mark.parametrize("field,value,message", BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD])
def test_bad_config_fails_in_the_check_before_any_stage_folder(tmp_path, field, value, message):
  from mdsnn_jax.train import loop
  cfg = _config("fp,qat,md", **{field: value})
  with pytest.raises((ValueError, KeyError), match=message):
    loop.train_and_evaluate(cfg, tmp_path / "w")
  assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


@pytest.mark.integration
def test_check_flag_and_one_line_errors(tmp_path):
  res = _ok(_train(tmp_path, "--check", config="launch/configs/default.py:fp,md"))
  assert "fp: train" in res.stdout and "md: train" in res.stdout and "check passed" in res.stdout
  assert not (tmp_path / "fp").exists()
  res = _train(tmp_path, "--config.distill.layers=lif1,lif7",
               config="launch/configs/default.py:fp,md")
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # exactly one line
  assert res.stderr.startswith("error: tap(s) ['lif7'] not found; available taps:")
  res = _train(tmp_path, "--config.train.stepz=5")  # a misspelled field
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert "unknown config field 'stepz'" in res.stderr and 'Did you mean "steps"' in res.stderr
  res = _train(tmp_path, "--config.train.log_every=0", env={"MDSNN_TRACEBACK": "1"})
  assert res.returncode == 2 and "Traceback" in res.stderr


@pytest.mark.integration
def test_help_lists_every_config_field_and_exits_0_and_print_config():
  res = _ok(_launch("launch/train.py", "--config=launch/configs/default.py", "--helpfull"))
  assert "--config.model.quant.first_layer.bits: int = None" in res.stdout
  assert "--config.train.steps: int = 400" in res.stdout
  res = _ok(_launch("launch/train.py", "--config=launch/configs/default.py", "--print_config"))
  assert "steps: 400" in res.stdout


# ------------------------------------------------- 1. + 3. stale results, identical re-runs
@pytest.mark.integration
def test_rerun_skips_refuses_and_overwrites(tmp_path):
  args = ("--config.train.steps=10", "--config.report=False")
  _ok(_train(tmp_path, *args, config="launch/configs/default.py:fp,qat"))
  files = {p: p.stat().st_mtime_ns for p in (tmp_path / "fp").rglob("*") if p.is_file()}
  metrics = (tmp_path / "qat" / "metrics.jsonl").read_text()
  # Identical: every stage skipped, nothing in the stage folders touched.
  res = _ok(_train(tmp_path, *args, config="launch/configs/default.py:fp,qat"))
  assert "fp: skip, qat: skip" in res.stdout
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "fp").rglob("*") if p.is_file()} == files
  assert (tmp_path / "qat" / "metrics.jsonl").read_text() == metrics
  # Changed: refused with the differing fields, before any step.
  res = _train(tmp_path, *args, "--config.model.quant.weight.bits=4", "--config.optim.lr=1e-2",
               config="launch/configs/default.py:fp,qat")
  assert res.returncode == 2
  assert "optim.lr: 0.002 -> 0.01" in res.stderr and "--overwrite" in res.stderr
  res = _train(tmp_path, "--config.train.steps=20", "--config.report=False")
  assert res.returncode == 2 and "train.steps: 10 -> 20" in res.stderr
  # --overwrite: that stage and the ones after it retrain under the new config.
  res = _ok(_train(tmp_path, *args, "--config.model.quant.weight.bits=4", "--overwrite",
                   config="launch/configs/default.py:fp,qat"))
  assert "fp: skip, qat: restart" in res.stdout
  stored = json.loads((tmp_path / "qat" / "config.json").read_text())
  assert stored["result"]["model"]["quant"]["weight"]["bits"] == 4
  assert json.loads((tmp_path / "qat" / "summary.json").read_text())["resumed_from_step"] is None


@pytest.mark.integration
def test_md_table_refuses_a_changed_config_instead_of_reusing_old_runs(tmp_path):
  table = ["launch/md_table.py", "--config=launch/configs/default.py", *TINY,
           "--config.report=False", f"--workdir={tmp_path}", "--seeds=0", "--methods=none"]
  res = _ok(_launch(*table, "--config.train.steps=10"))
  assert "[none_seed0 qat]" in res.stdout  # progress lines name the run and the seed
  assert len((res.stdout + res.stderr).splitlines()) < 40, res.stdout + res.stderr  # no INFO spam
  res = _launch(*table, "--config.train.steps=12")
  assert res.returncode == 2 and "train.steps: 10 -> 12" in res.stderr


# ----------------------------------------------------------------- 4. metrics.jsonl
def test_fresh_start_resets_metrics_and_a_cut_line_is_not_glued(tmp_path):
  from mdsnn_jax.train import loop
  from mdsnn_jax.train.metrics import read_metrics
  (tmp_path / "fp").mkdir(parents=True)
  (tmp_path / "fp" / "metrics.jsonl").write_text('{"step": 25}\n{"step": 50}\n{"step": 7')
  # An interrupted run with no checkpoint: the folder holds only old metrics. The stored
  # config is absent, so it is refused unless overwritten.
  with pytest.raises(loop.StaleRunError):
    loop.train_and_evaluate(_config(), tmp_path)
  loop.train_and_evaluate(_config(), tmp_path, overwrite=True)
  steps = [r["step"] for r in read_metrics(tmp_path / "fp" / "metrics.jsonl")]
  assert steps == sorted(steps) and 25 not in steps, steps
  # A fresh run over a stage folder with the same config but no checkpoint yet.
  import shutil
  for p in ("checkpoints", "final_variables", "summary.json"):
    q = tmp_path / "fp" / p
    shutil.rmtree(q) if q.is_dir() else q.unlink()
  with open(tmp_path / "fp" / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "cut')
  loop.train_and_evaluate(_config(), tmp_path)
  lines = (tmp_path / "fp" / "metrics.jsonl").read_text().splitlines()
  assert all(json.loads(l) for l in lines)  # every line parses: nothing glued
  assert [json.loads(l)["step"] for l in lines][0] == 5


# ------------------------------------------------------------------ 5. the teacher
@pytest.mark.integration
def test_teacher_workdir_forms_its_own_config_and_ambiguity(tmp_path):
  from mdsnn_jax.train import loop
  teacher = tmp_path / "teacher"
  loop.train_and_evaluate(_config("fp"), teacher)
  for given in (teacher, teacher / "fp"):  # the workdir or its fp folder
    cfg = _config("qat", **{"distill.teacher_workdir": str(given)})
    plans = loop.check(cfg, tmp_path / f"s_{given.name}")
    assert plans[0].teacher_dir == teacher / "fp"
  # A student with a learnable threshold loads a plain FP teacher (built from its own config).
  cfg = _config("md", **{"distill.teacher_workdir": str(teacher),
                         "model.neuron.learn_threshold": True})
  out = loop.train_and_evaluate(cfg, tmp_path / "student")
  assert out["md"]["test_accuracy"] > 0
  # fp in the stages and a teacher_workdir elsewhere: ambiguous, refused.
  cfg = _config("fp,md", **{"distill.teacher_workdir": str(teacher)})
  with pytest.raises(ValueError, match="trains a teacher .* distill.teacher_workdir"):
    loop.check(cfg, tmp_path / "both")
  # The teacher's saved structure must match what its stored config builds.
  stored = json.loads((teacher / "fp" / "config.json").read_text())
  stored["result"]["model"]["name"] = "digits_cnn"
  (teacher / "fp" / "config.json").write_text(json.dumps(stored))
  with pytest.raises(ValueError, match="does not match the model its config builds"):
    loop.check(_config("md", **{"distill.teacher_workdir": str(teacher)}), tmp_path / "x")


# ------------------------------------------------------------ 7. what a person reads
def test_progress_line_units_and_significant_digits():
  from mdsnn_jax.train.metrics import format_progress, pct, sig
  line = format_progress(120, 500, {"loss": 0.41, "md_temporal": 1.2e-5, "accuracy": 91.4},
                         35.2, 30.0)
  assert "md_temporal 1.2e-05" in line and "train acc 91.40 %" in line
  assert "ETA 0:00:12" in line  # (500 − 120) / 30 steps/s: the overall rate after compiling
  assert "compiling" in format_progress(1, 10, {"loss": 1.0}, 0.0)
  assert sig(0.00001234) == "1.234e-05" and sig(0.0) == "0" and pct(97.2131) == "97.21 %"


def test_report_accuracy_columns_say_test_accuracy_in_percent(tmp_path):
  from mdsnn_jax.report import build_report
  from mdsnn_jax.train import loop
  loop.train_and_evaluate(_config("fp"), tmp_path)
  report = build_report(tmp_path, tmp_path / "report", max_batches=1)
  md = (tmp_path / "report" / "report.md").read_text()
  assert "test accuracy (%), end of training" in md and "accuracy (training)" not in md
  summary = json.loads((tmp_path / "fp" / "summary.json").read_text())
  assert summary["accuracy_unit"] == "percent" and 1 < summary["test_accuracy"] <= 100
  assert 1 < report["stages"]["fp"]["accuracy_measured"] <= 100


# ------------------------------------------------------- 8. ablation taps by position
def test_ablation_variants_name_taps_relative_to_the_model():
  from mdsnn_jax.train import tables
  vgg = [f"lif{i}" for i in range(7)]
  assert tables.LAST2.resolve(vgg) == "lif5,lif6"
  assert tables.EARLY2.resolve(vgg) == "lif1,lif2"
  assert tables.LAST3.resolve(["a", "b", "c", "d", "e"]) == "c,d,e"
  with pytest.raises(ValueError, match=r"needs at least 4 LIF layers, but the model has 2: "
                                       r"\['lif0', 'lif1'\]"):
    tables.EARLY2.resolve(["lif0", "lif1"])
  taps = tables.model_taps(_config("md"))  # the digits MLP has one hidden LIF layer
  assert taps == ["lif1"]
  row = tables.Row("late", "late", "student", "mdonly",
                   (("distill.layers", tables.LifTaps(-1, None, 1)),))
  assert tables.student_config(_config("md"), row).distill.layers == "lif1"
  row = tables.Row("late2", "late2", "student", "mdonly", (("distill.layers", tables.LAST2),))
  with pytest.raises(ValueError, match=r"needs at least 3 LIF layers, but the model has 1"):
    tables.student_config(_config("md"), row)


def test_a_field_added_as_none_does_not_make_a_stored_run_stale():
  from mdsnn_jax.train.stages import diff_fields

  stored = {"data": {"name": "cifar10"}, "model": {"neuron": {"prune_prior": None}}}
  # A field the stored run predates, switched off (None), or None stored and now gone: the same run.
  assert diff_fields(stored, {"data": {"name": "cifar10", "test_subset": None},
                              "model": {"neuron": {}}}) == []
  # Switched on, it is a different run; so is a real change next to it.
  assert diff_fields(stored, {"data": {"name": "cifar10", "test_subset": 2000},
                              "model": {"neuron": {"prune_prior": -0.8}}}) == [
      "data.test_subset: (absent) -> 2000", "model.neuron.prune_prior: None -> -0.8"]
  assert diff_fields({"a": 1}, {}) == ["a: 1 -> (absent)"]
