"""The table runner (launch/reproduce.py): every table end to end at --scale=smoke, resume
after SIGTERM, FLOPs from masks against a hand count, bad inputs, every config builds."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import nn, prune
from mdsnn_jax.train import reproduce, tables
from mdsnn_jax.train.stages import stage_model_config
from mdsnn_jax.train.state import TrainState, make_optimizer
from mdsnn_jax.train.steps import train_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env():
  env = {k: v for k, v in os.environ.items() if k != "MDSNN_TRACEBACK"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return env


def _launch(*args, timeout=600):
  return subprocess.run([sys.executable, "launch/reproduce.py", *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _numbers(result: dict):
  """Every row's numbers of a table json, without provenance and wall time."""
  return [{k: v for k, v in row.items()} for ds in result["datasets"] for row in ds["rows"]]


# ------------------------------------------------------------------- 1. smoke, end to end
@pytest.mark.integration
@pytest.mark.parametrize("name", ["md_snn", "spquant"])
def test_table_at_smoke_scale_end_to_end(tmp_path, name):
  start = time.time()
  # Two seeds: the fewest that give the spread and the per-seed Δ counts their columns report.
  res = _launch(f"--table={name}", f"--workdir={tmp_path}", "--scale=smoke", "--seeds=0,1")
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert time.time() - start < 120 * 1.5, "a smoke table must stay near 2 minutes"
  for ext in ("md", "csv", "json", "png"):
    assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
  result = json.loads((tmp_path / f"{name}.json").read_text())
  table = tables.TABLES[name]
  assert result["seeds"] == [0, 1] and result["provenance"]["command"]
  assert result["provenance"]["machine"]["cpu"] and result["wall_seconds"] > 0
  # Training time: the runs' own wall times, summed (kept when a later command reads them back).
  assert 0 < result["datasets"][0]["training_seconds"] < time.time() - start
  rows = result["datasets"][0]["rows"]
  assert [r["key"] for r in rows] == [r.key for r in table.rows]
  for r in rows:
    if not r["available"]:
      assert r["note"]
      continue
    assert len(r["accuracy"]) == 2 and all(0 <= a <= 100 for a in r["accuracy"])
    np.testing.assert_allclose(r["accuracy_mean"], np.mean(r["accuracy"]))
    np.testing.assert_allclose(r["accuracy_std"], np.std(r["accuracy"], ddof=1))
    if r["key"] != table.baseline:
      d = r["delta_vs_baseline"]
      base = next(b for b in rows if b["key"] == table.baseline)
      np.testing.assert_allclose(d["delta"], np.subtract(r["accuracy"], base["accuracy"]))
      assert d["positive"] == sum(x > 0 for x in d["delta"])
  # The csv: one parseable line per row, every number a float.
  lines = list(csv.DictReader(io.StringIO((tmp_path / f"{name}.csv").read_text())))
  assert [l["row"] for l in lines] == [r.key for r in table.rows]
  md = (tmp_path / f"{name}.md").read_text()
  for r in table.rows:
    assert r.label in md
  assert "papers' reported figures" in md and "wall time" in md
  if name == "md_snn":
    columns = ("accuracy_mean", "delta_mean", "emd_to_fp", "dense_edap_reduction_vs_fp16",
               "event_tops_per_w_gain_vs_fp8", "event_tops_per_mm2_gain_vs_fp32",
               "dense_energy_uj", "event_latency_ms", "dense_area_mm2")
    assert "14.85× lower EDAP" in md and "16-bit weights" in md
    fp = next(r for r in rows if r["key"] == "fp")
    assert fp["emd_to_fp"] == 0.0
    np.testing.assert_allclose(fp["gains"]["fp16"]["dense"]["edap_reduction"], 1.0)
    md_row = next(r for r in rows if r["key"] == "md")
    assert md_row["weight_bits"] == 2 and md_row["gains"]["fp16"]["dense"]["edap_reduction"] > 1
    # Every row states its grid, levels and stored bits: LSQ's 2-bit full grid has 4 levels.
    assert md_row["quantization"].startswith("W: lsq 2-bit full grid, 4 levels, 2 bits stored")
    assert fp["quantization"] == "W: float; U: float"
    assert md_row["quantization"] in md
  else:
    columns = ("accuracy_mean", "flops_reduction", "flops_factor", "weight_mb", "membrane_mb",
               "weight_reduction", "membrane_reduction", "total_reduction")
    assert "13×" in md and "4.7×" in md
    tern = next(r for r in rows if r["key"] == "w4_tern")
    np.testing.assert_allclose(tern["memory"]["membrane_reduction"], 32 / 2)
    np.testing.assert_allclose(tern["memory"]["weight_reduction"], 32 / 4)
    assert tern["quantization"] == ("W: sawb 4-bit symmetric grid, 15 levels, 4 bits stored "
                                    "(first / last layer: same / same); U: ternary, 3 levels, "
                                    "2 bits stored")
    for key in ("fp", "w4", "w4_tern_lt"):  # ungated: nothing skipped
      assert next(r for r in rows if r["key"] == key)["flops"]["reduction"] == 0.0
    # The learned-gate row is trained and measured: its gates' own FLOPs are charged on top
    # of the prior's, and its training logged the gate's BCE.
    gate, prior = (next(r for r in rows if r["key"] == k) for k in ("gate", "prune_p-0.8"))
    assert gate["available"] and gate["flops"]["gate"] > prior["flops"]["gate"]
    assert gate["flops"]["dense"] == prior["flops"]["dense"]
    log = tmp_path / "spquant" / "digits" / "gate_seed0" / "qat" / "metrics.jsonl"
    records = [json.loads(l) for l in log.read_text().splitlines()]
    assert any(r.get("gate", 0) > 0 for r in records), records
  for l in lines:
    if l["available"] == "True":
      for c in columns:
        if c == "delta_mean" and l["row"] == table.baseline:
          continue
        float(l[c])


