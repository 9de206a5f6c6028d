"""Metrics as JSON lines, and the progress line a person watches."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Any



class MetricsWriter:
  """Appends one JSON object per line to `path` (flushed each write).

  On resume from step k the lines of steps > k (written after the checkpoint the run is
  resumed from, and about to be recomputed) are dropped first, by an atomic rewrite.
  """

  def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
    self.path = pathlib.Path(path)
    if resume_step is not None and self.path.exists():
      kept = []
      for line in self.path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut off by a kill
        if record.get("step", 0) <= resume_step:
          kept.append(line)
      tmp = self.path.with_name(self.path.name + ".tmp")
      tmp.write_text("".join(l + "\n" for l in kept))
      os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
      f.flush()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The records of a metrics.jsonl file (a cut-off last line is skipped)."""
  out = []
  for line in pathlib.Path(path).read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def format_progress(step: int, total: int, metrics: dict[str, float], steps_per_s: float) -> str:
  """'step 120/500 | loss 0.41 ce 0.38 md 0.02 kd 0.01 acc 0.91 | 35.2 steps/s | ETA 0:00:11'."""
  order = ("loss", "ce", "md", "md_spatial", "md_temporal", "kd", "feature", "accuracy")
  terms = " ".join(f"{k} {metrics[k]:.4f}" for k in order if k in metrics)
  eta = datetime.timedelta(seconds=int((total - step) / steps_per_s)) if steps_per_s > 0 else "?"
  return f"step {step}/{total} | {terms} | {steps_per_s:.1f} steps/s | ETA {eta}"
