"""Quantizers as pure functions: weights, membranes, BN folding, integer export (see
docs/method.md).

Every weight quantizer is a `WeightQuantizer` and every membrane quantizer a
`MembraneQuantizer` (see `mdsnn_jax.quant.base`); build them directly or by name with
`make_weight_quantizer` / `make_membrane_quantizer`.
"""
from mdsnn_jax.quant.base import MembraneQuantizer, WeightQuantizer
from mdsnn_jax.quant.batchnorm import bias_scale, fold_batchnorm, quantize_bias, quantize_folded
from mdsnn_jax.quant.export import IntegerLayer, export_layer, integer_lif_forward
from mdsnn_jax.quant.membrane import (
    identity_membrane,
    integer_levels,
    integer_membrane,
    stacked_sigmoid_grad,
    ternary_membrane,
    uniform_membrane,
)
from mdsnn_jax.quant.registry import (
    MEMBRANE_QUANTIZERS,
    WEIGHT_QUANTIZERS,
    make_membrane_quantizer,
    make_weight_quantizer,
)
from mdsnn_jax.quant.weight import (
    GRIDS,
    check_bits,
    check_grid,
    grid_codes,
    grid_info,
    identity_weight,
    lqnet,
    lqnet_encode,
    lqnet_init_basis,
    lqnet_levels,
    lsq,
    mint,
    mint_quantize,
    qem_update,
    sawb,
    signed_levels,
    ternary,
    uniform,
)

__all__ = [
    "WeightQuantizer", "MembraneQuantizer",
    "identity_weight", "uniform", "sawb", "lsq", "ternary", "mint", "mint_quantize", "lqnet",
    "lqnet_levels", "lqnet_encode", "lqnet_init_basis", "qem_update", "check_bits", "signed_levels",
    "GRIDS", "check_grid", "grid_codes", "grid_info",
    "identity_membrane", "integer_membrane", "ternary_membrane", "uniform_membrane",
    "integer_levels", "stacked_sigmoid_grad",
    "fold_batchnorm", "quantize_folded", "quantize_bias", "bias_scale",
    "IntegerLayer", "export_layer", "integer_lif_forward",
    "make_weight_quantizer", "make_membrane_quantizer", "WEIGHT_QUANTIZERS", "MEMBRANE_QUANTIZERS",
]
