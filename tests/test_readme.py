"""README.md's Python examples run as written; the examples it used to hold (the quantized
student with membrane distillation, integer export, distillation / firing / hardware, the own
model on the digits) live on docs/pure-functions.md, where tests/test_docs.py runs them."""
from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_pure_function_example():
  assert len(BLOCKS) >= 1
  assert any("lif_scan" in b and "membrane_kd_loss" in b and "quant." in b for b in BLOCKS)


def test_moved_examples_are_on_a_checked_docs_page():
  # Every example README.md ran before the docs site existed is still run: on the
  # pure-function guide (tests/test_docs.py runs every python block of docs/*.md).
  page = (ROOT / "docs" / "pure-functions.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
  for marker in ("get_surrogate", "equal spikes", "student loss", "crossbar_cost", "own model loss"):
    assert any(marker in b for b in blocks), marker
  assert "README.md" in (ROOT / "tests" / "test_docs.py").read_text()  # README's bash blocks


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
  exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})
  out = capsys.readouterr().out
  if "MD loss" in BLOCKS[index]:
    assert re.search(r"rates \d\.\d{3} / \d\.\d{3}, MD loss \d+\.\d{3}", out), out
