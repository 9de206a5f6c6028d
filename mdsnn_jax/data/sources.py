"""Random-access sources of static image datasets, read from their real on-disk formats.

Every source is grain-compatible (`len(src)`, `src[i]`) and yields the *stored* pixels:

    src[i] == {'image': uint8 [H, W, C], 'label': int32 scalar}

Scaling to [0, 1], resizing and per-channel normalisation happen in
`mdsnn_jax.data.pipeline` (one per-example Map), so sources stay small and picklable for grain
worker processes. Each source also exposes `num_classes`, `image_shape` (native H, W, C) and
`max_value` (the stored full-scale pixel value: 255, or 16 for the bundled digits), and has a
stable `repr` because grain checks `repr(data_source)` when it restores an iterator state.

Nothing here downloads: a missing dataset raises FileNotFoundError naming the path looked at,
where to put the files and where to get them. A file that is there but truncated or corrupt
raises DataFormatError (a ValueError) naming the file, what the format expects, and what was found.
"""
from __future__ import annotations

import gzip
import os
import pathlib
import pickle
import re
import zlib
from typing import Any, Sequence

import numpy as np

PathLike = str | os.PathLike

DIGITS_NUM_TRAIN = 1438  # 80 % of scikit-learn's 1,797 bundled digits, rounded up
DIGITS_SPLIT_SEED = 0

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
TINYIMAGENET_FOLDER = "tiny-imagenet-200"

# idx type byte -> big-endian NumPy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFormatError(ValueError):
  """A dataset file that exists but is truncated or corrupt; the message names the file."""


def missing_dataset_error(what: str, looked_at: Sequence[PathLike], put: str, get: str) -> FileNotFoundError:
  """A FileNotFoundError saying which paths were looked at, where to put the files, how to get them."""
  paths = ", ".join(str(p) for p in looked_at) if looked_at else "(no path: cfg.root is None)"
  return FileNotFoundError(
      f"{what} not found; looked at: {paths}. Put the files at {put}. Get them from {get} "
      "(this library never downloads; copy them there yourself).")


def _check_split(split: str) -> None:
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; allowed splits: ['train', 'test']")


class ArraySource:
  """An in-memory source over images uint8 [N, H, W, C] and labels int32 [N]."""

  in_memory = True  # tells the loader that reader threads would only contend for the GIL

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int, description: str,
               max_value: int = 255):
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
      raise ValueError(
          f"images must be [N, H, W, C] with N == len(labels); got images {images.shape}, "
          f"labels {labels.shape}")
    self.images = images
    self.labels = labels
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in images.shape[1:])
    self.max_value = max_value
    self._description = description

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ArraySource({self._description}, n={len(self)})"


class SubsetSource:
  """The examples `indices` of `parent` (a fixed subset; e.g. cfg.train_subset)."""

  def __init__(self, parent: Any, indices: np.ndarray, description: str):
    self.parent = parent
    self.indices = np.asarray(indices, dtype=np.int64)
    self._description = description
    for attr in ("num_classes", "image_shape", "max_value", "timesteps", "in_memory"):
      if hasattr(parent, attr):
        setattr(self, attr, getattr(parent, attr))

  def __len__(self) -> int:
    return int(self.indices.shape[0])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.parent[int(self.indices[index])]

  def __repr__(self) -> str:
    return f"SubsetSource({self.parent!r}, {self._description}, n={len(self)})"


# ---------------------------------------------------------------------------------------------
# scikit-learn digits (bundled: the default dataset, no files needed)


