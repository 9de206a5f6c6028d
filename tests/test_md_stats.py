"""launch/md_stats.py: one-sided tests against scipy's own one-sample functions and exact
hand values, the noise floor on hand-made tables, and a run over a copy of results/."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest
import scipy.stats

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("md_stats", REPO / "launch" / "md_stats.py")
md_stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(md_stats)


def test_one_sided_tests_by_hand():
  d = [1.0, 2.0, 3.0, 4.0]
  s = md_stats.one_sided_tests(d)
  # mean 2.5, sample std √(5/3), t = 2.5 / (√(5/3) / 2) = 3.873 with 3 degrees of freedom.
  assert s["mean"] == 2.5 and s["std"] == pytest.approx(np.sqrt(5 / 3))
  assert s["t"] == pytest.approx(2.5 / (np.sqrt(5 / 3) / 2)) and s["df"] == 3
  ref = scipy.stats.ttest_1samp(d, 0.0, alternative="greater")
  assert s["p_t_one_sided"] == pytest.approx(ref.pvalue, rel=1e-9)
  # Exact signed-rank: all 4 differences positive is 1 of 2⁴ sign patterns.
  assert s["p_wilcoxon_one_sided"] == pytest.approx(1 / 16)
  assert md_stats.one_sided_tests([0.5, 1.0, 2.0, 3.0, 5.0])["p_wilcoxon_one_sided"] == pytest.approx(1 / 32)
  assert md_stats.one_sided_tests([-1.0, -2.0, -3.0])["p_t_one_sided"] > 0.9


def _table(rows, teacher=60.0):
  return {"fp_teacher": teacher, "config": {"a": 1},
          "rows": [{"method": m, "seeds": list(range(len(a))), "accuracy": a} for m, a in rows.items()]}


def test_noise_floor_and_significance_on_hand_tables():
  old = _table({"none": [50.0, 51.0], "md": [52.0, 50.0]})
  new = _table({"none": [51.5, 51.0], "md": [49.0, 50.25]})
  nf = md_stats.noise_floor(old, new)
  assert nf["changes_pp"] == {"none seed 0": 1.5, "none seed 1": 0.0, "md seed 0": -3.0,
                              "md seed 1": 0.25}
  assert nf["max_abs_pp"] == 3.0 and nf["mean_abs_pp"] == pytest.approx(4.75 / 4)
  sig = md_stats.significance(new, {"both": [0, 1], "seed 1": [1]})
  assert sig["md vs none, both"]["delta"] == [-2.5, -0.75]
  assert sig["md vs none, seed 1"]["delta"] == [-0.75] and "t" not in sig["md vs none, seed 1"]


def test_md_stats_on_the_committed_tables(tmp_path):
  for d in ("md_cifar10_all2", "md_cifar10_8bit"):
    shutil.copytree(REPO / "results" / d, tmp_path / d)
  returned = md_stats.write_stats(tmp_path)
  stats = json.loads((tmp_path / "md_stats.json").read_text())
  assert stats.keys() == returned.keys()
  all5, late = stats["all2"]["md vs none, seeds 0-4"], stats["all2"]["md vs none, seeds 1-4"]
  # README's figures: t = 2.38 (4 df), one-sided p = 0.038, Wilcoxon 1/32; seeds 1-4 alone p ≈ 0.1.
  assert (round(all5["t"], 2), round(all5["p_t_one_sided"], 3)) == (2.38, 0.038)
  assert all5["p_wilcoxon_one_sided"] == pytest.approx(1 / 32) and all5["positive"] == 5
  assert round(late["p_t_one_sided"], 3) == 0.096 and late["p_wilcoxon_one_sided"] == pytest.approx(1 / 16)
  assert round(stats["noise_floor"]["max_abs_pp"], 2) == 4.74 and stats["noise_floor"]["n"] == 9
  assert {"commit", "command", "machine", "load_average", "date"} <= set(stats["provenance"])
  assert (tmp_path / "md_stats.md").read_text().startswith("# MD evidence")


def test_significance_reads_a_runner_table_and_pairs_each_grid_with_its_own_no_kd_row():
  def row(key, acc, available=True):
    return {"key": key, "available": available, "seeds": [0, 1, 2], "accuracy": acc}

  table = {"seeds": [0, 1, 2], "datasets": [{"rows": [
      row("fp", [60.0] * 3), row("none", [50.0, 51.0, 52.0]), row("md", [52.0, 51.5, 55.0]),
      row("none_sym", [40.0, 41.0, 42.0]), row("md_sym", [39.0, 42.0, 42.5]),
      {"key": "logit_sym", "available": False, "note": "not run"}]}]}
  sig = md_stats.significance(table, {"all": [0, 1, 2]}, md_stats.EVIDENCE_PAIRS)
  assert sig["md vs none, all"]["delta"] == [2.0, 0.5, 3.0]
  assert sig["md_sym vs none_sym, all"]["delta"] == [-1.0, 1.0, 0.5]
  assert sig["md_sym vs none_sym, all"]["positive"] == 2
  assert not any(k.startswith(("logit", "md vs logit", "md_sym vs logit")) for k in sig)


def test_holm_by_hand():
  # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 4·0.01, 3·0.02, max(0.06, 2·0.03), max(0.06, 1·0.5);
  # returned in the input order.
  assert md_stats.holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
  # Monotone (the step-down maximum) and capped at 1.
  assert md_stats.holm([0.04, 0.045, 0.9]) == pytest.approx([0.12, 0.12, 0.9])
  assert md_stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
  assert md_stats.holm([0.2]) == [0.2]


def test_holm_is_applied_per_table_across_all_its_tests():
  table = _table({"none": [50.0, 51.0, 52.0, 50.5], "md": [52.0, 53.0, 52.5, 51.0],
                  "logit": [49.0, 52.0, 52.0, 50.0]})
  sig = md_stats.significance(table, {"all": [0, 1, 2, 3], "late": [1, 2, 3]})
  assert len(sig) == 6
  for raw, adj in (("p_t_one_sided", "p_t_holm"), ("p_wilcoxon_one_sided", "p_wilcoxon_holm")):
    assert [s[adj] for s in sig.values()] == pytest.approx(md_stats.holm([s[raw] for s in sig.values()]))
    assert all(s[adj] >= s[raw] for s in sig.values())


def test_committed_md_stats_report_holm_beside_raw():
  # results/md_stats.{json,md} as committed: written by this script, Holm columns included;
  # in md_evidence no comparison survives Holm (the raw p = 0.043 and 0.049 do not).
  stats = json.loads((REPO / "results" / "md_stats.json").read_text())
  ev = stats["evidence"]
  assert len(ev) == 6 and all("p_t_holm" in s and "p_wilcoxon_holm" in s for s in ev.values())
  assert round(ev["md vs none, seeds 0,1,2,3,4"]["p_t_one_sided"], 3) == 0.043
  assert round(ev["md_sym vs logit_sym, seeds 0,1,2,3,4"]["p_t_one_sided"], 3) == 0.049
  assert all(s["p_t_holm"] >= 0.05 and s["p_wilcoxon_holm"] >= 0.05 for s in ev.values())
  text = (REPO / "results" / "md_stats.md").read_text()
  assert "p (t, Holm)" in text and "p (Wilcoxon, Holm)" in text
  assert text.count("Holm-adjusted p < 0.05: none.") == 3
