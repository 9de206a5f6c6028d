"""Flax linen spiking layers and models (time-major [T, B, ...], channels last).

    from mdsnn_jax.nn import create_model, default_model_config, init_variables
    cfg = default_model_config(); cfg.name = 'msresnet18'
    model = create_model(cfg, num_classes=10)
    variables = init_variables(model, jax.random.PRNGKey(0), images)          # [B, H, W, C]
    logits, taps = model.apply(variables, images, train=False,
                               mutable=['membranes', 'spikes'])               # [T, B, classes]

Memory and precision knobs of the config: cfg.remat ('none' | 'layer' | 'time'),
cfg.dtype ('float32' | 'bfloat16': compute dtype; parameters, statistics, quantizer
parameters, logits and taps stay float32), cfg.lif_impl ('auto' | 'fused' | 'scan').
"""
from mdsnn_jax.nn.conv import conv2d
from mdsnn_jax.nn.layers import (
    LIF,
    LIF_IMPLS,
    NeuronConfig,
    QConv,
    QConvBN,
    QDense,
    QuantConfig,
    RLIF,
    TDBatchNorm,
    resolve_membrane_quantizer,
    resolve_weight_quantizer,
)
from mdsnn_jax.nn.time import merge_time
from mdsnn_jax.nn.models import (
    DTYPES,
    MODELS,
    REMATS,
    DigitsCNN,
    DigitsMLP,
    MSResNet,
    SEWResNet,
    SpikingNet,
    SpikingResNet,
    SpikingVGG,
    create_model,
    default_model_config,
    init_student_from_teacher,
    init_variables,
    param_count,
)

__all__ = [
    "conv2d", "merge_time",
    "LIF", "RLIF", "LIF_IMPLS", "REMATS", "DTYPES", "NeuronConfig", "QConv", "QConvBN", "QDense", "QuantConfig", "TDBatchNorm",
    "resolve_weight_quantizer", "resolve_membrane_quantizer",
    "MODELS", "SpikingNet", "SpikingVGG", "MSResNet", "SEWResNet", "SpikingResNet", "DigitsMLP", "DigitsCNN",
    "create_model", "default_model_config", "init_variables", "init_student_from_teacher",
    "param_count",
]
