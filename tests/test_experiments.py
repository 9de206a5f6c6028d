"""The MD evidence drivers: launch/md_table.py and launch/md_ablation.py (the table runner on
tables md_evidence and md_ablation with a --config)."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mdsnn_jax import distill
from mdsnn_jax.train import reproduce, tables
from mdsnn_jax.train.experiments import METHODS, paired_delta, parse_methods

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(path: str):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, REPO / path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_paired_delta_against_hand_numbers():
  d = paired_delta([52.0, 50.0, 51.0], [50.0, 51.0, 48.0])
  assert d["delta"] == [2.0, -1.0, 3.0] and d["positive"] == 2 and d["n"] == 3
  np.testing.assert_allclose(d["mean"], 4.0 / 3)
  np.testing.assert_allclose(d["std"], np.sqrt(((2 - 4 / 3)**2 + (-1 - 4 / 3)**2 + (3 - 4 / 3)**2) / 2))
  assert paired_delta([1.0], [0.5])["std"] == 0.0
  with pytest.raises(ValueError, match="equal-length"):
    paired_delta([1.0, 2.0], [1.0])


def test_parse_methods_rejects_unknown_names():
  assert parse_methods("none,md,") == ["none", "md"]
  with pytest.raises(ValueError, match=r"\['kd'\].*known"):
    parse_methods("none,kd")


def test_every_ablation_variant_fits_the_md_cifar10_model():
  """Catches a typo in a variant before it costs an hour of CPU: every override names an
  existing config field, every distilled layer is a tap of the VGG-9 student, every row is
  paired with a no-KD run, and every variant can run on the md_cifar10 config."""
  base = _load("launch/configs/md_cifar10.py").get_config()
  taps = tables.model_taps(base)
  assert len(taps) == 7, taps
  table = tables.MD_ABLATION
  for name, (method, overrides, what, baseline) in tables.ABLATION_VARIANTS.items():
    assert method in METHODS and what, name
    assert tables.ABLATION_VARIANTS[baseline][0] == "none", (name, baseline)
    assert tables.baseline_of(table, name) == baseline
    row = next(r for r in table.rows if r.key == name)
    cfg = tables.student_config(base, row, taps)
    for dotted, value in overrides.items():
      node = cfg
      for part in dotted.split("."):
        node = node[part]
      if isinstance(value, tables.LifTaps):
        value = value.resolve(taps)
      assert node == value, (name, dotted)
    for key in ("layers", "feature_layers"):
      spec = cfg.distill[key]
      if spec != "all":
        # raises, listing the taps, if one is wrong
        distill.select_taps({t: np.zeros(1) for t in taps}, spec.split(","))
  dataset = reproduce.config_dataset(base)
  configs, notes = tables.plan(table, dataset)
  assert notes == {} and set(configs) == {"teacher", *tables.ABLATION_VARIANTS}


def test_versatile_teacher_variants_run_only_beside_their_teacher_t():
  """T1_* students distil a T = 2 teacher: with a T = 4 config the table's teacher runs at
  T = 4, so those rows are listed as not run, saying why; the others still run."""
  base = _load("launch/configs/md_cifar10.py").get_config()  # T = 2
  _, notes = tables.plan(tables.MD_ABLATION, reproduce.config_dataset(base))
  assert "T1_mdonly_window" not in notes
  base.model.timesteps = 4
  _, notes = tables.plan(tables.MD_ABLATION, reproduce.config_dataset(base))
  assert set(notes) == {"T1_mdonly_prefix", "T1_mdonly_window"}, notes
  assert "needs a teacher at T = 2, but this table's teacher runs at T = 4" in notes["T1_mdonly_window"]


def test_row_overrides_reject_unknown_fields():
  base = _load("launch/configs/md_cifar10.py").get_config()
  with pytest.raises(KeyError):
    tables.student_config(base, tables.Row("x", "x", "student", "md", (("distill.alpah", 2.0),)))


def test_select_rows_adds_what_the_rows_need_and_names_the_allowed_ones():
  keys = [r.key for r in tables.select_rows(tables.MD_EVIDENCE, ["md"]).rows]
  assert keys == ["fp", "none", "md"]  # the teacher and md's no-KD baseline
  keys = [r.key for r in tables.select_rows(tables.MD_EVIDENCE, ["ptq_sym"]).rows]
  assert keys == ["fp", "ptq_sym", "none_sym"]  # the PTQ row's source student
  assert [r.key for r in tables.select_rows(tables.MD_EVIDENCE, None).rows] == list(
      tables.MD_EVIDENCE.default_rows)
  with pytest.raises(ValueError, match=r"unknown rows \['kd'\] of table 'md_evidence'; allowed: "
                                       r"\['fp', 'ptq', 'none'"):
    tables.select_rows(tables.MD_EVIDENCE, ["md", "kd"])


def _run(args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return res.stdout


TINY = ["--config=launch/configs/default.py", "--config.model.name=digits_mlp",
        "--config.model.timesteps=2", "--config.train.steps=20", "--config.train.global_batch=32",
        "--config.train.eval_batch=64", "--config.train.log_every=10", "--config.report=False"]


def _rows(path: pathlib.Path) -> dict:
  return {r["key"]: r for r in json.loads(path.read_text())["datasets"][0]["rows"]}


@pytest.mark.integration
def test_md_table_and_ablation_end_to_end_on_digits(tmp_path):
  """Both are the table runner on a config: md_table's rows are its methods (with the FP
  teacher and PTQ), the ablation's its variants, sharing md_table's teacher."""
  out = _run(["launch/md_table.py", *TINY, f"--workdir={tmp_path}", "--seeds=0",
              "--methods=none,md"])
  rows = _rows(tmp_path / "table.json")
  assert list(rows) == ["fp", "ptq", "none", "md"]
  assert 0 < rows["fp"]["accuracy"][0] <= 100 and rows["ptq"]["available"]
  assert "QAT + MD" in out
  assert f"Full table: {tmp_path}/table.md (.json, .csv, .png)" in out
  for ext in ("md", "csv", "png"):
    assert (tmp_path / f"table.{ext}").stat().st_size > 0
  np.testing.assert_allclose(rows["md"]["delta_vs_baseline"]["delta"],
                             [rows["md"]["accuracy"][0] - rows["none"]["accuracy"][0]])
  assert rows["none"]["delta_vs_baseline"] is None and rows["fp"]["delta_vs_baseline"] is None
  # The students ran where md_table always put them, from the one teacher.
  summary = json.loads((tmp_path / "md_seed0" / "md" / "summary.json").read_text())
  assert summary["test_accuracy"] == rows["md"]["accuracy"][0]
  stored = json.loads((tmp_path / "md_seed0" / "md" / "config.json").read_text())
  assert stored["config"]["distill"]["teacher_workdir"] == str(tmp_path / "teacher" / "fp")
  # The ablation reuses the table's teacher and pairs Δ with its own no-KD student.
  teacher_mtime = (tmp_path / "teacher" / "fp" / "summary.json").stat().st_mtime
  _run(["launch/md_ablation.py", *TINY, f"--workdir={tmp_path}", "--seeds=0",
        "--variants=mdonly_a10,T1_mdonly_window,mdonly_late"])
  assert (tmp_path / "teacher" / "fp" / "summary.json").stat().st_mtime == teacher_mtime
  rows = _rows(tmp_path / "ablation.json")
  assert list(rows) == ["fp", "none", "mdonly_a10", "mdonly_late", "T1_none", "T1_mdonly_window"]
  none = json.loads((tmp_path / "abl_none_seed0" / "qat" / "summary.json").read_text())
  np.testing.assert_allclose(rows["mdonly_a10"]["delta_vs_baseline"]["delta"][0],
                             rows["mdonly_a10"]["accuracy"][0] - none["test_accuracy"],
                             atol=1e-9)
  assert rows["T1_mdonly_window"]["baseline"] == "T1_none"
  # The digits MLP has one LIF layer: the last-two-layers variant is listed, not run.
  assert not rows["mdonly_late"]["available"]
  assert "needs at least 3 LIF layers" in rows["mdonly_late"]["note"]
  summary = json.loads((tmp_path / "abl_T1_mdonly_window_seed0" / "md" / "summary.json").read_text())
  assert summary["final_train_metrics"]["md"] > 0
  # A second command reads every run back: the same numbers, nothing retrained.
  before = (tmp_path / "ablation.json").read_text()
  _run(["launch/md_ablation.py", *TINY, f"--workdir={tmp_path}", "--seeds=0",
        "--variants=mdonly_a10,T1_mdonly_window,mdonly_late"])
  again = _rows(tmp_path / "ablation.json")
  assert [r.get("accuracy") for r in again.values()] == [r.get("accuracy") for r in rows.values()]
  assert json.loads(before)["datasets"][0]["training_seconds"] == json.loads(
      (tmp_path / "ablation.json").read_text())["datasets"][0]["training_seconds"]
