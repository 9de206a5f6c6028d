"""Peak memory of a VGG-9 training step against T, with and without model.remat.

    python bench/memory.py [--timesteps 2,4,8,16] [--remats none,layer,time] [--batch 8]
                           [--steps 2] [--kind fp]

Each (T, remat) runs in a fresh subprocess: the library's training step (bench/train_step.py
`make_jax_step`, Adam, conv_impl and lif_impl 'auto') is compiled, its XLA memory analysis
read (temp = the step's scratch buffers, the peak of live intermediates XLA planned), then
it runs `--steps` times and the live peak is the rise of the process's peak RSS
(ru_maxrss) over its value just before the first run. Step time is the median of the runs
(not interleaved across subprocesses: noisy on a shared machine).
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


def child(kind: str, timesteps: int, remat: str, batch: int, steps: int, lif_impl: str = "auto"
          ) -> dict:
  import jax
  from train_step import make_jax_step
  step, state, tv, data, _, _ = make_jax_step(kind, "auto", batch, timesteps, remat=remat,
                                              lif_impl=lif_impl)
  compiled = step.lower(state, data, tv).compile()
  mem = compiled.memory_analysis()
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data, tv)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"temp_mib": mem.temp_size_in_bytes / 2**20,
          "args_mib": mem.argument_size_in_bytes / 2**20,
          "rss_rise_mib": (rss1 - rss0) / 1024, "step_s": statistics.median(times),
          "load": os.getloadavg()[0]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--timesteps", default="2,4,8,16")
  p.add_argument("--remats", default="none/scan,none,layer,time",
                 help="comma-separated remat values; 'remat/lif_impl' also sets model.lif_impl "
                      "(default 'auto'); the first 'none' row is the reference")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--kind", default="fp")
  p.add_argument("--out", default=None)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    t, remat = a.child.split(":")
    remat, _, lif_impl = remat.partition("/")
    print(json.dumps(child(a.kind, int(t), remat, a.batch, a.steps, lif_impl or "auto")))
    return
  from common import machine, publish
  ts = [int(t) for t in a.timesteps.split(",")]
  remats = a.remats.split(",")
  if any(t < 1 for t in ts) or a.batch < 1 or a.steps < 1:
    raise ValueError("--timesteps, --batch and --steps must be positive")
  ref = next((r for r in remats if r.partition("/")[0] == "none"), remats[0])
  results = {}
  for t in ts:
    for remat in remats:
      out = subprocess.run([sys.executable, __file__, f"--child={t}:{remat}", f"--batch={a.batch}",
                            f"--steps={a.steps}", f"--kind={a.kind}"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(
                               [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                os.environ.get("PYTHONPATH", "")])})
      results[f"{t}:{remat}"] = json.loads(out.stdout.strip().splitlines()[-1])
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus",
           f"VGG-9 {a.kind} training step, 32x32x3, batch {a.batch}, float32, conv/lif 'auto'",
           f"reference row: remat {ref!r}", "",
           "| T | remat[/lif_impl] | XLA temp MiB | live peak RSS rise MiB | step s | "
           "reference temp ÷ temp | step time ÷ reference | load (1 min) |",
           "|---|---|---|---|---|---|---|---|"]
  for t in ts:
    base = results.get(f"{t}:{ref}")
    for remat in remats:
      r = results[f"{t}:{remat}"]
      rel = (f"{base['temp_mib'] / r['temp_mib']:.2f} | {r['step_s'] / base['step_s']:.2f}"
             if base else "– | –")
      lines.append(f"| {t} | {remat} | {r['temp_mib']:.0f} | {r['rss_rise_mib']:.0f} | "
                   f"{r['step_s']:.2f} | {rel} | {r['load']:.1f} |")
  publish("memory", lines, {"results": results, "args": vars(a)}, a.out)


if __name__ == "__main__":
  main()
