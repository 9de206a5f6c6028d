"""Spiking models in Flax linen: VGG-9/16, MS-ResNet-18/19, SEW-ResNet-18, ResNet-18/19 (spike
after the residual add), digits MLP/CNN.

Call convention (the trainer and the distillation code rely on it):

    variables = init_variables(model, rng, x)        # params, batch_stats, quant_state
    logits, mutated = model.apply(variables, x, train=True, timesteps=None,
                                  mutable=['batch_stats', 'quant_state', 'membranes', 'spikes'])

x is batch-major from the data pipeline: static images [B, H, W, C] (direct encoding: the
first conv + BN is computed once on [B, H, W, C] and broadcast over T, since it is identical
at every step; its BN statistics over the T·B copies equal those over B) or event frames
[B, T, H, W, 2] (ndim 5; the first conv runs on the merged T·B axis). Internally
time-major [T, B, ...]; returns per-timestep logits [T, B, num_classes]. `timesteps`
overrides the default T for static input; the same parameters run at any T. The input size
is free (flax infers the classifier's fan-in at init); for VGG, H and W should be divisible
by the total pooling factor (8 for VGG-9, 32 for VGG-16).

Module names are fixed by the architecture and never depend on the quantization config, so
the FP and quantized variants of a model have identical membrane / spike tap names (e.g.
'layer1/block0/lif1') and the quantized parameter tree is a superset of the FP one. A
learned gate (neuron.gate_rho) adds a module '<unit>_gate' beside each gated unit (e.g.
'conv1_gate'), so a gated student's tree is a superset of its ungated teacher's too.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
from flax.core import unfreeze

from mdsnn_jax.nn.layers import (LIF, ChannelGate, NeuronConfig, QConvBN, QDense, QuantConfig,
                                 parameter_free_lif)

Array = jax.Array

# Conv configurations; 'P' = 2×2 average pooling of the spikes.
VGG9_LAYERS = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P")  # SpikeSim VGG9 (docs/method.md)
VGG16_LAYERS = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P",
                512, 512, 512, "P", 512, 512, 512, "P")
# Stages as (channels, blocks, first stride).
RESNET18_STAGES = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))
RESNET19_STAGES = ((128, 3, 1), (256, 3, 2), (512, 2, 2))
# SpQuant-SNN's own ResNet-19 (its public models/resnet.py): after a 7×7 stride-2 stem of 128
# channels, the first stage narrows to 64 (through a 1×1 shortcut) before 256 and 512.
RESNET19_SPQUANT_STAGES = ((64, 3, 1), (256, 3, 2), (512, 2, 2))

# A training forward updates these (pass them as `mutable`, like BN statistics) ...
TRAIN_MUTABLE = ("batch_stats", "quant_state")
# ... and sows the taps into these when they are mutable.
TAP_COLLECTIONS = ("membranes", "spikes", "prune_masks", "gate_masks", "gate_losses")

BODY = object()  # sentinel: the layer takes the body's weight quantizer (QuantConfig.weight)

# model.remat: 'none'; 'layer': every conv + BN unit keeps only its input for the backward
# pass (bfloat16 where the input is spikes: exact) and recomputes conv and BN there
# (`recompute_in_backward`); the LIF after it is recomputed in the same unit where it has no
# parameters and the taps are not collected (`Builder.conv_bn_lif`: VGG, SEW-ResNet, the
# stem and each block's conv1 + lif1 of ResNet-18/19), and otherwise keeps only its
# membranes (lif_vjp, fully unrolled); 'time': every LIF recurrence keeps only every c-th
# state (c ≈ √T, `layers.time_chunked_lif_scan`) and recomputes the steps in between.
REMATS = ("none", "layer", "time")
# model.dtype: the compute dtype of convolutions, matmuls, BN outputs and the LIF recurrence.
# Parameters, BN statistics, quantizer parameters, logits and taps stay float32.
DTYPES = ("float32", "bfloat16")


def check_remat_dtype(remat: str, dtype: str) -> None:
  if remat not in REMATS:
    raise ValueError(f"unknown model.remat {remat!r}; allowed: {list(REMATS)}")
  if dtype not in DTYPES:
    raise ValueError(f"unknown model.dtype {dtype!r}; allowed: {list(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class Builder:
  """Makes a model's layers from its neuron / quant / conv settings (a hashable record that
  blocks receive instead of their parent module)."""
  neuron: NeuronConfig = NeuronConfig()
  quant: QuantConfig = QuantConfig()
  conv_impl: str = "xla"
  remat: str = "none"
  lif_impl: str = "scan"

  def conv_bn(self, features: int, *, name: str, strides: int = 1, kernel_size: int = 3,
              weight_quant: Any = BODY, scale_init: float = 1.0, spike_input: bool = True
              ) -> Callable[[Array, bool], Array]:
    """conv + tdBN; weight_quant BODY = the body's quantizer (quant.weight). With remat
    'layer' the unit runs under `recompute_in_backward`, keeping its input (in bfloat16 when
    spike_input says the input is spikes, spike counts or their 2×2 means, all exact there)."""
    unit = self.qconv_bn(features, name=name, strides=strides, kernel_size=kernel_size,
                         weight_quant=weight_quant, scale_init=scale_init)
    if self.remat == "layer":
      unit = functools.partial(recompute_in_backward, unit,
                               residual_dtype=jnp.bfloat16 if spike_input else None)
    if self.neuron.gate_rho is None:
      return unit
    # The gate sits outside the recomputed unit: its sown loss must keep its gradient.
    gate = self.gate(name)
    return lambda x, train: gate(x, unit(x, train))

  def qconv_bn(self, features: int, *, name: str, strides: int = 1, kernel_size: int = 3,
               weight_quant: Any = BODY, scale_init: float = 1.0) -> QConvBN:
    """The bare conv + tdBN module with this builder's quantizers and conv_impl."""
    wq = self.quant.weight if weight_quant is BODY else weight_quant
    return QConvBN(features, kernel_size, strides, weight_quant=wq, bn_fold=self.quant.bn_fold,
                   bias_bits=self.quant.bias_bits, conv_impl=self.conv_impl,
                   scale_init=scale_init, name=name)

  def conv_bn_lif(self, features: int, *, name: str, lif_name: str, taps: bool,
                  time_steps: int | None = None, spike_input: bool = True, **conv_kw
                  ) -> Callable[[Array, bool], Array]:
    """conv + tdBN (`conv_bn`, its output broadcast to time_steps steps when given: a static
    stem) + LIF 'lif_name' -> spikes. Under remat 'layer', when the LIF has no parameters
    (`layers.parameter_free_lif`), there is no channel gate and the caller does not collect
    the taps (`taps`: the LIF's sown membranes would get no gradient inside the unit), the
    three run as one `recompute_in_backward` unit: it keeps only its input and recomputes the
    LIF's membranes too, instead of keeping them for the LIF's backward."""
    def broadcast(y):
      return y if time_steps is None else _broadcast_time(y, time_steps)

    lif = None
    if self.remat == "layer" and not taps and self.neuron.gate_rho is None:
      lif = parameter_free_lif(self.neuron, self.quant.membrane)
    if lif is None:
      unit = self.conv_bn(features, name=name, spike_input=spike_input, **conv_kw)
      lif_layer = self.lif(lif_name)
      return lambda x, train: lif_layer(broadcast(unit(x, train)))
    return functools.partial(recompute_in_backward, self.qconv_bn(features, name=name, **conv_kw),
                             residual_dtype=jnp.bfloat16 if spike_input else None,
                             post=lambda y: lif(broadcast(y)))

  def gate(self, name: str) -> Callable[[Array, Array], Array]:
    """(x, y) -> y, or SpQuant's learned channel gate m·y (`ChannelGate` '{name}_gate', from
    the unit's input x) when neuron.gate_rho is set. Every conv + BN unit and hidden dense
    layer is gated, the static stem too: its gate reads the image once, like the stem's
    conv, and its mask [1, B, C] holds at every step (`reproduce.FlopsCounter` broadcasts
    it over T and charges stem and gate at every step, as it charges the stem's conv)."""
    if self.neuron.gate_rho is None:
      return lambda x, y: y
    return ChannelGate(self.neuron.gate_rho, name=f"{name}_gate")

  def lif(self, name: str) -> LIF:
    # remat 'layer' keeps only the membranes of a LIF: the fused custom-VJP recurrence, fully
    # unrolled (its loop form stacks per-step buffers that held most of the T = 16 peak)
    layer = self.remat == "layer"
    return LIF(self.neuron, self.quant.membrane, remat_time=self.remat == "time",
               impl="fused" if layer else self.lif_impl, full_unroll=layer, name=name)

  def dense(self, features: int, *, name: str, weight_quant: Any = BODY) -> QDense:
    wq = self.quant.weight if weight_quant is BODY else weight_quant
    return QDense(features, weight_quant=wq, name=name)


