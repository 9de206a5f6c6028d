"""Provenance records and atomic writes."""
from __future__ import annotations

import json
import os

import pytest

from mdsnn_jax import provenance


def test_record_has_commit_machine_load_date_and_config():
  rec = provenance.record(["launch/x.py", "--a=1"], config={"seed": 3})
  assert rec["command"] == "launch/x.py --a=1"
  assert rec["config"] == {"seed": 3}
  assert rec["machine"]["cores"] == os.cpu_count()
  with open("/proc/cpuinfo") as f:
    names = {l.split(":", 1)[1].strip() for l in f if l.startswith("model name")}
  assert rec["machine"]["cpu"] in names
  assert len(rec["load_average"]) == 3
  assert rec["date"].startswith("20")
  assert rec["commit"] is None or len(rec["commit"]) == 40
  assert "commit" in provenance.describe(rec)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
  path = tmp_path / "r.json"
  provenance.write_json_atomic(path, {"a": 1})
  with pytest.raises(RuntimeError):
    with provenance.atomic_path(path) as tmp:
      tmp.write_text("half")
      raise RuntimeError("killed")
  assert json.loads(path.read_text()) == {"a": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
