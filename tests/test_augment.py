"""Cutout and AutoAugment (mdsnn_jax.data.augment) and their place in the grain pipeline."""
from __future__ import annotations

import hashlib
import pathlib
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from mdsnn_jax.data import augment, load_split, make_loader, pipeline, registry, standardize
from mdsnn_jax.train import stages
from mdsnn_jax.train.config import base_config
from helpers import parse_config_flags

MEAN, STD = registry.MEAN_STD["cifar10"]
REPO = pathlib.Path(__file__).resolve().parents[1]


def all_values_image():
  """uint8 [16, 16, 3] holding every value 0..255 in each channel (shuffled per channel)."""
  rng = np.random.default_rng(1)
  return np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)], -1).astype(np.uint8)


# ------------------------------------------------------------------------------------ Cutout
def test_cutout_box_fixed_seed_is_hand_computed_corner_box():
  # Seed 79: rng.integers(0, (8, 8)) draws the centre (cy, cx) = (0, 7), the top-right corner.
  # Side 4: rows [0 − 2, 0 + 2) → [0, 2), columns [7 − 2, 7 + 2) = [5, 9) → [5, 8) after clipping.
  assert np.random.default_rng(79).integers(0, (8, 8)).tolist() == [0, 7]
  box = augment.cutout_box(8, 8, np.random.default_rng(79), 4)
  assert box.tolist() == [0, 2, 5, 8] and box.dtype == np.int32
  image = np.ones((8, 8, 3), np.float32)
  out = augment.cutout(image, np.random.default_rng(79), 4)
  want = np.ones((8, 8), bool)
  want[0, 5] = want[0, 6] = want[0, 7] = want[1, 5] = want[1, 6] = want[1, 7] = False
  np.testing.assert_array_equal(out != 0, np.repeat(want[..., None], 3, -1))
  np.testing.assert_array_equal(image, 1.0)  # the input is not modified


def test_cutout_interior_box_has_side_size():
  # Odd and even sides away from the border: exactly L × L pixels.
  for size in (3, 4):
    rng = np.random.default_rng(0)
    cy, cx = np.random.default_rng(0).integers(0, (64, 64))
    assert 8 <= cy < 56 and 8 <= cx < 56  # interior for this seed
    out = augment.cutout(np.ones((64, 64, 1), np.float32), rng, size)
    rows, cols = np.nonzero(out[..., 0] == 0)
    assert rows.min() == cy - size // 2 and rows.max() == cy - size // 2 + size - 1
    assert cols.min() == cx - size // 2 and cols.max() == cx - size // 2 + size - 1
    assert len(rows) == size * size


def test_cutout_patch_is_the_mean_colour_after_normalisation():
  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  normalised = standardize(pixels / np.float32(255), MEAN, STD)
  out = augment.cutout(normalised, np.random.default_rng(5), 16)
  box = augment.cutout_box(32, 32, np.random.default_rng(5), 16)
  top, bottom, left, right = box
  patch = np.zeros((32, 32), bool)
  patch[top:bottom, left:right] = True
  assert patch.sum() > 0
  np.testing.assert_array_equal(out[patch], 0.0)
  np.testing.assert_array_equal(out[~patch], normalised[~patch])
  # Undone, the patch is the per-channel mean colour.
  np.testing.assert_allclose((out * np.asarray(STD) + np.asarray(MEAN))[patch],
                             np.broadcast_to(MEAN, (patch.sum(), 3)), atol=1e-6)


def test_cutout_size_zero_is_identity_and_draws_nothing():
  image = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
  rng = np.random.default_rng(11)
  np.testing.assert_array_equal(augment.cutout(image, rng, 0), image)
  assert rng.random() == np.random.default_rng(11).random()  # no draw taken
  assert augment.cutout_box(8, 8, rng, 0).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("bad", [-1, 2.5, True, "16", None])
def test_cutout_bad_size_refused(bad):
  with pytest.raises(ValueError, match=r"cutout size must be an int >= 0.*got " + repr(bad).replace(".", r"\.")):
    augment.cutout(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0), bad)


