"""Event-camera datasets (N-MNIST, N-Caltech101) as T frames of 2 polarities, through tonic.

Files are the ATIS binary format, 5 bytes per event (big-endian 40-bit word):

    bits 39..32  x          bits 31..24  y          bit 23  polarity p ∈ {0, 1}
    bits 22..0   timestamp t in µs (tonic adds 2^13 µs after each overflow marker, y == 240)

`events_to_frames` bins the events of one recording into T equal time windows with
`tonic.transforms.ToFrame(n_time_bins=T)`: window w = ⌊(t_last − t_first) / T⌋ µs and event k
falls in bin ⌊(t_k − t_first) / w⌋ when that is < T (so, as in tonic, events at or after
t_first + T·w — at least the last one — are dropped). Pixel (x, y) of a W×H sensor is resized
to an S×S grid by `tonic.transforms.Downsample`: x' = ⌊x·S/W⌋, y' = ⌊y·S/H⌋. A frame holds
event counts (float32, unnormalised): frames[t, y, x, p] = #events in bin t at (x, y) of
polarity p, laid out [T, H, W, 2] per example (the loader batches them to [B, T, H, W, 2]).

Decoded frames are cached in memory (int16 counts, per process); nothing is written to disk.
"""
from __future__ import annotations

import os
import pathlib
import re
import zlib
from typing import Sequence

import numpy as np

from mdsnn_jax.data.sources import DataFormatError, missing_dataset_error

PathLike = str | os.PathLike

NMNIST_SENSOR = (34, 34, 2)  # tonic order: (W, H, P)
NCALTECH101_SENSOR = (240, 180, 2)  # recordings fit in 240×180 (tonic leaves it per-sample)
NCALTECH101_TRAIN_FRACTION = 0.9  # no official split: per class, a seeded 90 / 10 split
NCALTECH101_SPLIT_SEED = 0
NCALTECH101_BACKGROUND = "BACKGROUND_Google"  # the clutter class, excluded (101 object classes)
EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])

NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist (https://data.mendeley.com/datasets/468j46mzdv/1)"
NCALTECH101_URL = ("https://www.garrickorchard.com/datasets/n-caltech101 "
                   "(https://data.mendeley.com/datasets/cy6cvx3ryv/1)")


def read_atis(path: PathLike, sensor_size: tuple[int, int, int] | None = None) -> np.ndarray:
  """Events of one ATIS .bin/.bs2 file as a structured array with fields x, y, t (µs), p.

  Raises DataFormatError naming the file when it is empty or not whole 5-byte events. With
  sensor_size = (W, H, 2) the recording must also be plausible for that fixed sensor (N-MNIST):
  every event inside it and timestamps non-decreasing, which all 1,100 real N-MNIST recordings
  of the workspace satisfy and random bytes do not. (N-Caltech101's canvas clips a few real
  events, so its files get only the length check.)
  """
  import tonic  # pylint: disable=g-import-not-at-top

  size = os.path.getsize(path)
  expected = ("ATIS events: 5 bytes each (x, y, polarity | 23-bit µs timestamp)"
              + ("" if sensor_size is None else f", x < {sensor_size[0]}, y < {sensor_size[1]}, "
                 "timestamps non-decreasing"))
  if size == 0 or size % 5:
    raise DataFormatError(f"{path}: truncated or corrupt event file (expected {expected}): {size} bytes "
                          f"is {'empty' if size == 0 else f'not a whole number of events ({size % 5} left over)'}")
  events = tonic.io.read_mnist_file(str(path), dtype=EVENT_DTYPE)
  if sensor_size is not None and len(events):
    width, height = sensor_size[:2]
    outside = int(np.count_nonzero((events["x"] >= width) | (events["y"] >= height)))
    if outside:
      raise DataFormatError(
          f"{path}: corrupt event file (expected {expected}): {outside} of {len(events)} events outside "
          f"the {width}×{height} sensor (x up to {events['x'].max()}, y up to {events['y'].max()})")
    back = np.flatnonzero(np.diff(events["t"]) < 0)
    if back.size:
      k = int(back[0]) + 1
      raise DataFormatError(
          f"{path}: corrupt event file (expected {expected}): the timestamp goes back from "
          f"{events['t'][k - 1]} to {events['t'][k]} µs at event {k} ({back.size} such steps)")
  return events


def events_to_frames(events: np.ndarray, sensor_size: tuple[int, int, int], timesteps: int,
                     image_size: int | None = None) -> np.ndarray:
  """Events -> int16 counts [T, H, W, 2] (H, W = image_size or the sensor's); see module doc."""
  import tonic.transforms as tt  # pylint: disable=g-import-not-at-top

  if not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
    raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
  if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
  width, height, polarities = sensor_size
  if polarities != 2:
    raise ValueError(f"sensor_size must have 2 polarities (W, H, 2), got {sensor_size}")
  # Out-of-sensor events would index past the frame; the fixed N-Caltech101 canvas can clip a few.
  inside = (events["x"] >= 0) & (events["x"] < width) & (events["y"] >= 0) & (events["y"] < height)
  events = events[inside]
  if image_size is not None and (image_size, image_size) != (width, height):
    events = tt.Downsample(sensor_size=sensor_size, target_size=(image_size, image_size))(events)
    sensor_size = (image_size, image_size, 2)
  out_shape = (timesteps, sensor_size[1], sensor_size[0], 2)
  if len(events) == 0:
    return np.zeros(out_shape, np.int16)
  frames = tt.ToFrame(sensor_size=sensor_size, n_time_bins=int(timesteps))(events)  # [T, P, H, W]
  frames = np.transpose(frames, (0, 2, 3, 1)).astype(np.int16)
  if frames.shape != out_shape:
    raise ValueError(f"tonic returned frames of shape {frames.shape}, expected {out_shape}")
  return np.ascontiguousarray(frames)


class EventFrameSource:
  """Random-access source of {'image': float32 [T, H, W, 2] event counts, 'label': int32}."""

  def __init__(self, files: Sequence[PathLike], labels: Sequence[int], *, num_classes: int,
               sensor_size: tuple[int, int, int], timesteps: int, image_size: int | None,
               description: str, strict_sensor: bool = False):
    if len(files) != len(labels):
      raise ValueError(f"{len(files)} files but {len(labels)} labels")
    self.files = [str(f) for f in files]
    self.labels = np.asarray(labels, dtype=np.int32)
    self.num_classes = num_classes
    self.sensor_size = tuple(sensor_size)
    self.timesteps = int(timesteps)
    self.image_size = image_size
    h, w = (sensor_size[1], sensor_size[0]) if image_size is None else (image_size, image_size)
    self.image_shape = (h, w, 2)
    self._description = description
    self.strict_sensor = strict_sensor  # read_atis checks every event against the fixed sensor
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    frames = self._cache.get(index)
    if frames is None:
      raw = read_atis(self.files[index], self.sensor_size if self.strict_sensor else None)
      frames = events_to_frames(raw, self.sensor_size, self.timesteps, self.image_size)
      self._cache[index] = frames
    return {"image": frames.astype(np.float32), "label": self.labels[index]}

  def __getstate__(self):
    # Worker processes start with an empty cache rather than receiving the parent's copy.
    state = self.__dict__.copy()
    state["_cache"] = {}
    return state

  def __repr__(self) -> str:
    return (f"EventFrameSource({self._description}, T={self.timesteps}, image_size={self.image_size}, "
            f"n={len(self)})")


def _read_label_list(path: pathlib.Path) -> list[tuple[str, int]]:
  """Lines `<sample> <class>` (whitespace-separated; lines starting with '#' are comments)."""
  pairs = []
  for line in path.read_text().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    fields = line.split()
    if len(fields) < 2:
      raise ValueError(f"{path}: line {line!r} is not '<sample> <class>'")
    pairs.append((fields[0], int(fields[1])))
  return pairs


def nmnist_source(root: PathLike | None, split: str, *, timesteps: int,
                  image_size: int | None = None) -> EventFrameSource:
  """N-MNIST from `root` (or root/nmnist_small, root/NMNIST) in either layout.

  Standard layout: Train/<digit>/*.bin and Test/<digit>/*.bin. Flat layout (the workspace's
  nmnist_small): `<sample>.bs2` (or .bin) files listed with their class in `train*.txt` /
  `test*.txt` (lines `#sample #class`).
  """
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; allowed splits: ['train', 'test']")
  candidates = [] if root is None else [pathlib.Path(root) / d for d in ("", "nmnist_small", "NMNIST")]
  for folder in candidates:
    split_dir = folder / ("Train" if split == "train" else "Test")
    if split_dir.is_dir():
      files, labels = [], []
      for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        for f in sorted(class_dir.glob("*.bin")):
          files.append(f)
          labels.append(int(class_dir.name))
      if files:
        return EventFrameSource(files, labels, num_classes=10, sensor_size=NMNIST_SENSOR,
                                timesteps=timesteps, image_size=image_size, strict_sensor=True,
                                description=f"nmnist, root={str(split_dir)!r}")
    label_files = sorted(folder.glob(f"{split}*.txt")) if folder.is_dir() else []
    if label_files:
      files, labels = [], []
      for sample, label in _read_label_list(label_files[0]):
        path = next((folder / f"{sample}{ext}" for ext in (".bs2", ".bin")
                     if (folder / f"{sample}{ext}").is_file()), None)
        if path is None:
          raise FileNotFoundError(
              f"{label_files[0]} lists sample {sample} but neither {folder / (sample + '.bs2')} nor "
              f"{folder / (sample + '.bin')} exists")
        files.append(path)
        labels.append(label)
      return EventFrameSource(files, labels, num_classes=10, sensor_size=NMNIST_SENSOR,
                              timesteps=timesteps, image_size=image_size, strict_sensor=True,
                              description=f"nmnist, labels={str(label_files[0])!r}")
  sub = "Train" if split == "train" else "Test"
  raise missing_dataset_error(
      f"N-MNIST {split} split", [p for c in candidates for p in (c / sub, c / f"{split}*.txt")],
      f"<root>/{sub}/<digit>/*.bin (cfg.root = the folder holding Train/ and Test/), or <root>/<i>.bs2 "
      f"with a {split}*.txt label list", NMNIST_URL)


def ncaltech101_source(root: PathLike | None, split: str, *, timesteps: int,
                       image_size: int | None = None, background: bool = False,
                       train_fraction: float = NCALTECH101_TRAIN_FRACTION) -> EventFrameSource:
  """N-Caltech101 from `root/Caltech101/<class>/image_XXXX.bin` (or root itself holding the classes).

  Class index = position in the sorted class-folder names (BACKGROUND_Google only with
  `background`; the 101 object classes without it). Split: per class, a permutation of its
  sorted files seeded by the class name; the first ⌈train_fraction·n⌉ are train.
  """
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; allowed splits: ['train', 'test']")
  if not 0 < float(train_fraction) < 1:
    raise ValueError(f"data.ncaltech101_train_fraction must lie in (0, 1), got {train_fraction!r}")
  candidates = [] if root is None else [pathlib.Path(root) / "Caltech101", pathlib.Path(root)]
  for folder in candidates:
    if not folder.is_dir():
      continue
    classes = sorted(p.name for p in folder.iterdir()
                     if p.is_dir() and (background or p.name != NCALTECH101_BACKGROUND)
                     and any(p.glob("*.bin")))
    if not classes:
      continue
    files, labels = [], []
    for label, name in enumerate(classes):
      # Seeded by the class name, so a class's split does not depend on which others are present.
      rng = np.random.default_rng([NCALTECH101_SPLIT_SEED, zlib.crc32(name.encode())])
      class_files = sorted((folder / name).glob("*.bin"),
                           key=lambda p: (int(re.sub(r"\D", "", p.stem) or 0), p.name))
      perm = rng.permutation(len(class_files))
      n_train = int(np.ceil(float(train_fraction) * len(class_files)))
      chosen = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
      files.extend(class_files[i] for i in chosen)
      labels.extend([label] * len(chosen))
    return EventFrameSource(files, labels, num_classes=len(classes), sensor_size=NCALTECH101_SENSOR,
                            timesteps=timesteps, image_size=image_size,
                            description=f"ncaltech101, root={str(folder)!r}, split={split!r}, "
                                        f"background={bool(background)}, "
                                        f"train_fraction={float(train_fraction)}")
  raise missing_dataset_error(
      "N-Caltech101 (class folders of image_XXXX.bin)", candidates,
      "<root>/Caltech101/<class>/image_XXXX.bin (cfg.root = the parent of Caltech101/)", NCALTECH101_URL)
