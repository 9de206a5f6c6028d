"""The paper tables `launch/reproduce.py` runs: rows as config overrides, datasets per scale,
the papers' reported figures, and the time each table is expected to take.

A table is a list of `Row`s run on each of its datasets. A row is the FP teacher, or a
quantized student (stage 'qat' or 'md', `experiments.METHODS`) made from the dataset's base
config by dotted overrides, started from and distilled from the teacher of the same seed
(or, in `shared_teacher` tables, the one teacher of the table), or the PTQ point (the
teacher's weights quantized as row `ptq_of`'s student, before its first step). The MD evidence
tables (`md_evidence`, `md_ablation`) also run on a user's config (`launch/md_table.py`,
`launch/md_ablation.py`, `reproduce.py --config`). Scales:

- smoke: sklearn's bundled digits, tiny steps: the whole pipeline in CI (< 2 min a table).
- cpu:   the real data in ../shared/data (CIFAR-10 subset, N-MNIST recordings as event
         frames), models shrunk to fit a 2-core CPU (each dataset says how).
- full:  the papers' settings (GPU / TPU), through the same code path. No dataset has a
         default folder: each is read from the user's `--data_root` and must have the real
         dataset's split sizes (`preflight`). Every run evaluates on the test split each
         epoch (`Dataset.steps_per_epoch`); the students' epochs are a table parameter
         (`with_settings(student_epochs=...)`, `Table.epochs_note` says the default and
         why); each dataset's recipe is stated from its configs (`dataset_recipe`).
- gpu_short: the full-scale datasets and models, trained for `gpu_short_steps` steps per
         run (per dataset): a check on one GPU that the full-scale path runs end to end,
         not a result.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable, Iterable

import ml_collections

from mdsnn_jax.train.config import (base_config, low_bit_student, md_cifar10_config,
                                    msresnet18_paper_config,
                                    ncaltech101_vgg_paper_config, set_quant,
                                    spquant_resnet19_paper_config,
                                    spquant_vgg9_event_paper_config)

SCALES = ("smoke", "cpu", "full", "gpu_short")
# Scales meant for an accelerator: real datasets only from --data_root, refused on a CPU.
ACCELERATOR_SCALES = ("full", "gpu_short")
CONFIG_SCALE = "config"  # a table run on a user's config (`reproduce.run_table(config=...)`)
MIN_SEEDS = {"smoke": 1, "cpu": 3, "full": 3, "gpu_short": 1, CONFIG_SCALE: 1}
DEFAULT_SEEDS = (0, 1, 2)
SHARED_DATA = "../shared/data"
TEACHERS = ("teacher", "teacher2t")  # the FP teacher at the student's T, and at 2·T
# Full-scale configs name no data folder: ../shared/data holds subsets, which a full table
# must never read by default. `with_settings` sets each dataset's root from --data_root.
FULL_ROOT = None


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a table.

  kind: 'teacher' (the FP teacher), 'ptq' (the teacher's weights quantized as row `ptq_of`'s
  student, before training: that row's step-0 accuracy), 'student' (trained with `method`),
  or 'unavailable' (listed with `note` saying why; nothing runs).
  overrides: dotted config fields set on the dataset's base config (students only).
  teacher_t_factor: the teacher runs (and is trained) at this multiple of the student's T.
  event_note: when set, the row is 'unavailable' on event datasets, for this reason.
  """
  key: str
  label: str
  kind: str
  method: str | None = None
  overrides: tuple = ()
  teacher_t_factor: int = 1
  note: str = ""
  event_note: str = ""
  ptq_of: str = "qat"

  def available(self, is_event: bool) -> tuple[bool, str]:
    if self.kind == "unavailable":
      return False, self.note
    if is_event and self.event_note:
      return False, self.event_note
    return True, ""

  @property
  def teacher(self) -> str:
    return TEACHERS[0] if self.teacher_t_factor == 1 else f"teacher{self.teacher_t_factor}t"


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset of a table at one scale: its key, a one-line description (what was shrunk),
  whether it is event data, and the base config (a function of nothing, so --list builds
  nothing)."""
  key: str
  description: str
  is_event: bool
  build: Callable[[], ml_collections.ConfigDict]
  # Full scale: training steps per epoch of this dataset at its batch (the students' epochs,
  # `--student_epochs`, are counted in them; None: the students' steps are fixed).
  steps_per_epoch: int | None = None
  # What the table file states under the dataset's recipe: choices the config cannot say
  # (what the paper does where we know it, what we assumed where we do not).
  notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  rows: tuple[Row, ...]
  baseline: str  # the row every accuracy Δ is paired against
  datasets: Callable[[str], tuple[Dataset, ...]]
  paper: tuple[str, ...]  # the papers' reported figures, one line each
  columns: tuple[str, ...]  # the measured columns besides accuracy (names in the json rows)
  # One FP teacher per dataset (root/teacher, the config's seed) for every seed and row,
  # instead of one per seed: the MD evidence design, where only the student's seed varies.
  shared_teacher: bool = False
  run_prefix: str = ""  # students run in root/<run_prefix><row>_seed<s>
  default_rows: tuple[str, ...] | None = None  # the rows run when none are named (None: all)
  # The students' training length at full scale (each dataset's default epochs, and why),
  # stated in the table file; `--student_epochs` changes it.
  epochs_note: str = ""

  def teacher_run(self, key: str, seed: int) -> str:
    """The folder name of teacher `key` ('teacher', 'teacher2t') for `seed`."""
    return key if self.shared_teacher else f"{key}_seed{seed}"

  def student_run(self, row_key: str) -> str:
    return f"{self.run_prefix}{row_key}"


# ------------------------------------------------------------------------- base configs
def _quiet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Table runs write no per-run report or TensorBoard files (the table measures itself)."""
  c.report = False
  c.train.tensorboard = False
  return c


def _smoke(c: ml_collections.ConfigDict, timesteps: int) -> ml_collections.ConfigDict:
  c.data.name = "digits"
  c.model.name = "digits_mlp"
  c.model.timesteps = timesteps
  c.teacher_steps = 40
  c.train.steps = 20
  c.train.global_batch = 32
  c.train.eval_batch = 512
  c.train.log_every = 10
  c.train.eval_every = 0
  c.train.checkpoint_every = 10
  c.optim.lr = 3e-3
  return _quiet(c)


def _cifar_vgg9_quarter(c, timesteps: int, teacher_steps: int, steps: int):
  c.data.name = "cifar10"
  c.data.root = SHARED_DATA
  c.data.augment = True
  c.data.test_subset = CPU_TEST_SUBSET
  c.model.name = "vgg9"
  c.model.width = 0.25
  c.model.timesteps = timesteps
  c.teacher_steps = teacher_steps
  c.train.steps = steps
  c.train.global_batch = 64
  c.train.eval_batch = 500
  c.train.log_every = 50
  c.train.eval_every = 0
  c.train.checkpoint_every = 100
  c.optim.lr = 1e-3
  return _quiet(c)


def _nmnist_cnn(c, frames: int, teacher_steps: int, steps: int):
  c.data.name = "nmnist"
  c.data.root = f"{SHARED_DATA}/nmnist_small"
  c.data.timesteps = frames
  c.data.image_size = 16
  c.model.name = "digits_cnn"
  c.model.timesteps = frames
  c.teacher_steps = teacher_steps
  c.train.steps = steps
  c.train.global_batch = 32
  c.train.eval_batch = 50
  c.train.log_every = 50
  c.train.eval_every = 0
  c.train.checkpoint_every = 100
  c.optim.lr = 2e-3
  return _quiet(c)


def _md_student(c):
  """MD-SNN's low-bit student, the whole network at 2 bits (first and last layers too)."""
  low_bit_student(c, 2)
  c.model.quant.bias_bits = 16
  set_quant(c, "first_layer", "same")
  set_quant(c, "last_layer", "same")
  return c


def _spquant_student(c):
  """SpQuant-SNN's quantizers (rows switch the membrane / threshold / prior on): 4-bit SAWB
  weights; first and last layers full precision, as in its reference config."""
  set_quant(c, "weight", "sawb", bits=4)
  return c


# (teacher steps, student steps) per seed at scale cpu, set from step times measured on the
# 2-core CPU (VGG-9/4 at T = 2: FP 0.22 s, QAT 0.34 s, MD 0.44 s a step at batch 64) so that
# all four tables at 3 seeds fit one session; the tables' wall times are in results/tables/.
CPU_STEPS = {"md_snn": {"cifar10": (300, 100), "nmnist": (400, 150)},
             "spquant": {"cifar10": (300, 100), "nmnist": (400, 150)}}
