"""Event-camera datasets (N-MNIST, N-Caltech101, CIFAR10-DVS) as T frames of 2 polarities, through tonic.

N-MNIST and N-Caltech101 files are the ATIS binary format, 5 bytes per event (big-endian 40-bit word):

    bits 39..32  x          bits 31..24  y          bit 23  polarity p ∈ {0, 1}
    bits 22..0   timestamp t in µs (tonic adds 2^13 µs after each overflow marker, y == 240)

`events_to_frames` bins the events of one recording into T equal time windows with
`tonic.transforms.ToFrame(n_time_bins=T)`: window w = ⌊(t_last − t_first) / T⌋ µs and event k
falls in bin ⌊(t_k − t_first) / w⌋ when that is < T (so, as in tonic, events at or after
t_first + T·w — at least the last one — are dropped). Pixel (x, y) of a W×H sensor is resized
to an S×S grid by `tonic.transforms.Downsample`: x' = ⌊x·S/W⌋, y' = ⌊y·S/H⌋. A frame holds
event counts (float32, unnormalised): frames[t, y, x, p] = #events in bin t at (x, y) of
polarity p, laid out [T, H, W, 2] per example (the loader batches them to [B, T, H, W, 2]).

CIFAR10-DVS files are jAER AEDAT 2.0 (`read_aedat2`: the original release's `.aedat`) or
AEDAT 4 (`.aedat4`, tonic's CIFAR10DVS re-release, read by `tonic.io.read_aedat4`); see
`cifar10dvs_source`.

Decoded frames are cached in memory (int16 counts, per process); nothing is written to disk.
With `data.event_augment` (see `mdsnn_jax.data.event_augment`) the train split is read as raw
events each time instead (`RawEventView`) and augmented and framed per example.
"""
from __future__ import annotations

import os
import pathlib
import re
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from mdsnn_jax.data.sources import DataFormatError, missing_dataset_error

PathLike = str | os.PathLike

NMNIST_SENSOR = (34, 34, 2)  # tonic order: (W, H, P)
NCALTECH101_SENSOR = (240, 180, 2)  # recordings fit in 240×180 (tonic leaves it per-sample)
NCALTECH101_TRAIN_FRACTION = 0.9  # no official split: per class, a seeded 90 / 10 split
NCALTECH101_SPLIT_SEED = 0
NCALTECH101_BACKGROUND = "BACKGROUND_Google"  # the clutter class, excluded (101 object classes)
EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
CIFAR10DVS_SENSOR = (128, 128, 2)  # DVS128
# tonic's CIFAR10DVS class names and indices (its `classes`), also the release's folder names.
CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                      "ship", "truck")
CIFAR10DVS_TRAIN_FRACTION = 0.9  # no official split: per class the first 90 % (900 / 100)
CIFAR10DVS_EXTENSIONS = (".aedat", ".aedat4")

NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist (https://data.mendeley.com/datasets/468j46mzdv/1)"
NCALTECH101_URL = ("https://www.garrickorchard.com/datasets/n-caltech101 "
                   "(https://data.mendeley.com/datasets/cy6cvx3ryv/1)")
CIFAR10DVS_URL = ("https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 (the original "
                  ".aedat release) or tonic's CIFAR10DVS re-release (.aedat4, "
                  "https://figshare.com/ndownloader/files/38023437)")


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
               description: str, strict_sensor: bool = False,
               reader: Callable[[str], np.ndarray] | None = None):
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
    self.reader = reader  # path -> events (a module-level function: picklable); None: read_atis
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    frames = self._cache.get(index)
    if frames is None:
      frames = events_to_frames(self.read_events(index), self.sensor_size, self.timesteps,
                                self.image_size)
      self._cache[index] = frames
    return {"image": frames.astype(np.float32), "label": self.labels[index]}

  def read_events(self, index: int) -> np.ndarray:
    """The raw events of example `index` (EVENT_DTYPE fields x, y, t, p), read from its file."""
    path = self.files[int(index)]
    if self.reader is not None:
      return self.reader(path)
    return read_atis(path, self.sensor_size if self.strict_sensor else None)

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


