"""Dataset names -> sources and their description (`DatasetInfo`), driven by a data config (SPEC §8).

A data config is an ml_collections ConfigDict or a dict with the fields

    name          one of NAMES
    root          folder holding the dataset files (str or None)
    source        'auto' | 'folder' | 'tfds'   (tfds only for mnist / cifar10 / cifar100;
                  'auto' = the folder when present under root, else tfds)
    image_size    int or None: square resize (static: in the loader; events: of the event grid)
    timesteps     event datasets: number of frames T (default 10); ignored for static data
    augment       bool: random crop (4-pixel zero padding) + horizontal flip for CIFAR-like
                  train data (cifar10, cifar100, tinyimagenet); no effect on other datasets
    train_subset  int or None: keep a fixed seeded random subset of this many train examples
    test_subset   int or None: evaluate on a fixed seeded random subset of this many test
                  examples (the same for every run; for CPU-sized tables)
"""
from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import numpy as np

from mdsnn_jax.data import events, sources

NAMES = ("digits", "mnist", "cifar10", "cifar100", "tinyimagenet", "nmnist", "ncaltech101")
EVENT_NAMES = ("nmnist", "ncaltech101")
CIFAR_LIKE = ("cifar10", "cifar100", "tinyimagenet")
TFDS_NAMES = ("mnist", "cifar10", "cifar100")
SOURCES = ("auto", "folder", "tfds")
DEFAULT_TIMESTEPS = 10
TRAIN_SUBSET_SEED = 0

# Per-channel mean / std of the train split's pixels scaled to [0, 1] (the usual constants).
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}


class DatasetInfo(NamedTuple):
  """What a model and trainer need to know about a dataset as configured.

  image_shape is the per-example (H, W, C) after resizing; (H, W, 2) for event data, whose
  examples are [timesteps, H, W, 2]. timesteps is None for static images.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  is_event: bool
  timesteps: int | None


class _Config(NamedTuple):
  name: str
  root: str | None
  source: str
  image_size: int | None
  timesteps: int | None
  augment: bool
  train_subset: int | None
  test_subset: int | None = None


def _field(cfg: Any, key: str, default: Any) -> Any:
  if hasattr(cfg, "get"):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def _positive_or_none(key: str, value: Any) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{key} must be a positive int or None, got {value!r}")
  return int(value)


def parse_config(cfg: Any) -> _Config:
  """Validates a data config (ConfigDict / dict / object with attributes); fills the defaults."""
  name = _field(cfg, "name", None)
  if name not in NAMES:
    raise ValueError(f"unknown dataset name {name!r}; allowed names: {list(NAMES)}")
  source = _field(cfg, "source", "auto")
  if source not in SOURCES:
    raise ValueError(f"unknown data source {source!r}; allowed sources: {list(SOURCES)}")
  if source == "tfds" and name not in TFDS_NAMES:
    raise ValueError(f"source='tfds' is not available for {name!r}; tfds datasets: {list(TFDS_NAMES)}")
  root = _field(cfg, "root", None)
  if root is not None:
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
  timesteps = _positive_or_none("timesteps", _field(cfg, "timesteps", None))
  if name in EVENT_NAMES and timesteps is None:
    timesteps = DEFAULT_TIMESTEPS
  return _Config(name=name, root=root, source=source,
                 image_size=_positive_or_none("image_size", _field(cfg, "image_size", None)),
                 timesteps=timesteps if name in EVENT_NAMES else None,
                 augment=bool(_field(cfg, "augment", False)),
                 train_subset=_positive_or_none("train_subset", _field(cfg, "train_subset", None)),
                 test_subset=_positive_or_none("test_subset", _field(cfg, "test_subset", None)))


@functools.lru_cache(maxsize=16)
def _full_split(name: str, root: str | None, source: str, image_size: int | None,
                timesteps: int | None, split: str) -> Any:
  """The whole split, cached per process so repeated loaders share one in-memory copy."""
  if name == "digits":
    return sources.digits_source(split)
  if name == "nmnist":
    return events.nmnist_source(root, split, timesteps=timesteps, image_size=image_size)
  if name == "ncaltech101":
    return events.ncaltech101_source(root, split, timesteps=timesteps, image_size=image_size)
  if name == "tinyimagenet":
    return sources.tinyimagenet_source(root, split)
  if name == "mnist":
    folder = functools.partial(sources.mnist_source, root, split)
    shape, num_classes = (28, 28, 1), 10
  else:
    num_classes = 10 if name == "cifar10" else 100
    folder = functools.partial(sources.cifar_folder_source, root, split, num_classes)
    shape = (32, 32, 3)
  tfds = functools.partial(sources.tfds_image_source, name, root, split, num_classes=num_classes,
                           image_shape=shape)
  if source == "folder":
    return folder()
  if source == "tfds":
    return tfds()
  try:
    return folder()
  except FileNotFoundError as folder_error:
    try:
      return tfds()
    except FileNotFoundError as tfds_error:
      raise FileNotFoundError(f"source='auto' tried the folder and tfds. Folder: {folder_error} "
                              f"tfds: {tfds_error}") from tfds_error


def load_split(cfg: Any, split: str) -> Any:
  """A grain random-access source of the split: `len(src)`, `src[i] -> {'image', 'label'}`.

  Static images come as stored (uint8 [H, W, C]; the loader scales, resizes and normalises);
  event data as float32 [T, H, W, 2] frames already at image_size. For the train split with
  cfg.train_subset = k, the source holds the k examples of a fixed seeded random subset (in
  their original order); likewise the test split with cfg.test_subset.
  """
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; allowed splits: ['train', 'test']")
  c = parse_config(cfg)
  full = _full_split(c.name, c.root, c.source, c.image_size if c.name in EVENT_NAMES else None,
                     c.timesteps, split)
  subset = c.train_subset if split == "train" else c.test_subset
  if subset is not None:
    field = f"{split}_subset"
    if subset > len(full):
      raise ValueError(f"{field}={subset} exceeds the {len(full)} {split} examples of {c.name}; "
                       f"allowed: 1..{len(full)} or None")
    idx = np.sort(np.random.default_rng(TRAIN_SUBSET_SEED).permutation(len(full))[:subset])
    return sources.SubsetSource(full, idx, f"{field}={subset}, seed={TRAIN_SUBSET_SEED}")
  return full


def dataset_info(cfg: Any) -> DatasetInfo:
  """DatasetInfo of the dataset as configured (reads the files: counts are what load_split gives)."""
  c = parse_config(cfg)
  train, test = load_split(cfg, "train"), load_split(cfg, "test")
  h, w, ch = train.image_shape
  if c.image_size is not None:
    h = w = c.image_size
  return DatasetInfo(name=c.name, num_classes=int(train.num_classes), image_shape=(h, w, ch),
                     num_train=len(train), num_test=len(test), is_event=c.name in EVENT_NAMES,
                     timesteps=c.timesteps)
