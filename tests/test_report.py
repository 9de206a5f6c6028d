"""Tests of the beyond-accuracy report (mdsnn_jax/report.py, launch/report.py)."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mdsnn_jax import distill
from mdsnn_jax import firing
from mdsnn_jax import hardware as hw
from mdsnn_jax import report as rep
from mdsnn_jax.neuron import lif_scan

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = 3


# ----------------------------------------------------------------------------------------
# A tiny model following the library's conventions (batch-major input, time-major inside,
# LIF layers sow 'spikes'/'s' and 'membranes'/'h', logits [T, B, K]).


class _LIF(nn.Module):

  @nn.compact
  def __call__(self, x):
    s, h, _ = lif_scan(x, decay=0.5, threshold=0.5)
    self.sow("membranes", "h", h)
    self.sow("spikes", "s", s)
    return s


class _Toy(nn.Module):
  timesteps: int = T

  @nn.compact
  def __call__(self, x, train: bool = False, timesteps: int | None = None):
    t, b = timesteps or self.timesteps, x.shape[0]
    y = nn.Conv(4, (3, 3), name="conv1")(x)  # direct encoding: computed once, repeated over T
    s = _LIF(name="lif1")(jnp.broadcast_to(y, (t,) + y.shape))
    y = nn.avg_pool(nn.Conv(6, (3, 3), name="conv2")(s.reshape((t * b,) + s.shape[2:])), (2, 2), (2, 2))
    s = _LIF(name="lif2")(y.reshape((t, b) + y.shape[1:]))
    return nn.Dense(10, name="fc")(s.reshape(t, b, -1))


@pytest.fixture(scope="module")
def toy():
  model = _Toy()
  x = jnp.zeros((1, 8, 8, 1))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  # Scale up so both layers fire at intermediate rates on the random data below.
  params = jax.tree.map(lambda p: 2.5 * p, params)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32),
              "label": rng.integers(0, 10, n).astype(np.int32)} for n in (5, 5, 3)]
  return model, {"params": params}, batches


def _numpy_rates(model, variables, batches):
  spikes = {"lif1": [], "lif2": []}
  correct = n = 0
  for b in batches:
    logits, cols = model.apply(variables, b["image"], mutable=["spikes"])
    for k in spikes:
      s = np.asarray(cols["spikes"][k]["s"][0])
      spikes[k].append(s.reshape(s.shape[0], s.shape[1], -1))
    correct += int(np.sum(np.argmax(np.asarray(logits).mean(0), -1) == b["label"]))
    n += len(b["label"])
  # r_j = (1 / (N·T)) Σ_n Σ_t s_j: mean over the time and example axes.
  return {k: np.concatenate(v, axis=1).mean(axis=(0, 1)) for k, v in spikes.items()}, correct / n


def test_collect_firing_matches_numpy(toy):
  model, variables, batches = toy
  got = rep.collect_firing(model, variables, batches, T)
  want, acc = _numpy_rates(model, variables, batches)
  assert got.examples == 13
  assert got.accuracy == pytest.approx(acc, abs=1e-12)
  assert set(got.rates) == {"lif1", "lif2"}
  for k in want:
    np.testing.assert_allclose(got.rates[k], want[k], rtol=0, atol=1e-6)
    assert np.all((got.rates[k] >= 0) & (got.rates[k] <= 1))
  # The data must exercise the measurement: neither silent nor saturated.
  means = [float(np.mean(r)) for r in got.rates.values()]
  assert all(0.02 < m < 0.98 for m in means), means


def test_collect_firing_max_batches_and_timesteps(toy):
  model, variables, batches = toy
  got = rep.collect_firing(model, variables, batches, T, max_batches=1)
  want, _ = _numpy_rates(model, variables, batches[:1])
  assert got.examples == 5
  np.testing.assert_allclose(got.rates["lif2"], want["lif2"], atol=1e-6)
  # timesteps is forwarded to the model: T = 1 gives the first timestep's spikes only.
  one = rep.collect_firing(model, variables, batches[:1], 1)
  _, cols = model.apply(variables, batches[0]["image"], timesteps=1, mutable=["spikes"])
  np.testing.assert_allclose(one.rates["lif1"],
                             np.asarray(cols["spikes"]["lif1"]["s"][0]).reshape(5, -1).mean(0), atol=1e-6)


def test_collect_firing_rejects_bad_input(toy):
  model, variables, batches = toy
  with pytest.raises(ValueError, match="max_batches.*0"):
    rep.collect_firing(model, variables, batches, T, max_batches=0)
  with pytest.raises(ValueError, match="no batch"):
    rep.collect_firing(model, variables, [], T)


def test_same_variables_twice_gives_zero_emd_and_other_weights_do_not(toy):
  model, variables, batches = toy
  a = rep.collect_firing(model, variables, batches, T).rates
  b = rep.collect_firing(model, variables, batches, T).rates
  assert all(v == 0.0 for v in firing.layer_emd(a, b).values())
  assert firing.pooled_emd(a, b) == 0.0
  other = {"params": jax.tree.map(lambda p: 0.6 * p, variables["params"])}
  c = rep.collect_firing(model, other, batches, T).rates
  emd = firing.layer_emd(a, c)
  for k in a:
    assert emd[k] == pytest.approx(scipy.stats.wasserstein_distance(a[k], c[k]), abs=1e-12)
  assert max(emd.values()) > 0


def test_layer_input_sources_follow_call_order(toy):
  model, variables, batches = toy
  assert rep.layer_input_sources(model, variables, batches[0]["image"], train=False,
                                 timesteps=T) == [None, "lif1", "lif2"]


class _Branch(nn.Module):
  """'skip' reads lif 'a' after lif 'b' has run; 'fc' reads a sum (no LIF output as such)."""

  @nn.compact
  def __call__(self, x, train: bool = False, timesteps: int | None = None):
    y = nn.Dense(8, name="inp")(x)
    sa = _LIF(name="a")(jnp.broadcast_to(y, (timesteps or T,) + y.shape))
    sb = _LIF(name="b")(nn.Dense(8, name="mid")(sa))
    return nn.Dense(10, name="fc")(sb + nn.Dense(8, name="skip")(sa))


def test_layer_input_sources_match_the_array_read():
  model, x = _Branch(), jnp.zeros((2, 5))
  variables = {"params": jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]}
  assert rep.layer_input_sources(model, variables, x, timesteps=T) == [None, "a", "a", "b"]


def test_hardware_for_dense_and_event(toy):
  model, variables, batches = toy
  rates = rep.collect_firing(model, variables, batches, T).rates
  x = batches[0]["image"][:1]
  q = rep.hardware_for(model, variables, x, weight_bits=2, membrane_bits=2, timesteps=T,
                       spike_rates=rates)
  assert [(l.c_in, l.c_out, l.h_in, l.h_out) for l in q.layers] == [
      (1, 4, 8, 8), (4, 6, 8, 4), (96, 10, 1, 1)]
  want_rho = [1.0, float(np.mean(rates["lif1"])), float(np.mean(rates["lif2"]))]
  np.testing.assert_allclose(q.input_rates, want_rho, rtol=1e-12)
  assert q.sources == [None, "lif1", "lif2"]
  cfg = hw.CrossbarConfig(timesteps=T, weight_bits=2, membrane_bits=2)
  assert q.dense == hw.crossbar_cost(q.layers, cfg)
  assert q.event == hw.crossbar_cost(q.layers, dataclasses.replace(cfg, mode="event"),
                                     spike_rates=want_rho)
  # Event mode charges the crossbar reads at the input rate only.
  xbar = q.dense.energy_breakdown_j["crossbar"]
  per_cycle = xbar / sum(q.dense.cycles)
  assert q.event.energy_breakdown_j["crossbar"] == pytest.approx(
      per_cycle * float(np.dot(want_rho, q.dense.cycles)), rel=1e-12)
  fp = rep.hardware_for(model, variables, x, weight_bits=16, membrane_bits=22, timesteps=T,
                        spike_rates=rates)
  for mode in ("dense", "event"):
    fq, qq = getattr(fp, mode), getattr(q, mode)
    assert qq.energy_j < fq.energy_j and qq.area_mm2 < fq.area_mm2
    assert all(v > 0 for v in (qq.energy_j, qq.latency_s, qq.area_mm2, qq.tops_per_w, qq.tops_per_mm2))
  no_rates = rep.hardware_for(model, variables, x, weight_bits=2, membrane_bits=2, timesteps=T)
  assert no_rates.event is None and no_rates.dense == q.dense
  with pytest.raises(ValueError, match="lif2"):
    rep.hardware_for(model, variables, x, weight_bits=2, membrane_bits=2, timesteps=T,
                     spike_rates={"lif1": rates["lif1"]})


@pytest.mark.parametrize("cfg, want", [
    ({"weight": {"kind": "none"}, "membrane": {"kind": "none"}}, (16, 22)),
    ({"weight": {"kind": "lsq", "bits": 2}, "membrane": {"kind": "ternary"}}, (2, 2)),
    ({"weight": {"kind": "ternary"}, "membrane": {"kind": "integer", "lower": -3.0}}, (2, 3)),
    ({"weight": {"kind": "sawb", "bits": 4}, "membrane": {"kind": "uniform", "bits": 5}}, (4, 5)),
    ({}, (16, 22)),
])
def test_hardware_bits(cfg, want):
  assert rep.hardware_bits({"quant": cfg}) == want


def test_hardware_bits_rejects_unknown_kind():
  with pytest.raises(ValueError, match="bogus"):
    rep.hardware_bits({"quant": {"membrane": {"kind": "bogus"}}})


@pytest.mark.parametrize("cfg, want", [
    ({"kind": "none"}, ("float", None, 16)),
    ({"kind": "lsq", "bits": 2}, ("full", 4, 2)),  # LSQ's default grid (its paper's)
    ({"kind": "lsq", "bits": 2, "grid": "symmetric"}, ("symmetric", 3, 2)),  # ternary levels
    ({"kind": "uniform", "bits": 8}, ("symmetric", 255, 8)),
    ({"kind": "sawb", "bits": 4, "grid": "full"}, ("full", 16, 4)),
    ({"kind": "ternary"}, ("ternary", 3, 2)),
])
def test_weight_grid_info(cfg, want):
  import ml_collections

  for c in (cfg, ml_collections.ConfigDict(cfg)):
    info = rep.weight_grid_info(c)
    assert (info["grid"], info["levels"], info["stored_bits"]) == want
    assert rep.weight_bits_of(c) == want[2]
  if want[1] is not None:  # stored bits = ceil(log2 levels), by hand
    assert want[2] == math.ceil(math.log2(want[1]))


def test_bad_grid_in_config_names_value_and_allowed():
  with pytest.raises(ValueError, match=r"'half'.*allowed: \['symmetric', 'full'\]"):
    rep.weight_grid_info({"kind": "lsq", "bits": 2, "grid": "half"})


def test_layer_weight_grids_follow_first_and_last_layer_rules():
  quant = {"weight": {"kind": "lsq", "bits": 2}, "first_layer": {"kind": "uniform", "bits": 8},
           "last_layer": {"kind": "same"}}
  infos = rep.layer_weight_grids({"quant": quant}, 3)
  assert [(i["grid"], i["levels"], i["stored_bits"]) for i in infos] == [
      ("symmetric", 255, 8), ("full", 4, 2), ("full", 4, 2)]
  assert [i["stored_bits"] for i in infos] == rep.layer_weight_bits({"quant": quant}, 3)


LSQ2 = {"kind": "lsq", "bits": 2}
U8 = {"kind": "uniform", "bits": 8}
SAME = {"kind": "same"}
NONE = {"kind": "none"}


@pytest.mark.parametrize("first, last, want", [
    (SAME, SAME, [2, 2, 2, 2]),
    (NONE, NONE, [16, 2, 2, 16]),
    (U8, U8, [8, 2, 2, 8]),
    (U8, SAME, [8, 2, 2, 2]),
    (SAME, {"kind": "sawb", "bits": 4}, [2, 2, 2, 4]),
    (None, None, [16, 2, 2, 16]),  # unset: full precision, as QuantConfig treats None
])
def test_layer_weight_bits(first, last, want):
  quant = {"weight": LSQ2, "membrane": {"kind": "ternary"}}
  if first is not None:
    quant.update(first_layer=first, last_layer=last)
  assert rep.layer_weight_bits({"quant": quant}, 4) == want
  # The body's bits are the stage's weight bits in the report.
  assert rep.hardware_bits({"quant": quant})[0] == 2


def test_layer_weight_bits_fp_teacher_single_layer_and_bad_count():
  import ml_collections

  fp = ml_collections.ConfigDict({"quant": {"weight": NONE, "first_layer": NONE, "last_layer": SAME}})
  assert rep.layer_weight_bits(fp, 3) == [16, 16, 16]
  # One layer is both first and last: charged the wider of the two.
  assert rep.layer_weight_bits({"quant": {"weight": LSQ2, "first_layer": U8, "last_layer": SAME}}, 1) == [8]
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match=f"n_layers.*{bad}"):
      rep.layer_weight_bits({"quant": {"weight": LSQ2}}, bad)


def _student_cfg(name: str, first, last, bn_fold: bool = False):
  from mdsnn_jax.nn import default_model_config

  cfg = default_model_config()
  cfg.name, cfg.timesteps, cfg.conv_impl = name, 1, "xla"
  cfg.quant.weight, cfg.quant.first_layer, cfg.quant.last_layer = LSQ2, first, last
  cfg.quant.bn_fold = bn_fold
  return cfg


def _abstract_model(cfg, x):
  from mdsnn_jax import nn as nn_lib

  model = nn_lib.create_model(cfg, 10)
  return model, jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.PRNGKey(0))


MODEL_INPUTS = {"digits_mlp": (1, 8, 8, 1), "digits_cnn": (1, 8, 8, 1), "vgg9": (1, 8, 8, 3),
                "vgg16": (1, 32, 32, 3), "msresnet18": (1, 16, 16, 3),
                "msresnet19": (1, 16, 16, 3), "sewresnet18": (1, 16, 16, 3),
                "resnet18": (1, 16, 16, 3), "resnet19": (1, 16, 16, 3),
                "resnet19_spquant": (1, 32, 32, 3)}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(MODEL_INPUTS))
def test_layer_weight_bits_match_the_quantizer_each_crossbar_layer_holds(name):
  """The positional first / last mapping agrees with the model: the k-th crossbar layer of
  `layer_shapes_from_model` holds a weight quantizer of `layer_weight_bits(...)[k]` bits."""
  cfg = _student_cfg(name, U8, NONE, bn_fold=True)  # distinct first / body / last bits
  x = jnp.zeros(MODEL_INPUTS[name])
  model, variables = _abstract_model(cfg, x)
  held: dict[tuple, int] = {}  # module path -> bits, in call order

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if (context.method_name == "__call__" and mod.scope is not None
        and "kernel" in mod.variables.get("params", {})):
      held.setdefault(tuple(mod.scope.path), rep.weight_bits_of(mod.weight_quant))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v: model.apply(v, x, train=False, mutable=["spikes"]), variables)
  shapes = hw.layer_shapes_from_model(model, variables, x, train=False, mutable=["spikes"])
  assert len(held) == len(shapes) >= 2
  assert list(held.values()) == rep.layer_weight_bits(cfg, len(shapes))
  assert list(held.values())[0] == 8 and list(held.values())[-1] == 16
  assert set(list(held.values())[1:-1]) <= {2}


def test_hardware_for_charges_first_and_last_layer_bits():
  # digits_mlp: dense fc1 64 → 128 and classifier fc 128 → 10, one row-PE each
  # (⌈64/(9·64)⌉ = ⌈128/(9·64)⌉ = 1); column PEs ⌈128·c_w/64⌉ and ⌈10·c_w/64⌉ with
  # c_w = ⌈b/4⌉: 2 bits → 2 + 1 PEs, 8 bits → 4 + 1, 16 bits → 8 + 1.
  x = jnp.zeros((1, 8, 8, 1))
  res = {}
  for label, fl in (("same", SAME), ("u8", U8), ("none", NONE)):
    cfg = _student_cfg("digits_mlp", fl, fl)
    model, variables = _abstract_model(cfg, x)
    w, u = rep.hardware_bits(cfg)
    res[label] = rep.hardware_for(model, variables, x, weight_bits=w, membrane_bits=u, timesteps=T,
                                  layer_bits=functools.partial(rep.layer_weight_bits, cfg))
  assert [l.weight_bits for l in res["same"].layers] == [2, 2]
  assert [l.weight_bits for l in res["u8"].layers] == [8, 8]
  assert res["same"].dense.n_pe == (2, 1) and res["same"].dense.total_pes == 3
  assert res["u8"].dense.n_pe == (4, 1) and res["u8"].dense.total_pes == 5
  assert res["none"].dense.n_pe == (8, 1) and res["none"].dense.total_pes == 9
  # Dense layers run one cycle per PE at the same E_cyc: energy ∝ Σ n_PE.
  assert res["u8"].dense.energy_j == pytest.approx(res["same"].dense.energy_j * 5 / 3, rel=1e-12)
  # 'same' everywhere is the network's bits: identical to charging weight_bits to every layer.
  cfg = _student_cfg("digits_mlp", SAME, SAME)
  model, variables = _abstract_model(cfg, x)
  plain = rep.hardware_for(model, variables, x, weight_bits=2, membrane_bits=22, timesteps=T)
  assert [l.weight_bits for l in plain.layers] == [None, None]
  assert plain.dense == res["same"].dense
  # A sequence works too; its length must match the crossbar layers.
  seq = rep.hardware_for(model, variables, x, weight_bits=2, membrane_bits=22, timesteps=T,
                         layer_bits=[8, 8])
  assert seq.dense == res["u8"].dense
  with pytest.raises(ValueError, match="layer_bits has 3 entries.*2"):
    rep.hardware_for(model, variables, x, weight_bits=2, membrane_bits=22, timesteps=T,
                     layer_bits=[8, 2, 8])


def test_cost_summary_units():
  c = hw.crossbar_cost(hw.VGG9_CIFAR10_SPIKESIM)
  s = rep.cost_summary(c)
  # SpikeSim's VGG9 reference (docs/method.md): 15.907 µJ, 62.833 ms, 8.4255 mm².
  assert s["energy_uj"] == pytest.approx(15.907, rel=1e-3)
  assert s["latency_ms"] == pytest.approx(62.833, rel=1e-3)
  assert s["area_mm2"] == pytest.approx(8.4255, rel=1e-3)
  assert s["edap_js_mm2"] == pytest.approx(15.907e-6 * 62.833e-3 * 8.4255, rel=3e-3)
  assert sum(s["energy_breakdown_uj"].values()) == pytest.approx(s["energy_uj"], rel=1e-12)


def test_fmt():
  assert rep.fmt(0.123456) == "0.1235"
  assert rep.fmt(12) == "12"
  assert rep.fmt(None) == "–"
  assert rep.fmt(1.5e-7) == "1.5e-07"


def test_atomic_writers_leave_no_temporaries(tmp_path):
  rep.write_text_atomic(tmp_path / "a.md", "hello")
  assert (tmp_path / "a.md").read_text() == "hello"
  plt = rep._pyplot()
  fig, ax = plt.subplots()
  ax.plot([0, 1])
  rep.save_figure_atomic(fig, tmp_path / "p.png")
  assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "p.png"]


# ----------------------------------------------------------------------------------------
# End to end on a real (tiny) training run of the lead's loop.


def _have_pipeline() -> str | None:
  try:
    from mdsnn_jax import nn as nn_lib
    from mdsnn_jax.train import loop  # noqa: F401
  except ImportError as e:
    return f"training pipeline not importable: {e}"
  if not hasattr(nn_lib, "create_model"):
    return "mdsnn_jax.nn.create_model is not there yet"
  return None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  why = _have_pipeline()
  if why:
    pytest.skip(why)
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train.loop import train_and_evaluate

  c = base_config()
  c.stages = "fp,qat"
  c.data.name = "digits"
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  c.model.quant.weight = {"kind": "lsq", "bits": 2}
  c.model.quant.membrane = {"kind": "ternary"}
  c.train.global_batch = 32
  c.train.eval_batch = 400  # the whole digits test split (359) in one batch: one compilation
  c.train.steps = 20
  c.train.log_every = 10
  c.train.eval_every = 0
  c.train.checkpoint_every = 10
  workdir = tmp_path_factory.mktemp("report_workdir")
  train_and_evaluate(c, str(workdir))
  out = workdir / "report"
  report = rep.build_report(workdir, out)
  return workdir, out, report


def _row(md: str, section: str, first_cells: list[str]) -> list[str]:
  """Cells of the first table row under the heading `section` whose leading cells match."""
  start = md.index(section)
  for line in md[start:].splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and cells[:len(first_cells)] == first_cells:
      return cells
  raise AssertionError(f"no table row starting with {first_cells}")


@pytest.mark.integration
def test_report_files_and_contents(trained):
  workdir, out, report = trained
  assert json.loads((out / "report.json").read_text()) == report
  md = (out / "report.md").read_text()
  for header in ("## Accuracy", "## Firing behaviour", "## Firing-rate EMD vs the FP teacher",
                 "## Hardware", "## Gains over the FP teacher", "| stage | weight bits |",
                 "| layer | neurons | mean rate | dead fraction |", "| layer | EMD fp vs qat |",
                 "energy (µJ)", "EDAP (J·s·mm²)", "TOPS/W", "TOPS/mm²"):
    assert header in md, header
  assert set(report["stages"]) == {"fp", "qat"}
  summaries = json.loads((workdir / "summary.json").read_text())["stages"]
  for stage, s in report["stages"].items():
    # Same test split and forward as the training loop's evaluation.
    assert s["accuracy_trained"] == summaries[stage]["test_accuracy"]
    assert s["accuracy_measured"] == pytest.approx(s["accuracy_trained"], abs=2.5 / s["examples"])
    assert _row(md, "## Accuracy", [stage])[1:] == [rep.fmt(s["weight_bits"]), s["weight_grid"]] + [
        rep.fmt(v) for v in (s["weight_levels"], s["membrane_bits"], s["accuracy_trained"],
                             s["accuracy_measured"], s["examples"])]
    for mode in ("dense", "event"):
      h = s["hardware"][mode]
      assert _row(md, "## Hardware", [stage, mode])[2:] == [rep.fmt(h[k]) for k in rep.HARDWARE_FIELDS]
      assert all(h[k] > 0 for k in rep.HARDWARE_FIELDS)
    for layer, f in s["firing"].items():
      assert 0.0 <= f["mean_rate"] <= 1.0 and 0.0 <= f["dead_fraction"] <= 1.0
      assert f["n_neurons"] > 0
    assert all(0.0 <= r <= 1.0 for r in s["input_rates"])
    assert s["input_rates"][0] == 1.0 and s["input_rate_sources"][0] is None
  assert report["stages"]["fp"]["firing"].keys() == report["stages"]["qat"]["firing"].keys()
  assert (report["stages"]["fp"]["weight_bits"], report["stages"]["fp"]["membrane_bits"]) == (16, 22)
  assert (report["stages"]["qat"]["weight_bits"], report["stages"]["qat"]["membrane_bits"]) == (2, 2)
  # Every stage states its weight grid and levels: LSQ 2-bit on its default (full) grid.
  assert [(report["stages"][st]["weight_grid"], report["stages"][st]["weight_levels"])
          for st in ("fp", "qat")] == [("float", None), ("full", 4)]
  assert "| stage | weight bits | weight grid | weight levels | membrane bits |" in md
  assert [(l["weight_grid"], l["weight_levels"]) for l in report["stages"]["qat"]["layers"]] == [
      ("float", None), ("full", 4), ("float", None)]
  # digits_cnn conv0, conv1, fc; base_config keeps the first / last layer full precision.
  assert [l["weight_bits"] for l in report["stages"]["fp"]["layers"]] == [16, 16, 16]
  assert [l["weight_bits"] for l in report["stages"]["qat"]["layers"]] == [16, 2, 16]
  for mode in ("dense", "event"):
    assert (report["stages"]["qat"]["hardware"][mode]["energy_uj"]
            < report["stages"]["fp"]["hardware"][mode]["energy_uj"])
    ratio = report["ratios"]["qat"][mode]
    assert ratio["energy_reduction"] == pytest.approx(
        report["stages"]["fp"]["hardware"][mode]["energy_uj"]
        / report["stages"]["qat"]["hardware"][mode]["energy_uj"], rel=1e-9)
    assert _row(md, "## Gains over the FP teacher", ["qat", mode])[2:] == [rep.fmt(ratio[k]) for k in rep.RATIO_FIELDS]
  emd = report["emd"]["qat"]
  assert set(emd["per_layer"]) == set(report["stages"]["fp"]["firing"])
  assert all(v >= 0 for v in emd["per_layer"].values()) and emd["pooled"] >= 0
  assert _row(md, "## Firing-rate EMD", ["**pooled**"])[1] == rep.fmt(emd["pooled"])


@pytest.mark.integration
def test_report_plots_are_pngs(trained):
  _, out, report = trained
  assert report["files"]["plots"] == list(rep.PLOT_FILES) + [rep.SALIENCY_PLOT]
  for name in report["files"]["plots"]:
    data = (out / name).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, name
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


@pytest.mark.integration
def test_report_of_fp_vs_itself_has_zero_emd(trained):
  """The FP stage's variables evaluated twice through the library give EMD 0."""
  workdir, _, _ = trained
  from mdsnn_jax import data as data_lib
  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train import checkpoint as ckpt
  from mdsnn_jax.train.loop import stage_model_config
  import ml_collections

  config = ml_collections.ConfigDict(json.loads((workdir / "summary.json").read_text())["config"])
  info = data_lib.dataset_info(config.data)
  model = nn_lib.create_model(stage_model_config(config, "fp"), info.num_classes)
  sample = np.zeros((1,) + tuple(info.image_shape), np.float32)
  like = jax.eval_shape(lambda k: model.init({"params": k}, sample, train=False), jax.random.PRNGKey(0))
  like = {k: v for k, v in like.items() if k in ("params", "batch_stats", "quant_state")}
  variables = ckpt.load_variables(workdir / "fp" / "final_variables", like)

  def rates():
    loader = data_lib.make_loader(config.data, "test", batch_size=128, seed=0, shuffle=False,
                                  num_epochs=1, drop_remainder=False)
    return rep.collect_firing(model, variables, loader, int(config.model.timesteps), max_batches=2).rates

  a, b = rates(), rates()
  assert firing.pooled_emd(a, b) == 0.0
  assert all(v == 0.0 for v in firing.layer_emd(a, b).values())


