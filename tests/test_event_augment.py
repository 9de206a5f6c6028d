"""data.event_augment: tonic's event transforms on the train split's raw events, before framing,
checked against independent references and for determinism in (seed, example position)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tonic")

from mdsnn_jax.data import event_augment as ea  # noqa: E402
from mdsnn_jax.data import events, load_split, make_loader, make_train_stream, registry  # noqa: E402
from mdsnn_jax.data import pipeline  # noqa: E402

SENSOR = (128, 128, 2)


def make_events(rng, n, width=128, height=128, duration_us=100_000):
  ev = np.zeros(n, events.EVENT_DTYPE)
  ev["x"], ev["y"] = rng.integers(0, width, n), rng.integers(0, height, n)
  ev["t"], ev["p"] = np.sort(rng.integers(0, duration_us, n)), rng.integers(0, 2, n)
  return ev


def seed_words(seed):
  """What augment_events draws first from grain's generator: 4 uint32 words for np.random.seed."""
  return np.random.default_rng(seed).integers(0, 2**32, size=4, dtype=np.uint64).astype(np.uint32)


def encode_aedat2(xa, ya, bit, t) -> bytes:
  xa, ya, bit, t = (np.asarray(v, np.uint64) for v in (xa, ya, bit, t))
  words = np.stack([(ya << np.uint64(8)) | (xa << np.uint64(1)) | bit, t], axis=1).astype(">u4")
  return b"#!AER-DAT2.0\r\n# test\r\n" + words.tobytes()


def write_dvs_root(root, rng, counts=(("airplane", 6), ("cat", 6)), n=300):
  for cls, k in counts:
    (root / "CIFAR10DVS" / cls).mkdir(parents=True)
    for i in range(k):
      raw = (rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
             np.sort(rng.integers(0, 100_000, n)))
      (root / "CIFAR10DVS" / cls / f"cifar10_{cls}_{i}.aedat").write_bytes(encode_aedat2(*raw))


# ------------------------------------------------------------------------------ parsing
def test_parse_event_augment():
  assert ea.parse_event_augment("none") == () == ea.parse_event_augment("") == ea.parse_event_augment(None)
  assert ea.parse_event_augment("spatial_jitter, drop_event=0.25,polarity_flip") == (
      ("spatial_jitter", 1.0), ("drop_event", 0.25), ("polarity_flip", 0.5))
  assert ea.format_spec(ea.parse_event_augment("drop_event,spatial_jitter=2")) == (
      "drop_event=0.1,spatial_jitter=2")
  for bad, needle in (("spatial_jiter", "unknown augmentation 'spatial_jiter'"),
                      ("drop_event=1.5", "drop probability in [0, 1]"),
                      ("polarity_flip=x", "flip probability in [0, 1], got 'x'"),
                      ("spatial_jitter=-1", "variance"),
                      ("drop_event=nan", "drop_event's parameter"),
                      ("drop_event,drop_event=0.2", "names 'drop_event' twice")):
    with pytest.raises(ValueError) as excinfo:
      registry.parse_config({"name": "nmnist", "event_augment": bad})
    msg = str(excinfo.value)
    assert needle in msg and "allowed" in msg
    for name in ("spatial_jitter", "drop_event", "polarity_flip"):
      assert name in msg
  with pytest.raises(ValueError, match="must be a string"):
    ea.parse_event_augment(3)
  # Only event datasets read the field.
  assert registry.parse_config({"name": "cifar10dvs", "event_augment": "drop_event"}).event_augment == (
      ("drop_event", 0.1),)
  assert registry.parse_config({"name": "cifar10", "event_augment": "drop_event"}).event_augment == ()


# ---------------------------------------------------------------------- the transforms
def test_drop_event_identity_empty_and_count():
  ev = make_events(np.random.default_rng(0), 1000)
  same = ea.augment_events(ev, (("drop_event", 0.0),), SENSOR, np.random.default_rng(1))
  np.testing.assert_array_equal(same, ev)
  assert len(ea.augment_events(ev, (("drop_event", 1.0),), SENSOR, np.random.default_rng(1))) == 0
  out = ea.augment_events(ev, (("drop_event", 0.3),), SENSOR, np.random.default_rng(7))
  assert len(out) == 1000 - int(0.3 * 1000 + 0.5) == 700
  # Which ones: k indices drawn without replacement by NumPy's legacy RNG seeded with the words
  # drawn from the example's generator; the kept events keep their order.
  dropped = np.random.RandomState(seed_words(7)).choice(1000, 300, replace=False)
  keep = np.ones(1000, bool)
  keep[dropped] = False
  np.testing.assert_array_equal(out, ev[keep])
  assert len(ea.augment_events(ev[:7], (("drop_event", 0.3),), SENSOR, np.random.default_rng(7))) == 5


