"""Quantizers by name from a config: {'kind': ..., **kwargs} (dict or ml_collections ConfigDict).

    make_weight_quantizer({'kind': 'lsq', 'bits': 4, 'per_channel': True})
    make_membrane_quantizer({'kind': 'ternary'})

Unknown kinds, unknown keyword arguments and missing required ones raise ValueError naming them.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from mdsnn_jax.quant import membrane, weight
from mdsnn_jax.quant.base import MembraneQuantizer, WeightQuantizer

WEIGHT_QUANTIZERS: dict[str, Callable[..., WeightQuantizer]] = {
    "none": weight.identity_weight,
    "uniform": weight.uniform,
    "sawb": weight.sawb,
    "lsq": weight.lsq,
    "ternary": weight.ternary,
    "mint": weight.mint,
    "lqnet": weight.lqnet,
}

MEMBRANE_QUANTIZERS: dict[str, Callable[..., MembraneQuantizer]] = {
    "none": membrane.identity_membrane,
    "integer": membrane.integer_membrane,
    "ternary": membrane.ternary_membrane,
    "uniform": membrane.uniform_membrane,
}


def _build(cfg: Any, table: Mapping[str, Callable], what: str):
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ValueError(f"{what} config must be a mapping with a 'kind' key, got {cfg!r}")
  # None is an unset argument (a config placeholder): the kind's default applies.
  kwargs = {k: v for k, v in dict(cfg).items() if v is not None}
  kind = kwargs.pop("kind", None)
  if not isinstance(kind, str) or kind not in table:
    raise ValueError(f"unknown {what} kind {kind!r}; known kinds: {sorted(table)}")
  factory = table[kind]
  params = inspect.signature(factory).parameters
  unknown = sorted(set(kwargs) - set(params))
  if unknown:
    raise ValueError(
        f"unknown argument(s) {unknown} for {what} kind {kind!r}; allowed: {sorted(params)}")
  missing = sorted(k for k, p in params.items() if p.default is p.empty and k not in kwargs)
  if missing:
    raise ValueError(f"{what} kind {kind!r} needs argument(s) {missing}")
  return factory(**kwargs)


def make_weight_quantizer(cfg: Any) -> WeightQuantizer:
  """Weight quantizer from {'kind': one of WEIGHT_QUANTIZERS, **kwargs of its factory}."""
  return _build(cfg, WEIGHT_QUANTIZERS, "weight quantizer")


def make_membrane_quantizer(cfg: Any) -> MembraneQuantizer:
  """Membrane quantizer from {'kind': one of MEMBRANE_QUANTIZERS, **kwargs of its factory}."""
  return _build(cfg, MEMBRANE_QUANTIZERS, "membrane quantizer")
