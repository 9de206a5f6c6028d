"""Event datasets: ATIS files written in the real 5-byte format, read back through tonic."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tonic")

from mdsnn_jax.data import DatasetInfo, dataset_info, load_split, make_loader  # noqa: E402
from mdsnn_jax.data import events  # noqa: E402
from helpers import reference_frames  # noqa: E402


def encode_atis(x, y, t, p) -> bytes:
  """40-bit big-endian words: bits 39..32 x, 31..24 y, bit 23 polarity, bits 22..0 t (µs)."""
  x, y, t, p = (np.asarray(a, np.uint64) for a in (x, y, t, p))
  word = (x << np.uint64(32)) | (y << np.uint64(24)) | (p << np.uint64(23)) | (t & np.uint64(0x7FFFFF))
  as_bytes = np.stack([(word >> np.uint64(8 * k)) & np.uint64(0xFF) for k in range(4, -1, -1)], axis=1)
  return as_bytes.astype(np.uint8).tobytes()


def decode_atis(raw: bytes) -> dict[str, np.ndarray]:
  """Independent NumPy decoder (no overflow markers expected in the files it is used on)."""
  b = np.frombuffer(raw, np.uint8).reshape(-1, 5).astype(np.int64)
  return {"x": b[:, 0], "y": b[:, 1], "p": b[:, 2] >> 7,
          "t": ((b[:, 2] & 127) << 16) | (b[:, 3] << 8) | b[:, 4]}


def random_events(rng, n, width, height, duration_us):
  t = np.sort(rng.integers(0, duration_us, n))
  return rng.integers(0, width, n), rng.integers(0, height, n), t, rng.integers(0, 2, n)


def test_read_atis_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  x, y, t, p = random_events(rng, 500, 240, 180, 2**23 - 1)
  path = tmp_path / "a.bin"
  path.write_bytes(encode_atis(x, y, t, p))
  ev = events.read_atis(path)
  for name, ref in zip("xytp", (x, y, t, p)):
    np.testing.assert_array_equal(ev[name], ref)


@pytest.mark.parametrize("size", [None, 16, 7])
def test_events_to_frames_matches_histogram(size):
  rng = np.random.default_rng(1)
  x, y, t, p = random_events(rng, 3000, 34, 34, 300_000)
  ev = np.zeros(len(x), events.EVENT_DTYPE)
  ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
  frames = events.events_to_frames(ev, (34, 34, 2), 6, size)
  s = 34 if size is None else size
  assert frames.shape == (6, s, s, 2)
  np.testing.assert_array_equal(frames, reference_frames(x, y, t, p, (34, 34), 6, size))
  # Only the tail past T·w is dropped.
  assert len(x) - 34 < frames.sum() < len(x)


def test_events_to_frames_empty_and_errors():
  empty = np.zeros(0, events.EVENT_DTYPE)
  assert events.events_to_frames(empty, (34, 34, 2), 3).shape == (3, 34, 34, 2)
  with pytest.raises(ValueError, match="timesteps.*0"):
    events.events_to_frames(empty, (34, 34, 2), 0)
  with pytest.raises(ValueError, match="polarities.*3"):
    events.events_to_frames(empty, (34, 34, 3), 2)


def _write_flat_nmnist(folder, rng, n_train, n_test):
  folder.mkdir(parents=True, exist_ok=True)
  recs = {}
  for split, ids in (("train", range(1, n_train + 1)), ("test", range(60001, 60001 + n_test))):
    lines = ["#sample #class"]
    for i in ids:
      rec = random_events(rng, int(rng.integers(200, 800)), 34, 34, 300_000)
      label = int(rng.integers(0, 10))
      (folder / f"{i}.bs2").write_bytes(encode_atis(*rec))
      lines.append(f"{i}\t{label}")
      recs.setdefault(split, []).append((rec, label))
    (folder / ("train1K.txt" if split == "train" else "test100.txt")).write_text("\n".join(lines) + "\n")
  return recs


def test_nmnist_flat_layout_through_the_loader(tmp_path):
  rng = np.random.default_rng(2)
  recs = _write_flat_nmnist(tmp_path / "nmnist_small", rng, 6, 3)
  cfg = {"name": "nmnist", "root": str(tmp_path), "timesteps": 5, "image_size": 16}
  info = dataset_info(cfg)
  assert info == DatasetInfo(name="nmnist", num_classes=10, image_shape=(16, 16, 2), num_train=6,
                             num_test=3, is_event=True, timesteps=5)
  batches = list(make_loader(cfg, "train", batch_size=3, seed=0, shuffle=False, num_epochs=1))
  assert len(batches) == 2
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert images.shape == (6, 5, 16, 16, 2) and images.dtype == np.float32 and labels.dtype == np.int32
  for k, (rec, label) in enumerate(recs["train"]):
    np.testing.assert_array_equal(images[k], reference_frames(*rec, (34, 34), 5, 16))
    assert labels[k] == label


def test_nmnist_standard_layout_and_cache(tmp_path):
  rng = np.random.default_rng(3)
  recs = []
  for split in ("Train", "Test"):
    for digit in (3, 7):
      (tmp_path / split / str(digit)).mkdir(parents=True)
      for k in range(2):
        rec = random_events(rng, 300, 34, 34, 200_000)
        (tmp_path / split / str(digit) / f"{k:05d}.bin").write_bytes(encode_atis(*rec))
        if split == "Test":
          recs.append((rec, digit))
  src = load_split({"name": "nmnist", "root": str(tmp_path), "timesteps": 4}, "test")
  assert len(src) == 4
  for k, (rec, digit) in enumerate(recs):
    ex = src[k]
    assert ex["label"] == digit and ex["image"].shape == (4, 34, 34, 2)
    np.testing.assert_array_equal(ex["image"], reference_frames(*rec, (34, 34), 4))
  # Frames are cached in memory: removing the files does not change what the source returns.
  before = src[0]["image"]
  for f in tmp_path.glob("Test/*/*.bin"):
    f.unlink()
  np.testing.assert_array_equal(src[0]["image"], before)


def test_ncaltech101_layout_split_and_frames(tmp_path):
  rng = np.random.default_rng(4)
  written = {}
  for cls, n in (("accordion", 10), ("airplanes", 4), ("BACKGROUND_Google", 3)):
    (tmp_path / "Caltech101" / cls).mkdir(parents=True)
    for k in range(1, n + 1):
      rec = random_events(rng, 400, 240, 180, 300_000)
      path = tmp_path / "Caltech101" / cls / f"image_{k:04d}.bin"
      path.write_bytes(encode_atis(*rec))
      written[str(path)] = rec
  cfg = {"name": "ncaltech101", "root": str(tmp_path), "timesteps": 3, "image_size": 12}
  train, test = load_split(cfg, "train"), load_split(cfg, "test")
  assert (len(train), len(test)) == (9 + 4, 1 + 0)  # ⌈0.9 n⌉ per class; background excluded
  assert set(train.files) | set(test.files) == {f for f in written if "BACKGROUND" not in f}
  assert not set(train.files) & set(test.files)
  np.testing.assert_array_equal(np.bincount(train.labels), [9, 4])
  assert dataset_info(cfg).num_classes == 2 and dataset_info(cfg).image_shape == (12, 12, 2)
  for k in (0, 10):
    np.testing.assert_array_equal(train[k]["image"], reference_frames(*written[train.files[k]], (240, 180), 3, 12))
  again = load_split({**cfg, "timesteps": 2}, "train")
  assert again.files == train.files  # the split does not depend on T


def test_real_nmnist_small(shared_data):
  folder = shared_data / "nmnist_small"
  cfg = {"name": "nmnist", "root": str(shared_data), "timesteps": 8}
  info = dataset_info(cfg)
  assert (info.num_train, info.num_test, info.image_shape, info.timesteps) == (1000, 100, (34, 34, 2), 8)
  test = load_split(cfg, "test")
  listed = [line.split() for line in (folder / "test100.txt").read_text().splitlines()[1:] if line.strip()]
  np.testing.assert_array_equal(test.labels, [int(c) for _, c in listed])
  for k in (0, 57, 99):
    raw = decode_atis((folder / f"{listed[k][0]}.bs2").read_bytes())
    assert raw["y"].max() < 240  # no overflow markers: the plain decoder applies
    assert raw["x"].max() <= 33 and raw["y"].max() <= 33 and len(raw["t"]) > 1000
    np.testing.assert_array_equal(test[k]["image"], reference_frames(raw["x"], raw["y"], raw["t"], raw["p"],
                                                                     (34, 34), 8))