def _opaque_zero(g: Array, dtype) -> Array:
  """0 (NaN when g's first element is NaN), computed from g: XLA cannot prove it is 0, so a
  recomputation fed `x + _opaque_zero(g)` can neither be merged with the forward (CSE) nor
  scheduled before the backward reaches it. (XLA:CPU drops the optimization barriers with
  which jax.checkpoint guards its recomputation, and CSE then undoes it: measured in
  BENCHMARKS.md.)"""
  first = jnp.ravel(g)[0]
  return jnp.where(jnp.isnan(first), jnp.nan, 0.0).astype(dtype)


def recompute_in_backward(module: nn.Module, x: Array, train: bool, *,
                          residual_dtype=None, post: Callable[[Array], Array] | None = None
                          ) -> Array:
  """post(module(x, train)) for a bound child module and a pure function post (default:
  identity), under a custom VJP that keeps only x (cast to residual_dtype when given: the
  caller vouches that this is exact) and the module's variables, and re-runs both in the
  backward pass. Same outputs, variable updates and gradients as post(module(x, train))."""
  post = post or (lambda y: y)
  if module.is_initializing() or not train:
    return post(module(x, train))
  pure_module = module.clone(parent=None)
  dtype = x.dtype

  def fn(mdl, x):
    return post(mdl(x, train))

  def fwd(mdl, x):
    before = mdl.variables  # before any quant_state update, as the forward saw it
    y = post(mdl(x, train))
    return y, (before, x if residual_dtype is None else x.astype(residual_dtype))

  def bwd(residuals, g):
    before, xr = residuals

    def pure(params, x):
      return post(pure_module.apply({**before, "params": params}, x, train,
                                    mutable=list(TRAIN_MUTABLE))[0])

    _, vjp = jax.vjp(pure, before["params"], xr.astype(dtype) + _opaque_zero(g, dtype))
    d_params, dx = vjp(g)
    return {"params": d_params}, dx

  return nn.custom_vjp(fn, forward_fn=fwd, backward_fn=bwd)(module, x)


