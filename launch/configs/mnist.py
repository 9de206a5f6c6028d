"""MNIST (idx files in data.root, e.g. ../shared/data/mnist), small CNN, T = 4; CPU-sized.

    python launch/train.py --config=launch/configs/mnist.py:fp,md \
        --config.data.root=../shared/data/mnist --workdir=/tmp/mnist
"""
from mdsnn_jax.train.config import base_config, set_quant


def get_config(stages: str = "fp,md"):
  c = base_config()
  c.stages = stages
  c.data.name = "mnist"
  c.data.root = "../shared/data/mnist"
  c.model.name = "digits_cnn"
  c.model.width = 2.0
  c.model.timesteps = 4
  set_quant(c, "weight", "lsq", bits=2)
  set_quant(c, "membrane", "ternary")
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = 2000
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.checkpoint_every = 500
  return c
