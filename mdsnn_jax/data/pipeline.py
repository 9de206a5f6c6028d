"""The grain input pipeline: per-example preprocessing, augmentation and batching.

For static images, in order:

    x ← bilinear_resize(x / max_value, S)     per example, only when cfg.image_size = S differs
    x ← random_crop_flip(x, rng, padding=4)   per example: CIFAR-like train split with cfg.augment
    x ← autoaugment(x, rng, policy)           per example: CIFAR-like train split with
                                              cfg.autoaugment = 'cifar10' (uint8, through PIL)
    box ← cutout_box(H, W, rng, L)            per example: CIFAR-like train split with cfg.cutout = L
    batch of B examples
    x ← x / max_value                         per batch, if still integer (max_value 255, or 16
                                              for the bundled digits): pixels in [0, 1]
    x ← (x − mean_c) / std_c                  per batch, CIFAR-like data (per-channel constants)
    x[box] ← 0                                per batch, each example its own box (Cutout)

The order is the papers' (torchvision) recipe: crop + flip, AutoAugment, to tensor and
normalise, Cutout last, so the patch holds the per-channel mean (0 after standardisation).
Normalisation runs per batch, so Cutout is split in two: each example draws its box before
batching (from its own generator, like the crop), carried as an int32 [4] field 'cutout_box'
through Batch and Normalize, and `ApplyCutout` zeroes the boxes and drops the field after
Normalize. A box thus depends on (seed, example position) alone, never on where a batch is cut.

Cropping with zero padding and flipping commute with the scaling, so the per-example work runs
on the stored uint8 pixels and the arithmetic on whole batches. Event frames (float32 counts
[T, H, W, 2]) pass through unchanged, except an event train split with cfg.event_augment: its
raw events are augmented with tonic's transforms and then framed, per example
(`event_input`, `event_augment.AugmentEventsToFrames`). Batches are dicts of NumPy arrays, batch-major:
{'image': float32 [B, H, W, C] or [B, T, H, W, 2], 'label': int32 [B]}.

Randomness comes only from grain: the sampler's seed fixes the order, and each example's
augmentation draws from the np.random.Generator grain derives from (seed, example position),
so a pipeline is reproducible and its iterator state (get_state / set_state) is enough to
resume it exactly. Checkpoint that state with orbax through grain's handler:
`ocp.args.Composite(..., data_iter=grain.checkpoint.CheckpointSave(iterator))` to save and
`grain.checkpoint.CheckpointRestore(fresh_iterator)` to restore.

Training streams (`make_train_stream`) need no iterator state: they are pure functions of the
step number, so a run resumes from its step alone, on any number of processes (see there).
"""
from __future__ import annotations

from typing import Any

from absl import flags
import grain
import numpy as np

from mdsnn_jax.data import augment, registry, sources

AUGMENT_PADDING = 4
CUTOUT_KEY = "cutout_box"  # per-example Cutout box, carried from before batching to after Normalize


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """float32 [H, W, C] -> [size, size, C], bilinear per channel (PIL, half-pixel centres).

  PIL's bilinear filter widens its support when shrinking (antialiasing).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top  # ships with matplotlib

  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3:
    raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
  if image.shape[:2] == (size, size):
    return image
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))  # float32 -> mode F
                         .resize((size, size), Image.Resampling.BILINEAR))
              for c in range(image.shape[-1])]
  return np.stack(channels, axis=-1).astype(np.float32)


def random_crop_flip(image: np.ndarray, rng: np.random.Generator,
                     padding: int = AUGMENT_PADDING) -> np.ndarray:
  """Zero-pad H and W by `padding`, crop a random H×W window, then flip left-right with p = 1/2.

  Draws, in order: the row offset and column offset (uniform in 0..2·padding), then u ~ U[0, 1)
  (flip when u < 0.5).
  """
  if image.ndim != 3:
    raise ValueError(f"image must be [H, W, C], got shape {image.shape}")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  h, w, _ = image.shape
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  # The window of the padded image at (top, left) is the image shifted by (dy, dx) with zeros
  # shifted in; copying the overlap directly is ~4x faster than np.pad on 32×32 images.
  dy, dx = int(top) - padding, int(left) - padding
  out = np.zeros_like(image)
  if abs(dy) < h and abs(dx) < w:  # otherwise the window holds padding only
    out[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = (
        image[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)])
  if rng.random() < 0.5:
    out = np.ascontiguousarray(out[:, ::-1])
  return out


def standardize(image: np.ndarray, mean: Any, std: Any) -> np.ndarray:
  """(x − mean_c) / std_c over the last (channel) axis, float32."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  return ((np.asarray(image, np.float32) - mean) / std).astype(np.float32)


