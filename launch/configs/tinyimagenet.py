"""MD-SNN paper row: TinyImageNet (standard tiny-imagenet-200/ folder in data.root),
MS-ResNet-18, T = 4, low-bit student. Reference (the paper's reported figure): 60.59 %; 200 epochs of
100,000 images.

    python launch/train.py --config=launch/configs/tinyimagenet.py:fp,md \
        --config.data.root=/data --workdir=/tmp/tin
"""
from mdsnn_jax.train.config import msresnet18_paper_config


def get_config(stages: str = "fp,md"):
  return msresnet18_paper_config(stages, "tinyimagenet", "/data", epochs=200, steps_per_epoch=782)
