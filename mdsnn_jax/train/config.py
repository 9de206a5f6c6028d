"""The base configuration every launcher config starts from (big_vision / flax-examples style).

Every leaf has a type, so every field can be set from the command line
(`--config.a.b=value`): optional fields are typed placeholders
(`ml_collections.config_dict.placeholder`), never a bare None. Quantizer configs carry every
argument any quantizer kind takes (unset ones are placeholders), so
`--config.model.quant.first_layer.bits=8` works whatever the file set; `quant_args` keeps the
arguments the chosen kind takes when a model is built.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import ml_collections
from ml_collections import config_dict

from mdsnn_jax.data import registry as data_registry
from mdsnn_jax.nn import default_model_config
from mdsnn_jax.quant import registry

ph = config_dict.placeholder
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
# first_layer / last_layer take 'same' (the body's quantizer) besides the registry's kinds.
_EXTRA_KINDS = {"same": lambda: None}
QUANT_TABLES: dict[str, Mapping[str, Callable]] = {
    "weight": {**registry.WEIGHT_QUANTIZERS, **_EXTRA_KINDS},
    "membrane": registry.MEMBRANE_QUANTIZERS,
}
QUANT_FIELDS = {"weight": "weight", "first_layer": "weight", "last_layer": "weight",
                "membrane": "membrane"}


def _arg_types(table: Mapping[str, Callable]) -> dict[str, type]:
  """{argument: type} over every kind of a quantizer table (from the factories' signatures)."""
  types: dict[str, type] = {}
  for factory in table.values():
    for name, p in inspect.signature(factory).parameters.items():
      t = _TYPES.get(p.annotation if isinstance(p.annotation, str) else
                     getattr(p.annotation, "__name__", ""), None)
      if t is None and p.default is not p.empty and p.default is not None:
        t = type(p.default)
      if t is None:
        raise TypeError(f"quantizer argument {name!r} has no usable type annotation")
      types.setdefault(name, t)
  return types


def quant_spec(what: str = "weight", kind: str = "none", **kwargs) -> ml_collections.ConfigDict:
  """A quantizer config with every argument of every kind of `what` ('weight' or
  'membrane'): the given ones set, the rest typed placeholders (None = the kind's default)."""
  if what not in QUANT_TABLES:
    raise ValueError(f"unknown quantizer family {what!r}; allowed: {sorted(QUANT_TABLES)}")
  types = _arg_types(QUANT_TABLES[what])
  unknown = sorted(set(kwargs) - set(types))
  if unknown:
    raise ValueError(f"unknown {what} quantizer argument(s) {unknown}; allowed: {sorted(types)}")
  spec = ml_collections.ConfigDict({"kind": kind})
  for name, t in sorted(types.items()):
    spec[name] = ph(t) if kwargs.get(name) is None else kwargs[name]
    if kwargs.get(name) is not None:
      spec[name] = t(kwargs[name])
  return spec


def quant_args(field: str, spec: Any, note: Callable[[str], None] | None = None) -> dict:
  """The {'kind', **args} of `spec` that its kind takes. Unset (None) arguments are left to
  the kind's default; set arguments that the kind does not take are dropped, and `note`
  is told so (e.g. bits after `--config.model.quant.weight.kind=ternary`)."""
  spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
  table = QUANT_TABLES[QUANT_FIELDS.get(field, "weight")]
  kind = spec.get("kind", "none")
  if kind not in table:
    raise ValueError(f"unknown quantizer kind {kind!r} in model.quant.{field}; allowed: "
                     f"{sorted(table)}")
  takes = set(inspect.signature(table[kind]).parameters)
  # A key no kind takes is a typo (the dotted form --config...per_chanel is refused by
  # ml_collections; a whole-dict value must be refused the same way, not dropped).
  known = set(_arg_types(table))
  unknown = sorted(k for k in spec if k != "kind" and k not in known)
  if unknown:
    import difflib
    hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1))
             else repr(k) for k in unknown]
    raise ValueError(f"unknown argument(s) {', '.join(hints)} in model.quant.{field}; "
                     f"allowed: {sorted(known | {'kind'})}")
  out, dropped = {"kind": kind}, []
  for name, value in spec.items():
    if name == "kind" or value is None:
      continue
    if name in takes:
      out[name] = value
    else:
      dropped.append(f"{name}={value!r}")
  if dropped and note is not None:
    note(f"model.quant.{field}: kind {kind!r} takes no {', '.join(dropped)}; dropped "
         f"(it takes {sorted(takes) or 'no arguments'})")
  return out