class SpikingNet(nn.Module):
  """Fields shared by every model. width multiplies every channel count (min 1); remat and
  dtype as `REMATS` and `DTYPES` say (the input is cast to dtype, the logits back to
  float32)."""
  num_classes: int = 10
  width: float = 1.0
  timesteps: int = 4
  neuron: NeuronConfig = NeuronConfig()
  quant: QuantConfig = QuantConfig()
  conv_impl: str = "xla"
  remat: str = "none"
  dtype: str = "float32"
  lif_impl: str = "scan"

  @property
  def build(self) -> Builder:
    return Builder(self.neuron, self.quant, self.conv_impl, self.remat, self.lif_impl)

  def ch(self, c: int) -> int:
    return max(1, int(round(c * self.width)))

  def time_major(self, x: Array, timesteps: int | None, static_ndim: Sequence[int] = (4,)
                 ) -> tuple[Array, int, bool]:
    """(x time-major, T, static). Static input becomes [1, B, ...] (broadcast after the stem)."""
    if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
      raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
    if not self.width > 0:
      raise ValueError(f"width must be positive, got {self.width!r}")
    check_remat_dtype(self.remat, self.dtype)
    x = x.astype(self.dtype)
    if x.ndim == 5:
      t = x.shape[1]
      if timesteps is not None and timesteps != t:
        raise ValueError(f"event input has T={t} frames but timesteps={timesteps} was requested")
      return jnp.swapaxes(x, 0, 1), t, False
    if x.ndim in static_ndim:
      t = self.timesteps if timesteps is None else timesteps
      if not (isinstance(t, int) and t >= 1):
        raise ValueError(f"timesteps must be a positive int, got {t!r}")
      return x[None], t, True
    raise ValueError(
        f"{type(self).__name__} input must be static ({' or '.join(f'{n}-d' for n in static_ndim)}) "
        f"or events [B, T, H, W, C] (5-d); got shape {x.shape}")

  def classifier(self, x: Array, train: bool) -> Array:
    # Logits in float32 whatever the compute dtype: the losses stay float32.
    logits = self.build.dense(self.num_classes, weight_quant=self.quant.last, name="fc")(x, train)
    return logits.astype(jnp.float32)