def _smoke_one_seed(tmp_path, name):
  """Runs `name` at smoke scale with one seed; (json result, csv lines, markdown)."""
  start = time.time()
  res = _launch(f"--table={name}", f"--workdir={tmp_path}", "--scale=smoke", "--seeds=0")
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert time.time() - start < 90 * 1.5, "a one-seed smoke table must stay near 90 s"
  for ext in ("md", "csv", "json", "png"):
    assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
  result = json.loads((tmp_path / f"{name}.json").read_text())
  table = tables.TABLES[name]
  assert result["seeds"] == [0]
  rows = result["datasets"][0]["rows"]
  assert [r["key"] for r in rows] == [r.key for r in table.rows]
  assert all(r["available"] and len(r["accuracy"]) == 1 for r in rows)
  lines = list(csv.DictReader(io.StringIO((tmp_path / f"{name}.csv").read_text())))
  assert [l["row"] for l in lines] == [r.key for r in table.rows]
  md = (tmp_path / f"{name}.md").read_text()
  for r in table.rows:
    assert r.label in md
  assert "papers' reported figures" in md and "wall time" in md
  return result, rows, lines, md


@pytest.mark.integration
def test_emd_table_at_smoke_scale_end_to_end(tmp_path):
  result, rows, lines, md = _smoke_one_seed(tmp_path, "emd")
  fp = rows[0]
  assert fp["key"] == "fp" and fp["emd_to_fp"] == 0.0 and set(fp["layer_emd"].values()) == {0.0}
  for r in rows[1:]:
    s = r["per_seed"][0]
    d = r["delta_vs_baseline"]
    np.testing.assert_allclose(d["delta"], np.subtract(r["accuracy"], fp["accuracy"]))
    assert 0 <= s["dead_fraction"] <= 1 and 0 <= s["mean_rate"] <= 1
    assert set(s["layer_emd"]) == set(fp["layer_emd"]) and s["emd_to_fp"] >= 0
    assert r["emd_to_fp_std"] == 0.0  # one seed
  cfg = tables.row_configs(tables.EMD, tables.EMD.datasets("smoke")[0])
  assert (cfg["lqnet_w2"].model.quant.weight.kind, cfg["lqnet_w2"].model.quant.weight.bits) == ("lqnet", 2)
  assert cfg["uniform_pct_w4"].model.quant.weight.clip == "percentile"
  for l in lines:
    for c in ("accuracy_mean", "emd_to_fp", "emd_to_fp_std", "dead_fraction", "mean_rate"):
      float(l[c])
  verdict = result["datasets"][0]["verdict"]
  assert verdict["status"] == "unsettled" and set(verdict["per_bits"]) == {"2", "4"}
  assert "LQ-Net preserves\" (pooled EMD to FP" in md and "one seed, no spread" in md


