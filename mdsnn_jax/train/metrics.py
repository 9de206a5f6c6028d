"""Metrics as JSON lines, and the progress line a person watches.

Accuracies are in percent everywhere (printed and written); loss terms print with four
significant digits, so a small nonzero value never shows as 0.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Any, Callable

from mdsnn_jax.provenance import write_text_atomic


class MetricsWriter:
  """Appends one JSON object per line to `path` (flushed each write).

  A fresh start (`resume_step` None) empties the file; a resume from step k keeps the
  records of steps <= k (the later ones are recomputed) and drops a line cut off by a kill,
  by an atomic rewrite, so a new record is never glued onto a partial one. `enabled=False`
  (processes other than 0) writes nothing.
  """

  def __init__(self, path: str | os.PathLike, resume_step: int | None = None,
               enabled: bool = True, warn: Callable[[str], None] | None = print):
    self.path = pathlib.Path(path)
    self.enabled = enabled
    if not enabled:
      return
    if not self.path.exists():
      return  # created by the first write
    kept = []
    if resume_step is not None:
      lines = self.path.read_text().splitlines()
      dropped = []
      for number, line in enumerate(lines, 1):
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          # Only the last line can be cut off by a kill; one before it is damage, said aloud.
          if number < len(lines) and line.strip():
            dropped.append(number)
          continue
        if record.get("step", 0) <= resume_step:
          kept.append(line)
      if dropped and warn is not None:
        shown = ", ".join(map(str, dropped[:8])) + (" …" if len(dropped) > 8 else "")
        warn(f"warning: {self.path}: {len(dropped)} line(s) that are not JSON dropped on "
             f"resume (line {shown} of {len(lines)}); a copy of the file before the resume "
             f"is kept as {self.path.name}.damaged")
        write_text_atomic(self.path.with_name(self.path.name + ".damaged"),
                          "".join(l + "\n" for l in lines))
    write_text_atomic(self.path, "".join(l + "\n" for l in kept))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
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


def sig(x: float, digits: int = 4) -> str:
  """`digits` significant digits; a nonzero value never rounds to 0 (1.2e-05, not 0.0000)."""
  return "nan" if x != x else f"{x:.{digits}g}"


def pct(x: float | None) -> str:
  """A percentage for people: '97.21 %' (None: 'n/a')."""
  return "n/a" if x is None else f"{x:.2f} %"


def format_progress(step: int, total: int, metrics: dict[str, float], steps_per_s: float,
                    overall_steps_per_s: float | None = None) -> str:
  """'step 120/500 | loss 0.4102 ce 0.3811 md 0.0213 | train acc 91.41 % | 35.2 steps/s |
  ETA 0:00:11'. Rates exclude the first (compiling) step; the ETA uses the overall rate."""
  order = ("loss", "ce", "md", "md_spatial", "md_temporal", "kd", "feature", "gate")
  terms = " ".join(f"{k} {sig(metrics[k])}" for k in order if k in metrics)
  acc = f" | train acc {pct(metrics['accuracy'])}" if "accuracy" in metrics else ""
  rate = overall_steps_per_s or steps_per_s
  eta = datetime.timedelta(seconds=int((total - step) / rate)) if rate > 0 else "?"
  shown = f"{steps_per_s:.3g} steps/s" if steps_per_s > 0 else "compiling"
  return f"step {step}/{total} | {terms}{acc} | {shown} | ETA {eta}"