def _collects_taps(module: nn.Module) -> bool:
  """Whether this apply collects the LIF taps (sown membranes or spikes)."""
  return module.is_mutable_collection("membranes") or module.is_mutable_collection("spikes")


def _broadcast_time(x: Array, t: int) -> Array:
  return jnp.broadcast_to(x, (t,) + x.shape[1:])


def _avg_pool(x: Array, window: int = 2) -> Array:
  """2-D average pooling of time-major [T, B, H, W, C] on the merged T·B axis."""
  y = nn.avg_pool(x.reshape((-1,) + x.shape[2:]), (window, window), (window, window))
  return y.reshape(x.shape[:2] + y.shape[1:])


class SpikingVGG(SpikingNet):
  """VGG of conv3×3 → tdBN → LIF units ('conv{i}', 'lif{i}'), 2×2 average pooling of the
  spikes at 'P', then a dense classifier 'fc' on the flattened spikes.

  VGG9_LAYERS is SpikeSim's VGG9 for CIFAR (docs/method.md): C_in = [3,64,64,128,128,256,256],
  C_out = [64,64,128,128,256,256,256], pooling after convs 2, 4 and 7 (32→16→8→4).
  """
  layers: tuple = VGG9_LAYERS

  @nn.compact
  def __call__(self, x: Array, train: bool = False, timesteps: int | None = None) -> Array:
    h, t, static = self.time_major(x, timesteps)
    taps = _collects_taps(self)
    i = 0
    for spec in self.layers:
      if spec == "P":
        h = _avg_pool(h)
        continue
      # after the first layer every conv input is spikes or their 2×2 means: exact in bf16
      h = self.build.conv_bn_lif(self.ch(spec), name=f"conv{i}", lif_name=f"lif{i}", taps=taps,
                                 time_steps=t if i == 0 and static else None,
                                 spike_input=i > 0,
                                 weight_quant=self.quant.first if i == 0 else BODY)(h, train)
      i += 1
    return self.classifier(h.reshape(h.shape[:2] + (-1,)), train)


class MSBlock(nn.Module):
  """Membrane-shortcut block (MS-ResNet): y = BN(conv(LIF(BN(conv(LIF(x)))))) + shortcut,
  where x is the un-spiked (membrane-valued) residual stream. shortcut = x, or
  BN(conv1×1(LIF1(x))) ('downsample') when the shape changes: spike-driven downsampling that
  reuses lif1's spikes, so every conv sees binary input (our choice; MS-ResNet code variants
  differ here; the parameter count is the same either way). BN scales start at θ and the
  branch's last at 0.2·θ, as in the MS-ResNet reference code's tdBN init.
  """
  build: Builder
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    th = self.build.neuron.threshold
    s = self.build.lif("lif1")(x)
    y = self.build.conv_bn(self.features, strides=self.strides, scale_init=th, name="conv1")(s, train)
    y = self.build.lif("lif2")(y)
    y = self.build.conv_bn(self.features, scale_init=0.2 * th, name="conv2")(y, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.build.conv_bn(self.features, strides=self.strides, kernel_size=1, scale_init=th,
                             name="downsample")(s, train)
    return y + x


class SEWBlock(nn.Module):
  """Spike-element-wise block (SEW-ResNet, ADD): out = SN(BN(conv(SN(BN(conv(s)))))) + identity,
  identity = s or SN(BN(conv1×1(s))) ('downsample', 'downsample_lif') when the shape changes.
  Inputs and outputs are spike counts (the ADD makes them 0, 1, 2, ...).
  """
  build: Builder
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, s: Array, train: bool = False) -> Array:
    taps = _collects_taps(self)
    y = self.build.conv_bn_lif(self.features, strides=self.strides, name="conv1",
                               lif_name="lif1", taps=taps)(s, train)
    y = self.build.conv_bn_lif(self.features, name="conv2", lif_name="lif2", taps=taps)(y, train)
    if self.strides != 1 or s.shape[-1] != self.features:
      s = self.build.conv_bn_lif(self.features, strides=self.strides, kernel_size=1,
                                 name="downsample", lif_name="downsample_lif", taps=taps)(s, train)
    return y + s


