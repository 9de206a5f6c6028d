"""Trains MD-SNN models: FP teacher, quantized student, distilled student.

    python launch/train.py --config=launch/configs/default.py --workdir=/tmp/mdsnn
    python launch/train.py --config=launch/configs/cifar10_resnet18.py:md \
        --config.train.steps=1000 --workdir=/tmp/c10

The logic lives in `mdsnn_jax.train`; this file only parses flags.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from mdsnn_jax.train.loop import train_and_evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and summaries.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
