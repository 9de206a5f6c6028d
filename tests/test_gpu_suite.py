"""bench/gpu_suite.sh --dry-run runs every piece at toy size on CPU and prints one table."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest


REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_gpu_suite_dry_run(tmp_path):
  """CI runs the dry run (bounded by its time budget: under two minutes)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable,
         "PYTHONPATH": str(REPO)}
  out = subprocess.run(["bash", "bench/gpu_suite.sh", "--dry-run", "--out", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  table = [l for l in out.stdout.splitlines() if l.startswith("|")]
  assert table[0].startswith("| piece |")
  text = "\n".join(table)
  for piece in ("LIF n=64", "vgg9 FP step", "input pipeline (digits", "digits quickstart",
                "md_snn gpu_short"):
    assert piece in text, text
  assert "mdsnn-jax lif fused" in text and "launch/train.py: ok" in text, text
  # The step table: every model x kind in float32 and one bfloat16 row, each either timed
  # or cut by the time budget (never a failure); the first one always runs.
  models = ("vgg9", "msresnet18", "msresnet19", "resnet19_spquant", "resnet18")
  steps = [[c.strip() for c in l.strip("|").split("|")] for l in table
           if l.split("|")[1].strip() in models]
  assert [(r[0], r[1], r[2]) for r in steps] == [
      (m, k, "float32") for m in ("vgg9", "msresnet18", "msresnet19")
      for k in ("fp", "qat", "md")] + [("vgg9", "fp", "bfloat16"),
                                      ("resnet19_spquant", "qat", "float32"),
                                      ("resnet19_spquant", "fp", "float32"),
                                      ("resnet18", "fp", "float32")]
  for r in steps:
    assert (r[8] == "" and float(r[4]) > 0 and float(r[6]) > 0) or r[8] == (
        "skipped: time budget spent"), r
  assert steps[0][8] == "", steps[0]
  # missing optional libraries give 'skipped' rows, never a crash
  data = json.loads((tmp_path / "gpu_suite_dry_run.json").read_text())
  assert data["dry_run"] and data["provenance"]["machine"]["cpu"]


def test_gpu_suite_rejects_unknown_argument():
  out = subprocess.run(["bash", "bench/gpu_suite.sh", "--bogus"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 2 and "unknown argument --bogus" in out.stderr


@pytest.mark.integration
def test_bench_md_step_has_no_teacher_backward():
  """bench/train_step.py's MD step: its convolutions are the QAT student step's plus one
  teacher forward's (no teacher backward, no residuals kept for it)."""
  sys.path.insert(0, str(REPO / "bench"))
  try:
    import train_step
  finally:
    sys.path.remove(str(REPO / "bench"))
  ok, counts = train_step.teacher_has_no_backward()
  assert counts["teacher_forward"] == 7 and counts["qat"] > counts["teacher_forward"], counts
  assert ok, counts


def test_gpu_short_row_runs_only_the_first_named_dataset(tmp_path, monkeypatch):
  """The suite's gpu_short piece runs md_snn on the first dataset --data_root names (a dataset
  takes about 6 minutes of the call's 9), asking the launcher for that dataset alone."""
  sys.path.insert(0, str(REPO / "bench"))
  try:
    import gpu_suite
  finally:
    sys.path.pop(0)
  calls = []

  def fake_run(cmd, **kwargs):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(gpu_suite.subprocess, "run", fake_run)
  roots = f"cifar10={tmp_path / 'c10'},cifar100={tmp_path / 'c100'}"
  piece, status, _, _ = gpu_suite.gpu_short_row(roots, False, 300.0)
  assert piece == "md_snn gpu_short cifar10, seed 0" and status == "launch/reproduce.py: ok"
  (cmd,) = calls
  assert cmd[1:] == ["launch/reproduce.py", "--table=md_snn", "--scale=gpu_short", "--seeds=0",
                     cmd[5], "--datasets=cifar10", f"--data_root=cifar10={tmp_path / 'c10'}"]
  assert cmd[5].startswith("--workdir=")
  assert gpu_suite.gpu_short_row("", False, 300.0)[1] == "skipped (no --data_root given)"
  assert calls == [cmd]