class SpikeAfterAddBlock(nn.Module):
  """The standard spiking basic block, spike after the residual add, as SpQuant-SNN's and
  tdBN's code (TET's ResNet-19 too):

      out = LIF2(BN2(conv3×3(LIF1(BN1(conv3×3_s(s))))) + shortcut(s)),
      shortcut = s, or BN(conv1×1_s(s)) ('downsample', no LIF) when the shape changes.

  Modules 'conv1', 'lif1', 'conv2', 'downsample', 'lif2'. Input and output are binary spikes
  (the add is spiked before it leaves the block), so every conv sees binary input. BN scales
  start at 1, as the reference code's plain BatchNorm2d.
  """
  build: Builder
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, s: Array, train: bool = False) -> Array:
    y = self.build.conv_bn_lif(self.features, strides=self.strides, name="conv1",
                               lif_name="lif1", taps=_collects_taps(self))(s, train)
    y = self.build.conv_bn(self.features, name="conv2")(y, train)
    if self.strides != 1 or s.shape[-1] != self.features:
      s = self.build.conv_bn(self.features, strides=self.strides, kernel_size=1,
                             name="downsample")(s, train)
    return self.build.lif("lif2")(y + s)


class Stage(nn.Module):
  """`blocks` residual blocks 'block0'... of one kind; the first has stride `strides`."""
  build: Builder
  block: Any
  features: int
  blocks: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for j in range(self.blocks):
      x = self.block(self.build, self.features, self.strides if j == 0 else 1, name=f"block{j}")(x, train)
    return x


class MSResNet(SpikingNet):
  """MS-ResNet (membrane shortcut): stem conv3×3 + BN ('stem', no LIF: the stream stays
  membrane-valued), stages 'layer1'... of `MSBlock`s, 'head_lif', global average pooling of
  the spikes, optional hidden dense 'fc1' + 'fc1_lif' (ResNet-19: 256), classifier 'fc'.
  Defaults of the family (docs/method.md, 'LIF neuron'): λ = 0.25, θ = 0.5.
  """
  stem_channels: int = 64
  stages: tuple = RESNET18_STAGES
  hidden: int | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False, timesteps: int | None = None) -> Array:
    h, t, static = self.time_major(x, timesteps)
    h = self.build.conv_bn(self.ch(self.stem_channels), weight_quant=self.quant.first,
                           spike_input=False, scale_init=self.neuron.threshold,
                           name="stem")(h, train)
    if static:
      h = _broadcast_time(h, t)
    for i, (c, n, s) in enumerate(self.stages):
      h = Stage(self.build, MSBlock, self.ch(c), n, s, name=f"layer{i + 1}")(h, train)
    h = self.build.lif("head_lif")(h).mean(axis=(2, 3))
    if self.hidden is not None:
      h = self.build.gate("fc1")(h, self.build.dense(self.ch(self.hidden), name="fc1")(h, train))
      h = self.build.lif("fc1_lif")(h)
    return self.classifier(h, train)


class SEWResNet(SpikingNet):
  """SEW-ResNet (ADD): stem conv3×3-BN-SN ('stem', 'stem_lif'), stages of `SEWBlock`s,
  global average pooling of the spike counts, classifier 'fc'."""
  stem_channels: int = 64
  stages: tuple = RESNET18_STAGES

  @nn.compact
  def __call__(self, x: Array, train: bool = False, timesteps: int | None = None) -> Array:
    h, t, static = self.time_major(x, timesteps)
    h = self.build.conv_bn_lif(self.ch(self.stem_channels), weight_quant=self.quant.first,
                               spike_input=False, name="stem", lif_name="stem_lif",
                               taps=_collects_taps(self), time_steps=t if static else None)(h, train)
    for i, (c, n, s) in enumerate(self.stages):
      h = Stage(self.build, SEWBlock, self.ch(c), n, s, name=f"layer{i + 1}")(h, train)
    return self.classifier(h.mean(axis=(2, 3)), train)