# ----------------------------------------------------------------------- the CIFAR-10 policy
def test_policy_table_matches_the_paper():
  policy = augment.CIFAR10_POLICY
  assert len(policy) == 25 and all(len(sub) == 2 for sub in policy)
  # Spot checks against the paper's CIFAR-10 table (Cubuk et al. 2019, appendix).
  assert policy[0] == (("Invert", 0.1, None), ("Contrast", 0.2, 6))
  assert policy[1] == (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9))
  assert policy[3] == (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9))
  assert policy[5] == (("ShearY", 0.2, 7), ("Posterize", 0.3, 7))
  assert policy[14] == (("Solarize", 0.5, 2), ("Invert", 0.0, None))
  assert policy[17] == (("Color", 0.9, 9), ("Equalize", 0.6, None))
  assert policy[21] == (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9))
  assert policy[24] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None))
  for sub in policy:
    for op, p, level in sub:
      assert op in augment.OPS and 0.0 <= p <= 1.0
      assert (level is None) == (op in augment.NO_MAGNITUDE)
      assert level is None or 0 <= level <= 9
  used = {op for sub in policy for op, _, _ in sub}
  # The CIFAR-10 policy uses every operation but ShearX.
  assert used == set(augment.OPS) - {"ShearX"}
  assert augment.POLICIES["cifar10"] is policy


def test_magnitude_mapping_torchvision_bins():
  # linspace(0, max, 10)[m] and the Posterize / Solarize columns of torchvision's 10 bins.
  assert augment.magnitude("ShearX", 9) == pytest.approx(0.3)
  assert augment.magnitude("ShearY", 3) == pytest.approx(0.1)
  assert augment.magnitude("Rotate", 2) == pytest.approx(30 * 2 / 9)
  assert augment.magnitude("TranslateX", 9, (32, 32, 3)) == pytest.approx(150 / 331 * 32)
  assert augment.magnitude("TranslateY", 9, (64, 32, 3)) == pytest.approx(150 / 331 * 64)
  assert augment.magnitude("Color", 9) == pytest.approx(0.9)
  assert [augment.magnitude("Posterize", m) for m in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  assert augment.magnitude("Solarize", 0) == 255 and augment.magnitude("Solarize", 9) == 0
  assert augment.magnitude("Equalize", None) == 0
  with pytest.raises(ValueError, match="Rotate needs a magnitude level in 0..9, got 10"):
    augment.magnitude("Rotate", 10)


def test_solarize_posterize_invert_match_numpy():
  x = all_values_image()
  thr = augment.magnitude("Solarize", 2)  # 255·7/9 = 198.3: values ≥ 199 inverted
  np.testing.assert_array_equal(augment.apply_op(x, "Solarize", thr),
                                np.where(x.astype(int) >= thr, 255 - x.astype(int), x).astype(np.uint8))
  bits = int(augment.magnitude("Posterize", 7))  # 5 bits kept
  assert bits == 5
  np.testing.assert_array_equal(augment.apply_op(x, "Posterize", bits), x & np.uint8(0b11111000))
  np.testing.assert_array_equal(augment.apply_op(x, "Invert", 0.0), 255 - x)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_shear_x_is_the_affine_map_of_pixel_centres(sign):
  # Output pixel (x, y) reads the input pixel whose cell holds the point x + ½ + s·(y + ½) on
  # the same row; points outside the image give 0. With s = ±0.3 (level 9) the point's
  # fractional part is 0.05, 0.15, ..., 0.95: never near a cell border, so the floor is exact.
  x = np.random.default_rng(2).integers(1, 256, (12, 20, 3), dtype=np.uint8)
  s = sign * augment.magnitude("ShearX", 9)
  got = augment.apply_op(x, "ShearX", s)
  want = np.zeros_like(x)
  for row in range(12):
    for col in range(20):
      src = int(np.floor(col + 0.5 + s * (row + 0.5)))
      if 0 <= src < 20:
        want[row, col] = x[row, src]
  np.testing.assert_array_equal(got, want)
  assert (got == 0).all(-1).any()  # some pixels did come from outside


def test_translate_is_a_shift_with_black_fill():
  x = np.random.default_rng(4).integers(1, 256, (32, 32, 3), dtype=np.uint8)
  t = augment.magnitude("TranslateX", 9, x.shape)  # 14.5 -> 14 pixels
  right = augment.apply_op(x, "TranslateX", t)
  np.testing.assert_array_equal(right[:, 14:], x[:, :18])
  np.testing.assert_array_equal(right[:, :14], 0)
  up = augment.apply_op(x, "TranslateY", -t)
  np.testing.assert_array_equal(up[:18], x[14:])
  np.testing.assert_array_equal(up[18:], 0)


def test_enhance_and_rotate_match_pil_called_directly():
  x = np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  img = Image.fromarray(x)
  for op, enhancer in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast)):
    for sign in (1, -1):
      factor = 1 + sign * 0.9 * 7 / 9  # level 7
      np.testing.assert_array_equal(augment.apply_op(x, op, sign * augment.magnitude(op, 7)),
                                    np.asarray(enhancer(img).enhance(factor)))
  np.testing.assert_array_equal(
      augment.apply_op(x, "Rotate", -augment.magnitude("Rotate", 2)),
      np.asarray(img.rotate(-30 * 2 / 9, resample=Image.Resampling.NEAREST, fillcolor=(0, 0, 0))))


