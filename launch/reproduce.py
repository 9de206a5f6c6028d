"""Reproduces a paper table with one command: runs its rows (resuming unfinished runs,
reading back finished ones) and writes <workdir>/<table>.{md,csv,json,png}.

    python launch/reproduce.py --list
    python launch/reproduce.py --table=md_snn --workdir=runs/tables --scale=smoke
    python launch/reproduce.py --table=spquant --workdir=runs/tables --scale=cpu --seeds=0,1,2
    python launch/reproduce.py --table=md_evidence --workdir=runs/tables --scale=cpu
    python launch/reproduce.py --table=md_evidence --rows=none,md --workdir=runs/mine \
        --config=launch/configs/md_cifar10.py:2 --seeds=0
    python launch/reproduce.py --table=md_snn --workdir=runs/full --scale=full \
        --data_root=cifar10=/data/cifar,cifar100=/data/cifar100,tinyimagenet=/data/tin,ncaltech101=/data/N-Caltech101 --dry_run
    python launch/reproduce.py --table=md_snn --workdir=runs/full --scale=full \
        --datasets=cifar10 --data_root=cifar10=/data/cifar --student_epochs=100 --dry_run

--scale=full and --scale=gpu_short read every dataset from --data_root (nothing from
../shared/data), refuse a folder whose split sizes are not the real dataset's, and refuse to
train on a CPU unless --allow_cpu. Before any training, every dataset is opened and counted,
every run's step traced and the free disk checked; every problem found is one `error:` line
(exit 2), and nothing is created. --dry_run does that, then prints each run's steps, epochs,
data and estimated hours, and trains nothing.

At --scale=full every run evaluates on the test split each epoch, and the table file gives
each row's final and best-epoch accuracy and its recipe (model, T, epochs, optimizer,
augmentation, loss, quantization), derived from the configs. --student_epochs=N (full scale
only) trains every student N epochs instead of the table's default (which the table file
states with its reason). --datasets runs only some of the table's datasets (their
--data_root alone is needed); give each such run its own --out.

--rows runs only those rows (and the rows they need: the teacher, each row's no-KD
baseline, each PTQ row's source). --config runs the table's rows on your own training config
instead of a scale's datasets (>= 1 seed; the runs live in --workdir itself).
`launch/md_table.py` and `launch/md_ablation.py` are this runner on tables `md_evidence` and
`md_ablation` with a --config.

Tables and rows: `mdsnn_jax/train/tables.py`; the driver: `mdsnn_jax/train/reproduce.py`.
"""
from __future__ import annotations

import pathlib

from absl import flags
from ml_collections import config_flags

from mdsnn_jax.train import cli, preflight, reproduce, tables

_TABLE = flags.DEFINE_string("table", None, f"One of {sorted(tables.TABLES)}.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the runs and the table files.")
_SCALE = flags.DEFINE_string("scale", "smoke", f"One of {list(tables.SCALES)}.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds (>= 3 at cpu / full).")
_ROWS = flags.DEFINE_string("rows", "", "Comma-separated row keys (default: the table's rows).")
_OUT = flags.DEFINE_string("out", "", "Basename of the table files (default: the table name).")
_DATASETS = flags.DEFINE_string(
    "datasets", "", "Comma-separated dataset keys of the table to run (default: all of the "
    "scale's; --list names them).")
_STUDENT_EPOCHS = flags.DEFINE_string(
    "student_epochs", None, "--scale=full only: every student row trains this many epochs "
    "(an integer >= 1) instead of the table's default (stated, with its reason, in the table "
    "file). Runs with other epochs are other runs: use another --workdir.")
_LIST = flags.DEFINE_bool("list", False, "List every table, its rows, datasets and time.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
_COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", True, "Keep XLA's compiled programs in <workdir>/.jax_cache, so the runs "
    "of every seed (the same programs) compile once.")
