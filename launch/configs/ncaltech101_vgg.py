"""MD-SNN paper row: N-Caltech101 event frames (tonic; Caltech101/<class>/*.bin in data.root),
VGG-9, T = 10, 2 polarities resized to 48×48; SpQuant's recipe: Adam 1e-3, batch 16, 200 epochs;
split 90/10 per class without BACKGROUND_Google (MD-SNN states no split; the config fields
data.ncaltech101_background / data.ncaltech101_train_fraction change it); evaluated every epoch.
Reference (the paper's reported figure): 81.73 %.

    python launch/train.py --config=launch/configs/ncaltech101_vgg.py:fp,md \
        --config.data.root=/data/N-Caltech101 --workdir=/tmp/ncal
"""
from mdsnn_jax.train.config import ncaltech101_vgg_paper_config


def get_config(stages: str = "fp,md"):
  return ncaltech101_vgg_paper_config(stages)