def _emd_row(key, mean, std):
  return dict(key=key, label=key, available=True, emd_to_fp=mean, emd_to_fp_std=std)


@pytest.mark.parametrize("lq,status", [((0.01, 0.002), "holds"), ((0.10, 0.01), "reversed"),
                                       ((0.035, 0.01), "unsettled")])
def test_emd_verdict_follows_the_seed_spread(lq, status):
  """Uniform rows at 0.04 ± 0.005 and 0.05 ± 0.005 at both widths."""
  rows = [_emd_row("fp", 0.0, 0.0)]
  for b in tables.EMD_BITS:
    rows += [_emd_row(f"uniform_max_w{b}", 0.04, 0.005), _emd_row(f"uniform_pct_w{b}", 0.05, 0.005),
             _emd_row(f"lqnet_w{b}", *lq)]
  v = reproduce.emd_verdict(rows, n_seeds=3)
  assert v["status"] == status and set(v["per_bits"].values()) == {status}
  assert f"{lq[0]:.4f} ± {lq[1]:.4f}" in v["lines"][0]
  assert reproduce.emd_verdict(rows, n_seeds=1)["status"] == "unsettled"


@pytest.mark.integration
def test_feature_kd_table_at_smoke_scale_end_to_end(tmp_path):
  result, rows, lines, md = _smoke_one_seed(tmp_path, "feature_kd")
  by_key = {r["key"]: r for r in rows}
  assert by_key["fp"]["delta_vs_baseline"] is None and "saliency" not in by_key["fp"]
  for t in (4, 2):
    assert by_key[f"none_t{t}"]["delta_vs_baseline"] is None
    for kind in ("logit", "feat_mem", "feat_spk", "feat_logit"):
      r = by_key[f"{kind}_t{t}"]
      d = r["delta_vs_baseline"]
      np.testing.assert_allclose(d["delta"], np.subtract(r["accuracy"],
                                                         by_key[f"none_t{t}"]["accuracy"]))
      assert d["positive"] == sum(x > 0 for x in d["delta"])
  for r in rows[1:]:
    sa = r["saliency"]
    assert -1 <= sa["spearman"] <= 1 and 0 <= sa["iou"] <= 1 and sa["k"] == 10.0
    assert sa["examples"] == reproduce.SALIENCY_EXAMPLES
  # The configs: T = 2 students distil the T = 4 teacher; feature rows switch γ on.
  cfg = tables.row_configs(tables.FEATURE_KD, tables.FEATURE_KD.datasets("smoke")[0])
  assert cfg["teacher"].model.timesteps == 4 and "teacher2t" not in cfg
  assert cfg["feat_spk_t2"].model.timesteps == 2 and cfg["feat_spk_t2"].distill.teacher_timesteps == 4
  assert cfg["feat_spk_t2"].distill.feature_source == "spikes"
  assert not cfg["none_t4"].init_from_teacher
  stored = json.loads((tmp_path / "feature_kd" / "digits" / "feat_logit_t2_seed0" / "md" /
                       "config.json").read_text())["config"]["distill"]
  assert (stored["alpha"], stored["beta"], stored["gamma"]) == (0.0, 1.0, 1.0)
  for l in lines:
    float(l["accuracy_mean"])
    if l["row"] != "fp":
      float(l["saliency_spearman"]), float(l["saliency_iou"])
    if l["row"] not in ("fp", "none_t4", "none_t2"):
      float(l["delta_mean"])
  assert "80.48 %" in md and "[reconstruction]" in md


