"""The benchmark scripts behind BENCHMARKS.md's new tables run end to end at toy size and
write their tables (timings are not checked: speed lives in the benchmarks)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
  out = subprocess.run([sys.executable, *args, "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.integration
def test_lif_unroll_bench_writes_a_row_per_t_and_membrane(tmp_path):
  stdout = _run(["bench/lif_unroll.py", "--timesteps", "2,9", "--rounds", "1",
                 "--shape", "2,3,3,4"], tmp_path)
  rows = json.loads((tmp_path / "lif_unroll.json").read_text())["rows"]
  assert [(r["T"], r["membrane"]) for r in rows] == [(2, "FP"), (2, "ternary"), (9, "FP"),
                                                     (9, "ternary")]
  assert all(r["loop_ms_per_step"] > 0 and r["unrolled_ms_per_step"] > 0 for r in rows)
  assert "| 9 | ternary |" in stdout and "FULL_UNROLL_MAX_T = 8" in stdout


@pytest.mark.parametrize("args,message", [
    (["bench/lif_unroll.py", "--timesteps", "2,x"],
     "--timesteps must be comma-separated positive ints, got '2,x'"),
    (["bench/kd_loss.py", "--batch", "0"], "--batch must be a positive int, got 0"),
    (["bench/hostmem.py", "--kinds", "fp,xyz"], "--kinds must be from fp,qat,md (got 'fp,xyz')"),
])
def test_bench_refuses_bad_input_before_any_work(args, message):
  out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode != 0
  assert message in out.stderr


@pytest.mark.integration
def test_conv_torch_bench_times_all_seven_convolutions(tmp_path):
  pytest.importorskip("torch")
  _run(["bench/conv_torch.py", "--repeats", "1", "--batch-divisor", "64"], tmp_path)
  data = json.loads((tmp_path / "conv_torch.json").read_text())
  assert len(data["rows"]) == 7
  assert all(v > 0 for r in data["rows"] for v in r["ms"].values())
  assert "| all seven |" in (tmp_path / "conv_torch.md").read_text()


@pytest.mark.integration
def test_kd_loss_bench_times_both_forms_and_checks_they_agree(tmp_path):
  stdout = _run(["bench/kd_loss.py", "--batch", "1", "--timesteps", "2", "--rounds", "1"],
                tmp_path)
  data = json.loads((tmp_path / "kd_loss.json").read_text())
  assert set(data["ms"]) == {"moment form (library)", "standardised form (reference)",
                             "plain MSE, decorrelate=False (floor)"}
  assert all(v > 0 for v in data["ms"].values())
  assert data["value_rel_diff"] < 1e-5 and data["grad_max_rel_diff"] < 1e-3
  assert "| moment form (library) |" in stdout


@pytest.mark.integration
def test_hostmem_bench_runs_both_settings(tmp_path):
  stdout = _run(["bench/hostmem.py", "--kinds", "fp", "--rounds", "1", "--steps", "1",
                 "--batch", "1"], tmp_path)
  rows = json.loads((tmp_path / "hostmem.json").read_text())["rows"]
  assert [r["malloc"] for r in rows] == ["4 KiB pages (as started, reference)",
                                         "huge pages (glibc.malloc.hugetlb=1)"]
  assert all(r["ms"] > 0 and r["faults"] >= 0 for r in rows)
  assert "| fp | huge pages (glibc.malloc.hugetlb=1) |" in stdout


@pytest.mark.integration
def test_conv_library_bench_times_both_libraries_in_their_own_processes(tmp_path):
  stdout = _run(["bench/conv_library.py", "--rounds", "1", "--repeats", "1",
                 "--batch-divisor", "64"], tmp_path)
  data = json.loads((tmp_path / "conv_library.json").read_text())
  assert data["libraries"]["xla"].startswith("MDSNN_CPU_CONV=xla")
  assert set(data["median_ms"]) == {"xla", "xnnpack"}
  for lib in ("xla", "xnnpack"):
    assert len(data["median_ms"][lib]) == 6
    assert all(set(p) == {"fwd", "xla fwd+bwd", "fast fwd+bwd"} and min(p.values()) > 0
               for p in data["median_ms"][lib].values())
  assert "| all six | fwd |" in stdout


def test_conv_library_bench_refuses_bad_input_before_any_work():
  out = subprocess.run([sys.executable, "bench/conv_library.py", "--rounds", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "--rounds, --repeats and --batch-divisor must be positive, got 0, 3, 1" in out.stderr


@pytest.mark.integration
def test_profile_step_attributes_the_step_including_xnnpacks_asynchronous_convolutions(tmp_path):
  stdout = _run(["bench/profile_step.py", "--kind", "fp", "--batch", "1", "--timesteps", "1",
                 "--steps", "1"], tmp_path)
  data = json.loads((tmp_path / "profile_step_fp.json").read_text())
  kinds = {r["kind"] for r in data["rows"]}
  assert {"LIF", "tdBN / BN fold"} <= kinds
  assert data["untraced_ms"] > 0 and all(r["ms"] >= 0 for r in data["rows"])
  # The test session's XLA_FLAGS (tests/conftest.py), which this subprocess inherits, put the
  # convolutions on XNNPACK: their row is the untraced remainder, and 'auto' is XLA's autodiff.
  assert "already chooses" in data["conv_library"]
  assert any(k.startswith("conv on XNNPACK") for k in kinds)
  assert "auto (= xla)" in stdout
