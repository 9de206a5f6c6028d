"""Forward + backward of a 64→128→10 LIF MLP with FP, ternary and integer membranes.

    python bench/ternary_backward.py [--batch 128] [--timesteps 4] [--rounds 30] [--out results/bench]

Two LIF layers (64→128, 128→10), readout = time-mean membrane of the last layer, CE loss,
gradient w.r.t. both kernels, jitted. Variants: FP membrane (no quantizer), ternary
{−1, 0, 1} and 5-level integer {−3 … 1} membranes (stacked-sigmoid backward), and the
ternary forward with a plain straight-through backward (the floor). Timings are interleaved:
each round times every variant once (median of 20 calls), so load changes hit all of them;
the table reports the median over rounds and the ratio to the FP membrane of the same run.
Writes <out>/ternary_backward.md and .json with `mdsnn_jax.provenance.record()`.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from mdsnn_jax import lif_scan, provenance, quant  # noqa: E402
from mdsnn_jax.quant import membrane as M  # noqa: E402


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ternary_st(u, dummy):
  return M._integer_grid(u, -1.0, 1.0, 3, 2.0)


_ternary_st.defvjp(lambda u, d: (_ternary_st(u, d), None), lambda d, r, g: (g,))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--timesteps", type=int, default=4)
  p.add_argument("--rounds", type=int, default=30)
  p.add_argument("--calls", type=int, default=20)
  p.add_argument("--out", default="results/bench")
  a = p.parse_args()
  t, b = a.timesteps, a.batch
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.uniform(k1, (t, b, 64))
  ws = (jax.random.normal(k2, (64, 128)) * 0.3, jax.random.normal(k3, (128, 10)) * 0.3)
  y = jnp.arange(b) % 10

  def step_fn(mq):
    def loss(ws):
      s, _, _ = lif_scan((x.reshape(t * b, 64) @ ws[0]).reshape(t, b, 128), membrane_quantizer=mq)
      _, h, _ = lif_scan((s.reshape(t * b, 128) @ ws[1]).reshape(t, b, 10), membrane_quantizer=mq)
      logp = jax.nn.log_softmax(h.mean(0))
      return -jnp.mean(logp[jnp.arange(b), y])
    return jax.jit(jax.value_and_grad(loss))

  variants = {
      "FP membrane": step_fn(None),
      "ternary membrane (stacked sigmoid)": step_fn(quant.ternary_membrane()),
      "integer {-3..1} membrane (stacked sigmoid)": step_fn(quant.integer_membrane(-3.0)),
      "ternary, straight-through backward": step_fn(lambda u: _ternary_st(u, 0)),
  }
  for f in variants.values():
    jax.block_until_ready(f(ws))
  load_before = provenance.load_average()
  samples = {name: [] for name in variants}
  for _ in range(a.rounds):
    for name, f in variants.items():
      times = []
      for _ in range(a.calls):
        start = time.perf_counter()
        jax.block_until_ready(f(ws))
        times.append(time.perf_counter() - start)
      samples[name].append(statistics.median(times))
  prov = provenance.record()
  fp = statistics.median(samples["FP membrane"])
  rows = []
  for name, s in samples.items():
    med = statistics.median(s)
    rows.append(dict(variant=name, ms=med * 1e3, min_ms=min(s) * 1e3, max_ms=max(s) * 1e3,
                     ratio_to_fp=med / fp))
  lines = [
      f"64→128→10 LIF MLP, B = {b}, T = {t}, jitted forward + backward (value_and_grad of CE "
      f"w.r.t. both kernels); median over {a.rounds} interleaved rounds of the median of "
      f"{a.calls} calls.",
      "",
      "| membrane | ms | min .. max (per round) | × FP membrane |",
      "|---|---|---|---|",
  ]
  lines += [f"| {r['variant']} | {r['ms']:.3f} | {r['min_ms']:.3f} .. {r['max_ms']:.3f} | "
            f"{r['ratio_to_fp']:.2f} |" for r in rows]
  lines += ["", f"{provenance.describe(prov)} · load before {load_before}"]
  text = "\n".join(lines) + "\n"
  print(text)
  provenance.write_text_atomic(os.path.join(a.out, "ternary_backward.md"), text)
  provenance.write_json_atomic(os.path.join(a.out, "ternary_backward.json"),
                               dict(rows=rows, samples_s=samples, load_before=load_before,
                                    provenance=prov, args=vars(a)))


if __name__ == "__main__":
  main()