# ---------------------------------------------------------------- 2. resume after SIGTERM
@pytest.mark.integration
def test_interrupted_table_resumes_and_ends_with_the_same_numbers(tmp_path):
  # One student row (with the teacher and its Δ baseline, which --rows brings along) is enough
  # to cut a run in the middle and resume it.
  args = ["--table=spquant", "--scale=smoke", "--seeds=0", "--rows=w4_tern"]
  full = _launch(*args, f"--workdir={tmp_path / 'once'}")
  assert full.returncode == 0, full.stderr[-3000:]
  cut = tmp_path / "cut"
  proc = subprocess.Popen([sys.executable, "launch/reproduce.py", *args, f"--workdir={cut}"],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  seen = []
  for line in proc.stdout:  # stop in the middle of a student row, after its step 10
    seen.append(line)
    if line.startswith("[w4_tern_seed0 qat]") and "step 10/" in line:
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
  assert not (cut / "spquant.json").exists()
  again = _launch(*args, f"--workdir={cut}")
  assert again.returncode == 0, again.stderr[-3000:]
  # The signal lands after step 10's line; the step running then finishes and is saved.
  resumed = re.search(r"\[w4_tern_seed0 qat\] resuming from step (\d+) of (\d+)", again.stdout)
  assert resumed and 10 <= int(resumed[1]) < int(resumed[2]), again.stdout[-3000:]
  assert "[teacher_seed0 fp] finished earlier" in again.stdout
  a = json.loads((tmp_path / "once" / "spquant.json").read_text())
  b = json.loads((cut / "spquant.json").read_text())
  assert _numbers(a) == _numbers(b)


# --------------------------------------------------------------- 3. FLOPs from the masks
def test_flops_from_masks_equal_a_hand_count():
  """A 3×3 conv, 2 → 3 channels on a 4×4 output, reading gated LIF 'a' (2 channels of 4×4)
  and feeding gated LIF 'b' (3 channels of 4×4); T = 2, B = 1."""
  conv = reproduce.KernelLayer("conv", k=3, c_in=2, c_out=3, h=4, w=4, in_lif="a", out_lif="b")
  lifs = [reproduce.LifLayer("a", 2, 4, 4), reproduce.LifLayer("b", 3, 4, 4)]
  counter = reproduce.FlopsCounter([conv], lifs, gated=["a", "b"])
  # Active channels: t = 0 all; t = 1: 'a' keeps 1 of 2, 'b' keeps 1 of 3.
  counter.add({"a": np.array([[2], [1]]), "b": np.array([[3], [1]])}, t=2, b=1)
  out = counter.result()
  conv_dense = 9 * 2 * 3 * 16  # k²·C_in·C_out·H·W per (t, b)
  dense = 2 * (conv_dense + 3 * 16 * 2 + 3 * 16 * 3)
  active = (9 * 16 * 2 * 3 + 9 * 16 * 1 * 1) + 3 * 16 * (2 + 1) + 3 * 16 * (3 + 1)
  gate = 2 * ((16 * 2 + 2 * 2) + (16 * 3 + 2 * 3))
  assert (out["dense"], out["active"], out["gate"]) == (dense, active, gate)
  assert out["reduction"] == pytest.approx((dense - active - gate) / dense)
  assert out["factor"] == pytest.approx(dense / (active + gate))
  # The conv + its LIF agree with prune.conv_lif_flops on the same masks.
  masks_b = np.array([[[1, 1, 1]], [[0, 1, 0]]])
  masks_a = np.array([[[1, 1]], [[1, 0]]])
  ref = prune.conv_lif_flops(masks_b, c_in=2, k=3, h_out=4, w_out=4, in_masks=masks_a)
  c2 = reproduce.FlopsCounter([conv], [lifs[1]], gated=[])
  c2.add({"a": masks_a.sum(-1), "b": masks_b.sum(-1)}, t=2, b=1)
  assert (c2.result()["dense"], c2.result()["active"]) == (ref["dense"], ref["active"])


def test_flops_with_a_learned_gate_equal_a_hand_count():
  """A 3×3 conv, 2 → 3 channels on a 4×4 output (stride 1: a 4×4 input), whose learned gate
  'g' masks its output, which feeds LIF 'b' (3 channels of 4×4); T = 2, B = 1."""
  gate_cost = prune.gate_flops(2, 3, 4, 4)
  assert gate_cost == 16 * 2 + 3 * 2 + 2 * 3 + 2 * 3  # pool, softmax, 1×1 conv, bias + compare
  conv = reproduce.KernelLayer("conv", k=3, c_in=2, c_out=3, h=4, w=4, out_lif="b", gate="g",
                               gate_flops=gate_cost)
  lif = reproduce.LifLayer("b", 3, 4, 4)
  dense = 2 * (9 * 2 * 3 * 16 + 3 * 16 * 3)  # 2 steps × (conv + LIF)

  # 1. The gate alone keeps channels {0, 2} at t = 0 and {2} at t = 1.
  gate = np.array([[[1, 0, 1]], [[0, 0, 1]]])
  counts = reproduce.active_channel_counts({}, {"g": gate}, [("g", "b")], 2)
  np.testing.assert_array_equal(counts["g"], [[2], [1]])
  np.testing.assert_array_equal(counts["b"], [[2], [1]])  # a closed channel gets no current
  counter = reproduce.FlopsCounter([conv], [lif])
  counter.add(counts, t=2, b=1)
  out = counter.result()
  active = 9 * 16 * 2 * (2 + 1) + 3 * 16 * (2 + 1)
  assert (out["dense"], out["active"], out["gate"]) == (dense, active, 2 * gate_cost)
  assert (dense, active, 2 * gate_cost) == (2016, 1008, 100)
  assert out["reduction"] == pytest.approx((2016 - 1008 - 100) / 2016)

  # 2. Gate and membrane prior on 'b': a static-stem-like gate mask [1, B, C] = {0, 1} holds
  #    at both steps; the prior keeps {0, 1, 2} at t = 0 and {1, 2} at t = 1. Active: both.
  gate = np.array([[[1, 1, 0]]])
  prior = np.array([[[1, 1, 1]], [[0, 1, 1]]])
  counts = reproduce.active_channel_counts({"b": prior}, {"g": gate}, [("g", "b")], 2)
  np.testing.assert_array_equal(counts["g"], [[2], [2]])
  np.testing.assert_array_equal(counts["b"], [[2], [1]])  # {0, 1}, then {1}
  counter = reproduce.FlopsCounter([conv], [lif], gated=["b"])
  counter.add(counts, t=2, b=1)
  out = counter.result()
  prior_cost = 16 * 3 + 2 * 3
  assert (out["dense"], out["active"]) == (2016, 1008)
  assert out["gate"] == 2 * gate_cost + 2 * prior_cost == 208
  assert out["reduction"] == pytest.approx((2016 - 1008 - 208) / 2016)
  assert out["factor"] == pytest.approx(2016 / (1008 + 208))

  # 3. A gated layer feeding no LIF (e.g. a residual branch): its output count is the gate's.
  branch = dataclasses.replace(conv, out_lif=None)
  counter = reproduce.FlopsCounter([branch], [])
  counter.add(reproduce.active_channel_counts({}, {"g": gate}, [], 2), t=2, b=1)
  assert counter.result()["active"] == 9 * 16 * 2 * (2 + 2)


@pytest.mark.integration
def test_model_structure_links_learned_gates_and_counts_the_masks_it_sowed():
  model = nn.create_model({"name": "digits_cnn", "timesteps": 2,
                           "neuron": {"prune_prior": 0.0, "gate_rho": 0.85}}, 10)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1))
  v = nn.init_variables(model, jax.random.PRNGKey(1), x[:1])
  # random gate parameters: some channels closed
  for g in ("conv0_gate", "conv1_gate"):
    v["params"][g]["gate_b"] = jax.random.normal(jax.random.PRNGKey(len(g)),
                                                 v["params"][g]["gate_b"].shape)
  layers, lifs = reproduce.model_structure(model, v, x[:1], 2)
  assert [(l.name, l.in_lif, l.out_lif, l.gate, l.gate_flops) for l in layers] == [
      ("conv0/conv", None, None, "conv0_gate", prune.gate_flops(1, 16, 8, 8)),  # static stem
      ("conv1/conv", "lif0", "lif1", "conv1_gate", prune.gate_flops(16, 32, 4, 4)),
      ("fc", None, None, None, 0)]
  _, cols = model.apply(v, x, train=False, mutable=["prune_masks", "gate_masks"])
  prior = {k: np.asarray(m["m"][0]) for k, m in cols["prune_masks"].items()}
  gates = {k: np.asarray(m["m"][0]) for k, m in cols["gate_masks"].items()}
  assert gates["conv0_gate"].shape == (1, 3, 16) and gates["conv1_gate"].shape == (2, 3, 32)
  assert 0 < gates["conv1_gate"].mean() < 1
  links = [(l.gate, l.out_lif) for l in layers if l.gate and l.out_lif]
  counter = reproduce.FlopsCounter(layers, lifs, gated=["lif0", "lif1"])
  counter.add(jax.device_get(reproduce.active_channel_counts(prior, gates, links, 2)), t=2, b=3)
  # By hand from the masks: the stem's gate (broadcast over T) sets its output channels but,
  # behind the broadcast, not lif0's (counted from its prior alone, conservative).
  n0_out = np.broadcast_to(gates["conv0_gate"], (2, 3, 16)).sum(-1)
  n_lif0 = prior["lif0"].sum(-1)
  n_lif1 = (prior["lif1"] * gates["conv1_gate"]).sum(-1)
  active = (np.sum(9 * 64 * 1 * n0_out) + np.sum(9 * 16 * n_lif0 * n_lif1) + 2 * 3 * 128 * 10
            + np.sum(3 * 64 * n_lif0) + np.sum(3 * 16 * n_lif1))
  overhead = 2 * 3 * (prune.gate_flops(1, 16, 8, 8) + prune.gate_flops(16, 32, 4, 4)
                      + prune.prior_mask_flops(16, 8, 8) + prune.prior_mask_flops(32, 4, 4))
  out = counter.result()
  assert (out["active"], out["gate"]) == (active, overhead)


