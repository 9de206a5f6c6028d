"""CIFAR10-DVS: class folders of jAER AEDAT 2.0 files written in the exact byte format (header
lines + big-endian uint32 address / timestamp words), read back, split, framed and checked."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tonic")

from mdsnn_jax.data import DatasetInfo, dataset_info, load_split, make_loader  # noqa: E402
from mdsnn_jax.data import events, registry  # noqa: E402
from mdsnn_jax.data.sources import DataFormatError  # noqa: E402
from helpers import reference_frames  # noqa: E402

SENSOR = (128, 128)  # DVS128: width, height
HEADER = (b"#!AER-DAT2.0\r\n"
          b"# This is a raw AE data file - do not edit\r\n"
          b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
          b"# Timestamps tick is 1 us\r\n"
          b"# created Mon Jan 16 10:12:33 CST 2017\r\n")


def encode_aedat2(xa, ya, bit, t, header=HEADER) -> bytes:
  """jAER AEDAT 2.0 of DVS128 events: address = ya << 8 | xa << 1 | bit, then t, big-endian."""
  xa, ya, bit, t = (np.asarray(v, np.uint64) for v in (xa, ya, bit, t))
  address = (ya << np.uint64(8)) | (xa << np.uint64(1)) | bit
  words = np.stack([address, t], axis=1).astype(">u4")
  return header + words.tobytes()


def random_raw(rng, n, duration_us=200_000):
  """Raw DVS128 fields (x_a, y_a, polarity bit, t) of n events, timestamps sorted."""
  return (rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
          np.sort(rng.integers(0, duration_us, n)) + 1000)


def oriented(xa, ya, bit, t):
  """The documented orientation: x = 127 − y_a, y = 127 − x_a, p = 1 − bit (SpikingJelly's)."""
  return 127 - np.asarray(ya), 127 - np.asarray(xa), np.asarray(t), 1 - np.asarray(bit)


def write_root(root, counts, rng, *, n_events=300, nested=True):
  """<root>/CIFAR10DVS/<class>/cifar10_<class>_<k>.aedat; returns {path: raw fields}."""
  base = root / "CIFAR10DVS" if nested else root
  written = {}
  for cls, n in counts.items():
    (base / cls).mkdir(parents=True, exist_ok=True)
    for k in range(n):
      raw = random_raw(rng, n_events)
      path = base / cls / f"cifar10_{cls}_{k}.aedat"
      path.write_bytes(encode_aedat2(*raw))
      written[str(path)] = raw
  return written


# ------------------------------------------------------------------------------ the reader
def test_read_aedat2_decodes_the_written_events(tmp_path):
  rng = np.random.default_rng(0)
  xa, ya, bit, t = random_raw(rng, 700)
  t[-1] = 2**32 - 1  # the full unsigned 32-bit timestamp range
  xa[:2], ya[:2], bit[:2] = (0, 127), (127, 0), (0, 1)  # corners, both polarities
  path = tmp_path / "a.aedat"
  path.write_bytes(encode_aedat2(xa, ya, bit, t))
  ev = events.read_aedat2(path)
  assert ev.dtype == events.EVENT_DTYPE and len(ev) == 700
  x, y, tt, p = oriented(xa, ya, bit, t)
  for name, ref in zip("xytp", (x, y, tt, p)):
    np.testing.assert_array_equal(ev[name], ref)
  assert (ev["x"][:2] == (0, 127)).all() and (ev["y"][:2] == (127, 0)).all()
  # tonic's own AEDAT 2.x header / word reader (tonic 1.7's read_dvs_128 on top of it fails
  # to unpack the header's 3 values) finds the same words after the header.
  import tonic
  version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
  words = tonic.io.get_aer_events_from_file(str(path), version, start)
  assert version == 2.0 and start == len(HEADER) and len(words) == 700
  address = words["address"].astype(np.int64)
  np.testing.assert_array_equal(ev["x"], 127 - ((address >> 8) & 0x7F))
  np.testing.assert_array_equal(ev["y"], 127 - ((address >> 1) & 0x7F))
  np.testing.assert_array_equal(ev["p"], 1 - (address & 1))
  np.testing.assert_array_equal(ev["t"], words["timeStamp"].astype(np.int64))
  # The dispatcher picks the reader by suffix.
  np.testing.assert_array_equal(events.read_cifar10dvs_file(path), ev)


def test_read_aedat2_header_variants(tmp_path):
  raw = ([5], [9], [1], [123])
  one_line = tmp_path / "one.aedat"
  one_line.write_bytes(encode_aedat2(*raw, header=b"#!AER-DAT2.0\n"))
  ev = events.read_aedat2(one_line)
  assert (ev["x"][0], ev["y"][0], ev["t"][0], ev["p"][0]) == (127 - 9, 127 - 5, 123, 0)


@pytest.mark.parametrize("content,needle", [
    (b"", "not an AEDAT 2.0 file"),
    (encode_aedat2([1], [2], [0], [3], header=b""), "not an AEDAT 2.0 file"),
    (b"#!AER-DAT4.0\r\n" + bytes(16), "name it .aedat4"),
    (encode_aedat2([1, 2], [2, 3], [0, 1], [3, 4])[:-3], "5 left over"),
    (HEADER, "no event"),
    (b"#!AER-DAT2.0", "never ends"),
])
def test_read_aedat2_refuses_bad_files(tmp_path, content, needle):
  path = tmp_path / "bad.aedat"
  path.write_bytes(content)
  with pytest.raises(DataFormatError) as excinfo:
    events.read_aedat2(path)
  assert str(path) in str(excinfo.value) and needle in str(excinfo.value)
  assert "AEDAT 2.0" in str(excinfo.value)


# ---------------------------------------------------------------------- layout, split, frames
def test_split_labels_and_frames(tmp_path):
  rng = np.random.default_rng(1)
  counts = {"airplane": 10, "cat": 20, "truck": 3}
  written = write_root(tmp_path, counts, rng)
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 4, "image_size": 16}
  train, test = load_split(cfg, "train"), load_split(cfg, "test")
  # ⌈0.9 n⌉ per class train: 9 / 18 / 3, the rest test: 1 / 2 / 0.
  assert (len(train), len(test)) == (30, 3)
  want_train = np.zeros(10, int)
  want_train[[0, 3, 9]] = (9, 18, 3)  # labels are tonic's indices: airplane 0, cat 3, truck 9
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), want_train)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1, 0, 0, 2] + [0] * 6)
  assert set(train.files) | set(test.files) == set(written)
  assert not set(train.files) & set(test.files)
  # Files sorted by name (lexicographic, as torchvision's DatasetFolder): cat_8 and cat_9 come
  # after cat_10 ... cat_19, so they are cat's test files; airplane_9 is airplane's.
  names = sorted(f.rsplit("/", 1)[1] for f in test.files)
  assert names == ["cifar10_airplane_9.aedat", "cifar10_cat_8.aedat", "cifar10_cat_9.aedat"]
  for label, f in zip(train.labels, train.files):
    assert events.CIFAR10DVS_CLASSES[label] in f.rsplit("/", 2)[1]
  for src in (train, test):
    for k in range(len(src)):
      ex = src[k]
      ref = reference_frames(*np.array(oriented(*written[src.files[k]]))[[0, 1, 2, 3]], SENSOR, 4, 16)
      assert ex["image"].shape == (4, 16, 16, 2) and ex["image"].dtype == np.float32
      np.testing.assert_array_equal(ex["image"], ref)
      assert ex["label"] == src.labels[k]
  info = dataset_info(cfg)
  assert info == DatasetInfo(name="cifar10dvs", num_classes=10, image_shape=(16, 16, 2),
                             num_train=30, num_test=3, is_event=True, timesteps=4)
  # The split does not depend on T or the frame size; the fraction moves it.
  assert load_split({**cfg, "timesteps": 2, "image_size": None}, "train").files == train.files
  half = {**cfg, "cifar10dvs_train_fraction": 0.5}
  assert (len(load_split(half, "train")), len(load_split(half, "test"))) == (5 + 10 + 2, 5 + 10 + 1)


