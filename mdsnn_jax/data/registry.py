"""Dataset names -> sources and their description (`DatasetInfo`), driven by a data config.

A data config is an ml_collections ConfigDict or a dict with the fields

    name          one of NAMES
    root          folder holding the dataset files (str or None)
    source        'auto' | 'folder' | 'tfds'   (tfds only for mnist / cifar10 / cifar100;
                  'auto' = the folder when present under root, else tfds)
    image_size    int or None: square resize (static: in the loader; events: of the event grid)
    timesteps     event datasets: number of frames T (default 10); ignored for static data
    augment       bool: random crop (4-pixel zero padding) + horizontal flip for CIFAR-like
                  train data (cifar10, cifar100, tinyimagenet); no effect on other datasets
    autoaugment   'none' | 'cifar10': the AutoAugment CIFAR-10 policy after crop + flip, on
                  CIFAR-like train data only (`augment` module)
    cutout        int >= 0: Cutout patch side in pixels (0 = off), set to the mean colour after
                  normalisation, on CIFAR-like train data only (papers: 16 for CIFAR-10)
    train_subset  int or None: keep a fixed seeded random subset of this many train examples
    test_subset   int or None: evaluate on a fixed seeded random subset of this many test
                  examples (the same for every run; for CPU-sized tables)
    ncaltech101_background      bool (False): N-Caltech101 keeps BACKGROUND_Google as a class
    ncaltech101_train_fraction  float (0.9): N-Caltech101's per-class train share (no official
                  split; the rest is the test split)
    cifar10dvs_train_fraction   float (0.9): CIFAR10-DVS's per-class train share (no official
                  split: per class the first ⌈f·n⌉ files by name are train, the rest test)
    event_augment str ('none'): event datasets' train split only: a comma list of tonic event
                  augmentations (spatial_jitter, drop_event, polarity_flip, each optionally
                  =VALUE); see `mdsnn_jax.data.event_augment`
"""
from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import numpy as np

from mdsnn_jax.data import augment, events, sources

NAMES = ("digits", "mnist", "cifar10", "cifar100", "tinyimagenet", "nmnist", "ncaltech101",
         "cifar10dvs")
EVENT_NAMES = ("nmnist", "ncaltech101", "cifar10dvs")
CIFAR_LIKE = ("cifar10", "cifar100", "tinyimagenet")
TFDS_NAMES = ("mnist", "cifar10", "cifar100")
SOURCES = ("auto", "folder", "tfds")
AUTOAUGMENT = ("none",) + tuple(augment.POLICIES)
# Examples (train, test) of the real datasets, as the loaders count them (`dataset_info`).
# N-Caltech101 and CIFAR10-DVS have no official split: they are counted by recordings
# (N-Caltech101's BACKGROUND_Google included, the count tonic checks a folder against) and
# split by the config.
REAL_SPLITS = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
               "tinyimagenet": (100_000, 10_000), "mnist": (60_000, 10_000),
               "nmnist": (60_000, 10_000)}
NCALTECH101_RECORDINGS = 8_709
NCALTECH101_BACKGROUND_RECORDINGS = 467  # Caltech101's background images
CIFAR10DVS_RECORDINGS = 10_000  # 1,000 per class
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
  background: bool = False
  train_fraction: float = events.NCALTECH101_TRAIN_FRACTION
  cifar10dvs_train_fraction: float = events.CIFAR10DVS_TRAIN_FRACTION
  event_augment: tuple = ()  # event_augment.parse_event_augment's spec; () for none
  cutout: int = 0
  autoaugment: str = "none"


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
  background = _field(cfg, "ncaltech101_background", False)
  if not isinstance(background, (bool, np.bool_)):
    raise ValueError(f"data.ncaltech101_background must be True or False, got {background!r}")
  fraction = _field(cfg, "ncaltech101_train_fraction", events.NCALTECH101_TRAIN_FRACTION)
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating))
      or not 0 < float(fraction) < 1):
    raise ValueError(f"data.ncaltech101_train_fraction must be a number in (0, 1), got "
                     f"{fraction!r}")
  dvs_fraction = _field(cfg, "cifar10dvs_train_fraction", events.CIFAR10DVS_TRAIN_FRACTION)
  if (isinstance(dvs_fraction, bool) or not isinstance(dvs_fraction, (int, float, np.floating))
      or not 0 < float(dvs_fraction) < 1):
    raise ValueError(f"data.cifar10dvs_train_fraction must be a number in (0, 1), got "
                     f"{dvs_fraction!r}")
  from mdsnn_jax.data import event_augment  # pylint: disable=g-import-not-at-top
  event_spec = event_augment.parse_event_augment(_field(cfg, "event_augment", "none"))
  autoaugment = _field(cfg, "autoaugment", "none")
  if autoaugment not in AUTOAUGMENT:
    raise ValueError(f"unknown data.autoaugment {autoaugment!r}; allowed: {list(AUTOAUGMENT)}")
  cutout = _field(cfg, "cutout", 0)
  if isinstance(cutout, bool) or not isinstance(cutout, (int, np.integer)) or cutout < 0:
    raise ValueError(f"data.cutout must be an int >= 0 (patch side in pixels, 0 = off), got "
                     f"{cutout!r}")
  return _Config(name=name, root=root, source=source, background=bool(background),
                 cifar10dvs_train_fraction=float(dvs_fraction),
                 event_augment=event_spec if name in EVENT_NAMES else (),
                 train_fraction=float(fraction), cutout=int(cutout), autoaugment=str(autoaugment),
                 image_size=_positive_or_none("image_size", _field(cfg, "image_size", None)),
                 timesteps=timesteps if name in EVENT_NAMES else None,
                 augment=bool(_field(cfg, "augment", False)),
                 train_subset=_positive_or_none("train_subset", _field(cfg, "train_subset", None)),
                 test_subset=_positive_or_none("test_subset", _field(cfg, "test_subset", None)))