def test_polarity_flip_swaps_the_frame_channels():
  ev = make_events(np.random.default_rng(2), 2000)
  op = ea.AugmentEventsToFrames((("polarity_flip", 1.0),), sensor_size=SENSOR, timesteps=4,
                                image_size=32)
  out = op.random_map({"events": ev, "label": np.int32(3)}, np.random.default_rng(0))
  plain = events.events_to_frames(ev, SENSOR, 4, 32).astype(np.float32)
  assert out["label"] == 3 and out["image"].shape == (4, 32, 32, 2)
  assert plain[..., 0].sum() > 0 and plain[..., 1].sum() > 0
  np.testing.assert_array_equal(out["image"], plain[..., ::-1])
  never = ea.AugmentEventsToFrames((("polarity_flip", 0.0),), sensor_size=SENSOR, timesteps=4,
                                   image_size=32)
  np.testing.assert_array_equal(never.random_map({"events": ev, "label": 3}, np.random.default_rng(0))["image"],
                                plain)
  # p = 0.5: flipped exactly when the first legacy uniform u <= 0.5 (all events or none).
  for seed in range(6):
    out = ea.augment_events(ev, (("polarity_flip", 0.5),), SENSOR, np.random.default_rng(seed))
    flipped = np.random.RandomState(seed_words(seed)).rand() <= 0.5
    np.testing.assert_array_equal(out["p"], 1 - ev["p"] if flipped else ev["p"])


def test_spatial_jitter_moves_by_the_drawn_offsets_and_stays_on_the_sensor():
  ev = make_events(np.random.default_rng(3), 3000)
  out = ea.augment_events(ev, (("spatial_jitter", 4.0),), SENSOR, np.random.default_rng(11))
  shifts = np.random.RandomState(seed_words(11)).multivariate_normal([0, 0], [[4, 0], [0, 4]], 3000)
  x = np.trunc(ev["x"] + shifts[:, 0]).astype(np.int64)  # stored into ints: toward zero
  y = np.trunc(ev["y"] + shifts[:, 1]).astype(np.int64)
  inside = (x >= 0) & (x < 128) & (y >= 0) & (y < 128)  # tonic's clip_outliers drops the rest
  assert 0 < (~inside).sum() < 300
  np.testing.assert_array_equal(out["x"], x[inside])
  np.testing.assert_array_equal(out["y"], y[inside])
  np.testing.assert_array_equal(out["t"], ev["t"][inside])
  np.testing.assert_array_equal(out["p"], ev["p"][inside])
  assert out["x"].min() >= 0 and out["x"].max() < 128 and out["y"].min() >= 0 and out["y"].max() < 128
  assert (out["x"] != ev["x"][inside]).mean() > 0.5  # σ = 2 pixels: most events move
  assert ea.augment_events(ev, (("spatial_jitter", 0.0),), SENSOR, np.random.default_rng(0)).tolist() == ev.tolist()


def test_in_order_and_global_rng_left_alone():
  ev = make_events(np.random.default_rng(4), 500)
  spec = ea.parse_event_augment("drop_event=0.5,polarity_flip=1")
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  out = ea.augment_events(ev, spec, SENSOR, np.random.default_rng(5))
  np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's global RNG
  rs = np.random.RandomState(seed_words(5))
  keep = np.ones(500, bool)
  keep[rs.choice(500, 250, replace=False)] = False
  np.testing.assert_array_equal(out["p"], 1 - ev["p"][keep])
  np.testing.assert_array_equal(out["x"], ev["x"][keep])


# ---------------------------------------------------------------------- in the pipeline
def _batches(cfg, split="train", seed=0, shuffle=True):
  return list(make_loader(cfg, split, batch_size=4, seed=seed, shuffle=shuffle, num_epochs=1))


def test_loader_determinism_and_test_split_untouched(tmp_path):
  write_dvs_root(tmp_path, np.random.default_rng(6), counts=(("airplane", 10), ("cat", 10)))
  plain = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 3, "image_size": 16,
           "cifar10dvs_train_fraction": 0.6}  # 12 train / 8 test
  aug = {**plain, "event_augment": "spatial_jitter=2,drop_event=0.2,polarity_flip"}
  a, b = _batches(aug), _batches(aug)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  c = _batches(aug, seed=1)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  # Same order (no shuffle), different seeds: only the augmentation differs.
  a0, a1 = _batches(aug, seed=0, shuffle=False), _batches(aug, seed=1, shuffle=False)
  p0 = _batches(plain, seed=0, shuffle=False)
  for x, y, z in zip(a0, a1, p0):
    np.testing.assert_array_equal(x["label"], z["label"])
    assert not np.array_equal(x["image"], y["image"]) and not np.array_equal(x["image"], z["image"])
    assert x["image"].shape == z["image"].shape == (4, 3, 16, 16, 2)
  # Augmentation off: exactly the framed source's examples.
  src = load_split(plain, "train")
  np.testing.assert_array_equal(np.concatenate([z["image"] for z in p0]),
                                np.stack([src[k]["image"] for k in range(len(src))]))
  # The test split is never augmented.
  tests = list(zip(_batches(aug, "test", shuffle=False), _batches(plain, "test", shuffle=False)))
  assert len(tests) == 2
  for x, z in tests:
    np.testing.assert_array_equal(x["image"], z["image"])
  assert not any(isinstance(op, ea.AugmentEventsToFrames) for op in
                 pipeline.make_operations(aug, "test", load_split(aug, "test"), batch_size=2))
  assert pipeline.event_input(aug, "test", src) is src
  assert pipeline.event_input(plain, "train", src) is src
  with pytest.raises(ValueError, match="event_input"):
    pipeline.make_operations(aug, "train", src, batch_size=2)


