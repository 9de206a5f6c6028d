"""Reproduces a paper table with one command: runs its rows (resuming unfinished runs,
reading back finished ones) and writes <workdir>/<table>.{md,csv,json,png}.

    python launch/reproduce.py --list
    python launch/reproduce.py --table=md_snn --workdir=runs/tables --scale=smoke
    python launch/reproduce.py --table=spquant --workdir=runs/tables --scale=cpu --seeds=0,1,2
    python launch/reproduce.py --table=md_evidence --workdir=runs/tables --scale=cpu
    python launch/reproduce.py --table=md_evidence --rows=none,md --workdir=runs/mine \
        --config=launch/configs/md_cifar10.py:2 --seeds=0

--rows runs only those rows (and the rows they need: the teacher, each row's no-KD
baseline, each PTQ row's source). --config runs the table's rows on your own training config
instead of a scale's datasets (>= 1 seed; the runs live in --workdir itself).
`launch/md_table.py` and `launch/md_ablation.py` are this runner on tables `md_evidence` and
`md_ablation` with a --config.

Tables and rows: `mdsnn_jax/train/tables.py`; the driver: `mdsnn_jax/train/reproduce.py`.
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mdsnn_jax.train import cli, reproduce, tables

_TABLE = flags.DEFINE_string("table", None, f"One of {sorted(tables.TABLES)}.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the runs and the table files.")
_SCALE = flags.DEFINE_string("scale", "smoke", f"One of {list(tables.SCALES)}.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds (>= 3 at cpu / full).")
_ROWS = flags.DEFINE_string("rows", "", "Comma-separated row keys (default: the table's rows).")
_OUT = flags.DEFINE_string("out", "", "Basename of the table files (default: the table name).")
_LIST = flags.DEFINE_bool("list", False, "List every table, its rows, datasets and time.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
_COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", True, "Keep XLA's compiled programs in <workdir>/.jax_cache, so the runs "
    "of every seed (the same programs) compile once.")
config_flags.DEFINE_config_file("config", None, "Run the table's rows on this training config "
                                "instead of --scale's datasets.")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; allowed: --table, --workdir, --scale, "
                     "--seeds, --rows, --config, --out, --list, --overwrite, --compile_cache")
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
  if not _WORKDIR.value:
    raise ValueError("--workdir is required (the folder of the runs and the table files)")
  if _COMPILE_CACHE.value:
    reproduce.use_compile_cache(_WORKDIR.value)
  result = reproduce.run_table(_TABLE.value, _WORKDIR.value, scale=_SCALE.value,
                               seeds=_SEEDS.value, overwrite=_OVERWRITE.value, rows=rows,
                               config=config, out=_OUT.value or None)
  print(reproduce.render_markdown(result))


if __name__ == "__main__":
  cli.run(main)
