"""TensorBoard summaries: a tiny digits run, read back with TensorBoard's own event reader."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mdsnn_jax.train.tensorboard import StageTensorBoard, scalar_tags


def _tiny_config(**train):
  from mdsnn_jax.train.config import base_config
  c = base_config()
  c.stages = "fp"
  c.model.name = "digits_mlp"
  c.model.timesteps = 2
  c.train.update({**dict(steps=20, global_batch=32, eval_batch=64, log_every=10, eval_every=10,
                        checkpoint_every=20), **train})
  c.report = False
  return c


def _events(logdir):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(logdir))
  acc.Reload()
  return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_scalar_tags_names_and_skips():
  tags = scalar_tags({"step": 3, "stage": "fp", "loss": np.float32(0.5), "eval_accuracy": 0.25,
                      "ptq_accuracy": 0.125, "firing/lif1": 0.1, "note": "x", "flag": True})
  assert tags == {"train/loss": 0.5, "eval/accuracy": 0.25, "eval/ptq_accuracy": 0.125,
                  "firing/lif1": 0.1}


def test_writer_off_writes_nothing_and_rejects_non_bool(tmp_path):
  tb = StageTensorBoard(tmp_path / "tb", enabled=False)
  tb.write({"step": 1, "loss": 1.0})
  tb.close()
  assert not (tmp_path / "tb").exists()
  with pytest.raises(ValueError, match="train.tensorboard must be True or False"):
    StageTensorBoard(tmp_path / "tb", enabled="yes")


def test_training_logs_every_scalar_to_tensorboard(tmp_path):
  pytest.importorskip("tensorboard")
  from mdsnn_jax.train.loop import train_and_evaluate
  train_and_evaluate(_tiny_config(), str(tmp_path))
  events = _events(tmp_path / "fp" / "tb")
  records = [json.loads(l) for l in (tmp_path / "fp" / "metrics.jsonl").read_text().splitlines()]
  logged = 0
  for record in records:  # every JSONL scalar is in TensorBoard at its step (float32 there)
    for tag, value in scalar_tags(record).items():
      assert events[tag][record["step"]] == pytest.approx(value, rel=1e-6), (tag, record)
      logged += 1
  assert {"train/loss", "train/ce", "train/accuracy", "train/steps_per_s",
          "eval/accuracy"} <= set(events)
  assert sorted(events["eval/accuracy"]) == [10, 20]
  assert logged >= 10
  # Per-layer firing rates at each evaluation, against the report's own computation.
  assert sorted(events["firing/lif1"]) == [10, 20]
  from mdsnn_jax.interop.nir import load_stage  # needs no `nir` package
  from mdsnn_jax.train.tensorboard import eval_firing_rates
  model, variables, _ = load_stage(tmp_path, "fp")
  rates = eval_firing_rates(model, variables, _tiny_config().data, 2)
  assert events["firing/lif1"][20] == pytest.approx(rates["firing/lif1"], rel=1e-6)
  assert 0 < rates["firing/lif1"] < 1


def test_tensorboard_false_writes_no_event_file(tmp_path):
  from mdsnn_jax.train.loop import train_and_evaluate
  train_and_evaluate(_tiny_config(tensorboard=False, eval_every=0), str(tmp_path))
  assert (tmp_path / "fp" / "metrics.jsonl").is_file()
  assert not (tmp_path / "fp" / "tb").exists()
