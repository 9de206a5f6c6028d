"""Re-writes a table's files from its stored numbers, with what the current renderer adds.

    python launch/render_table.py results/tables/md_evidence.json [more .json ...]

A table file of `launch/reproduce.py` (its .json) holds every seed's numbers; its .md, .csv
and .png are renderings of them. This re-renders them with the current code, adding what is
derived from the stored per-seed numbers alone (the one-sided paired tests of each Δ with
Holm's adjustment across the table's tested rows). Nothing is trained or measured; the
numbers and the run's provenance stay as they were, and the .json records this command in
'rendered'. The logic is `mdsnn_jax.train.reproduce.rerender`.
"""
from __future__ import annotations

import pathlib
import shlex

from mdsnn_jax.train import cli


def main(argv):
  paths = [pathlib.Path(a) for a in argv[1:]]
  if not paths:
    raise ValueError("no table file given; usage: launch/render_table.py FILE.json [...]")
  bad = [str(p) for p in paths if p.suffix != ".json" or not p.is_file()]
  if bad:
    raise ValueError(f"not a table .json file: {', '.join(bad)}; allowed: the .json files "
                     "launch/reproduce.py writes (e.g. results/tables/md_evidence.json)")
  from mdsnn_jax import provenance  # after the checks: importing JAX takes seconds
  from mdsnn_jax.train import reproduce
  # One record before any file is rewritten: its commit and clean / dirty state are the code's.
  record = provenance.record(shlex.join(["launch/render_table.py", *map(str, paths)]))
  for p in paths:
    reproduce.rerender(p, record)
    print(p.with_suffix(".md"), flush=True)


if __name__ == "__main__":
  cli.run(main)
