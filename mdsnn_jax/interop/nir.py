"""Export to and import from NIR, the Neuromorphic Intermediate Representation (`nir`).

    graph = to_nir(model, variables, sample_input)     # nir.NIRGraph; nir.write(path, graph)
    model, variables = from_nir(graph)                 # a Flax `NIRNet` running the graph

Neuron mapping. Ours (docs/method.md, 'LIF neuron'), per timestep with input current x_t:

    h_t = λ·u_{t−1} + x_t,    s_t = H(h_t − θ),    u_t = h_t·(1 − s_t)      (hard reset)

NIR's LIF is τ·dv/dt = (v_leak − v) + R·I, spiking when v > v_threshold and then setting
v = v_reset. Its forward-Euler step of length dt, the discretisation snnTorch's
`import_from_nir` / `export_to_nir` use (β = 1 − dt/τ, input weight R·dt/τ), is

    v_t = (1 − dt/τ)·v_{t−1} + (dt/τ)·v_leak + (R·dt/τ)·I_t

so ours is exactly  τ = dt/(1 − λ),  R = τ/dt = 1/(1 − λ),  v_leak = 0,  v_threshold = θ,
v_reset = 0  (then 1 − dt/τ = λ and R·dt/τ = 1). λ = 1 (no leak) is NIR's IF, dv/dt = R·I,
whose Euler step v_t = v_{t−1} + dt·R·I_t gives R = 1/dt. dt defaults to 1e-4 s, the value
snnTorch's importer hard-codes. Units: dt and τ in seconds, v and I in units of our
(dimensionless) current. Spikes: ours fire at h ≥ θ, NIR / snnTorch at v > θ; the two
differ only where the membrane equals the threshold exactly.

Layers: QConv / QDense with batch norm folded (W' = Q(W)·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε);
with bn_fold the folded, fake-quantized kernel and bias the layer itself uses) → `Conv2d`
(weights OIHW, channels first) / `Affine` (weight (out, in)); 2×2 average pooling and global
average pooling → `AvgPool2d` (+ `Flatten`); our row-major flatten of [H, W, C] → `Flatten`
of (C, H, W) with the next `Affine`'s columns permuted to match; residual additions → several
edges into one node (NIR sums a node's inputs); the classifier → `Affine` → `Output`.
Node names are our module paths with '/' replaced by '.'. Metadata: the graph carries T
('timesteps'), dt and the model name; weight nodes their quantizer kind, bits and scale
(where the grid is uniform) and whether BN was folded; LIF nodes λ and the membrane
quantizer's kind.

Not expressible in NIR (a ValueError naming the layer, never a silent approximation):
soft (subtractive) reset, no reset, SpQuant's membrane-prior channel gating, and a
per-step membrane quantizer u_t = Q_u(u_t). For the membrane quantizer,
`membrane_quant='fp_twin'` exports the float-membrane twin instead and warns.

Import supports Input, Output, Affine, Linear, Conv2d, LIF, IF, AvgPool2d, SumPool2d and
Flatten; anything else is a ValueError naming the node type. The imported `NIRNet` takes the
same inputs as our models (static [B, *shape] repeated over T, or events [B, T, *shape];
channels last for images) and returns the Output node's value per timestep [T, B, ...]; it
sows every LIF's pre-reset membrane and spikes into 'membranes' / 'spikes' under the node's
name.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from mdsnn_jax.neuron import lif_scan
from mdsnn_jax.nn import conv as conv_lib
from mdsnn_jax.nn.layers import (QConvBN, resolve_membrane_quantizer,
                                 resolve_weight_quantizer)
from mdsnn_jax.nn.models import DigitsMLP, MSResNet, SEWResNet, SpikingVGG
from mdsnn_jax.quant.batchnorm import fold_batchnorm, quantize_folded

DEFAULT_DT = 1e-4  # seconds; snnTorch's import_from_nir assumes this step
MEMBRANE_QUANT_MODES = ("error", "fp_twin")
IMPORT_NODE_TYPES = ("Input", "Output", "Affine", "Linear", "Conv2d", "LIF", "IF",
                     "AvgPool2d", "SumPool2d", "Flatten")


def _nir():
  try:
    import nir  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("NIR export / import needs the `nir` package: pip install "
                      "'mdsnn-jax[interop]'") from e
  return nir


# ----------------------------------------------------------------------------------------
# Pure neuron-parameter mapping.


def lif_to_nir_params(decay, threshold, shape: Sequence[int], dt: float = DEFAULT_DT
                      ) -> dict[str, np.ndarray]:
  """NIR LIF / IF parameters (arrays of `shape`) reproducing h = λ·u + x, hard reset to 0.

  λ < 1: {'tau': dt/(1−λ), 'r': 1/(1−λ), 'v_leak': 0, 'v_threshold': θ, 'v_reset': 0};
  λ = 1: the IF parameters {'r': 1/dt, 'v_threshold': θ, 'v_reset': 0}.
  decay: a float, or an array broadcastable to `shape` (per neuron, e.g. a learned
  λ = σ(decay_raw)) with every λ < 1 or every λ = 1. threshold: likewise.
  """
  if not dt > 0:
    raise ValueError(f"dt must be positive, got {dt!r}")
  shape = tuple(int(s) for s in shape)
  if isinstance(decay, (int, float, np.floating)) and not isinstance(decay, bool):
    if not 0.0 <= decay <= 1.0:
      raise ValueError(f"decay must be a float in [0, 1], got {decay!r}")
    lam = np.full(shape, float(decay))
  else:
    try:
      lam = np.broadcast_to(np.asarray(decay, np.float64), shape).copy()
    except (TypeError, ValueError):
      raise ValueError(f"decay must be a float in [0, 1] or an array broadcastable to {shape}, "
                       f"got {decay!r}") from None
    if not np.all((lam >= 0) & (lam <= 1)):
      raise ValueError(f"decay must lie in [0, 1], got values in [{lam.min()}, {lam.max()}]")
  theta = np.broadcast_to(np.asarray(threshold, np.float64), shape).copy()
  full = lambda v: np.full(shape, v, np.float64)
  if np.all(lam == 1.0):
    return {"r": full(1.0 / dt), "v_threshold": theta, "v_reset": full(0.0)}
  if np.any(lam == 1.0):
    raise ValueError("decay mixes λ = 1 (NIR's IF) with λ < 1 (LIF) in one layer; NIR has no "
                     "node for that")
  tau = dt / (1.0 - lam)
  return {"tau": tau, "r": tau / dt, "v_leak": full(0.0), "v_threshold": theta,
          "v_reset": full(0.0)}


def rlif_to_nir_nodes(name: str, recurrent_weight, *, decay, threshold, dt: float = DEFAULT_DT
                      ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
  """The NIR nodes and edges of a recurrent LIF layer (`neuron.rlif_scan`, `nn.RLIF`).

  h_t = λ·u_{t−1} + x_t + s_{t−1} @ W_rec is a LIF node '<name>.lif' whose output also feeds
  a Linear node '<name>.w_rec' (weight W_recᵀ, NIR's (out, in)) back into it: NIR sums a
  node's inputs, and the edge's one-step delay gives s_{t−1} (snnTorch's importer turns this
  pair into an RLeaky). Connect the layer's input to, and take its output from, '<name>.lif'.
  Returns ({node name: node}, [edges]).
  """
  nir = _nir()
  if not isinstance(name, str) or not name or "." in name or "/" in name:
    raise ValueError(f"name must be a non-empty string without '.' or '/' (snnTorch's importer "
                     f"splits node names at '.'), got {name!r}")
  w = np.asarray(recurrent_weight, np.float32)
  if w.ndim != 2 or w.shape[0] != w.shape[1]:
    raise ValueError(f"recurrent_weight must be a square (N, N) matrix, got shape {w.shape}")
  n = w.shape[0]
  params = lif_to_nir_params(decay, threshold, (n,), dt)
  lam = np.broadcast_to(np.asarray(decay, np.float64), (n,))
  meta = {"decay": float(lam[0]) if np.all(lam == lam[0]) else lam.copy(), "recurrent": 1}
  lif = nir.IF(**params, metadata=meta) if "tau" not in params else nir.LIF(**params, metadata=meta)
  lif_name, rec_name = f"{name}.lif", f"{name}.w_rec"
  nodes = {lif_name: lif, rec_name: nir.Linear(weight=np.ascontiguousarray(w.T))}
  return nodes, [(lif_name, rec_name), (rec_name, lif_name)]


def rlif_to_nir(recurrent_weight, *, decay, threshold, input_weight=None, input_bias=None,
                dt: float = DEFAULT_DT, timesteps: int | None = None, name: str = "rlif"):
  """A NIR graph Input → [Affine] → recurrent LIF (`rlif_to_nir_nodes`) → Output.

  input_weight: an optional dense input layer (in, N), ours x_t = i_t @ W_in + b (NIR's
  Affine weight is its transpose); without it the input is the current x_t itself [N].
  Metadata: dt and, when given, the number of timesteps.
  """
  nir = _nir()
  nodes, edges = rlif_to_nir_nodes(name, recurrent_weight, decay=decay, threshold=threshold, dt=dt)
  n = int(np.shape(recurrent_weight)[0])
  lif = f"{name}.lif"
  if input_weight is None:
    if input_bias is not None:
      raise ValueError("input_bias was given without input_weight")
    nodes["input"] = nir.Input(input_type={"input": np.array([n])})
    edges.append(("input", lif))
  else:
    w_in = np.asarray(input_weight, np.float32)
    if w_in.ndim != 2 or w_in.shape[1] != n:
      raise ValueError(f"input_weight must have shape (in, {n}), got {w_in.shape}")
    b = np.zeros(n, np.float32) if input_bias is None else np.asarray(input_bias, np.float32)
    if b.shape != (n,):
      raise ValueError(f"input_bias must have shape ({n},), got {b.shape}")
    nodes["input"] = nir.Input(input_type={"input": np.array([w_in.shape[0]])})
    nodes["fc"] = nir.Affine(weight=np.ascontiguousarray(w_in.T), bias=b)
    edges += [("input", "fc"), ("fc", lif)]
  nodes["output"] = nir.Output(output_type={"output": np.array([n])})
  edges.append((lif, "output"))
  meta = {"dt": float(dt)}
  if timesteps is not None:
    meta["timesteps"] = int(timesteps)
  return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def nir_neuron_to_ours(node, dt: float = DEFAULT_DT, name: str = "?"
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(λ, gain g, θ) arrays with h = λ·u + g·I (Euler step dt) for a NIR LIF or IF node.

  LIF: λ = 1 − dt/τ, g = R·dt/τ; IF: λ = 1, g = R·dt. Needs v_leak = 0 and v_reset = 0
  (ValueError naming the node otherwise) and 0 ≤ λ ≤ 1.
  """
  kind = type(node).__name__
  v_reset = np.asarray(node.v_reset, np.float64)
  if np.any(v_reset != 0):
    raise ValueError(f"NIR {kind} node {name!r}: v_reset must be 0 (our hard reset sets u = 0), "
                     f"got values in [{v_reset.min()}, {v_reset.max()}]")
  r = np.asarray(node.r, np.float64)
  if kind == "IF":
    decay, gain = np.ones_like(r), r * dt
  else:
    v_leak = np.asarray(node.v_leak, np.float64)
    if np.any(v_leak != 0):
      raise ValueError(f"NIR LIF node {name!r}: v_leak must be 0 (ours has no resting "
                       f"potential), got values in [{v_leak.min()}, {v_leak.max()}]")
    tau = np.asarray(node.tau, np.float64)
    if np.any(~(tau > 0)):
      raise ValueError(f"NIR LIF node {name!r}: tau must be positive, got min {tau.min()}")
    decay, gain = 1.0 - dt / tau, r * dt / tau
  if np.any(decay < 0) or np.any(decay > 1):
    raise ValueError(f"NIR {kind} node {name!r}: λ = 1 − dt/τ must lie in [0, 1] for dt={dt}; "
                     f"got [{decay.min()}, {decay.max()}] (tau shorter than dt?)")
  return decay, gain, np.asarray(node.v_threshold, np.float64)


# ----------------------------------------------------------------------------------------
# Export.


def _get(tree: Mapping, path: Sequence[str], default=None):
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return default
    tree = tree[key]
  return tree


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float32)


