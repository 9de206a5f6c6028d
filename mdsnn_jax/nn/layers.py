"""Flax linen spiking layers: LIF, quantized conv / dense, tdBN and BN-folded QAT (docs/method.md).

Tensors are time-major: [T, B, ...] with channels last. Convolutions, dense layers and batch
norm run once on the merged T·B axis; only the LIF recurrence is scanned (`lif_scan`).

Variable collections:
  'params'        kernels, biases, BN scale / offset, learnable quantizer parameters (under
                  'wq' for weights, 'mq' for membranes) and learnable thresholds ('theta_raw').
  'batch_stats'   tdBN running mean / var (same names as `flax.linen.BatchNorm`).
  'quant_state'   non-gradient quantizer state (LQ-Net bases), updated in the forward when
                  train=True and the collection is mutable, like BN statistics.
  'membranes'     every LIF sows its pre-reset membrane h [T, B, ...] as 'h'.
  'spikes'        every LIF sows its spikes s [T, B, ...] as 's'.
  'prune_masks'   every membrane-prior LIF sows its active-channel masks [T, B, C] as 'm'.
  'gate_masks'    every learned channel gate (`ChannelGate`) sows its masks [T, B, C] as 'm'
  'gate_losses'   ... and its BCE loss against the mass target (a scalar) as 'bce'.

Quantizers come from `mdsnn_jax.quant.registry` configs ({'kind': ..., **kwargs}) or are passed
as ready `WeightQuantizer` / `MembraneQuantizer` tuples. Kind 'none' (or None) means full
precision and creates no quantizer variables, so a 'none'-quantized layer is numerically and
structurally identical to the float layer; a quantized layer's variables are a superset.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict
from jax.ad_checkpoint import checkpoint_name

from mdsnn_jax.lif_vjp import fused_lif_scan
from mdsnn_jax.neuron import RESETS, lif_scan, rlif_scan
from mdsnn_jax.nn.conv import IMPLS as CONV_IMPLS
from mdsnn_jax.nn.conv import conv2d
from mdsnn_jax.prune import (channel_gate_logits, gate_bce_loss, gate_mask, gated_lif_scan,
                             mass_target)
from mdsnn_jax.quant.base import MembraneQuantizer, WeightQuantizer
from mdsnn_jax.quant.batchnorm import fold_batchnorm, quantize_folded
from mdsnn_jax.quant.registry import make_membrane_quantizer, make_weight_quantizer
from mdsnn_jax.surrogate import SURROGATES

Array = jax.Array

# 'same' in a first/last-layer config means: use the body's weight quantizer.
SAME = "same"
# LIF implementations (see LIF).
LIF_IMPLS = ("scan", "fused", "auto")
# checkpoint_name of every convolution output (see models.REMATS).
CONV_OUT = "conv_out"
# The learned gate's bias at init: σ(0.1) > 0.5, so every channel starts open (a student
# starts as the teacher it was copied from), and a channel whose target is 0 can close after
# a few tens of Adam steps at lr ~1e-3.
GATE_BIAS_INIT = 0.1


# ----------------------------------------------------------------------------------------
# Configuration records (frozen and hashable, so modules holding them stay hashable).


def freeze_config(cfg: Any) -> Any:
  """A hashable copy of a quantizer config: Mappings / ConfigDicts become FrozenDicts."""
  if cfg is None or isinstance(cfg, (WeightQuantizer, MembraneQuantizer)):
    return cfg
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
    cfg = cfg.to_dict()
  if isinstance(cfg, Mapping):
    return FrozenDict({k: freeze_config(v) if isinstance(v, Mapping) else v for k, v in cfg.items()})
  if isinstance(cfg, str):
    return FrozenDict({"kind": cfg})
  raise ValueError(
      f"a quantizer config must be None, a kind name, a mapping with 'kind' or a quantizer tuple; got {cfg!r}")


def _kind(cfg: Any) -> str:
  if cfg is None:
    return "none"
  if isinstance(cfg, (WeightQuantizer, MembraneQuantizer)):
    return cfg.kind
  kind = cfg.get("kind")
  if not isinstance(kind, str):
    raise ValueError(f"quantizer config needs a string 'kind', got {cfg!r}")
  return kind


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
  """LIF parameters shared by every LIF layer of a model (see docs/method.md, 'LIF neuron').

  decay λ ∈ [0, 1], threshold θ > 0 (in the units of the input current), reset
  'hard' | 'soft' | 'none', surrogate name and slope alpha (None: the surrogate's default),
  detach_reset, and learn_threshold: a learnable per-channel θ, kept positive by the
  parametrisation θ = softplus(theta_raw) with theta_raw initialised so that θ = threshold.
  prune_prior: None (off) or p, SpQuant's membrane-prior channel gating (method page;
  `mdsnn_jax.prune.gated_lif_scan`): at t ≥ 1 a channel whose spatial-mean membrane at t−1 is
  below p gets zero input current.
  gate_rho: None (off) or ρ ∈ (0, 1], SpQuant's learned channel gate (method page, `ChannelGate`)
  on every conv + BN unit and hidden dense layer, trained towards keeping the channels that
  hold a share ρ of the output's peak mass (SpQuant: 0.85).
  learn_decay: a learnable per-channel λ = σ(decay_raw) (PLIF), always inside (0, 1), with
  decay_raw initialised to logit(decay); needs 0 < decay < 1. The LIF then runs `lif_scan`
  (scan autodiff), since the fused backward holds λ constant.
  """
  decay: float = 0.5
  threshold: float = 1.0
  reset: str = "hard"
  surrogate: str = "arctan"
  alpha: float | None = None
  detach_reset: bool = False
  learn_threshold: bool = False
  prune_prior: float | None = None
  gate_rho: float | None = None
  learn_decay: bool = False

  def __post_init__(self):
    if not (isinstance(self.decay, (int, float)) and 0.0 <= self.decay <= 1.0):
      raise ValueError(f"neuron decay must lie in [0, 1], got {self.decay!r}")
    if not (isinstance(self.threshold, (int, float)) and self.threshold > 0 and math.isfinite(self.threshold)):
      raise ValueError(f"neuron threshold must be a positive finite number, got {self.threshold!r}")
    if self.reset not in RESETS:
      raise ValueError(f"unknown reset {self.reset!r}; allowed resets: {list(RESETS)}")
    if self.surrogate not in SURROGATES:
      raise ValueError(f"unknown surrogate {self.surrogate!r}; known surrogates: {sorted(SURROGATES)}")
    if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
      raise ValueError(f"surrogate alpha must be None or a positive finite number, got {self.alpha!r}")
    if not isinstance(self.learn_decay, (bool, np.bool_)):
      raise ValueError(f"neuron learn_decay must be a bool, got {self.learn_decay!r}")
    if self.learn_decay and not 0.0 < self.decay < 1.0:
      raise ValueError(f"neuron learn_decay needs 0 < decay < 1 (its initial σ(decay_raw)), got "
                       f"decay={self.decay!r}")
    rho = self.gate_rho
    if rho is not None and (isinstance(rho, bool) or not isinstance(rho, (int, float))
                            or not 0.0 < rho <= 1.0):
      raise ValueError(f"neuron gate_rho must be None (no learned gate) or lie in (0, 1] (the "
                       f"share of the output's peak mass the gate keeps, e.g. 0.85), got {rho!r}")

  @classmethod
  def from_dict(cls, cfg: Mapping[str, Any] | None = None, **overrides) -> NeuronConfig:
    """From a dict / ConfigDict; None values keep the defaults; unknown keys raise ValueError."""
    if cfg is not None and hasattr(cfg, "to_dict"):
      cfg = cfg.to_dict()
    values = {**dict(cfg or {}), **overrides}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown neuron config field(s) {unknown}; allowed: {sorted(known)}")
    return cls(**{k: v for k, v in values.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  """Which quantizer goes where in a model.

  weight        weight quantizer of every conv / dense layer except the first and last.
  membrane      membrane quantizer of every LIF layer.
  first_layer   weight quantizer of the first layer (the stem); {'kind': 'same'} = `weight`.
  last_layer    weight quantizer of the classifier; {'kind': 'same'} = `weight`.
  bn_fold       conv + BN folded for QAT (`QConvBN`), else conv then tdBN.
  bias_bits     bit width of the folded bias (only with bn_fold and a weight quantizer).
  Configs are {'kind': ..., **kwargs} for `mdsnn_jax.quant.registry`, a quantizer tuple, or None
  (= {'kind': 'none'}, full precision).
  """
  weight: Any = None
  membrane: Any = None
  first_layer: Any = None
  last_layer: Any = None
  bn_fold: bool = False
  bias_bits: int = 16

  def __post_init__(self):
    for f in ("weight", "membrane", "first_layer", "last_layer"):
      cfg = getattr(self, f)
      object.__setattr__(self, f, freeze_config("none" if cfg is None else cfg))
    if _kind(self.weight) == SAME or _kind(self.membrane) == SAME:
      raise ValueError(f"kind {SAME!r} is only allowed for first_layer / last_layer")
    if not isinstance(self.bias_bits, int) or not 2 <= self.bias_bits <= 32:
      raise ValueError(f"bias_bits must be an int in 2..32, got {self.bias_bits!r}")

  @classmethod
  def from_dict(cls, cfg: Mapping[str, Any] | None = None) -> QuantConfig:
    if cfg is not None and hasattr(cfg, "to_dict"):
      cfg = cfg.to_dict()
    values = dict(cfg or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown quant config field(s) {unknown}; allowed: {sorted(known)}")
    return cls(**{k: v for k, v in values.items() if v is not None})

  @property
  def first(self) -> Any:
    return self.weight if _kind(self.first_layer) == SAME else self.first_layer

  @property
  def last(self) -> Any:
    return self.weight if _kind(self.last_layer) == SAME else self.last_layer


def resolve_weight_quantizer(cfg: Any) -> WeightQuantizer | None:
  """The `WeightQuantizer` of a config, or None for full precision (kind 'none')."""
  if isinstance(cfg, WeightQuantizer):
    return None if cfg.kind == "none" else cfg
  cfg = freeze_config(cfg)
  if _kind(cfg) == "none":
    return None
  return make_weight_quantizer(dict(cfg))


def resolve_membrane_quantizer(cfg: Any) -> MembraneQuantizer | None:
  """The `MembraneQuantizer` of a config, or None for a float membrane (kind 'none')."""
  if isinstance(cfg, MembraneQuantizer):
    return None if cfg.kind == "none" else cfg
  cfg = freeze_config(cfg)
  if _kind(cfg) == "none":
    return None
  return make_membrane_quantizer(dict(cfg))


def _has_leaves(fn, *args) -> bool:
  """Whether fn(*args) returns a pytree with any array (checked abstractly, no compute)."""
  return bool(jax.tree_util.tree_leaves(jax.eval_shape(fn, *args)))


def parameter_free_lif(neuron: NeuronConfig, membrane_quant: Any):
  """x [T, B, ..., C] -> spikes: what `LIF(neuron, membrane_quant, impl='fused',
  full_unroll=True)` computes, as a pure function, for a LIF that has no parameters (fixed θ,
  a membrane quantizer without parameters, no prune prior); None for one that has. A
  recomputed unit (`models.recompute_in_backward`) can then hold the LIF too: a closed-over
  parameter would get no gradient there."""
  if neuron.learn_threshold or neuron.learn_decay or neuron.prune_prior is not None:
    return None
  mq = resolve_membrane_quantizer(membrane_quant)
  if mq is not None and _has_leaves(mq.init_params):
    return None
  lif_kwargs = _lif_kwargs(neuron, neuron.threshold,
                           None if mq is None else functools.partial(mq.apply, {}))

  def spikes(x: Array) -> Array:
    return fused_lif_scan(x, unroll=x.shape[0], **lif_kwargs)[0]
  return spikes


def _lif_kwargs(neuron: NeuronConfig, threshold, membrane_quantizer, decay=None) -> dict:
  """The recurrence's keyword arguments shared by lif_scan, fused_lif_scan and their
  variants, so `parameter_free_lif` and `LIF` cannot drift apart."""
  return dict(decay=neuron.decay if decay is None else decay, threshold=threshold, reset=neuron.reset,
              surrogate=neuron.surrogate, alpha=neuron.alpha, detach_reset=neuron.detach_reset,
              membrane_quantizer=membrane_quantizer)


# ----------------------------------------------------------------------------------------
# Flax modules.


class LIF(nn.Module):
  """LIF layer on time-major input currents [T, B, ..., C] -> spikes [T, B, ..., C].

  h_t = λ·u_{t−1} + x_t, s_t = H(h_t − θ), reset, then u_t = Q_u(u_t) (method page). Sows the
  pre-reset membranes h into 'membranes'/'h' and the spikes into 'spikes'/'s' (both float32);
  the tap name is this module's path. With learn_threshold, θ = softplus(theta_raw) per
  channel (last axis). Computes in the dtype of x. impl 'fused' runs `lif_vjp.fused_lif_scan`
  (membrane-only residuals, one fused reverse scan) unless prune_prior or a membrane quantizer
  with parameters needs `lif_scan`; 'scan' is `lif_scan` and its autodiff; 'auto' is 'fused'
  on CPU and 'scan' on GPU/TPU (`resolve_lif_impl`). remat_time (model.remat='time'): the
  recurrence runs as `time_chunked_lif_scan` with c = `time_chunk_for(T)`, which keeps only
  every c-th state for the backward pass and recomputes the steps in between. full_unroll
  (model.remat='layer'): the fused recurrence runs fully unrolled at every T, not only up to
  `lif_vjp.FULL_UNROLL_MAX_T`: no loop buffers stacked per step, for less peak memory
  (BENCHMARKS.md, memory vs T) at a slower LIF from T ≈ 10 on. With learn_decay,
  λ = σ(decay_raw) per channel and the recurrence runs `lif_scan`. Forward-mode autodiff
  (jax.jvp, jacfwd) needs impl='scan': the fused backward is a custom VJP.
  """
  neuron: NeuronConfig = NeuronConfig()
  membrane_quant: Any = None
  remat_time: bool = False
  impl: str = "scan"
  full_unroll: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 3:
      raise ValueError(f"LIF input must be time-major [T, B, ..., C], got shape {x.shape}")
    cfg = self.neuron
    if self.remat_time and cfg.prune_prior is not None:
      raise ValueError("time-chunk remat (model.remat='time') does not support prune_prior: the "
                       "gate reads h_{t-1}, which a chunk boundary does not carry")
    threshold, decay = _neuron_params(self, cfg, x)
    mq_fn, mq_params = _membrane_fn(self, self.membrane_quant)
    impl = resolve_lif_impl(self.impl)
    lif_kwargs = _lif_kwargs(cfg, threshold, mq_fn, decay)
    if self.remat_time:
      s, h = time_chunked_lif_scan(x, time_chunk_for(x.shape[0]), **lif_kwargs)
    elif impl == "fused" and cfg.prune_prior is None and not mq_params and not cfg.learn_decay:
      # (a learned membrane quantizer's parameters would be closed over: scan autodiff then)
      s, h, _ = fused_lif_scan(x, unroll=x.shape[0] if self.full_unroll else None, **lif_kwargs)
    elif cfg.prune_prior is None:
      s, h, _ = lif_scan(x, **lif_kwargs)
    else:
      s, h, _, masks = gated_lif_scan(x, prior=cfg.prune_prior, **lif_kwargs)
      # Active-channel masks [T, B, C], for FLOPs accounting (prune.conv_lif_flops).
      self.sow("prune_masks", "m", masks, init_fn=tuple, reduce_fn=_latest)
    # Keep only the latest call's tap (a 1-tuple, flax's sow format), so variables returned by
    # `init` (where every collection is mutable) never make later applies accumulate.
    # Taps in float32 whatever the compute dtype, so distillation losses stay float32.
    self.sow("membranes", "h", h.astype(jnp.float32), init_fn=tuple, reduce_fn=_latest)
    self.sow("spikes", "s", s.astype(jnp.float32), init_fn=tuple, reduce_fn=_latest)
    return s


def _neuron_params(module: nn.Module, cfg: NeuronConfig, x: Array):
  """(θ, λ) of a LIF layer: learned per channel (last axis) when the config says so
  (θ = softplus(theta_raw), λ = σ(decay_raw)), else None for λ (the config's number)."""
  if cfg.learn_threshold:
    raw = module.param("theta_raw", nn.initializers.constant(inverse_softplus(cfg.threshold)),
                       (x.shape[-1],), jnp.float32)
    threshold = jax.nn.softplus(raw).astype(x.dtype)
  else:
    threshold = cfg.threshold
  decay = None
  if cfg.learn_decay:
    logit = math.log(cfg.decay / (1.0 - cfg.decay))
    raw = module.param("decay_raw", nn.initializers.constant(logit), (x.shape[-1],), jnp.float32)
    decay = jax.nn.sigmoid(raw).astype(x.dtype)
  return threshold, decay


def _membrane_fn(module: nn.Module, membrane_quant: Any):
  """(u -> Q(u) or None, the quantizer's params ({} when it has none)) of a LIF layer."""
  mq = resolve_membrane_quantizer(membrane_quant)
  if mq is None:
    return None, {}
  mq_params = module.param("mq", lambda _: mq.init_params()) if _has_leaves(mq.init_params) else {}
  return functools.partial(mq.apply, mq_params), mq_params


class RLIF(nn.Module):
  """Recurrent LIF layer on time-major currents [T, B, ..., N] -> spikes [T, B, ..., N]:

      h_t = λ·u_{t−1} + x_t + s_{t−1} @ W_rec,  s_t = H(h_t − θ),  reset,  u_t = Q_u(u_t)

  (`neuron.rlif_scan`; snnTorch's RLeaky with all_to_all, spyx's RLIF). W_rec [N, N] is
  'params'/'recurrent_kernel' (`recurrent_init`, default orthogonal with gain 0.5, so the
  recurrent current starts small and is norm-preserving); θ and λ learned as in `LIF`. Sows
  'membranes'/'h' and 'spikes'/'s' like `LIF`.
  """
  neuron: NeuronConfig = NeuronConfig()
  membrane_quant: Any = None
  recurrent_init: Any = nn.initializers.orthogonal(scale=0.5)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 3:
      raise ValueError(f"RLIF input must be time-major [T, B, ..., N], got shape {x.shape}")
    cfg = self.neuron
    if cfg.prune_prior is not None:
      raise ValueError("RLIF does not support prune_prior (membrane-prior channel gating)")
    n = x.shape[-1]
    w_rec = self.param("recurrent_kernel", self.recurrent_init, (n, n), jnp.float32)
    threshold, decay = _neuron_params(self, cfg, x)
    mq_fn, _ = _membrane_fn(self, self.membrane_quant)
    s, h, _ = rlif_scan(x, w_rec, **_lif_kwargs(cfg, threshold, mq_fn, decay))
    self.sow("membranes", "h", h.astype(jnp.float32), init_fn=tuple, reduce_fn=_latest)
    self.sow("spikes", "s", s.astype(jnp.float32), init_fn=tuple, reduce_fn=_latest)
    return s


class ChannelGate(nn.Module):
  """SpQuant's learned channel gate (docs/method.md, `mdsnn_jax.prune`) on the output y of a conv +
  BN unit (or a dense layer), predicted from the unit's input x; both time-major
  [T, B, ..., C], gated per row of the merged T·B axis:

      logits = softmax_c(avgpool(x)) · W + b        W 'gate_w' [C_in, C_out], b 'gate_b' [C_out]
      m = 1[σ(logits) > 0.5]  (STE: dσ)              ỹ = m · y   (broadcast over H, W)
      L_gate = BCE(logits, mass_target(sg(y), ρ))

  The gate reads the spikes coming into the unit, so the channels it closes need not be
  computed at all; the target is made from the ungated output (no gradient through it).
  Sows m [T, B, C_out] (float32) into 'gate_masks'/'m' and L_gate into 'gate_losses'/'bce',
  keeping only the latest call (as LIF's taps). W starts at 0 and b at GATE_BIAS_INIT > 0:
  every channel starts open. The gate computes in float32 whatever y's dtype.
  """
  rho: float = 0.85

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    if x.ndim < 3 or y.ndim < 3 or x.shape[:2] != y.shape[:2]:
      raise ValueError(f"ChannelGate needs time-major x [T, B, ..., C_in] and y [T, B, ..., C_out] "
                       f"with the same T and B; got x {x.shape} and y {y.shape}")
    c_in, c_out = x.shape[-1], y.shape[-1]
    w = self.param("gate_w", nn.initializers.zeros, (c_in, c_out), jnp.float32)
    b = self.param("gate_b", nn.initializers.constant(GATE_BIAS_INIT), (c_out,), jnp.float32)
    lead = y.shape[:2]
    rows = lambda a: a.reshape((-1,) + a.shape[2:]).astype(jnp.float32)  # noqa: E731
    logits = channel_gate_logits(rows(x), w, b)  # [T·B, C_out]
    mask = gate_mask(logits)
    target = mass_target(rows(jax.lax.stop_gradient(y)), self.rho)
    self.sow("gate_losses", "bce", gate_bce_loss(logits, target), init_fn=tuple,
             reduce_fn=_latest)
    self.sow("gate_masks", "m", jax.lax.stop_gradient(mask).reshape(lead + (c_out,)),
             init_fn=tuple, reduce_fn=_latest)
    return y * mask.reshape(lead + (1,) * (y.ndim - 3) + (c_out,)).astype(y.dtype)


def _quantize_kernel(module: nn.Module, wq: WeightQuantizer, kernel: Array, train: bool
                     ) -> tuple[Any, Any]:
  """Creates / updates the quantizer variables of `module`; returns (params, state)."""
  w0 = jax.lax.stop_gradient(kernel)
  params = module.param("wq", lambda _: wq.init_params(w0)) if _has_leaves(wq.init_params, w0) else {}
  state = {}
  if _has_leaves(wq.init_state, w0):
    var = module.variable("quant_state", "wq", wq.init_state, w0)
    if train and not module.is_initializing() and module.is_mutable_collection("quant_state"):
      var.value = wq.update_state(var.value, w0)
    state = var.value
  return params, state


class QConv(nn.Module):
  """2-D convolution with a fake-quantized kernel, on [..., H, W, C_in] (leading axes merged).

  kernel HWIO in 'params'/'kernel'; quantizer params in 'params'/'wq', state in
  'quant_state'/'wq'. padding None = k//2 on each side (PyTorch's padding=k//2, which differs
  from XLA 'SAME' at stride 2); also 'SAME', 'VALID' or [(lo, hi), (lo, hi)].
  `fold=(mean, var, scale, offset, eps)` folds a BN into the kernel before quantization
  (docs/method.md): W' = W·γ/√(σ²+ε), b' = β + (b − μ)·γ/√(σ²+ε); the folded bias is quantized with
  `bias_bits` on the accumulator scale (`quant.batchnorm.quantize_folded`). quantize=False
  gives the float conv with the raw kernel (used for BN batch statistics).
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Any = None
  use_bias: bool = False
  weight_quant: Any = None
  bias_bits: int = 16
  conv_impl: str = "xla"
  kernel_init: Any = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x: Array, train: bool = False, *, fold: tuple | None = None,
               quantize: bool = True) -> Array:
    if x.ndim < 4:
      raise ValueError(f"QConv input must be [..., H, W, C], got shape {x.shape}")
    k = _pair(self.kernel_size, "kernel_size")
    strides = _pair(self.strides, "strides")
    padding = ((k[0] // 2,) * 2, (k[1] // 2,) * 2) if self.padding is None else self.padding
    kernel = self.param("kernel", self.kernel_init, (*k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
    if fold is not None:
      kernel, bias = fold_batchnorm(kernel, bias, *fold)
    if quantize:
      kernel, bias = _quantize_layer(self, kernel, bias, train, folded=fold is not None)
    lead = x.shape[:-3]
    y = _conv(x.reshape((-1,) + x.shape[-3:]), kernel.astype(x.dtype), strides, padding, self.conv_impl)
    # Named so that model.remat='layer' can keep conv outputs and recompute only BN and LIF.
    y = checkpoint_name(y.reshape(lead + y.shape[1:]), CONV_OUT)
    return y if bias is None else y + bias.astype(y.dtype)


def _quantize_layer(module, kernel, bias, train, folded):
  wq = resolve_weight_quantizer(module.weight_quant)
  if wq is None:
    return kernel, bias
  params, state = _quantize_kernel(module, wq, kernel, train)
  if folded:
    return quantize_folded(kernel, bias, wq, params, state, bias_bits=module.bias_bits)
  return wq.apply(params, state, kernel), bias


class QDense(nn.Module):
  """Dense layer y = x·Q(W) + b on [..., C_in] (kernel (in, out); quantizer as in `QConv`)."""
  features: int
  use_bias: bool = True
  weight_quant: Any = None
  kernel_init: Any = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
    wq = resolve_weight_quantizer(self.weight_quant)
    if wq is not None:
      params, state = _quantize_kernel(self, wq, kernel, train)
      kernel = wq.apply(params, state, kernel)
    y = jnp.dot(x, kernel.astype(x.dtype))
    return y if bias is None else y + bias.astype(y.dtype)


class TDBatchNorm(nn.Module):
  """Threshold-dependent BN (tdBN): per-channel BN over ALL leading axes, i.e. the merged T·B
  (and spatial) axes of a time-major [T, B, ..., C] tensor.

  y = γ·(x − μ)/√(σ² + ε) + β; training uses the batch statistics (biased variance, as flax)
  and updates the running ones (r ← m·r + (1 − m)·batch) unless initialising; eval uses the
  running ones. Variables are named as `flax.linen.BatchNorm`'s ('scale', 'bias'; 'mean',
  'var'). γ starts at `scale_init` (tdBN's α·θ). return_stats=True returns (μ, σ², γ, β) as
  used for folding instead of normalising (x may then be None with `features` given).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: float = 1.0

  @nn.compact
  def __call__(self, x: Array | None, train: bool = False, *, return_stats: bool = False,
               features: int | None = None):
    c = x.shape[-1] if x is not None else features
    if c is None:
      raise ValueError("TDBatchNorm needs an input or `features`")
    scale = self.param("scale", nn.initializers.constant(self.scale_init), (c,), jnp.float32)
    offset = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      if x is None:
        raise ValueError("TDBatchNorm in training needs the input for its batch statistics")
      mean, var = batch_moments(x)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
        ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
    else:
      mean, var = ra_mean.value, ra_var.value
    if return_stats:
      return mean, var, scale, offset
    y = (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + offset
    return y.astype(x.dtype)


class QConvBN(nn.Module):
  """Conv + tdBN unit with children 'conv' (`QConv`, no bias) and 'bn' (`TDBatchNorm`).

  bn_fold=False: BN(Q(W) ∗ x). bn_fold=True (BN-folded QAT, docs/method.md): the BN is folded into
  the conv before quantization, W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), using the batch
  statistics of the float conv output W ∗ x in training (running stats updated) and the
  running statistics in eval; out = Q(W') ∗ x + Q_b(b'). Both modes have the same variables,
  so a folded student can load an unfolded teacher; unquantized, both compute the same function.
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: Any = None
  weight_quant: Any = None
  bn_fold: bool = False
  bias_bits: int = 16
  conv_impl: str = "xla"
  momentum: float = 0.9
  epsilon: float = 1e-5
  scale_init: float = 1.0

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    conv = QConv(self.features, self.kernel_size, self.strides, self.padding, use_bias=False,
                 weight_quant=self.weight_quant, bias_bits=self.bias_bits,
                 conv_impl=self.conv_impl, name="conv")
    bn = TDBatchNorm(self.momentum, self.epsilon, self.scale_init, name="bn")
    if not self.bn_fold:
      return bn(conv(x, train), train)
    if train:
      stats = bn(conv(x, train, quantize=False), train, return_stats=True)
    else:
      stats = bn(None, train, return_stats=True, features=self.features)
    return conv(x, train, fold=(*stats, self.epsilon))


# ----------------------------------------------------------------------------------------
# Pure functions.


def _latest(previous: tuple, value: Array) -> tuple:
  del previous
  return (value,)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
  t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
  if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and i >= 1 for i in t):
    raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
  return int(t[0]), int(t[1])


def _conv(x: Array, kernel: Array, strides: tuple[int, int], padding: Any, impl: str) -> Array:
  """NHWC ∗ HWIO -> NHWC; the single call site of the convolution. impl: 'xla' (plain XLA),
  'fast' (XLA forward, CPU-fast custom backward) or 'auto' (see `mdsnn_jax.nn.conv`)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {impl!r}; allowed: {list(CONV_IMPLS)}")
  return conv2d(x, kernel, strides=strides, padding=padding, impl=impl)


def resolve_lif_impl(impl: str) -> str:
  """'scan' or 'fused': impl, with 'auto' = 'fused' on CPU (measured faster there, see
  BENCHMARKS.md) and 'scan' (XLA's own autodiff) on GPU/TPU, where it is unmeasured."""
  if impl not in LIF_IMPLS:
    raise ValueError(f"unknown lif_impl {impl!r}; allowed: {list(LIF_IMPLS)}")
  if impl == "auto":
    return "fused" if jax.default_backend() == "cpu" else "scan"
  return impl


def time_chunk_for(t: int) -> int:
  """The chunk length of `time_chunked_lif_scan` for T = t: the smallest divisor of t that is
  ≥ √t, which balances the kept states (t/c) against one chunk's recomputed steps (c)."""
  if not (isinstance(t, (int, np.integer)) and t >= 1):
    raise ValueError(f"T must be a positive int, got {t!r}")
  return next(c for c in range(1, t + 1) if t % c == 0 and c * c >= t)


def time_chunked_lif_scan(x: Array, chunk: int, **lif_kwargs) -> tuple[Array, Array]:
  """`lif_scan` over time-major x [T, ...] as T/chunk chunks, each under `jax.checkpoint`.

  The forward keeps only the state u at every chunk boundary (and the input, which the
  caller holds anyway); the backward recomputes one chunk's forward at a time, so the
  recurrence's residuals shrink from O(T) to O(T/chunk + chunk) steps. Same spikes, membranes
  and gradients as `lif_scan` (tests/test_remat.py). chunk must divide T. Returns (s, h).
  """
  t = x.shape[0]
  if not (isinstance(chunk, (int, np.integer)) and chunk >= 1 and t % chunk == 0):
    raise ValueError(f"time chunk must be a positive divisor of T = {t}, got {chunk!r}")
  u0 = lif_kwargs.pop("u0", None)
  u0 = jnp.zeros(x.shape[1:], x.dtype) if u0 is None else jnp.asarray(u0, x.dtype)

  @jax.checkpoint
  def body(u, xc):
    s, h, u_next = lif_scan(xc, u0=u, **lif_kwargs)
    return u_next, (s, h)

  _, (s, h) = jax.lax.scan(body, u0, x.reshape((t // chunk, chunk) + x.shape[1:]))
  return s.reshape(x.shape), h.reshape(x.shape)


def batch_moments(x: Array) -> tuple[Array, Array]:
  """Per-channel (last axis) mean and biased variance over all other axes, in float32."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=axes)
  var = jnp.mean(jnp.square(x32 - mean), axis=axes)
  return mean, var


def inverse_softplus(y: float) -> float:
  """x with softplus(x) = log(1 + eˣ) = y, for y > 0 (stable for large y)."""
  if not y > 0:
    raise ValueError(f"inverse_softplus needs y > 0, got {y}")
  return float(y + math.log(-math.expm1(-y)))
