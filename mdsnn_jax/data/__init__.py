"""Datasets and the grain input pipeline.

    info = dataset_info(cfg)                       # DatasetInfo: classes, shapes, sizes
    loader = make_loader(cfg, 'train', batch_size=128, seed=0, shuffle=True)
    it = iter(loader); batch = next(it)            # {'image': f32 [B, H, W, C], 'label': i32 [B]}
    state = it.get_state(); it.set_state(state)    # or orbax via grain.checkpoint.CheckpointSave
    stream = make_train_stream(cfg, global_batch=256, seed=0, process_index=k, process_count=P,
                               start_step=s)       # rows [k·G/P, (k+1)·G/P) of global batch s, s+1, ...

Modules: `sources` (static images in their on-disk formats), `events` (ATIS event files -> frames
through tonic), `registry` (names, config, DatasetInfo), `augment` (per-example Cutout and the
AutoAugment CIFAR-10 policy, through PIL), `pipeline` (grain transforms, loader).
A truncated or corrupt dataset file raises DataFormatError (a ValueError) naming the file.
"""
from __future__ import annotations

from mdsnn_jax.data.pipeline import (make_loader, make_train_stream, random_crop_flip, resize_image,
                                     standardize)
from mdsnn_jax.data.registry import NAMES, DatasetInfo, dataset_info, load_split
from mdsnn_jax.data.sources import DataFormatError

__all__ = [
    "NAMES", "DataFormatError", "DatasetInfo", "dataset_info", "load_split", "make_loader",
    "make_train_stream", "random_crop_flip", "resize_image", "standardize",
]
