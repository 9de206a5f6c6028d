"""Static-image sources in their real on-disk formats (mdsnn_jax.data.sources / registry)."""
from __future__ import annotations

import collections
import gzip
import pickle
import struct

import numpy as np
import pytest

from mdsnn_jax.data import NAMES, dataset_info, load_split, make_loader
from mdsnn_jax.data import registry, sources

# Published MNIST t10k class counts (http://yann.lecun.com/exdb/mnist/).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, array: np.ndarray) -> None:
  """idx writer straight from the format description: 0, 0, type byte, ndim, big-endian dims."""
  codes = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
           np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}
  header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)


def write_cifar_batch(path, images: np.ndarray, labels, key: str = "labels") -> None:
  """A pickled batch: rows = 1024 R, 1024 G, 1024 B bytes of a 32×32 image."""
  data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  with open(path, "wb") as f:
    pickle.dump({"data": data, key: list(labels), "batch_label": "fake"}, f, protocol=2)


def image_keys(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
  return collections.Counter((im.tobytes(), int(lb)) for im, lb in zip(images, labels))


# --------------------------------------------------------------------------------- idx / MNIST


@pytest.mark.parametrize("dtype,shape,suffix", [("uint8", (5, 4, 3), ""), ("int32", (6, 2), ".gz"),
                                                ("float32", (7,), ".gz"), ("int16", (2, 3, 2, 2), "")])
def test_read_idx_matches_numpy(tmp_path, dtype, shape, suffix):
  rng = np.random.default_rng(0)
  array = (rng.normal(size=shape) * 100).astype(dtype)
  path = tmp_path / f"a-idx{len(shape)}-ubyte{suffix}"
  write_idx(path, array)
  out = sources.read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.shape == shape
  np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
  bad = tmp_path / "bad"
  bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="1234"):
    sources.read_idx(bad)
  short = tmp_path / "short"
  short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00" * 3)
  with pytest.raises(ValueError, match=r"\(10,\)"):
    sources.read_idx(short)


def test_mnist_folder_roundtrip(tmp_path):
  rng = np.random.default_rng(1)
  imgs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 9), ("test", 4))}
  labs = {s: rng.integers(0, 10, len(imgs[s])).astype(np.uint8) for s in imgs}
  for split, (img_name, lab_name) in sources.MNIST_FILES.items():
    write_idx(tmp_path / (img_name + ".gz"), imgs[split])
    write_idx(tmp_path / lab_name, labs[split])  # mixed .gz / plain, as users unpack them
  cfg = {"name": "mnist", "root": str(tmp_path), "source": "folder"}
  for split in ("train", "test"):
    src = load_split(cfg, split)
    assert len(src) == len(imgs[split])
    np.testing.assert_array_equal(np.stack([src[i]["image"] for i in range(len(src))]), imgs[split][..., None])
    np.testing.assert_array_equal([src[i]["label"] for i in range(len(src))], labs[split])
  info = dataset_info(cfg)
  assert (info.num_train, info.num_test, info.image_shape, info.num_classes) == (9, 4, (28, 28, 1), 10)
  # The loader scales digits/MNIST to [0, 1] by /255 and keeps source order without shuffling.
  batch = next(iter(make_loader(cfg, "train", batch_size=3, seed=0, shuffle=False)))
  np.testing.assert_allclose(batch["image"], imgs["train"][:3, ..., None] / 255.0, rtol=1e-6)


def test_real_mnist(shared_data):
  cfg = {"name": "mnist", "root": str(shared_data / "mnist"), "source": "folder"}
  info = dataset_info(cfg)
  assert (info.num_train, info.num_test) == (60000, 10000)
  assert info.image_shape == (28, 28, 1) and not info.is_event
  test = load_split(cfg, "test")
  assert test.images.shape == (10000, 28, 28, 1) and test.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), MNIST_TEST_COUNTS)
  train = load_split(cfg, "train")
  assert train.images.shape == (60000, 28, 28, 1) and set(np.unique(train.labels)) == set(range(10))
  # Digit strokes are bright on a black background: corners empty, centre inked.
  assert train.images[:, :2, :2].max() == 0 and train.images[:, 10:18, 10:18].mean() > 60


# --------------------------------------------------------------------------------- CIFAR


def test_real_cifar10_folder(shared_data):
  cfg = {"name": "cifar10", "root": str(shared_data), "source": "folder"}
  test = load_split(cfg, "test")
  assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
  assert test.labels.min() == 0 and test.labels.max() == 9
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1000] * 10)
  train = load_split(cfg, "train")  # the workspace copy holds data_batch_1 only
  assert len(train) == 10000 and train.images.shape[1:] == (32, 32, 3)
  # Channel layout: pixel (r, c) of channel ch is byte ch*1024 + r*32 + c of the pickled row.
  with open(shared_data / "cifar-10-batches-py" / "test_batch", "rb") as f:
    raw = pickle.load(f, encoding="bytes")
  data = np.asarray(raw[b"data"])
  for i, r, c, ch in [(0, 0, 0, 0), (3, 5, 17, 1), (9999, 31, 31, 2), (42, 12, 30, 2)]:
    assert test.images[i, r, c, ch] == data[i, ch * 1024 + r * 32 + c]
  np.testing.assert_array_equal(test.labels, raw[b"labels"])
  info = dataset_info(cfg)
  assert (info.num_train, info.num_test, info.num_classes) == (10000, 10000, 10)


