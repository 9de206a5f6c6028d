"""The GPU suite's pieces, one markdown table (run by bench/gpu_suite.sh).

    python bench/gpu_suite.py [--dry-run] [--out DIR]

Rows: the LIF layer (Linear n→n + LIF, n = 4096, B = 16, T = 100 and 500: the
open-neuromorphic benchmark shape) forward and forward+backward for mdsnn-jax (lif_impl
'scan' and 'fused'), SpikingJelly's multi-step LIFNode (backend 'cupy' on CUDA, else
'torch') and spyx; VGG-9 for SpikingJelly; the input pipeline's batches/s against the step's;
the digits quickstart (launch/train.py with launch/configs/default.py) end to end; the
md_snn table at --scale=gpu_short, seed 0, on the first dataset --data_root names. A
second table: the
FP, QAT and MD training steps of VGG-9, MS-ResNet-18 and MS-ResNet-19 (CIFAR, B = 128,
T = 4) in float32 and bfloat16, then resnet19_spquant (QAT, FP) and resnet18 (FP) in float32,
with compile time, step time, images/s, XLA's program memory
and the device's peak memory. --budget (seconds) bounds the timed pieces: a piece that would
start after it gives a row saying so. --dry-run: every piece at toy size (CPU is fine;
every model and kind in float32, one bfloat16 step). A piece whose library is missing or
fails gives a row saying so.
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


STEP_MODELS = ("vgg9", "msresnet18", "msresnet19")
STEP_KINDS = ("fp", "qat", "md")
STEP_DTYPES = ("float32", "bfloat16")
# The full-scale rows' other models, float32 only, after the main matrix (the budget skips
# them first): SpQuant's ResNet-19 (its students are QAT) and feature KD's ResNet-18 (FP).
EXTRA_COMBOS = (("resnet19_spquant", "qat", "float32"), ("resnet19_spquant", "fp", "float32"),
                ("resnet18", "fp", "float32"))


class Budget:
  """Seconds left for the suite: a piece that starts after they are spent gives a row saying
  so instead of running, so the whole call ends inside the lease."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def spent(self) -> bool:
    return time.perf_counter() > self.end


def _program_bytes(compiled) -> float | None:
  """XLA's own figure for the program's device memory: arguments + outputs + temporaries −
  donated (aliased) buffers, in bytes; None where the backend gives no memory analysis."""
  try:
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001
    return None


def _device_peak_bytes() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def step_matrix(batch, timesteps, size, width, repeats, budget, combos):
  """Rows of the step table: (model, kind, dtype, compile s, step ms, images/s, program MiB,
  device peak MiB, note). `combos`: the (model, kind, dtype) triples to time, in order."""
  from train_step import make_jax_step
  rows = []
  for name, kind, dtype in combos:
    if budget.spent():
      rows.append((name, kind, dtype, None, None, None, None, None, "skipped: time budget spent"))
      continue
    try:
      step, state, tv, data, _, _ = make_jax_step(kind, "auto", batch, timesteps, dtype=dtype,
                                                  size=size, width=width, name=name)
      t0 = time.perf_counter()
      compiled = step.lower(state, data, tv).compile()
      compile_s = time.perf_counter() - t0
      holder = [state]

      def run():
        holder[0], metrics = compiled(holder[0], data, tv)
        jax.block_until_ready(metrics)
      ms = _median_ms(run, repeats)
      mib = lambda b: None if b is None else b / 2**20
      rows.append((name, kind, dtype, compile_s, ms, 1e3 * batch / ms,
                   mib(_program_bytes(compiled)), mib(_device_peak_bytes()), ""))
    except Exception as e:  # noqa: BLE001
      rows.append((name, kind, dtype, None, None, None, None, None,
                   f"failed ({type(e).__name__}: {str(e)[:60]})"))
  return rows


def pipeline_row(dry_run, batch, step_rows_):
  """The input pipeline's batches/s (CIFAR-10 train split with augmentation, the trainer's
  loader, or the digits in a dry run) against the VGG-9 FP float32 step's batches/s."""
  from mdsnn_jax.data import make_loader
  root = os.environ.get("MDSNN_CIFAR_ROOT", os.path.join(os.path.dirname(REPO), "shared", "data"))
  if dry_run:
    cfg = {"name": "digits", "augment": False}
  elif os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
    cfg = {"name": "cifar10", "root": root, "augment": True}
  else:
    return ("input pipeline", f"skipped (no CIFAR-10 under {root}; set MDSNN_CIFAR_ROOT)",
            None, None)
  it = iter(make_loader(cfg, "train", batch_size=batch, seed=0, shuffle=True))
  next(it)
  n = 20
  t0 = time.perf_counter()
  for _ in range(n):
    next(it)
  per_s = n / (time.perf_counter() - t0)
  step = next((r for r in step_rows_ if r[:3] == ("vgg9", "fp", "float32") and r[4]), None)
  ratio = f"; {per_s / (1e3 / step[4]):.1f}× the VGG-9 FP step's batches/s" if step else ""
  return (f"input pipeline ({cfg['name']}, batch {batch})",
          f"{per_s:.1f} batches/s on the host, main thread{ratio}", None, 1e3 / per_s)


SUITE_SECONDS = 520.0  # bench/gpu_suite.sh kills the call at 540 s


