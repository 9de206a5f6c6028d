"""The training loop's speed against its bare compiled step: how much the loop itself costs.

    python bench/loop_vs_step.py [--steps 60] [--rounds 2] [--root ../shared/data]

Setting: the MD evidence teacher (`md_cifar10_config`): VGG-9 at quarter width, T = 2, the
CIFAR-10 subset with crop + flip augmentation on the host, batch 64, full precision.

- loop: `train.loop.train_and_evaluate` for `--steps` + 1 steps, one log boundary at the end,
  no evaluation or checkpoint in between; its rate is the one the loop itself writes to
  metrics.jsonl (steps after the first, compiling, step ÷ their wall time). Run with the
  default input prefetch (data.prefetch = 2) and without it (0: batches built in the loop).
- step: the same jitted train step (`steps.make_train_step`, same mesh, model and optimizer)
  called `--steps` times back to back on batches built and put on the device beforehand,
  then one block_until_ready: the device never waits for the host.

images/s = rate × batch. The ratio loop ÷ step is the fraction of the step's speed the loop
keeps (1.0: the loop costs nothing). The configurations take turns round by round, so a
shared machine's changing load falls on all of them alike; medians over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, publish  # noqa: E402  (sets the launchers' XLA flags first)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mdsnn_jax import data as data_lib  # noqa: E402
from mdsnn_jax import nn as nn_lib  # noqa: E402
from mdsnn_jax.train import loop  # noqa: E402
from mdsnn_jax.train import sharding as shd  # noqa: E402
from mdsnn_jax.train import steps as steps_lib  # noqa: E402
from mdsnn_jax.train.config import md_cifar10_config  # noqa: E402
from mdsnn_jax.train.stages import sample_input, stage_model_config  # noqa: E402
from mdsnn_jax.train.state import TrainState, make_optimizer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def bench_config(root: str, steps: int, prefetch: int):
  c = md_cifar10_config("2", grid="full")
  c.stages = "fp"
  c.data.root = root
  c.data.prefetch = prefetch
  c.data.test_subset = 500  # the final evaluation is not timed; keep it short
  c.train.steps = steps + 1
  c.train.log_every = steps + 1
  c.train.checkpoint_every = steps + 1
  c.train.eval_every = 0
  c.train.eval_ptq = False
  c.train.tensorboard = False
  return c


def loop_rate(root: str, steps: int, prefetch: int) -> float:
  """Steps/s of the loop as it reports them (compilation excluded)."""
  with tempfile.TemporaryDirectory() as work:
    loop.train_and_evaluate(bench_config(root, steps, prefetch), work)
    rows = [json.loads(l) for l in (pathlib.Path(work) / "fp" / "metrics.jsonl").read_text().splitlines()]
  return float([r for r in rows if "steps_per_s" in r][-1]["steps_per_s"])


def make_bare_step(root: str, steps: int):
  """A () -> steps/s function timing the bare jitted step on pre-built device batches."""
  c = bench_config(root, steps, 0)
  info = data_lib.dataset_info(c.data)
  mesh = shd.make_mesh(-1)
  model = nn_lib.create_model(stage_model_config(c, "fp"), info.num_classes)
  variables = nn_lib.init_variables(model, jax.random.PRNGKey(0), sample_input(info, 2))
  tx = make_optimizer(c.optim, c.train.steps)
  state = jax.device_put(TrainState.create(variables=variables, tx=tx), shd.replicated(mesh))
  fn = steps_lib.make_train_step(mesh, model=model, loss_cfg=c.loss, timesteps=2)
  stream = data_lib.make_train_stream(c.data, global_batch=int(c.train.global_batch), seed=0)
  batches = [shd.global_batch_from_local(loop._local_batch(next(stream)), mesh)
             for _ in range(8)]
  holder = {"state": fn(state, batches[0], None)[0]}  # compiles
  jax.block_until_ready(holder["state"])

  def run() -> float:
    s = holder["state"]
    start = time.perf_counter()
    for i in range(steps):
      s, _ = fn(s, batches[i % len(batches)], None)
    jax.block_until_ready(s)
    holder["state"] = s
    return steps / (time.perf_counter() - start)
  return run


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
  ap.add_argument("--out", default=None, help="results folder (default results/bench)")
  args = ap.parse_args()
  if args.steps < 2 or args.rounds < 1:
    ap.error(f"--steps must be >= 2 and --rounds >= 1, got {args.steps}, {args.rounds}")
  if not (pathlib.Path(args.root) / "cifar-10-batches-py").is_dir():
    ap.error(f"no CIFAR-10 folder under --root={args.root!r} (cifar-10-batches-py expected)")
  batch = int(bench_config(args.root, args.steps, 0).train.global_batch)
  bare = make_bare_step(args.root, args.steps)
  rates: dict[str, list[float]] = {"loop, prefetch 2": [], "loop, prefetch 0": [], "step": []}
  for _ in range(args.rounds):
    rates["loop, prefetch 2"].append(loop_rate(args.root, args.steps, 2))
    rates["loop, prefetch 0"].append(loop_rate(args.root, args.steps, 0))
    rates["step"].append(bare())
  med = {k: statistics.median(v) for k, v in rates.items()}
  lines = [f"# Training loop vs its bare step: VGG-9 (quarter width), T = 2, batch {batch}, "
           f"CIFAR-10 subset with augmentation, FP", "",
           f"{machine()}; {args.steps} timed steps per run, {args.rounds} round(s), medians", "",
           "| configuration | steps/s (per round) | images/s | ÷ bare step |", "|---|---|---|---|"]
  for k, v in rates.items():
    lines.append(f"| {k} | {med[k]:.3f} ({', '.join(f'{x:.3f}' for x in v)}) | "
                 f"{med[k] * batch:.1f} | {med[k] / med['step']:.3f} |")
  publish("loop_vs_step", lines, {"steps": args.steps, "rounds": args.rounds, "batch": batch,
                                  "rates": rates, "median": med,
                                  "ratio_loop_to_step": med["loop, prefetch 2"] / med["step"]},
          args.out)


if __name__ == "__main__":
  main()
