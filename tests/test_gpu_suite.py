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
  steps = [[c.strip() for c in l.strip("|").split("|")] for l in table
           if l.split("|")[1].strip() in ("vgg9", "msresnet18", "msresnet19")]
  assert [(r[0], r[1], r[2]) for r in steps] == [
      (m, k, "float32") for m in ("vgg9", "msresnet18", "msresnet19")
      for k in ("fp", "qat", "md")] + [("vgg9", "fp", "bfloat16")]
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