def gpu_short_row(data_root, dry_run, seconds_left):
  """`launch/reproduce.py --table=md_snn --scale=gpu_short --seeds=0 --datasets=NAME`: the
  short real-data table on the first dataset --data_root names (gpu_short is sized at about
  6 minutes per dataset on one H100; the four together would not fit the call), end to end
  (needs --data_root; the dry run asks for its --dry_run only)."""
  first = (data_root or "").split(",")[0].strip()
  name = first.split("=", 1)[0]
  piece = f"md_snn gpu_short {name or '(no dataset)'}, seed 0"
  if not data_root:
    return (piece, "skipped (no --data_root given)", None, None)
  if seconds_left < 60 and not dry_run:
    return (piece, f"skipped: {seconds_left:.0f} s left of the call", None, None)
  with tempfile.TemporaryDirectory() as wd:
    cmd = [sys.executable, "launch/reproduce.py", "--table=md_snn", "--scale=gpu_short",
           "--seeds=0", f"--workdir={wd}", f"--datasets={name}", f"--data_root={first}"]
    if dry_run:
      cmd += ["--dry_run", "--allow_cpu"]
    t0 = time.perf_counter()
    try:
      out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                           timeout=max(seconds_left, 60.0))
      status = ("ok" if out.returncode == 0
                else f"failed (rc {out.returncode}: {out.stderr.strip()[-80:]})")
    except subprocess.TimeoutExpired:
      status = f"stopped after {seconds_left:.0f} s (the call's time ran out)"
    seconds = time.perf_counter() - t0
  return (piece, f"launch/reproduce.py{' --dry_run' if dry_run else ''}: {status}", None,
          1e3 * seconds)


def sj_step_row(batch, timesteps, size, width, repeats):
  from train_step import bench_spikingjelly
  try:
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
  except Exception:  # noqa: BLE001
    dev = "cpu"
  label = f"vgg9 FP step B={batch} T={timesteps} float32"
  if width != 1.0:
    return (label, "SpikingJelly skipped (dry-run width)", None, None)
  sj = bench_spikingjelly(batch, timesteps, os.cpu_count() or 1, device=dev,
                          backend="cupy" if dev == "cuda" else "torch", size=size)
  if isinstance(sj, str):
    return (label, sj[:80], None, None)
  return (label, f"{sj['framework']} [{sj['impl']}]", None, _median_ms(sj["step"], repeats))


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
  p.add_argument("--data_root", default="", help="NAME=PATH[,NAME=PATH...] for gpu_short")
  p.add_argument("--budget", type=float, default=None,
                 help="seconds for the timed pieces (default 420; dry run 60)")
  a = p.parse_args()
  started = time.perf_counter()
  # With gpu_short to run, the step table gets less of the call's 9 minutes.
  default = 60.0 if a.dry_run else (150.0 if a.data_root else 420.0)
  budget = Budget(a.budget if a.budget is not None else default)
  if a.dry_run:
    lif_shapes, reps = [(64, 2, 4)], 1
    step_args = dict(batch=2, timesteps=2, size=32, width=0.125, repeats=1)
    # Every model and kind in float32, one bfloat16 step: the same code at toy size.
    combos = [(m, k, "float32") for m in STEP_MODELS for k in STEP_KINDS]
    combos.append(("vgg9", "fp", "bfloat16"))
    combos += EXTRA_COMBOS
  else:
    lif_shapes, reps = [(4096, 16, 100), (4096, 16, 500)], 5
    step_args = dict(batch=128, timesteps=4, size=32, width=1.0, repeats=5)
    # The papers' batch; MD first within each model (what users train), then QAT, then FP.
    combos = [(m, k, d) for m in STEP_MODELS for k in ("md", "qat", "fp") for d in STEP_DTYPES]
    combos += EXTRA_COMBOS
  rows = []
  for n, b, t in lif_shapes:
    rows += lif_rows(n, b, t, reps)
  steps_ = step_matrix(**step_args, budget=budget, combos=combos)
  rows.append(sj_step_row(**step_args))
  rows.append(pipeline_row(a.dry_run, step_args["batch"], steps_))
  rows.append(quickstart_row(a.dry_run))
  rows.append(gpu_short_row(a.data_root, a.dry_run,
                            SUITE_SECONDS - (time.perf_counter() - started)))
  fmt = lambda v: "–" if v is None else f"{v:.1f}"
  lines = [f"machine: {machine()}; {'DRY RUN (toy sizes)' if a.dry_run else 'full sizes'}", "",
           "| piece | implementation | forward ms | forward+backward (or step / total) ms |",
           "|---|---|---|---|"]
  lines += [f"| {piece} | {impl} | {fmt(f)} | {fmt(fb)} |" for piece, impl, f, fb in rows]
  lines += ["", f"Training steps (mdsnn-jax, conv/lif auto, B={step_args['batch']}, "
                f"T={step_args['timesteps']}, {step_args['size']}×{step_args['size']}×3, "
                f"width {step_args['width']}; program MiB: XLA's memory analysis of the "
                "compiled step; device peak: the allocator's peak so far in this process)", "",
            "| model | kind | dtype | compile s | step ms | images/s | program MiB | device peak MiB | note |",
            "|---|---|---|---|---|---|---|---|---|"]
  lines += [f"| {m} | {k} | {d} | {fmt(c)} | {fmt(ms)} | {fmt(ips)} | {fmt(pm)} | {fmt(dp)} | {note} |"
            for m, k, d, c, ms, ips, pm, dp, note in steps_]
  text = "\n".join(lines)
  print(text)
  write_results("gpu_suite_dry_run" if a.dry_run else "gpu_suite", text,
                {"rows": [list(r) for r in rows], "steps": [list(r) for r in steps_],
                 "dry_run": a.dry_run}, a.out)


if __name__ == "__main__":
  main()