def _kind_of(cfg) -> str:
  if cfg is None:
    return "none"
  return getattr(cfg, "kind", None) or cfg.get("kind", "none")


class _Exporter:
  """Collects NIR nodes and edges while walking one of our models."""

  def __init__(self, model, variables, spikes, dt, membrane_quant):
    self.nir = _nir()
    self.model = model
    self.v = {k: unfreeze(v) for k, v in variables.items()}
    self.spikes = spikes  # {tap path: ShapeDtypeStruct [T, B, ..., C]}
    self.dt = dt
    self.membrane_quant = membrane_quant
    self.nodes: dict[str, Any] = {}
    self.edges: list[tuple[str, str]] = []
    self.shape: tuple[int, ...] = ()  # channels-first per-sample shape of the current stream
    mq = resolve_membrane_quantizer(model.quant.membrane)
    self.mq_kind = None if mq is None else mq.kind

  # -- nodes --------------------------------------------------------------------------

  def add(self, name: str, node, sources: Sequence[str]) -> list[str]:
    if name in self.nodes:
      raise ValueError(f"duplicate NIR node name {name!r}")
    self.nodes[name] = node
    self.edges.extend((s, name) for s in sources)
    return [name]

  def _weight_meta(self, wq_cfg, wq, params, state, kernel) -> dict:
    meta = {"weight_quant": _kind_of(wq_cfg)}
    if wq is not None:
      meta["weight_bits"] = int(wq.bits)
      try:
        _, scale = wq.to_integer(params, state, kernel)
        scale = _np(scale)  # HDF5 stores a 0-d array only uncompressed: write a float
        meta["weight_scale"] = float(scale) if scale.ndim == 0 else scale
      except NotImplementedError:
        pass  # a non-uniform grid (LQ-Net) has no single scale
    return meta

  def conv_bn(self, path: tuple, sources, *, wq_cfg, strides=1, kernel_size=3) -> list[str]:
    quant = self.model.quant
    eps = QConvBN.epsilon
    p, bs = _get(self.v["params"], path), _get(self.v.get("batch_stats", {}), path)
    if p is None or bs is None:
      raise ValueError(f"variables have no conv + BN unit at {'/'.join(path)!r}")
    kernel = jnp.asarray(p["conv"]["kernel"])
    stats = (bs["bn"]["mean"], bs["bn"]["var"], p["bn"]["scale"], p["bn"]["bias"])
    wq = resolve_weight_quantizer(wq_cfg)
    wq_params = p["conv"].get("wq", {})
    wq_state = _get(self.v.get("quant_state", {}), path + ("conv", "wq"), {})
    if quant.bn_fold:
      k, b = fold_batchnorm(kernel, None, *stats, eps)
      meta_kernel = k
      if wq is not None:
        k, b = quantize_folded(k, b, wq, wq_params, wq_state, bias_bits=quant.bias_bits)
    else:
      meta_kernel = kernel
      if wq is not None:
        kernel = wq.apply(wq_params, wq_state, kernel)
      k, b = fold_batchnorm(kernel, None, *stats, eps)
    meta = {"bn_folded": 1, **self._weight_meta(wq_cfg, wq, wq_params, wq_state, meta_kernel)}
    if wq is not None and quant.bn_fold:
      meta["bias_bits"] = int(quant.bias_bits)
    pad = kernel_size // 2
    c, h, w = self.shape
    self.shape = (int(k.shape[-1]), (h + 2 * pad - kernel_size) // strides + 1,
                  (w + 2 * pad - kernel_size) // strides + 1)
    node = self.nir.Conv2d(
        input_shape=(h, w), weight=np.transpose(_np(k), (3, 2, 0, 1)), stride=(strides, strides),
        padding=(pad, pad), dilation=(1, 1), groups=1, bias=_np(b), metadata=meta)
    return self.add(".".join(path), node, sources)

  def dense(self, path: tuple, sources, *, wq_cfg) -> list[str]:
    p = _get(self.v["params"], path)
    if p is None:
      raise ValueError(f"variables have no dense layer at {'/'.join(path)!r}")
    kernel = jnp.asarray(p["kernel"])
    wq = resolve_weight_quantizer(wq_cfg)
    wq_params = p.get("wq", {})
    wq_state = _get(self.v.get("quant_state", {}), path + ("wq",), {})
    meta = self._weight_meta(wq_cfg, wq, wq_params, wq_state, kernel)
    if wq is not None:
      kernel = wq.apply(wq_params, wq_state, kernel)
    k = _np(kernel)  # (in, out), rows in our flatten order
    if len(self.shape) == 3:  # our flatten of [H, W, C] -> NIR Flatten of (C, H, W)
      sources = self.flatten(".".join(path) + "_flatten", sources)
      c, h, w = self.prev_shape
      k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    if k.shape[0] != int(np.prod(self.shape)):
      raise ValueError(f"dense layer {'/'.join(path)!r} expects {k.shape[0]} inputs but the "
                       f"stream has shape {self.shape}")
    bias = _np(p["bias"]) if "bias" in p else np.zeros(k.shape[1], np.float32)
    self.shape = (int(k.shape[1]),)
    node = self.nir.Affine(weight=np.ascontiguousarray(k.T), bias=bias, metadata=meta)
    return self.add(".".join(path), node, sources)

  def flatten(self, name: str, sources) -> list[str]:
    self.prev_shape = self.shape
    node = self.nir.Flatten(input_type={"input": np.array(self.shape)}, start_dim=0, end_dim=-1)
    self.shape = (int(np.prod(self.shape)),)
    return self.add(name, node, sources)

  def pool(self, name: str, sources, window: tuple[int, int]) -> list[str]:
    c, h, w = self.shape
    self.shape = (c, (h - window[0]) // window[0] + 1, (w - window[1]) // window[1] + 1)
    node = self.nir.AvgPool2d(kernel_size=np.array(window), stride=np.array(window),
                              padding=np.array([0, 0]))
    return self.add(name, node, sources)

  def lif(self, path: tuple, sources) -> list[str]:
    name = "/".join(path)
    if name not in self.spikes:
      raise ValueError(f"model sowed no spikes for LIF layer {name!r}")
    tap = self.spikes[name].shape  # [T, B, ..., C]
    shape = (tap[-1], *tap[2:-1])  # channels first
    if tuple(shape) != tuple(self.shape):
      raise ValueError(f"LIF layer {name!r} has shape {shape} but the stream has {self.shape}")
    neuron = self.model.neuron
    if neuron.learn_threshold:
      raw = _get(self.v["params"], path + ("theta_raw",))
      theta = _np(jax.nn.softplus(jnp.asarray(raw)))
      theta = theta.reshape((-1,) + (1,) * (len(shape) - 1))  # per channel
    else:
      theta = float(neuron.threshold)
    if getattr(neuron, "learn_decay", False):
      raw = _get(self.v["params"], path + ("decay_raw",))
      decay = _np(jax.nn.sigmoid(jnp.asarray(raw))).astype(np.float64)
      decay = decay.reshape((-1,) + (1,) * (len(shape) - 1))  # per channel
      meta = {"decay": decay.reshape(-1).copy(), "learn_decay": 1}
    else:
      decay = float(neuron.decay)
      meta = {"decay": decay}
    params = lif_to_nir_params(decay, theta, shape, self.dt)
    if self.mq_kind is not None:
      meta["membrane_quant_dropped"] = self.mq_kind
    node = (self.nir.IF(**params, metadata=meta) if "tau" not in params
            else self.nir.LIF(**params, metadata=meta))
    return self.add(".".join(path), node, sources)


def _check_exportable(model, membrane_quant: str, layer: str) -> None:
  """ValueError (or, for membrane_quant='fp_twin', a warning) for what NIR cannot express."""
  neuron = model.neuron
  name = layer
  if neuron.reset != "hard":
    raise ValueError(
        f"layer {name!r}: reset={neuron.reset!r} cannot be exported to NIR; NIR's LIF / IF "
        f"set the membrane to v_reset after a spike (only our reset='hard' with v_reset = 0 "
        f"maps onto it; a soft reset u = h − θ·s has no NIR node)")
  if neuron.prune_prior is not None:
    raise ValueError(
        f"layer {name!r}: membrane-prior channel gating (neuron.prune_prior="
        f"{neuron.prune_prior}) cannot be exported to NIR: it zeroes a channel's input from "
        f"the previous step's spatial-mean membrane, which no NIR node computes")
  if neuron.gate_rho is not None:
    raise ValueError(
        f"layer {name!r}: the learned channel gate (neuron.gate_rho={neuron.gate_rho}) cannot "
        f"be exported to NIR: it zeroes output channels per sample from a softmax of the "
        f"pooled input, which no NIR node computes")
  mq = resolve_membrane_quantizer(model.quant.membrane)
  if mq is not None:
    if membrane_quant == "error":
      raise ValueError(
          f"layer {name!r}: the per-step membrane quantizer {mq.kind!r} (u_t = Q_u(u_t), "
          f"{len(mq.levels)} levels) cannot be expressed in NIR, whose LIF state is "
          f"continuous; pass membrane_quant='fp_twin' to export the float-membrane twin")
    warnings.warn(
        f"exporting the float-membrane twin: the membrane quantizer {mq.kind!r} of every LIF "
        f"layer is dropped (NIR has no membrane quantizer); spikes may differ from the "
        f"quantized model", stacklevel=3)


def _export_vgg(ex: _Exporter, model: SpikingVGG, src):
  i = p = 0
  for spec in model.layers:
    if spec == "P":
      src = ex.pool(f"pool{p}", src, (2, 2))
      p += 1
      continue
    src = ex.conv_bn((f"conv{i}",), src, wq_cfg=model.quant.first if i == 0 else model.quant.weight)
    src = ex.lif((f"lif{i}",), src)
    i += 1
  return ex.dense(("fc",), src, wq_cfg=model.quant.last)


def _export_mlp(ex: _Exporter, model: DigitsMLP, src):
  src = ex.dense(("fc1",), src, wq_cfg=model.quant.first)
  src = ex.lif(("lif1",), src)
  return ex.dense(("fc",), src, wq_cfg=model.quant.last)


def _global_pool(ex: _Exporter, src):
  _, h, w = ex.shape
  src = ex.pool("global_pool", src, (h, w))
  return ex.flatten("global_pool_flatten", src)


def _export_sew(ex: _Exporter, model: SEWResNet, src):
  src = ex.conv_bn(("stem",), src, wq_cfg=model.quant.first)
  src = ex.lif(("stem_lif",), src)
  for i, (_, n, stride) in enumerate(model.stages):
    for j in range(n):
      s = stride if j == 0 else 1
      pre = (f"layer{i + 1}", f"block{j}")
      in_shape = ex.shape
      y = ex.conv_bn(pre + ("conv1",), src, wq_cfg=model.quant.weight, strides=s)
      y = ex.lif(pre + ("lif1",), y)
      y = ex.conv_bn(pre + ("conv2",), y, wq_cfg=model.quant.weight)
      y = ex.lif(pre + ("lif2",), y)
      if _get(ex.v["params"], pre + ("downsample",)) is not None:
        out_shape, ex.shape = ex.shape, in_shape
        d = ex.conv_bn(pre + ("downsample",), src, wq_cfg=model.quant.weight, strides=s,
                       kernel_size=1)
        src = y + ex.lif(pre + ("downsample_lif",), d)
        ex.shape = out_shape
      else:
        src = y + list(src)  # identity: the stream is the sum of these nodes' outputs
  src = _global_pool(ex, src)
  return ex.dense(("fc",), src, wq_cfg=model.quant.last)


def _export_ms(ex: _Exporter, model: MSResNet, src):
  src = ex.conv_bn(("stem",), src, wq_cfg=model.quant.first)  # membrane stream, no LIF
  for i, (_, n, stride) in enumerate(model.stages):
    for j in range(n):
      s = stride if j == 0 else 1
      pre = (f"layer{i + 1}", f"block{j}")
      in_shape = ex.shape
      spk = ex.lif(pre + ("lif1",), src)
      y = ex.conv_bn(pre + ("conv1",), spk, wq_cfg=model.quant.weight, strides=s)
      y = ex.lif(pre + ("lif2",), y)
      y = ex.conv_bn(pre + ("conv2",), y, wq_cfg=model.quant.weight)
      if _get(ex.v["params"], pre + ("downsample",)) is not None:
        out_shape, ex.shape = ex.shape, in_shape
        src = y + ex.conv_bn(pre + ("downsample",), spk, wq_cfg=model.quant.weight, strides=s,
                             kernel_size=1)
        ex.shape = out_shape
      else:
        src = y + list(src)
  src = ex.lif(("head_lif",), src)
  src = _global_pool(ex, src)
  if model.hidden is not None:
    src = ex.dense(("fc1",), src, wq_cfg=model.quant.weight)
    src = ex.lif(("fc1_lif",), src)
  return ex.dense(("fc",), src, wq_cfg=model.quant.last)


def _first_lif_name(model) -> str:
  if isinstance(model, SpikingVGG):
    return "lif0"
  if isinstance(model, DigitsMLP):
    return "lif1"
  return "stem_lif" if isinstance(model, SEWResNet) else "layer1/block0/lif1"


_EXPORTERS = ((SpikingVGG, _export_vgg), (DigitsMLP, _export_mlp), (SEWResNet, _export_sew),
              (MSResNet, _export_ms))


def to_nir(model, variables: Mapping[str, Any], sample_input, *, dt: float = DEFAULT_DT,
           membrane_quant: str = "error"):
  """The NIR graph (`nir.NIRGraph`) of one of our models with trained `variables`.

  sample_input: one batch as the model takes it (static [B, H, W, C] / [B, F] or events
  [B, T, H, W, C]); it fixes the input shape and T (events) and is run abstractly only.
  dt: the Euler step in seconds that τ refers to (module docstring; snnTorch assumes 1e-4).
  membrane_quant: 'error' (a quantized membrane raises ValueError) or 'fp_twin' (export the
  float-membrane twin, with a warning). Supported models: SpikingVGG (VGG-9/16, DigitsCNN),
  DigitsMLP, SEWResNet, MSResNet. Weights are exported as float32 in NIR's channels-first
  layout; BN is folded; fake-quantized weights are exported as the floats the model uses.
  """
  if membrane_quant not in MEMBRANE_QUANT_MODES:
    raise ValueError(f"unknown membrane_quant {membrane_quant!r}; allowed: "
                     f"{list(MEMBRANE_QUANT_MODES)}")
  if not (isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt)):
    raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
  exporter = next((fn for cls, fn in _EXPORTERS if isinstance(model, cls)), None)
  if exporter is None:
    raise ValueError(f"cannot export {type(model).__name__} to NIR; supported models: "
                     f"{[cls.__name__ for cls, _ in _EXPORTERS]}")
  _check_exportable(model, membrane_quant, _first_lif_name(model))
  x = jnp.asarray(sample_input, jnp.float32)
  out, cols = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=["spikes"]), dict(variables), x)
  from mdsnn_jax.distill import flatten_taps  # pylint: disable=import-outside-toplevel
  spikes = flatten_taps(cols["spikes"])
  ex = _Exporter(model, variables, spikes, dt, membrane_quant)
  per_sample = x.shape[2:] if x.ndim == 5 else x.shape[1:]
  ex.shape = ((per_sample[-1], *per_sample[:-1]) if len(per_sample) == 3
              else tuple(per_sample))
  nir = ex.nir
  src = ex.add("input", nir.Input(input_type={"input": np.array(ex.shape)}), [])
  src = exporter(ex, model, src)
  ex.add("output", nir.Output(output_type={"output": np.array(ex.shape)}), src)
  metadata = {"source": "mdsnn_jax", "model": type(model).__name__, "timesteps": int(out.shape[0]),
              "dt": float(dt), "spike_condition": "mdsnn_jax fires at v >= v_threshold",
              "input_layout": "channels-first (C, H, W); mdsnn_jax models take channels-last"}
  return nir.NIRGraph(nodes=ex.nodes, edges=ex.edges, metadata=metadata)


