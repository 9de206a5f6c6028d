"""`MetricsWriter` (append, truncate on resume) and `read_metrics`, on files written by hand."""
from __future__ import annotations

import json

from mdsnn_jax.train.metrics import MetricsWriter, read_metrics


def lines(path):
  return path.read_text().splitlines()


def test_writer_appends_one_sorted_json_object_per_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  w = MetricsWriter(path)
  w.write({"step": 1, "loss": 0.5})
  w.write({"step": 2, "accuracy": 0.25, "eval_accuracy": 1})
  assert lines(path) == ['{"loss": 0.5, "step": 1}',
                         '{"accuracy": 0.25, "eval_accuracy": 1, "step": 2}']
  # A second writer without resume_step is a fresh start: the old records go.
  MetricsWriter(path).write({"step": 3})
  assert [json.loads(l)["step"] for l in lines(path)] == [3]
  # Disabled (a process other than 0): neither truncates nor writes.
  w = MetricsWriter(path, enabled=False)
  w.write({"step": 4})
  assert [json.loads(l)["step"] for l in lines(path)] == [3]


def test_resume_drops_the_records_after_the_checkpoint_and_a_cut_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"ptq_accuracy": 0.2}]  # no 'step': written before training, counts as step 0
  records += [{"step": s, "loss": 1.0 / s} for s in range(10, 60, 10)]
  text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 60, "lo'  # killed mid-line
  path.write_text(text)
  assert read_metrics(path) == records  # the cut-off line is skipped

  w = MetricsWriter(path, resume_step=30)
  assert read_metrics(path) == records[:4]  # ptq record, steps 10, 20, 30
  assert path.read_text().endswith("\n") and not list(tmp_path.glob("*.tmp"))
  w.write({"step": 40, "loss": 9.0})
  assert read_metrics(path) == records[:4] + [{"step": 40, "loss": 9.0}]
  assert len(lines(path)) == 5


def test_resume_keeps_everything_up_to_the_step_and_handles_edges(tmp_path):
  path = tmp_path / "metrics.jsonl"
  recs = [{"step": 0}, {"step": 5}, {"step": 5, "eval_accuracy": 0.5}, {"step": 6}]
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  MetricsWriter(path, resume_step=5)
  assert read_metrics(path) == recs[:3]  # both records of step 5 stay
  MetricsWriter(path, resume_step=0)
  assert read_metrics(path) == recs[:1]
  # Resuming into a workdir that has no metrics file yet creates nothing until a write.
  fresh = tmp_path / "new.jsonl"
  MetricsWriter(fresh, resume_step=3)
  assert not fresh.exists()
  assert read_metrics(path) == [{"step": 0}]


def test_read_metrics_of_an_empty_file(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text("")
  assert read_metrics(path) == []
