"""Where the time of a VGG-9 training step goes: a `jax.profiler` trace of the compiled step,
every executed XLA:CPU thunk attributed through its HLO op_name metadata to a layer kind
(conv / BN / LIF / dense / other) and a pass (forward / backward).

    python bench/profile_step.py [--kind fp] [--batch 32] [--timesteps 4] [--steps 3]
                                 [--lif-impl auto] [--conv-impl auto]

Thunks inside loops (the LIF scans, the chunked weight-gradient scans) are counted, the
loop thunks themselves are not (their time is the sum of what runs inside). The table's
total is the summed thunk time per step; the wall time per step is printed beside it (the
gap is executor overhead and waiting). XNNPACK's convolution thunks (`mdsnn_jax.xla_cpu`,
the launchers' default) run asynchronously and leave near-zero spans in the trace: with
them, the convolutions' row is the untraced step time minus the other thunks' sum, an
estimate (the profiler also slows the other thunks, so it errs low).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
from common import CONV_LIBRARY, conv_impl_label, machine, publish  # noqa: E402
from train_step import make_jax_step  # noqa: E402

from mdsnn_jax import xla_cpu  # noqa: E402

ASYNC_CONV = "conv on XNNPACK (untraced step time − the other thunks)"
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?op_name="([^"]*)"', re.M)


def categorize(op_name: str) -> tuple[str, str]:
  """(layer kind, pass) of an HLO op from its op_name (flax module path + JAX transform)."""
  direction = "backward" if "transpose(" in op_name else "forward"
  if "/lif" in op_name:
    kind = "LIF"
  elif "/bn" in op_name:
    kind = "tdBN / BN fold"
  elif re.search(r"/conv\d*/conv|/conv\d*(/|$)|downsample/conv|/stem/conv", op_name):
    kind = "conv (incl. weight quantizer)"
  elif "/fc" in op_name:
    kind = "dense"
  elif "avg_pool" in op_name or "reduce_window" in op_name:
    kind = "pooling"
  elif "SpikingVGG" in op_name or "MSResNet" in op_name:
    kind = "other model ops"
  else:
    kind = "loss / KD / optimizer / copies"
  return kind, direction


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--kind", default="fp")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--timesteps", type=int, default=4)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--lif-impl", default="auto")
  p.add_argument("--conv-impl", default="auto")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  if a.steps < 1 or a.batch < 1 or a.timesteps < 1:
    raise ValueError("--steps, --batch and --timesteps must be positive")
  step, state, tv, data, _, _ = make_jax_step(a.kind, a.conv_impl, a.batch, a.timesteps,
                                              lif_impl=a.lif_impl)
  compiled = step.lower(state, data, tv).compile()
  op_names = dict(_INSTR.findall(compiled.as_text()))
  for _ in range(2):
    state, metrics = compiled(state, data, tv)
    jax.block_until_ready(metrics)
  plain = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data, tv)
    jax.block_until_ready(metrics)
    plain.append(time.perf_counter() - t0)
  plain = sorted(plain)[len(plain) // 2]
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(a.steps):
        state, metrics = compiled(state, data, tv)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t0) / a.steps
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*perfetto_trace.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name not in op_names or name.startswith("while"):
      continue
    totals[categorize(op_names[name])] += e.get("dur", 0) / 1e3 / a.steps
  if xla_cpu.xnnpack_convolutions_active():
    # XNNPACK's convolution thunks return before their work is done (the executor waits on
    # it later), so their traced spans are near zero: what the step's untraced wall time
    # leaves after the other thunks is the convolutions (plus executor overhead).
    totals[(ASYNC_CONV, "forward + backward")] = max(1e3 * plain - sum(totals.values()), 0.0)
  total = sum(totals.values())
  lines = [f"machine: {machine()}, {os.cpu_count()} cpus, load (1 min) {os.getloadavg()[0]:.2f}",
           f"XLA:CPU convolution library: {CONV_LIBRARY}",
           f"VGG-9 {a.kind} step, batch {a.batch}, T={a.timesteps}, conv "
           f"{conv_impl_label(a.conv_impl)}, lif {a.lif_impl}: {1e3 * plain:.0f} ms/step without "
           f"the profiler, {1e3 * wall:.0f} ms/step under it, {total:.0f} ms/step in the table", "",
           "| layer kind | pass | ms/step | share |", "|---|---|---|---|"]
  for (kind, direction), ms in sorted(totals.items(), key=lambda kv: -kv[1]):
    lines.append(f"| {kind} | {direction} | {ms:.0f} | {100 * ms / total:.0f}% |")
  rows = [{"kind": k, "pass": d, "ms": ms} for (k, d), ms in totals.items()]
  data = {"rows": rows, "wall_ms": 1e3 * wall, "untraced_ms": 1e3 * plain, "args": vars(a),
          "conv_library": CONV_LIBRARY}
  publish(f"profile_step_{a.kind}", lines, data, a.out)


if __name__ == "__main__":
  main()