class RawEventView:
  """A framed event source's examples as raw events, for augmenting before framing.

  view[i] = {'events': EVENT_DTYPE [n] (read from the file each time: raw events are not
  cached), 'label': int32} for example i of `source`, an `EventFrameSource` or a
  `SubsetSource` chain over one (train_subset, shards). Carries the attributes the frames
  need: sensor_size, timesteps, image_size, image_shape, num_classes.
  """

  def __init__(self, source: Any):
    from mdsnn_jax.data.sources import SubsetSource  # pylint: disable=g-import-not-at-top

    base, idx = source, None
    while isinstance(base, SubsetSource):
      idx = base.indices if idx is None else base.indices[idx]
      base = base.parent
    if not isinstance(base, EventFrameSource):
      raise TypeError(f"RawEventView needs an EventFrameSource (or a subset of one), got {base!r}")
    self.base = base
    self.indices = np.arange(len(base)) if idx is None else np.asarray(idx, np.int64)
    self.labels = base.labels[self.indices]
    for attr in ("num_classes", "sensor_size", "timesteps", "image_size", "image_shape"):
      setattr(self, attr, getattr(base, attr))

  def __len__(self) -> int:
    return int(self.indices.shape[0])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    j = int(self.indices[int(index)])
    return {"events": self.base.read_events(j), "label": self.base.labels[j]}

  def __repr__(self) -> str:
    return f"RawEventView({self.base!r}, n={len(self)})"


# ------------------------------------------------------------------------------ CIFAR10-DVS
AEDAT2_EXPECTED = ("jAER AEDAT 2.0: '#' header lines (the first '#!AER-DAT2.0'), then big-endian "
                   "uint32 pairs (address, timestamp in µs), DVS128 address bit 0 polarity, "
                   "bits 1-7 x, bits 8-14 y")


def read_aedat2(path: PathLike) -> np.ndarray:
  """Events of one CIFAR10-DVS `.aedat` file (jAER AEDAT 2.0, DVS128) as EVENT_DTYPE.

  The file: header lines starting with '#' (the first '#!AER-DAT2.0', each ending in '\\n'),
  then 8-byte events, two big-endian uint32 each: the DVS128 address a and the timestamp t in
  µs. jAER's DVS128 address layout: polarity bit a & 1, column x_a = (a >> 1) & 127, row
  y_a = (a >> 8) & 127. Orientation: as SpikingJelly's CIFAR10DVS.load_origin_data (whose
  frames most CIFAR10-DVS results were trained on, and tonic's CIFAR10DVS before it moved to
  .aedat4), the sensor's image is transposed and rotated upright and the polarity inverted:

      x = 127 − y_a,   y = 127 − x_a,   p = 1 − (a & 1)   (p = 1: ON, brighter)

  Other address bits are ignored (as there); no event is filtered. Raises DataFormatError
  naming the file when the header is not AEDAT 2.x, the body is not whole 8-byte events, or
  it holds no event.
  """
  raw = pathlib.Path(path).read_bytes()
  if not raw.startswith(b"#!AER-DAT2."):
    first = raw.split(b"\n", 1)[0][:40]
    raise DataFormatError(f"{path}: not an AEDAT 2.0 file (expected {AEDAT2_EXPECTED}); it starts "
                          f"with {first!r}" + (" (an AEDAT 4 file: name it .aedat4)"
                                               if first.startswith(b"#!AER-DAT4") else ""))
  pos = 0
  while raw.startswith(b"#", pos):
    end = raw.find(b"\n", pos)
    if end < 0:
      raise DataFormatError(f"{path}: truncated AEDAT 2.0 file (expected {AEDAT2_EXPECTED}): the "
                            f"header line at byte {pos} never ends")
    pos = end + 1
  body = len(raw) - pos
  if body == 0 or body % 8:
    raise DataFormatError(
        f"{path}: truncated or corrupt AEDAT 2.0 file (expected {AEDAT2_EXPECTED}): its "
        f"{body} data bytes are " + ("no event" if body == 0 else
                                     f"not whole 8-byte events ({body % 8} left over)"))
  words = np.frombuffer(raw, dtype=">u4", offset=pos).reshape(-1, 2).astype(np.int64)
  address = words[:, 0]
  events = np.zeros(len(words), EVENT_DTYPE)
  events["x"] = 127 - ((address >> 8) & 0x7F)
  events["y"] = 127 - ((address >> 1) & 0x7F)
  events["p"] = 1 - (address & 1)
  events["t"] = words[:, 1]
  return events


def read_aedat4(path: PathLike) -> np.ndarray:
  """Events of one AEDAT 4 file (tonic's CIFAR10DVS .aedat4) as EVENT_DTYPE, taken as stored.

  Read by `tonic.io.read_aedat4`, which needs the `aedat` package (`pip install aedat`).
  Unlike `read_aedat2`, no flip is applied: x, y, p are what the file holds (what tonic's
  CIFAR10DVS returns).
  """
  try:
    import aedat  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f"{path}: reading AEDAT 4 (.aedat4) files needs the `aedat` package, which "
                      "tonic.io.read_aedat4 uses: pip install aedat") from e
  import tonic  # pylint: disable=g-import-not-at-top

  try:
    stored = tonic.io.read_aedat4(str(path))
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # the Rust decoder panics (pyo3's PanicException: a BaseException)
    raise DataFormatError(f"{path}: not a readable AEDAT 4 file ({type(e).__name__}: {e})") from e
  if len(stored) == 0:
    raise DataFormatError(f"{path}: an AEDAT 4 file without events")
  events = np.zeros(len(stored), EVENT_DTYPE)
  names = stored.dtype.names
  events["t"] = stored["t"]
  events["x"] = stored["x"]
  events["y"] = stored["y"]
  events["p"] = stored["p" if "p" in names else "on"].astype(np.int64)
  return events