# The CIFAR-10 rows are evaluated on a fixed seeded 2,000-image subset of the 10,000 test
# images (the same images for every row and seed, so the paired Δ compares like with like): a 10,000-image
# pass costs ~10 s on the CPU, and every run is evaluated twice (the loop, then the table).
CPU_TEST_SUBSET = 2000


# ------------------------------------------------------------------- full-scale recipes
# The full-scale rows follow the papers' recipes where we know them; every choice is in the
# config, and the table file states it (`recipe`). The students' epochs at full scale are a
# table parameter (`--student_epochs`); these are the defaults, and each table says why.
# MD-SNN (teacher and students): 300 epochs on CIFAR, 200 on TinyImageNet (its 100,000 images
# make an epoch twice as long; as launch/configs/tinyimagenet.py) and on N-Caltech101.
MD_SNN_EPOCHS = {"default": 300, "tinyimagenet": 200}
FEATURE_KD_EPOCHS = 300
EVIDENCE_STUDENT_EPOCHS = 30
AUG_NOT_STATED = ("augmentation: the paper's augmentation is not stated (in what we have read); "
                  "random crop (4-pixel padding) + horizontal flip only, no Cutout, no "
                  "AutoAugment")
_MD_SNN_NOTES = (
    "Established: MS-ResNet-18 at T = 4 on CIFAR-10 / CIFAR-100, the low-bit student (2-bit "
    "weights, quantized batch norm, ternary membranes) and the paper's figures. Assumed (the "
    "library's MD-SNN configs, not read from the paper): the model and T on TinyImageNet "
    "(MS-ResNet-18, T = 4) and N-Caltech101 (VGG-9, T = 10, 48×48); SGD 0.1 / momentum 0.9 / "
    "weight decay 5e-4 / cosine / batch 128 for 300 epochs on CIFAR and 200 on TinyImageNet; "
    "Adam 1e-3 / batch 16 / 200 epochs on N-Caltech101 (SpQuant's reference recipe); 8-bit "
    "first and last layers; MD α = β = 1, τ = 4.",
    AUG_NOT_STATED + " (static datasets); no event augmentation on N-Caltech101.",
    "Accuracy: MD-SNN's code is not read here; both the final and the best-epoch accuracy are "
    "reported.")
_SPQUANT_NOTES = (
    "Established (SpQuant-SNN's reference code, as reported to us; not re-read here): ResNet-19 "
    "as its code builds it on CIFAR-10 (spike after the residual add; a 7×7 stride-2 stem of 128 "
    "channels, then 64 / 256 / 512 channels: `resnet19_spquant`), Adam 0.01 cosine, batch "
    "128, 300 epochs, T = 2, TET loss; VGG-9 on event data, Adam 1e-3, batch 16, 200 epochs, "
    "T = 10; random crop + horizontal flip only on CIFAR-10 (no Cutout / AutoAugment); the "
    "best epoch's accuracy is what its code reports.",
    "Every row of a dataset starts from that dataset's FP teacher (its weights) and trains the "
    "whole student recipe again; the paper's quantized models' initialisation is not "
    "established here.")
_SPQUANT_EVENT_NOTES = (
    "Event augmentation: none (`data.event_augment='none'`); SpQuant's event-data augmentation "
    "is not established here.",
    "Memory: our 'memory' columns count each conv / dense layer's weights (k²·C_in·C_out × its "
    "stored bits, FP = 32-bit float) and one membrane per LIF neuron (× its stored bits, FP 32, "
    "ternary 2), in MB = 10⁶ bytes. The paper's 48.58 MB → 3.75 MB (13×) is for its own VGG-9 "
    "on DVS-CIFAR10, whose widths and classifier differ from ours and whose MB count (weights "
    "alone, or with membranes; at which FP width) is not stated in what we have read: compare "
    "the ×↓ (FP / row) columns with the paper's 13×, not the MB.")


def _spe(dataset: str, batch: int, **data) -> int:
  """Steps per epoch of `dataset` at `batch` as the full-scale rows split it."""
  from mdsnn_jax.train.config import steps_per_epoch
  cfg = ml_collections.ConfigDict({"name": dataset, **data})
  return steps_per_epoch(cfg, batch)


def _md_snn_datasets(scale: str) -> tuple[Dataset, ...]:
  if scale == "smoke":
    return (Dataset("digits", "sklearn digits (1,797 8×8 images), digits MLP, T = 2, 40 teacher "
                    "/ 20 student steps: a pipeline check, not a result", False,
                    lambda: _md_student(_smoke(base_config(), 2))),)
  if scale == "cpu":
    ts, ss = CPU_STEPS["md_snn"]["cifar10"]
    tn, sn = CPU_STEPS["md_snn"]["nmnist"]
    return (
        Dataset("cifar10", f"CIFAR-10 subset (10,000 train; a fixed 2,000 of the 10,000 test "
                f"images), VGG-9 at quarter width (16–64 channels), T = 2, {ts} teacher / {ss} "
                "student steps at batch 64 (shrunk to fit 2 CPU cores)", False,
                lambda: _md_student(_cifar_vgg9_quarter(base_config(), 2, ts, ss))),
        Dataset("nmnist", f"N-MNIST recordings (1,000 train / 100 test) as 8 event frames of "
                f"16×16×2, small CNN (16–32 channels), {tn} teacher / {sn} student steps at "
                "batch 32", True,
                lambda: _md_student(_nmnist_cnn(base_config(), 8, tn, sn))),
    )

  def msres(dataset: str, what: str, paper: str) -> Dataset:
    spe = _spe(dataset, 128)
    epochs = MD_SNN_EPOCHS.get(dataset, MD_SNN_EPOCHS["default"])

    def build():
      c = msresnet18_paper_config("fp", dataset, FULL_ROOT, epochs=epochs, steps_per_epoch=spe)
      c.teacher_steps = c.train.steps
      return _quiet(c)

    claim = ("the paper's model and T" if dataset != "tinyimagenet" else
             "model and T assumed, as on CIFAR")
    return Dataset(dataset, f"{what}, MS-ResNet-18, T = 4, {epochs} epochs: {claim} (paper: "
                   f"{paper})", False, build, spe, _MD_SNN_NOTES)

  def ncal():
    c = ncaltech101_vgg_paper_config("fp", train_fraction=0.9, background=False)
    c.data.root = FULL_ROOT
    c.teacher_steps = c.train.steps
    return _quiet(c)

  ncal_spe = _spe("ncaltech101", 16, ncaltech101_train_fraction=0.9)
  return (msres("cifar10", "CIFAR-10 (50,000 / 10,000)", "94.27 %"),
          msres("cifar100", "CIFAR-100 (50,000 / 10,000)", "74.91 %"),
          msres("tinyimagenet", "TinyImageNet (100,000 / 10,000 at 64×64)", "60.59 %"),
          Dataset("ncaltech101", "N-Caltech101 event frames (100 object classes, 90/10 per "
                  "class), VGG-9, T = 10, 48×48, 200 epochs (the paper's hardware row)", True,
                  ncal, ncal_spe, _MD_SNN_NOTES + (
                      "N-Caltech101 split: MD-SNN states neither its split nor its class set; "
                      "this row keeps the library's default, 90/10 per class without "
                      "BACKGROUND_Google (100 classes, `data.ncaltech101_train_fraction=0.9`, "
                      "`data.ncaltech101_background=False`), the common 9:1 practice, so the "
                      "task is the object classes alone. SpQuant's rows use 80/20 with the "
                      "background class; MD-SNN's repository preprocesses with SpikingJelly, "
                      "whose N-Caltech101 keeps BACKGROUND_Google: set "
                      "`data.ncaltech101_background=True` to follow that instead.",)))


