"""MD-SNN paper row: TinyImageNet (standard tiny-imagenet-200/ folder in data.root),
MS-ResNet-18, T = 4, low-bit student. Reference (SPEC §7): 60.59 %.

    python launch/train.py --config=launch/configs/tinyimagenet.py:fp,md \
        --config.data.root=/data --workdir=/tmp/tin
"""
from mdsnn_jax.train.config import base_config


def get_config(stages: str = "fp,md"):
  c = base_config()
  c.stages = stages
  c.data.name = "tinyimagenet"
  c.data.root = "/data"
  c.data.augment = True
  c.model.name = "msresnet18"
  c.model.timesteps = 4
  c.model.neuron.decay = 0.25
  c.model.neuron.threshold = 0.5
  c.model.quant.weight = {"kind": "lsq", "bits": 2}
  c.model.quant.membrane = {"kind": "ternary"}
  c.model.quant.first_layer = {"kind": "uniform", "bits": 8}
  c.model.quant.last_layer = {"kind": "uniform", "bits": 8}
  c.model.quant.bn_fold = True
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = 200 * 782
  c.train.log_every = 100
  c.train.eval_every = 7820
  c.train.checkpoint_every = 1000
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  return c
