"""Host-side per-example image augmentation: Cutout and the AutoAugment CIFAR-10 policy.

Cutout (DeVries & Taylor 2017, arXiv:1708.04552): one square patch of side L, its centre
uniform over the image and the box clipped at the border, is set to 0 on the *normalised*
image, i.e. to the per-channel mean colour:

    (cy, cx) ~ U{0..H−1} × U{0..W−1}
    rows    [max(cy − ⌊L/2⌋, 0), min(cy − ⌊L/2⌋ + L, H))      columns alike with cx, W
    x[rows, columns, :] ← 0

For even L (the papers use 16 on CIFAR-10, 8 on CIFAR-100) this is the reference code's box
[cy − L/2, cy + L/2); for odd L the side is L, where the reference code's is L − 1.

AutoAugment (Cubuk et al. 2019, arXiv:1805.09501), CIFAR-10 policy: one of 25 sub-policies,
chosen uniformly, applies its two operations in order, each with its own probability, on the
uint8 image. Magnitude levels m ∈ {0..9} map to an operation's strength as in torchvision's
`AutoAugment(AutoAugmentPolicy.CIFAR10)` (10 bins), which is what the papers' code runs:

    ShearX / ShearY        s = 0.3·m/9 (shear factor), signed; PIL affine about the top-left
                           corner: input x = x' + s·y' (ShearX) or y = y' + s·x' (ShearY)
    TranslateX / Y         t = trunc((150/331)·W·m/9) pixels (H for Y), signed; shifts the
                           content by +t (right / down) when positive
    Rotate                 θ = 30·m/9 degrees, signed, counter-clockwise about the centre
    Color / Brightness /   ImageEnhance factor 1 + 0.9·m/9·(±1)
    Contrast / Sharpness
    Posterize              keep 8 − round(4·m/9) high bits of each channel
    Solarize               invert pixels v ≥ 255·(1 − m/9)
    AutoContrast, Equalize, Invert: no magnitude (ImageOps with defaults)

Geometric operations sample nearest-neighbour and fill uncovered pixels with 0 (black), as
torchvision does by default (the paper's TensorFlow code filled with grey 128).

Randomness: every draw comes from the np.random.Generator passed in (grain's per-example
generator in the pipeline), in the order documented on each function, so an output is fixed
by (seed, example position).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# (operation, probability, magnitude level 0..9 or None) × 2 per sub-policy: the CIFAR-10
# policy of the AutoAugment paper (its appendix table), as torchvision lists it. The paper also
# prints a level for AutoContrast / Equalize / Invert; those operations take none (None here).
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

# The AutoAugment policies by config name (data.autoaugment; 'none' switches it off).
POLICIES = {"cifar10": CIFAR10_POLICY}

MAX_LEVEL = 9  # levels 0..9: 10 bins, linspace(0, max, 10)[m] = max·m/9
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness")
NO_MAGNITUDE = ("AutoContrast", "Equalize", "Invert")
FILL = 0  # geometric ops: value of pixels mapped from outside the image (torchvision's default)


def check_cutout_size(size: Any) -> int:
  """size as an int >= 0 (the patch side in pixels, 0 = off), else a ValueError naming it."""
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
    raise ValueError(f"cutout size must be an int >= 0 (patch side in pixels, 0 = off), "
                     f"got {size!r}")
  return int(size)


def cutout_box(height: int, width: int, rng: np.random.Generator, size: int) -> np.ndarray:
  """int32 [top, bottom, left, right) of the Cutout patch; [0, 0, 0, 0] when size = 0.

  Draws, in order (none when size = 0): one call rng.integers(0, (H, W)) -> (cy, cx), the
  patch centre; the box is [cy − ⌊L/2⌋, cy − ⌊L/2⌋ + L) × [cx − ⌊L/2⌋, cx − ⌊L/2⌋ + L) clipped
  to the image.
  """
  size = check_cutout_size(size)
  if size == 0:
    return np.zeros(4, np.int32)
  cy, cx = (int(v) for v in rng.integers(0, (height, width)))
  top, left = cy - size // 2, cx - size // 2
  return np.array([max(top, 0), min(top + size, height), max(left, 0), min(left + size, width)],
                  np.int32)


def apply_cutout(image: np.ndarray, box: np.ndarray) -> np.ndarray:
  """A copy of [H, W, C] `image` with box = [top, bottom, left, right) set to 0."""
  out = np.array(image, copy=True)
  top, bottom, left, right = (int(v) for v in box)
  out[top:bottom, left:right] = 0
  return out


def cutout(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """Cutout of a normalised [H, W, C] image: one size×size patch (centre uniform, clipped at
  the border) set to 0, the per-channel mean after standardisation. size = 0 is the identity.

  Draws as `cutout_box`.
  """
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
  size = check_cutout_size(size)
  if size == 0:
    return image
  return apply_cutout(image, cutout_box(image.shape[0], image.shape[1], rng, size))


# ------------------------------------------------------------------------------ AutoAugment
def magnitude(op: str, level: int | None, image_shape: tuple[int, ...] = (32, 32)) -> float:
  """The unsigned strength of `op` at level m ∈ {0..9} (see the module docstring; units: shear
  factor, pixels, degrees, enhancement offset, bits kept, solarize threshold); 0 for the
  operations without one. image_shape (H, W, ...) sets the translation range."""
  if op in NO_MAGNITUDE:
    return 0.0
  if level is None or isinstance(level, bool) or not 0 <= int(level) <= MAX_LEVEL:
    raise ValueError(f"{op} needs a magnitude level in 0..{MAX_LEVEL}, got {level!r}")
  m = int(level)
  # span·m/9 (not span·(m/9)): whole-number thresholds such as Solarize's 170 at m = 3 stay exact.
  if op in ("ShearX", "ShearY"):
    return 0.3 * m / MAX_LEVEL
  if op == "TranslateX":
    return 150.0 / 331.0 * image_shape[1] * m / MAX_LEVEL
  if op == "TranslateY":
    return 150.0 / 331.0 * image_shape[0] * m / MAX_LEVEL
  if op == "Rotate":
    return 30.0 * m / MAX_LEVEL
  if op in ("Brightness", "Color", "Contrast", "Sharpness"):
    return 0.9 * m / MAX_LEVEL
  if op == "Posterize":
    return float(8 - int(np.round(4 * m / MAX_LEVEL)))
  if op == "Solarize":
    return 255.0 * (MAX_LEVEL - m) / MAX_LEVEL
  raise ValueError(f"unknown AutoAugment operation {op!r}; allowed: {list(_OPS)}")


def _affine(img: Image.Image, data: tuple[float, ...]) -> Image.Image:
  # PIL's AFFINE data (a, b, c, d, e, f) maps each output pixel centre (x, y) to the input
  # point (a·x + b·y + c, d·x + e·y + f), sampled nearest.
  return img.transform(img.size, Image.Transform.AFFINE, data, Image.Resampling.NEAREST,
                       fillcolor=_fill(img))


def _fill(img: Image.Image) -> Any:
  return (FILL,) * len(img.getbands()) if len(img.getbands()) > 1 else FILL


_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "ShearX": lambda img, v: _affine(img, (1.0, v, 0.0, 0.0, 1.0, 0.0)),
    "ShearY": lambda img, v: _affine(img, (1.0, 0.0, 0.0, v, 1.0, 0.0)),
    # int() truncates toward 0, as torchvision passes the pixel shift.
    "TranslateX": lambda img, v: _affine(img, (1.0, 0.0, -float(int(v)), 0.0, 1.0, 0.0)),
    "TranslateY": lambda img, v: _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, -float(int(v)))),
    "Rotate": lambda img, v: img.rotate(v, resample=Image.Resampling.NEAREST, fillcolor=_fill(img)),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(1.0 + v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(1.0 + v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(1.0 + v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(1.0 + v),
    "Posterize": lambda img, v: ImageOps.posterize(img, int(v)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Invert": lambda img, v: ImageOps.invert(img),
}
OPS = tuple(_OPS)


def apply_op(image: np.ndarray, op: str, value: float) -> np.ndarray:
  """uint8 [H, W, C] (C = 1 or 3) -> uint8 [H, W, C]: `op` at signed strength `value` (as
  `magnitude` gives it, negated for the signed operations' other direction), through PIL."""
  if op not in _OPS:
    raise ValueError(f"unknown AutoAugment operation {op!r}; allowed: {list(_OPS)}")
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"image must be uint8 [H, W, 1 or 3], got {image.dtype} {image.shape}")
  gray = image.shape[-1] == 1
  img = Image.fromarray(np.ascontiguousarray(image[..., 0] if gray else image))
  out = np.asarray(_OPS[op](img, float(value)), np.uint8)
  return out[..., None] if gray else out