def test_full_resolution_frames_and_flat_root(tmp_path):
  rng = np.random.default_rng(2)
  written = write_root(tmp_path, {"dog": 2}, rng, nested=False)  # root holds the class folders
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 3,
         "cifar10dvs_train_fraction": 0.5}
  train = load_split(cfg, "train")
  assert len(train) == 1 and train.labels.tolist() == [5]
  np.testing.assert_array_equal(train[0]["image"],
                                reference_frames(*oriented(*written[train.files[0]]), SENSOR, 3))
  assert dataset_info(cfg).image_shape == (128, 128, 2)


def test_loader_batches(tmp_path):
  rng = np.random.default_rng(3)
  write_root(tmp_path, {"bird": 6, "horse": 4}, rng, n_events=200)
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 5, "image_size": 12}
  batches = list(make_loader(cfg, "train", batch_size=4, seed=0, shuffle=False, num_epochs=1))
  assert len(batches) == 2  # 6 + 4 train (⌈5.4⌉ = 6, ⌈3.6⌉ = 4), drop_remainder
  assert batches[0]["image"].shape == (4, 5, 12, 12, 2) and batches[0]["image"].dtype == np.float32
  assert batches[0]["label"].dtype == np.int32
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels, [2] * 6 + [7] * 2)


# ------------------------------------------------------------------------------ errors
def test_missing_root_says_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as excinfo:
    load_split({"name": "cifar10dvs", "root": str(tmp_path)}, "train")
  msg = str(excinfo.value)
  assert str(tmp_path / "CIFAR10DVS") in msg and "airplane" in msg and "truck" in msg
  assert "Put the files at" in msg and "never downloads" in msg and ".aedat" in msg


