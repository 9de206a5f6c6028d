"""Input-pipeline throughput: images/s of `make_loader` on the CIFAR-10 train split.

    python bench/input_pipeline.py [--root ../shared/data] [--batch_size 128] [--steps 50]
                                   [--repeats 3] [--workers 0,2]
                                   [--step_config launch/configs/cifar10_resnet18.py]
                                   [--augmentations crop_flip,autoaugment,autoaugment_cutout]
                                   [--out input_pipeline]

Augmentation on (random crop with 4-pixel padding + horizontal flip; with --augmentations also
the AutoAugment CIFAR-10 policy and Cutout 16, `data.autoaugment` / `data.cutout`, each a row
timed in the same run), shuffled, per-channel normalisation: the trainer's configuration. For each worker count, a run builds a fresh
loader, pulls `--warmup` batches (worker start-up and the first file reads happen there), then
times `--steps` batches; the table gives the median images/s over `--repeats` runs and the
median start-up seconds (loader construction to first batch).

With `--step_config`, the training step of that launcher config (its model, T, quantizers
and stage 'fp', on one batch of `--batch_size` real CIFAR images) is timed in the same run,
and the table adds the ratio pipeline images/s ÷ step images/s (the pipeline must not be the
bottleneck: ≥ 5×).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mdsnn_jax.data import dataset_info, make_loader  # noqa: E402


# --augmentations: the data fields each row sets on top of crop + flip.
AUGMENTATIONS = {"crop_flip": {}, "autoaugment": {"autoaugment": "cifar10"},
                 "autoaugment_cutout": {"autoaugment": "cifar10", "cutout": 16}}


def run_once(cfg: dict, batch_size: int, steps: int, warmup: int, workers: int, seed: int
             ) -> tuple[float, float]:
  """(images per second over `steps` batches after `warmup`, seconds to the first batch)."""
  start = time.perf_counter()
  it = iter(make_loader(cfg, "train", batch_size=batch_size, seed=seed, shuffle=True,
                        worker_count=workers))
  next(it)
  startup = time.perf_counter() - start
  for _ in range(warmup - 1):
    next(it)
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(it)
  seconds = time.perf_counter() - start
  assert batch["image"].shape[0] == batch_size
  return steps * batch_size / seconds, startup


def step_images_per_s(config_path: str, root: str, batch_size: int, repeats: int = 3) -> tuple[float, str]:
  """Images/s of the jitted training step (stage 'fp') of a launcher config, and its description."""
  import importlib.util

  import jax
  import numpy as np

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from common import time_fn

  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train import sharding as shd
  from mdsnn_jax.train import steps as steps_lib
  from mdsnn_jax.train.loop import stage_model_config
  from mdsnn_jax.train.state import TrainState, make_optimizer

  spec = importlib.util.spec_from_file_location("bench_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.root = root
  info = dataset_info(config.data)
  batch = next(iter(make_loader(config.data, "train", batch_size=batch_size, seed=0, shuffle=True)))
  batch = {"image": np.asarray(batch["image"]), "label": np.asarray(batch["label"])}
  model = nn_lib.create_model(stage_model_config(config, "fp"), info.num_classes)
  variables = nn_lib.init_variables(model, jax.random.PRNGKey(0), batch["image"][:1])
  mesh = shd.make_mesh(1)
  state = TrainState.create(variables=variables, tx=make_optimizer(config.optim, 100))
  step = steps_lib.make_train_step(mesh, model=model, loss_cfg=config.loss,
                                   timesteps=int(config.model.timesteps))
  holder = {"state": jax.device_put(state, shd.replicated(mesh))}
  gbatch = shd.global_batch_from_local(batch, mesh)

  def run():
    holder["state"], metrics = step(holder["state"], gbatch, None)
    return metrics["loss"]

  seconds = time_fn(run, repeats=repeats)
  desc = (f"{config.model.name} width {config.model.width}, T {config.model.timesteps}, "
          f"batch {batch_size}, stage fp")
  return batch_size / seconds, desc


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default=os.path.join("..", "shared", "data"),
                 help="folder holding cifar-10-batches-py/ (or that folder itself)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  p.add_argument("--step_config", default="",
                 help="a launch/configs file whose training step is timed for comparison")
  p.add_argument("--augmentations", default="crop_flip",
                 help=f"comma-separated, each one of {sorted(AUGMENTATIONS)}")
  p.add_argument("--out", default="input_pipeline", help="results/bench/<out>.{md,json}")
  a = p.parse_args()
  bad = [k for k in a.augmentations.split(",") if k not in AUGMENTATIONS]
  if bad:
    raise ValueError(f"unknown --augmentations {bad}; allowed: {sorted(AUGMENTATIONS)}")
  if a.warmup < 1 or a.steps < 1 or a.repeats < 1:
    raise ValueError(f"--warmup, --steps and --repeats must be >= 1, got {a.warmup}, {a.steps}, {a.repeats}")
  cfg = {"name": "cifar10", "root": a.root, "source": "folder", "augment": True}
  info = dataset_info(cfg)  # loads the pickles once; later loaders reuse the in-memory copy
  print(f"cifar10 train: {info.num_train} images {info.image_shape} from {os.path.abspath(a.root)}; "
        f"batch {a.batch_size}, {a.steps} timed steps after {a.warmup} warm-up, median of {a.repeats} runs, "
        f"{os.cpu_count()} cpus")
  step_rate = None
  if a.step_config:
    step_rate, desc = step_images_per_s(a.step_config, a.root, a.batch_size)
    print(f"training step of {a.step_config} ({desc}): {step_rate:,.1f} images/s")
  ratio_head = " pipeline ÷ step |" if step_rate else ""
  kinds = a.augmentations.split(",")
  aug_head, aug_rule = ("| augmentation ", "|---") if kinds != ["crop_flip"] else ("", "")
  print(f"{aug_head}| worker_count | images/s (median) | min .. max | start-up s (median) |{ratio_head}")
  print(aug_rule + "|---|---|---|---|" + ("---|" if step_rate else ""))
  for kind in kinds:
    for workers in (int(w) for w in a.workers.split(",")):
      c = {**cfg, **AUGMENTATIONS[kind]}
      results = [run_once(c, a.batch_size, a.steps, a.warmup, workers, seed=r)
                 for r in range(a.repeats)]
      rates = [r for r, _ in results]
      ratio = f" {statistics.median(rates) / step_rate:,.0f}× |" if step_rate else ""
      cell = f"| {kind} " if aug_head else ""
      print(f"{cell}| {workers} | {statistics.median(rates):,.0f} | {min(rates):,.0f} .. "
            f"{max(rates):,.0f} | {statistics.median(s for _, s in results):.2f} |{ratio}", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from common import tee_results
  out = next((v.split("=", 1)[1] for v in sys.argv[1:] if v.startswith("--out=")), None)
  if out is None and "--out" in sys.argv:
    out = sys.argv[sys.argv.index("--out") + 1]
  with tee_results(out or "input_pipeline"):
    main()