def _spquant_datasets(scale: str) -> tuple[Dataset, ...]:
  if scale == "smoke":
    def smoke():
      c = _spquant_student(_smoke(base_config(), 4))
      set_quant(c, "first_layer", "same")  # the MLP has only a first and a last layer
      set_quant(c, "last_layer", "same")
      return c

    return (Dataset("digits", "sklearn digits, digits MLP (both layers at the body's bits), T = 4, "
                    "40 teacher / 20 student steps: a pipeline check, not a result", False,
                    smoke),)
  if scale == "cpu":
    ts, ss = CPU_STEPS["spquant"]["cifar10"]
    tn, sn = CPU_STEPS["spquant"]["nmnist"]
    return (
        Dataset("cifar10", f"CIFAR-10 subset (10,000 train; a fixed 2,000 test images), VGG-9 at "
                f"quarter width instead of ResNet-19 (shrunk to fit 2 CPU cores), T = 2, {ts} "
                f"teacher / {ss} student steps", False,
                lambda: _spquant_student(_cifar_vgg9_quarter(base_config(), 2, ts, ss))),
        Dataset("nmnist", f"N-MNIST recordings as 8 event frames of 16×16×2, small CNN, {tn} "
                f"teacher / {sn} student steps", True,
                lambda: _spquant_student(_nmnist_cnn(base_config(), 8, tn, sn))),
    )

  def cifar():
    c = spquant_resnet19_paper_config("fp", FULL_ROOT)
    # The rows switch the membrane quantizer and the learnable threshold on.
    set_quant(c, "membrane", "none")
    c.model.neuron.learn_threshold = False
    c.teacher_steps = c.train.steps
    return _quiet(c)

  def event(dataset: str):
    def build():
      c = spquant_vgg9_event_paper_config("fp", dataset, FULL_ROOT)
      set_quant(c, "membrane", "none")
      c.model.neuron.learn_threshold = False
      c.teacher_steps = c.train.steps
      return _quiet(c)
    return build

  return (Dataset("cifar10", "CIFAR-10 (50,000 / 10,000), ResNet-19 as SpQuant-SNN's code "
                  "(spike after the residual add, 7×7 stride-2 stem), T = 2, 4-bit SAWB weights, 300 epochs, TET loss, "
                  "Adam 0.01: the paper's setting", False, cifar, 390, _SPQUANT_NOTES),
          Dataset("cifar10dvs", "CIFAR10-DVS (10,000 recordings, 90/10 per class) as 10 "
                  "event frames of 48×48×2, VGG-9, T = 10, 2-bit SAWB weights, TET loss: the "
                  "paper's DVS-CIFAR10 row", True, event("cifar10dvs"),
                  _spe("cifar10dvs", 16, cifar10dvs_train_fraction=0.9),
                  _SPQUANT_NOTES + _SPQUANT_EVENT_NOTES + (
                      "CIFAR10-DVS split: 90/10 per class (`data.cifar10dvs_train_fraction="
                      "0.9`), the common 9:1 practice; SpQuant's own split for it is not "
                      "established here.",)),
          Dataset("ncaltech101", "N-Caltech101 event frames (101 classes with "
                  "BACKGROUND_Google, 80/20 per class), VGG-9, T = 10, 48×48, 2-bit SAWB "
                  "weights, TET loss: a second event dataset (no N-Caltech101 figure in the "
                  "paper lines above)", True, event("ncaltech101"),
                  _spe("ncaltech101", 16, ncaltech101_train_fraction=0.8,
                       ncaltech101_background=True),
                  _SPQUANT_NOTES + _SPQUANT_EVENT_NOTES + (
                      "N-Caltech101 split: 80/20 per class with BACKGROUND_Google kept as a "
                      "class (`data.ncaltech101_train_fraction=0.8`, "
                      "`data.ncaltech101_background=True`), as reported to us from SpQuant's "
                      "code (not re-read here).",)))


def _sew_narrow(c, timesteps: int, width: float, teacher_steps: int, steps: int):
  """SEW-ResNet-18 on the CIFAR-10 subset, narrowed by `width` to fit a 2-core CPU."""
  _cifar_vgg9_quarter(c, timesteps, teacher_steps, steps)
  c.model.name = "sewresnet18"
  c.model.width = width
  return c


def _sew_full(dataset: str, timesteps: int, epochs: int = 300):
  c = base_config()
  c.data.name = dataset
  c.data.root = FULL_ROOT
  c.data.augment = True
  c.model.name = "sewresnet18"
  c.model.timesteps = timesteps
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = c.teacher_steps = epochs * 390
  c.train.log_every = 100
  c.train.eval_every = 390  # every epoch
  c.train.checkpoint_every = 1000
  c.optim.lr = 1e-3
  return _quiet(c)


def _resnet18_kd_full(dataset: str, timesteps: int, epochs: int = FEATURE_KD_EPOCHS):
  """The feature-KD rows at full scale: ResNet-18 (spike after the residual add), SGD 0.1,
  momentum 0.9, weight decay 5e-4, cosine, batch 128, crop + flip, evaluated every epoch."""
  c = _sew_full(dataset, timesteps, epochs)
  c.model.name = "resnet18"
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  return _quiet(c)


CPU_STEPS.update({"emd": {"cifar10": (300, 60)}, "feature_kd": {"cifar10": (200, 60)}})
EMD_BITS = (2, 4)
# (key, label, weight quantizer spec): the students of the `emd` table, each at EMD_BITS.
EMD_QUANTIZERS = (
    ("uniform_max", "uniform, max clip", {"kind": "uniform", "clip": "max"}),
    ("uniform_pct", "uniform, percentile clip (99.9)", {"kind": "uniform", "clip": "percentile",
                                                       "percentile": 99.9}),
    ("sawb", "SAWB", {"kind": "sawb"}),
    ("lsq", "LSQ", {"kind": "lsq"}),
    ("lqnet", "LQ-Net", {"kind": "lqnet"}),
)
UNIFORM_QUANTIZERS = ("uniform_max", "uniform_pct")  # the rows "uniform drifts" is about
FEATURE_KD_TEACHER_T = 4  # the teacher's T; students at 4 and 2


def _emd_datasets(scale: str) -> tuple[Dataset, ...]:
  if scale == "smoke":
    def smoke():
      c = _smoke(base_config(), 2)
      set_quant(c, "first_layer", "same")  # the MLP has only a first and a last layer
      set_quant(c, "last_layer", "same")
      return c

    return (Dataset("digits", "sklearn digits, digits MLP (both layers at the student's bits), "
                    "T = 2, 40 teacher / 20 student steps: a pipeline check, not a result", False,
                    smoke),)
  if scale == "cpu":
    ts, ss = CPU_STEPS["emd"]["cifar10"]
    return (Dataset("cifar10", f"CIFAR-10 subset (10,000 train / a fixed 2,000 test), "
                    f"SEW-ResNet-18 at 1/8 width (8–64 channels; shrunk to fit 2 CPU cores), T = 2, first / last layers "
                    f"full precision, {ts} teacher / {ss} student steps at batch 64", False,
                    lambda: _sew_narrow(base_config(), 2, 0.125, ts, ss)),)
  return (Dataset("cifar10", "CIFAR-10 (50,000 / 10,000), SEW-ResNet-18, T = 4, 300 epochs, "
                  "first / last layers full precision (the paper's model)", False,
                  lambda: _sew_full("cifar10", 4), 390, (
                      "Established: SEW-ResNet on CIFAR-10 and the quantizers compared. Assumed "
                      "(not read from the paper): Adam 1e-3 cosine, batch 128, 300 epochs for "
                      "the teacher and for the students (which start from its weights), T = 4.",
                      AUG_NOT_STATED + ".")),)


def _feature_kd_datasets(scale: str) -> tuple[Dataset, ...]:
  t = FEATURE_KD_TEACHER_T
  if scale == "smoke":
    return (Dataset("digits", f"sklearn digits, digits MLP, teacher T = {t}, 40 teacher / 20 "
                    "student steps: a pipeline check, not a result", False,
                    lambda: _smoke(base_config(), t)),)
  if scale == "cpu":
    ts, ss = CPU_STEPS["feature_kd"]["cifar10"]
    return (Dataset("cifar10", f"CIFAR-10 subset (10,000 train / a fixed 2,000 test) instead "
                    f"of CIFAR-100, SEW-ResNet-18 at 1/8 width (shrunk to fit 2 CPU cores), teacher T = {t}, "
                    f"{ts} teacher / {ss} student steps at batch 64", False,
                    lambda: _sew_narrow(base_config(), t, 0.125, ts, ss)),)
  return (Dataset("cifar100", f"CIFAR-100 (50,000 / 10,000), ResNet-18 (spike after the "
                  f"residual add), T = {t}, {FEATURE_KD_EPOCHS} epochs, SGD 0.1 (the paper's "
                  "model and T)", False, lambda: _resnet18_kd_full("cifar100", t), 390, (
                      "Established: CIFAR-100, ResNet-18, T = 4, the affine projector on "
                      "membranes or spikes, the paper's 80.48 %. Assumed (the usual CIFAR SNN "
                      "recipe of that line of work, not read from the paper): SGD 0.1, "
                      "momentum 0.9 (Nesterov, as the library's SGD), weight decay 5e-4, "
                      f"cosine, batch 128, {FEATURE_KD_EPOCHS} epochs for teacher and students, "
                      "the FP teacher an SNN at T = 4 (the paper also distils from ANNs).",
                      AUG_NOT_STATED + ".")),)


