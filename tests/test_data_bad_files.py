"""Truncated or corrupt dataset files: a DataFormatError naming the file and what was expected.

Each test writes the files in their real format (the writers of test_data_sources /
test_data_events), checks that they load, then damages one and loads it again.
"""
from __future__ import annotations

import gzip
import pickle
import re

import numpy as np
import pytest

from mdsnn_jax.data import DataFormatError, load_split
from mdsnn_jax.data import events, sources
# The real-format writers of the sibling tests (pytest puts tests/ on sys.path).
from test_data_events import encode_atis, random_events
from test_data_sources import write_cifar_batch, write_idx


def expect(path, *patterns):
  """pytest.raises for a DataFormatError whose message starts with `path` and holds each pattern."""
  return pytest.raises(DataFormatError, match=re.escape(str(path)) + "".join(f"(?s:.*){p}" for p in patterns))


def test_data_format_error_is_a_value_error():
  assert issubclass(DataFormatError, ValueError)


# --------------------------------------------------------------------------------- CIFAR pickle

CIFAR_EXPECTED = re.escape("truncated or corrupt CIFAR pickle (expected a dict with 'data' [N, 3072] uint8")


@pytest.fixture
def cifar_folder(tmp_path):
  """cifar-10-batches-py with data_batch_1 (10 images) and test_batch (4), loaded once intact."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  write_cifar_batch(folder / "data_batch_1", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                    [int(v) for v in rng.integers(0, 10, 10)])
  write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), [1, 2, 3, 4])
  assert len(sources.cifar_folder_source(tmp_path, "train", 10)) == 10
  return folder


def _load_cifar_train(folder):
  # cifar_folder_source directly: load_split caches a split per root.
  return sources.cifar_folder_source(folder.parent, "train", 10)


def test_truncated_cifar_pickle(cifar_folder):
  path = cifar_folder / "data_batch_1"
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with expect(path, CIFAR_EXPECTED, "EOFError|UnpicklingError"):
    _load_cifar_train(cifar_folder)
  # Through the registry as a user's run reaches it.
  with expect(path, CIFAR_EXPECTED):
    load_split({"name": "cifar10", "root": str(cifar_folder.parent), "source": "folder"}, "train")


def test_corrupt_cifar_pickle_header(cifar_folder):
  path = cifar_folder / "data_batch_1"
  raw = bytearray(path.read_bytes())
  raw[0:2] = b"\xff\xfe"  # the protocol opcode
  path.write_bytes(bytes(raw))
  with expect(path, CIFAR_EXPECTED, "UnpicklingError"):
    _load_cifar_train(cifar_folder)


@pytest.mark.parametrize("batch,cause", [
    (dict(data=np.zeros((10, 3072), np.uint8), labels=[0] * 9), r"'labels' holds 9 int64 values for the 10 images"),
    (dict(data=np.zeros((10, 3000), np.uint8), labels=[0] * 10), r"'data' is uint8 \[10, 3000\]"),
    (dict(data=np.zeros((10, 3072), np.uint8), labels=[0] * 9 + [10]), r"'labels' span 0\.\.10, outside 0\.\.9"),
    (dict(data=np.full((10, 3072), 300), labels=[0] * 10), r"'data' spans 300\.\.300, outside 0\.\.255"),
    (dict(data=np.zeros((10, 3072), np.uint8)), r"no 'labels' or 'fine_labels' key; keys are \['data'\]"),
    ([1, 2, 3], r"unpickled a list"),
])
def test_cifar_pickle_with_wrong_content(cifar_folder, batch, cause):
  path = cifar_folder / "data_batch_1"
  with open(path, "wb") as f:
    pickle.dump(batch, f, protocol=2)
  with expect(path, CIFAR_EXPECTED, cause):
    _load_cifar_train(cifar_folder)


# --------------------------------------------------------------------------------- MNIST idx


@pytest.fixture
def mnist_folder(tmp_path):
  """The four MNIST idx files of 9 train / 4 test images: images .gz, labels plain; loaded once."""
  rng = np.random.default_rng(1)
  for split, n in (("train", 9), ("test", 4)):
    image_name, label_name = sources.MNIST_FILES[split]
    write_idx(tmp_path / (image_name + ".gz"), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / label_name, rng.integers(0, 10, n).astype(np.uint8))
  assert len(sources.mnist_source(tmp_path, "train")) == 9
  return tmp_path


def test_truncated_plain_idx(mnist_folder):
  path = mnist_folder / "train-labels-idx1-ubyte"
  path.write_bytes(path.read_bytes()[:-3])
  with expect(path, re.escape("idx magic number 0x00000801 and dims (9,) of uint8 call for 9 data bytes "
                              "after the 8-byte header, but the file has 6 (truncated)")):
    sources.mnist_source(mnist_folder, "train")


def test_truncated_gz_stream(mnist_folder):
  path = mnist_folder / "train-images-idx3-ubyte.gz"
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with expect(path, "truncated or corrupt gzip stream; expected a gzip-compressed idx file: EOFError"):
    sources.mnist_source(mnist_folder, "train")


def test_gz_holding_a_truncated_idx(mnist_folder):
  path = mnist_folder / "train-images-idx3-ubyte.gz"
  with gzip.open(path, "rb") as f:
    raw = f.read()
  with gzip.open(path, "wb") as f:
    f.write(raw[:-100])
  with expect(path, re.escape("idx magic number 0x00000803 and dims (9, 28, 28) of uint8 call for 7056 "
                              "data bytes after the 16-byte header, but the file has 6956 (truncated)")):
    sources.mnist_source(mnist_folder, "train")


def test_not_gzip_at_all(mnist_folder):
  path = mnist_folder / "train-images-idx3-ubyte.gz"
  path.write_bytes(b"\x00\x00\x08\x03" + bytes(40))  # a plain idx under a .gz name
  with expect(path, "truncated or corrupt gzip stream.*BadGzipFile"):
    sources.mnist_source(mnist_folder, "train")


def test_flipped_idx_magic(mnist_folder):
  path = mnist_folder / "train-labels-idx1-ubyte"
  raw = bytearray(path.read_bytes())
  raw[0], raw[2] = 0xFF, 0x42
  path.write_bytes(bytes(raw))
  with expect(path, re.escape("is not an idx file: magic number 0xff004201 (17 bytes in the file); "
                              "expected 0000 followed by a type byte")):
    sources.mnist_source(mnist_folder, "train")


def test_idx_header_cut_short(mnist_folder):
  path = mnist_folder / "train-images-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x09")
  with expect(path, re.escape("announces 3 dimensions, i.e. a 16-byte header, but the file has only 8 bytes")):
    sources.mnist_source(mnist_folder, "train")


def test_idx_wrong_label_count_and_values(mnist_folder):
  path = mnist_folder / "train-labels-idx1-ubyte"
  write_idx(path, np.zeros(8, np.uint8))
  with expect(path, re.escape("idx labels of shape (8,); expected [N] with N = 9, one per image of "),
              re.escape(str(mnist_folder / "train-images-idx3-ubyte.gz"))):
    sources.mnist_source(mnist_folder, "train")
  write_idx(path, np.array([0, 1, 2, 3, 4, 5, 6, 7, 12], np.uint8))
  with expect(path, re.escape("labels span 0..12; expected 0..9")):
    sources.mnist_source(mnist_folder, "train")


# --------------------------------------------------------------------------------- N-MNIST events

EVENTS_EXPECTED = re.escape("(expected ATIS events: 5 bytes each (x, y, polarity | 23-bit µs timestamp), "
                            "x < 34, y < 34, timestamps non-decreasing)")


@pytest.fixture
def nmnist(tmp_path):
  """A flat N-MNIST folder (the workspace's layout: <i>.bs2 + train*.txt) of 3 train recordings."""
  rng = np.random.default_rng(2)
  folder = tmp_path / "nmnist_small"
  folder.mkdir()
  for split, ids in (("train", (1, 2, 3)), ("test", (60001,))):
    for i in ids:
      (folder / f"{i}.bs2").write_bytes(encode_atis(*random_events(rng, 300, 34, 34, 300_000)))
    (folder / f"{split}.txt").write_text("#sample #class\n" + "".join(f"{i}\t{i % 10}\n" for i in ids))
  cfg = {"name": "nmnist", "root": str(tmp_path), "timesteps": 4}
  assert load_split(cfg, "train")[1]["image"].sum() > 250  # intact: ~300 events, all but the last binned
  return folder


def _read_train_example(folder, index):
  # A fresh source each time: a source caches the frames it decoded.
  return events.nmnist_source(folder, "train", timesteps=4)[index]


def test_truncated_event_file(nmnist):
  path = nmnist / "2.bs2"
  path.write_bytes(path.read_bytes()[:-2])
  with expect(path, "truncated or corrupt event file ", EVENTS_EXPECTED,
              re.escape(": 1498 bytes is not a whole number of events (3 left over)")):
    _read_train_example(nmnist, 1)
  path.write_bytes(b"")
  with expect(path, re.escape(": 0 bytes is empty")):
    _read_train_example(nmnist, 1)


def test_corrupt_event_bytes(nmnist):
  path = nmnist / "2.bs2"
  raw = bytearray(path.read_bytes())
  raw[500:600] = np.random.default_rng(3).integers(0, 256, 100, dtype=np.uint8).tobytes()
  path.write_bytes(bytes(raw))
  with expect(path, "corrupt event file ", EVENTS_EXPECTED, "events outside the 34×34 sensor"):
    _read_train_example(nmnist, 1)


def test_event_timestamps_going_back(nmnist):
  path = nmnist / "3.bs2"
  raw = bytearray(path.read_bytes())
  raw[5 * 100 + 2:5 * 100 + 5] = b"\x00\x00\x00"  # event 100's timestamp -> 0 µs, polarity 0
  path.write_bytes(bytes(raw))
  with expect(path, EVENTS_EXPECTED, r"the timestamp goes back from \d+ to 0 µs at event 100"):
    _read_train_example(nmnist, 2)
  # The undamaged recordings still load.
  assert _read_train_example(nmnist, 0)["image"].shape == (4, 34, 34, 2)


# --------------------------------------------------------------------------------- JPEG (TinyImageNet)


def test_truncated_and_garbage_jpeg(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  path = tmp_path / "a.JPEG"
  Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
  assert sources.decode_image(path).shape == (64, 64, 3)
  path.write_bytes(path.read_bytes()[:300])
  with expect(path, re.escape("truncated or corrupt image file (expected a JPEG or PNG): OSError")):
    sources.decode_image(path)
  path.write_bytes(b"not an image at all")
  with expect(path, "UnidentifiedImageError"):
    sources.decode_image(path)