# ----------------------------------------------------------------------------------------
# Import.


@dataclasses.dataclass(frozen=True)
class NodeSpec:
  """One node of a `NIRNet`: kind, input node names and hashable attributes."""
  name: str
  kind: str  # input, output, affine, conv, lif, avgpool, sumpool, flatten
  inputs: tuple[str, ...]
  attrs: tuple[tuple[str, Any], ...] = ()

  def get(self, key: str, default=None):
    return dict(self.attrs).get(key, default)


def _compact(values: np.ndarray, channels_first_shape: tuple[int, ...]):
  """A hashable form of a per-neuron array: a float when uniform, else a nested tuple in our
  channels-last layout (broadcastable to the per-sample shape)."""
  a = np.broadcast_to(np.asarray(values, np.float64), channels_first_shape)
  if np.all(a == a.flat[0]):
    return float(a.flat[0])
  if a.ndim == 3:
    if np.all(a == a[:, :1, :1]):
      return tuple(float(v) for v in a[:, 0, 0])  # per channel (C,)
    a = np.transpose(a, (1, 2, 0))
  return _to_tuple(a)


def _to_tuple(a: np.ndarray):
  return tuple(_to_tuple(v) for v in a) if a.ndim > 1 else tuple(float(v) for v in a)


def _pair_attr(v, name: str, node_name: str) -> tuple[int, int]:
  a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
  if len(a) == 1:
    a = a * 2
  if len(a) != 2:
    raise ValueError(f"NIR node {node_name!r}: {name} must be an int or a pair, got {v!r}")
  return int(a[0]), int(a[1])