def test_sub_policy_probabilities_gate_the_operations():
  x = all_values_image()
  both = ((("Invert", 1.0, None), ("Solarize", 1.0, 3)),)
  thr = 170  # Solarize level 3: 255·6/9, torchvision's linspace(255, 0, 10)[3]
  inverted = 255 - x.astype(int)
  want = np.where(inverted >= thr, 255 - inverted, inverted).astype(np.uint8)
  np.testing.assert_array_equal(augment.autoaugment(x, np.random.default_rng(0), both), want)
  never = ((("Invert", 0.0, None), ("Solarize", 0.0, 3)),)
  np.testing.assert_array_equal(augment.autoaugment(x, np.random.default_rng(0), never), x)


def test_autoaugment_follows_its_documented_draws():
  x = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  for seed in range(6):
    draws = np.random.default_rng(seed)
    k, u, s = int(draws.integers(25)), draws.random(2), draws.integers(0, 2, size=2)
    want = x
    for i, (op, p, level) in enumerate(augment.CIFAR10_POLICY[k]):
      if u[i] < p:
        v = augment.magnitude(op, level, x.shape)
        want = augment.apply_op(want, op, -v if op in augment.SIGNED and s[i] == 0 else v)
    np.testing.assert_array_equal(augment.autoaugment_cifar10(x, np.random.default_rng(seed)), want)


