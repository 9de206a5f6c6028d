"""One full-precision training step of spiking VGG-9 (CIFAR 32×32×3, T = 4, batch 32):
mdsnn-jax (conv_impl 'auto' by default, or any of --impls), side by side with SpikingJelly
(PyTorch CPU).

    python bench/train_step.py [--batch 32] [--timesteps 4] [--steps 10] [--impls auto,fast]
                               [--no-torch]

XLA:CPU's convolutions run on XNNPACK, as the launchers set them (`mdsnn_jax.xla_cpu`, through
bench/common.py); MDSNN_CPU_CONV=xla times XLA's default library (YNNPACK in jax 0.10) instead.
The header says which; a conv_impl of 'auto' shows what it resolved to.

A step is forward, backward and an Adam update (jax.jit, buffers donated; PyTorch eager with
`optimizer.step()`), loss = cross-entropy of the time-averaged logits. Timing: median over
`--steps` steps after `--warmup` steps (compilation included there); the configurations take
turns step by step, so a shared machine's changing load falls on all of them alike.
PyTorch runs with all cores and with 1 intra-op thread: on a machine shared with other busy
processes its OpenMP threads can lose far more to waiting on each other than they gain.

FLOP count: the conv and dense MACs each framework executes per step (counted from the layer
output shapes), × 2 FLOP per MAC × 3 for forward + backward (input gradient and weight
gradient each cost one forward's MACs; the first layer's input gradient is not computed, and
BN / LIF / pooling / Adam are not counted). mdsnn-jax's VGG-9 runs its first conv once per
image on the static input and broadcasts it over T (direct encoding, see nn/models.py);
SpikingJelly's multi-step network is given the image repeated T times and runs it T times, so
its count is larger by (T − 1)·B·MACs(conv0). Compare images/s for the same work done;
GFLOP/s for how well each uses the machine. The peak is one 2048³ float32 matmul
(bench/common.py), timed before the runs and also interleaved with them (the reference).

SpikingJelly's network: layer.Conv2d(bias=False) → layer.BatchNorm2d → neuron.LIFNode(tau=2,
decay_input=False so that h = (1 − 1/τ)·v + x = 0.5·v + x as in mdsnn-jax, v_threshold=1,
v_reset=0 (hard reset), surrogate.ATan(), detach_reset=False), layer.AvgPool2d(2) after convs
2, 4, 7, layer.Flatten, layer.Linear; step_mode 'm' (functional.set_step_mode), backend
'torch', channels-last memory format. It is skipped, with a line saying so, when torch or
spikingjelly do not import.
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(__file__))
from common import (CONV_LIBRARY, conv_impl_label, machine, matmul_peak_gflops,  # noqa: E402
                    write_results)

from mdsnn_jax.nn import create_model, init_variables  # noqa: E402
from mdsnn_jax.nn.layers import QConv, QDense  # noqa: E402
from mdsnn_jax.nn.models import VGG9_LAYERS  # noqa: E402

NUM_CLASSES = 10
PEAK_N = 2048  # the matmul-peak reference: one PEAK_N³ float32 matmul, as bench/common.py


def _round_robin(runners: list[dict], steps: int, warmup: int) -> None:
  """Times one step of every runner per round, `steps` rounds after `warmup`; sets 'seconds'
  to the median. Interleaving spreads the load of a shared machine evenly over the runners."""
  for r in runners:
    for _ in range(warmup):
      r["step"]()
    r["times"] = []
  for _ in range(steps):
    for r in runners:
      start = time.perf_counter()
      r["step"]()
      r["times"].append(time.perf_counter() - start)
  for r in runners:
    r["seconds"] = statistics.median(r["times"])


def jax_macs(model: nn.Module, variables, x) -> int:
  """Conv and dense MACs of one training forward, from the layers' output shapes."""
  macs = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (QConv, QDense)):
      window = 1
      if isinstance(module, QConv):
        k = module.kernel_size
        window = k * k if isinstance(k, int) else math.prod(k)
      macs.append(math.prod(out.shape) * args[0].shape[-1] * window)
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(functools.partial(model.apply, train=True,
                                     mutable=["batch_stats", "quant_state"]), variables, x)
  return int(sum(macs))


KINDS = ("fp", "qat", "md")


