"""Event augmentation (`data.event_augment`) with tonic's transforms, before framing.

`data.event_augment` is 'none' or a comma list of entries `NAME` or `NAME=VALUE`, applied in
the order given to each train example's raw events (the test split is never augmented; only
event datasets read the field). Each NAME is one tonic transform with one parameter:

    spatial_jitter[=VAR]   tonic.transforms.SpatialJitter(sensor_size, var_x=VAR, var_y=VAR,
                           sigma_xy=0, clip_outliers=True); VAR >= 0 in sensor pixels², default
                           1.0. Each event moves by its own draw (dx, dy) ~ N(0, VAR·I); the
                           coordinates are stored back into the integer fields, so
                           x' = trunc(x + dx) (toward zero), likewise y', and an event with x'
                           outside [0, W) or y' outside [0, H) is dropped (tonic's
                           clip_outliers), so every kept event lies on the sensor.
    drop_event[=P]         tonic.transforms.DropEvent(p=P), P in [0, 1], default 0.1: exactly
                           int(P·n + 0.5) of the n events, chosen uniformly without replacement,
                           are dropped (P = 0: none, P = 1: all).
    polarity_flip[=P]      tonic.transforms.RandomFlipPolarity(p=P), P in [0, 1], default 0.5:
                           with probability P (tonic draws u ~ U[0, 1) and flips when u <= P)
                           every event of the recording gets p' = 1 − p, which swaps the two
                           frame channels; not a per-event flip, whatever tonic's docstring says.

The transforms run on the events in sensor coordinates, before `events_to_frames` (and its
resize), inside the grain pipeline: `RawEventView` gives the train split's raw events and
`AugmentEventsToFrames` (a grain RandomMap) augments and frames them.

Determinism. tonic's transforms draw from NumPy's global legacy RNG (np.random.*) and take no
generator. `augment_events` therefore draws 4 uint32 words w from grain's per-example
np.random.Generator (itself a function of the pipeline seed and the example's position), and
runs the transforms with the global RNG seeded by `np.random.seed(w)`, holding a process-wide
lock and restoring the global RNG's previous state afterwards. So an example's augmentation
depends on (seed, position) alone, in any process or thread (each process has its own global
RNG; the lock serialises this library's reader threads); code outside this module that draws
from np.random's global RNG in another thread at the same moment would interleave with it.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import grain
import numpy as np

from mdsnn_jax.data import events as events_lib

# name -> (default parameter, (low, high) inclusive bounds, what the parameter is)
AUGMENTS = {
    "spatial_jitter": (1.0, (0.0, float("inf")), "variance in sensor pixels² (>= 0)"),
    "drop_event": (0.1, (0.0, 1.0), "drop probability in [0, 1]"),
    "polarity_flip": (0.5, (0.0, 1.0), "flip probability in [0, 1]"),
}
SEED_WORDS = 4  # uint32 words drawn from grain's generator to seed NumPy's global RNG

_GLOBAL_RNG_LOCK = threading.Lock()

Spec = tuple[tuple[str, float], ...]


def _allowed() -> str:
  return ("'none' or a comma list of " + ", ".join(
      f"{n}[={d:g}] ({what})" for n, (d, _, what) in AUGMENTS.items()))


def parse_event_augment(text: Any) -> Spec:
  """'none' / '' -> (); 'spatial_jitter,drop_event=0.2' -> (('spatial_jitter', 1.0),
  ('drop_event', 0.2)). A ValueError names a bad entry and the allowed ones."""
  if text is None:
    return ()
  if not isinstance(text, str):
    raise ValueError(f"data.event_augment must be a string, got {text!r}; allowed: {_allowed()}")
  if text.strip().lower() in ("", "none"):
    return ()
  spec = []
  for entry in text.split(","):
    entry = entry.strip()
    name, eq, value = entry.partition("=")
    name = name.strip()
    if name not in AUGMENTS:
      raise ValueError(f"data.event_augment entry {entry!r}: unknown augmentation {name!r}; "
                       f"allowed: {_allowed()}")
    default, (low, high), what = AUGMENTS[name]
    if eq:
      try:
        param = float(value)
      except ValueError:
        param = float("nan")
      if not low <= param <= high:  # also refuses nan
        raise ValueError(f"data.event_augment entry {entry!r}: {name}'s parameter must be a "
                         f"{what}, got {value.strip()!r}; allowed: {_allowed()}")
    else:
      param = default
    if any(n == name for n, _ in spec):
      raise ValueError(f"data.event_augment names {name!r} twice; allowed: {_allowed()}")
    spec.append((name, float(param)))
  return tuple(spec)


def format_spec(spec: Spec) -> str:
  """The canonical text of a parsed spec ('none' for ())."""
  return ",".join(f"{n}={v:g}" for n, v in spec) or "none"


def tonic_transforms(spec: Spec, sensor_size: Sequence[int]) -> list[Any]:
  """The tonic transforms of `spec`, in its order."""
  import tonic.transforms as tt  # pylint: disable=g-import-not-at-top

  out = []
  for name, value in spec:
    if name == "spatial_jitter":
      out.append(tt.SpatialJitter(sensor_size=tuple(sensor_size), var_x=value, var_y=value,
                                  sigma_xy=0.0, clip_outliers=True))
    elif name == "drop_event":
      out.append(tt.DropEvent(p=value))
    elif name == "polarity_flip":
      out.append(tt.RandomFlipPolarity(p=value))
    else:
      raise ValueError(f"unknown event augmentation {name!r}; allowed: {list(AUGMENTS)}")
  return out


def augment_events(events: np.ndarray, spec: Spec, sensor_size: Sequence[int],
                   rng: np.random.Generator) -> np.ndarray:
  """`events` (EVENT_DTYPE) through the tonic transforms of `spec`, seeded from `rng` (see the
  module doc: draws SEED_WORDS uint32 words, even for an empty spec)."""
  words = rng.integers(0, 2**32, size=SEED_WORDS, dtype=np.uint64).astype(np.uint32)
  if not spec:
    return events
  transforms = tonic_transforms(spec, sensor_size)
  out = np.array(events, copy=True)
  with _GLOBAL_RNG_LOCK:
    saved = np.random.get_state()
    try:
      np.random.seed(words)
      for transform in transforms:
        out = transform(out)
    finally:
      np.random.set_state(saved)
  return out


class AugmentEventsToFrames(grain.transforms.RandomMap):
  """{'events', 'label'} (a `RawEventView` example) -> {'image': float32 [T, H, W, 2], 'label'}:
  `augment_events` with grain's per-example generator, then `events_to_frames`."""

  def __init__(self, spec: Spec, *, sensor_size: Sequence[int], timesteps: int,
               image_size: int | None):
    self.spec = tuple(spec)
    self.sensor_size = tuple(sensor_size)
    self.timesteps = int(timesteps)
    self.image_size = image_size

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if "events" not in element:
      raise ValueError("AugmentEventsToFrames needs raw events ({'events', 'label'}, a "
                       "RawEventView example); got keys " + str(sorted(element)))
    augmented = augment_events(element["events"], self.spec, self.sensor_size, rng)
    frames = events_lib.events_to_frames(augmented, self.sensor_size, self.timesteps,
                                         self.image_size)
    return {"image": frames.astype(np.float32), "label": element["label"]}

  def __repr__(self) -> str:
    return f"AugmentEventsToFrames({format_spec(self.spec)}, T={self.timesteps})"