def test_model_structure_finds_which_lif_gates_each_layer():
  model = nn.create_model({"name": "digits_cnn", "timesteps": 2,
                           "neuron": {"prune_prior": -0.8}}, 10)
  x = jnp.zeros((1, 8, 8, 1))
  v = jax.eval_shape(lambda: nn.init_variables(model, jax.random.PRNGKey(0), x))
  layers, lifs = reproduce.model_structure(model, v, x, 2)
  assert [(l.name, l.k, l.c_in, l.c_out, l.h, l.w, l.in_lif, l.out_lif) for l in layers] == [
      ("conv0/conv", 3, 1, 16, 8, 8, None, None),  # static stem: broadcast over T, dense
      ("conv1/conv", 3, 16, 32, 4, 4, "lif0", "lif1"),  # reads lif0 through the 2×2 pooling
      ("fc", 1, 32 * 2 * 2, 10, 1, 1, None, None)]  # flattened input: dense
  assert [(l.name, l.c, l.h * l.w) for l in lifs] == [("lif0", 16, 64), ("lif1", 32, 16)]


@pytest.mark.integration
def test_md_evidence_at_smoke_scale_shares_one_teacher_and_sets_both_grids_side_by_side(tmp_path):
  start = time.time()
  res = _launch("--table=md_evidence", f"--workdir={tmp_path}", "--scale=smoke")
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert time.time() - start < 120 * 1.5, "a smoke table must stay near 2 minutes"
  result = json.loads((tmp_path / "md_evidence.json").read_text())
  rows = {r["key"]: r for r in result["datasets"][0]["rows"]}
  assert list(rows) == list(tables.MD_EVIDENCE.default_rows) and result["shared_teacher"]
  root = tmp_path / "md_evidence" / "digits"
  # One teacher for the table, not one per seed: every seed reads the same FP accuracy.
  assert sorted(p.name for p in root.iterdir() if p.name.startswith("teacher")) == ["teacher"]
  assert len(set(rows["fp"]["accuracy"])) == 1 and rows["fp"]["delta_vs_baseline"] is None
  for key in ("none", "logit", "md", "none_sym", "md_sym"):
    stage = "qat" if key.startswith("none") else "md"
    stored = json.loads((root / f"{key}_seed2" / stage / "config.json").read_text())
    assert stored["config"]["distill"]["teacher_workdir"] == str(root / "teacher" / "fp")
  # The real 2-bit (4-level) student beside the ternary-weight one, each paired with its own
  # no-KD row.
  assert rows["md"]["quantization"].startswith("W: lsq 2-bit full grid, 4 levels")
  assert rows["md_sym"]["quantization"].startswith("W: lsq 2-bit symmetric grid, 3 levels")
  assert rows["ptq_sym"]["quantization"].startswith("W: lsq 2-bit symmetric grid, 3 levels")
  for key, base in (("md", "none"), ("md_sym", "none_sym"), ("ptq_sym", "none_sym")):
    assert rows[key]["baseline"] == base
    np.testing.assert_allclose(rows[key]["delta_vs_baseline"]["delta"],
                               np.subtract(rows[key]["accuracy"], rows[base]["accuracy"]))
  md = (tmp_path / "md_evidence.md").read_text()
  assert "symmetric grid: QAT + MD" in md and "gap to FP" in md and "vs `none_sym`" in md
  lines = list(csv.DictReader(io.StringIO((tmp_path / "md_evidence.csv").read_text())))
  for l in lines:
    float(l["accuracy_mean"]), float(l["emd_to_fp"])


