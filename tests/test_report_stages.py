"""The report rebuilds every stage as it was trained, marks the students of a retrained teacher
stale, and is rebuilt only when a stage changed; a workdir keeps its identity when it is moved,
copied, symlinked or typed relatively."""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def three_commands(tmp_path_factory, digits_stages_config):
  """fp; then qat at 4 bits; then md at the config's 2 bits: three commands, one workdir."""
  from mdsnn_jax.train import loop
  w = tmp_path_factory.mktemp("stages") / "w1"
  loop.train_and_evaluate(digits_stages_config("fp"), w)
  loop.train_and_evaluate(digits_stages_config("qat", **{"model.quant.weight.bits": 4}), w)
  loop.train_and_evaluate(digits_stages_config("md"), w)
  return w


def test_report_builds_each_stage_from_its_own_config(three_commands, tmp_path):
  from mdsnn_jax import report as rep
  w = tmp_path / "w"
  shutil.copytree(three_commands, w)
  report = rep.build_report(w, saliency_examples=0)
  stages = report["stages"]
  # The bits each stage was trained with, not those of the last command (md at 2 bits).
  assert (stages["fp"]["weight_bits"], stages["qat"]["weight_bits"],
          stages["md"]["weight_bits"]) == (16, 4, 2)
  for s in ("fp", "qat", "md"):
    trained = json.loads((w / s / "summary.json").read_text())["test_accuracy"]
    # The whole test split, re-measured on the model as trained: the number training printed.
    assert stages[s]["accuracy_measured"] == pytest.approx(trained, abs=1e-6), s
    assert stages[s]["stale"] is None
  assert set(report["emd"]) == {"qat", "md"}


def test_report_rebuilt_only_when_a_stage_changed(three_commands, tmp_path):
  from mdsnn_jax import report as rep
  w = tmp_path / "w"
  shutil.copytree(three_commands, w)
  first = rep.build_report(w, saliency_examples=0, max_batches=1)
  stamp = (w / "report" / "report.json").stat().st_mtime_ns
  again = rep.build_report(w, saliency_examples=0, max_batches=1, only_if_changed=True)
  assert again == first and (w / "report" / "report.json").stat().st_mtime_ns == stamp
  # Other options, or a stage's summary rewritten: built again.
  assert not rep.report_is_current(w, max_batches=2, eval_batch=None, saliency_examples=0,
                                   saliency_k=10.0)
  summary = json.loads((w / "md" / "summary.json").read_text())
  summary["wall_seconds"] += 1
  (w / "md" / "summary.json").write_text(json.dumps(summary))
  rep.build_report(w, saliency_examples=0, max_batches=1, only_if_changed=True)
  assert (w / "report" / "report.json").stat().st_mtime_ns != stamp


def test_students_of_a_retrained_teacher_are_stale(three_commands, tmp_path, digits_stages_config):
  from mdsnn_jax import report as rep
  from mdsnn_jax.train import loop
  w = tmp_path / "w"
  shutil.copytree(three_commands, w)
  loop.train_and_evaluate(digits_stages_config("fp", **{"optim.lr": 1e-2}), w, overwrite=True)
  report = rep.build_report(w, saliency_examples=8, max_batches=1)
  for s in ("qat", "md"):
    assert "optim.lr: 0.002 -> 0.01" in report["stages"][s]["stale"], report["stages"][s]
  assert report["emd"] == {} and report["ratios"] == {} and report["saliency"] == {}
  md = (w / "report" / "report.md").read_text()
  assert "| qat (stale) |" in md and "**Stale**: md: its teacher fp was retrained" in md
  # Their own re-run refuses to skip them under the new teacher.
  with pytest.raises(loop.StaleRunError, match="teacher.result.optim.lr"):
    loop.check(digits_stages_config("md"), w)


def test_moved_copied_symlinked_and_relative_workdir_still_skips(
    three_commands, tmp_path, digits_stages_config):
  from mdsnn_jax.train import loop
  moved = tmp_path / "x" / "w1moved"
  shutil.copytree(three_commands, moved)
  stored = json.loads((moved / "md" / "config.json").read_text())
  assert stored["result"]["teacher"]["dir"] == "fp"  # relative: no trace of the old path
  link = tmp_path / "link"
  os.symlink(moved, link)
  sub = tmp_path / "x" / "a" / "b"
  sub.mkdir(parents=True)
  old_cwd = os.getcwd()
  try:
    os.chdir(sub)
    for workdir in (moved, link, pathlib.Path("../../w1moved")):
      plans = loop.check(digits_stages_config("fp,md"), workdir)
      assert [p.action for p in plans] == ["skip", "skip"], workdir
      qat4 = digits_stages_config("qat", **{"model.quant.weight.bits": 4})
      assert [p.action for p in loop.check(qat4, workdir)] == ["skip"]
  finally:
    os.chdir(old_cwd)


def test_teacher_outside_the_workdir_is_compared_by_content(
    three_commands, tmp_path, digits_stages_config):
  from mdsnn_jax.train import loop
  from mdsnn_jax.train import stages as stages_lib
  teacher = tmp_path / "teacher"
  shutil.copytree(three_commands / "fp", teacher / "fp")
  student = tmp_path / "student"
  cfg = digits_stages_config("md", **{"distill.teacher_workdir": str(teacher)})
  loop.train_and_evaluate(cfg, student)
  stored = json.loads((student / "md" / "config.json").read_text())["result"]["teacher"]
  assert "dir" not in stored
  assert stored["checksum"] == stages_lib.teacher_checksum(three_commands / "fp")
  # The same teacher at another path: the same run.
  elsewhere = tmp_path / "elsewhere"
  shutil.move(teacher, elsewhere)
  cfg = digits_stages_config("md", **{"distill.teacher_workdir": str(elsewhere)})
  assert [p.action for p in loop.check(cfg, student)] == ["skip"]
  assert stages_lib.stale_reason(student, "md") is not None  # the stored path is gone
  # Other weights under the same config: refused, and stale in the report.
  shutil.rmtree(elsewhere / "fp" / "final_variables")
  shutil.copytree(three_commands / "md" / "final_variables",
                  elsewhere / "fp" / "final_variables")
  with pytest.raises(loop.StaleRunError, match="teacher.checksum"):
    loop.check(cfg, student)


def test_variables_checksum_is_content_not_files(tmp_path):
  import jax.numpy as jnp
  from mdsnn_jax.train import checkpoint as ckpt
  from mdsnn_jax.train.stages import variables_checksum
  v = {"params": {"a": jnp.arange(6.0).reshape(2, 3)}, "batch_stats": {}, "quant_state": {}}
  ckpt.save_variables(tmp_path / "x", v)
  ckpt.save_variables(tmp_path / "y", v)  # other file names inside, same arrays
  cx = variables_checksum(ckpt.load_variables(tmp_path / "x"))
  assert cx == variables_checksum(ckpt.load_variables(tmp_path / "y")) == variables_checksum(v)
  w = {"params": {"a": jnp.arange(6.0).reshape(2, 3).at[0, 0].set(np.float32(1e-7))},
       "batch_stats": {}, "quant_state": {}}
  assert variables_checksum(w) != cx
