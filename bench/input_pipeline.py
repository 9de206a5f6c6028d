"""Input-pipeline throughput: images/s of `make_loader` on the CIFAR-10 train split.

    python bench/input_pipeline.py [--root ../shared/data] [--batch_size 128] [--steps 50]
                                   [--repeats 3] [--workers 0,2]

Augmentation on (random crop with 4-pixel padding + horizontal flip), shuffled, per-channel
normalisation: the trainer's configuration. For each worker count, a run builds a fresh
loader, pulls `--warmup` batches (worker start-up and the first file reads happen there), then
times `--steps` batches; the table gives the median images/s over `--repeats` runs and the
median start-up seconds (loader construction to first batch).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mdsnn_jax.data import dataset_info, make_loader  # noqa: E402


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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default=os.path.join("..", "shared", "data"),
                 help="folder holding cifar-10-batches-py/ (or that folder itself)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  a = p.parse_args()
  if a.warmup < 1 or a.steps < 1 or a.repeats < 1:
    raise ValueError(f"--warmup, --steps and --repeats must be >= 1, got {a.warmup}, {a.steps}, {a.repeats}")
  cfg = {"name": "cifar10", "root": a.root, "source": "folder", "augment": True}
  info = dataset_info(cfg)  # loads the pickles once; later loaders reuse the in-memory copy
  print(f"cifar10 train: {info.num_train} images {info.image_shape} from {os.path.abspath(a.root)}; "
        f"batch {a.batch_size}, {a.steps} timed steps after {a.warmup} warm-up, median of {a.repeats} runs, "
        f"{os.cpu_count()} cpus")
  print("| worker_count | images/s (median) | min .. max | start-up s (median) |")
  print("|---|---|---|---|")
  for workers in (int(w) for w in a.workers.split(",")):
    results = [run_once(cfg, a.batch_size, a.steps, a.warmup, workers, seed=r) for r in range(a.repeats)]
    rates = [r for r, _ in results]
    print(f"| {workers} | {statistics.median(rates):,.0f} | {min(rates):,.0f} .. {max(rates):,.0f} | "
          f"{statistics.median(s for _, s in results):.2f} |", flush=True)


if __name__ == "__main__":
  main()