def test_class_folder_without_event_files_is_refused(tmp_path):
  rng = np.random.default_rng(4)
  write_root(tmp_path, {"airplane": 2}, rng)
  (tmp_path / "CIFAR10DVS" / "ship").mkdir()
  (tmp_path / "CIFAR10DVS" / "ship" / "ship.zip").write_bytes(b"PK")
  with pytest.raises(FileNotFoundError) as excinfo:
    events.cifar10dvs_source(tmp_path, "train", timesteps=2)
  msg = str(excinfo.value)
  assert str(tmp_path / "CIFAR10DVS" / "ship") in msg and "no .aedat / .aedat4 file" in msg
  assert "ship.zip" in msg and "<root>/CIFAR10DVS/<class>/*.aedat" in msg


def test_mixed_formats_and_bad_fraction_are_refused(tmp_path):
  rng = np.random.default_rng(5)
  write_root(tmp_path, {"frog": 2}, rng)
  (tmp_path / "CIFAR10DVS" / "frog" / "cifar10_frog_0.aedat4").write_bytes(b"#!AER-DAT4.0\r\n")
  with pytest.raises(ValueError, match="mixes .aedat and .aedat4"):
    events.cifar10dvs_source(tmp_path, "train", timesteps=2)
  for bad in (1.0, 0, True, "0.9"):
    with pytest.raises(ValueError, match=r"data.cifar10dvs_train_fraction must be a number in \(0, 1\)"):
      registry.parse_config({"name": "cifar10dvs", "cifar10dvs_train_fraction": bad})


