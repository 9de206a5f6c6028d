"""Writes the beyond-accuracy report (accuracy, firing EMD, crossbar hardware) of a workdir.

    python launch/report.py --workdir=/tmp/mdsnn_digits [--max_batches=10] [--out=DIR]

The logic lives in `mdsnn_jax.report.build_report`; this file only parses flags and prints
the path of report.md.
"""
from __future__ import annotations

import pathlib

from absl import flags

from mdsnn_jax.report import build_report
from mdsnn_jax.train import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch/train.py.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <workdir>/report).")
_MAX_BATCHES = flags.DEFINE_integer(
    "max_batches", None, "Evaluate only this many test batches per stage (default: all).",
    lower_bound=1)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  out = pathlib.Path(_OUT.value) if _OUT.value else pathlib.Path(_WORKDIR.value) / "report"
  build_report(_WORKDIR.value, out, max_batches=_MAX_BATCHES.value)
  print(out / "report.md", flush=True)


if __name__ == "__main__":
  cli.run(main)
