"""Runs README's quickstart command and records what it printed as results/quickstart.json.

    python launch/record_quickstart.py                      # one run
    python launch/record_quickstart.py --repeats=2          # twice, fresh workdirs: reproducible?

Each run is the README's command exactly, in a fresh workdir, as a subprocess:
`python launch/train.py --config=launch/configs/default.py --workdir=<fresh dir>`. The file
holds, per run, every stage's test accuracy, the quantized student's starting point (PTQ)
and the wall time, with provenance (commit, command, CPU model, load average, date,
versions, the full config) from `mdsnn_jax.provenance.record`.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mdsnn_jax import provenance  # noqa: E402

CONFIG = "launch/configs/default.py"
_OUT = flags.DEFINE_string("out", str(REPO / "results" / "quickstart.json"), "Where to write.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Independent runs (each in a fresh workdir).")


def quickstart_command(workdir: str) -> list[str]:
  return [sys.executable, "launch/train.py", f"--config={CONFIG}", f"--workdir={workdir}"]


def run_once(workdir: pathlib.Path) -> dict:
  cmd = quickstart_command(str(workdir))
  t0 = time.time()
  # This checkout's library, even where another one is pip-installed (as `pip install -e .`
  # from this folder would make it).
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  wall = time.time() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"quickstart failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-3000:]}")
  summary = json.loads((workdir / "summary.json").read_text())
  stages = {name: {"test_accuracy": s["test_accuracy"], "ptq_accuracy": s.get("ptq_accuracy"),
                   "steps": s["steps"], "stage_wall_seconds": s["wall_seconds"]}
            for name, s in summary["stages"].items()}
  return {"stages": stages, "wall_seconds": wall, "config": summary["config"],
          "printed": [l for l in proc.stdout.splitlines() if "accuracy" in l]}


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if _REPEATS.value < 1:
    raise ValueError(f"--repeats must be >= 1, got {_REPEATS.value}")
  runs = []
  for i in range(_REPEATS.value):
    with tempfile.TemporaryDirectory(prefix="mdsnn_quickstart_") as tmp:
      run = run_once(pathlib.Path(tmp))
    print(f"run {i}: " + ", ".join(f"{k} {v['test_accuracy']:.2f} %" for k, v in run["stages"].items())
          + f" (PTQ {run['stages']['md']['ptq_accuracy']:.2f} %); {run['wall_seconds']:.1f} s",
          flush=True)
    runs.append(run)
  config = runs[0].pop("config")
  for run in runs[1:]:
    run.pop("config")
  accs = [{k: v["test_accuracy"] for k, v in r["stages"].items()} for r in runs]
  quant = config["model"]["quant"]
  out = {
      "what": "README quickstart: FP spiking CNN teacher, then a quantized student distilled "
              "from it (stages fp, md), on sklearn digits (359 held-out test images)",
      # The arguments that were set (unset ones are the kind's defaults, e.g. LSQ's full grid).
      "student_quantization": {k: ({a: b for a, b in quant[k].items() if b is not None}
                                   if isinstance(quant[k], dict) else quant[k])
                               for k in ("weight", "membrane", "first_layer", "last_layer",
                                         "bn_fold")},
      "accuracy_unit": "percent",
      "test_examples": 359,
      "runs": runs,
      "identical_across_runs": all(a == accs[0] for a in accs),
      "quickstart_command": "python " + " ".join(quickstart_command("<fresh workdir>")[1:]),
      "provenance": provenance.record(config=config),
  }
  provenance.write_json_atomic(_OUT.value, out)
  print(_OUT.value)


if __name__ == "__main__":
  from mdsnn_jax.train import cli  # noqa: E402
  cli.run(main)
