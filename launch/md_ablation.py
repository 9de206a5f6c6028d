"""Why does (or doesn't) membrane distillation help? Ablations around the MD evidence table.

Each variant (`tables.ABLATION_VARIANTS`) is one quantized student of `launch/md_table.py`
(same teacher, same steps and seeds) with a few config fields changed: the loss weights and
temperature, the membrane normalisation, which layers are distilled, the student's T with the
versatile teacher's alignment, affine-projector feature KD, and a harder student (first and
last layers at the body's bits too). Accuracies are paired with the no-KD student of the same
seed and setting, so the seed's data order cancels out of Δ.

    python launch/md_ablation.py --config=launch/configs/md_cifar10.py --workdir=runs/md_cifar10

This is the table runner (`launch/reproduce.py --table=md_ablation --config=...`): it uses
(and, if missing, trains) the teacher in <workdir>/teacher, the one `md_table.py` uses;
students live in <workdir>/abl_<variant>_seed<N>. A variant the model cannot take (too few
LIF layers, a teacher at another T) is listed as not run, saying why. Writes
<out>.{md,csv,json,png} there (atomically; --out, default 'ablation').
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mdsnn_jax.train import cli, reproduce

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the MD table (teacher + students).")
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated student seeds.")
_VARIANTS = flags.DEFINE_string("variants", "", "Comma-separated variant names (default: all).")
_OUT = flags.DEFINE_string("out", "ablation", "Basename of the table files written in --workdir.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", reproduce.DATA_ROOT_HELP)
config_flags.DEFINE_config_file("config", None, "The MD table's configuration.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  rows = [v for v in _VARIANTS.value.split(",") if v] or None
  print(reproduce.run_on_config("md_ablation", _WORKDIR.value, flags.FLAGS.config, rows=rows,
                                seeds=_SEEDS.value, overwrite=_OVERWRITE.value, out=_OUT.value,
                                data_roots=_DATA_ROOT.value))


if __name__ == "__main__":
  cli.run(main)