def digits_source(split: str) -> ArraySource:
  """scikit-learn's 1,797 bundled 8×8 digits (values 0..16), fixed seeded 1,438 / 359 split."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  _check_split(split)
  bunch = load_digits()
  images = bunch.images.astype(np.uint8)[..., None]  # integer counts 0..16 -> exact in uint8
  perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(images.shape[0])
  idx = perm[:DIGITS_NUM_TRAIN] if split == "train" else perm[DIGITS_NUM_TRAIN:]
  return ArraySource(images[idx], bunch.target[idx], num_classes=10, max_value=16,
                     description=f"digits, split={split!r}")


# ---------------------------------------------------------------------------------------------
# MNIST idx files


def read_idx(path: PathLike) -> np.ndarray:
  """Parses an idx file (optionally .gz): magic 0x0000 | type byte | ndim, ndim big-endian int32 dims.

  Raises DataFormatError naming the file for a bad gzip stream, bad magic number, a header cut
  short, or a data size other than prod(dims) · itemsize bytes.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (EOFError, OSError, zlib.error) as e:  # gzip: truncated (EOFError) or not gzip (BadGzipFile)
    if isinstance(e, FileNotFoundError):
      raise
    raise DataFormatError(f"{path}: truncated or corrupt gzip stream; expected a gzip-compressed idx "
                          f"file: {type(e).__name__}: {e}") from e
  magic = raw[:4].hex()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataFormatError(
        f"{path} is not an idx file: magic number 0x{magic} ({len(raw)} bytes in the file); expected "
        f"0000 followed by a type byte in {[hex(k) for k in _IDX_DTYPES]} and the number of dimensions")
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  ndim = raw[3]
  offset = 4 + 4 * ndim
  if len(raw) < offset:
    raise DataFormatError(f"{path}: idx magic number 0x{magic} announces {ndim} dimensions, i.e. a "
                          f"{offset}-byte header, but the file has only {len(raw)} bytes (truncated)")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
  if any(d < 0 for d in shape):
    raise DataFormatError(f"{path}: idx header (magic number 0x{magic}) has negative dims {shape}")
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - offset != expected:
    raise DataFormatError(
        f"{path}: idx magic number 0x{magic} and dims {shape} of {dtype.newbyteorder('=')} call for "
        f"{expected} data bytes after the {offset}-byte header, but the file has {len(raw) - offset} "
        f"({'truncated' if len(raw) - offset < expected else 'trailing bytes'})")
  return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem, stem + ".gz"):
    if (folder / name).is_file():
      return folder / name
  return None


def mnist_source(root: PathLike | None, split: str) -> ArraySource:
  """MNIST from the four standard idx files in `root` (or `root/mnist`), .gz or not."""
  _check_split(split)
  image_stem, label_stem = MNIST_FILES[split]
  candidates = [] if root is None else [pathlib.Path(root), pathlib.Path(root) / "mnist"]
  for folder in candidates:
    image_path, label_path = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    if image_path is not None and label_path is not None:
      images, labels = read_idx(image_path), read_idx(label_path)
      if images.ndim != 3:
        raise DataFormatError(f"{image_path}: idx images of shape {images.shape}; expected [N, 28, 28]")
      if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(f"{label_path}: idx labels of shape {labels.shape}; expected [N] with "
                              f"N = {images.shape[0]}, one per image of {image_path}")
      if labels.size and not (0 <= labels.min() and labels.max() <= 9):
        raise DataFormatError(f"{label_path}: labels span {labels.min()}..{labels.max()}; expected 0..9")
      return ArraySource(images[..., None], labels, num_classes=10,
                         description=f"mnist, root={str(folder)!r}, split={split!r}")
  raise missing_dataset_error(
      f"MNIST {split} split ({image_stem}[.gz], {label_stem}[.gz])",
      [c / f"{image_stem}[.gz]" for c in candidates],
      "<root>/ (cfg.root) as train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz", MNIST_URL)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 pickled batches, or tfds


CIFAR_EXPECTED = ("a dict with 'data' [N, 3072] uint8 and 'labels' (CIFAR-10) or 'fine_labels' "
                  "(CIFAR-100) of N ints")


