"""Trains MD-SNN models: FP teacher, quantized student, distilled student.

    python launch/train.py --config=launch/configs/default.py --workdir=/tmp/mdsnn
    python launch/train.py --config=launch/configs/cifar10_resnet18.py:md \
        --config.train.steps=1000 --workdir=/tmp/c10
    python launch/train.py --config=... --workdir=... --check          # only the dry check
    python launch/train.py --config=... --print_config                 # the resolved config
    python launch/train.py --config=... --workdir=... --precision=bf16  # bfloat16 compute

A re-run with the same config skips finished stages and resumes unfinished ones; a changed
config is refused with the differing fields unless --overwrite. The logic lives in
`mdsnn_jax.train`; this file only parses flags and writes the report at the end.
"""
from __future__ import annotations

import pathlib

import jax
from absl import flags
from ml_collections import config_flags

from mdsnn_jax.data.registry import describe
from mdsnn_jax.train import cli
from mdsnn_jax.train.config import PRECISION_NOTE, PRECISIONS, resolved_config, set_precision
from mdsnn_jax.train.loop import check, train_and_evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and summaries.")
_CHECK = flags.DEFINE_bool("check", False, "Only run the dry check (open the data, build every "
                           "stage's model, trace its step, check the workdir) and print the "
                           "dataset line and the plan.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Restart a stage whose stored config "
                               "differs (and the stages after it) instead of refusing.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
_PRECISION = flags.DEFINE_string(
    "precision", None, f"Compute precision, one of {list(PRECISIONS)} (sets model.dtype): "
    f"{PRECISION_NOTE}. Default: the config's model.dtype.")
config_flags.DEFINE_config_file("config", None, "Training configuration file "
                                "(launch/configs/<name>.py[:stages]); every field can be set "
                                "with --config.<field>=<value>.", lock_config=True)
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  config = set_precision(flags.FLAGS.config, _PRECISION.value)
  if _PRINT_CONFIG.value:
    # What the run uses: quantizer specs reduced to what their kind takes (a typo refused).
    print(resolved_config(config, note=lambda s: print(f"# note: {s}")))
    return
  if not _WORKDIR.value:
    raise ValueError("--workdir is required (the folder for checkpoints, metrics and summaries)")
  if _CHECK.value:
    plans = check(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                  note=lambda s: print(f"note: {s}"))
    print(describe(config.data))
    for p in plans:
      print(f"{p.stage}: {p.action}")
    print("check passed: every stage builds and its step traces; the data and the workdir "
          "are usable")
    return
  if not config.distributed.get("initialize", False):  # jax must not start before that
    print(describe(config.data), flush=True)
  train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
  if config.get("report", True):
    from mdsnn_jax.report import build_report  # matplotlib only when a report is asked for
    workdir = pathlib.Path(_WORKDIR.value)
    # Every process: the restores are collective. Unchanged stages keep the report they have.
    build_report(workdir, workdir / "report", only_if_changed=True)
    if jax.process_index() == 0:
      print(f"report: {workdir / 'report' / 'report.md'}", flush=True)


if __name__ == "__main__":
  cli.run(main)
