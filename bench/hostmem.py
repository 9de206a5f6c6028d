"""The VGG-9 training step with glibc's malloc on 4 KiB pages vs transparent huge pages.

    python bench/hostmem.py [--kinds fp,qat] [--rounds 3] [--steps 4] [--batch 32]

XLA:CPU allocates a step's scratch buffer afresh at every execution and glibc serves one
that large with mmap, so the buffer faults in again, 4 KiB page by page, at every step;
glibc ≥ 2.35 can back such mappings with 2 MiB transparent huge pages instead (the tunable
below, read at process start; the kernel's THP mode must be 'madvise' or 'always'). Every
round runs one subprocess per setting, alternately: the process as started (the reference)
and with GLIBC_TUNABLES=glibc.malloc.hugetlb=1. Each compiles the library's step (bench/train_step.py `make_jax_step`,
conv and LIF 'auto', T = 4), runs one warm-up step, then `--steps` timed steps, and reports
the median ms per step and the minor page faults per step (getrusage). The table gives the
median over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, publish  # noqa: E402

SETTINGS = {"4 KiB pages (as started, reference)": None,
            "huge pages (glibc.malloc.hugetlb=1)": "glibc.malloc.hugetlb=1"}


def child(kind: str, batch: int, steps: int) -> dict:
  import jax
  from train_step import make_jax_step
  step, state, tv, data, _, _ = make_jax_step(kind, "auto", batch, 4)
  compiled = step.lower(state, data, tv).compile()
  state, m = compiled(state, data, tv)
  jax.block_until_ready(m)
  times, faults = [], []
  for _ in range(steps):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    state, m = compiled(state, data, tv)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return {"ms": 1e3 * statistics.median(times), "faults": statistics.median(faults),
          "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--kinds", default="fp,qat")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--out", default=None, help="results folder (default results/bench)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    print(json.dumps(child(a.child, a.batch, a.steps)))
    return
  kinds = a.kinds.split(",")
  bad = [k for k in kinds if k not in ("fp", "qat", "md")]
  if bad or a.rounds < 1 or a.steps < 1 or a.batch < 1:
    raise ValueError(f"--kinds must be from fp,qat,md (got {a.kinds!r}); --rounds, --steps and "
                     f"--batch must be positive (got {a.rounds}, {a.steps}, {a.batch})")
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MDSNN_THP_MALLOC")}
  runs = {(k, s): [] for k in kinds for s in SETTINGS}
  for r in range(a.rounds):
    for kind in kinds:
      for name, tunable in SETTINGS.items():
        env = dict(base, **({"GLIBC_TUNABLES": tunable} if tunable else {}))
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--batch", str(a.batch),
                              "--steps", str(a.steps)], env=env, capture_output=True, text=True,
                             check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        runs[kind, name].append(res)
        print(f"round {r} {kind} {name}: {res['ms']:.0f} ms, {res['faults']:.0f} faults", flush=True)
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus, load (1 min) {os.getloadavg()[0]:.2f}",
           f"VGG-9 training step, batch {a.batch}, T = 4, median of {a.steps} steps per process, "
           f"median over {a.rounds} alternating rounds", "",
           "| step | malloc | XLA temp MiB | ms/step | minor page faults / step | reference ms ÷ this |",
           "|---|---|---|---|---|---|"]
  rows = []
  for kind in kinds:
    ref = statistics.median(x["ms"] for x in runs[kind, next(iter(SETTINGS))])
    for name in SETTINGS:
      ms = statistics.median(x["ms"] for x in runs[kind, name])
      faults = statistics.median(x["faults"] for x in runs[kind, name])
      temp = runs[kind, name][0]["temp_mib"]
      rows.append({"kind": kind, "malloc": name, "ms": ms, "faults": faults, "temp_mib": temp,
                   "per_round_ms": [x["ms"] for x in runs[kind, name]]})
      lines.append(f"| {kind} | {name} | {temp:.0f} | {ms:.0f} | {faults:,.0f} | {ref / ms:.2f} |")
  publish("hostmem", lines, {"rows": rows, "args": vars(a)}, a.out)


if __name__ == "__main__":
  main()
