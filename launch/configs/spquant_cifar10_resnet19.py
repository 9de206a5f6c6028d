"""SpQuant-SNN row: CIFAR-10, ResNet-19 (MS form), T = 2, 4-bit weights, ternary (1.58-bit)
integer membrane, learnable per-channel threshold; Adam 0.01 cosine, batch 128, 300 epochs,
TET loss. Reference (SPEC §7): FP 94.56, Q 94.11.

    python launch/train.py --config=launch/configs/spquant_cifar10_resnet19.py:fp,qat --workdir=/tmp/sq
"""
from mdsnn_jax.train.config import base_config, set_quant


def get_config(stages: str = "fp,qat"):
  c = base_config()
  c.stages = stages
  c.data.name = "cifar10"
  c.data.root = "../shared/data"
  c.data.augment = True
  c.model.name = "msresnet19"
  c.model.timesteps = 2
  c.model.neuron.decay = 0.25
  c.model.neuron.threshold = 0.5
  c.model.neuron.learn_threshold = True
  set_quant(c, "weight", "sawb", bits=4)
  set_quant(c, "membrane", "ternary")
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = 300 * 390
  c.train.log_every = 100
  c.train.eval_every = 3900
  c.train.checkpoint_every = 1000
  c.optim.lr = 0.01
  c.loss.kind = "tet"
  return c
