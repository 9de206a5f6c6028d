"""Every launcher config loads, validates its names, and builds its model (no training)."""
from __future__ import annotations

import importlib.util
import pathlib

import jax
import pytest

from mdsnn_jax import nn
from mdsnn_jax.train.loop import parse_stages, stage_model_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "launch" / "configs").glob("*.py"))


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_all_paper_rows_present():
  names = {p.stem for p in CONFIGS}
  assert {"default", "mnist", "nmnist", "cifar10_resnet18", "cifar100_resnet18", "tinyimagenet",
          "ncaltech101_vgg", "spquant_cifar10_resnet19", "md_cifar10"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_models(path):
  c = _load(path)
  stages = parse_stages(c.stages)
  num_classes = {"cifar100": 100, "tinyimagenet": 200, "ncaltech101": 101}.get(c.data.name, 10)
  for stage in stages:
    model = nn.create_model(stage_model_config(c, stage), num_classes)
    assert model is not None
  assert c.train.global_batch > 0 and c.train.steps > 0


def test_low_bit_rows_quantize_weights_to_two_bits():
  for stem in ("cifar10_resnet18", "cifar100_resnet18", "tinyimagenet", "md_cifar10"):
    c = _load(next(p for p in CONFIGS if p.stem == stem))
    assert dict(c.model.quant.weight) == {"kind": "lsq", "bits": 2}
    assert dict(c.model.quant.membrane) == {"kind": "ternary"} and c.model.quant.bn_fold
    assert dict(stage_model_config(c, "fp").quant.weight) == {"kind": "none"}


def test_md_cifar10_whole_network_at_two_bits():
  path = next(p for p in CONFIGS if p.stem == "md_cifar10")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  eight, two = module.get_config(), module.get_config("2")
  assert dict(eight.model.quant.first_layer) == {"kind": "uniform", "bits": 8}
  assert dict(two.model.quant.first_layer) == dict(two.model.quant.last_layer) == {"kind": "same"}
  q = nn.layers.QuantConfig(**{k: two.model.quant[k] for k in ("weight", "membrane",
                                                               "first_layer", "last_layer")})
  assert q.first == q.last == {"kind": "lsq", "bits": 2}
  with pytest.raises(ValueError, match="'4'"):
    module.get_config("4")
