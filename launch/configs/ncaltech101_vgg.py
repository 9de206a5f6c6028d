"""MD-SNN paper row: N-Caltech101 event frames (tonic; Caltech101/<class>/*.bin in data.root),
VGG-9, T = 10, 2 polarities resized to 48×48; SpQuant's recipe: Adam 1e-3, batch 16, 200 epochs.
Reference (SPEC §7): 81.73 %.

    python launch/train.py --config=launch/configs/ncaltech101_vgg.py:fp,md \
        --config.data.root=/data/N-Caltech101 --workdir=/tmp/ncal
"""
from mdsnn_jax.train.config import base_config, low_bit_student


def get_config(stages: str = "fp,md"):
  c = base_config()
  c.stages = stages
  c.data.name = "ncaltech101"
  c.data.root = "/data/N-Caltech101"
  c.data.timesteps = 10
  c.data.image_size = 48
  c.model.name = "vgg9"
  c.model.timesteps = 10
  low_bit_student(c)
  c.train.global_batch = 16
  c.train.eval_batch = 16
  c.train.steps = 200 * 436  # 200 epochs of ~6,980 training recordings
  c.train.log_every = 100
  c.train.eval_every = 4360
  c.train.checkpoint_every = 1000
  c.optim.lr = 1e-3
  return c
