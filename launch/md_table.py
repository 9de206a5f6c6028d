"""Runs the MD-SNN evidence table: FP teacher, PTQ start, and the same quantized student
trained three ways (no KD, logit KD, MD = membrane + logit KD) over several seeds.

    python launch/md_table.py --config=launch/configs/md_cifar10.py --workdir=runs/md_cifar10

Writes `<out>.md` and `<out>.json` in --workdir (atomically; --out, default 'table'). Every
run resumes from its checkpoints, so the command can be interrupted and restarted, and a
finished run with the same config is read back rather than repeated (so a table over more
seeds reuses the runs of a smaller one); a run made with another config is refused, naming
the fields that differ, unless --overwrite.
"""
from __future__ import annotations

import pathlib

import numpy as np
from absl import flags
from ml_collections import config_flags

from mdsnn_jax.provenance import record, write_json_atomic, write_text_atomic
from mdsnn_jax.train import cli
from mdsnn_jax.train.experiments import (NAMES, paired_delta, parse_methods, run_student,
                                         run_teacher)

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the whole table.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated student seeds.")
_METHODS = flags.DEFINE_string("methods", "none,logit,md", "Which students to train.")
_OUT = flags.DEFINE_string("out", "table", "Basename of the .md / .json written in --workdir.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
config_flags.DEFINE_config_file("config", None, "Table configuration (a training config).")
flags.mark_flags_as_required(["config", "workdir"])

def main(argv):
  del argv
  base = flags.FLAGS.config
  root = pathlib.Path(_WORKDIR.value)
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  methods = parse_methods(_METHODS.value)
  teacher = run_teacher(base, root, overwrite=_OVERWRITE.value)

  runs: dict[str, list[dict]] = {m: [] for m in methods}
  for seed in seeds:
    for method in methods:
      # Every student starts from the same quantized teacher: measure that PTQ point once.
      runs[method].append(run_student(base, root, method, seed,
                                      eval_ptq=seed == seeds[0] and method == methods[0],
                                      overwrite=_OVERWRITE.value))

  fp = teacher["test_accuracy"]
  ptq = next((r["ptq_accuracy"] for rs in runs.values() for r in rs if r.get("ptq_accuracy") is not None), None)
  accs = {m: np.array([r["test_accuracy"] for r in rs]) for m, rs in runs.items()}
  rows = []
  for method, acc in accs.items():
    rows.append({"method": method, "seeds": seeds, "accuracy": acc.tolist(),
                 "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                 "gap_to_fp": float(fp - acc.mean()),
                 "vs_no_kd": (paired_delta(acc, accs["none"])
                              if "none" in accs and method != "none" else None)})
  table = {"fp_teacher": fp, "ptq": ptq, "rows": rows, "unit": "percent",
           "provenance": record(config=base)}
  write_json_atomic(root / f"{_OUT.value}.json", table)
  lines = ["| model | test accuracy (%) | gap to FP (pp) | Δ vs no KD, paired by seed (pp) |",
           "|---|---|---|---|", f"| FP teacher | {fp:.2f} | 0 | |"]
  if ptq is not None:
    lines.append(f"| PTQ (teacher quantized, no training) | {ptq:.2f} | {fp - ptq:.2f} | |")
  for r in rows:
    d = r["vs_no_kd"]
    delta = "" if d is None else (f"{d['mean']:+.2f} ± {d['std']:.2f} "
                                  f"({d['positive']}/{d['n']} seeds > 0)")
    lines.append(f"| {NAMES[r['method']]} | {r['mean']:.2f} ± {r['std']:.2f} "
                 f"({', '.join(f'{a:.2f}' for a in r['accuracy'])}; seeds {r['seeds']}) "
                 f"| {r['gap_to_fp']:.2f} | {delta} |")
  md = "\n".join(lines) + "\n"
  write_text_atomic(root / f"{_OUT.value}.md", md)
  print(md)


if __name__ == "__main__":
  cli.run(main)
