"""Shared fixtures. Tests run on CPU; x64 stays off (the library's default precision)."""
from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("MDSNN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data (real MNIST, CIFAR-10 subset, N-MNIST); skips when absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real-data folder {SHARED_DATA} is absent (set MDSNN_SHARED_DATA)")
  return SHARED_DATA