def _toposort(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
  preds = {n: [a for a, b in edges if b == n] for n in names}
  order, done = [], set()
  pending = list(names)
  while pending:
    ready = [n for n in pending if all(p in done for p in preds[n])]
    if not ready:
      raise ValueError(f"the NIR graph has a cycle through {sorted(pending)}; recurrent "
                       f"connections cannot be imported (feed-forward graphs only)")
    for n in ready:
      order.append(n)
      done.add(n)
    pending = [n for n in pending if n not in done]
  return order


def from_nir(graph, *, dt: float | None = None, timesteps: int | None = None
             ) -> tuple["NIRNet", dict]:
  """A Flax `NIRNet` and its variables ({'params': ...}) computing the NIR graph.

  dt: the Euler step (s) for LIF / IF nodes; default the graph's metadata['dt'] if present
  (our exports write it), else 1e-4 (snnTorch's). timesteps: T for static input; default
  metadata['timesteps'], else 4. A path is read with `nir.read`. Unsupported node types,
  several Input / Output nodes, cycles, grouped / dilated convolutions, a partial Flatten,
  v_leak ≠ 0 or v_reset ≠ 0 raise ValueError naming the node.
  """
  nir = _nir()
  if not isinstance(graph, nir.NIRGraph):
    graph = nir.read(graph)
  meta = dict(graph.metadata or {})
  dt = float(meta.get("dt", DEFAULT_DT)) if dt is None else float(dt)
  if not (dt > 0 and math.isfinite(dt)):
    raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
  t = int(meta.get("timesteps", 4)) if timesteps is None else timesteps
  if not (isinstance(t, int) and t >= 1):
    raise ValueError(f"timesteps must be a positive int, got {t!r}")
  for name, node in graph.nodes.items():
    if type(node).__name__ not in IMPORT_NODE_TYPES:
      raise ValueError(f"NIR node {name!r} has type {type(node).__name__}, which from_nir does "
                       f"not support; supported node types: {list(IMPORT_NODE_TYPES)}")
  inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
  outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
  if len(inputs) != 1 or len(outputs) != 1:
    raise ValueError(f"from_nir needs exactly one Input and one Output node, got inputs "
                     f"{inputs} and outputs {outputs}")
  edges = [(str(a), str(b)) for a, b in graph.edges]
  order = _toposort(list(graph.nodes), edges)
  shapes = {}  # channels-first per-sample output shape of each node
  specs, params = [], {}
  for name in order:
    node = graph.nodes[name]
    srcs = tuple(a for a, b in edges if b == name)
    kind = type(node).__name__
    in_shapes = {shapes[s] for s in srcs}
    if len(in_shapes) > 1:
      raise ValueError(f"NIR node {name!r} sums inputs of different shapes {sorted(in_shapes)}")
    in_shape = next(iter(in_shapes)) if in_shapes else None
    if kind == "Input":
      shape = tuple(int(s) for s in np.asarray(node.input_type["input"]).ravel())
      specs.append(NodeSpec(name, "input", (), (("shape", shape),)))
    elif kind == "Output":
      shape = in_shape
      specs.append(NodeSpec(name, "output", srcs))
    elif kind in ("Affine", "Linear"):
      w = np.asarray(node.weight, np.float32)
      if w.ndim != 2:
        raise ValueError(f"NIR {kind} node {name!r}: weight must be 2-D (out, in), got {w.shape}")
      if in_shape != (w.shape[1],):
        raise ValueError(f"NIR {kind} node {name!r}: weight {w.shape} needs a flat input of "
                         f"{w.shape[1]} values, got shape {in_shape}")
      bias = (np.asarray(node.bias, np.float32) if kind == "Affine"
              else np.zeros(w.shape[0], np.float32))
      params[name] = {"kernel": np.ascontiguousarray(w.T), "bias": bias}
      shape = (int(w.shape[0]),)
      specs.append(NodeSpec(name, "affine", srcs, (("features", shape[0]),)))
    elif kind == "Conv2d":
      w = np.asarray(node.weight, np.float32)
      dil = _pair_attr(node.dilation, "dilation", name)
      if int(node.groups) != 1 or dil != (1, 1):
        raise ValueError(f"NIR Conv2d node {name!r}: groups={node.groups}, dilation={dil} are "
                         f"not supported (allowed: groups=1, dilation=1)")
      if in_shape is None or len(in_shape) != 3 or in_shape[0] != w.shape[1]:
        raise ValueError(f"NIR Conv2d node {name!r}: weight {w.shape} (OIHW) needs input "
                         f"(C={w.shape[1]}, H, W), got {in_shape}")
      stride = _pair_attr(node.stride, "stride", name)
      if isinstance(node.padding, str):
        pads = conv_lib._resolve_padding(node.padding.upper(), in_shape[1:], w.shape[2:], stride)
      else:
        p = _pair_attr(node.padding, "padding", name)
        pads = ((p[0], p[0]), (p[1], p[1]))
      params[name] = {"kernel": np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))),
                      "bias": np.asarray(node.bias, np.float32)}
      hw = tuple((n + lo + hi - k) // s + 1
                 for n, (lo, hi), k, s in zip(in_shape[1:], pads, w.shape[2:], stride))
      shape = (int(w.shape[0]), *hw)
      specs.append(NodeSpec(name, "conv", srcs, (("kernel_shape", tuple(params[name]["kernel"].shape)),
                                                 ("strides", stride), ("padding", tuple(pads)))))
    elif kind in ("LIF", "IF"):
      decay, gain, theta = nir_neuron_to_ours(node, dt, name)
      shape = in_shape
      if tuple(np.shape(theta)) not in ((), tuple(shape)):
        raise ValueError(f"NIR {kind} node {name!r} has shape {np.shape(theta)} but its input "
                         f"has shape {shape}")
      # The gain multiplies float32 currents: one that rounds to 1 in float32 is exactly 1.
      unit = bool(np.all(np.asarray(gain, np.float32) == 1.0))
      specs.append(NodeSpec(name, "lif", srcs, (
          ("decay", _compact(decay, shape)), ("threshold", _compact(theta, shape)),
          ("gain", None if unit else _compact(gain, shape)))))
    elif kind in ("AvgPool2d", "SumPool2d"):
      if in_shape is None or len(in_shape) != 3:
        raise ValueError(f"NIR {kind} node {name!r} needs a (C, H, W) input, got {in_shape}")
      k = _pair_attr(node.kernel_size, "kernel_size", name)
      s = _pair_attr(node.stride, "stride", name)
      p = _pair_attr(node.padding, "padding", name)
      hw = tuple((n + 2 * pp - kk) // ss + 1 for n, pp, kk, ss in zip(in_shape[1:], p, k, s))
      shape = (in_shape[0], *hw)
      specs.append(NodeSpec(name, "avgpool" if kind == "AvgPool2d" else "sumpool", srcs,
                            (("window", k), ("strides", s), ("padding", p))))
    else:  # Flatten
      n = len(in_shape)
      start, end = int(node.start_dim) % n, int(node.end_dim) % n
      if (start, end) != (0, n - 1):
        raise ValueError(f"NIR Flatten node {name!r}: only flattening every per-sample axis is "
                         f"supported (start_dim=0, end_dim=-1), got start_dim={node.start_dim}, "
                         f"end_dim={node.end_dim} of an input of shape {in_shape}")
      shape = (int(np.prod(in_shape)),)
      specs.append(NodeSpec(name, "flatten", srcs))
    shapes[name] = tuple(int(s) for s in shape)
  model = NIRNet(nodes=tuple(specs), timesteps=t)
  return model, {"params": {k: {kk: jnp.asarray(vv) for kk, vv in v.items()}
                            for k, v in params.items()}}


def _latest(previous, value):
  del previous
  return (value,)


class _Neuron(nn.Module):
  """h = λ·u + g·x, s = H(h − θ), hard reset (`lif_scan`); sows 'membranes'/'h', 'spikes'/'s'
  like `mdsnn_jax.nn.LIF`, so firing / distillation tools read an imported model's taps."""
  decay: Any
  threshold: Any
  gain: Any = None

  @nn.compact
  def __call__(self, x):
    if self.gain is not None:
      x = x * jnp.asarray(self.gain, x.dtype)
    s, h, _ = lif_scan(x, decay=jnp.asarray(self.decay, x.dtype),
                       threshold=jnp.asarray(self.threshold, x.dtype))
    self.sow("membranes", "h", h, init_fn=tuple, reduce_fn=_latest)
    self.sow("spikes", "s", s, init_fn=tuple, reduce_fn=_latest)
    return s


class NIRNet(nn.Module):
  """Runs an imported NIR graph time-major (see `from_nir`); params per weight node
  {'kernel' (HWIO or (in, out)), 'bias'}. Internally images are channels last."""
  nodes: tuple[NodeSpec, ...]
  timesteps: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False, timesteps: int | None = None):
    del train  # no batch statistics or dropout
    spec_in = next(s for s in self.nodes if s.kind == "input")
    shape = spec_in.get("shape")
    ours = (*shape[1:], shape[0]) if len(shape) == 3 else tuple(shape)
    x = jnp.asarray(x)
    if x.shape[1:] == ours:
      t = self.timesteps if timesteps is None else timesteps
      if not (isinstance(t, int) and t >= 1):
        raise ValueError(f"timesteps must be a positive int, got {t!r}")
      x = jnp.broadcast_to(x[None], (t,) + x.shape)
    elif x.ndim == len(ours) + 2 and x.shape[2:] == ours:
      if timesteps is not None and timesteps != x.shape[1]:
        raise ValueError(f"event input has T={x.shape[1]} but timesteps={timesteps} was requested")
      x = jnp.swapaxes(x, 0, 1)
    else:
      raise ValueError(f"input of shape {x.shape} does not match the graph's Input {shape} "
                       f"(expected [B, {', '.join(map(str, ours))}] or events [B, T, ...])")
    values = {}
    for spec in self.nodes:
      if spec.kind == "input":
        values[spec.name] = x
        continue
      h = values[spec.inputs[0]]
      for other in spec.inputs[1:]:
        h = h + values[other]
      values[spec.name] = self._node(spec, h)
    return values[next(s.name for s in self.nodes if s.kind == "output")]

  def _node(self, spec: NodeSpec, h):
    lead = h.shape[:2]
    if spec.kind == "output":
      return h
    if spec.kind == "affine":
      p = self.param(spec.name, lambda _, n: {"kernel": jnp.zeros((h.shape[-1], n)),
                                              "bias": jnp.zeros((n,))}, spec.get("features"))
      return jnp.dot(h, p["kernel"].astype(h.dtype)) + p["bias"].astype(h.dtype)
    if spec.kind == "conv":
      ks = spec.get("kernel_shape")
      p = self.param(spec.name, lambda _: {"kernel": jnp.zeros(ks), "bias": jnp.zeros(ks[-1:])})
      y = conv_lib.conv2d(h.reshape((-1,) + h.shape[2:]), p["kernel"].astype(h.dtype),
                          strides=spec.get("strides"), padding=spec.get("padding"), impl="xla")
      return y.reshape(lead + y.shape[1:]) + p["bias"].astype(h.dtype)
    if spec.kind in ("avgpool", "sumpool"):
      pad = tuple((p, p) for p in spec.get("padding"))
      flat = h.reshape((-1,) + h.shape[2:])
      if spec.kind == "avgpool":
        y = nn.avg_pool(flat, spec.get("window"), spec.get("strides"), padding=pad)
      else:
        y = nn.pooling.pool(flat, 0.0, jax.lax.add, spec.get("window"), spec.get("strides"), pad)
      return y.reshape(lead + y.shape[1:])
    if spec.kind == "flatten":
      if h.ndim == 5:  # channels-last [T, B, H, W, C] -> NIR's (C, H, W) order
        h = jnp.moveaxis(h, -1, 2)
      return h.reshape(lead + (-1,))
    if spec.kind == "lif":
      return _Neuron(spec.get("decay"), spec.get("threshold"), spec.get("gain"), name=spec.name)(h)
    raise ValueError(f"unknown node kind {spec.kind!r}")  # pragma: no cover