_DATA_ROOT = flags.DEFINE_string(
    "data_root", "", "NAME=PATH[,NAME=PATH...]: the folder of each dataset the table reads "
    f"(NAME one of {list(preflight.ROOT_NAMES)}; for cifar10 / cifar100 / mnist a tfds "
    "data_dir works too). Required at --scale=full and gpu_short, where each must hold the "
    "whole dataset.")
_ALLOW_CPU = flags.DEFINE_bool("allow_cpu", False, "Train --scale=full / gpu_short on a CPU "
                               "anyway (refused by default: days to years of compute).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Run the pre-flight, print every run's steps, "
                             "epochs, data and estimated H100 hours, and train nothing.")
_DEVICES = flags.DEFINE_integer("devices", 8, "The device count --dry_run's per-device "
                                "estimate assumes (besides one H100).")
_PRECISION = flags.DEFINE_enum(
    "precision", None, list(reproduce.PRECISIONS),
    "Every run's compute precision (model.dtype: fp32 = float32, bf16 = bfloat16; default: "
    f"each config's own, float32). {reproduce.PRECISION_NOTE}. Runs made at another "
    "precision are other runs: use another --workdir.")
config_flags.DEFINE_config_file("config", None, "Run the table's rows on this training config "
                                "instead of --scale's datasets.")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; allowed: --table, --workdir, --scale, "
                     "--seeds, --rows, --config, --out, --list, --overwrite, --compile_cache, "
                     "--data_root, --allow_cpu, --dry_run, --devices, --precision, "
                     "--student_epochs, --datasets")
  if _LIST.value:
    print(reproduce.describe_tables())
    return
  if _TABLE.value is None:
    raise ValueError(f"--table is required; allowed: {sorted(tables.TABLES)} (or --list)")
  config = flags.FLAGS.config
  if config is not None and flags.FLAGS["scale"].present:
    raise ValueError(f"--scale={_SCALE.value!r} and --config were both given; a table runs "
                     "either a scale's datasets or your config")
  rows = [r for r in _ROWS.value.split(",") if r] or None
  scale = reproduce.CONFIG_SCALE if config is not None else _SCALE.value
  reproduce.check_inputs(_TABLE.value, scale, _SEEDS.value, rows)
  student_epochs = reproduce.tables_lib.check_student_epochs(_STUDENT_EPOCHS.value, scale)
  datasets = [d for d in _DATASETS.value.split(",") if d] or None
  if not _WORKDIR.value:
    raise ValueError("--workdir is required (the folder of the runs and the table files)")
  roots = preflight.parse_data_roots(_DATA_ROOT.value)
  dtype = reproduce.parse_precision(_PRECISION.value)
  if _DEVICES.value < 1:
    raise ValueError(f"--devices={_DEVICES.value}; allowed: an integer >= 1")
  common = dict(scale=_SCALE.value, seeds=_SEEDS.value, rows=rows, config=config,
                data_roots=roots, dtype=dtype, student_epochs=student_epochs,
                datasets=datasets)
  # A failed pre-flight raises one PreflightError; `cli` prints each of its problems as an
  # `error:` line and exits 2.
  if _DRY_RUN.value:
    print(reproduce.dry_run(_TABLE.value, _WORKDIR.value, devices=_DEVICES.value, **common))
    return
  result = reproduce.run_table(_TABLE.value, _WORKDIR.value, overwrite=_OVERWRITE.value,
                               out=_OUT.value or None, allow_cpu=_ALLOW_CPU.value,
                               compile_cache=_COMPILE_CACHE.value, **common)
  # The headline rows only: the full table (every section, seed and provenance) is in the
  # files, and a terminal of hundreds of lines hides the numbers a user ran for.
  base = pathlib.Path(_WORKDIR.value) / (result.get("basename") or _TABLE.value)
  print(f"{reproduce.render_summary(result)}\nFull table: {base}.md (.json, .csv, .png)")


if __name__ == "__main__":
  cli.run(main)