def test_cifar_folders_subset_of_batches_and_cifar100(tmp_path):
  rng = np.random.default_rng(2)
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  parts = {}
  for name in ("data_batch_3", "data_batch_1", "test_batch"):  # batch 2 absent on purpose
    parts[name] = (rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 5))
    write_cifar_batch(folder / name, *parts[name])
  src = load_split({"name": "cifar10", "root": str(tmp_path)}, "train")  # 'auto' finds the folder
  np.testing.assert_array_equal(src.images, np.concatenate([parts["data_batch_1"][0], parts["data_batch_3"][0]]))
  np.testing.assert_array_equal(src.labels, np.concatenate([parts["data_batch_1"][1], parts["data_batch_3"][1]]))
  test = load_split({"name": "cifar10", "root": str(folder)}, "test")  # root may be the folder itself
  np.testing.assert_array_equal(test.images, parts["test_batch"][0])

  folder100 = tmp_path / "cifar-100-python"
  folder100.mkdir()
  imgs, labs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, 6)
  write_cifar_batch(folder100 / "train", imgs, labs, key="fine_labels")
  write_cifar_batch(folder100 / "test", imgs[:2], labs[:2], key="fine_labels")
  cfg = {"name": "cifar100", "root": str(tmp_path), "source": "folder"}
  src = load_split(cfg, "train")
  np.testing.assert_array_equal(src.images, imgs)
  np.testing.assert_array_equal(src.labels, labs)
  info = dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_test) == (100, 6, 2)


