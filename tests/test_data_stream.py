"""make_train_stream: a training stream that is a function of the step alone, on any topology."""
from __future__ import annotations

import collections
import itertools
import pickle

import ml_collections
import numpy as np
import pytest

from mdsnn_jax.data import load_split, make_train_stream
from mdsnn_jax.data import registry

DIGITS_N = 1438  # sources.DIGITS_NUM_TRAIN


def data_cfg(**overrides):
  """The digits data config of mdsnn_jax.train.config.base_config, with overrides."""
  return ml_collections.ConfigDict(dict(
      dict(name="digits", root=None, source="auto", image_size=None, timesteps=None, augment=False,
           train_subset=None, worker_count=0), **overrides))


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def global_batches(cfg, *, global_batch, seed, steps, process_count=1, start_step=0):
  """Steps start_step.. of a process_count-process run, each process's local batches concatenated."""
  streams = [make_train_stream(cfg, global_batch=global_batch, seed=seed, process_index=k,
                               process_count=process_count, start_step=start_step)
             for k in range(process_count)]
  per_process = [take(s, steps) for s in streams]
  for local in per_process:
    for batch in local:
      assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
      assert batch["image"].shape[0] == batch["label"].shape[0] == global_batch // process_count
  return [{key: np.concatenate([local[s][key] for local in per_process]) for key in ("image", "label")}
          for s in range(steps)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["image"], y["image"])  # bit-identical, not just close