# ---------------------------------------------------------------------------- gpu_short
# (teacher steps, student steps) of every run at scale gpu_short: the full-scale datasets,
# models and batches, trained this long. Sized per dataset with the cost model (`cost`, H100
# roofline plus a per-run overhead): md_snn on one dataset at one seed takes about 6–8
# minutes on one H100 (CIFAR-10 at these steps; TinyImageNet's 64×64 images cost about 4× a
# 32×32 step, so it takes a quarter of them); the other tables take the same steps
# (`--list` gives each one's estimate). A table of several datasets is the sum: check one
# dataset at a time with --datasets.
GPU_SHORT_STEPS = (280, 140)
GPU_SHORT_STEPS_BY_DATASET = {"tinyimagenet": (70, 35)}


def gpu_short_steps(dataset_key: str) -> tuple[int, int]:
  """(teacher steps, student steps) of a gpu_short run on dataset `dataset_key`."""
  return GPU_SHORT_STEPS_BY_DATASET.get(dataset_key, GPU_SHORT_STEPS)


def _short(build: Callable[[], ml_collections.ConfigDict], teacher_steps: int,
           steps: int) -> ml_collections.ConfigDict:
  c = build()
  c.teacher_steps = teacher_steps
  c.train.steps = steps
  c.train.eval_every = 0  # the table measures every run itself after training
  c.train.log_every = min(int(c.train.log_every), 50)
  c.train.checkpoint_every = max(teacher_steps, steps)  # one checkpoint, at the end
  return c


def _with_gpu_short(datasets: Callable[[str], tuple[Dataset, ...]], table: str
                    ) -> Callable[[str], tuple[Dataset, ...]]:
  """`datasets` with scale 'gpu_short': its full-scale datasets at `gpu_short_steps`."""

  def at(scale: str) -> tuple[Dataset, ...]:
    if scale != "gpu_short":
      return datasets(scale)
    from mdsnn_jax.train import cost  # the stored estimate: cost imports this module
    out = []
    for d in datasets("full"):
      ts, ss = gpu_short_steps(d.key)
      est = cost.stored_table_seconds(table, "gpu_short", seeds=1, dataset=d.key)
      when = ("not estimated" if est is None else
              f"~{est / 60:.1f} min at one seed on one H100 by the cost model")
      out.append(Dataset(d.key, f"{d.description}; trained {ts} teacher / {ss} student steps "
                         f"per run ({when}): a check that the full-scale path runs, not a "
                         "result", d.is_event, functools.partial(_short, d.build, ts, ss)))
    return tuple(out)

  return at


SCALE_WITH_STUDENT_EPOCHS = "full"


def with_settings(dataset: Dataset, *, roots: dict[str, str] | None = None,
                  dtype: str | None = None, student_epochs: int | None = None) -> Dataset:
  """`dataset` whose configs read its data from roots[<data name>] (when named there),
  compute in `dtype` ('float32' | 'bfloat16', `model.dtype`; None: as the table sets it) and
  train every student `student_epochs` epochs (full scale: `Dataset.steps_per_epoch` steps
  each; None: the table's default; the teachers keep theirs)."""
  if student_epochs is not None:
    if dataset.steps_per_epoch is None:
      raise ValueError(f"dataset {dataset.key!r} has no epoch length at this scale; "
                       "--student_epochs applies at --scale=full only")
    if int(student_epochs) < 1:
      raise ValueError(f"--student_epochs={student_epochs}; allowed: an integer >= 1")

  def build():
    c = dataset.build()
    if roots and c.data.name in roots:
      c.data.root = roots[c.data.name]
    if dtype is not None:
      c.model.dtype = dtype
    if student_epochs is not None:
      c.train.steps = int(student_epochs) * dataset.steps_per_epoch
    return c

  return dataclasses.replace(dataset, build=build)


def check_student_epochs(student_epochs, scale: str) -> int | None:
  """--student_epochs as an int (None when not given); valid only at --scale=full."""
  if student_epochs is None:
    return None
  if scale != SCALE_WITH_STUDENT_EPOCHS:
    raise ValueError(f"--student_epochs={student_epochs} was given at --scale={scale}; it sets "
                     "the students' training length at --scale=full only (smoke, cpu and "
                     "gpu_short have fixed steps; with --config, set --config.train.steps)")
  try:
    n = int(student_epochs)
  except (TypeError, ValueError):
    raise ValueError(f"--student_epochs={student_epochs!r}; allowed: an integer >= 1") from None
  if n < 1 or str(n) != str(student_epochs).strip():
    raise ValueError(f"--student_epochs={student_epochs!r}; allowed: an integer >= 1")
  return n


def select_datasets(datasets: tuple[Dataset, ...], keys: Iterable[str] | None
                    ) -> tuple[Dataset, ...]:
  """The datasets named by `keys` (None or empty: all), in table order; an unknown key is a
  ValueError listing the scale's datasets."""
  keys = [k for k in (keys or []) if k]
  if not keys:
    return datasets
  known = [d.key for d in datasets]
  unknown = [k for k in keys if k not in known]
  if unknown:
    raise ValueError(f"unknown dataset(s) {unknown}; this table at this scale reads {known}")
  return tuple(d for d in datasets if d.key in keys)


# ------------------------------------------------------------------------------- tables
_MEM = {"model.quant.membrane.kind": "ternary"}
_LT = {**_MEM, "model.neuron.learn_threshold": True}
_NO_EVENT_2T = ("event frames come from the data pipeline at one T for teacher and student; "
                "a teacher at 2·T_s needs its own frames, which the loop does not feed")

MD_SNN = Table(
    name="md_snn",
    title="MD-SNN: membrane-aware distillation of a low-bit SNN, accuracy and crossbar gains",
    rows=(
        Row("fp", "FP teacher", "teacher"),
        Row("ptq", "PTQ (teacher quantized, no training)", "ptq"),
        Row("qat", "QAT, no KD", "student", "none"),
        Row("logit", "QAT + logit KD", "student", "logit"),
        Row("md", "MD (membrane + logit KD)", "student", "md"),
        Row("md_versatile", "MD, versatile teacher (T_t = 2·T_s)", "student", "md",
            teacher_t_factor=2, event_note=_NO_EVENT_2T),
    ),
    baseline="qat",
    datasets=_with_gpu_short(_md_snn_datasets, "md_snn"),
    paper=("MD-SNN (paper): CIFAR-10 MS-ResNet-18 T = 4 low-bit 94.27 %; CIFAR-100 74.91 %; "
           "TinyImageNet 60.59 %; N-Caltech101 81.73 %.",
           "MD-SNN (paper), N-Caltech101 at iso-accuracy, quantized vs FP SNN: 14.85× lower EDAP, "
           "2.64× higher TOPS/W, 6.19× higher TOPS/mm² (FP weight bit width not stated)."),
    columns=("emd_to_fp", "hardware"),
    epochs_note=(f"Students at full scale: {MD_SNN_EPOCHS['default']} epochs on CIFAR-10 / "
                 f"CIFAR-100, {MD_SNN_EPOCHS['tinyimagenet']} on TinyImageNet and 200 on "
                 "N-Caltech101, as long as the teacher, from its weights (assumed: the paper's "
                 "training length for its teacher and its QAT / MD students is not stated in "
                 "what we have read)."),
)

