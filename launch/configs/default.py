"""Quickstart on scikit-learn's bundled digits: FP teacher, then the quantized student (2-bit
weights, ternary integer membrane) distilled from it (MD + logit KD). Under 5 minutes on 2 CPU
cores; nothing is downloaded.

    python launch/train.py --config=launch/configs/default.py --workdir=/tmp/mdsnn_digits
    python launch/train.py --config=launch/configs/default.py:fp,qat,md --workdir=...
"""
from mdsnn_jax.train.config import base_config, set_quant


def get_config(stages: str = "fp,md"):
  c = base_config()
  c.stages = stages
  c.data.name = "digits"
  c.model.name = "digits_cnn"
  c.model.timesteps = 4
  set_quant(c, "weight", "lsq", bits=2)
  set_quant(c, "membrane", "ternary")
  c.train.global_batch = 64
  c.train.eval_batch = 128
  c.train.steps = 400
  c.train.log_every = 100
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.optim.lr = 2e-3
  return c
