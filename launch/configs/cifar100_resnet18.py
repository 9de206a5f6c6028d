"""MD-SNN paper row: CIFAR-100, MS-ResNet-18, T = 4, low-bit student (2-bit LSQ weights,
BN folded and quantized, ternary integer membranes), distilled from the FP teacher.
Reference (the paper's reported figure): 74.91 % at full scale; 300 epochs of 50,000 images.

    python launch/train.py --config=launch/configs/cifar100_resnet18.py:fp,md \
        --config.data.root=/data --workdir=/tmp/c100
"""
from mdsnn_jax.train.config import msresnet18_paper_config


def get_config(stages: str = "fp,md"):
  # data.root: a folder holding cifar-100-python/, or a tfds data_dir.
  return msresnet18_paper_config(stages, "cifar100", "/data", epochs=300, steps_per_epoch=390)