class Resize(grain.transforms.Map):
  """Static image -> float32 in [0, 1] resized to size×size (used only when sizes differ)."""

  def __init__(self, *, max_value: float, size: int):
    self.max_value = float(max_value)
    self.size = size

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    image = np.asarray(element["image"], np.float32) / np.float32(self.max_value)
    return {"image": resize_image(image, self.size), "label": element["label"]}


class RandomCropFlip(grain.transforms.RandomMap):
  """`random_crop_flip` with grain's per-example generator."""

  def __init__(self, padding: int = AUGMENT_PADDING):
    self.padding = padding

  def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"image": random_crop_flip(element["image"], rng, self.padding), "label": element["label"]}


class AutoAugment(grain.transforms.RandomMap):
  """`augment.autoaugment` of a named policy with grain's per-example generator.

  Stored uint8 pixels go to PIL as they are; float images in [0, 1] (after `Resize`) are
  quantised to uint8 (round(255·x)) for PIL and come back as float32 in [0, 1].
  """

  def __init__(self, policy: str = "cifar10"):
    if policy not in augment.POLICIES:
      raise ValueError(f"unknown AutoAugment policy {policy!r}; allowed: {list(augment.POLICIES)}")
    self.policy = policy

  def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = np.asarray(element["image"])
    table = augment.POLICIES[self.policy]
    if image.dtype == np.uint8:
      out = augment.autoaugment(image, rng, table)
    else:
      pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
      out = augment.autoaugment(pixels, rng, table).astype(np.float32) / np.float32(255.0)
    return {"image": out, "label": element["label"]}


class CutoutBox(grain.transforms.RandomMap):
  """Per example: draws the Cutout box (`augment.cutout_box`) into the field 'cutout_box'."""

  def __init__(self, size: int):
    self.size = augment.check_cutout_size(size)

  def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, w = np.shape(element["image"])[:2]
    return {**element, CUTOUT_KEY: augment.cutout_box(h, w, rng, self.size)}


class ApplyCutout(grain.transforms.Map):
  """Per batch, after `Normalize`: each example's 'cutout_box' [top, bottom, left, right) set
  to 0 (the per-channel mean), and the field dropped."""

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    image = np.array(batch["image"], copy=True)
    for row, (top, bottom, left, right) in enumerate(np.asarray(batch[CUTOUT_KEY])):
      image[row, top:bottom, left:right] = 0
    return {k: (image if k == "image" else v) for k, v in batch.items() if k != CUTOUT_KEY}


class Normalize(grain.transforms.Map):
  """Per batch: integer pixels / max_value, then `standardize` when mean/std are given; int32
  labels. Other fields (the Cutout boxes) pass through."""

  def __init__(self, *, max_value: float, mean: Any = None, std: Any = None):
    self.max_value = float(max_value)
    self.mean = None if mean is None else np.asarray(mean, np.float32)
    self.std = None if std is None else np.asarray(std, np.float32)

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    image = np.asarray(batch["image"])
    scaled = np.issubdtype(image.dtype, np.integer)
    image = image.astype(np.float32)
    if scaled:
      image /= np.float32(self.max_value)
    if self.mean is not None:
      image = standardize(image, self.mean, self.std)
    return {**batch, "image": image, "label": np.asarray(batch["label"], np.int32)}


def make_operations(cfg: Any, split: str, source: Any, *, batch_size: int,
                    drop_remainder: bool = True) -> list[Any]:
  """The grain operations of `make_loader` for `source` (exposed for custom samplers)."""
  c = registry.parse_config(cfg)
  max_value = getattr(source, "max_value", 255)
  ops: list[Any] = []
  is_event = c.name in registry.EVENT_NAMES
  if not is_event and c.image_size is not None and tuple(source.image_shape[:2]) != (c.image_size,) * 2:
    ops.append(Resize(max_value=max_value, size=c.image_size))
  train_cifar = split == "train" and c.name in registry.CIFAR_LIKE
  if train_cifar and c.augment:
    ops.append(RandomCropFlip(AUGMENT_PADDING))
  if train_cifar and c.autoaugment != "none":
    ops.append(AutoAugment(c.autoaugment))
  cutout = train_cifar and c.cutout > 0
  if cutout:
    ops.append(CutoutBox(c.cutout))
  if split == "train" and is_event and c.event_augment:
    ops.append(_event_augment_op(c, source))
  ops.append(grain.transforms.Batch(batch_size=batch_size, drop_remainder=drop_remainder))
  mean, std = registry.MEAN_STD.get(c.name, (None, None))
  ops.append(Normalize(max_value=max_value, mean=mean, std=std))
  if cutout:
    ops.append(ApplyCutout())  # after Normalize: the patch is the mean colour, 0
  return ops