def test_corrupt_file_named_when_read(tmp_path):
  rng = np.random.default_rng(6)
  write_root(tmp_path, {"deer": 1}, rng)
  bad = tmp_path / "CIFAR10DVS" / "deer" / "cifar10_deer_0.aedat"
  bad.write_bytes(bad.read_bytes()[:-1])
  src = load_split({"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 2}, "train")
  with pytest.raises(DataFormatError, match="cifar10_deer_0.aedat.*7 left over"):
    src[0]


# ---------------------------------------------------------------------- config and preflight
def test_config_fields_split_rule_and_describe(tmp_path):
  from mdsnn_jax.train.config import base_config
  c = base_config()
  assert c.data.cifar10dvs_train_fraction == 0.9 and c.data.event_augment == "none"
  write_root(tmp_path, {"automobile": 10}, np.random.default_rng(7), n_events=50)
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 2}
  rule = registry.split_rule(cfg)
  assert "first ceil(0.9 n) files by name train" in rule
  assert "data.cifar10dvs_train_fraction=0.9" in rule
  line = registry.describe({**cfg, "cifar10dvs_train_fraction": 0.7})
  assert "cifar10dvs at" in line and "10 classes, 7 train / 3 test examples" in line
  assert "data.cifar10dvs_train_fraction=0.7" in line and "9 class(es) have no train example" in line


def test_nominal_info_and_roots():
  from mdsnn_jax.train import preflight, tables
  info = tables.nominal_info({"name": "cifar10dvs"})
  assert (info.num_classes, info.image_shape, info.is_event, info.timesteps) == (10, (128, 128, 2), True, 10)
  assert tables.nominal_info({"name": "cifar10dvs", "image_size": 48}).image_shape == (48, 48, 2)
  assert preflight.parse_data_roots("cifar10dvs=/data/dvs") == {"cifar10dvs": "/data/dvs"}


def test_preflight_checks_the_recording_count(tmp_path, monkeypatch):
  from mdsnn_jax.train import preflight
  write_root(tmp_path, {"airplane": 4, "ship": 3}, np.random.default_rng(8), n_events=40)
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 2}
  info = dataset_info(cfg)
  why = preflight.real_size_problem(cfg, info)
  assert why is not None
  assert f"--data_root cifar10dvs={tmp_path}" in why and "holds 7 recordings" in why
  assert "real CIFAR10-DVS has 10,000" in why
  # The count is of recordings, whatever the split fraction.
  half = {**cfg, "cifar10dvs_train_fraction": 0.5}
  assert "holds 7 recordings" in preflight.real_size_problem(half, dataset_info(half))
  monkeypatch.setattr(preflight, "CIFAR10DVS_RECORDINGS", 7)
  assert preflight.real_size_problem(cfg, info) is None
  assert preflight.real_size_problem(half, dataset_info(half)) is None


# ------------------------------------------------------------------------------ AEDAT 4
def test_aedat4_files_through_tonic(tmp_path):
  pytest.importorskip("aedat")  # tonic.io.read_aedat4's decoder
  faery = pytest.importorskip("faery")  # an independent AEDAT 4 writer (test-only)
  rng = np.random.default_rng(9)
  written = {}
  for cls, n in (("cat", 3), ("ship", 2)):
    (tmp_path / "CIFAR10DVS" / cls).mkdir(parents=True)
    for k in range(n):
      stored = np.zeros(250, faery.EVENTS_DTYPE)
      stored["t"] = np.sort(rng.integers(0, 100_000, 250)) + 500
      stored["x"] = rng.integers(0, 128, 250)
      stored["y"] = rng.integers(0, 128, 250)
      stored["on"] = rng.integers(0, 2, 250).astype(bool)
      path = tmp_path / "CIFAR10DVS" / cls / f"cifar10_{cls}_{k}.aedat4"
      faery.events_stream_from_array(stored, dimensions=(128, 128)).to_file(str(path), zero_t0=False)
      written[str(path)] = stored
  some = next(iter(written))
  ev = events.read_cifar10dvs_file(some)
  for name, field in (("x", "x"), ("y", "y"), ("t", "t"), ("p", "on")):
    np.testing.assert_array_equal(ev[name], written[some][field].astype(np.int64))  # as stored
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 3, "image_size": 32,
         "cifar10dvs_train_fraction": 0.5}
  train, test = load_split(cfg, "train"), load_split(cfg, "test")
  assert (len(train), len(test)) == (2 + 1, 1 + 1)
  np.testing.assert_array_equal(train.labels, [3, 3, 8])
  for src in (train, test):
    for k in range(len(src)):
      s = written[src.files[k]]
      np.testing.assert_array_equal(src[k]["image"], reference_frames(s["x"], s["y"], s["t"], s["on"], SENSOR, 3, 32))
  bad = tmp_path / "CIFAR10DVS" / "cat" / "cifar10_cat_0.aedat4"
  bad.write_bytes(b"#!AER-DAT4.0\r\n" + bytes(7))
  with pytest.raises(DataFormatError, match="cifar10_cat_0.aedat4: not a readable AEDAT 4 file"):
    events.read_cifar10dvs_file(bad)
