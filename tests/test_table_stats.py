"""The paired tests beside each Δ of a table (`reproduce.add_delta_tests`) and the re-rendering
of stored table files (`launch/render_table.py`)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import scipy.stats

from mdsnn_jax.train import experiments, reproduce

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _row(key, acc, base=None, base_acc=None):
  e = {"key": key, "available": True, "accuracy": acc, "baseline": base or key}
  e["delta_vs_baseline"] = (None if base is None else experiments.paired_delta(acc, base_acc))
  return e


def test_delta_tests_are_scipys_paired_t_test_with_holm_over_the_student_rows_only():
  none = [50.0, 47.0, 51.0, 41.0, 42.0]
  logit = [49.5, 49.2, 50.7, 49.0, 49.8]
  md = [50.8, 47.7, 52.0, 45.2, 49.6]
  md_sym = [50.7, 53.3, 50.3, 50.2, 49.5]
  none_sym = [50.9, 45.5, 50.7, 50.3, 47.1]
  rows = [_row("fp", [60.0] * 5),
          _row("ptq", [21.0, 22.0, 21.5, 20.0, 23.0], "none", none),  # a PTQ point: not tested
          _row("none", none), _row("logit", logit, "none", none), _row("md", md, "none", none),
          _row("none_sym", none_sym, "none", none), _row("md_sym", md_sym, "none_sym", none_sym)]
  rows[5]["delta_vs_baseline"] = None  # none_sym is a baseline itself
  reproduce.add_delta_tests("md_evidence", rows)
  tested = {e["key"]: e["delta_vs_baseline"]["tests"] for e in rows
            if e["delta_vs_baseline"] and "tests" in e["delta_vs_baseline"]}
  assert sorted(tested) == ["logit", "md", "md_sym"]
  raw = {k: scipy.stats.ttest_rel(a, b, alternative="greater").pvalue
         for k, a, b in (("logit", logit, none), ("md", md, none), ("md_sym", md_sym, none_sym))}
  for k, p in raw.items():
    assert tested[k]["p_t_one_sided"] == pytest.approx(p, rel=1e-9)
  # Holm over the three by hand: sorted ascending, multiplied by 3, 2, 1, running max.
  order = sorted(raw, key=raw.get)
  want, run = {}, 0.0
  for i, k in enumerate(order):
    run = max(run, min(1.0, (3 - i) * raw[k]))
    want[k] = run
  for k in raw:
    assert tested[k]["p_t_holm"] == pytest.approx(want[k], rel=1e-9)
  # The cell shows both.
  cell = reproduce._delta(rows[4])
  assert f"p = {raw['md']:.3f}, Holm {want['md']:.3f}" in cell


def test_delta_tests_skip_one_seed_and_rows_paired_against_the_teacher():
  rows = [_row("fp", [60.0, 61.0]), _row("w4", [55.0, 57.0], "fp", [60.0, 61.0])]
  reproduce.add_delta_tests("spquant", rows)  # Δ vs FP: not a test of "KD helps"
  assert "tests" not in rows[1]["delta_vs_baseline"]
  rows = [_row("qat", [40.0]), _row("md", [41.0], "qat", [40.0])]
  reproduce.add_delta_tests("md_snn", rows)
  assert "tests" not in rows[1]["delta_vs_baseline"]


def test_equal_deltas_on_every_seed_give_p_0_or_1_not_nan():
  assert experiments.one_sided_tests([1.0, 1.0, 1.0])["p_t_one_sided"] == 0.0
  assert experiments.one_sided_tests([0.0, 0.0, 0.0])["p_t_one_sided"] == 1.0
  assert experiments.one_sided_tests([-2.0, -2.0])["p_t_one_sided"] == 1.0


def test_render_table_rewrites_a_table_file_with_the_tests_and_keeps_its_numbers(tmp_path):
  src = ROOT / "results" / "md_evidence_750" / "md_evidence_750.json"
  f = tmp_path / "t.json"
  stored = json.loads(src.read_text())
  for ds in stored["datasets"]:  # as a file written before the tests existed
    for e in ds["rows"]:
      if e.get("delta_vs_baseline"):
        e["delta_vs_baseline"].pop("tests", None)
  stored.pop("rendered", None)
  f.write_text(json.dumps(stored))
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "render_table.py"), str(f)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  new = json.loads(f.read_text())
  assert new["rendered"]["command"] == f"launch/render_table.py {f}"  # (shlex-quoted)
  assert new["provenance"] == stored["provenance"]
  rows = {e["key"]: e for e in new["datasets"][0]["rows"]}
  assert [e["accuracy"] for e in new["datasets"][0]["rows"]] == \
      [e["accuracy"] for e in stored["datasets"][0]["rows"]]
  d = rows["md"]["delta_vs_baseline"]
  p = scipy.stats.ttest_rel(rows["md"]["accuracy"], rows["none"]["accuracy"],
                            alternative="greater").pvalue
  assert d["tests"]["p_t_one_sided"] == pytest.approx(p, rel=1e-9)
  md = (tmp_path / "t.md").read_text()
  assert f"p = {p:.3f}" in md and reproduce.TESTS_NOTE in md
  assert (tmp_path / "t.csv").read_text() == reproduce.render_csv(new)
  assert (tmp_path / "t.png").stat().st_size > 0


def test_render_table_refuses_what_is_not_a_table_file(tmp_path):
  bad = tmp_path / "x.json"
  bad.write_text(json.dumps({"rows": []}))
  for arg, what in ((str(tmp_path / "missing.json"), "not a table .json file"),
                    (str(bad), "is not a table file")):
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "render_table.py"), arg],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0 and what in out.stderr, out.stderr[-1000:]
