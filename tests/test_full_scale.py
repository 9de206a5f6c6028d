"""The full-scale and gpu_short paths on CPU, nothing downloaded: --data_root parsing and
refusal (miniature folders in the real formats), the pre-flight's one-pass problem list, the
CPU guard, the dry run, --precision, and gpu_short's configs with one real step."""
from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from mdsnn_jax.train import cost, preflight, reproduce, tables
from mdsnn_jax.train.config import base_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _launch(*args, script="launch/reproduce.py", timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "MDSNN_TRACEBACK"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def write_mini_cifar10(root: pathlib.Path, n_train: int = 20, n_test: int = 10) -> pathlib.Path:
  """cifar-10-batches-py/ with data_batch_1 and test_batch in the real pickle format."""
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    with open(folder / name, "wb") as f:
      pickle.dump({"data": data, "labels": [i % 10 for i in range(n)], "batch_label": "mini"},
                  f, protocol=2)
  return root


# ------------------------------------------------------------------------ data roots
def test_data_roots_parse_into_names_and_paths():
  assert preflight.parse_data_roots("cifar10=/a, ncaltech101=~/b") == {
      "cifar10": "/a", "ncaltech101": os.path.expanduser("~/b")}
  assert preflight.parse_data_roots("") == {}


@pytest.mark.parametrize("text,words", [
    ("cifar11=/a", ["unknown dataset 'cifar11'", "cifar10", "ncaltech101", "allowed"]),
    ("cifar10", ["'cifar10' is not NAME=PATH"]),
    ("cifar10=", ["'cifar10=' is not NAME=PATH"]),
    ("cifar10=/a,cifar10=/b", ["names 'cifar10' twice"]),
    ("digits=/a", ["unknown dataset 'digits'"]),
    (",", ["names no dataset"]),
])
def test_bad_data_roots_name_the_entry_and_what_is_allowed(text, words):
  with pytest.raises(ValueError) as e:
    preflight.parse_data_roots(text)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_a_root_without_the_real_split_sizes_is_refused(tmp_path):
  root = write_mini_cifar10(tmp_path)
  cfg = base_config()
  cfg.data.name, cfg.data.root = "cifar10", str(root)
  from mdsnn_jax import data as data_lib
  info = data_lib.dataset_info(cfg.data)
  why = preflight.real_size_problem(cfg.data, info)
  assert "20 train / 10 test" in why and "50,000 / 10,000" in why and str(root) in why
  # The real sizes pass (the counts are what the check reads).
  assert preflight.real_size_problem(cfg.data, info._replace(num_train=50_000, num_test=10_000)) is None


def test_full_configs_name_no_data_folder():
  """Nothing at full scale reads ../shared/data (a subset) unless --data_root says so."""
  for t in tables.TABLES.values():
    for scale in tables.ACCELERATOR_SCALES:
      for ds in t.datasets(scale):
        assert ds.build().data.root is None, (t.name, scale, ds.key)
        c = tables.with_settings(ds, roots={ds.build().data.name: "/x"}).build()
        assert c.data.root == "/x"


# ------------------------------------------------------------------- the pre-flight
def _tiny_full_table(root) -> tuple[tables.Table, tuple]:
  """md_evidence's fp / none / md rows on a digits MLP over 32×32×3 CIFAR-10 input: the
  full-scale checks at a size that traces in a second."""
  def build():
    c = tables._md_student(tables._smoke(base_config(), 2))
    c.data.name = "cifar10"
    c.data.root = None
    return c
  t = tables.select_rows(tables.MD_EVIDENCE, ["md"])
  ds = tables.Dataset("cifar10", "tiny", False, build)
  return t, (tables.with_settings(ds, roots={"cifar10": str(root)} if root else None),)


def test_preflight_lists_every_problem_in_one_pass_and_creates_nothing(tmp_path):
  root = write_mini_cifar10(tmp_path / "data", n_train=40)  # >= the global batch, 32
  t, datasets = _tiny_full_table(root)
  work = tmp_path / "w"
  with pytest.raises(preflight.PreflightError) as e:
    preflight.run_preflight(t, datasets, scale="full", workdir=work, seeds=[0, 1, 2],
                            roots={"cifar10": str(root), "cifar100": "/nowhere"})
  problems = e.value.problems
  assert len(problems) == 3, problems
  assert "backend is 'cpu'" in problems[0] and "--allow_cpu" in problems[0]
  assert "40 train / 10 test" in problems[1]
  assert "names cifar100, which table md_evidence" in problems[2] and "['cifar10']" in problems[2]
  assert not work.exists()


def test_preflight_names_a_missing_root_and_a_row_whose_step_does_not_trace(tmp_path):
  t, datasets = _tiny_full_table(None)
  bad = dataclasses.replace(t, rows=t.rows + (tables.Row("bad", "bad", "student", "md",
                                                         (("distill.layers", "nope"),)),))
  with pytest.raises(preflight.PreflightError) as e:
    preflight.run_preflight(bad, datasets, scale="full", workdir=tmp_path / "w", seeds=[0],
                            allow_cpu=True)
  problems = e.value.problems
  assert any("no --data_root for cifar10" in p for p in problems), problems
  assert any("cifar10 / bad: its train step does not trace" in p for p in problems), problems
  assert not (tmp_path / "w").exists()


def test_preflight_refuses_too_little_disk(tmp_path, monkeypatch):
  t, datasets = _tiny_full_table(None)
  monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
  with pytest.raises(preflight.PreflightError) as e:
    preflight.run_preflight(t, datasets, scale="smoke", workdir=tmp_path / "w", seeds=[0])
  assert any("GiB free, but the table's checkpoints need" in p for p in e.value.problems)


# -------------------------------------------------------------------------- CPU guard
def test_accelerator_scales_are_refused_on_cpu_unless_allowed():
  assert jax.default_backend() == "cpu"
  for scale in tables.ACCELERATOR_SCALES:
    why = preflight.check_backend(scale, allow_cpu=False)
    assert f"--scale={scale}" in why and "'cpu'" in why and "--allow_cpu" in why
    assert preflight.check_backend(scale, allow_cpu=True) is None
  assert preflight.check_backend("smoke", allow_cpu=False) is None
  assert preflight.check_backend("cpu", allow_cpu=False) is None


# -------------------------------------------------------------------------- precision
def test_precision_sets_every_runs_model_dtype():
  assert reproduce.parse_precision("bf16") == "bfloat16"
  assert reproduce.parse_precision("fp32") == "float32"
  assert reproduce.parse_precision(None) is None
  with pytest.raises(ValueError, match="unknown --precision 'fp16'; allowed"):
    reproduce.parse_precision("fp16")
  assert "logits" in reproduce.PRECISION_NOTE and "loss" in reproduce.PRECISION_NOTE
  for ds in tables.MD_SNN.datasets("gpu_short"):
    configs, _ = tables.plan(tables.MD_SNN, tables.with_settings(ds, dtype="bfloat16"))
    assert {c.model.dtype for c in configs.values()} == {"bfloat16"}


# -------------------------------------------------------------------------- gpu_short
def _result_fields(c):
  return (c.data.name, c.data.get("image_size"), c.data.get("timesteps"), c.data.augment,
          c.model.to_dict(), c.train.global_batch, c.optim.to_dict(), c.loss.to_dict())


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_gpu_short_is_full_scale_but_short(name):
  """Same datasets (full resolution), models, batches and losses as full; only the steps
  differ (`gpu_short_steps` of the dataset) and gpu_short evaluates at the end only."""
  t = tables.TABLES[name]
  for full, short in zip(t.datasets("full"), t.datasets("gpu_short")):
    ts, ss = tables.gpu_short_steps(full.key)
    assert full.key == short.key and short.description.startswith(full.description)
    fc, sc = tables.row_configs(t, full), tables.row_configs(t, short)
    assert fc.keys() == sc.keys()
    for k in fc:
      assert _result_fields(fc[k]) == _result_fields(sc[k]), k
      assert int(sc[k].train.steps) == (ss if not k.startswith("teacher") else int(sc[k].train.steps))
      assert int(sc[k].get("teacher_steps")) == ts


def _gpu_short_runs():
  """Per table and dataset, the last run of each stage (fp, qat, md): the most demanding of
  its kind in table order (the versatile MD row, the gated SpQuant row). Every other run's
  step is traced by the pre-flight of any table command, and at full scale by
  test_reproduce's batch-2 test."""
  out = []
  for name, t in sorted(tables.TABLES.items()):
    for entry in cost.plan_runs(t, "gpu_short"):
      ds, info, runs = entry
      last = {run.stage: run.key for run in runs}
      for key in last.values():
        out.append(pytest.param(name, ds.key, key, id=f"{name}-{ds.key}-{key}"))
  return out


@pytest.mark.parametrize("name,dataset,key", _gpu_short_runs())
def test_gpu_short_runs_trace_at_batch_2_for_1_step(name, dataset, key):
  """A gpu_short run's real train step at global batch 2 and 1 step, traced on the real
  dataset's shapes (the data itself is not here; a real step on data runs in
  test_gpu_short_teacher_trains_one_step_on_miniature_cifar10)."""
  entry = next(e for e in cost.plan_runs(tables.TABLES[name], "gpu_short") if e[0].key == dataset)
  _, info, runs = entry
  run = next(r for r in runs if r.key == key)
  cfg = copy.deepcopy(run.config)
  with cfg.unlocked():
    cfg.train.global_batch, cfg.train.steps = 2, 1
  run = dataclasses.replace(run, config=cfg, steps=1)
  fn, args = cost.step_program(run, info)
  assert args[1]["image"].shape[0] == 2
  _, metrics = jax.eval_shape(fn, *args)
  assert metrics["loss"].shape == ()


@pytest.mark.integration
def test_gpu_short_teacher_trains_one_step_on_miniature_cifar10(tmp_path):
  """md_evidence's gpu_short teacher (VGG-9 at full width, T = 2, CIFAR-10 at 32×32) through
  the real loop at batch 2 for 1 step, on a miniature CIFAR-10 folder in the real format."""
  root = write_mini_cifar10(tmp_path / "data", n_train=4, n_test=2)
  ds = tables.with_settings(tables.MD_EVIDENCE.datasets("gpu_short")[0],
                            roots={"cifar10": str(root)})
  cfg = ds.build()
  cfg.train.global_batch, cfg.teacher_steps, cfg.train.eval_batch = 2, 1, 2
  from mdsnn_jax.train import experiments
  summary = experiments.run_teacher(cfg, tmp_path / "w")
  assert summary["steps"] == 1 and np.isfinite(summary["test_accuracy"])


# ------------------------------------------------------------------ launcher, end to end
@pytest.mark.integration
def test_launcher_lists_every_preflight_problem_and_creates_no_run_folder(tmp_path):
  root = write_mini_cifar10(tmp_path / "data", n_train=200)  # >= the global batch, 128
  work = tmp_path / "w"
  res = _launch("--table=md_evidence", "--scale=full", "--rows=md", "--seeds=0,1,2",
                f"--data_root=cifar10={root},cifar100={tmp_path}", f"--workdir={work}",
                timeout=600)
  assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
  err = res.stderr.strip().splitlines()
  assert len(err) == 3 and all(e.startswith("error: ") for e in err), res.stderr
  assert "backend is 'cpu'" in err[0]
  assert "200 train / 10 test" in err[1] and "50,000 / 10,000" in err[1]
  assert "names cifar100" in err[2]
  assert not work.exists()


@pytest.mark.integration
def test_launcher_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
  work = tmp_path / "w"
  res = _launch("--table=spquant", "--scale=smoke", "--seeds=0", "--dry_run", "--devices=4",
                f"--workdir={work}", timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  assert "pre-flight passed" in out and "nothing was trained" in out
  for r in tables.SPQUANT.rows:
    assert r.key in out
  assert "40 steps" in out and "epochs" in out and "H100" in out and "per device at 4" in out
  assert not work.exists()


@pytest.mark.integration
def test_launcher_bad_data_root_is_one_error_line(tmp_path):
  res = _launch("--table=md_snn", "--scale=full", "--data_root=cifar11=/x",
                f"--workdir={tmp_path / 'w'}", timeout=300)
  assert res.returncode == 2
  err = res.stderr.strip().splitlines()
  assert len(err) == 1 and "unknown dataset 'cifar11'" in err[0] and "ncaltech101" in err[0]
  assert not (tmp_path / "w").exists()
