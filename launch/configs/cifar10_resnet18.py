"""MD-SNN paper row: CIFAR-10, MS-ResNet-18, T = 4, low-bit student (2-bit LSQ weights,
BN folded and quantized, ternary integer membranes), distilled from the FP teacher.
Reference (SPEC §7): 94.27 % at full scale.

    python launch/train.py --config=launch/configs/cifar10_resnet18.py:fp,md --workdir=/tmp/c10
"""
from mdsnn_jax.train.config import base_config


def get_config(stages: str = "fp,md"):
  c = base_config()
  c.stages = stages
  c.data.name = "cifar10"
  c.data.root = "../shared/data"  # a folder holding cifar-10-batches-py, or a tfds data_dir
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
  c.train.steps = 300 * 390  # 300 epochs of 50,000 images
  c.train.log_every = 100
  c.train.eval_every = 3900
  c.train.checkpoint_every = 1000
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  return c