class SpikingResNet(SpikingNet):
  """ResNet of `SpikeAfterAddBlock`s (spike after the residual add, as SpQuant-SNN's and
  tdBN's code): stem conv-BN-LIF ('stem', 'stem_lif'; stem_kernel × stem_kernel at stride
  stem_stride, 3×3 stride 1 for CIFAR), stages 'layer1'..., global average
  pooling of the spikes, optional hidden dense 'fc1' + 'fc1_lif' (ResNet-19: 256, as tdBN /
  TET / SpQuant-SNN: avgpool → FC 256 → LIF → FC classes), classifier 'fc'.
  Defaults as the MS-ResNets: λ = 0.25, θ = 0.5 (`NEURON_DEFAULTS`).
  """
  stem_channels: int = 64
  stages: tuple = RESNET18_STAGES
  hidden: int | None = None
  stem_kernel: int = 3
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False, timesteps: int | None = None) -> Array:
    h, t, static = self.time_major(x, timesteps)
    h = self.build.conv_bn_lif(self.ch(self.stem_channels), weight_quant=self.quant.first,
                               spike_input=False, name="stem", lif_name="stem_lif",
                               kernel_size=self.stem_kernel, strides=self.stem_stride,
                               taps=_collects_taps(self), time_steps=t if static else None)(h, train)
    for i, (c, n, s) in enumerate(self.stages):
      h = Stage(self.build, SpikeAfterAddBlock, self.ch(c), n, s, name=f"layer{i + 1}")(h, train)
    h = h.mean(axis=(2, 3))
    if self.hidden is not None:
      h = self.build.gate("fc1")(h, self.build.dense(self.ch(self.hidden), name="fc1")(h, train))
      h = self.build.lif("fc1_lif")(h)
    return self.classifier(h, train)


class DigitsMLP(SpikingNet):
  """Flatten → dense 'fc1' (hidden·width units, bias) → 'lif1' → classifier 'fc'.
  Static input [B, F] or [B, H, W, C]; events [B, T, H, W, C]."""
  hidden: int = 128

  @nn.compact
  def __call__(self, x: Array, train: bool = False, timesteps: int | None = None) -> Array:
    h, t, static = self.time_major(x, timesteps, static_ndim=(2, 4))
    h = h.reshape(h.shape[:2] + (-1,))
    y = self.build.dense(self.ch(self.hidden), weight_quant=self.quant.first, name="fc1")(h, train)
    h = self.build.gate("fc1")(h, y)
    if static:
      h = _broadcast_time(h, t)
    h = self.build.lif("lif1")(h)
    return self.classifier(h, train)


class DigitsCNN(SpikingVGG):
  """Small VGG for 8×8 digits: conv 16 → LIF → pool → conv 32 → LIF → pool → fc (×width)."""
  layers: tuple = (16, "P", 32, "P")


# ----------------------------------------------------------------------------------------
# Registry and configuration.


def _vgg9(**kw):
  return SpikingVGG(layers=VGG9_LAYERS, **kw)


def _vgg16(**kw):
  return SpikingVGG(layers=VGG16_LAYERS, **kw)


def _msresnet18(**kw):
  return MSResNet(stem_channels=64, stages=RESNET18_STAGES, **kw)


def _msresnet19(**kw):
  return MSResNet(stem_channels=128, stages=RESNET19_STAGES, hidden=256, **kw)


def _sewresnet18(**kw):
  return SEWResNet(stem_channels=64, stages=RESNET18_STAGES, **kw)


def _resnet18(**kw):
  """ResNet-18 SNN (spike after the residual add): CIFAR stem conv3×3 stride 1, 64/128/256/512
  channels, (2, 2, 2, 2) blocks, avgpool → fc (the feature-KD paper's ResNet-18)."""
  return SpikingResNet(stem_channels=64, stages=RESNET18_STAGES, **kw)


def _resnet19(**kw):
  """ResNet-19 with the spike after the residual add, as the tdBN paper describes it: stem
  conv3×3 128, 128/256/512 channels, (3, 3, 2) blocks, avgpool → FC 256 → LIF → FC classes."""
  return SpikingResNet(stem_channels=128, stages=RESNET19_STAGES, hidden=256, **kw)