@functools.lru_cache(maxsize=16)
def _full_split(name: str, root: str | None, source: str, image_size: int | None,
                timesteps: int | None, split: str, background: bool = False,
                train_fraction: float = events.NCALTECH101_TRAIN_FRACTION) -> Any:
  """The whole split, cached per process so repeated loaders share one in-memory copy."""
  if name == "digits":
    return sources.digits_source(split)
  if name == "nmnist":
    return events.nmnist_source(root, split, timesteps=timesteps, image_size=image_size)
  if name == "ncaltech101":
    return events.ncaltech101_source(root, split, timesteps=timesteps, image_size=image_size,
                                     background=background, train_fraction=train_fraction)
  if name == "cifar10dvs":
    return events.cifar10dvs_source(root, split, timesteps=timesteps, image_size=image_size,
                                    train_fraction=train_fraction)
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
  ncaltech = c.name == "ncaltech101"
  fraction = (c.train_fraction if ncaltech else c.cifar10dvs_train_fraction
              if c.name == "cifar10dvs" else events.NCALTECH101_TRAIN_FRACTION)
  full = _full_split(c.name, c.root, c.source, c.image_size if c.name in EVENT_NAMES else None,
                     c.timesteps, split, c.background if ncaltech else False, fraction)
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


def class_counts(src: Any) -> np.ndarray | None:
  """Examples per class of a source (None where labels are not held in memory, e.g. tfds)."""
  if isinstance(src, sources.SubsetSource):
    parent = class_counts(src.parent)
    labels = getattr(src.parent, "labels", None)
    return None if parent is None else np.bincount(
        np.asarray(labels)[src.indices], minlength=int(src.num_classes))
  labels = getattr(src, "labels", None)
  if labels is None:
    return None
  return np.bincount(np.asarray(labels, np.int64), minlength=int(src.num_classes))


def split_rule(cfg: Any) -> str:
  """How the configured dataset's train / test splits are made, in words."""
  c = parse_config(cfg)
  if c.name == "digits":
    return (f"fixed seeded split of scikit-learn's 1,797 digits, {sources.DIGITS_NUM_TRAIN} "
            f"train (seed {sources.DIGITS_SPLIT_SEED})")
  if c.name == "ncaltech101":
    return (f"per class, the first ceil({c.train_fraction:g} n) of a seeded permutation train, "
            f"the rest test (data.ncaltech101_train_fraction={c.train_fraction:g}); "
            f"{events.NCALTECH101_BACKGROUND} "
            + ("kept as a class" if c.background else "excluded")
            + f" (data.ncaltech101_background={c.background})")
  if c.name == "cifar10dvs":
    f = c.cifar10dvs_train_fraction
    return (f"per class, the first ceil({f:g} n) files by name train, the rest test "
            f"(data.cifar10dvs_train_fraction={f:g}; no official split)")
  return "the dataset's own train / test files"


def augmentation_rule(cfg: Any) -> str | None:
  """The train split's augmentation, in pipeline order, in words (None: none applies)."""
  c = parse_config(cfg)
  if c.name in EVENT_NAMES and c.event_augment:
    from mdsnn_jax.data import event_augment  # pylint: disable=g-import-not-at-top
    return (f"tonic event transforms {event_augment.format_spec(c.event_augment)} "
            "(data.event_augment; on the events, before framing)")
  if c.name not in CIFAR_LIKE:
    return None
  steps = (["random crop (zero pad 4) + horizontal flip"] if c.augment else []) + (
      [f"AutoAugment {c.autoaugment} policy"] if c.autoaugment != "none" else []) + (
      [f"Cutout {c.cutout}×{c.cutout} (after normalisation)"] if c.cutout else [])
  return ", ".join(steps) or None


def describe(cfg: Any) -> str:
  """One line a person checks before training: the dataset, where it was read, its classes,
  the split sizes after the split rule (and subsets), the train augmentation, and classes left
  without examples."""
  c = parse_config(cfg)
  train, test = load_split(cfg, "train"), load_split(cfg, "test")
  shape = dataset_info(cfg).image_shape
  where = "bundled with scikit-learn" if c.name == "digits" else f"at {c.root}"
  frames = f", T = {c.timesteps}" if c.name in EVENT_NAMES else ""
  subsets = "".join(f", {k}={v}" for k, v in (("train_subset", c.train_subset),
                                              ("test_subset", c.test_subset)) if v)
  line = (f"data: {c.name} {where}: {int(train.num_classes)} classes, {len(train)} train / "
          f"{len(test)} test examples{subsets}, input {'×'.join(map(str, shape))}{frames}; "
          f"split: {split_rule(cfg)}")
  rule = augmentation_rule(cfg)
  if rule:
    line += f"; train augmentation: {rule}"
  for name, src in (("train", train), ("test", test)):
    counts = class_counts(src)
    if counts is not None and len(src) and (counts == 0).any():
      line += (f"; {int((counts == 0).sum())} class(es) have no {name} example "
               f"(class indices {np.flatnonzero(counts == 0)[:8].tolist()})")
  return line