SPQUANT = Table(
    name="spquant",
    title="SpQuant-SNN: 4-bit weights, ternary membranes, membrane-prior pruning",
    rows=(
        Row("fp", "FP", "teacher"),
        Row("w4", "low-bit weights (4-bit; 2-bit on event data at full scale), FP membrane",
            "student", "none", (("model.quant.membrane.kind", "none"),)),
        Row("w4_tern", "low-bit weights, ternary membrane (1.58 bits)", "student", "none",
            tuple(_MEM.items())),
        Row("w4_tern_lt", "+ learnable threshold", "student", "none", tuple(_LT.items())),
        Row("prune_p-0.8", "+ membrane-prior pruning, p = −0.8", "student", "none",
            tuple({**_LT, "model.neuron.prune_prior": -0.8}.items())),
        Row("prune_p0", "+ membrane-prior pruning, p = 0", "student", "none",
            tuple({**_LT, "model.neuron.prune_prior": 0.0}.items())),
        Row("gate", "+ learned gate (ρ = 0.85)", "student", "none",
            tuple({**_LT, "model.neuron.prune_prior": -0.8,
                   "model.neuron.gate_rho": 0.85}.items())),
    ),
    baseline="fp",
    datasets=_with_gpu_short(_spquant_datasets, "spquant"),
    paper=("SpQuant-SNN (paper): CIFAR-10 ResNet-19 T = 2, 4-bit W / 1.58-bit U: FP 94.56, Q 94.11, "
           "Q + prune 93.09 % (5.1× fewer FLOPs); DVS-CIFAR10 VGG-9 T = 10, 2 / 1.58 bits: FP 78.45, "
           "Q 77.94, Q + prune 76.80 %; memory 48.58 MB → 3.75 MB (13×).",
           "SpQuant-SNN's headline: < 1.8 % accuracy drop, > 4.7× fewer FLOPs, 13× less memory."),
    columns=("flops_reduction", "memory"),
    epochs_note=("Students at full scale: 300 epochs on CIFAR-10 and 200 on the event data, the "
                 "reference code's one training recipe (as reported to us), here applied to "
                 "each quantized row started from the FP teacher's weights."),
)


def _emd_rows() -> tuple[Row, ...]:
  rows = [Row("fp", "FP teacher", "teacher")]
  for bits in EMD_BITS:
    for key, label, spec in EMD_QUANTIZERS:
      over = {f"model.quant.weight.{k}": v for k, v in spec.items()}
      over["model.quant.weight.bits"] = bits
      rows.append(Row(f"{key}_w{bits}", f"{label}, {bits}-bit", "student", "none",
                      tuple(over.items())))
  return tuple(rows)


EMD = Table(
    name="emd",
    title="Quantization beyond accuracy: firing drift (EMD to FP) of uniform vs learned quantizers",
    rows=_emd_rows(),
    baseline="fp",
    datasets=_with_gpu_short(_emd_datasets, "emd"),
    paper=("Quantization of SNNs beyond accuracy (paper): on SEW-ResNet (CIFAR-10 / 100), "
           "quantizers of equal accuracy fire differently: uniform quantization drifts from the FP "
           "model's firing-rate distribution (higher EMD), LQ-Net-style learned quantization "
           "preserves it. The paper reports no accuracy figure to set beside ours.",),
    columns=("emd_to_fp", "layer_emd", "dead_fraction"),
    epochs_note=("Students at full scale: 300 epochs from the teacher's weights, as long as "
                 "the teacher (assumed: the paper's training length is not established here)."),
)