def autoaugment(image: np.ndarray, rng: np.random.Generator,
                policy: tuple = CIFAR10_POLICY) -> np.ndarray:
  """One sub-policy of `policy`, drawn uniformly, on a uint8 [H, W, C] image.

  Draws, in order, always all of them: k = rng.integers(len(policy)) (the sub-policy);
  u = rng.random(2) (operation i runs when u[i] < p_i); s = rng.integers(0, 2, size=2) (a
  signed operation i runs at −magnitude when s[i] = 0, as torchvision's sign draw).
  """
  out = np.asarray(image)
  if out.dtype != np.uint8 or out.ndim != 3 or out.shape[-1] not in (1, 3):
    # Checked before any draw, and whether or not an operation fires.
    raise ValueError(f"image must be uint8 [H, W, 1 or 3], got {out.dtype} {out.shape}")
  k = int(rng.integers(len(policy)))
  u = rng.random(2)
  s = rng.integers(0, 2, size=2)
  for i, (op, p, level) in enumerate(policy[k]):
    if u[i] < p:
      value = magnitude(op, level, out.shape)
      if op in SIGNED and s[i] == 0:
        value = -value
      out = apply_op(out, op, value)
  return out


def autoaugment_cifar10(image_uint8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The AutoAugment CIFAR-10 policy on a uint8 [H, W, C] image (draws as `autoaugment`)."""
  return autoaugment(image_uint8, rng, CIFAR10_POLICY)
