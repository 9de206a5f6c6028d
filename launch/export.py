"""Exports a trained stage to the Neuromorphic Intermediate Representation (NIR).

    python launch/export.py --workdir=/tmp/mdsnn --stage=fp --format=nir --out=/tmp/fp.nir

The file loads in snnTorch (`snntorch.import_nir.import_from_nir(nir.read(path))`) and the
rest of the NIR ecosystem. The logic lives in `mdsnn_jax.interop.nir`; this file only parses
flags. Needs the `[interop]` extra.
"""
from __future__ import annotations

import errno
import pathlib

from absl import flags

from mdsnn_jax.interop.nir import DEFAULT_DT, MEMBRANE_QUANT_MODES, export_workdir
from mdsnn_jax.train import cli
from mdsnn_jax.train.stages import ensure_writable_dir

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training workdir (launch/train.py).")
_STAGE = flags.DEFINE_enum("stage", "fp", ["fp", "qat", "md"], "Which stage to export.")
_FORMAT = flags.DEFINE_enum("format", "nir", ["nir"], "Output format.")
_OUT = flags.DEFINE_string("out", None, "Output file, e.g. model.nir.")
_DT = flags.DEFINE_float("dt", DEFAULT_DT, "Euler step (s) that the NIR time constants refer to.")
_MEMBRANE_QUANT = flags.DEFINE_enum(
    "membrane_quant", "error", list(MEMBRANE_QUANT_MODES),
    "A quantized membrane cannot be expressed in NIR: 'error' refuses, 'fp_twin' exports the "
    "float-membrane twin with a warning.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  out = pathlib.Path(_OUT.value)
  if out.is_dir():
    raise IsADirectoryError(errno.EISDIR, f"--out={out} is a directory; give a file path such "
                            f"as {out / 'model.nir'}", str(out))
  # The NIR writer (h5py) reports an unwritable path without an errno: probe it first.
  ensure_writable_dir(out.parent, "the folder of --out")
  graph = export_workdir(_WORKDIR.value, _STAGE.value, _OUT.value, dt=_DT.value,
                         membrane_quant=_MEMBRANE_QUANT.value)
  print(f"wrote {_OUT.value}: {len(graph.nodes)} nodes, {len(graph.edges)} edges, "
        f"T={graph.metadata['timesteps']}", flush=True)


if __name__ == "__main__":
  cli.run(main)
