"""The grain pipeline: batch format, preprocessing, augmentation, determinism, sharding, state."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from mdsnn_jax.data import load_split, make_loader, random_crop_flip, resize_image, standardize
from mdsnn_jax.data import registry

DIGITS = {"name": "digits"}


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def crop_flip_candidates(image, padding):
  h, w, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  out = []
  for top in range(2 * padding + 1):
    for left in range(2 * padding + 1):
      crop = padded[top:top + h, left:left + w]
      out += [((top, left, False), crop), ((top, left, True), crop[:, ::-1])]
  return out


def which_candidate(aug, image, padding, atol=0.0):
  hits = [key for key, cand in crop_flip_candidates(image, padding) if np.allclose(aug, cand, atol=atol)]
  assert hits, "augmented image is no crop/flip of the padded original"
  return hits[0]


# ------------------------------------------------------------------------------- pure functions


def test_standardize_matches_formula():
  rng = np.random.default_rng(0)
  x = rng.random((4, 5, 3)).astype(np.float32)
  mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
  out = standardize(x, mean, std)
  for c in range(3):
    np.testing.assert_allclose(out[..., c], (x[..., c] - mean[c]) / std[c], rtol=1e-6)
  assert out.dtype == np.float32


def test_resize_image_is_bilinear_with_half_pixel_centres():
  # Upsampling a ramp 8 -> 16: output pixel j samples input coordinate (j + 0.5) / 2 - 0.5.
  ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None], (8, 1, 2)) * np.array([1.0, -3.0], np.float32)
  out = resize_image(ramp, 16)
  assert out.shape == (16, 16, 2) and out.dtype == np.float32
  coords = (np.arange(16) + 0.5) / 2 - 0.5
  expected = np.interp(coords, np.arange(8), np.arange(8, dtype=np.float64))  # clamps at the borders
  np.testing.assert_allclose(out[5, :, 0], expected, atol=1e-5)
  np.testing.assert_allclose(out[11, :, 1], -3 * expected, atol=1e-5)
  np.testing.assert_allclose(resize_image(np.full((9, 9, 1), 0.25, np.float32), 4), 0.25, atol=1e-6)
  np.testing.assert_array_equal(resize_image(ramp, 8), ramp)
  with pytest.raises(ValueError, match=r"\(8, 8\)"):
    resize_image(np.zeros((8, 8)), 4)


def test_random_crop_flip_draws_every_offset_and_flip():
  rng = np.random.default_rng(0)
  image = rng.random((6, 5, 2)).astype(np.float32) + 1.0  # strictly positive: padding is visible
  seen = collections.Counter()
  gen = np.random.default_rng(123)
  for _ in range(600):
    aug = random_crop_flip(image, gen, padding=2)
    assert aug.shape == image.shape
    seen[which_candidate(aug, image, 2)] += 1
  assert len(seen) == 5 * 5 * 2  # every offset in 0..2p on both axes, with and without flip
  for _ in range(100):  # padding wider than the image: some windows are padding only
    which_candidate(random_crop_flip(image, gen, 7), image, 7)
  a = random_crop_flip(image, np.random.default_rng(7), 2)
  np.testing.assert_array_equal(a, random_crop_flip(image, np.random.default_rng(7), 2))
  flips = {random_crop_flip(image, gen, 0).tobytes() for _ in range(40)}  # no padding: flip only
  assert flips == {image.tobytes(), np.ascontiguousarray(image[:, ::-1]).tobytes()}
  with pytest.raises(ValueError, match="-1"):
    random_crop_flip(image, gen, -1)


# ------------------------------------------------------------------------------- batch format


def test_digits_batches_are_scaled_batch_major_in_source_order():
  src = load_split(DIGITS, "train")
  batches = list(make_loader(DIGITS, "train", batch_size=100, seed=0, shuffle=False, num_epochs=1))
  assert len(batches) == len(src) // 100  # drop_remainder
  b = batches[3]
  assert b["image"].shape == (100, 8, 8, 1) and b["image"].dtype == np.float32
  assert b["label"].shape == (100,) and b["label"].dtype == np.int32
  np.testing.assert_allclose(b["image"], src.images[300:400] / 16.0, rtol=1e-6)
  np.testing.assert_array_equal(b["label"], src.labels[300:400])
  tail = list(make_loader(DIGITS, "test", batch_size=100, seed=0, shuffle=False, num_epochs=1,
                          drop_remainder=False))
  assert [len(t["label"]) for t in tail] == [100, 100, 100, 59]


def test_resize_in_loader():
  b = next(iter(make_loader({**DIGITS, "image_size": 16}, "test", batch_size=4, seed=0, shuffle=False)))
  src = load_split(DIGITS, "test")
  assert b["image"].shape == (4, 16, 16, 1)
  np.testing.assert_allclose(b["image"][2], resize_image(src.images[2] / 16.0, 16), atol=1e-6)


def test_cifar_normalisation_without_augmentation(fake_cifar):
  src = load_split(fake_cifar, "train")
  b = next(iter(make_loader({**fake_cifar, "augment": True}, "test", batch_size=8, seed=0, shuffle=False)))
  test = load_split(fake_cifar, "test")  # test split: never augmented
  mean, std = registry.MEAN_STD["cifar10"]
  np.testing.assert_allclose(b["image"], (test.images / 255.0 - mean) / np.asarray(std), rtol=1e-5, atol=1e-6)
  b = next(iter(make_loader(fake_cifar, "train", batch_size=8, seed=0, shuffle=False)))
  np.testing.assert_allclose(b["image"], (src.images[:8] / 255.0 - mean) / np.asarray(std), rtol=1e-5, atol=1e-6)


def test_augmentation_is_crop_flip_of_each_example_and_reproducible(fake_cifar):
  cfg = {**fake_cifar, "augment": True}
  src = load_split(cfg, "train")
  mean, std = registry.MEAN_STD["cifar10"]
  run1 = take(iter(make_loader(cfg, "train", batch_size=8, seed=5, shuffle=False)), 5)  # one epoch
  run2 = take(iter(make_loader(cfg, "train", batch_size=8, seed=5, shuffle=False)), 5)
  assert_batches_equal(run1, run2)
  other = take(iter(make_loader(cfg, "train", batch_size=8, seed=6, shuffle=False)), 5)
  assert not np.array_equal(run1[0]["image"], other[0]["image"])
  keys = set()
  for k, b in enumerate(run1):
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    unnormalised = b["image"] * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    for j in range(8):
      keys.add(which_candidate(unnormalised[j], src.images[8 * k + j] / 255.0, 4, atol=1e-5))
  assert len(keys) > 20 and {flip for *_, flip in keys} == {False, True}
  # The second epoch draws fresh crops for the same images.
  epoch2 = take(iter(make_loader(cfg, "train", batch_size=8, seed=5, shuffle=False)), 10)[5:]
  assert not np.array_equal(np.concatenate([b["image"] for b in epoch2]),
                            np.concatenate([b["image"] for b in run1]))


def test_augment_is_a_no_op_for_digits():
  a = next(iter(make_loader({**DIGITS, "augment": True}, "train", batch_size=16, seed=0, shuffle=False)))
  b = next(iter(make_loader(DIGITS, "train", batch_size=16, seed=0, shuffle=False)))
  assert_batches_equal([a], [b])


# ------------------------------------------------------------------------------- order / shards


def test_same_seed_same_batches_and_reshuffle_per_epoch():
  a = take(iter(make_loader(DIGITS, "train", batch_size=32, seed=3, shuffle=True)), 3)
  b = take(iter(make_loader(DIGITS, "train", batch_size=32, seed=3, shuffle=True)), 3)
  c = take(iter(make_loader(DIGITS, "train", batch_size=32, seed=4, shuffle=True)), 3)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  src = load_split(DIGITS, "train")
  # Batches of 719 = half an epoch: each pair of batches is a permutation of the split, and
  # the second epoch's order differs from the first's.
  full = _example_keys([{"image": src.images.astype(np.float32) / np.float32(16), "label": src.labels}])
  epochs = take(iter(make_loader(DIGITS, "train", batch_size=719, seed=3, shuffle=True)), 4)
  assert _example_keys(epochs[:2]) == full and _example_keys(epochs[2:]) == full
  assert not np.array_equal(epochs[0]["label"], epochs[2]["label"])


def _example_keys(batches):
  return collections.Counter((im.tobytes(), int(l)) for b in batches for im, l in zip(b["image"], b["label"]))


def test_two_shards_are_disjoint_and_cover_the_split():
  kw = dict(batch_size=50, seed=1, shuffle=True, num_epochs=1, drop_remainder=False)
  full = _example_keys(make_loader(DIGITS, "train", **kw))
  s0 = list(make_loader(DIGITS, "train", shard_index=0, shard_count=2, **kw))
  s1 = list(make_loader(DIGITS, "train", shard_index=1, shard_count=2, **kw))
  assert sum(len(b["label"]) for b in s0) == sum(len(b["label"]) for b in s1) == 719
  assert _example_keys(s0) + _example_keys(s1) == full  # multiset union: disjoint and covering
  assert sum(full.values()) == 1438
  # Shard k holds the k-th contiguous slice of the source.
  src = load_split(DIGITS, "train")
  first = next(iter(make_loader(DIGITS, "train", batch_size=8, seed=0, shuffle=False, shard_index=1,
                                shard_count=2)))
  np.testing.assert_allclose(first["image"], src.images[719:727] / 16.0, rtol=1e-6)
  # With an odd-sized split, drop_remainder keeps shards equal (test split: 359 -> 179 + 179).
  t = [list(make_loader(DIGITS, "test", batch_size=1, seed=0, shuffle=False, num_epochs=1, shard_index=i,
                        shard_count=2, drop_remainder=True)) for i in (0, 1)]
  assert len(t[0]) == len(t[1]) == 179


# ------------------------------------------------------------------------------- state


def test_iterator_state_resumes_exactly(fake_cifar):
  cfg = {**fake_cifar, "augment": True}
  it = iter(make_loader(cfg, "train", batch_size=8, seed=9, shuffle=True))
  take(it, 3)
  state = it.get_state()
  expected = take(it, 2)  # crosses the epoch boundary (5 batches per epoch)
  fresh = iter(make_loader(cfg, "train", batch_size=8, seed=9, shuffle=True))
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 2), expected)


def test_orbax_checkpoint_of_the_iterator(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import grain

  it = iter(make_loader(DIGITS, "train", batch_size=16, seed=2, shuffle=True))
  take(it, 3)
  params = {"w": np.arange(6.0).reshape(2, 3)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                         data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = take(it, 2)
  fresh = iter(make_loader(DIGITS, "train", batch_size=16, seed=2, shuffle=True))
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        params=ocp.args.StandardRestore({"w": np.zeros((2, 3))}),
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored["params"]["w"], params["w"])
  assert_batches_equal(take(restored["data_iter"], 2), expected)


def test_make_loader_errors():
  with pytest.raises(ValueError, match="batch_size.*0"):
    make_loader(DIGITS, "train", batch_size=0, seed=0, shuffle=True)
  with pytest.raises(ValueError, match="seed.*-1"):
    make_loader(DIGITS, "train", batch_size=4, seed=-1, shuffle=True)
  with pytest.raises(ValueError, match=r"shard_index.*\[0, 2\).*2"):
    make_loader(DIGITS, "train", batch_size=4, seed=0, shuffle=True, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="'valid'"):
    make_loader(DIGITS, "valid", batch_size=4, seed=0, shuffle=True)
  with pytest.raises(ValueError, match="num_epochs.*0"):
    make_loader(DIGITS, "train", batch_size=4, seed=0, shuffle=True, num_epochs=0)


@pytest.mark.integration
def test_worker_processes_are_deterministic_and_see_the_same_examples(fake_cifar):
  # grain batches inside each worker (worker k takes records k, k + n, ...), so batch composition
  # depends on worker_count; per-example augmentation does not (its rng is keyed by position).
  cfg = {**fake_cifar, "augment": True}
  kw = dict(batch_size=4, seed=1, shuffle=True, num_epochs=1)
  serial = list(make_loader(cfg, "train", **kw))
  a = list(make_loader(cfg, "train", worker_count=2, **kw))
  b = list(make_loader(cfg, "train", worker_count=2, **kw))
  assert_batches_equal(a, b)
  assert _example_keys(a) == _example_keys(serial) and sum(_example_keys(a).values()) == 40


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_eval_shards_partition_the_split_exactly(shards):
  """drop_remainder=False: the shards together hold every test example once, in order
  (grain's own ShardOptions dropped one of 359 digits at 2 shards)."""
  import ml_collections as mc
  from mdsnn_jax import data
  cfg = mc.ConfigDict(dict(name="digits", root=None, source="auto", image_size=None,
                           timesteps=None, augment=False, train_subset=None, worker_count=0))
  kw = dict(batch_size=64, seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  whole = np.concatenate([b["label"] for b in data.make_loader(cfg, "test", **kw)])
  parts = [np.concatenate([b["label"] for b in data.make_loader(
      cfg, "test", shard_index=k, shard_count=shards, **kw)]) for k in range(shards)]
  assert max(map(len, parts)) - min(map(len, parts)) <= 1
  np.testing.assert_array_equal(np.concatenate(parts), whole)