def _vgg9_config(kind: str, impl: str, timesteps: int, lif_impl: str = "auto",
                 remat: str = "none", dtype: str = "float32", name: str = "vgg9"):
  """The library's base config with VGG-9; 'qat' / 'md' students are MD-SNN's low-bit
  student (`train.config.low_bit_student`: 2-bit LSQ weights, BN folded and quantized,
  ternary membranes, 8-bit first / last layers)."""
  from mdsnn_jax.train.config import base_config, low_bit_student
  c = base_config()
  c.model.name, c.model.timesteps, c.model.conv_impl = name, timesteps, impl
  c.model.lif_impl, c.model.remat, c.model.dtype = lif_impl, remat, dtype
  if kind != "fp":
    low_bit_student(c)
  return c


def make_jax_step(kind: str, impl: str, batch: int, timesteps: int, *, lif_impl: str = "auto",
                  remat: str = "none", dtype: str = "float32", size: int = 32, width: float = 1.0,
                  name: str = "vgg9"):
  """(jitted step, state, teacher variables, batch, model, teacher) for `kind` in KINDS: the
  library's `train.steps.train_step` (task CE loss; 'md' adds membrane KD α = 1 and logit KD
  β = 1, τ = 4, with an FP teacher of the same architecture run forward-only), Adam."""
  from mdsnn_jax.train.state import TrainState
  from mdsnn_jax.train.steps import train_step
  if kind not in KINDS:
    raise ValueError(f"unknown step kind {kind!r}; allowed: {list(KINDS)}")
  c = _vgg9_config(kind, impl, timesteps, lif_impl, remat, dtype, name)
  c.model.width = width
  model = create_model(c.model, NUM_CLASSES)
  kx, ky, kp, kt = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.uniform(kx, (batch, size, size, 3), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, NUM_CLASSES)
  variables = init_variables(model, kp, x)
  state = TrainState.create(variables=variables, tx=optax.adam(1e-3))
  teacher = teacher_vars = None
  distill_cfg = None
  if kind == "md":
    tc = _vgg9_config("fp", impl, timesteps, lif_impl, remat, dtype, name)
    tc.model.width = width
    teacher = create_model(tc.model, NUM_CLASSES)
    teacher_vars = init_variables(teacher, kt, x)
    distill_cfg = c.distill
  fn = functools.partial(train_step, model=model, loss_cfg=c.loss, distill_cfg=distill_cfg,
                         teacher_model=teacher, timesteps=timesteps)
  step = jax.jit(fn, donate_argnums=(0,))
  return step, state, teacher_vars, {"image": x, "label": y}, model, teacher


def bench_jax(impl: str, batch: int, timesteps: int, kind: str = "fp", lif_impl: str = "auto"
              ) -> dict:
  """A runner: {framework, impl, kind, step (runs one training step), macs, cost}."""
  step, state, teacher_vars, data, model, teacher = make_jax_step(
      kind, impl, batch, timesteps, lif_impl=lif_impl)
  macs = jax_macs(model, state.variables, data["image"])
  if teacher is not None:
    macs_teacher = jax_macs(teacher, teacher_vars, data["image"])
  compiled = step.lower(state, data, teacher_vars).compile()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = [state]

  def run_step():
    holder[0], metrics = compiled(holder[0], data, teacher_vars)
    jax.block_until_ready(metrics)

  label = f"{kind}, conv {conv_impl_label(impl)}, lif {lif_impl}"
  row = {"framework": "mdsnn-jax", "impl": label, "kind": kind,
         "step": run_step, "macs": macs,
         "cost_gflop": cost.get("flops", float("nan")) / 1e9,
         "cost_gbytes": cost.get("bytes accessed", float("nan")) / 1e9}
  if teacher is not None:
    # Counted work: the student's forward+backward (×3) plus the teacher's forward (×1).
    row["flop_macs"] = 3 * macs + macs_teacher
  return row


def count_convs(jaxpr) -> int:
  """Convolutions in a jaxpr, including those inside custom-VJP calls and sub-jaxprs."""
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      n += 1
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          n += count_convs(inner)
  return n


def teacher_has_no_backward(batch: int = 2, timesteps: int = 2, size: int = 16,
                            width: float = 0.125) -> tuple[bool, dict]:
  """Whether the MD step's convolutions = the QAT student step's + the teacher forward's
  (i.e. no backward or residuals through the teacher), counted in the jaxprs."""
  md = make_jax_step("md", "xla", batch, timesteps, size=size, width=width)
  qat = make_jax_step("qat", "xla", batch, timesteps, size=size, width=width)
  teacher, tv, data = md[5], md[2], md[3]
  counts = {
      "md": count_convs(jax.make_jaxpr(md[0])(md[1], data, tv).jaxpr),
      "qat": count_convs(jax.make_jaxpr(qat[0])(qat[1], data, None).jaxpr),
      "teacher_forward": count_convs(jax.make_jaxpr(
          lambda v: teacher.apply(v, data["image"], train=False))(tv).jaxpr),
  }
  return counts["md"] == counts["qat"] + counts["teacher_forward"], counts