@pytest.mark.integration
def test_md_ablation_at_smoke_scale_lists_what_the_model_cannot_take(tmp_path):
  res = _launch("--table=md_ablation", f"--workdir={tmp_path}", "--scale=smoke", "--seeds=0")
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  result = json.loads((tmp_path / "md_ablation.json").read_text())
  rows = {r["key"]: r for r in result["datasets"][0]["rows"]}
  assert list(rows) == ["fp", *tables.ABLATION_VARIANTS]
  # The digits MLP has one LIF layer: variants naming more are listed, saying why.
  off = {k for k, r in rows.items() if not r["available"]}
  assert off == {"mdonly_late", "mdonly_early", "feature"}, off
  assert all("LIF layers, but the model has 1" in rows[k]["note"] for k in off)
  root = tmp_path / "md_ablation" / "digits"
  for key, (method, _, _, base) in tables.ABLATION_VARIANTS.items():
    if key in off:
      continue
    assert (root / f"abl_{key}_seed0" / _stage_of(method) / "summary.json").exists()
    assert rows[key]["baseline"] == base
    if key != base:
      np.testing.assert_allclose(rows[key]["delta_vs_baseline"]["delta"],
                                 np.subtract(rows[key]["accuracy"], rows[base]["accuracy"]))


def _stage_of(method: str) -> str:
  from mdsnn_jax.train.experiments import METHODS
  return METHODS[method][0]