def _resnet19_spquant(**kw):
  """ResNet-19 as SpQuant-SNN's public code builds it (spike after the residual add): stem
  conv7×7 stride 2 with 128 channels, then 64/256/512 channels with (3, 3, 2) blocks, avgpool
  → FC 256 → LIF → FC classes. The 7×7 stride-2 stem halves a 32×32 image before the first
  block, unlike `resnet19`'s CIFAR stem."""
  return SpikingResNet(stem_channels=128, stem_kernel=7, stem_stride=2,
                       stages=RESNET19_SPQUANT_STAGES, hidden=256, **kw)


MODELS: dict[str, Callable[..., SpikingNet]] = {
    "vgg9": _vgg9,
    "vgg16": _vgg16,
    "msresnet18": _msresnet18,
    "msresnet19": _msresnet19,
    "sewresnet18": _sewresnet18,
    "resnet18": _resnet18,
    "resnet19": _resnet19,
    "resnet19_spquant": _resnet19_spquant,
    "digits_mlp": DigitsMLP,
    "digits_cnn": DigitsCNN,
}

# Family defaults used when the config leaves neuron.decay / neuron.threshold unset (None).
NEURON_DEFAULTS: dict[str, dict[str, float]] = {
    "msresnet18": {"decay": 0.25, "threshold": 0.5},
    "msresnet19": {"decay": 0.25, "threshold": 0.5},
    "resnet18": {"decay": 0.25, "threshold": 0.5},
    "resnet19": {"decay": 0.25, "threshold": 0.5},
    "resnet19_spquant": {"decay": 0.25, "threshold": 0.5},
}


def default_model_config() -> ml_collections.ConfigDict:
  """Every field of `create_model`'s config with its default.

  neuron.decay / threshold / alpha None: the family default (λ = 0.5, θ = 1.0, or
  λ = 0.25, θ = 0.5 for MS-ResNets and ResNet-18/19) and the surrogate's default slope.
  neuron.prune_prior and neuron.gate_rho None: no membrane-prior pruning, no learned gate.
  quant.* configs are {'kind': ..., **kwargs} for `mdsnn_jax.quant.registry`; first_layer /
  last_layer {'kind': 'same'} reuse quant.weight, {'kind': 'none'} keeps them full precision.
  """
  ph = ml_collections.config_dict.placeholder
  cfg = ml_collections.ConfigDict()
  cfg.name = "digits_mlp"
  cfg.width = 1.0
  cfg.timesteps = 4
  cfg.conv_impl = "auto"  # XLA autodiff (GPU/TPU, CPU on XNNPACK), custom-VJP conv on YNNPACK
  cfg.remat = "none"  # 'none' | 'layer' | 'time' (models.REMATS): memory for recomputation
  cfg.dtype = "float32"  # 'float32' | 'bfloat16' (models.DTYPES): the compute dtype
  cfg.lif_impl = "auto"  # membrane-only custom-VJP LIF on CPU, XLA's scan autodiff on GPU/TPU
  cfg.neuron = ml_collections.ConfigDict(dict(
      decay=ph(float), threshold=ph(float), reset="hard", surrogate="arctan", alpha=ph(float),
      detach_reset=False, learn_threshold=False, prune_prior=ph(float), gate_rho=ph(float)))
  cfg.quant = ml_collections.ConfigDict(dict(
      weight={"kind": "none"}, membrane={"kind": "none"}, first_layer={"kind": "none"},
      last_layer={"kind": "none"}, bn_fold=False, bias_bits=16))
  return cfg


def create_model(model_cfg: Any, num_classes: int) -> SpikingNet:
  """A linen model from a config like `default_model_config()` (a ConfigDict or dict).

  Fields: name, width, timesteps, neuron (dict), quant (dict: weight, membrane, first_layer,
  last_layer, bn_fold, bias_bits), conv_impl, remat, dtype, lif_impl. Missing fields take their
  defaults; unknown names raise ValueError.
  """
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  known = set(default_model_config().keys())
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f"unknown model config field(s) {unknown}; allowed: {sorted(known)}")
  name = cfg.get("name", "digits_mlp")
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
  neuron_cfg = {k: v for k, v in dict(cfg.get("neuron") or {}).items() if v is not None}
  neuron = NeuronConfig.from_dict({**NEURON_DEFAULTS.get(name, {}), **neuron_cfg})
  remat, dtype = cfg.get("remat", "none"), cfg.get("dtype", "float32")
  check_remat_dtype(remat, dtype)
  return MODELS[name](
      num_classes=num_classes, width=float(cfg.get("width", 1.0)),
      timesteps=int(cfg.get("timesteps", 4)), neuron=neuron,
      quant=QuantConfig.from_dict(cfg.get("quant")), conv_impl=cfg.get("conv_impl", "auto"),
      remat=remat, dtype=dtype, lif_impl=cfg.get("lif_impl", "auto"))