def read_cifar_batch(path: PathLike, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """One pickled CIFAR batch -> (images uint8 [N, 32, 32, 3], labels int32 [N]).

  Rows of 'data' are 3072 bytes: the 1024 red, then green, then blue values of a 32×32 image.
  Labels are 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100), checked to lie in
  [0, num_classes) when num_classes is given. A file that does not unpickle to that raises
  DataFormatError naming it. (Unpickling runs code named in the file: read trusted files only.)
  """
  def bad(cause: str) -> DataFormatError:
    return DataFormatError(f"{path}: truncated or corrupt CIFAR pickle (expected {CIFAR_EXPECTED}): {cause}")

  with open(path, "rb") as f:
    try:
      batch = pickle.load(f, encoding="latin1")
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ...)
      raise bad(f"{type(e).__name__}: {e}") from e
  if not isinstance(batch, dict):
    raise bad(f"unpickled a {type(batch).__name__}")
  if "data" not in batch:
    raise bad(f"no 'data' key; keys are {sorted(map(str, batch))}")
  key = "labels" if "labels" in batch else "fine_labels"
  if key not in batch:
    raise bad(f"no 'labels' or 'fine_labels' key; keys are {sorted(map(str, batch))}")
  data = np.asarray(batch["data"])
  if data.ndim != 2 or data.shape[1] != 3072 or not np.issubdtype(data.dtype, np.integer):
    raise bad(f"'data' is {data.dtype} {list(data.shape)}")
  if data.size and data.dtype != np.uint8 and not (0 <= data.min() and data.max() <= 255):
    raise bad(f"'data' spans {data.min()}..{data.max()}, outside 0..255")
  labels = np.asarray(batch[key])
  if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise bad(f"'{key}' holds {labels.shape[0] if labels.ndim else 'no'} {labels.dtype} values for the "
              f"{data.shape[0]} images")
  if num_classes is not None and labels.size and not (0 <= labels.min() and labels.max() < num_classes):
    raise bad(f"'{key}' span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
  images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def cifar_folder(root: PathLike | None, num_classes: int) -> pathlib.Path | None:
  """The `cifar-10-batches-py` / `cifar-100-python` folder under or at `root`, or None."""
  if root is None:
    return None
  for folder in (pathlib.Path(root) / CIFAR_FOLDERS[num_classes], pathlib.Path(root)):
    if num_classes == 10 and ((folder / "test_batch").is_file() or any(folder.glob("data_batch_*"))):
      return folder
    if num_classes == 100 and ((folder / "train").is_file() or (folder / "test").is_file()):
      return folder
  return None


def cifar_folder_source(root: PathLike | None, split: str, num_classes: int) -> ArraySource:
  """CIFAR-10/100 from the standard pickled batches (any subset of data_batch_* for train)."""
  _check_split(split)
  if num_classes not in CIFAR_FOLDERS:
    raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
  folder = cifar_folder(root, num_classes)
  name = f"cifar{num_classes}"
  looked = [] if root is None else [pathlib.Path(root) / CIFAR_FOLDERS[num_classes], pathlib.Path(root)]
  if folder is not None:
    if num_classes == 10:
      files = (sorted(folder.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
               if split == "train" else [folder / "test_batch"])
    else:
      files = [folder / ("train" if split == "train" else "test")]
    files = [f for f in files if f.is_file()]
    if files:
      parts = [read_cifar_batch(f, num_classes) for f in files]
      return ArraySource(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                         num_classes=num_classes,
                         description=f"{name}, files={[str(f) for f in files]!r}")
  raise missing_dataset_error(
      f"{name} {split} split (pickled batches)", looked,
      f"<root>/{CIFAR_FOLDERS[num_classes]}/ (cfg.root = its parent; extract the archive there)",
      CIFAR10_URL if num_classes == 10 else CIFAR100_URL)


class TfdsImageSource:
  """Adapts a `tfds.data_source` of {'image', 'label', ...} records to {'image', 'label': int32}."""

  def __init__(self, tfds_source: Any, *, num_classes: int, image_shape: tuple[int, int, int]):
    self._source = tfds_source
    self.num_classes = num_classes
    self.image_shape = image_shape
    self.max_value = 255

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self._source[index]
    return {"image": np.asarray(record["image"], np.uint8), "label": np.int32(record["label"])}

  def __repr__(self) -> str:
    return f"TfdsImageSource({self._source!r})"


def tfds_data_dir(root: PathLike | None) -> str:
  """Where tfds reads prepared datasets: `root`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if root is not None:
    return str(root)
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _remove_empty_dirs(folder: pathlib.Path) -> None:
  """Removes `folder` when it holds nothing but empty folders."""
  if not folder.is_dir() or any(p.is_file() for p in folder.rglob("*")):
    return
  for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
    p.rmdir()
  folder.rmdir()


def tfds_image_source(name: str, root: PathLike | None, split: str, *, num_classes: int,
                      image_shape: tuple[int, int, int]) -> TfdsImageSource:
  """`tfds.data_source(name, data_dir=root, download=False)` (array_record; no TensorFlow needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  _check_split(split)
  data_dir = tfds_data_dir(root)
  build = (f"`tfds build {name} --data_dir={data_dir} --file_format=array_record` on a machine "
           f"with network access")
  folder = pathlib.Path(data_dir) / name
  existed = folder.exists()
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several unrelated types for "not prepared here"
    if not existed:
      _remove_empty_dirs(folder)  # tfds leaves an empty version folder under a wrong root
    prepared = sorted(folder.glob("*/dataset_info.json")) + sorted(folder.glob("*/*/dataset_info.json"))
    said = str(e).splitlines()[0] if str(e) else ""
    what = f"tfds dataset {name!r} ({split}) prepared as array_record"
    if not prepared:
      # tfds's own answer here is an unrelated file-format error; a prepared dataset always
      # has its dataset_info.json.
      what += f" (no dataset_info.json under {folder})"
      get = build
    else:
      if "FileFormat.TFRECORD" in said:
        what += (f": {prepared[0].parent} holds it as tfrecord, which has no random access; "
                 f"rebuild it as array_record")
      get = f"{build} (tfds said: {type(e).__name__}: {said})"
    raise missing_dataset_error(what, [folder], f"{folder}/<version>/ (cfg.root = the tfds "
                                f"data_dir)", get) from e
  return TfdsImageSource(source, num_classes=num_classes, image_shape=image_shape)


# ---------------------------------------------------------------------------------------------
# TinyImageNet (tiny-imagenet-200/ folder of JPEGs)


def decode_image(path: PathLike) -> np.ndarray:
  """A JPEG/PNG file -> uint8 [H, W, 3] RGB (grayscale files are expanded to 3 channels)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  # ships with matplotlib

  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, "image file is truncated"
    if isinstance(e, FileNotFoundError):
      raise
    raise DataFormatError(f"{path}: truncated or corrupt image file (expected a JPEG or PNG): "
                          f"{type(e).__name__}: {e}") from e


class ImageFileSource:
  """Decodes one image file per __getitem__ (JPEGs are small; nothing is cached)."""

  def __init__(self, files: Sequence[PathLike], labels: Sequence[int], *, num_classes: int,
               image_shape: tuple[int, int, int], description: str):
    self.files = [str(f) for f in files]
    self.labels = np.asarray(labels, dtype=np.int32)
    self.num_classes = num_classes
    self.image_shape = image_shape
    self.max_value = 255
    self._description = description

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image = decode_image(self.files[index])
    if image.shape != self.image_shape:
      raise ValueError(f"{self.files[index]}: decoded shape {image.shape}, expected {self.image_shape}")
    return {"image": image, "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ImageFileSource({self._description}, n={len(self)})"


def tinyimagenet_source(root: PathLike | None, split: str) -> ImageFileSource:
  """TinyImageNet-200: train/<wnid>/images/*.JPEG; test = val/images + val/val_annotations.txt.

  Class index = position of the wnid in sorted(wnids.txt) (the torchvision ImageFolder order).
  """
  _check_split(split)
  candidates = [] if root is None else [pathlib.Path(root) / TINYIMAGENET_FOLDER, pathlib.Path(root)]
  folder = next((c for c in candidates if (c / "wnids.txt").is_file()), None)
  if folder is None:
    raise missing_dataset_error(
        "TinyImageNet-200 (wnids.txt)", [c / "wnids.txt" for c in candidates],
        f"<root>/{TINYIMAGENET_FOLDER}/ with wnids.txt, train/ and val/ (cfg.root = its parent; "
        "unzip the archive there)", TINYIMAGENET_URL)
  wnids = sorted(w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip())
  index = {w: i for i, w in enumerate(wnids)}
  files, labels = [], []
  if split == "train":
    for wnid in wnids:
      for f in sorted((folder / "train" / wnid / "images").glob("*.JPEG")):
        files.append(f)
        labels.append(index[wnid])
  else:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
      raise missing_dataset_error("TinyImageNet-200 validation annotations", [annotations],
                                  f"{folder}/val/ (val_annotations.txt and images/)", TINYIMAGENET_URL)
    for line in annotations.read_text().splitlines():
      fields = line.split("\t")
      if len(fields) < 2:
        continue
      if fields[1] not in index:
        raise ValueError(f"{annotations}: wnid {fields[1]!r} is not in wnids.txt")
      files.append(folder / "val" / "images" / fields[0])
      labels.append(index[fields[1]])
  if not files:
    raise missing_dataset_error(f"TinyImageNet-200 {split} images", [folder / ("train" if split == "train" else "val")],
                                f"{folder}/ (standard layout)", TINYIMAGENET_URL)
  return ImageFileSource(files, labels, num_classes=len(wnids), image_shape=(64, 64, 3),
                         description=f"tinyimagenet, root={str(folder)!r}, split={split!r}")
