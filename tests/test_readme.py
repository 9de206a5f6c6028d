"""The README's Python examples run as written."""
from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
  assert len(BLOCKS) >= 4
  assert any("student loss" in b and "lif_scan" in b and "membrane_kd_loss" in b for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
  exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
  out = capsys.readouterr().out
  if "equal spikes" in BLOCKS[index]:
    assert "exact: True | equal spikes: True" in out, out
  if "student loss" in BLOCKS[index]:
    # The flax-free step trains: the loss goes down and stays finite.
    first, last = map(float, re.search(r"student loss (\S+) -> (\S+)", out).groups())
    assert last < first, out
  if "crossbar_cost" in BLOCKS[index]:
    assert "E 15.907 µJ, L 62.833 ms, A 8.4255 mm²" in out, out
