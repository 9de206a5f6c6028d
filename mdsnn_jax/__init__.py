"""mdsnn-jax: quantized spiking neural networks and membrane-aware distillation in JAX.

The pure-functional core (no Flax needed) is importable from the top level:

    from mdsnn_jax import lif_scan, get_surrogate
"""
from mdsnn_jax.neuron import lif_scan, lif_step, rlif_scan
from mdsnn_jax.surrogate import SURROGATES, get_surrogate, heaviside

__version__ = "0.1.0"

__all__ = ["lif_scan", "lif_step", "rlif_scan", "get_surrogate", "heaviside", "SURROGATES"]