def init_variables(model: nn.Module, rng: Array, x: Array, *, timesteps: int | None = None
                   ) -> dict:
  """Jitted model.init(...) in eval mode, without the tap collections ('membranes', 'spikes').

  Compiled once per (model, input shape, timesteps): models are hashable, equal configs share it.
  """
  return _jit_init(model, rng, x, timesteps)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_init(model: nn.Module, rng: Array, x: Array, timesteps: int | None) -> dict:
  variables = model.init(rng, x, train=False, timesteps=timesteps)
  return {k: v for k, v in unfreeze(variables).items() if k not in TAP_COLLECTIONS}


def init_student_from_teacher(
    student_vars: Mapping[str, Any],
    teacher_vars: Mapping[str, Any],
    *,
    student_model: nn.Module | None = None,
    sample_input: Array | None = None,
    rng: Array | None = None,
) -> dict:
  """Copies every teacher leaf of 'params' and 'batch_stats' into the student's variables.

  The student's tree must be a superset of the teacher's (same paths, same shapes; extra
  student leaves are quantizer parameters 'wq' / 'mq', learnable thresholds 'theta_raw' and
  'quant_state'), else ValueError naming the path. With `student_model` and `sample_input`
  the weight quantizers are re-calibrated from the copied weights: the student's 'wq' params
  and its 'quant_state' are dropped and re-created by re-running quantizer.init_params /
  init_state inside an eval-mode forward on `sample_input` (for bn_fold students on the
  kernel folded with the copied running statistics). Other student-only leaves keep their
  values. Returns a new dict; the inputs are not modified.
  """
  out = {k: unfreeze(v) for k, v in student_vars.items()}
  for col in ("params", "batch_stats"):
    teacher = traverse_util.flatten_dict(unfreeze(teacher_vars.get(col, {})), sep="/")
    student = traverse_util.flatten_dict(out.get(col, {}), sep="/")
    for path, value in teacher.items():
      if path not in student:
        raise ValueError(
            f"teacher {col} leaf {path!r} has no counterpart in the student; the student tree "
            f"must be a superset of the teacher's (same architecture and width)")
      if jnp.shape(student[path]) != jnp.shape(value):
        raise ValueError(f"{col} leaf {path!r}: teacher shape {jnp.shape(value)} != student "
                         f"shape {jnp.shape(student[path])}")
      student[path] = jnp.asarray(value, jnp.result_type(student[path]))
    if student:
      out[col] = traverse_util.unflatten_dict(student, sep="/")
  if (student_model is None) != (sample_input is None):
    raise ValueError("re-calibration needs both student_model and sample_input (or neither)")
  if student_model is None:
    return out
  params = traverse_util.flatten_dict(out.get("params", {}), sep="/")
  params = {k: v for k, v in params.items() if "/wq/" not in f"/{k}/"}
  variables = {**{k: v for k, v in out.items() if k != "quant_state"},
               "params": traverse_util.unflatten_dict(params, sep="/")}
  rng = jax.random.PRNGKey(0) if rng is None else rng
  _, fresh = _jit_recalibrate(student_model, variables, sample_input, rng)
  out["params"] = unfreeze(fresh["params"])
  if "quant_state" in fresh:
    out["quant_state"] = unfreeze(fresh["quant_state"])
  return out


@functools.partial(jax.jit, static_argnums=0)
def _jit_recalibrate(model: nn.Module, variables: dict, x: Array, rng: Array):
  """Eval forward that (re-)creates the missing quantizer params / state from the weights."""
  return model.apply(variables, x, train=False, rngs={"params": rng},
                     mutable=["params", "quant_state"])


def param_count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))