def read_cifar10dvs_file(path: PathLike) -> np.ndarray:
  """`read_aedat2` for .aedat files, `read_aedat4` for .aedat4 files."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix == ".aedat":
    return read_aedat2(path)
  if suffix == ".aedat4":
    return read_aedat4(path)
  raise DataFormatError(f"{path}: not a CIFAR10-DVS event file (expected {CIFAR10DVS_EXTENSIONS})")


def cifar10dvs_source(root: PathLike | None, split: str, *, timesteps: int,
                      image_size: int | None = None,
                      train_fraction: float = CIFAR10DVS_TRAIN_FRACTION) -> EventFrameSource:
  """CIFAR10-DVS from `root/CIFAR10DVS/<class>/*.aedat[4]` (or root itself holding the classes).

  Class folders are named as tonic's CIFAR10DVS classes, label = index in CIFAR10DVS_CLASSES
  (airplane = 0 … truck = 9; always 10 classes, a missing folder is a class without examples).
  Files: the original release's `.aedat` (`read_aedat2`) or tonic's `.aedat4` (`read_aedat4`,
  needs `pip install aedat`); a root holds one of the two formats, not both. Split (there is
  no official one): per class, files sorted by name (as torchvision's DatasetFolder orders
  them), the first ⌈train_fraction·n⌉ are train and the rest test — SpikingJelly's
  split_to_train_test_set(train_fraction, ..., random_split=False), the 900 / 100 per class of
  most CIFAR10-DVS results at the default 0.9.
  """
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; allowed splits: ['train', 'test']")
  if not 0 < float(train_fraction) < 1:
    raise ValueError(f"data.cifar10dvs_train_fraction must lie in (0, 1), got {train_fraction!r}")
  layout = ("<root>/CIFAR10DVS/<class>/*.aedat (or *.aedat4) with <class> one of "
            f"{list(CIFAR10DVS_CLASSES)} (cfg.root = the parent of CIFAR10DVS/, or the folder "
            "holding the class folders; extract the per-class zips there)")
  candidates = [] if root is None else [pathlib.Path(root) / "CIFAR10DVS", pathlib.Path(root)]
  for folder in candidates:
    if not folder.is_dir():
      continue
    class_dirs = [(label, folder / name) for label, name in enumerate(CIFAR10DVS_CLASSES)
                  if (folder / name).is_dir()]
    if not class_dirs:
      continue
    files, labels, suffixes = [], [], set()
    for label, class_dir in class_dirs:
      class_files = sorted((f for f in class_dir.iterdir()
                            if f.suffix.lower() in CIFAR10DVS_EXTENSIONS and f.is_file()),
                           key=lambda f: f.name)
      if not class_files:
        held = sorted(f.name for f in class_dir.iterdir())
        raise FileNotFoundError(
            f"CIFAR10-DVS class folder {class_dir} holds no .aedat / .aedat4 file (it holds "
            f"{len(held)} entries{': ' + ', '.join(held[:5]) if held else ''}); expected {layout}")
      suffixes.update(f.suffix.lower() for f in class_files)
      n_train = int(np.ceil(float(train_fraction) * len(class_files)))
      chosen = class_files[:n_train] if split == "train" else class_files[n_train:]
      files.extend(chosen)
      labels.extend([label] * len(chosen))
    if len(suffixes) > 1:
      raise ValueError(f"CIFAR10-DVS at {folder} mixes .aedat and .aedat4 files (one recording "
                       f"would count twice); keep one format; expected {layout}")
    return EventFrameSource(files, labels, num_classes=len(CIFAR10DVS_CLASSES),
                            sensor_size=CIFAR10DVS_SENSOR, timesteps=timesteps,
                            image_size=image_size, reader=read_cifar10dvs_file,
                            description=f"cifar10dvs, root={str(folder)!r}, split={split!r}, "
                                        f"train_fraction={float(train_fraction)}")
  raise missing_dataset_error(
      "CIFAR10-DVS (class folders airplane … truck of .aedat / .aedat4 files)", candidates, layout,
      CIFAR10DVS_URL)