def with_quant_specs(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model_cfg` with each quant.<field> a full `quant_spec` (in place; returned)."""
  for field, what in QUANT_FIELDS.items():
    current = model_cfg.quant[field]
    current = current.to_dict() if hasattr(current, "to_dict") else dict(current)
    model_cfg.quant[field] = quant_spec(what, **current)
  return model_cfg


def set_quant(c: ml_collections.ConfigDict, field: str, kind: str, **kwargs) -> None:
  """c.model.quant.<field> = a full spec of `kind` with `kwargs` (what config files call)."""
  c.model.quant[field] = quant_spec(QUANT_FIELDS[field], kind, **kwargs)


def base_config() -> ml_collections.ConfigDict:
  """All fields with defaults; `launch/configs/*.py` override what a run needs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Comma-separated stages, run in order: 'fp' (FP teacher), 'qat' (quantized student, no
  # KD), 'md' (quantized student distilled from the teacher in workdir/fp or
  # distill.teacher_workdir).
  c.stages = "fp"
  c.init_from_teacher = True  # qat / md students start from the FP teacher's weights
  c.report = True  # write workdir/report (accuracy, firing, EMD, hardware, plots) at the end

  c.data = ml_collections.ConfigDict(dict(
      name="digits", root=ph(str), source="auto", image_size=ph(int), timesteps=ph(int),
      augment=False, train_subset=ph(int), test_subset=ph(int), worker_count=0,
      # CIFAR-like train split only, after crop + flip: AutoAugment ('none' | 'cifar10'), then
      # Cutout of a cutout×cutout patch (pixels; 0 = off) on the normalised image.
      autoaugment="none", cutout=0,
      # Training batches built and put on the devices this many steps ahead, on a host
      # thread, while the device runs the current step (0: built in the step loop).
      prefetch=2,
      # N-Caltech101 has no official split and a clutter class: both choices are fields so
      # the config (and --print_config) says which task is trained. Other datasets ignore them.
      ncaltech101_background=False, ncaltech101_train_fraction=0.9,
      # CIFAR10-DVS has no official split either: per class, the first ⌈f·n⌉ files by name.
      cifar10dvs_train_fraction=0.9,
      # Event datasets' train split: tonic event augmentations before framing, 'none' or e.g.
      # 'spatial_jitter,drop_event=0.1,polarity_flip' (mdsnn_jax.data.event_augment).
      event_augment="none"))
  c.model = with_quant_specs(default_model_config())
  c.model.neuron.learn_decay = False  # learnable per-channel decay λ = σ(decay_raw)

  c.train = ml_collections.ConfigDict(dict(
      global_batch=64, eval_batch=128, steps=500, log_every=50, eval_every=0,
      checkpoint_every=100, keep_checkpoints=2, eval_ptq=True,
      # A non-finite loss or gradient is never applied: 'stop' ends the stage naming the
      # step; 'skip' drops that update and stops after max_skipped of them.
      nan_policy="stop", max_skipped=10,
      tensorboard=True))  # also write <workdir>/<stage>/tb/ event files (tensorboardX)
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-3, schedule="cosine", warmup_steps=0, weight_decay=0.0, momentum=0.9))
  # gate_weight: the weight of the learned gate's BCE (used only with model.neuron.gate_rho).
  c.loss = ml_collections.ConfigDict(dict(kind="ce", tet_lambda=0.05, gate_weight=1.0))
  c.distill = ml_collections.ConfigDict(dict(
      alpha=1.0, beta=1.0, temperature=4.0, gamma=0.0, layers="all", decorrelate=True,
      temporal_weight=1.0, align="prefix", teacher_timesteps=0, teacher_workdir="",
      # Feature KD (γ > 0): time-mean of these taps ('all', 're:<pattern>' or a comma list)
      # of 'membranes' or 'spikes', through a per-tap affine projector trained with the
      # student (a 1×1 conv when the teacher's channels differ).
      feature_layers="all", feature_source="membranes"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  # initialize=True calls jax.distributed.initialize(); the three fields below are passed
  # when set (on SLURM and TPU pods initialize() finds them itself).
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address=ph(str), num_processes=ph(int),
      process_id=ph(int), local_device_ids=ph(str)))
  return c


def low_bit_student(c: ml_collections.ConfigDict, weight_bits: int = 2,
                    grid: str | None = None) -> None:
  """MD-SNN's low-bit student, in place: LSQ weights, batch norm folded and quantized,
  ternary integer membranes, 8-bit first and last layers.

  grid: the LSQ weight grid, 'full' (2^b levels) or 'symmetric' (2^b − 1: 2 bits is
  ternary); None leaves LSQ's default, 'full' (docs/method.md, 'Weight quantizers')."""
  set_quant(c, "weight", "lsq", bits=weight_bits, grid=grid)
  set_quant(c, "membrane", "ternary")
  set_quant(c, "first_layer", "uniform", bits=8)
  set_quant(c, "last_layer", "uniform", bits=8)
  c.model.quant.bn_fold = True


def md_cifar10_config(first_last_bits: str = "8", grid: str = "symmetric") -> ml_collections.ConfigDict:
  """The MD evidence setting (README, `launch/configs/md_cifar10.py`, table `md_evidence`):
  the CIFAR-10 subset of ../shared/data, VGG-9 at a quarter width (16–64 channels) to fit a
  2-core CPU, T = 2, direct encoding; a 2,400-step FP teacher (≈ 15 epochs at batch 64) and
  250-step low-bit students (2-bit LSQ weights, batch norm folded and quantized with a 16-bit
  bias, ternary membranes), α = β = 1, τ = 4.

  first_last_bits: '8' (uniform 8-bit first and last layers) or '2' (2-bit LSQ like the body).
  grid: the LSQ grid, 'symmetric' (3 levels at 2 bits: README's MD tables were made with it)
  or 'full' (4 levels, LSQ's own)."""
  if first_last_bits not in ("8", "2"):
    raise ValueError(f"md_cifar10 first/last layer bits must be '8' or '2', got {first_last_bits!r}")
  c = base_config()
  c.report = False  # per-run reports are not needed for the table
  c.data.name = "cifar10"
  c.data.root = "../shared/data"
  c.data.augment = True
  c.model.name = "vgg9"
  c.model.width = 0.25
  c.model.timesteps = 2
  c.model.conv_impl = "auto"
  low_bit_student(c, grid=grid)
  c.model.quant.bias_bits = 16
  if first_last_bits == "2":
    set_quant(c, "first_layer", "same")
    set_quant(c, "last_layer", "same")
  c.teacher_steps = 2400  # ≈ 15 epochs of 10,000 images at batch 64
  c.train.steps = 250  # student steps (≈ 1.6 epochs)
  c.train.global_batch = 64
  c.train.eval_batch = 500
  c.train.log_every = 50
  c.train.eval_every = 800
  c.train.checkpoint_every = 200
  c.optim.lr = 1e-3
  c.distill.alpha = 1.0
  c.distill.beta = 1.0
  c.distill.temperature = 4.0
  return c




def nominal_train_count(data_cfg) -> int | None:
  """Training examples the config's dataset has at full size (None: not known here), from
  the real datasets' sizes (`data.registry.REAL_SPLITS` and recording counts); epochs =
  steps · batch / this. The event sets' train shares are per class, so their count is the
  nearest whole number, within a few recordings of what the loader splits (--dry_run counts)."""
  if data_cfg.get("train_subset"):
    return int(data_cfg.train_subset)
  name = data_cfg.name
  if name in data_registry.REAL_SPLITS:
    return data_registry.REAL_SPLITS[name][0]
  if name == "ncaltech101":
    n = data_registry.NCALTECH101_RECORDINGS - (
        0 if data_cfg.get("ncaltech101_background", False)
        else data_registry.NCALTECH101_BACKGROUND_RECORDINGS)
    return round(n * float(data_cfg.get("ncaltech101_train_fraction", 0.9)))
  if name == "cifar10dvs":
    return round(data_registry.CIFAR10DVS_RECORDINGS
                 * float(data_cfg.get("cifar10dvs_train_fraction", 0.9)))
  return None


def steps_per_epoch(data_cfg, batch: int) -> int:
  """Whole batches in one pass over the training split (the last partial batch dropped)."""
  n = nominal_train_count(data_cfg)
  if n is None:
    raise ValueError(f"no nominal training-set size for {data_cfg.name!r}")
  return n // int(batch)


def msresnet18_paper_config(stages: str, dataset: str, root: str, *, epochs: int,
                            steps_per_epoch: int) -> ml_collections.ConfigDict:
  """The MD-SNN paper rows on static images: MS-ResNet-18, T = 4 (λ = 0.25, θ = 0.5),
  low-bit student, SGD 0.1 with weight decay 5e-4 and a cosine schedule, batch 128, random
  crop + flip (the paper's augmentation is not stated: no Cutout / AutoAugment), evaluated
  on the test split every epoch."""
  c = base_config()
  c.stages = stages
  c.data.name = dataset
  c.data.root = root
  c.data.augment = True
  c.data.cutout, c.data.autoaugment = 0, "none"  # crop + flip only (see the docstring)
  c.model.name = "msresnet18"
  c.model.timesteps = 4
  c.model.neuron.decay = 0.25
  c.model.neuron.threshold = 0.5
  low_bit_student(c)
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = epochs * steps_per_epoch
  c.train.log_every = 100
  c.train.eval_every = steps_per_epoch
  c.train.checkpoint_every = 1000
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  return c


def _event_schedule(c: ml_collections.ConfigDict, epochs: int) -> None:
  """SpQuant-SNN's event-data schedule, in place: Adam 1e-3 at batch 16 for `epochs` epochs of
  c.data's training split, evaluated every epoch."""
  spe = steps_per_epoch(c.data, 16)
  c.train.global_batch = 16
  c.train.eval_batch = 16
  c.train.steps = epochs * spe
  c.train.log_every = 100
  c.train.eval_every = spe
  c.train.checkpoint_every = 1000
  c.optim.lr = 1e-3


def ncaltech101_vgg_paper_config(stages: str = "fp,md", *, train_fraction: float = 0.9,
                                 background: bool = False,
                                 epochs: int = 200) -> ml_collections.ConfigDict:
  """The MD-SNN paper row on N-Caltech101 event frames: VGG-9, T = 10, 2 polarities resized
  to 48×48, low-bit student; SpQuant's recipe: Adam 1e-3, batch 16, 200 epochs; evaluated
  every epoch. The split (per-class train share) and whether BACKGROUND_Google is a class
  are arguments: MD-SNN states neither (default 90/10 without it)."""
  c = base_config()
  c.stages = stages
  c.data.name = "ncaltech101"
  c.data.root = "/data/N-Caltech101"
  c.data.timesteps = 10
  c.data.image_size = 48
  c.data.ncaltech101_train_fraction = float(train_fraction)
  c.data.ncaltech101_background = bool(background)
  c.model.name = "vgg9"
  c.model.timesteps = 10
  low_bit_student(c)
  _event_schedule(c, epochs)
  return c


def spquant_resnet19_paper_config(stages: str = "fp,qat",
                                  root: str = "../shared/data") -> ml_collections.ConfigDict:
  """The SpQuant-SNN row: CIFAR-10, ResNet-19 as SpQuant-SNN's code builds it (spike after the
  residual add, 7×7 stride-2 stem: `resnet19_spquant`), T = 2, 4-bit SAWB weights (first / last layers full precision), ternary
  (1.58-bit) integer membrane, learnable per-channel threshold; Adam 0.01 cosine, batch 128,
  300 epochs, TET loss; random crop + flip only (as reported from SpQuant's code); evaluated
  every epoch."""
  c = base_config()
  c.stages = stages
  c.data.name = "cifar10"
  c.data.root = root
  c.data.augment = True
  c.data.cutout, c.data.autoaugment = 0, "none"  # crop + flip only (see the docstring)
  c.model.name = "resnet19_spquant"
  c.model.timesteps = 2
  c.model.neuron.decay = 0.25
  c.model.neuron.threshold = 0.5
  c.model.neuron.learn_threshold = True
  set_quant(c, "weight", "sawb", bits=4)
  set_quant(c, "membrane", "ternary")
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = 300 * 390
  c.train.log_every = 100
  c.train.eval_every = 390
  c.train.checkpoint_every = 1000
  c.optim.lr = 0.01
  c.loss.kind = "tet"
  return c


def spquant_vgg9_event_paper_config(stages: str = "fp,qat", dataset: str = "cifar10dvs",
                                    root: str | None = None, *,
                                    epochs: int = 200) -> ml_collections.ConfigDict:
  """SpQuant-SNN's event row: VGG-9, T = 10 frames of 2 polarities resized to 48×48, 2-bit
  SAWB weights (first / last layers full precision), ternary integer membrane, learnable
  threshold, TET loss; Adam 1e-3 cosine, batch 16, 200 epochs (the reference code's VGG-9
  event recipe, seen for N-Caltech101); evaluated every epoch; no event augmentation.

  dataset: 'cifar10dvs' (the paper's DVS-CIFAR10 row; `data.cifar10dvs_train_fraction` 0.9,
  its common 9:1 per-class split) or 'ncaltech101' (80/20 per class with BACKGROUND_Google
  kept, as reported from SpQuant's code)."""
  if dataset not in ("cifar10dvs", "ncaltech101"):
    raise ValueError(f"SpQuant's event row reads 'cifar10dvs' or 'ncaltech101', got {dataset!r}")
  c = base_config()
  c.stages = stages
  c.data.name = dataset
  c.data.root = root
  c.data.timesteps = 10
  c.data.image_size = 48
  if dataset == "ncaltech101":
    c.data.ncaltech101_train_fraction = 0.8
    c.data.ncaltech101_background = True
  else:
    c.data.cifar10dvs_train_fraction = 0.9
  c.data.event_augment = "none"
  c.model.name = "vgg9"
  c.model.timesteps = 10
  c.model.neuron.learn_threshold = True
  set_quant(c, "weight", "sawb", bits=2)
  set_quant(c, "membrane", "ternary")
  _event_schedule(c, epochs)
  c.loss.kind = "tet"
  return c


# --precision of the launchers (train.py, reproduce.py): the name a user types -> model.dtype
# (`nn.models.DTYPES`).
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
PRECISION_NOTE = ("bf16 computes convolutions, matmuls, batch-norm outputs and the LIF "
                  "recurrences in bfloat16; parameters, optimizer state, batch-norm statistics, "
                  "quantizer parameters, membrane taps, logits and every loss stay float32")


def precision_dtype(precision: str | None) -> str | None:
  """'fp32' | 'bf16' -> the model.dtype it names; None or '' -> None (the config's own)."""
  if not precision:
    return None
  if precision not in PRECISIONS:
    raise ValueError(f"unknown --precision {precision!r}; allowed: {list(PRECISIONS)}")
  return PRECISIONS[precision]


def set_precision(config: ml_collections.ConfigDict, precision: str | None
                  ) -> ml_collections.ConfigDict:
  """Sets config.model.dtype from a launcher's --precision (None: the config's own dtype)."""
  dtype = precision_dtype(precision)
  if dtype is not None:
    config.model.dtype = dtype
  return config


def resolved_config(config, note: Callable[[str], None] | None = None) -> ml_collections.ConfigDict:
  """The config as a run uses it, for --print_config: each quantizer spec reduced to the
  arguments its kind takes (unset arguments shown as the kind's default, None), so
  `kind=ternary` does not show a `bits` the run ignores, and an unknown key is an error."""
  out = ml_collections.ConfigDict(config.to_dict())
  for field in QUANT_FIELDS:
    if field in out.model.quant:
      args = quant_args(field, out.model.quant[field], note)
      out.model.quant[field] = ml_collections.ConfigDict(args)
  return out
