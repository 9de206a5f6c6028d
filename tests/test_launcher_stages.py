"""What a stage says and measures about itself: where its weights start (a qat stage without a
teacher runs from scratch), and a training rate that does not include the evaluations."""
from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.integration


def test_qat_without_a_teacher_runs_from_scratch_and_start_lines_say_where(
    tmp_path, capsys, digits_stages_config):
  from mdsnn_jax.train import loop
  # No fp stage anywhere: with init_from_teacher=False the quantized run needs no teacher.
  out = loop.train_and_evaluate(digits_stages_config("qat", init_from_teacher=False),
                                tmp_path / "scratch")
  assert out["qat"]["test_accuracy"] > 0
  stored = json.loads((tmp_path / "scratch" / "qat" / "config.json").read_text())["result"]
  assert stored["init_from_teacher"] is False and "teacher" not in stored
  printed = capsys.readouterr().out
  assert "[qat] training 10 steps from scratch" in printed
  # With a teacher: both students start from its weights and say so.
  loop.train_and_evaluate(digits_stages_config("fp,qat,md"), tmp_path / "taught")
  printed = capsys.readouterr().out
  assert "[fp] training 10 steps from scratch" in printed
  assert "[qat] training 10 steps from the teacher's weights" in printed
  assert "[md] training 10 steps from the teacher's weights" in printed
  # md distilled from a teacher but initialised from scratch says "from scratch".
  taught = {"distill.teacher_workdir": str(tmp_path / "taught")}
  loop.train_and_evaluate(digits_stages_config("md", init_from_teacher=False, **taught),
                          tmp_path / "md_scratch")
  assert "[md] training 10 steps from scratch" in capsys.readouterr().out


def test_steps_per_second_after_an_evaluation_counts_training_only(
    tmp_path, monkeypatch, digits_stages_config):
  from mdsnn_jax.train import loop
  from mdsnn_jax.train.metrics import read_metrics
  real = loop.evaluate
  slow = 2.0

  def slow_evaluate(*args, **kwargs):
    time.sleep(slow)  # an evaluation far slower than the 5 training steps after it
    return real(*args, **kwargs)

  monkeypatch.setattr(loop, "evaluate", slow_evaluate)
  loop.train_and_evaluate(
      digits_stages_config("fp", **{"train.eval_every": 5, "train.steps": 15}), tmp_path)
  rates = {r["step"]: r["steps_per_s"] for r in read_metrics(tmp_path / "fp" / "metrics.jsonl")
           if "steps_per_s" in r}
  # The windows ending at steps 10 and 15 each follow an evaluation of >= 2 s: counted in, the
  # rate could not exceed 5 steps / 2 s = 2.5 steps/s; five digits-MLP steps take well under 1 s.
  assert rates[10] > 5 and rates[15] > 5, rates