def _check_int(name: str, value: Any, low: int, high: int | None = None, allowed: str = "") -> int:
  """value as an int in [low, high) (high=None: no upper bound), else a ValueError naming both."""
  ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
  if ok and value >= low and (high is None or value < high):
    return int(value)
  allowed = allowed or (f"an int >= {low}" if high is None else f"an int in [{low}, {high})")
  raise ValueError(f"{name} must be {allowed}, got {value!r}")


def make_train_stream(cfg: Any, *, global_batch: int, seed: int, process_index: int = 0,
                      process_count: int = 1, start_step: int = 0, worker_count: int = 0) -> Any:
  """This process's share of the global training batches, from step `start_step` on (endless).

  The global stream is the train split (cfg.train_subset applied) in a fresh permutation per
  epoch, epochs concatenated: position p holds example π_e(p mod N) of epoch e = ⌊p / N⌋, with
  π_e grain's index_shuffle under a per-epoch seed derived from (seed, e). Each example then gets
  exactly `make_operations`' per-example work (Resize when cfg.image_size differs, RandomCropFlip,
  AutoAugment and the Cutout box for CIFAR-like data with cfg.augment / cfg.autoaugment /
  cfg.cutout), the augmentation drawing from Philox generators keyed by (seed, p) alone;
  per-batch normalisation and Cutout's zeroing are per row, so where a batch is cut does not
  change a value.

      global batch s = positions [s·G, (s+1)·G),  G = global_batch
      process k      = rows [k·L, (k+1)·L) of it,  L = G / process_count

  Batches straddle epoch boundaries (no example is dropped; when N is not a multiple of G a batch
  can hold the end of epoch e and the start of e + 1, and so, rarely, one example twice); there
  are N / G steps per epoch on average. Concatenating the process_count local batches of step s
  gives bit for bit the 1-process batch of step s, and start_step = s yields what a stream from 0
  yields from step s on: resuming needs only the step number, on any topology. The stream pins
  grain's shuffle and seed derivation, so resume with the same grain version.

  Yields {'image': float32 [L, ...], 'label': int32 [L]} through a grain iterator. worker_count
  = n > 0 builds the batches in n grain worker processes (`mp_prefetch`: worker w makes local
  batches w, w + n, ... and they are read back round robin), which leaves the stream unchanged;
  call the iterator's close() when done to stop the workers.
  """
  process_count = _check_int("process_count", process_count, 1)
  process_index = _check_int("process_index", process_index, 0, process_count)
  global_batch = _check_int("global_batch", global_batch, 1, allowed=(
      f"a positive multiple of process_count={process_count}"))
  if global_batch % process_count:
    raise ValueError(f"global_batch must be a positive multiple of process_count={process_count}, "
                     f"got {global_batch}")
  seed = _check_int("seed", seed, 0, 2**32)
  start_step = _check_int("start_step", start_step, 0)
  worker_count = _check_int("worker_count", worker_count, 0)
  source = event_input(cfg, "train", registry.load_split(cfg, "train"))
  if global_batch > len(source):
    raise ValueError(f"global_batch must be at most the {len(source)} train examples, got {global_batch}")
  local_batch = global_batch // process_count
  # ds.seed gives shuffle and random_map their own seeds (SeedSequence of seed and their depth),
  # so a run with seed + 1 does not see this run's epoch orders shifted by one epoch.
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  ds = ds.apply(make_operations(cfg, "train", source, batch_size=local_batch, drop_remainder=True))
  # Local batch j holds positions [j·L, (j+1)·L): process k's step-s batch is j = s·P + k.
  ds = ds[start_step * process_count + process_index::process_count]
  read_options = (grain.ReadOptions(num_threads=0, prefetch_buffer_size=2)
                  if getattr(source, "in_memory", False)
                  else grain.ReadOptions(num_threads=8, prefetch_buffer_size=16))
  stream = ds.to_iter_dataset(read_options)
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # as in make_loader: grain reads its flags in the workers
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(stream)