# ------------------------------------------------------------------------ 4. bad input
@pytest.mark.parametrize("args,words", [
    (["--table=nope"], ["unknown table 'nope'", "md_snn", "spquant"]),
    (["--table=md_snn", "--scale=huge"], ["unknown scale 'huge'", "smoke", "cpu", "full"]),
    (["--table=md_snn", "--seeds="], ["empty seed list", "at least 1"]),
    (["--table=md_snn", "--seeds=0,x"], ["invalid seed list", "comma-separated"]),
    (["--table=spquant", "--scale=cpu", "--seeds=0,1"], ["over >= 3 seeds", "at least 3"]),
    (["--table=spquant", "--scale=full", "--seeds=1,1,2"], ["negative or repeated"]),
    (["--table=md_evidence", "--rows=none,kd"], ["unknown rows ['kd'] of table 'md_evidence'",
                                                 "allowed", "none_sym"]),
    (["--table=md_evidence", "--scale=cpu", "--config=launch/configs/default.py"],
     ["--scale='cpu' and --config were both given"]),
])
@pytest.mark.integration
def test_bad_inputs_fail_before_training_with_one_line(tmp_path, args, words):
  res = _launch(*args, f"--workdir={tmp_path / 'w'}", timeout=120)
  assert res.returncode == 2, res.stdout + res.stderr
  err = res.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), res.stderr
  for w in words:
    assert w in err[0], err[0]
  assert not (tmp_path / "w").exists()  # nothing was trained or written


@pytest.mark.integration
def test_list_names_every_table_row_dataset_and_time():
  res = _launch("--list", timeout=120)
  assert res.returncode == 0, res.stderr
  for t in tables.TABLES.values():
    assert t.name in res.stdout
    for r in t.rows:
      assert r.key in res.stdout
    for scale in tables.SCALES:
      assert f"--scale={scale}" in res.stdout
      for ds in t.datasets(scale):
        assert ds.description in res.stdout
  assert "min" in res.stdout