def _feature_kd_rows() -> tuple[Row, ...]:
  t = FEATURE_KD_TEACHER_T
  # Students are FP and trained from scratch (not from the teacher's weights), as in KD.
  scratch = (("init_from_teacher", False),)
  kinds = (("none", "no KD", "none", ()),
           ("logit", "logit KD", "logit", ()),
           ("feat_mem", "feature KD, membranes", "feature",
            (("distill.feature_source", "membranes"),)),
           ("feat_spk", "feature KD, spikes", "feature", (("distill.feature_source", "spikes"),)),
           ("feat_logit", "feature (membranes) + logit KD", "feature_logit",
            (("distill.feature_source", "membranes"),)))
  rows = [Row("fp", f"FP teacher, T = {t}", "teacher")]
  for ts in (t, t // 2):
    t_over = () if ts == t else (("model.timesteps", ts), ("distill.teacher_timesteps", t))
    for key, label, method, over in kinds:
      rows.append(Row(f"{key}_t{ts}", f"T = {ts}: {label}", "student", method,
                      scratch + t_over + over))
  return tuple(rows)


FEATURE_KD = Table(
    name="feature_kd",
    title="Feature KD with an affine projector (membranes or spikes) and saliency consistency",
    rows=_feature_kd_rows(),
    baseline="none_t4",  # each T's rows are paired against that T's no-KD row (BASELINES)
    datasets=_with_gpu_short(_feature_kd_datasets, "feature_kd"),
    paper=("KD for SNNs with features and saliency (paper): CIFAR-100, ResNet-18, T = 4, FP: "
           "80.48 % (ANN 79.90 %), +3.49 pp over the non-distilled SNN; feature KD works on "
           "membranes or spikes, and teacher and student agree on which pixels are salient.",),
    columns=("saliency",),
    epochs_note=(f"Students at full scale: {FEATURE_KD_EPOCHS} epochs from scratch, as long as "
                 "the teacher (KD students are trained from scratch, so a full schedule; the "
                 "paper's epoch count is not established here)."),
)
# Rows paired against another row than table.baseline: {table: {row: baseline row}}.
# The teacher is paired against nothing (it is not a student of either T).
BASELINES = {"feature_kd": {r.key: (f"none_t{r.key.rsplit('_t', 1)[1]}" if r.kind == "student"
                                    else r.key) for r in FEATURE_KD.rows}}



# ------------------------------------------------- the MD evidence and its ablations
@dataclasses.dataclass(frozen=True)
class LifTaps:
  """LIF layers named relative to the model (its membrane taps in call order), so a row's
  `distill.layers` fits any network: LifTaps(-2, None, 3) = the last two, LifTaps(1, 3, 4) =
  the two after the stem; `need`: the fewest LIF layers the model must have."""
  start: int | None
  stop: int | None
  need: int

  def resolve(self, taps: list[str]) -> str:
    if len(taps) < self.need:
      raise ValueError(f"this row needs at least {self.need} LIF layers, but the model has "
                       f"{len(taps)}: {taps}")
    return ",".join(taps[self.start:self.stop])


LAST2, LAST3, EARLY2 = LifTaps(-2, None, 3), LifTaps(-3, None, 4), LifTaps(1, 3, 4)


# name -> (classes, stored image shape) of the real datasets, for what needs only the shapes
# (a model's layers, an abstract step) before or without the files. N-Caltech101: 100
# object classes (its "Faces" class was removed from Caltech101) + BACKGROUND_Google.
NOMINAL = {"cifar10": (10, (32, 32, 3)), "cifar100": (100, (32, 32, 3)),
           "tinyimagenet": (200, (64, 64, 3)), "mnist": (10, (28, 28, 1)),
           "nmnist": (10, (34, 34, 2)), "ncaltech101": (100, (180, 240, 2)),
           "cifar10dvs": (10, (128, 128, 2))}


def nominal_info(data_cfg):
  """The `DatasetInfo` the real dataset `data_cfg` names would give, from NOMINAL (no file
  read; the train / test counts are 0), or None for a dataset without an entry there."""
  from mdsnn_jax import data as data_lib
  c = data_lib.registry.parse_config(data_cfg)
  if c.name not in NOMINAL:
    return None
  classes, (h, w, ch) = NOMINAL[c.name]
  if c.name == "ncaltech101" and c.background:
    classes += 1
  if c.image_size is not None:
    h = w = c.image_size
  return data_lib.DatasetInfo(name=c.name, num_classes=classes, image_shape=(h, w, ch),
                              num_train=0, num_test=0, is_event=c.name in data_lib.registry.EVENT_NAMES,
                              timesteps=c.timesteps)


def model_taps(config) -> list[str]:
  """The student's LIF membrane taps in call order (abstract forward pass: no compute)."""
  import jax

  from mdsnn_jax import data as data_lib
  from mdsnn_jax import distill
  from mdsnn_jax import nn as nn_lib
  from mdsnn_jax.train.stages import abstract_variables, sample_input, stage_model_config
  info = nominal_info(config.data) or data_lib.dataset_info(config.data)
  model = nn_lib.create_model(stage_model_config(config, "md"), info.num_classes)
  sample = sample_input(info, int(config.model.timesteps))
  variables = abstract_variables(model, sample)
  _, cols = jax.eval_shape(lambda v: model.apply(v, sample, train=False, mutable=["membranes"]),
                           variables)
  return list(distill.flatten_taps(cols["membranes"]))


def _md_evidence_datasets(scale: str, first_last_bits: str = "2",
                          grid: str = "full") -> tuple[Dataset, ...]:
  if scale == "smoke":
    return (Dataset("digits", "sklearn digits, digits MLP (both layers 2-bit), T = 2, 40 teacher "
                    "/ 20 student steps: a pipeline check, not a result", False,
                    lambda: _md_student(_smoke(base_config(), 2))),)
  if scale == "cpu":
    ends = ("the whole network 2-bit LSQ (first and last layers too)" if first_last_bits == "2"
            else "first and last layers 8-bit uniform")
    return (Dataset("cifar10", "CIFAR-10 subset (10,000 train / all 10,000 test images), VGG-9 "
                    f"at quarter width (16–64 channels), T = 2, {ends}, {grid}-grid LSQ; one "
                    "2,400-step FP teacher, 250-step students at batch 64 "
                    "(`md_cifar10_config`)", False,
                    lambda: _quiet(md_cifar10_config(first_last_bits, grid=grid))),)

  def cifar():
    c = md_cifar10_config(first_last_bits, grid=grid)
    c.data.root = FULL_ROOT
    c.model.width = 1.0
    c.train.global_batch = 128
    c.teacher_steps = 300 * 390  # 300 epochs of 50,000 images at batch 128
    c.train.steps = EVIDENCE_STUDENT_EPOCHS * 390
    c.train.eval_every = 390  # every epoch
    return _quiet(c)

  return (Dataset("cifar10", "CIFAR-10 (50,000 / 10,000), VGG-9 at full width, T = 2, the "
                  f"cpu setting's students, 300-epoch teacher, {EVIDENCE_STUDENT_EPOCHS}-epoch "
                  "students", False, cifar, 390, (
                      "Our own experiment (no paper recipe): Adam 1e-3 cosine, batch 128.",
                      "augmentation: random crop (4-pixel padding) + horizontal flip only.")),)


_SYM = (("model.quant.weight.grid", "symmetric"),)
MD_EVIDENCE = Table(
    name="md_evidence",
    title="MD evidence: one FP teacher, the same low-bit student trained with and without KD",
    rows=(
        Row("fp", "FP teacher", "teacher"),
        Row("ptq", "PTQ (teacher quantized, no training)", "ptq", ptq_of="none"),
        Row("none", "QAT, no KD", "student", "none"),
        Row("logit", "QAT + logit KD", "student", "logit"),
        Row("md", "QAT + MD (membrane + logit KD)", "student", "md"),
        Row("mdonly", "QAT + membrane KD only", "student", "mdonly"),
        Row("feature", "QAT + affine-projector feature KD only", "student", "feature"),
        Row("feature_logit", "QAT + feature KD + logit KD", "student", "feature_logit"),
        Row("ptq_sym", "symmetric grid: PTQ", "ptq", ptq_of="none_sym"),
        Row("none_sym", "symmetric grid: QAT, no KD", "student", "none", _SYM),
        Row("logit_sym", "symmetric grid: QAT + logit KD", "student", "logit", _SYM),
        Row("md_sym", "symmetric grid: QAT + MD", "student", "md", _SYM),
    ),
    baseline="none",
    datasets=_with_gpu_short(_md_evidence_datasets, "md_evidence"),
    paper=("MD-SNN (paper): distilling the FP teacher's membrane potentials into the low-bit "
           "student recovers accuracy that QAT alone loses (CIFAR-10 MS-ResNet-18 T = 4 low-bit "
           "94.27 %).",),
    columns=("emd_to_fp",),
    shared_teacher=True,
    default_rows=("fp", "ptq", "none", "logit", "md", "ptq_sym", "none_sym", "logit_sym",
                  "md_sym"),
    epochs_note=(f"Students at full scale: {EVIDENCE_STUDENT_EPOCHS} epochs from the teacher's "
                 "weights (our own experiment: the cpu setting's students scaled up, not a "
                 "paper's recipe)."),
)

_T1 = {"model.timesteps": 1, "distill.teacher_timesteps": 2}
_ALL2 = {"model.quant.first_layer.kind": "same", "model.quant.last_layer.kind": "same"}
# variant -> (method, dotted overrides, what it asks, the no-KD variant it is paired with).
ABLATION_VARIANTS: dict[str, tuple[str, dict, str, str]] = {
    "none": ("none", {}, "baseline: QAT, no KD", "none"),
    "logit": ("logit", {}, "logit KD, β = 1, τ = 4 (table)", "none"),
    "md": ("md", {}, "MD, α = 1, β = 1, τ = 4 (table)", "none"),
    "mdonly": ("mdonly", {}, "membrane KD only, α = 1 (all LIF layers)", "none"),
    "logit_tau1": ("logit", {"distill.temperature": 1.0}, "logit KD at τ = 1", "none"),
    "mdonly_a10": ("mdonly", {"distill.alpha": 10.0}, "membrane KD only, α = 10", "none"),
    "mdonly_rawmse": ("mdonly", {"distill.decorrelate": False},
                      "membrane KD on raw membranes (no per-(t,c) standardisation)", "none"),
    "mdonly_late": ("mdonly", {"distill.layers": LAST2},
                    "membrane KD on the last two LIF layers only", "none"),
    "T1_none": ("none", {"model.timesteps": 1}, "student T = 1, no KD", "T1_none"),
    "T1_mdonly_prefix": ("mdonly", {**_T1, "distill.align": "prefix"},
                         "student T = 1, teacher T = 2, align = prefix", "T1_none"),
    "T1_mdonly_window": ("mdonly", {**_T1, "distill.align": "window_mean"},
                         "student T = 1, teacher T = 2, align = window_mean", "T1_none"),
    "mdonly_a0.1": ("mdonly", {"distill.alpha": 0.1}, "membrane KD only, α = 0.1", "none"),
    "md_b0.1": ("md", {"distill.beta": 0.1}, "MD with a light logit term, α = 1, β = 0.1",
                "none"),
    "mdonly_early": ("mdonly", {"distill.layers": EARLY2},
                     "membrane KD on the first two hidden LIF layers after the stem", "none"),
    "feature": ("feature", {"distill.feature_layers": LAST3},
                "affine-projector feature KD only (γ = 1, time-mean membranes of the last 3 LIF "
                "layers)", "none"),
    "all2_none": ("none", _ALL2, "first/last layer at the body's bits too, no KD", "all2_none"),
    "all2_mdonly": ("mdonly", _ALL2, "first/last layer at the body's bits too, membrane KD only",
                    "all2_none"),
    "all2_md": ("md", _ALL2, "first/last layer at the body's bits too, MD", "all2_none"),
}

MD_ABLATION = Table(
    name="md_ablation",
    title="Why does (or doesn't) membrane distillation help? Ablations around the MD evidence",
    rows=(Row("fp", "FP teacher", "teacher"),) + tuple(
        Row(name, f"{name}: {what}", "student", method, tuple(over.items()))
        for name, (method, over, what, _) in ABLATION_VARIANTS.items()),
    baseline="none",
    datasets=_with_gpu_short(lambda scale: _md_evidence_datasets(scale, "8", "symmetric"),
                             "md_ablation"),
    paper=("MD-SNN (paper): membrane distillation with logit KD; no ablation figures to set "
           "beside ours.",),
    columns=("emd_to_fp",),
    shared_teacher=True,
    run_prefix="abl_",
    epochs_note=(f"Students at full scale: {EVIDENCE_STUDENT_EPOCHS} epochs from the teacher's "
                 "weights (our own experiment: the cpu setting's students scaled up, not a "
                 "paper's recipe)."),
)

TABLES: dict[str, Table] = {t.name: t for t in (MD_SNN, SPQUANT, EMD, FEATURE_KD, MD_EVIDENCE,
                                                 MD_ABLATION)}
BASELINES["md_evidence"] = {"fp": "fp", **{r.key: "none_sym" for r in MD_EVIDENCE.rows
                                           if r.key.endswith("_sym")}}
BASELINES["md_ablation"] = {"fp": "fp", **{k: v[3] for k, v in ABLATION_VARIANTS.items()}}

# Seconds per table at each scale (3 seeds), measured: see ESTIMATE_NOTE.
ESTIMATES_S: dict[str, dict[str, float | None]] = {
    "md_snn": {"smoke": 65.0, "cpu": 1906.0},
    "spquant": {"smoke": 70.0, "cpu": 1023.0},
    "emd": {"smoke": None, "cpu": 1270.0},
    "feature_kd": {"smoke": None, "cpu": 1949.0},
    "md_evidence": {"smoke": 45.0, "cpu": 2550.0},
    "md_ablation": {"smoke": 100.0, "cpu": 6200.0},
}
ESTIMATE_NOTE = (
    "Times: measured with 3 seeds on a 2-core Xeon, each table's first run, everything trained "
    "(smoke: shared with other jobs, load ~4; cpu: load ~2-3, the first command's wall time; "
    "results/tables/<table>.md gives the runs' training time). md_evidence at cpu: its 5-seed "
    "run's teacher (681 s) + 3/5 of its students (2,910 s) + measuring; md_ablation at cpu is "
    "derived from those per-run times (18 variants × 3 seeds × 97 s), not run. full and "
    "gpu_short: estimated for one H100 by the cost model (`mdsnn_jax/train/cost.py`: XLA's "
    "count of each run's train-step FLOPs and bytes, a roofline, a per-run overhead), not "
    "measured. Each table's training steps per seed are listed above.")


def baseline_of(table: "Table", row_key: str) -> str:
  """The row that `row_key`'s accuracy Δ is paired against."""
  return BASELINES.get(table.name, {}).get(row_key, table.baseline)


def training_steps(table: "Table", dataset: "Dataset") -> tuple[int, int]:
  """(teacher steps, student steps) per seed of `table` on `dataset`, from its configs."""
  cfgs = row_configs(table, dataset)
  teachers = sum(int(c.get("teacher_steps", c.train.steps)) for k, c in cfgs.items()
                 if k.startswith("teacher"))
  students = sum(int(c.train.steps) for k, c in cfgs.items() if not k.startswith("teacher"))
  return teachers, students


# ----------------------------------------------------------------------------- checking
def get_table(name: str) -> Table:
  if name not in TABLES:
    raise ValueError(f"unknown table {name!r}; allowed: {sorted(TABLES)}")
  return TABLES[name]


def check_scale(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; allowed: {list(SCALES)}")
  return scale


def parse_seeds(text: str, scale: str) -> list[int]:
  """'0,1,2' -> [0, 1, 2]: distinct non-negative ints, at least MIN_SEEDS[scale]."""
  if scale != CONFIG_SCALE:
    check_scale(scale)
  parts = [p.strip() for p in str(text).split(",") if p.strip()]
  need = MIN_SEEDS[scale]
  allowed = (f"allowed: a comma-separated list of at least {need} distinct non-negative integer "
             f"seed(s) at scale {scale!r}, e.g. --seeds=0,1,2")
  if not parts:
    raise ValueError(f"empty seed list {text!r}; {allowed}")
  try:
    seeds = [int(p) for p in parts]
  except ValueError:
    raise ValueError(f"invalid seed list {text!r}; {allowed}") from None
  if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"invalid seed list {text!r} (negative or repeated); {allowed}")
  if len(seeds) < need:
    raise ValueError(f"{len(seeds)} seed(s) {seeds} at scale {scale!r}: accuracy is mean ± std "
                     f"over >= {need} seeds; {allowed}")
  return seeds


def override(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """A locked copy of `config` with the dotted fields of `overrides` set (an unknown field is
  a KeyError naming it)."""
  cfg = copy.deepcopy(config)
  cfg.lock()
  cfg.update_from_flattened_dict(dict(overrides))
  return cfg


def teacher_config(base, factor: int = 1) -> ml_collections.ConfigDict:
  cfg = copy.deepcopy(base)
  if factor != 1:
    cfg.model.timesteps = int(base.model.timesteps) * factor
  return cfg


def student_config(base, row: Row, taps: list[str] | None = None) -> ml_collections.ConfigDict:
  """Row's student config: `base` with its overrides (`LifTaps` resolved against `taps`, the
  model's LIF layers; found by an abstract forward when not given)."""
  over = dict(row.overrides)
  if any(isinstance(v, LifTaps) for v in over.values()):
    taps = model_taps(base) if taps is None else taps
    over = {k: v.resolve(taps) if isinstance(v, LifTaps) else v for k, v in over.items()}
  cfg = override(base, over)
  if row.teacher_t_factor != 1:
    with cfg.unlocked():
      cfg.distill.teacher_timesteps = int(base.model.timesteps) * row.teacher_t_factor
  return cfg


def plan(table: Table, dataset: Dataset) -> tuple[dict[str, Any], dict[str, str]]:
  """({teacher key or row key: config} of every run of the table on `dataset` (seed unset),
  {row key: why it cannot run here} of the rows that cannot).

  Besides `Row.available`, a student row cannot run when it names LIF layers the model does
  not have (`LifTaps`), or asks for a teacher at another T than its table's teacher."""
  base = dataset.build()
  configs: dict[str, Any] = {}
  notes: dict[str, str] = {}
  taps = None
  for row in table.rows:
    ok, why = row.available(dataset.is_event)
    if not ok:
      notes[row.key] = why
      continue
    if row.kind == "ptq":
      continue
    if row.kind == "teacher":
      configs[TEACHERS[0]] = teacher_config(base)
      continue
    if taps is None and any(isinstance(v, LifTaps) for _, v in row.overrides):
      taps = model_taps(base)
    try:
      cfg = student_config(base, row, taps)
    except ValueError as e:  # a LifTaps the model cannot fill
      notes[row.key] = str(e)
      continue
    want = int(base.model.timesteps) * row.teacher_t_factor
    asked = int(cfg.distill.get("teacher_timesteps") or 0)  # 0: the teacher runs at the student's T
    if asked and asked != want:
      notes[row.key] = (f"needs a teacher at T = {asked}, but this table's teacher runs at "
                        f"T = {want} (the config's model.timesteps)")
      continue
    if row.teacher not in configs:
      configs[row.teacher] = teacher_config(base, row.teacher_t_factor)
    configs[row.key] = cfg
  for row in table.rows:  # a PTQ row reads its source row's student
    if row.kind == "ptq" and row.key not in notes and row.ptq_of not in configs:
      notes[row.key] = f"its source row {row.ptq_of!r} does not run here"
  return configs, notes


def row_configs(table: Table, dataset: Dataset) -> dict[str, Any]:
  """{teacher key or row key: config} of every run of the table on `dataset` (seed unset)."""
  return plan(table, dataset)[0]


def select_rows(table: Table, keys: Iterable[str] | None) -> Table:
  """`table` with only the rows `keys` (None: `table.default_rows`, else all) and the rows they
  need: the FP teacher, each row's Δ baseline and each PTQ row's source. An unknown key is a
  ValueError listing the table's rows."""
  if keys is None:
    if table.default_rows is None:
      return table
    keys = table.default_rows
  keys = [k for k in keys if k]
  known = [r.key for r in table.rows]
  unknown = [k for k in keys if k not in known]
  if unknown or not keys:
    raise ValueError(f"unknown rows {unknown} of table {table.name!r}; allowed: {known}"
                     if unknown else f"no rows named; allowed: {known}")
  want = set(keys) | {r.key for r in table.rows if r.kind == "teacher"}
  by_key = {r.key: r for r in table.rows}
  for k in list(want):
    want.add(baseline_of(table, k))
    if by_key[k].kind == "ptq":
      want.add(by_key[k].ptq_of)
  return dataclasses.replace(table, rows=tuple(r for r in table.rows if r.key in want))


# ------------------------------------------------------------------------------ recipes
RECIPE_FIELDS = ("model", "data", "training", "optimizer", "augmentation", "loss",
                 "quantization", "evaluation")


def _g(section, key, default=None):
  return section.get(key, default) if hasattr(section, "get") else default


def _optimizer_text(optim) -> str:
  name = str(_g(optim, "name", "adam"))
  lr = float(_g(optim, "lr", 1e-3))
  wd = float(_g(optim, "weight_decay", 0.0) or 0.0)
  warm = int(_g(optim, "warmup_steps", 0) or 0)
  schedule = str(_g(optim, "schedule", "cosine"))
  sched = ("cosine decay to 0 over the run's steps" if schedule == "cosine" else "constant")
  if warm:
    sched = f"{warm}-step linear warm-up, then {sched}"
  if name == "sgd":
    head = f"SGD, Nesterov momentum {float(_g(optim, 'momentum', 0.9)):g}"
    decay = f", weight decay {wd:g} (L2, added to the gradient)" if wd else ", no weight decay"
  elif name == "adamw" or (name == "adam" and wd):
    head, decay = "AdamW", f", weight decay {wd:g} (decoupled)"
  else:
    head, decay = "Adam", ", no weight decay"
  return f"{head}, lr {lr:g}, {sched}{decay}"


def _augmentation_text(data) -> str:
  from mdsnn_jax.data import registry
  name = str(data.name)
  parts = []
  if name in registry.CIFAR_LIKE:
    parts.append("random crop (4-pixel zero padding) + horizontal flip" if _g(data, "augment")
                 else "no crop / flip")
    cut = int(_g(data, "cutout", 0) or 0)
    parts.append(f"Cutout {cut}×{cut}" if cut else "no Cutout")
    aa = str(_g(data, "autoaugment", "none") or "none")
    parts.append(f"AutoAugment '{aa}' policy" if aa != "none" else "no AutoAugment")
  elif name in registry.EVENT_NAMES or name == "cifar10dvs":
    ev = str(_g(data, "event_augment", "none") or "none")
    parts.append(f"event augmentation: {ev}" if ev != "none" else "no event augmentation")
  else:
    parts.append("none")
  return ", ".join(parts)


def _data_text(data) -> str:
  from mdsnn_jax.train.config import nominal_train_count
  name = str(data.name)
  text = name
  if _g(data, "image_size"):
    text += f", resized to {int(data.image_size)}×{int(data.image_size)}"
  if name == "ncaltech101":
    bg = bool(_g(data, "ncaltech101_background", False))
    frac = float(_g(data, "ncaltech101_train_fraction", 0.9))
    text += (f", split {round(100 * frac)}/{round(100 * (1 - frac))} per class, "
             + ("BACKGROUND_Google kept as a class (101 classes)" if bg else
                "without BACKGROUND_Google (100 classes)"))
  if name == "cifar10dvs":
    frac = float(_g(data, "cifar10dvs_train_fraction", 0.9))
    text += f", split {round(100 * frac)}/{round(100 * (1 - frac))} per class"
  if _g(data, "test_subset"):
    text += f", a fixed {int(data.test_subset):,} test examples"
  n = nominal_train_count(data)
  if n is not None:
    text += f" ({'≈' if name in ('ncaltech101', 'cifar10dvs') else ''}{n:,} training examples)"
  return text


def _model_text(config) -> str:
  m = config.model
  text = str(m.name)
  if float(_g(m, "width", 1.0)) != 1.0:
    text += f" at width {float(m.width):g}"
  text += f", T = {int(m.timesteps)}"
  frames = _g(config.data, "timesteps")
  if frames:
    text += (" event frames" if int(frames) == int(m.timesteps)
             else f" on {int(frames)} event frames")
  n = m.neuron
  lif = []
  if _g(n, "decay") is not None:
    lif.append(f"λ = {float(n.decay):g}")
  if _g(n, "threshold") is not None:
    lif.append(f"θ = {float(n.threshold):g}")
  if _g(n, "learn_threshold"):
    lif.append("learnable threshold")
  if _g(n, "prune_prior") is not None:
    lif.append(f"membrane-prior pruning p = {float(n.prune_prior):g}")
  if _g(n, "gate_rho") is not None:
    lif.append(f"learned gate ρ = {float(n.gate_rho):g}")
  if lif:
    text += " (" + ", ".join(lif) + ")"
  if str(_g(m, "dtype", "float32")) != "float32":
    text += f", computed in {m.dtype}"
  return text


def _loss_text(config, stage: str) -> str:
  loss = config.loss
  kind = str(_g(loss, "kind", "ce"))
  text = ("TET: (1 − λ)·mean_t CE(o_t, y) + λ·MSE(o_t, 1), λ = "
          f"{float(_g(loss, 'tet_lambda', 0.05)):g}" if kind == "tet" else "cross-entropy")
  if stage == "md":
    d = config.distill
    terms = []
    if float(d.alpha) > 0:
      terms.append(f"membrane KD α = {float(d.alpha):g} (layers {d.layers})")
    if float(d.beta) > 0:
      terms.append(f"logit KD β = {float(d.beta):g}, τ = {float(d.temperature):g}")
    if float(d.gamma) > 0:
      terms.append(f"feature KD γ = {float(d.gamma):g} on {d.feature_source}")
    t_t = int(_g(d, "teacher_timesteps", 0) or 0)
    if terms:
      text += " + " + " + ".join(terms)
    if t_t:
      text += f"; teacher at T = {t_t}"
  return text


def recipe_fields(config, stage: str = "fp") -> dict[str, str]:
  """One run's recipe, derived from its config: {field: text} for RECIPE_FIELDS. `config`
  is the run's config as the table gives it (a teacher's: `teacher_steps` steps; a
  student's: `train.steps`), `stage` 'fp', 'qat' or 'md' (the KD terms on)."""
  from mdsnn_jax.train.config import nominal_train_count
  from mdsnn_jax.train.stages import stage_model_config
  steps = int(config.get("teacher_steps", config.train.steps)) if stage == "fp" else int(
      config.train.steps)
  batch = int(config.train.global_batch)
  n = nominal_train_count(config.data)
  training = f"{steps:,} steps at batch {batch}"
  if n:
    spe = n // batch
    training += (f" ({steps // spe} epochs of {spe} steps)" if spe and steps % spe == 0 else
                 f" ({steps * batch / n:.4g} epochs)")
  if stage != "fp":
    training += (", from the FP teacher's weights" if config.get("init_from_teacher", True)
                 else ", from scratch")
  every = int(config.train.eval_every or 0)
  if every:
    epoch = n // batch if n else None
    evaluation = (f"test split every {every:,} steps" + (" (every epoch)" if epoch == every else
                                                         "") + " and at the end; final and best "
                  "reported")
  else:
    evaluation = "test split at the end only (final)"
  from mdsnn_jax.train.reproduce import quantization_of
  quant = quantization_of(stage_model_config(config, stage).to_dict())
  return {"model": _model_text(config), "data": _data_text(config.data),
          "training": training, "optimizer": _optimizer_text(config.optim),
          "augmentation": _augmentation_text(config.data), "loss": _loss_text(config, stage),
          "quantization": quant, "evaluation": evaluation}


def recipe(config, stage: str = "fp") -> str:
  """`recipe_fields` as one line: 'model: ...; data: ...; ...'."""
  return "; ".join(f"{k}: {v}" for k, v in recipe_fields(config, stage).items())


def dataset_recipe(table: Table, dataset: Dataset, plan_: tuple | None = None) -> dict:
  """The recipe of every run of `table` on `dataset`: {'common': {field: text} shared by every
  run, 'runs': {run key: {field: text} where it differs}, 'notes': [...]} (the teacher keys
  and the student rows; from their configs)."""
  from mdsnn_jax.train.cost import _as_student
  configs, _ = plan_ if plan_ is not None else plan(table, dataset)
  by_key = {r.key: r for r in table.rows}
  per_run: dict[str, dict] = {}
  for key, cfg in configs.items():
    row = by_key.get(key)
    if row is None or row.kind == "teacher" or key.startswith("teacher"):
      per_run[key] = recipe_fields(cfg, "fp")
    else:
      stage, c = _as_student(cfg, row.method)
      per_run[key] = recipe_fields(c, stage)
  def shared(runs: list[dict], skip=()) -> dict:
    return {f: runs[0][f] for f in RECIPE_FIELDS
            if runs and f not in skip and len({r[f] for r in runs}) == 1}

  common = shared(list(per_run.values()))
  teachers = [k for k in per_run if k.startswith("teacher")]
  students = [k for k in per_run if k not in teachers]
  student_common = shared([per_run[k] for k in students], common) if len(students) > 1 else {}
  runs = {k: {f: v for f, v in r.items() if f not in common
              and (k in teachers or f not in student_common)} for k, r in per_run.items()}
  return {"common": common, "students": student_common, "runs": runs,
          "notes": list(dataset.notes)}


def recipe_lines(recipe_: dict, labels: dict[str, str] | None = None) -> list[str]:
  """Markdown lines of a `dataset_recipe`: the fields every run shares, those every student
  shares, then each run's own."""
  labels = labels or {}
  lines = ["Recipe (derived from the runs' configs):", ""]
  lines += [f"- {k}: {v}" for k, v in recipe_["common"].items()]
  if recipe_.get("students"):
    lines.append("- every student row: " + "; ".join(
        f"{k}: {v}" for k, v in recipe_["students"].items()))
  for key, fields in recipe_["runs"].items():
    if fields:
      label = labels.get(key, "FP teacher" if key == TEACHERS[0] else
                         "FP teacher at 2·T" if key.startswith("teacher") else key)
      lines.append(f"- `{key}` ({label}): " + "; ".join(f"{k}: {v}" for k, v in fields.items()))
  if recipe_.get("notes"):
    lines += ["", "Recipe notes:", ""] + [f"- {n}" for n in recipe_["notes"]]
  return lines