def test_autoaugment_deterministic_and_keeps_format():
  images = np.random.default_rng(8).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  run = lambda seed: np.stack([augment.autoaugment_cifar10(im, np.random.default_rng([seed, j]))
                               for j, im in enumerate(images)])
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.dtype == np.uint8 and a.shape == images.shape
  gray = augment.autoaugment_cifar10(images[0, ..., :1], np.random.default_rng(0))
  assert gray.dtype == np.uint8 and gray.shape == (32, 32, 1)
  with pytest.raises(ValueError, match="uint8"):
    augment.apply_op(images[0].astype(np.float32), "Invert", 0.0)
  with pytest.raises(ValueError, match="uint8"):
    augment.autoaugment_cifar10(images[0].astype(np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------------------------- pipeline
def op_names(cfg, split, src=None):
  src = load_split(cfg, split) if src is None else src
  return [type(op).__name__ for op in pipeline.make_operations(cfg, split, src, batch_size=8)]


def test_make_operations_order(fake_cifar):
  on = {**fake_cifar, "augment": True, "autoaugment": "cifar10", "cutout": 16}
  assert op_names(on, "train") == ["RandomCropFlip", "AutoAugment", "CutoutBox", "Batch",
                                   "Normalize", "ApplyCutout"]
  assert op_names({**on, "augment": False}, "train") == ["AutoAugment", "CutoutBox", "Batch",
                                                         "Normalize", "ApplyCutout"]
  assert op_names(on, "test") == ["Batch", "Normalize"]  # the test split never augments
  digits = {"name": "digits", "autoaugment": "cifar10", "cutout": 4}
  # CIFAR-like data only (a stand-in source: make_operations reads only its shape and scale).
  digits_src = types.SimpleNamespace(image_shape=(8, 8, 1), max_value=16)
  assert op_names(digits, "train", digits_src) == ["Batch", "Normalize"]
  off = {**fake_cifar, "augment": True, "autoaugment": "none", "cutout": 0}
  assert op_names(off, "train") == ["RandomCropFlip", "Batch", "Normalize"]


def test_autoaugment_op_on_resized_float_images():
  # After Resize the pixels are float32 in [0, 1]: quantised to uint8 for PIL and scaled back.
  x = np.random.default_rng(9).random((16, 16, 3)).astype(np.float32)
  out = pipeline.AutoAugment("cifar10").random_map({"image": x, "label": 1}, np.random.default_rng(4))
  q = np.round(x * 255).astype(np.uint8)
  want = augment.autoaugment_cifar10(q, np.random.default_rng(4)).astype(np.float32) / 255
  assert out["image"].dtype == np.float32 and out["label"] == 1
  np.testing.assert_array_equal(out["image"], want)
  with pytest.raises(ValueError, match=r"unknown AutoAugment policy 'svhn'; allowed: \['cifar10'\]"):
    pipeline.AutoAugment("svhn")


def test_both_off_batches_are_unchanged(fake_cifar):
  old = {**fake_cifar, "augment": True}  # a config from before the fields existed
  new = {**old, "autoaugment": "none", "cutout": 0}
  a = next(iter(make_loader(old, "train", batch_size=8, seed=3, shuffle=True)))
  b = next(iter(make_loader(new, "train", batch_size=8, seed=3, shuffle=True)))
  assert list(b) == ["image", "label"]
  np.testing.assert_array_equal(a["image"], b["image"])
  # The digest of this batch as the pipeline made it before Cutout / AutoAugment existed
  # (grain 0.2.18, NumPy's PCG64); a change here changes every existing augmented run. Another
  # grain may derive the per-example generators differently, so the digest holds for 0.2.18.
  import importlib.metadata
  if importlib.metadata.version("grain") == "0.2.18":
    digest = hashlib.sha256(b["image"].tobytes() + b["label"].tobytes()).hexdigest()
    assert digest == "2beed4c47165ba560ab16ad28505d495f342f2335e765bc75e93f73be960dc2b"


def test_loader_cutout_zeroes_one_box_per_example(fake_cifar):
  cfg = {**fake_cifar, "cutout": 16}
  src = load_split(cfg, "train")
  b = next(iter(make_loader(cfg, "train", batch_size=8, seed=0, shuffle=False)))
  assert list(b) == ["image", "label"] and b["image"].dtype == np.float32
  plain = standardize(src.images[:8] / np.float32(255), MEAN, STD)
  for row in range(8):
    zero = (b["image"][row] == 0).all(-1)
    rows, cols = np.nonzero(zero)
    # One axis-aligned box, side ≤ 16 (clipped at the border), the rest untouched.
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert 0 < zero.sum() == height * width and height <= 16 and width <= 16
    np.testing.assert_array_equal(b["image"][row][~zero], plain[row][~zero])
  again = next(iter(make_loader(cfg, "train", batch_size=8, seed=0, shuffle=False)))
  np.testing.assert_array_equal(again["image"], b["image"])


def test_stream_processes_concatenate_with_autoaugment_and_cutout(fake_cifar):
  cfg = {**fake_cifar, "augment": True, "autoaugment": "cifar10", "cutout": 8}
  one = next(pipeline.make_train_stream(cfg, global_batch=8, seed=2))
  parts = [next(pipeline.make_train_stream(cfg, global_batch=8, seed=2, process_index=k,
                                           process_count=2)) for k in range(2)]
  np.testing.assert_array_equal(one["image"], np.concatenate([p["image"] for p in parts]))
  assert list(one) == ["image", "label"]
  off = next(pipeline.make_train_stream({**fake_cifar, "augment": True}, global_batch=8, seed=2))
  assert not np.array_equal(one["image"], off["image"])


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("bad", ["imagenet", "CIFAR10", None])
def test_parse_config_refuses_bad_autoaugment(bad):
  with pytest.raises(ValueError, match=rf"data.autoaugment {bad!r}; allowed: \['none', 'cifar10'\]"):
    registry.parse_config({"name": "cifar10", "autoaugment": bad})


@pytest.mark.parametrize("bad", [-4, 1.5, True])
def test_parse_config_refuses_bad_cutout(bad):
  with pytest.raises(ValueError, match=rf"data.cutout must be an int >= 0.*got {bad!r}"):
    registry.parse_config({"name": "cifar10", "cutout": bad})


def test_base_config_fields_typed_and_overridable():
  c = base_config()
  assert c.data.cutout == 0 and c.data.autoaugment == "none"
  assert registry.parse_config(c.data).cutout == 0
  parsed = parse_config_flags(REPO / "launch" / "configs" / "default.py",
                              ["--config.data.cutout=16", "--config.data.autoaugment=cifar10"])
  assert parsed.data.cutout == 16 and parsed.data.autoaugment == "cifar10"
  with pytest.raises(TypeError):
    c.data.cutout = "16"


def test_describe_names_the_augmentation(fake_cifar):
  cfg = {**fake_cifar, "augment": True, "autoaugment": "cifar10", "cutout": 16}
  assert ("train augmentation: random crop (zero pad 4) + horizontal flip, AutoAugment cifar10 "
          "policy, Cutout 16×16 (after normalisation)") in registry.describe(cfg)
  assert "augmentation" not in registry.describe(fake_cifar)
  assert registry.augmentation_rule({"name": "digits", "cutout": 4}) is None


def test_result_fields_count_augmentation_only_when_on():
  data = base_config().data
  assert "cutout" not in stages.data_result(data) and "autoaugment" not in stages.data_result(data)
  data = ml_collections.ConfigDict(data.to_dict())
  data.cutout, data.autoaugment = 16, "cifar10"
  assert stages.data_result(data)["cutout"] == 16
  assert stages.data_result(data)["autoaugment"] == "cifar10"