def _fp_only_copy(workdir: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  shutil.copytree(workdir / "fp" / "final_variables", dest / "fp" / "final_variables")
  shutil.copy(workdir / "summary.json", dest / "summary.json")
  return dest


@pytest.mark.integration
def test_report_without_quantized_stage_and_without_workdir(trained, tmp_path):
  workdir, _, _ = trained
  only_fp = _fp_only_copy(workdir, tmp_path / "only_fp")
  report = rep.build_report(only_fp, max_batches=1, eval_batch=100)
  assert list(report["stages"]) == ["fp"] and report["emd"] == {} and report["ratios"] == {}
  assert report["stages"]["fp"]["examples"] == 100
  assert sorted(os.listdir(only_fp / "report")) == sorted(
      ["report.json", "report.md", "firing_rates.png", "energy_breakdown.png"])
  assert "## Gains over the FP teacher" not in (only_fp / "report" / "report.md").read_text()
  with pytest.raises(FileNotFoundError, match="summary"):
    rep.build_report(tmp_path / "nothing_here")


@pytest.mark.integration
def test_launcher_prints_report_path(trained, tmp_path):
  workdir, _, _ = trained
  only_fp = _fp_only_copy(workdir, tmp_path / "only_fp")  # one stage: a quicker subprocess
  out = tmp_path / "cli_report"
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "report.py"), f"--workdir={only_fp}", f"--out={out}",
       "--max_batches=1"], capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == str(out / "report.md")
  report = json.loads((out / "report.json").read_text())
  assert report["max_batches"] == 1 and list(report["stages"]) == ["fp"]


