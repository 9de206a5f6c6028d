"""Every leaf of every launcher config can be set from the command line, through the real
absl / ml_collections flag parser (issue: a bare-None default could not be overridden)."""
from __future__ import annotations

import pathlib

import pytest

from helpers import parse_config_flags

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "launch" / "configs").glob("*.py"))


def _leaves(cfg, prefix=""):
  for key in cfg.keys():
    value = cfg[key]
    path = f"{prefix}{key}"
    if hasattr(value, "keys"):
      yield from _leaves(value, path + ".")
    else:
      yield path, value, cfg.get_type(key)


def _new_value(value, typ):
  """A value of the field's type that differs from `value` (as flag text, parsed value)."""
  if typ is bool:
    return str(not value), (not value)
  if typ is int:
    return str((value or 0) + 3), (value or 0) + 3
  if typ is float:
    return str((value or 0.0) + 0.25), (value or 0.0) + 0.25
  if typ is str:
    return "x_" + (value or ""), "x_" + (value or "")
  raise AssertionError(f"field of type {typ} cannot be overridden")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_field_overridable(path):
  base = parse_config_flags(path, [])
  leaves = list(_leaves(base))
  assert len(leaves) > 60  # the whole tree, quantizer arguments included
  overrides, expected = [], {}
  for name, value, typ in leaves:
    if typ in (type(None),):
      pytest.fail(f"{path.name}: config.{name} is a bare None (untyped): use a placeholder")
    text, parsed = _new_value(value, typ)
    overrides.append(f"--config.{name}={text}")
    expected[name] = parsed
  # One parse with every override at once, through the real flag parser.
  cfg = parse_config_flags(path, overrides)
  for name, want in expected.items():
    got = cfg
    for part in name.split("."):
      got = got[part]
    assert got == pytest.approx(want) if isinstance(want, float) else got == want, name


def test_issue_examplesparse_config_flags():
  path = next(p for p in CONFIGS if p.stem == "default")
  cfg = parse_config_flags(path, ["--config.data.train_subset=100", "--config.data.root=/data",
                      "--config.distributed.num_processes=2",
                      "--config.distributed.coordinator_address=127.0.0.1:1234",
                      "--config.model.quant.first_layer.bits=8",
                      "--config.model.quant.first_layer.kind=uniform",
                      "--config.model.quant.weight.kind=ternary"])
  assert cfg.data.train_subset == 100 and cfg.distributed.num_processes == 2
  assert cfg.model.quant.first_layer.bits == 8
  from mdsnn_jax.train.config import quant_args
  notes = []
  assert quant_args("weight", cfg.model.quant.weight, notes.append) == {"kind": "ternary"}
  assert "bits=2" in notes[0] and "ternary" in notes[0]
  assert quant_args("first_layer", cfg.model.quant.first_layer) == {"kind": "uniform", "bits": 8}
  # The whole-dict form still works.
  cfg = parse_config_flags(path, ["--config.model.quant.weight={'kind': 'ternary', 'ratio': 0.1}"])
  assert quant_args("weight", cfg.model.quant.weight) == {"kind": "ternary", "ratio": 0.1}


def test_weight_grid_is_set_from_the_command_line():
  """`grid` is a quantizer argument like any other: set, it reaches the quantizer; a bad one
  fails naming the value and the allowed grids."""
  from mdsnn_jax.quant import grid_info, make_weight_quantizer
  from mdsnn_jax.train.config import quant_args

  path = next(p for p in CONFIGS if p.stem == "default")  # 2-bit LSQ, grid unset
  levels = {}
  for flag in ([], ["--config.model.quant.weight.grid=symmetric"],
               ["--config.model.quant.weight.grid=full"]):
    cfg = parse_config_flags(path, flag)
    wq = make_weight_quantizer(quant_args("weight", cfg.model.quant.weight))
    levels[tuple(flag)] = (grid_info(wq)["grid"], grid_info(wq)["levels"])
  assert list(levels.values()) == [("full", 4), ("symmetric", 3), ("full", 4)]
  cfg = parse_config_flags(path, ["--config.model.quant.weight.grid=ternaryish"])
  with pytest.raises(ValueError, match=r"'ternaryish'.*allowed: \['symmetric', 'full'\]"):
    make_weight_quantizer(quant_args("weight", cfg.model.quant.weight))
