"""Runs the MD-SNN evidence table: FP teacher, PTQ start, and the same quantized student
trained three ways (no KD, logit KD, MD = membrane + logit KD) over several seeds.

    python launch/md_table.py --config=launch/configs/md_cifar10.py --workdir=runs/md_cifar10

Writes `table.md` and `table.json` in --workdir (atomically). Every run resumes from its
checkpoints, so the command can be interrupted and restarted.
"""
from __future__ import annotations

import copy
import json
import pathlib

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mdsnn_jax.train.checkpoint import write_json_atomic
from mdsnn_jax.train.loop import train_and_evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the whole table.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated student seeds.")
_METHODS = flags.DEFINE_string("methods", "none,logit,md", "Which students to train.")
config_flags.DEFINE_config_file("config", None, "Table configuration (a training config).")
flags.mark_flags_as_required(["config", "workdir"])

# method -> (stage, distill.alpha, distill.beta)
METHODS = {"none": ("qat", 0.0, 0.0), "logit": ("md", 0.0, 1.0), "md": ("md", 1.0, 1.0),
           "mdonly": ("md", 1.0, 0.0)}


def _read_or_run(config, workdir: pathlib.Path, stage: str) -> dict:
  summary = workdir / stage / "summary.json"
  if summary.exists():
    return json.loads(summary.read_text())
  return train_and_evaluate(config, str(workdir))[stage]


def main(argv):
  del argv
  base = flags.FLAGS.config
  root = pathlib.Path(_WORKDIR.value)
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  methods = [m for m in _METHODS.value.split(",") if m]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise app.UsageError(f"unknown methods {unknown}; known: {sorted(METHODS)}")

  teacher_cfg = copy.deepcopy(base)
  with teacher_cfg.unlocked():
    teacher_cfg.stages = "fp"
    teacher_cfg.train.steps = int(base.get("teacher_steps", base.train.steps))
  teacher = _read_or_run(teacher_cfg, root / "teacher", "fp")

  runs: dict[str, list[dict]] = {m: [] for m in methods}
  for seed in seeds:
    for method in methods:
      stage, alpha, beta = METHODS[method]
      cfg = copy.deepcopy(base)
      with cfg.unlocked():
        cfg.stages = stage
        cfg.seed = seed
        cfg.distill.alpha = alpha
        cfg.distill.beta = beta
        cfg.distill.teacher_workdir = str(root / "teacher" / "fp")
        # Every student starts from the same quantized teacher: measure that PTQ point once.
        cfg.train.eval_ptq = seed == seeds[0] and method == methods[0]
      runs[method].append(_read_or_run(cfg, root / f"{method}_seed{seed}", stage))

  fp = teacher["test_accuracy"]
  ptq = next((r["ptq_accuracy"] for rs in runs.values() for r in rs if r.get("ptq_accuracy") is not None), None)
  rows = []
  for method, rs in runs.items():
    acc = np.array([r["test_accuracy"] for r in rs]) * 100
    rows.append({"method": method, "seeds": seeds, "accuracy": acc.tolist(),
                 "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                 "gap_to_fp": float(fp * 100 - acc.mean())})
  table = {"fp_teacher": fp * 100, "ptq": None if ptq is None else ptq * 100, "rows": rows,
           "config": base.to_dict()}
  write_json_atomic(root / "table.json", table)
  names = {"none": "QAT, no KD", "logit": "QAT + logit KD", "md": "QAT + MD (membrane + logit KD)",
           "mdonly": "QAT + membrane KD only"}
  lines = ["| model | test accuracy (%) | gap to FP (pp) |", "|---|---|---|",
           f"| FP teacher | {fp*100:.2f} | 0 |"]
  if ptq is not None:
    lines.append(f"| PTQ (teacher quantized, no training) | {ptq*100:.2f} | {(fp-ptq)*100:.2f} |")
  for r in rows:
    lines.append(f"| {names[r['method']]} | {r['mean']:.2f} ± {r['std']:.2f} (seeds {r['seeds']}) "
                 f"| {r['gap_to_fp']:.2f} |")
  md = "\n".join(lines) + "\n"
  tmp = root / ".table.md.tmp"
  tmp.write_text(md)
  tmp.replace(root / "table.md")
  print(md)


if __name__ == "__main__":
  app.run(main)