def make_loader(cfg: Any, split: str, *, batch_size: int, seed: int, shuffle: bool,
                num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                drop_remainder: bool = True, worker_count: int = 0) -> grain.DataLoader:
  """A deterministic grain.DataLoader over this process's shard of `split`.

  batch_size is per process. Shard k of n holds the k-th of n contiguous slices of the source
  (equal slices, dropping the remainder, when drop_remainder, so every process yields the same
  number of batches; otherwise the first shards hold one more example). num_epochs=None repeats
  forever (reshuffling each epoch when shuffle). Iterators support get_state / set_state.

  With worker_count = n > 0, grain batches inside each worker process (worker k takes the
  records k, k + n, ...), so batches are deterministic for a given n but composed differently
  than with n = 0, and a saved iterator state restores only into a loader with the same n.
  The examples and their augmentation do not depend on n.
  """
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; allowed splits: ['train', 'test']")
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
  if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer)) or num_epochs < 1):
    raise ValueError(f"num_epochs must be a positive int or None, got {num_epochs!r}")
  if not isinstance(shard_count, (int, np.integer)) or shard_count < 1:
    raise ValueError(f"shard_count must be a positive int, got {shard_count!r}")
  if not isinstance(shard_index, (int, np.integer)) or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index!r}")
  if not isinstance(worker_count, (int, np.integer)) or worker_count < 0:
    raise ValueError(f"worker_count must be an int >= 0, got {worker_count!r}")
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    # grain reads its absl flags when starting worker processes; outside absl.app.run (pytest,
    # notebooks) they are unparsed and the read raises, so accept the defaults.
    flags.FLAGS.mark_as_parsed()
  source = registry.load_split(cfg, split)
  n = len(source)
  if n < shard_count:
    raise ValueError(f"{n} examples cannot be split into shard_count={shard_count} shards")
  if shard_count > 1:
    # Contiguous shards cut here (grain's ShardOptions dropped an example even with
    # drop_remainder=False): equal floor(n/P) slices, or, keeping every example, slices
    # whose sizes differ by at most one (the first shards one longer).
    k, p = int(shard_index), int(shard_count)
    if drop_remainder:
      lo, hi = k * (n // p), (k + 1) * (n // p)
    else:
      lo, hi = k * (n // p) + min(k, n % p), (k + 1) * (n // p) + min(k + 1, n % p)
    source = sources.SubsetSource(source, np.arange(lo, hi), f"shard {k} of {p}")
  source = event_input(cfg, split, source)
  # A seed is passed even without shuffling: grain derives the per-example augmentation rng from it.
  sampler = grain.samplers.IndexSampler(num_records=len(source),
                                        shard_options=grain.sharding.NoSharding(),
                                        shuffle=shuffle, num_epochs=num_epochs, seed=int(seed))
  # Reader threads only pay off for sources that decode files; for in-memory arrays grain
  # advises none (they contend for the GIL, and a deep buffer costs a scan per element).
  read_options = (grain.ReadOptions(num_threads=0, prefetch_buffer_size=batch_size)
                  if getattr(source, "in_memory", False)
                  else grain.ReadOptions(num_threads=8, prefetch_buffer_size=max(64, 2 * batch_size)))
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=make_operations(cfg, split, source, batch_size=int(batch_size),
                                 drop_remainder=drop_remainder),
      worker_count=int(worker_count), shard_options=grain.sharding.NoSharding(),
      read_options=read_options)


def event_input(cfg: Any, split: str, source: Any) -> Any:
  """`source` as the operations of `make_operations` expect it: for an event dataset's train
  split with cfg.event_augment, its raw events (`events.RawEventView`: augmented, then framed,
  per example by `event_augment.AugmentEventsToFrames`); otherwise `source` itself (frames)."""
  from mdsnn_jax.data import events  # pylint: disable=g-import-not-at-top

  c = registry.parse_config(cfg)
  if split == "train" and c.name in registry.EVENT_NAMES and c.event_augment:
    return events.RawEventView(source)
  return source


def _event_augment_op(c: Any, source: Any) -> Any:
  from mdsnn_jax.data import event_augment, events  # pylint: disable=g-import-not-at-top

  if not isinstance(source, events.RawEventView):
    raise ValueError(f"data.event_augment={event_augment.format_spec(c.event_augment)} augments "
                     "raw events: pass the train source through `pipeline.event_input` first, got "
                     f"{source!r}")
  return event_augment.AugmentEventsToFrames(c.event_augment, sensor_size=source.sensor_size,
                                             timesteps=source.timesteps,
                                             image_size=source.image_size)
