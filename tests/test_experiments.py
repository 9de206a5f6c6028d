"""The MD evidence drivers: launch/md_table.py and launch/md_ablation.py."""
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

from mdsnn_jax import distill, nn
from mdsnn_jax.train.experiments import METHODS, paired_delta, parse_methods

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(path: str):
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, REPO / path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def ablation():
  return _load("launch/md_ablation.py")


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


def test_every_ablation_variant_fits_the_md_cifar10_model(ablation):
  """Catches a typo in a variant before it costs an hour of CPU: every override names an
  existing config field, every distilled layer is a tap of the VGG-9 student, and every
  row is paired with a no-KD run."""
  base = _load("launch/configs/md_cifar10.py").get_config()
  model = nn.create_model(base.model, 10)
  x = np.zeros((1, 32, 32, 3), np.float32)
  variables = jax.eval_shape(lambda k: model.init({"params": k}, x, train=False),
                             jax.random.PRNGKey(0))
  _, cols = jax.eval_shape(lambda v: model.apply(v, x, train=False, mutable=["membranes"]),
                           variables)
  taps = distill.flatten_taps(cols["membranes"])
  for name, (method, overrides, what, baseline) in ablation.VARIANTS.items():
    assert method in METHODS and what, name
    assert _is_no_kd(ablation, baseline), (name, baseline)
    cfg = ablation._override(base, overrides, list(taps))
    for dotted, value in overrides.items():
      node = cfg
      for part in dotted.split("."):
        node = node[part]
      if isinstance(value, ablation.LifTaps):
        value = value.resolve(list(taps))
      assert node == value, (name, dotted)
    for key in ("layers", "feature_layers"):
      spec = cfg.distill[key]
      if spec != "all":
        distill.select_taps(taps, spec.split(","))  # raises, listing the taps, if one is wrong


def _is_no_kd(ablation, name: str) -> bool:
  return name in ablation.VARIANTS and ablation.VARIANTS[name][0] == "none"


def test_versatile_teacher_variants_fit_only_their_teacher_t(ablation):
  base = _load("launch/configs/md_cifar10.py").get_config()  # T = 2
  assert ablation._fits(base, ablation.VARIANTS["T1_mdonly_window"][1])
  assert ablation._fits(base, ablation.VARIANTS["md"][1])
  base.model.timesteps = 4  # a T = 4 teacher cannot stand in for the T = 2 teacher of T1_*
  assert not ablation._fits(base, ablation.VARIANTS["T1_mdonly_window"][1])
  assert ablation._fits(base, ablation.VARIANTS["md"][1])


def test_override_rejects_unknown_fields(ablation):
  base = _load("launch/configs/md_cifar10.py").get_config()
  with pytest.raises(KeyError):
    ablation._override(base, {"distill.alpah": 2.0})


def _run(args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return res.stdout


TINY = ["--config=launch/configs/default.py", "--config.model.name=digits_mlp",
        "--config.model.timesteps=2", "--config.train.steps=20", "--config.train.global_batch=32",
        "--config.train.eval_batch=64", "--config.train.log_every=10", "--config.report=False"]


def test_md_table_and_ablation_end_to_end_on_digits(tmp_path):
  out = _run(["launch/md_table.py", *TINY, f"--workdir={tmp_path}", "--seeds=0",
              "--methods=none,md"])
  table = json.loads((tmp_path / "table.json").read_text())
  assert [r["method"] for r in table["rows"]] == ["none", "md"]
  assert 0 < table["fp_teacher"] <= 100 and table["ptq"] is not None
  assert "QAT + MD" in out and (tmp_path / "table.md").exists()
  md_row = table["rows"][1]
  np.testing.assert_allclose(md_row["vs_no_kd"]["delta"],
                             [md_row["accuracy"][0] - table["rows"][0]["accuracy"][0]])
  assert table["rows"][0]["vs_no_kd"] is None
  # The ablation reuses the table's teacher and pairs Δ with its own no-KD student.
  teacher_mtime = (tmp_path / "teacher" / "fp" / "summary.json").stat().st_mtime
  _run(["launch/md_ablation.py", *TINY, f"--workdir={tmp_path}", "--seeds=0",
        "--variants=mdonly_a10,T1_mdonly_window"])
  assert (tmp_path / "teacher" / "fp" / "summary.json").stat().st_mtime == teacher_mtime
  rows = {r["variant"]: r for r in json.loads((tmp_path / "ablation.json").read_text())["rows"]}
  assert set(rows) == {"mdonly_a10", "T1_mdonly_window"}
  none = json.loads((tmp_path / "abl_none_seed0" / "qat" / "summary.json").read_text())
  np.testing.assert_allclose(rows["mdonly_a10"]["delta_vs_baseline"]["delta"][0],
                             rows["mdonly_a10"]["accuracy"][0] - none["test_accuracy"],
                             atol=1e-9)
  assert rows["T1_mdonly_window"]["baseline"] == "T1_none"
  assert (tmp_path / "abl_T1_none_seed0" / "qat" / "summary.json").exists()
  summary = json.loads((tmp_path / "abl_T1_mdonly_window_seed0" / "md" / "summary.json").read_text())
  assert summary["final_train_metrics"]["md"] > 0