def test_example_augmentation_depends_on_seed_and_position_only(tmp_path):
  write_dvs_root(tmp_path, np.random.default_rng(8), counts=(("dog", 5),), n=200)
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 2, "image_size": 8,
         "event_augment": "spatial_jitter,drop_event=0.3", "cifar10dvs_train_fraction": 0.8}
  # Training stream (make_train_stream): a pure function of (seed, step); its positions'
  # augmentation does not depend on where the stream starts or how batches are cut.
  s1 = make_train_stream(cfg, global_batch=2, seed=3)
  first = [next(s1) for _ in range(4)]
  s2 = make_train_stream(cfg, global_batch=2, seed=3, start_step=2)
  for k in (2, 3):
    np.testing.assert_array_equal(next(s2)["image"], first[k]["image"])
  halves = make_train_stream(cfg, global_batch=2, seed=3, process_index=1, process_count=2)
  np.testing.assert_array_equal(next(halves)["image"], first[0]["image"][1:])
  other = make_train_stream(cfg, global_batch=2, seed=4)
  assert not all(np.array_equal(next(other)["image"], f["image"]) for f in first)
  # And a subset (train_subset) still reads raw events through the chain of subsets.
  sub = _batches({**cfg, "train_subset": 4}, shuffle=False)
  assert len(sub) == 1 and sub[0]["image"].shape == (4, 2, 8, 8, 2)


def test_raw_event_view_resolves_subsets(tmp_path):
  write_dvs_root(tmp_path, np.random.default_rng(9), counts=(("frog", 6),), n=50)
  cfg = {"name": "cifar10dvs", "root": str(tmp_path), "timesteps": 2, "train_subset": 3}
  sub = load_split(cfg, "train")
  view = events.RawEventView(sub)
  assert len(view) == 3 and view.sensor_size == SENSOR and view.num_classes == 10
  for k in range(3):
    j = int(sub.indices[k])
    np.testing.assert_array_equal(view[k]["events"], events.read_aedat2(sub.parent.files[j]))
    assert view[k]["label"] == 6
  with pytest.raises(TypeError, match="EventFrameSource"):
    events.RawEventView(registry.load_split({"name": "digits"}, "train"))
  # Both halves pickle (grain worker processes receive them) and act the same there.
  import pickle
  op = ea.AugmentEventsToFrames(ea.parse_event_augment("spatial_jitter,drop_event"),
                                sensor_size=view.sensor_size, timesteps=2, image_size=16)
  view2, op2 = pickle.loads(pickle.dumps((view, op)))
  np.testing.assert_array_equal(op2.random_map(view2[1], np.random.default_rng(4))["image"],
                                op.random_map(view[1], np.random.default_rng(4))["image"])


def test_nmnist_with_augmentation(tmp_path):
  """The same path on an ATIS dataset (N-MNIST standard layout)."""
  rng = np.random.default_rng(10)
  for split in ("Train", "Test"):
    for digit in (1, 2):
      (tmp_path / split / str(digit)).mkdir(parents=True)
      for k in range(2):
        n = 300
        x, y = rng.integers(0, 34, n), rng.integers(0, 34, n)
        t, p = np.sort(rng.integers(0, 200_000, n)), rng.integers(0, 2, n)
        word = ((x.astype(np.uint64) << np.uint64(32)) | (y.astype(np.uint64) << np.uint64(24))
                | (p.astype(np.uint64) << np.uint64(23)) | t.astype(np.uint64))
        raw = np.stack([(word >> np.uint64(8 * b)) & np.uint64(0xFF) for b in range(4, -1, -1)], 1)
        (tmp_path / split / str(digit) / f"{k:05d}.bin").write_bytes(raw.astype(np.uint8).tobytes())
  cfg = {"name": "nmnist", "root": str(tmp_path), "timesteps": 3,
         "event_augment": "polarity_flip=1"}
  flipped = _batches(cfg, shuffle=False)
  plain = _batches({**cfg, "event_augment": "none"}, shuffle=False)
  np.testing.assert_array_equal(flipped[0]["image"], plain[0]["image"][..., ::-1])
  assert "tonic event transforms polarity_flip=1" in registry.describe(cfg)


def test_result_fields_count_the_new_fields_only_where_they_apply():
  from mdsnn_jax.train import stages
  from mdsnn_jax.train.config import base_config
  data = base_config().data
  data.name = "cifar10"
  out = stages.data_result(data)
  assert "event_augment" not in out and "cifar10dvs_train_fraction" not in out
  data.name = "cifar10dvs"
  data.event_augment = "drop_event"
  out = stages.data_result(data)
  assert out["event_augment"] == "drop_event" and out["cifar10dvs_train_fraction"] == 0.9
