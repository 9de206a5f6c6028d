"""Reproduces a paper table with one command: runs its rows (resuming unfinished runs,
reading back finished ones) and writes <workdir>/<table>.{md,csv,json,png}.

    python launch/reproduce.py --list
    python launch/reproduce.py --table=md_snn --workdir=runs/tables --scale=smoke
    python launch/reproduce.py --table=spquant --workdir=runs/tables --scale=cpu --seeds=0,1,2
    python launch/reproduce.py --table=emd --workdir=runs/tables --scale=smoke --seeds=0
    python launch/reproduce.py --table=feature_kd --workdir=runs/tables --scale=smoke --seeds=0

Tables and rows: `mdsnn_jax/train/tables.py`; the driver: `mdsnn_jax/train/reproduce.py`.
"""
from __future__ import annotations

import os

import jax
from absl import flags

from mdsnn_jax.train import cli, reproduce, tables

_TABLE = flags.DEFINE_string("table", None, f"One of {sorted(tables.TABLES)}.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the runs and the table files.")
_SCALE = flags.DEFINE_string("scale", "smoke", f"One of {list(tables.SCALES)}.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds (>= 3 at cpu / full).")
_LIST = flags.DEFINE_bool("list", False, "List every table, its rows, datasets and time.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
_COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", True, "Keep XLA's compiled programs in <workdir>/.jax_cache, so the runs "
    "of every seed (the same programs) compile once.")


def _use_compile_cache(workdir: str) -> None:
  # Each run of a table is a fresh train_and_evaluate that would recompile the same train and
  # eval steps (~8 s each on 2 CPU cores); jax's persistent cache makes seeds 1.. reuse seed 0's.
  if jax.config.jax_compilation_cache_dir:  # the user's own cache wins
    return
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; allowed: --table, --workdir, --scale, "
                     "--seeds, --list, --overwrite")
  if _LIST.value:
    print(reproduce.describe_tables())
    return
  if _TABLE.value is None:
    raise ValueError(f"--table is required; allowed: {sorted(tables.TABLES)} (or --list)")
  reproduce.check_inputs(_TABLE.value, _SCALE.value, _SEEDS.value)
  if not _WORKDIR.value:
    raise ValueError("--workdir is required (the folder of the runs and the table files)")
  if _COMPILE_CACHE.value:
    _use_compile_cache(_WORKDIR.value)
  result = reproduce.run_table(_TABLE.value, _WORKDIR.value, scale=_SCALE.value,
                               seeds=_SEEDS.value, overwrite=_OVERWRITE.value)
  print(reproduce.render_markdown(result))


if __name__ == "__main__":
  cli.run(main)
