"""The cost model: XLA's FLOP count against hand counts, the roofline, and the stored estimates
against a fresh computation."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from mdsnn_jax import nn as nn_lib
from mdsnn_jax.train import cost, stages, tables


def test_one_dense_layer_costs_2_in_out_per_example_plus_its_bias():
  b, n_in, n_out = 32, 64, 10
  args = (jax.ShapeDtypeStruct((n_in, n_out), jnp.float32), jax.ShapeDtypeStruct((n_out,), jnp.float32),
          jax.ShapeDtypeStruct((b, n_in), jnp.float32))
  c = cost.lowered_cost(lambda w, bias, x: x @ w + bias, args, "float32")
  assert c.flops == 2 * b * n_in * n_out + b * n_out
  # bytes: the three inputs and the output once each, and the product before the bias add.
  assert c.bytes >= 4 * (n_in * n_out + n_out + b * n_in + b * n_out)


def _digits_teacher():
  ds, info, runs = cost.plan_runs(tables.MD_SNN, "smoke")[0]
  run = next(r for r in runs if r.key == "teacher")
  return run, info


def test_digits_mlp_step_against_a_hand_count_of_its_matmuls():
  """The smoke teacher: digits MLP 64 → 128 → LIF → 10 at T = 2, batch 32. Static input:
  'fc1' runs once and its output is broadcast over T; the classifier 'fc' runs every step.
  The step counts forward, backward and the Adam update; its matmuls, by hand (2·in·out per
  example per product): forward fc1 + T·fc, backward the weight gradients of both and the
  input gradient of fc (none for fc1: the input is data). Everything else (LIF, surrogate,
  loss, Adam over ~10k parameters) is elementwise and small beside them."""
  run, info = _digits_teacher()
  b, t = run.batch, int(run.config.model.timesteps)
  assert (b, t, info.image_shape) == (32, 2, (8, 8, 1))
  fc1, fc = 2 * b * 64 * 128, 2 * b * 128 * 10
  forward = fc1 + t * fc
  step = forward + fc1 + 2 * t * fc

  model = nn_lib.create_model(stages.stage_model_config(run.config, "fp"), info.num_classes)
  sample = stages.sample_input(info, t)
  variables = stages.abstract_variables(model, sample)
  x = jax.ShapeDtypeStruct((b,) + sample.shape[1:], jnp.float32)
  fwd = cost.lowered_cost(lambda v, x: model.apply(v, x, train=False), (variables, x), "float32")
  assert forward <= fwd.flops <= 1.15 * forward, (fwd.flops, forward)

  c = cost.step_cost(run, info)
  assert step <= c.flops <= 1.35 * step, (c.flops, step)


def test_roofline_takes_the_slower_of_compute_and_memory():
  eff = cost.EFFICIENCY
  c = cost.StepCost(flops=1e12, bytes=1e9, dtype="bfloat16")
  lo, hi = c.seconds()
  assert lo == pytest.approx(1e12 / (989.4e12 * eff))
  assert hi == lo  # compute-bound: 2.0 ms of FLOPs against 0.6 ms of bytes
  c = cost.StepCost(flops=1e12, bytes=1e11, dtype="float32")
  lo, hi = c.seconds(devices=4)
  assert lo == pytest.approx(1e12 / (494.7e12 * eff) / 4)
  assert hi == pytest.approx(1e11 / (3.35e12 * eff) / 4)
  assert cost.run_seconds(c, 1000, 4)[1] == pytest.approx(1000 * hi + cost.RUN_OVERHEAD_S)


def test_stored_estimates_match_a_fresh_computation_of_one_small_row():
  stored = json.loads(cost.ESTIMATES_FILE.read_text())
  assert stored["command"] == cost.COMMAND and stored["source"] == cost.SOURCE
  assert stored["constants"]["efficiency"] == cost.EFFICIENCY
  run, info = _digits_teacher()
  entry = stored["runs"][cost.fingerprint(run, info)]
  fresh = cost.step_cost(run, info)
  assert entry["flops"] == pytest.approx(fresh.flops, rel=1e-9)
  assert entry["bytes"] == pytest.approx(fresh.bytes, rel=1e-9)
  assert stored["tables"]["md_snn"]["smoke"]["digits"]["teacher"]["steps"] == run.steps


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_every_full_table_has_an_estimate_for_every_run(name):
  """What --list prints: no run of a full (or gpu_short) table is missing from, or stale
  in, the stored estimates."""
  for scale in tables.ACCELERATOR_SCALES:
    est = cost.table_estimate(tables.TABLES[name], scale)
    assert not est.missing, f"re-run `{cost.COMMAND}`: {est.missing}"
    assert est.high_s >= est.low_s > 0


def test_gpu_short_md_snn_is_sized_to_about_eight_minutes_per_dataset_on_one_h100():
  """gpu_short is a per-dataset check: md_snn on any one of its datasets at one seed fits
  6–10 minutes on one H100 (CIFAR-10 / CIFAR-100 at GPU_SHORT_STEPS; TinyImageNet, whose
  64×64 step costs ~4× a 32×32 one, at a quarter of them; N-Caltech101's small VGG-9 at 48×48
  is cheaper, 1–10 minutes). With four datasets the whole table is their sum (~20–25
  minutes, more than one device session), so the check runs a dataset at a time
  (`--datasets`); the old rule, the whole table in ~8 minutes, no longer fits four datasets
  with a per-run overhead of 20 s × 22 runs alone."""
  est = cost.table_estimate(tables.MD_SNN, "gpu_short", seeds=1)
  per = {}
  for ds, _, runs in est.datasets:
    per[ds.key] = sum(cost.run_seconds(c, r.steps)[1] for r, c in runs)
    bounds = (1, 10) if ds.key == "ncaltech101" else (6, 10)
    assert bounds[0] * 60 <= per[ds.key] <= bounds[1] * 60, (ds.key, per[ds.key] / 60)
    assert cost.stored_table_seconds("md_snn", "gpu_short", seeds=1, dataset=ds.key) == (
        pytest.approx(per[ds.key]))
  assert set(per) == {"cifar10", "cifar100", "tinyimagenet", "ncaltech101"}
  assert sum(per.values()) == pytest.approx(est.high_s)
  assert cost.stored_table_seconds("md_snn", "gpu_short", seeds=1) == pytest.approx(est.high_s)