def test_tfds_mock_cifar10(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    cfg = {"name": "cifar10", "root": str(tmp_path / "tfds"), "source": "tfds"}
    src = load_split(cfg, "train")
    reference = tfds.data_source("cifar10", split="train", data_dir=str(tmp_path / "tfds"))
    assert len(src) == len(reference) == 12
    for i in (0, 5, 11):
      np.testing.assert_array_equal(src[i]["image"], reference[i]["image"])
      assert src[i]["label"] == reference[i]["label"] and src[i]["label"].dtype == np.int32
    # source='auto' without a folder falls back to tfds.
    auto = load_split({"name": "cifar10", "root": str(tmp_path / "auto")}, "test")
    assert len(auto) == 12 and auto[0]["image"].shape == (32, 32, 3)
    batch = next(iter(make_loader(cfg, "train", batch_size=4, seed=0, shuffle=False)))
    raw = np.stack([reference[i]["image"] for i in range(4)]) / 255.0
    mean, std = registry.MEAN_STD["cifar10"]
    np.testing.assert_allclose(batch["image"], (raw - mean) / np.asarray(std), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["label"], [reference[i]["label"] for i in range(4)])


# --------------------------------------------------------------------------------- TinyImageNet


def test_tinyimagenet_fake_jpeg_folder(tmp_path):
  from PIL import Image

  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n03", "n01", "n02"]  # not sorted on purpose: classes follow sorted(wnids)
  (root / "val" / "images").mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
  colours = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}
  for wnid in wnids:
    (root / "train" / wnid / "images").mkdir(parents=True)
    for k in range(2):
      Image.new("RGB", (64, 64), colours[wnid]).save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
  Image.new("L", (64, 64), 128).save(root / "val" / "images" / "val_0.JPEG")  # grayscale file
  Image.new("RGB", (64, 64), colours["n03"]).save(root / "val" / "images" / "val_1.JPEG")
  (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn03\t1\t2\t3\t4\n")

  cfg = {"name": "tinyimagenet", "root": str(tmp_path)}
  train = load_split(cfg, "train")
  assert len(train) == 6
  for i in range(6):
    ex = train[i]
    wnid = sorted(wnids)[int(ex["label"])]
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_allclose(ex["image"].mean((0, 1)), colours[wnid], atol=3)  # JPEG is lossy
  test = load_split(cfg, "test")
  assert [int(test[i]["label"]) for i in range(2)] == [1, 2]
  np.testing.assert_allclose(test[0]["image"], 128, atol=2)
  info = dataset_info({**cfg, "image_size": 32})
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (3, (32, 32, 3), 6, 2)
  batch = next(iter(make_loader({**cfg, "image_size": 32}, "test", batch_size=2, seed=0, shuffle=False,
                                drop_remainder=False)))
  assert batch["image"].shape == (2, 32, 32, 3)


# --------------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_disjoint_and_covering():
  from sklearn.datasets import load_digits

  train, test = load_split({"name": "digits"}, "train"), load_split({"name": "digits"}, "test")
  assert (len(train), len(test)) == (1438, 359)
  bunch = load_digits()
  full = image_keys(bunch.images.astype(np.uint8)[..., None], bunch.target)
  assert image_keys(train.images, train.labels) + image_keys(test.images, test.labels) == full
  assert train.images.max() == 16 and train.max_value == 16
  again = sources.digits_source("train")
  np.testing.assert_array_equal(again.images, train.images)
  # Not simply the first 1,438 rows: the split is a seeded permutation.
  assert not np.array_equal(train.labels, bunch.target[:1438])


def test_train_subset_is_fixed_and_from_the_train_split():
  full = load_split({"name": "digits"}, "train")
  sub = load_split({"name": "digits", "train_subset": 100}, "train")
  sub2 = load_split({"name": "digits", "train_subset": 100}, "train")
  assert len(sub) == 100 and dataset_info({"name": "digits", "train_subset": 100}).num_train == 100
  np.testing.assert_array_equal(sub.indices, sub2.indices)
  assert len(np.unique(sub.indices)) == 100 and sub.indices.max() < len(full)
  for j in (0, 50, 99):
    np.testing.assert_array_equal(sub[j]["image"], full[int(sub.indices[j])]["image"])
  assert len(load_split({"name": "digits", "train_subset": 100}, "test")) == 359
  with pytest.raises(ValueError, match="train_subset=5000"):
    load_split({"name": "digits", "train_subset": 5000}, "train")


def test_test_subset_is_fixed_and_from_the_test_split():
  full = load_split({"name": "digits"}, "test")
  cfg = {"name": "digits", "test_subset": 50}
  sub = load_split(cfg, "test")
  assert len(sub) == 50 and dataset_info(cfg).num_test == 50
  assert dataset_info(cfg).num_train == len(load_split({"name": "digits"}, "train"))
  np.testing.assert_array_equal(sub.indices, load_split(cfg, "test").indices)
  assert len(np.unique(sub.indices)) == 50 and sub.indices.max() < len(full)
  for j in (0, 25, 49):
    np.testing.assert_array_equal(sub[j]["image"], full[int(sub.indices[j])]["image"])
  with pytest.raises(ValueError, match="test_subset=400 exceeds the 359 test"):
    load_split({"name": "digits", "test_subset": 400}, "test")
  with pytest.raises(ValueError, match="test_subset must be a positive int"):
    load_split({"name": "digits", "test_subset": 0}, "test")


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name,needle,url", [
    ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"),
    ("mnist", "train-images-idx3-ubyte", "mnist"),
    ("tinyimagenet", "tiny-imagenet-200", "tiny-imagenet-200.zip"),
    ("nmnist", "Train", "n-mnist"),
    ("ncaltech101", "Caltech101", "n-caltech101"),
])
def test_missing_dataset_says_where_and_how(tmp_path, name, needle, url):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as excinfo:
    load_split({"name": name, "root": str(empty), "source": "folder"}, "train")
  msg = str(excinfo.value)
  assert str(empty) in msg and needle in msg and url in msg
  assert "Put the files at" in msg and "never downloads" in msg


def test_missing_tfds_dataset_names_data_dir(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError) as excinfo:
    load_split({"name": "cifar10", "root": str(tmp_path), "source": "tfds"}, "train")
  msg = str(excinfo.value)
  assert f"{tmp_path}/cifar10" in msg and "tfds build cifar10" in msg


def test_auto_source_reports_both_places(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError) as excinfo:
    load_split({"name": "cifar100", "root": str(tmp_path)}, "test")
  msg = str(excinfo.value)
  assert "cifar-100-python" in msg and f"{tmp_path}/cifar100" in msg


def test_config_errors():
  with pytest.raises(ValueError) as excinfo:
    dataset_info({"name": "imagenet"})
  assert "'imagenet'" in str(excinfo.value) and all(n in str(excinfo.value) for n in NAMES)
  with pytest.raises(ValueError, match="'gcs'.*'auto', 'folder', 'tfds'"):
    load_split({"name": "cifar10", "source": "gcs"}, "train")
  with pytest.raises(ValueError, match="'tfds'.*'digits'"):
    load_split({"name": "digits", "source": "tfds"}, "train")
  with pytest.raises(ValueError, match="'val'.*'train', 'test'"):
    load_split({"name": "digits"}, "val")
  with pytest.raises(ValueError, match="image_size.*-3"):
    dataset_info({"name": "digits", "image_size": -3})
  with pytest.raises(ValueError, match="timesteps.*0"):
    dataset_info({"name": "nmnist", "timesteps": 0})


def test_config_dict_is_accepted():
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict({"name": "digits", "root": None, "source": "auto", "image_size": 16,
                                   "timesteps": 4, "augment": False, "train_subset": None})
  info = dataset_info(cfg)
  assert info == registry.DatasetInfo("digits", 10, (16, 16, 1), 1438, 359, False, None)