def bench_spikingjelly(batch: int, timesteps: int, threads: int, device: str = "cpu",
                       backend: str = "torch", size: int = 32) -> dict | str:
  """A runner for SpikingJelly VGG-9 on PyTorch (`device`, e.g. 'cpu' with `threads` intra-op
  threads, or 'cuda' with neuron backend 'cupy'), or a string saying why it was skipped."""
  # torch logs a warning per process that Triton (a GPU compiler) is absent; irrelevant on CPU.
  logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
  try:
    import torch
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
  except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
    return f"SpikingJelly skipped: torch/spikingjelly do not import ({type(e).__name__}: {e})"
  torch.manual_seed(0)
  mods, cin, spatial = [], 3, size
  for spec in VGG9_LAYERS:
    if spec == "P":
      mods.append(layer.AvgPool2d(2))
      spatial //= 2
      continue
    mods += [layer.Conv2d(cin, spec, 3, padding=1, bias=False), layer.BatchNorm2d(spec),
             neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=0.0,
                            surrogate_function=surrogate.ATan(), detach_reset=False)]
    cin = spec
  mods += [layer.Flatten(), layer.Linear(cin * spatial * spatial, NUM_CLASSES)]
  net = torch.nn.Sequential(*mods)
  functional.set_step_mode(net, "m")
  for m in net.modules():  # the neuron backend, where the version has a choice
    if hasattr(m, "backend"):
      try:
        m.backend = backend
      except Exception as e:  # noqa: BLE001 - e.g. cupy absent or unsupported
        return f"SpikingJelly skipped: backend {backend!r} unavailable ({type(e).__name__}: {e})"
  net = net.to(device=device, memory_format=torch.channels_last)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  # [T, B, C, H, W] with NHWC strides on the last four dims, so the merged [T·B, C, H, W] that
  # the multi-step conv sees is channels-last.
  img = torch.rand(batch, size, size, 3, device=device)
  x_seq = img.unsqueeze(0).repeat(timesteps, 1, 1, 1, 1).permute(0, 1, 4, 2, 3)
  y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

  macs = []
  def count(module, inputs, out):
    if isinstance(module, torch.nn.Conv2d):
      macs.append(out.numel() * module.in_channels * math.prod(module.kernel_size) // module.groups)
    elif isinstance(module, torch.nn.Linear):
      macs.append(out.numel() * module.in_features)
  hooks = [m.register_forward_hook(count) for m in net.modules()
           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  with torch.no_grad():
    net(x_seq)
  functional.reset_net(net)
  for h in hooks:
    h.remove()

  def run_step():
    torch.set_num_threads(threads)  # global in torch: set on every turn of this runner
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x_seq).mean(0), y)
    loss.backward()
    opt.step()
    functional.reset_net(net)
    if device != "cpu":
      torch.cuda.synchronize()

  return {"framework": f"SpikingJelly {_version('spikingjelly')} (torch {torch.__version__})",
          "impl": (f"{backend}, channels-last, {threads} thread{'s' * (threads > 1)}"
                   if device == "cpu" else f"{backend}, {device}"),
          "step": run_step, "macs": sum(macs)}