# ----------------------------------------------------------------------------------------
# A trained workdir.


def load_stage(workdir, stage: str):
  """(model, variables, sample_input) of a finished stage of `train_and_evaluate(config,
  workdir)`: the config from workdir/summary.json, the variables from
  workdir/<stage>/final_variables, one test batch of the dataset as the sample input."""
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel

  import ml_collections  # pylint: disable=import-outside-toplevel

  from mdsnn_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from mdsnn_jax import nn as nn_lib  # pylint: disable=import-outside-toplevel
  from mdsnn_jax.train import stages as loop  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(workdir)
  if stage not in loop.STAGES:
    raise ValueError(f"unknown stage {stage!r}; allowed: {list(loop.STAGES)}")
  summary = workdir / "summary.json"
  if not summary.is_file():
    raise FileNotFoundError(f"{summary} not found: {workdir} is not a finished training workdir")
  config = ml_collections.ConfigDict(json.loads(summary.read_text())["config"])
  stage_dir = workdir / stage / "final_variables"
  if not stage_dir.is_dir():
    raise FileNotFoundError(f"stage {stage!r} has no exported variables at {stage_dir}; stages "
                            f"trained in {workdir}: {sorted(json.loads(summary.read_text())['stages'])}")
  info = data_lib.dataset_info(config.data)
  stored = loop.read_stage_config(workdir / stage)  # the model this stage was trained as
  model_cfg = (ml_collections.ConfigDict(stored["result"]["model"]) if stored else
               loop.stage_model_config(config, stage))
  model = nn_lib.create_model(model_cfg, info.num_classes)
  sample = loop.sample_input(info, int(config.model.timesteps))
  variables = loop.load_trained_variables(model, sample, stage_dir)
  return model, variables, sample


def export_workdir(workdir, stage: str, out, *, dt: float = DEFAULT_DT,
                   membrane_quant: str = "error"):
  """Writes the NIR graph of a trained stage to `out` (`nir.write`) and returns it."""
  model, variables, sample = load_stage(workdir, stage)
  graph = to_nir(model, variables, sample, dt=dt, membrane_quant=membrane_quant)
  _nir().write(str(out), graph)
  return graph
