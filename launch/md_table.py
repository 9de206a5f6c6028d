"""The MD-SNN evidence table on your config: FP teacher, PTQ start, and the same quantized
student trained several ways (no KD, logit KD, MD = membrane + logit KD, ...) over seeds.

    python launch/md_table.py --config=launch/configs/md_cifar10.py --workdir=runs/md_cifar10

This is the table runner (`launch/reproduce.py --table=md_evidence --config=...`) with the
rows named by --methods: one FP teacher in <workdir>/teacher, students in
<workdir>/<method>_seed<N>, every run resumed or read back by the runner's rules (a run made
with another config is refused, naming the fields that differ, unless --overwrite). Writes
<out>.{md,csv,json,png} in --workdir (atomically; --out, default 'table').
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mdsnn_jax.train import cli, reproduce
from mdsnn_jax.train.experiments import parse_methods

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the whole table.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated student seeds.")
_METHODS = flags.DEFINE_string("methods", "none,logit,md", "Which students to train.")
_OUT = flags.DEFINE_string("out", "table", "Basename of the table files written in --workdir.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", reproduce.DATA_ROOT_HELP)
config_flags.DEFINE_config_file("config", None, "Table configuration (a training config).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  rows = ["fp", "ptq", *parse_methods(_METHODS.value)]
  print(reproduce.run_on_config("md_evidence", _WORKDIR.value, flags.FLAGS.config, rows=rows,
                                seeds=_SEEDS.value, overwrite=_OVERWRITE.value, out=_OUT.value,
                                data_roots=_DATA_ROOT.value))


if __name__ == "__main__":
  cli.run(main)