def _version(package: str) -> str:
  from importlib.metadata import PackageNotFoundError, version
  try:
    return version(package)
  except PackageNotFoundError:
    return "?"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--timesteps", type=int, default=4)
  p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--impls", default="auto", help="comma-separated conv_impl values")
  p.add_argument("--kinds", default="fp,qat,md", help=f"comma-separated steps of {KINDS}")
  p.add_argument("--lif-impls", default="auto", help="comma-separated lif_impl values (FP only "
                 "when several: the QAT / MD steps use the first)")
  p.add_argument("--no-torch", action="store_true", help="skip SpikingJelly")
  p.add_argument("--torch-threads", default=None,
                 help="comma-separated torch thread counts (default: all cores, and 1)")
  p.add_argument("--out", default=None, help="results folder (default results/bench)")
  a = p.parse_args()
  for name, value in (("batch", a.batch), ("timesteps", a.timesteps), ("steps", a.steps)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")
  kinds = a.kinds.split(",")
  bad = [k for k in kinds if k not in KINDS]
  if bad:
    raise ValueError(f"--kinds: unknown {bad}; allowed: {list(KINDS)}")
  lif_impls = a.lif_impls.split(",")

  start_peak = matmul_peak_gflops()
  rows = []
  for impl in a.impls.split(","):
    for kind in kinds:
      for lif_impl in (lif_impls if kind == "fp" else lif_impls[:1]):
        rows.append(bench_jax(impl, a.batch, a.timesteps, kind, lif_impl))
  notes = []
  if a.no_torch:
    notes.append("SpikingJelly skipped (--no-torch)")
  else:
    cores = os.cpu_count() or 1
    threads = sorted({cores, 1}, reverse=True) if a.torch_threads is None else [
        int(t) for t in a.torch_threads.split(",")]
    if any(t < 1 for t in threads):
      raise ValueError(f"--torch-threads must be positive ints, got {a.torch_threads!r}")
    for t in threads:
      sj = bench_spikingjelly(a.batch, a.timesteps, t)
      if isinstance(sj, str):
        notes.append(sj)
        break
      rows.append(sj)
  # The reference matmul takes its turn in every round too, so it sees the same load.
  a_mm = jnp.ones((PEAK_N, PEAK_N), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  peak_runner = {"step": lambda: jax.block_until_ready(matmul(a_mm, a_mm))}
  load_before = os.getloadavg()
  _round_robin(rows + [peak_runner], a.steps, a.warmup)
  load_after = os.getloadavg()
  peak = 2.0 * PEAK_N**3 / peak_runner["seconds"] / 1e9

  lines = [
      f"machine: {machine()}, {os.cpu_count()} cpus; load average (1 min) {load_before[0]:.2f} "
      f"before the timed rounds, {load_after[0]:.2f} after",
      f"VGG-9 (CIFAR 32x32x3, 10 classes), T={a.timesteps}, batch {a.batch}, FP32, Adam; "
      f"median of {a.steps} steps after {a.warmup} warm-up, configurations interleaved step "
      f"by step",
      f"XLA:CPU convolution library: {CONV_LIBRARY} "
      f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})",
      f"reference matmul ({PEAK_N}^3 float32): {start_peak:.1f} GFLOP/s before the runs, "
      f"{peak:.1f} GFLOP/s interleaved with them (the '% of ref. matmul' column; not a "
      f"measured machine peak)"]
  for r in rows:
    r.setdefault("flop_macs", 3 * r["macs"])
    lines.append(f"  {r['framework']} [{r['impl']}]: {r['macs'] / 1e9:.3f} GMAC forward per "
                 f"step -> {2 * r['flop_macs'] / 1e9:.2f} GFLOP counted per step")
  lines += notes
  lines += ["", "| framework | step | ms/step | images/s | GFLOP/s | % of ref. matmul | "
            "XLA cost: GFLOP | XLA cost: GB accessed |", "|---|---|---|---|---|---|---|---|"]
  table = []
  for r in rows:
    gflops = 2 * r["flop_macs"] / r["seconds"] / 1e9
    rec = {k: r.get(k) for k in ("framework", "impl", "kind", "seconds", "macs", "flop_macs",
                                 "cost_gflop", "cost_gbytes", "times")}
    rec.update(images_per_s=a.batch / r["seconds"], gflops=gflops, pct_ref=100 * gflops / peak)
    table.append(rec)
    cost = (f"{r['cost_gflop']:.1f} | {r['cost_gbytes']:.1f}" if "cost_gflop" in r else "– | –")
    lines.append(f"| {r['framework']} | {r['impl']} | {r['seconds'] * 1e3:.1f} | "
                 f"{a.batch / r['seconds']:.1f} | {gflops:.1f} | {100 * gflops / peak:.0f} | {cost} |")
  by = {(r["kind"], r["impl"].split(", ", 1)[1]): r["seconds"] for r in rows if "kind" in r}
  ratios = {}
  for impl in a.impls.split(","):
    tag = f"conv {conv_impl_label(impl)}, lif {lif_impls[0]}"
    fp, qat, md = (by.get((k, tag)) for k in KINDS)
    if fp and qat:
      ratios[f"qat/fp [{tag}]"] = qat / fp
    if qat and md:
      ratios[f"md/qat [{tag}]"] = md / qat
  sj_rows = [r for r in rows if r["framework"].startswith("SpikingJelly")]
  for r in rows:
    if r.get("kind") == "fp" and sj_rows:
      best = min(sj_rows, key=lambda q: q["seconds"])
      ratios[f"images/s vs fastest SpikingJelly [{r['impl']}]"] = best["seconds"] / r["seconds"]
  if ratios:
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
  text = "\n".join(lines)
  print(text)
  path = write_results("train_step", text, {"rows": table, "ratios": ratios,
                                            "peak_gflops": peak, "args": vars(a),
                                            "load_before_after": [load_before, load_after]},
                       a.out)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
