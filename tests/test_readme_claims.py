"""Claims in README.md's prose and comments that a test can check."""
from __future__ import annotations

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _block(marker):
  (block,) = [b for b in BLOCKS if marker in b]
  return block


def test_distillation_example_loss_is_about_zero():
  # README: `loss, per_layer = distill.membrane_kd_loss(taps_s, taps_t)  # ≈ 0: decorrelation
  # removes scale/offset` (the teacher is a per-channel affine image of the student).
  block = _block("membrane_kd_loss")
  assert "≈ 0" in block
  namespace = {}
  np.random.seed(0)  # the example's EMD line draws from NumPy's global generator
  exec(compile(block, "README.md distillation example", "exec"), namespace)
  loss = float(namespace["loss"])
  assert 0.0 <= loss < 1e-5, loss
  terms = {f"{layer}/{k}": float(v) for layer, d in namespace["per_layer"].items()
           for k, v in d.items()}
  assert terms and all(abs(v) < 1e-5 for v in terms.values()), terms
  # Without the decorrelation the same taps are far apart: the ≈ 0 is the normalisation's doing.
  raw, _ = namespace["distill"].membrane_kd_loss(namespace["taps_s"], namespace["taps_t"],
                                                 decorrelate=False)
  assert float(raw) > 1.0, float(raw)