# ----------------------------------------------------------------------------------------
# Saliency consistency of the distilled stages.


@pytest.fixture(scope="module")
def distilled(trained, tmp_path_factory):
  """A workdir with 'fp' (copied from `trained`: the loop finds it finished) and 'md'."""
  from mdsnn_jax.train.loop import train_and_evaluate
  import ml_collections

  workdir, _, _ = trained
  config = ml_collections.ConfigDict(json.loads((workdir / "summary.json").read_text())["config"])
  config.stages = "fp,md"
  dest = tmp_path_factory.mktemp("md_workdir")
  shutil.copytree(workdir / "fp", dest / "fp")
  train_and_evaluate(config, str(dest))
  out = dest / "report"
  return dest, out, rep.build_report(dest, out, saliency_examples=40, saliency_k=20)


@pytest.mark.integration
def test_report_saliency_section_for_distilled_stage(distilled):
  from mdsnn_jax import saliency as sal

  workdir, out, report = distilled
  assert set(report["stages"]) == {"fp", "md"}
  s = report["saliency"]
  assert list(s) == ["md"]
  md_entry = s["md"]
  assert md_entry["teacher"] == "fp" and md_entry["examples"] == 40 and md_entry["k"] == 20.0
  assert md_entry["spearman_defined"] == 40
  assert -1.0 <= md_entry["spearman"] <= 1.0 and 0.0 <= md_entry["iou"] <= 1.0
  # Recomputed from the two stages' maps on the first 40 test images.
  from mdsnn_jax import data as data_lib
  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train.stages import load_trained_variables, sample_input, stage_model_config
  import ml_collections

  config = ml_collections.ConfigDict(json.loads((workdir / "summary.json").read_text())["config"])
  info = data_lib.dataset_info(config.data)
  images = next(iter(data_lib.make_loader(config.data, "test", batch_size=40, seed=0,
                                          shuffle=False, num_epochs=1)))["image"]
  maps = {}
  for stage in ("fp", "md"):
    model = nn_lib.create_model(stage_model_config(config, stage), info.num_classes)
    variables = load_trained_variables(model, sample_input(info, 2), workdir / stage / "final_variables")
    maps[stage] = sal.saliency_maps(lambda x: model.apply(variables, x, train=False), jnp.asarray(images))
  want = sal.consistency(maps["fp"], maps["md"], k=20)
  assert md_entry["spearman"] == pytest.approx(want.spearman, abs=1e-5)
  assert md_entry["iou"] == pytest.approx(want.iou, abs=1e-6)
  # Two different models: agreement is partial, not trivially perfect or absent.
  assert 0.0 < md_entry["spearman"] < 1.0 and 0.0 < md_entry["iou"] < 1.0
  text = (out / "report.md").read_text()
  assert "## Saliency consistency vs the teacher" in text
  assert _row(text, "## Saliency consistency", ["md"])[1:] == [
      "fp", rep.fmt(md_entry["spearman"]), rep.fmt(md_entry["iou"]), "20", "40"]
  assert f"![{rep.SALIENCY_PLOT}]({rep.SALIENCY_PLOT})" in text
  data = (out / rep.SALIENCY_PLOT).read_bytes()
  assert data[:8] == PNG_MAGIC and len(data) > 1000
  assert report["files"]["plots"][-1] == rep.SALIENCY_PLOT