# ------------------------------------------------------- 5. every full-scale config builds
EVENT_SENSORS = {"nmnist": (34, 34), "ncaltech101": (180, 240), "cifar10dvs": (128, 128)}


def _batch2(c):
  if c.data.name in EVENT_SENSORS:
    h = w = c.data.image_size
    return jnp.zeros((2, c.data.timesteps, h, w, 2), jnp.float32)
  return jnp.zeros((2, 32, 32, 3), jnp.float32)


def _row_and_stage(table, key):
  row = next((r for r in tables.TABLES[table].rows if r.key == key), None)
  return row, "fp" if row is None else {"none": "qat"}.get(row.method, "md")


def _step_fingerprint(table, key, cfg):
  """What one train step at batch 2 depends on: two rows with the same fingerprint (a teacher
  that two tables share) compile and run the same step."""
  row, stage = _row_and_stage(table, key)
  parts = [stage, stage_model_config(cfg, stage).to_json_best_effort(sort_keys=True),
           cfg.loss.to_json_best_effort(sort_keys=True), cfg.optim.to_json_best_effort(sort_keys=True),
           cfg.data.name, str(cfg.data.get("image_size")), str(cfg.model.timesteps)]
  if stage == "md":
    teacher = stage_model_config(tables.teacher_config(cfg, row.teacher_t_factor), "fp")
    parts += [cfg.distill.to_json_best_effort(sort_keys=True),
              teacher.to_json_best_effort(sort_keys=True)]
  return "|".join(parts)


def _full_runs():
  out, seen = [], set()
  for name, t in sorted(tables.TABLES.items()):
    for ds in t.datasets("full"):
      for key, cfg in tables.row_configs(t, ds).items():
        fingerprint = _step_fingerprint(name, key, cfg)
        real = key in ("teacher", "md", "prune_p0") and fingerprint not in seen
        if real:
          seen.add(fingerprint)
        out.append(pytest.param(name, ds.key, key, cfg, real, id=f"{name}-{ds.key}-{key}"))
  return out


@pytest.mark.integration
@pytest.mark.parametrize("table,dataset,key,cfg,real", _full_runs())
def test_every_full_scale_row_runs_one_train_step_at_batch_2(table, dataset, key, cfg, real):
  """Abstractly for every row (jax.eval_shape); one real step on CPU for the teacher and the
  most demanding student of each dataset (MD, or the pruned SpQuant row), to keep it fast,
  once per distinct step (two tables' identical teachers run one real step)."""
  row, stage = _row_and_stage(table, key)
  k = 101 if dataset == "ncaltech101" else 10
  x = _batch2(cfg)
  t = int(cfg.model.timesteps)
  key_ = jax.random.PRNGKey(0)
  model = nn.create_model(stage_model_config(cfg, stage), k)
  tx = make_optimizer(cfg.optim, int(cfg.train.steps))
  teacher = teacher_vars = None
  if stage == "md":
    tcfg = tables.teacher_config(cfg, row.teacher_t_factor)
    teacher = nn.create_model(stage_model_config(tcfg, "fp"), k)
    tx_t = x if x.ndim == 4 else x
    teacher_vars = nn.init_variables(teacher, key_, tx_t[:1])
  batch = {"image": x, "label": jnp.zeros((2,), jnp.int32)}

  def step(v, tv):
    state = TrainState.create(variables=v, tx=tx)
    return train_step(state, batch, tv, model=model, loss_cfg=cfg.loss,
                      distill_cfg=cfg.distill if stage == "md" else None,
                      teacher_model=teacher, timesteps=t)

  if real:
    variables = nn.init_variables(model, key_, x[:1])
    start = time.time()
    state, metrics = jax.jit(step)(variables, teacher_vars)
    assert np.isfinite(float(metrics["loss"])), metrics
    assert int(state.step) == 1 and time.time() - start < 300
  else:
    variables = jax.eval_shape(lambda: nn.init_variables(model, key_, x[:1]))
    _, metrics = jax.eval_shape(step, variables, teacher_vars)
    assert metrics["loss"].shape == ()
