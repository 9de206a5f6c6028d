"""The GPU suite's pieces, one markdown table (run by bench/gpu_suite.sh).

    python bench/gpu_suite.py [--dry-run] [--out DIR]

Rows: the LIF layer (Linear n→n + LIF, n = 4096, B = 16, T = 100 and 500: the
open-neuromorphic benchmark shape) forward and forward+backward for mdsnn-jax (lif_impl
'scan' and 'fused'), SpikingJelly's multi-step LIFNode (backend 'cupy' on CUDA, else
'torch') and spyx; the VGG-9 and MS-ResNet-18 CIFAR training steps (B = 128, T = 4,
float32 and bfloat16) for mdsnn-jax, and VGG-9 for SpikingJelly; the digits quickstart
(launch/train.py with launch/configs/default.py) end to end. --dry-run: every piece at toy
size (CPU is fine). A piece whose library is missing or fails gives a row saying so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_ms(fn, repeats: int, warmup: int = 1) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def lif_rows(n, b, t, repeats):
  from mdsnn_jax.lif_vjp import fused_lif_scan
  from mdsnn_jax.neuron import lif_scan
  rows = []
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (t, b, n), jnp.float32)
  w = jax.random.normal(kw, (n, n), jnp.float32) / jnp.sqrt(n)
  for name, fn in (("scan", lif_scan), ("fused", fused_lif_scan)):
    fwd = jax.jit(lambda w, x, fn=fn: fn((x.reshape(t * b, n) @ w).reshape(t, b, n))[0])
    fb = jax.jit(jax.grad(lambda w, x, fn=fn: fn((x.reshape(t * b, n) @ w).reshape(t, b, n))[0].sum()))
    rows.append((f"LIF n={n} B={b} T={t}", f"mdsnn-jax lif {name}",
                 _median_ms(lambda: jax.block_until_ready(fwd(w, x)), repeats),
                 _median_ms(lambda: jax.block_until_ready(fb(w, x)), repeats)))
  rows.append(_sj_lif(n, b, t, repeats))
  rows.append(_spyx_lif(n, b, t, repeats))
  return rows


def _sj_lif(n, b, t, repeats):
  label = f"LIF n={n} B={b} T={t}"
  try:
    import torch
    from spikingjelly.activation_based import layer, neuron, surrogate, functional
  except Exception as e:  # noqa: BLE001
    return (label, f"SpikingJelly skipped ({type(e).__name__})", None, None)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  backend = "cupy" if dev == "cuda" else "torch"
  try:
    net = torch.nn.Sequential(layer.Linear(n, n, bias=False), neuron.LIFNode(
        tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
        surrogate_function=surrogate.ATan()))
    functional.set_step_mode(net, "m")
    for m in net.modules():
      if hasattr(m, "backend"):
        m.backend = backend
    net = net.to(dev)
    x = torch.randn(t, b, n, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def fwd():
      with torch.no_grad():
        net(x)
      functional.reset_net(net)
      sync()

    def fb():
      net.zero_grad(set_to_none=True)
      net(x).sum().backward()
      functional.reset_net(net)
      sync()
    return (label, f"SpikingJelly {backend} ({dev})", _median_ms(fwd, repeats), _median_ms(fb, repeats))
  except Exception as e:  # noqa: BLE001
    return (label, f"SpikingJelly {backend} failed ({type(e).__name__}: {str(e)[:60]})", None, None)


def _spyx_lif(n, b, t, repeats):
  label = f"LIF n={n} B={b} T={t}"
  try:
    import haiku as hk
    import spyx
  except Exception as e:  # noqa: BLE001
    return (label, f"spyx skipped ({type(e).__name__})", None, None)
  try:
    def net(x):  # x [B, T, n] (spyx is batch-major)
      core = hk.DeepRNN([hk.Linear(n, with_bias=False), spyx.nn.LIF((n,))])
      spikes, _ = hk.dynamic_unroll(core, x, core.initial_state(x.shape[0]), time_major=False)
      return spikes
    model = hk.without_apply_rng(hk.transform(net))
    x = jax.random.normal(jax.random.PRNGKey(0), (b, t, n))
    params = model.init(jax.random.PRNGKey(1), x)
    fwd = jax.jit(model.apply)
    fb = jax.jit(jax.grad(lambda p, x: model.apply(p, x).sum()))
    return (label, "spyx", _median_ms(lambda: jax.block_until_ready(fwd(params, x)), repeats),
            _median_ms(lambda: jax.block_until_ready(fb(params, x)), repeats))
  except Exception as e:  # noqa: BLE001
    return (label, f"spyx failed ({type(e).__name__}: {str(e)[:60]})", None, None)


def step_rows(batch, timesteps, size, width, repeats):
  from train_step import bench_spikingjelly, make_jax_step
  rows = []
  for name in ("vgg9", "msresnet18"):
    for dtype in ("float32", "bfloat16"):
      label = f"{name} step B={batch} T={timesteps} {dtype}"
      try:
        step, state, tv, data, _, _ = make_jax_step("fp", "auto", batch, timesteps, dtype=dtype,
                                                    size=size, width=width, name=name)
        compiled = step.lower(state, data, tv).compile()
        holder = [state]

        def run():
          holder[0], metrics = compiled(holder[0], data, tv)
          jax.block_until_ready(metrics)
        ms = _median_ms(run, repeats)
        rows.append((label, "mdsnn-jax (conv/lif auto)", None, ms))
      except Exception as e:  # noqa: BLE001
        rows.append((label, f"mdsnn-jax failed ({type(e).__name__}: {str(e)[:60]})", None, None))
  try:
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
  except Exception:  # noqa: BLE001
    dev = "cpu"
  label = f"vgg9 step B={batch} T={timesteps} float32"
  if width != 1.0:
    rows.append((label, "SpikingJelly skipped (dry-run width)", None, None))
  else:
    sj = bench_spikingjelly(batch, timesteps, os.cpu_count() or 1, device=dev,
                            backend="cupy" if dev == "cuda" else "torch", size=size)
    if isinstance(sj, str):
      rows.append((label, sj[:80], None, None))
    else:
      rows.append((label, f"{sj['framework']} [{sj['impl']}]", None, _median_ms(sj["step"], repeats)))
  rows.append(("msresnet18 step", "SpikingJelly: not in this suite (VGG-9 only)", None, None))
  return rows


def quickstart_row(dry_run):
  cmd = [sys.executable, "launch/train.py", "--config=launch/configs/default.py"]
  with tempfile.TemporaryDirectory() as wd:
    cmd.append(f"--workdir={wd}")
    if dry_run:
      cmd += ["--config.train.steps=4", "--config.train.log_every=2", "--config.train.eval_every=0",
              "--config.train.checkpoint_every=4", "--config.report=False",
              "--config.model.timesteps=2"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
  status = "ok" if out.returncode == 0 else f"failed (rc {out.returncode})"
  return ("digits quickstart end to end (fp,md)", f"mdsnn-jax launch/train.py: {status}", None,
          1e3 * seconds)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dry-run", action="store_true", help="toy sizes, for CI on CPU")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  if a.dry_run:
    lif_shapes, reps = [(64, 2, 4)], 1
    step_args = dict(batch=2, timesteps=2, size=32, width=0.125, repeats=1)
  else:
    lif_shapes, reps = [(4096, 16, 100), (4096, 16, 500)], 5
    step_args = dict(batch=128, timesteps=4, size=32, width=1.0, repeats=5)
  rows = []
  for n, b, t in lif_shapes:
    rows += lif_rows(n, b, t, reps)
  rows += step_rows(**step_args)
  rows.append(quickstart_row(a.dry_run))
  fmt = lambda v: "–" if v is None else f"{v:.1f}"
  lines = [f"machine: {machine()}; {'DRY RUN (toy sizes)' if a.dry_run else 'full sizes'}", "",
           "| piece | implementation | forward ms | forward+backward (or step / total) ms |",
           "|---|---|---|---|"]
  lines += [f"| {piece} | {impl} | {fmt(f)} | {fmt(fb)} |" for piece, impl, f, fb in rows]
  text = "\n".join(lines)
  print(text)
  write_results("gpu_suite_dry_run" if a.dry_run else "gpu_suite", text,
                {"rows": [list(r) for r in rows], "dry_run": a.dry_run}, a.out)


if __name__ == "__main__":
  main()
