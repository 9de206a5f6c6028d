"""Claims in README.md's prose and comments that a test can check."""
from __future__ import annotations

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _block(marker):
  (block,) = [b for b in BLOCKS if marker in b]
  return block


def test_distillation_example_loss_is_about_zero():
  # README: `loss, per_layer = distill.membrane_kd_loss(taps_s, taps_t)  # ≈ 0: decorrelation
  # removes scale/offset` (the teacher is a per-channel affine image of the student).
  block = _block("taps_t = {")
  assert "≈ 0" in block
  namespace = {}
  np.random.seed(0)  # the example's EMD line draws from NumPy's global generator
  exec(compile(block, "README.md distillation example", "exec"), namespace)
  loss = float(namespace["loss"])
  assert 0.0 <= loss < 1e-5, loss
  terms = {f"{layer}/{k}": float(v) for layer, d in namespace["per_layer"].items()
           for k, v in d.items()}
  assert terms and all(abs(v) < 1e-5 for v in terms.values()), terms
  # Without the decorrelation the same taps are far apart: the ≈ 0 is the normalisation's doing.
  raw = namespace["distill"].membrane_kd_loss(namespace["taps_s"], namespace["taps_t"],
                                              decorrelate=False)
  assert float(raw) > 1.0, float(raw)


RESULTS = README.parent / "results"


def test_quickstart_numbers_are_the_recorded_run():
  import json
  text = " ".join(README.read_text().split())
  q = json.loads((RESULTS / "quickstart.json").read_text())
  assert q["quickstart_command"] in text.replace("--workdir=/tmp/mdsnn_digits", "--workdir=<fresh workdir>")
  for run in q["runs"]:
    fp, md = run["stages"]["fp"], run["stages"]["md"]
    assert q["accuracy_unit"] == "percent"
    quoted = (f"FP {fp['test_accuracy']:.2f} %, PTQ {md['ptq_accuracy']:.2f} % and "
              f"MD student {md['test_accuracy']:.2f} %")
    assert quoted in text, quoted
  assert q["identical_across_runs"] and "identical in both runs" in text
  walls = " and ".join(f"{r['wall_seconds']:.0f} s" for r in q["runs"])
  assert f"took {walls}" in text, walls
  # The student the README describes: full-precision first and last layers.
  sq = q["student_quantization"]
  assert sq["first_layer"] == sq["last_layer"] == {"kind": "none"}
  assert "first layer and its classifier keep full-precision weights" in text


def test_md_significance_and_noise_floor_are_the_recorded_ones():
  import json
  text = " ".join(README.read_text().split())
  s = json.loads((RESULTS / "md_stats.json").read_text())
  all5, late = s["all2"]["md vs none, seeds 0-4"], s["all2"]["md vs none, seeds 1-4"]
  for quoted in (f"paired t = {all5['t']:.2f} with 4 degrees of freedom, p = {all5['p_t_one_sided']:.3f}",
                 f"exact Wilcoxon signed-rank p = {all5['p_wilcoxon_one_sided']:.3f}",
                 f"+{late['mean']:.2f} ± {late['std']:.2f} pp",
                 f"{late['p_t_one_sided']:.3f} (t, 3 degrees of freedom) and "
                 f"{late['p_wilcoxon_one_sided']:.3f} (Wilcoxon)",
                 f"up to {s['noise_floor']['max_abs_pp']:.2f} pp, and by "
                 f"{s['noise_floor']['mean_abs_pp']:.2f} pp on average",
                 f"5-seed mean is +{all5['mean']:.2f} pp"):
    assert quoted in text, quoted
  assert "One-sided tests" in text


def test_reproduce_tables_in_readme_are_the_recorded_results():
  # README's "Reproducing the papers" quotes each results/tables/<table>.json through
  # reproduce.render_summary, verbatim: the numbers there are the files' numbers.
  import json

  from mdsnn_jax.train import reproduce

  text = README.read_text()
  files = sorted((RESULTS / "tables").glob("*.json"))
  assert {f.stem for f in files} >= {"md_snn", "spquant"}, files
  for f in files:
    result = json.loads(f.read_text())
    assert result["scale"] == "cpu" and len(result["seeds"]) >= 3, (f, result["seeds"])
    assert reproduce.render_summary(result) in text, f"README does not quote {f.name}"
    assert (f.with_suffix(".md")).read_text() == reproduce.render_markdown(result), f


def test_current_code_ablation_in_readme_is_the_recorded_result():
  # The investigation's re-run (launch/md_ablation.py on the table runner, one seed on
  # md_cifar10.py) is quoted through reproduce.render_summary, verbatim.
  import json

  from mdsnn_jax.train import reproduce

  f = RESULTS / "md_cifar10_ablation" / "ablation_current.json"
  result = json.loads(f.read_text())
  assert result["table"] == "md_ablation" and result["scale"] == "config"
  assert reproduce.render_summary(result) in README.read_text()
  assert f.with_suffix(".md").read_text() == reproduce.render_markdown(result)
