"""One full-precision training step of spiking VGG-9 (CIFAR 32×32×3, T = 4, batch 32):
mdsnn-jax with conv_impl 'xla' and 'fast', side by side with SpikingJelly (PyTorch CPU).

    python bench/train_step.py [--batch 32] [--timesteps 4] [--steps 10] [--impls xla,fast]
                               [--no-torch]

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
from common import machine, matmul_peak_gflops  # noqa: E402

from mdsnn_jax.nn import create_model, default_model_config, init_variables  # noqa: E402
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


def bench_jax(impl: str, batch: int, timesteps: int) -> dict:
  """A runner: {framework, impl, step (runs one training step), macs}."""
  cfg = default_model_config()
  cfg.name, cfg.timesteps, cfg.conv_impl = "vgg9", timesteps, impl
  model = create_model(cfg, NUM_CLASSES)
  kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.uniform(kx, (batch, 32, 32, 3), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, NUM_CLASSES)
  variables = init_variables(model, kp, x)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def loss_fn(params, batch_stats, x, y):
    logits, new_state = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats", "quant_state"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), y).mean()
    return loss, new_state.get("batch_stats", batch_stats)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, x, y):
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, x, y

  macs = jax_macs(model, {"params": params, "batch_stats": batch_stats}, x)
  state = [(params, batch_stats, opt_state, x, y)]

  def run_step():
    state[0] = step(*state[0])
    jax.block_until_ready(state[0])

  return {"framework": "mdsnn-jax", "impl": impl, "step": run_step, "macs": macs}


def bench_spikingjelly(batch: int, timesteps: int, threads: int) -> dict | str:
  """A runner for SpikingJelly VGG-9 on PyTorch CPU with `threads` intra-op threads, or a
  string saying why it was skipped."""
  # torch logs a warning per process that Triton (a GPU compiler) is absent; irrelevant on CPU.
  logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
  try:
    import torch
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
  except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
    return f"SpikingJelly skipped: torch/spikingjelly do not import ({type(e).__name__}: {e})"
  torch.manual_seed(0)
  mods, cin, spatial = [], 3, 32
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
  for m in net.modules():  # older SpikingJelly versions choose a neuron backend; 2.x has only torch
    if hasattr(m, "backend"):
      m.backend = "torch"
  net = net.to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  # [T, B, C, H, W] with NHWC strides on the last four dims, so the merged [T·B, C, H, W] that
  # the multi-step conv sees is channels-last.
  img = torch.rand(batch, 32, 32, 3)
  x_seq = img.unsqueeze(0).repeat(timesteps, 1, 1, 1, 1).permute(0, 1, 4, 2, 3)
  y = torch.randint(0, NUM_CLASSES, (batch,))

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

  return {"framework": f"SpikingJelly {_version('spikingjelly')} (torch {torch.__version__})",
          "impl": f"torch, channels-last, {threads} thread{'s' * (threads > 1)}",
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
  p.add_argument("--impls", default="xla,fast", help="comma-separated conv_impl values")
  p.add_argument("--no-torch", action="store_true", help="skip SpikingJelly")
  p.add_argument("--torch-threads", default=None,
                 help="comma-separated torch thread counts (default: all cores, and 1)")
  a = p.parse_args()
  for name, value in (("batch", a.batch), ("timesteps", a.timesteps), ("steps", a.steps)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")

  start_peak = matmul_peak_gflops()
  rows = [bench_jax(impl, a.batch, a.timesteps) for impl in a.impls.split(",")]
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
  # The peak matmul takes its turn in every round too, so it sees the same machine load.
  a_mm = jnp.ones((PEAK_N, PEAK_N), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  peak_runner = {"step": lambda: jax.block_until_ready(matmul(a_mm, a_mm))}
  _round_robin(rows + [peak_runner], a.steps, a.warmup)
  peak = 2.0 * PEAK_N**3 / peak_runner["seconds"] / 1e9

  print(f"machine: {machine()}, {os.cpu_count()} cpus")
  print(f"VGG-9 (CIFAR 32x32x3, 10 classes), T={a.timesteps}, batch {a.batch}, FP32, Adam; "
        f"median of {a.steps} steps after {a.warmup} warm-up, configurations interleaved step "
        f"by step")
  print(f"matmul peak ({PEAK_N}^3 float32): {start_peak:.1f} GFLOP/s before the runs, {peak:.1f} "
        f"GFLOP/s interleaved with them (the '% of matmul peak' reference)")
  for r in rows:
    print(f"  {r['framework']} [{r['impl']}]: {r['macs'] / 1e9:.3f} GMAC forward per step -> "
          f"{6 * r['macs'] / 1e9:.2f} GFLOP per step (x2 FLOP/MAC x3 fwd+bwd)")
  for note in notes:
    print(note)
  print("| framework | impl | ms/step | images/s | GFLOP/s | % of matmul peak |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    gflops = 6 * r["macs"] / r["seconds"] / 1e9
    print(f"| {r['framework']} | {r['impl']} | {r['seconds'] * 1e3:.1f} | "
          f"{a.batch / r['seconds']:.1f} | {gflops:.1f} | {100 * gflops / peak:.0f} |")


if __name__ == "__main__":
  main()
