"""SpQuant-SNN row: CIFAR-10, ResNet-19 as SpQuant-SNN's code builds it (spike after the
residual add, 7×7 stride-2 stem: `resnet19_spquant`), T = 2, 4-bit weights, ternary (1.58-bit) integer membrane, learnable per-channel
threshold; Adam 0.01 cosine, batch 128, 300 epochs, TET loss, evaluated every epoch.
Reference (the paper's reported figure): FP 94.56, Q 94.11.

    python launch/train.py --config=launch/configs/spquant_cifar10_resnet19.py:fp,qat --workdir=/tmp/sq
"""
from mdsnn_jax.train.config import spquant_resnet19_paper_config


def get_config(stages: str = "fp,qat"):
  return spquant_resnet19_paper_config(stages)
