"""N-MNIST event frames through tonic (T = 8 frames of 2 polarities), small CNN; CPU-sized.

    python launch/train.py --config=launch/configs/nmnist.py \
        --config.data.root=../shared/data/nmnist_small --workdir=/tmp/nmnist
"""
from mdsnn_jax.train.config import base_config, set_quant


def get_config(stages: str = "fp,md"):
  c = base_config()
  c.stages = stages
  c.data.name = "nmnist"
  c.data.root = "../shared/data/nmnist_small"
  c.data.timesteps = 8
  c.data.image_size = 16
  c.model.name = "digits_cnn"
  c.model.timesteps = 8
  set_quant(c, "weight", "lsq", bits=2)
  set_quant(c, "membrane", "ternary")
  c.train.global_batch = 32
  c.train.eval_batch = 50
  c.train.steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  return c