@pytest.mark.integration
def test_report_saliency_for_qat_and_off_switch(trained, tmp_path):
  workdir, out, report = trained
  assert list(report["saliency"]) == ["qat"] and report["saliency"]["qat"]["examples"] == 64
  assert report["saliency"]["qat"]["k"] == 10.0
  assert "## Saliency consistency" in (out / "report.md").read_text()
  off = rep.build_report(workdir, tmp_path / "off", max_batches=1, eval_batch=100,
                         saliency_examples=0)
  assert off["saliency"] == {} and rep.SALIENCY_PLOT not in off["files"]["plots"]
  assert not (tmp_path / "off" / rep.SALIENCY_PLOT).exists()
  assert "## Saliency consistency" not in (tmp_path / "off" / "report.md").read_text()


@pytest.mark.parametrize("kwargs, match", [
    (dict(saliency_k=0), r"k must be a percentage of pixels in \(0, 100\], got 0"),
    (dict(saliency_k=101), r"k must be a percentage.*101"),
    (dict(saliency_examples=-1), r"saliency_examples must be an int >= 0.*-1"),
])
def test_report_rejects_bad_saliency_args_before_work(kwargs, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    rep.build_report(tmp_path / "nothing_here", **kwargs)  # no workdir: the check comes first


@pytest.mark.integration
def test_report_saliency_with_teacher_from_another_workdir(distilled, tmp_path):
  """A workdir holding only 'md', whose teacher is distill.teacher_workdir: same numbers."""
  workdir, _, report = distilled
  summary = json.loads((workdir / "summary.json").read_text())
  summary["config"]["distill"]["teacher_workdir"] = str(workdir)
  only_md = tmp_path / "only_md"
  shutil.copytree(workdir / "md" / "final_variables", only_md / "md" / "final_variables")
  (only_md / "summary.json").write_text(json.dumps(summary))
  got = rep.build_report(only_md, max_batches=1, saliency_examples=40, saliency_k=20)
  assert list(got["stages"]) == ["md"] and list(got["saliency"]) == ["md"]
  entry = got["saliency"]["md"]
  assert entry["teacher"] == str(workdir / "fp")
  assert entry["spearman"] == pytest.approx(report["saliency"]["md"]["spearman"], abs=1e-9)
  assert entry["iou"] == pytest.approx(report["saliency"]["md"]["iou"], abs=1e-12)
  assert (only_md / "report" / rep.SALIENCY_PLOT).read_bytes()[:8] == PNG_MAGIC


def _stage_rates_by_hand(workdir: pathlib.Path, stage: str, batches) -> dict[str, np.ndarray]:
  """Per-neuron rates of one stage, counted without the report: the stage's own stored config,
  its final variables, model.apply with the 'spikes' collection, mean over T and examples."""
  import ml_collections

  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train import checkpoint as ckpt
  from mdsnn_jax.train.stages import stage_model_config
  config = ml_collections.ConfigDict(json.loads((workdir / stage / "config.json").read_text())["config"])
  model = nn_lib.create_model(stage_model_config(config, stage), 10)
  sample = np.zeros((1,) + batches[0]["image"].shape[1:], np.float32)
  like = jax.eval_shape(lambda k: model.init({"params": k}, sample, train=False),
                        jax.random.PRNGKey(0))
  like = {k: v for k, v in like.items() if k in ("params", "batch_stats", "quant_state")}
  variables = ckpt.load_variables(workdir / stage / "final_variables", like)
  sums: dict[str, np.ndarray] = {}
  count = 0
  for b in batches:
    _, cols = model.apply(variables, jnp.asarray(b["image"]), train=False,
                          timesteps=int(config.model.timesteps), mutable=["spikes"])
    for name, s in distill.flatten_taps(cols["spikes"]).items():
      s = np.asarray(s, np.float64)  # [T, B, ...]
      per_neuron = s.reshape(s.shape[0], s.shape[1], -1).sum(axis=(0, 1)) / s.shape[0]
      sums[name] = sums.get(name, 0.0) + per_neuron
    count += b["image"].shape[0]
  return {k: v / count for k, v in sums.items()}


@pytest.mark.integration
def test_report_emd_equals_scipy_on_rates_counted_by_hand(trained):
  """The report's per-layer and pooled EMD are scipy's W1 between the FP stage's and the QAT
  stage's rates, each counted independently from that stage's own variables."""
  workdir, _, report = trained
  from mdsnn_jax import data as data_lib
  import ml_collections
  config = ml_collections.ConfigDict(json.loads((workdir / "summary.json").read_text())["config"])
  batches = list(data_lib.make_loader(config.data, "test", batch_size=400, seed=0, shuffle=False,
                                      num_epochs=1, drop_remainder=False))
  fp = _stage_rates_by_hand(workdir, "fp", batches)
  qat = _stage_rates_by_hand(workdir, "qat", batches)
  got = report["emd"]["qat"]
  assert set(got["per_layer"]) == set(fp) == set(qat)
  for layer in fp:
    want = scipy.stats.wasserstein_distance(fp[layer], qat[layer])
    assert got["per_layer"][layer] == pytest.approx(want, abs=1e-6), layer
  pooled = scipy.stats.wasserstein_distance(np.concatenate([fp[k] for k in sorted(fp)]),
                                            np.concatenate([qat[k] for k in sorted(qat)]))
  assert got["pooled"] == pytest.approx(pooled, abs=1e-6)
  # A 2-bit student fires differently from its teacher: EMD 0 here would mean fp vs fp.
  assert got["pooled"] > 1e-4 and max(got["per_layer"].values()) > 1e-4, got


def _captured_figure(monkeypatch, plot, *args):
  """Runs a report plot function and returns its figure instead of only a PNG on disk."""
  figures = []
  monkeypatch.setattr(rep, "save_figure_atomic", lambda fig, path: figures.append(fig))
  plt = rep._pyplot()
  monkeypatch.setattr(plt, "close", lambda fig=None: None)
  plot(*args, "unused.png")
  assert len(figures) == 1
  return figures[0]


def test_emd_plot_draws_each_stage_layer_value(monkeypatch):
  emd = {"qat": {"per_layer": {"lif0": 0.10, "lif1": 0.02, "lif2": 0.30}, "pooled": 0.12},
         "md": {"per_layer": {"lif0": 0.05, "lif1": 0.01, "lif2": 0.20}, "pooled": 0.07}}
  fig = _captured_figure(monkeypatch, rep.plot_emd, emd)
  ax = fig.axes[0]
  heights = [round(p.get_height(), 9) for p in ax.patches]
  assert heights == [0.10, 0.02, 0.30, 0.05, 0.01, 0.20]
  # Bars of one layer stand side by side, each stage in its own colour, layers labelled.
  xs = [p.get_x() + p.get_width() / 2 for p in ax.patches]
  assert xs[0] < xs[3] < xs[1] < xs[4] < xs[2] < xs[5]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["lif0", "lif1", "lif2"]
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == ["fp vs qat (pooled 0.12)", "fp vs md (pooled 0.07)"]


def test_firing_histogram_plot_draws_the_rate_fractions(monkeypatch):
  rng = np.random.default_rng(0)
  rates = {"fp": {"lif0": rng.uniform(0, 1, 200), "lif1": rng.uniform(0, 0.3, 50)},
           "qat": {"lif0": rng.uniform(0, 0.5, 200), "lif1": np.zeros(50)}}
  fig = _captured_figure(monkeypatch, rep.plot_firing_histograms, rates)
  axes = [ax for ax in fig.axes if ax.get_title()]
  assert [ax.get_title() for ax in axes] == ["lif0", "lif1"]
  for ax in axes:
    layer = ax.get_title()
    stairs = [a for a in ax.patches if type(a).__name__ == "StepPatch"]
    assert [s.get_label() for s in stairs] == ["fp", "qat"]
    for s, stage in zip(stairs, ("fp", "qat")):
      values, edges, _ = s.get_data()
      counts, want_edges = np.histogram(rates[stage][layer], bins=20, range=(0, 1))
      np.testing.assert_allclose(values, counts / counts.sum())
      np.testing.assert_allclose(edges, want_edges)
  # A silent layer: all of its neurons in the first bin.
  qat_lif1 = [a for a in axes[1].patches if a.get_label() == "qat"][0].get_data()[0]
  assert qat_lif1[0] == 1.0 and qat_lif1[1:].sum() == 0.0


def test_energy_plot_stacks_the_components(monkeypatch):
  hw_by_stage = {s: {m: {"energy_breakdown_uj": {c: float(i + 1 + 10 * j)
                                                 for i, c in enumerate(hw.ENERGY_COMPONENTS)}}
                     for j, m in enumerate(("dense", "event"))} for s in ("fp", "qat")}
  fig = _captured_figure(monkeypatch, rep.plot_energy_breakdown, hw_by_stage)
  ax = fig.axes[0]
  n_bars = 4
  patches = ax.patches
  assert len(patches) == n_bars * len(hw.ENERGY_COMPONENTS)
  tops = np.zeros(n_bars)
  for j, comp in enumerate(hw.ENERGY_COMPONENTS):
    for b in range(n_bars):
      p = patches[j * n_bars + b]
      want = float(j + 1 + 10 * (b % 2))
      assert p.get_height() == pytest.approx(want) and p.get_y() == pytest.approx(tops[b])
      tops[b] += want
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      "fp\ndense", "fp\nevent", "qat\ndense", "qat\nevent"]