@pytest.fixture
def cifar_cfg(tmp_path):
  """A cifar-10-batches-py folder (real pickled format) of 40 train / 8 test random images."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  for name, n in (("data_batch_1", 25), ("data_batch_2", 15), ("test_batch", 8)):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    with open(folder / name, "wb") as f:
      pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
                   "labels": [int(v) for v in rng.integers(0, 10, n)], "batch_label": name}, f, protocol=2)
  return data_cfg(name="cifar10", root=str(tmp_path), source="folder", augment=True)


# ------------------------------------------------------------------------- topology independence


@pytest.mark.parametrize("global_batch,process_count", [(64, 2), (64, 4), (48, 3)])
def test_processes_concatenate_to_the_one_process_batch_digits(global_batch, process_count):
  steps = DIGITS_N // global_batch + 3  # past the first epoch boundary (batches straddle it)
  one = global_batches(data_cfg(), global_batch=global_batch, seed=5, steps=steps)
  many = global_batches(data_cfg(), global_batch=global_batch, seed=5, steps=steps,
                        process_count=process_count)
  assert_same(many, one)
  # Digits are scaled by their full-scale value 16 only.
  assert one[0]["image"].shape == (global_batch, 8, 8, 1)
  assert one[0]["image"].min() >= 0 and one[0]["image"].max() <= 1


def _normalize(raw_images):
  mean, std = registry.MEAN_STD["cifar10"]
  return ((raw_images.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def _crops_and_flips(raw, padding=4):
  """All (2·padding+1)² zero-padded crops of raw [H, W, C], each unflipped and flipped."""
  h, w, _ = raw.shape
  padded = np.pad(raw, ((padding, padding), (padding, padding), (0, 0)))
  for top in range(2 * padding + 1):
    for left in range(2 * padding + 1):
      crop = padded[top:top + h, left:left + w]
      yield crop
      yield crop[:, ::-1]


def test_processes_concatenate_with_augmentation_cifar_folder(cifar_cfg):
  steps = 8  # 96 positions: 2.4 epochs of 40
  one = global_batches(cifar_cfg, global_batch=12, seed=3, steps=steps)
  for process_count in (2, 4):
    assert_same(global_batches(cifar_cfg, global_batch=12, seed=3, steps=steps,
                               process_count=process_count), one)
  # The order does not depend on augmentation; each augmented row is a crop/flip (then the
  # CIFAR-10 normalisation) of the example at its position, found through the plain stream.
  plain = global_batches(ml_collections.ConfigDict({**cifar_cfg, "augment": False}), global_batch=12,
                         seed=3, steps=steps)
  source = load_split(cifar_cfg, "train")
  normalized_source = _normalize(source.images)
  changed = 0
  for aug_batch, plain_batch in zip(one, plain):
    np.testing.assert_array_equal(aug_batch["label"], plain_batch["label"])
    for aug_row, plain_row in zip(aug_batch["image"], plain_batch["image"]):
      (index,) = np.flatnonzero((normalized_source == plain_row).all(axis=(1, 2, 3)))
      assert any(np.array_equal(_normalize(c[None])[0], aug_row)
                 for c in _crops_and_flips(source.images[index]))
      changed += not np.array_equal(aug_row, plain_row)
  assert changed > 80  # of 96: an unchanged row needs the centre crop and no flip (p = 1/162)


def test_real_cifar_subset_processes_concatenate(shared_data):
  cfg = data_cfg(name="cifar10", root=str(shared_data), source="folder", augment=True, train_subset=200)
  one = global_batches(cfg, global_batch=32, seed=0, steps=8)
  assert one[0]["image"].shape == (32, 32, 32, 3)
  assert_same(global_batches(cfg, global_batch=32, seed=0, steps=8, process_count=4), one)
  assert_same(global_batches(cfg, global_batch=32, seed=0, steps=3, process_count=2, start_step=5),
              one[5:])


# ------------------------------------------------------------------------- resume from the step


@pytest.mark.parametrize("start_step,process_count", [(1, 1), (7, 1), (21, 2), (23, 4)])
def test_start_step_resumes_the_from_zero_stream(start_step, process_count):
  reference = global_batches(data_cfg(), global_batch=64, seed=2, steps=start_step + 4)
  resumed = global_batches(data_cfg(), global_batch=64, seed=2, steps=4, process_count=process_count,
                           start_step=start_step)
  assert_same(resumed, reference[start_step:])


def test_start_step_resumes_with_augmentation(cifar_cfg):
  reference = global_batches(cifar_cfg, global_batch=8, seed=1, steps=9)
  assert_same(global_batches(cifar_cfg, global_batch=8, seed=1, steps=3, process_count=2, start_step=6),
              reference[6:])


# ------------------------------------------------------------------------- epochs


def _example_keys(images, labels):
  return [(im.tobytes(), int(lb)) for im, lb in zip(images, labels)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
  # G = 100 does not divide N = 1438: batches straddle epochs, and position p of the concatenated
  # rows is in epoch ⌊p / N⌋.
  batches = global_batches(data_cfg(), global_batch=100, seed=0, steps=3 * DIGITS_N // 100 + 1)
  rows = _example_keys(np.concatenate([b["image"] for b in batches]),
                       np.concatenate([b["label"] for b in batches]))
  source = load_split(data_cfg(), "train")
  expected = collections.Counter(_example_keys(source.images.astype(np.float32) / np.float32(16),
                                               source.labels))
  source_order = _example_keys(source.images.astype(np.float32) / np.float32(16), source.labels)
  epochs = [rows[e * DIGITS_N:(e + 1) * DIGITS_N] for e in range(3)]
  for epoch in epochs:
    assert len(epoch) == DIGITS_N and collections.Counter(epoch) == expected
    assert epoch != source_order
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
  # The first batch of epoch 1 spans its boundary: 38 rows from epoch 0, then 62 from epoch 1.
  assert rows[1400:1500] == epochs[0][1400:] + epochs[1][:62]


def test_seeds_give_different_orders():
  a = global_batches(data_cfg(), global_batch=64, seed=0, steps=2)
  b = global_batches(data_cfg(), global_batch=64, seed=1, steps=2)
  assert not np.array_equal(a[0]["label"], b[0]["label"]) or not np.array_equal(a[0]["image"], b[0]["image"])
  # The shuffle seed is derived from the seed, not seed + epoch: seed 1's epoch 0 is not seed 0's
  # epoch 1.
  steps = DIGITS_N // 2
  a1 = global_batches(data_cfg(), global_batch=2, seed=0, steps=steps + 1)[steps:]
  b0 = global_batches(data_cfg(), global_batch=2, seed=1, steps=1)
  assert not np.array_equal(a1[0]["image"], b0[0]["image"])


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,match", [
    (dict(global_batch=0), r"global_batch must be a positive multiple of process_count=1, got 0"),
    (dict(global_batch=2.0), r"global_batch .* got 2\.0"),
    (dict(global_batch=True), r"global_batch .* got True"),
    (dict(global_batch=6, process_count=4, process_index=0),
     r"global_batch must be a positive multiple of process_count=4, got 6"),
    (dict(global_batch=DIGITS_N + 1), r"global_batch must be at most the 1438 train examples, got 1439"),
    (dict(process_count=0), r"process_count must be an int >= 1, got 0"),
    (dict(process_count=2, process_index=2), r"process_index must be an int in \[0, 2\), got 2"),
    (dict(process_index=-1), r"process_index must be an int in \[0, 1\), got -1"),
    (dict(start_step=-1), r"start_step must be an int >= 0, got -1"),
    (dict(start_step=1.5), r"start_step must be an int >= 0, got 1\.5"),
    (dict(seed=-1), r"seed must be an int in \[0, 4294967296\), got -1"),
    (dict(seed=2**32), r"seed must be an int in \[0, 4294967296\), got 4294967296"),
    (dict(worker_count=-1), r"worker_count must be an int >= 0, got -1"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_train_stream(data_cfg(), **{"global_batch": 8, "seed": 0, **kwargs})


def test_bad_config_and_subset():
  with pytest.raises(ValueError, match="unknown dataset name 'digit'"):
    make_train_stream(data_cfg(name="digit"), global_batch=8, seed=0)
  with pytest.raises(ValueError, match="at most the 10 train examples, got 16"):
    make_train_stream(data_cfg(train_subset=10), global_batch=16, seed=0)


def test_worker_processes_leave_the_stream_unchanged(cifar_cfg):
  serial = take(make_train_stream(cifar_cfg, global_batch=8, seed=4, start_step=2), 6)
  stream = make_train_stream(cifar_cfg, global_batch=8, seed=4, start_step=2, worker_count=2)
  try:
    assert_same(take(stream, 6), serial)
  finally:
    stream.close()


def test_event_frames_stream(tmp_path):
  from test_data_events import _write_flat_nmnist  # pylint: disable=g-import-not-at-top

  _write_flat_nmnist(tmp_path / "nmnist_small", np.random.default_rng(0), 6, 2)
  cfg = data_cfg(name="nmnist", root=str(tmp_path), timesteps=3)
  one = global_batches(cfg, global_batch=4, seed=0, steps=4)  # 16 positions: 2.7 epochs of 6
  assert one[0]["image"].shape == (4, 3, 34, 34, 2)
  assert_same(global_batches(cfg, global_batch=4, seed=0, steps=4, process_count=2), one)
  assert_same(global_batches(cfg, global_batch=4, seed=0, steps=2, process_count=4, start_step=2), one[2:])
  # Frames are event counts, unnormalised, as the source gives them.
  source = load_split(cfg, "train")
  frames = {source[i]["image"].tobytes() for i in range(len(source))}
  assert all(row.tobytes() in frames for batch in one for row in batch["image"])
