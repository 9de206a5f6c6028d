"""Distillation losses: membrane-aware KD (MD), logit KD and affine-projector feature KD.

See docs/method.md. The teacher is a frozen full-precision SNN, the student a quantized SNN with the
same tap names. Taps are the pre-reset membranes h_t (or spikes) of every LIF layer, sown
by the models into the Flax collections 'membranes' / 'spikes' and flattened here to
`{'stage1/block0/lif1': array [T, B, ..., C]}`.

Everything below is a pure JAX function (no Flax needed). Teacher inputs are wrapped in
`jax.lax.stop_gradient`: they are constants and never receive a gradient.

Python-number weights that are exactly 0 switch their term off: the term is not computed at
all (0 × NaN would still be NaN), and its metric is reported as 0.

One return convention for every loss: a scalar by default, so losses add up
(`ce + membrane_kd_loss(...) + logit_kd_loss(...)`); `return_terms=True` returns
`(loss, terms)` with a dict of the loss's parts.
"""
from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Taps = Mapping[str, Array]
LayerSpec = Union[str, Sequence[str]]

__all__ = [
    "TapNotFoundError",
    "flatten_taps",
    "select_taps",
    "membrane_kd_loss",
    "logit_kd_loss",
    "time_mean",
    "init_projector",
    "init_projectors",
    "apply_projector",
    "feature_kd_loss",
    "distillation_loss",
]

_ALIGN_MODES = ("prefix", "window_mean")
# A loss, not a layer: keep f32 accuracy on TPU/GPU (no bf16/TF32 passes); T×T is tiny.
_HIGHEST = jax.lax.Precision.HIGHEST
# membrane_kd_loss's keyword arguments and defaults, forwarded by distillation_loss.
_MD_KWARGS = {"layers": "all", "layer_weights": None, "decorrelate": True,
              "temporal_weight": 1.0, "align": "prefix", "eps": 1e-5}


class TapNotFoundError(KeyError, ValueError):
  """A requested tap name is missing; the message lists the available taps.

  Subclasses both KeyError (it is a failed lookup) and ValueError (it is bad input).
  """

  def __str__(self) -> str:  # KeyError would repr() the message and escape it.
    return str(self.args[0]) if self.args else ""


def _is_static_zero(x: Any) -> bool:
  """True for a Python/NumPy number equal to 0 (a switched-off term); never for jax arrays."""
  if isinstance(x, jax.Array):
    return False
  if isinstance(x, numbers.Number) or (isinstance(x, np.ndarray) and x.ndim == 0):
    return float(x) == 0.0
  return False


def _check_nonneg_weight(name: str, w: Any) -> None:
  if isinstance(w, numbers.Real) and not w >= 0:
    raise ValueError(f"{name} must be >= 0, got {w!r}")


def _compute_dtype(x: Array) -> jnp.dtype:
  # Statistics in at least float32, so bf16 taps do not lose the standardisation.
  return jnp.promote_types(x.dtype, jnp.float32)


# ----------------------------------------------------------------------------- taps


def flatten_taps(collection: Mapping[str, Any], *, sep: str = "/") -> dict[str, Array]:
  """Flattens a sown Flax collection into `{module/path: array}`.

  `collection` is e.g. `mutated['membranes']`: nested dicts mirroring the module tree whose
  leaves are `{'h': (array, ...)}`. The module path is joined with `sep`, the sow leaf key
  ('h' / 's' / any key whose value is a tuple) is dropped and the tuple is unwrapped to its
  LAST element (flax's `sow` appends one element per call). Already-flat dicts of arrays
  pass through unchanged (keys kept).
  """
  if not isinstance(collection, Mapping):
    raise ValueError(
        f"taps must be a (nested) mapping of arrays, got {type(collection).__name__}")
  out: dict[str, Array] = {}

  def put(path: tuple[str, ...], value: Any) -> None:
    name = sep.join(path)
    if not name:
      raise ValueError(f"a tap leaf sits at the top level of the collection with no module "
                       f"path: {value!r}; expected {{'module': {{'h': (array,)}}}}")
    if name in out:
      raise ValueError(f"two taps flatten to the same name {name!r}; a module sows more "
                       "than one leaf into this collection")
    out[name] = value

  def walk(path: tuple[str, ...], node: Any) -> None:
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(path + (str(key),), value)
      elif isinstance(value, (tuple, list)):
        if not value:
          raise ValueError(f"empty sow tuple at {sep.join(path + (str(key),))!r}")
        put(path, value[-1])  # sow leaf: drop its key
      elif path and key in ("h", "s"):
        put(path, value)  # an already-unwrapped sow leaf
      else:
        put(path + (str(key),), value)

  walk((), collection)
  return out


def select_taps(taps: Taps, layers: LayerSpec = "all") -> dict[str, Array]:
  """Selects taps by name, in a stable order.

  layers: 'all' (every tap, in the taps' own order); a list of names (in that order);
  're:<pattern>' (every tap whose name `re.search`es the pattern, in the taps' order); or a
  single tap name. A missing name, or a pattern with no match, raises `TapNotFoundError`
  (a KeyError and ValueError) whose message lists the available taps.
  """
  taps = flatten_taps(taps)
  available = list(taps)
  if isinstance(layers, str):
    if layers == "all":
      return dict(taps)
    if layers.startswith("re:"):
      pattern = re.compile(layers[3:])
      chosen = [n for n in available if pattern.search(n)]
      if not chosen:
        raise TapNotFoundError(
            f"layer pattern {layers!r} matches no tap; available taps: {available}")
      return {n: taps[n] for n in chosen}
    layers = [layers]
  if not isinstance(layers, Sequence) or not layers:
    raise ValueError(f"layers must be 'all', 're:<pattern>' or a non-empty list of tap "
                     f"names, got {layers!r}")
  missing = [n for n in layers if n not in taps]
  if missing:
    raise TapNotFoundError(f"tap(s) {missing} not found; available taps: {available}")
  if len(set(layers)) != len(layers):
    raise ValueError(f"layers lists a tap more than once: {list(layers)}")
  return {n: taps[n] for n in layers}


def _paired_taps(student_taps: Taps, teacher_taps: Taps, layers: LayerSpec,
                 what: str) -> tuple[dict[str, Array], dict[str, Array]]:
  """(the selected student taps, all teacher taps); every selected name must be a teacher tap."""
  student = select_taps(student_taps, layers)
  teacher = flatten_taps(teacher_taps)
  missing = [n for n in student if n not in teacher]
  if missing:
    raise TapNotFoundError(f"{what} tap(s) {missing} not found in the teacher taps; "
                           f"available teacher taps: {list(teacher)}")
  return student, teacher


# ------------------------------------------------------------------- membrane KD (MD)


def _align_time(u_t: Array, t_student: int, align: str, name: str) -> Array:
  """Teacher [T_t, ...] -> [T_s, ...]: first T_s steps, or means over T_s windows."""
  t_teacher = u_t.shape[0]
  if t_teacher < t_student:
    raise ValueError(f"tap {name!r}: teacher has T_t={t_teacher} timesteps, fewer than the "
                     f"student's T_s={t_student}; need T_t >= T_s")
  if t_teacher == t_student:
    return u_t
  if align == "prefix":
    return u_t[:t_student]
  # Window i covers teacher steps [floor(i*T_t/T_s), floor((i+1)*T_t/T_s)); non-empty since
  # T_t >= T_s. Built as a static [T_s, T_t] averaging matrix so it is one matmul.
  bounds = [(i * t_teacher) // t_student for i in range(t_student + 1)]
  avg = np.zeros((t_student, t_teacher), np.float32)
  for i in range(t_student):
    avg[i, bounds[i]:bounds[i + 1]] = 1.0 / (bounds[i + 1] - bounds[i])
  return jnp.tensordot(jnp.asarray(avg, u_t.dtype), u_t, axes=1, precision=_HIGHEST)


def _shifted(u: Array) -> Array:
  """d = U − U[first sample] per (t, c), as [T, M, C] with M = batch × space.

  Variances and covariances of d are those of U; the shift makes a constant (dead or
  saturated) channel exactly 0, so its statistics are exactly 0 instead of float32 rounding
  noise that 1/ε would amplify. Reshaped to 3-D before the shift: XLA:CPU runs the fused
  5-D broadcast about 2× slower (measured in the KD bench).
  """
  t, c = u.shape[0], u.shape[-1]
  u3 = u.reshape(t, -1, c)
  return u3 - jax.lax.stop_gradient(u3[:, :1])


def _block_size(m: int) -> int:
  """The largest divisor of m that is ≤ 128: the inner block of `_time_gram`'s reduction."""
  return next(q for q in range(min(128, m), 0, -1) if m % q == 0)


def _time_gram_value(d: Array) -> Array:
  t, m, c = d.shape
  q = _block_size(m)
  d4 = d.reshape(t, m // q, q, c)
  # Two-level sum (blocks of q, then over the blocks): XLA:CPU emits this as one pass over d;
  # the one-level sum over M, or the same product as a dot_general batched over C, took
  # 6–10× longer on the KD bench's shapes.
  return jnp.sum(jnp.sum(d4[:, None] * d4[None, :], axis=3), axis=2)


@jax.custom_vjp
def _time_gram(d: Array) -> Array:
  """G[i, j, c] = Σ_m d[i, m, c] · d[j, m, c] for d [T, M, C]: per channel, the T×T Gram
  matrix of the timesteps over batch and space. Backward: ∂L/∂d[i] = Σ_j (Ḡ + Ḡᵀ)[i, j] d[j],
  one elementwise pass (autodiff of the blocked product would build the [T, T, M, C]
  broadcast)."""
  return _time_gram_value(d)


def _time_gram_fwd(d):
  return _time_gram_value(d), d


def _time_gram_bwd(d, g):
  sym = g + jnp.swapaxes(g, 0, 1)
  t = d.shape[0]
  dd = sum(sym[:, j, None, :] * d[j][None] for j in range(t))
  return (dd.astype(d.dtype),)


_time_gram.defvjp(_time_gram_fwd, _time_gram_bwd)


def _layer_md(u_s: Array, u_t: Array, *, decorrelate: bool, with_temporal: bool,
              eps: float) -> tuple[Array, Array]:
  """(L_sp, L_tm) of one layer; aligned teacher. L_tm = 0 when not computed.

  Computed from per-(t, c) moments instead of the standardised tensors Ũ (same value; on
  the KD bench's VGG-9 taps 2.0–3.3× faster forward + backward, `bench/kd_loss.py`): with
  d = `_shifted`(U), μ = E[d], C_ij = E[d_i d_j] − μ_i μ_j (expectations over batch and
  space, per channel) and r = (C_ii + ε²)^(−1/2), E[Ũ_i Ũ_j] = C_ij r_i r_j, so
    L_sp = mean_{t,c} (C^s_tt r_s² + C^t_tt r_t² − 2 C^{st}_tt r_s r_t)
    R_ij = mean_c C_ij r_i r_j / T.
  """
  if not decorrelate:
    return jnp.mean(jnp.square(u_s - u_t)), jnp.zeros((), u_s.dtype)
  d_s, d_t = _shifted(u_s), _shifted(u_t)
  m, t = d_s.shape[1], d_s.shape[0]
  mu_s, mu_t = jnp.mean(d_s, axis=1), jnp.mean(d_t, axis=1)  # [T, C]
  cov_st = jnp.mean(d_s * d_t, axis=1) - mu_s * mu_t
  if with_temporal:
    cov_s = _time_gram(d_s) / m - mu_s[:, None] * mu_s[None]  # [T, T, C]
    cov_t = _time_gram(d_t) / m - mu_t[:, None] * mu_t[None]
    diag = jnp.arange(t)
    var_s, var_t = cov_s[diag, diag], cov_t[diag, diag]
  else:
    var_s = jnp.mean(jnp.square(d_s), axis=1) - jnp.square(mu_s)
    var_t = jnp.mean(jnp.square(d_t), axis=1) - jnp.square(mu_t)
  # E[d²] − μ² can round below 0 for a near-constant channel.
  var_s, var_t = jnp.maximum(var_s, 0.0), jnp.maximum(var_t, 0.0)
  r_s, r_t = jax.lax.rsqrt(var_s + eps * eps), jax.lax.rsqrt(var_t + eps * eps)
  spatial = jnp.mean(var_s * r_s * r_s + var_t * r_t * r_t - 2.0 * cov_st * r_s * r_t)
  if not with_temporal:
    return spatial, jnp.zeros((), spatial.dtype)
  # ‖R_s − R_t‖²_F / T² is the mean of the squared T×T difference.
  corr_s = jnp.mean(cov_s * r_s[:, None] * r_s[None], axis=-1) / t
  corr_t = jnp.mean(cov_t * r_t[:, None] * r_t[None], axis=-1) / t
  return spatial, jnp.mean(jnp.square(corr_s - corr_t))


def _membrane_kd(student_taps: Taps, teacher_taps: Taps, *, layers: LayerSpec,
                 layer_weights: Mapping[str, Any] | None, decorrelate: bool,
                 temporal_weight: Any, align: str, eps: float):
  """Shared body of `membrane_kd_loss`: also returns the weighted spatial/temporal means."""
  if align not in _ALIGN_MODES:
    raise ValueError(f"align must be one of {_ALIGN_MODES}, got {align!r}")
  if isinstance(eps, numbers.Real) and not eps > 0:
    raise ValueError(f"eps must be > 0 (it keeps constant channels finite), got {eps!r}")
  _check_nonneg_weight("temporal_weight", temporal_weight)
  student, teacher_all = _paired_taps(student_taps, teacher_taps, layers, "student")
  weights = {n: 1.0 for n in student}
  if layer_weights is not None:
    unknown = [n for n in layer_weights if n not in student]
    if unknown:
      raise ValueError(f"layer_weights names {unknown} that are not distilled taps; "
                       f"distilled taps: {list(student)}")
    for n, w in layer_weights.items():
      _check_nonneg_weight(f"layer_weights[{n!r}]", w)
      weights[n] = w
  if all(isinstance(w, numbers.Real) for w in weights.values()) and sum(weights.values()) <= 0:
    raise ValueError(f"layer weights sum to 0, nothing to distill: {weights}")
  with_temporal = decorrelate and not _is_static_zero(temporal_weight)

  per_layer: dict[str, dict[str, Array]] = {}
  w_sum = 0.0
  loss = sp_acc = tm_acc = 0.0
  for name, u_s in student.items():
    u_s = jnp.asarray(u_s)
    u_t = jax.lax.stop_gradient(jnp.asarray(teacher_all[name]))
    if u_s.ndim < 3:
      raise ValueError(f"tap {name!r} has shape {u_s.shape}; expected [T, B, ..., C] "
                       "(at least 3 axes, channels last)")
    if u_s.shape[1:] != u_t.shape[1:]:
      raise ValueError(f"tap {name!r}: student shape {u_s.shape} and teacher shape "
                       f"{u_t.shape} differ beyond the time axis")
    dtype = _compute_dtype(u_s)
    u_t = _align_time(u_t.astype(dtype), u_s.shape[0], align, name)
    spatial, temporal = _layer_md(u_s.astype(dtype), u_t, decorrelate=decorrelate,
                                  with_temporal=with_temporal, eps=eps)
    per_layer[name] = {"spatial": spatial, "temporal": temporal}
    w = weights[name]
    if _is_static_zero(w):
      continue
    layer_loss = spatial + temporal_weight * temporal if with_temporal else spatial
    loss = loss + w * layer_loss
    sp_acc = sp_acc + w * spatial
    tm_acc = tm_acc + w * temporal
    w_sum = w_sum + w
  inv = 1.0 / w_sum
  return (jnp.asarray(loss * inv), per_layer, jnp.asarray(sp_acc * inv),
          jnp.asarray(tm_acc * inv))


def membrane_kd_loss(
    student_taps: Taps,
    teacher_taps: Taps,
    *,
    layers: LayerSpec = "all",
    layer_weights: Mapping[str, Any] | None = None,
    decorrelate: bool = True,
    temporal_weight: Any = 1.0,
    align: str = "prefix",
    eps: float = 1e-5,
    return_terms: bool = False,
) -> Array | tuple[Array, dict[str, dict[str, Array]]]:
  """Membrane-aware distillation loss L_MD **[reconstruction]** (docs/method.md, 'Membrane-aware
  distillation').

  Per distilled layer l (membranes U [T, B, ..., C], channels last):
    1. Ũ = (U − μ_{t,c}) / sqrt(σ²_{t,c} + ε²), statistics over batch and space per
       (timestep, channel), separately for student and teacher (the reconstructed σ + ε is replaced
       by the gradient-safe sqrt(σ² + ε²), equal to within ε).
    2. L_sp = mean (Ũ_s − Ũ_t)².
    3. R = mean over neurons of z zᵀ / T (z ∈ R^T a neuron's Ũ trajectory);
       L_tm = ‖R_s − R_t‖²_F / T².
    4. L_MD = Σ_l w_l (L_sp,l + λ_tm L_tm,l) / Σ_l w_l, λ_tm = `temporal_weight`.
  With `decorrelate=False`, L_sp,l is the plain MSE between raw membranes and the temporal
  term is off. `temporal_weight == 0` (a Python number) skips the temporal term entirely.

  Teacher taps are `stop_gradient`ed. A teacher with T_t > T_s timesteps is aligned to the
  student: `align='prefix'` keeps its first T_s steps; 'window_mean' averages T_s contiguous
  windows with boundaries floor(i·T_t/T_s).

  Args:
    student_taps: flat `{name: [T, B, ..., C]}` or a sown nested collection.
    teacher_taps: the same for the teacher (same names as the student's taps).
    layers: which student taps to distill, see `select_taps`.
    layer_weights: `{name: w_l}`; unlisted layers get 1. A 0 weight drops the layer.
    return_terms: also return the per-layer terms.
  Returns:
    L_MD (a scalar); with return_terms=True, (L_MD, {name: {'spatial': L_sp,l,
    'temporal': L_tm,l}}) — per-layer terms are unweighted; 'temporal' is 0 where it was not
    computed.
  """
  loss, per_layer, _, _ = _membrane_kd(
      student_taps, teacher_taps, layers=layers, layer_weights=layer_weights,
      decorrelate=decorrelate, temporal_weight=temporal_weight, align=align, eps=eps)
  return (loss, per_layer) if return_terms else loss


# ------------------------------------------------------------------------- logit KD


def logit_kd_loss(student_logits: Array, teacher_logits: Array,
                  temperature: float = 4.0, *, return_terms: bool = False
                  ) -> Array | tuple[Array, dict[str, Array]]:
  """τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ)), mean over the batch (all leading axes).

  Computed from log-softmaxes for stability; the teacher logits are `stop_gradient`ed.
  Returns the scalar; with return_terms=True, (loss, {'kl': the mean KL before the τ²
  factor}).
  """
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  student_logits = jnp.asarray(student_logits)
  teacher_logits = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student logits {student_logits.shape} and teacher logits "
                     f"{teacher_logits.shape} must have the same shape [B, classes]")
  dtype = _compute_dtype(student_logits)
  log_p_s = jax.nn.log_softmax(student_logits.astype(dtype) / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(dtype) / temperature, axis=-1)
  kl = jnp.mean(optax.losses.kl_divergence_with_log_targets(log_p_s, log_p_t))
  loss = temperature**2 * kl
  return (loss, {"kl": kl}) if return_terms else loss


# ------------------------------------------------------------ affine-projector feature KD


def time_mean(x: Array) -> Array:
  """Feature F = (1/T) Σ_t x_t of a time-major tap [T, ...] -> [...]."""
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"time_mean needs a time-major array [T, ...], got shape {x.shape}")
  return jnp.mean(x, axis=0)


def init_projector(key: Array, c_student: int, c_teacher: int,
                   dtype: Any = jnp.float32) -> dict[str, Array]:
  """Projector P parameters, identity at init.

  c_student == c_teacher: per-channel affine {'gamma': ones [C], 'beta': zeros [C]}.
  Otherwise a 1×1 conv {'kernel': [c_s, c_t], 'bias': [c_t]}: kernel = rectangular identity
  plus N(0, (0.01)²/c_s) noise (from `key`) so the padded output channels are not tied.
  """
  for name, c in (("c_student", c_student), ("c_teacher", c_teacher)):
    if not isinstance(c, numbers.Integral) or c < 1:
      raise ValueError(f"{name} must be a positive int, got {c!r}")
  if c_student == c_teacher:
    return {"gamma": jnp.ones((c_student,), dtype), "beta": jnp.zeros((c_student,), dtype)}
  noise = jax.random.normal(key, (c_student, c_teacher), dtype) * (0.01 / np.sqrt(c_student))
  return {"kernel": jnp.eye(c_student, c_teacher, dtype=dtype) + noise,
          "bias": jnp.zeros((c_teacher,), dtype)}


def apply_projector(params: Mapping[str, Array], f: Array) -> Array:
  """P(F) over the last (channel) axis: γ_c·F + β_c, or F @ kernel + bias (a 1×1 conv)."""
  f = jnp.asarray(f)
  if "gamma" in params and "beta" in params:
    c_in = params["gamma"].shape[-1]
    apply = lambda: f * params["gamma"] + params["beta"]
  elif "kernel" in params and "bias" in params:
    c_in = params["kernel"].shape[0]
    apply = lambda: f @ params["kernel"] + params["bias"]
  else:
    raise ValueError(f"projector params must hold {{'gamma','beta'}} or {{'kernel','bias'}}, "
                     f"got keys {sorted(params)}")
  if f.ndim < 1 or f.shape[-1] != c_in:
    raise ValueError(f"feature shape {f.shape} does not end in the projector's {c_in} "
                     "input channels")
  return apply()


def init_projectors(key: Array, student_taps: Taps, teacher_taps: Taps,
                    layers: LayerSpec = "all", dtype: Any = jnp.float32) -> dict[str, dict]:
  """One projector per selected tap, {name: init_projector(...)}, sized from the taps'
  channel (last) axes; the teacher needs a tap of the same name. Taps may be arrays or
  `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`), so no forward pass is needed."""
  student, teacher = _paired_taps(student_taps, teacher_taps, layers, "feature")
  keys = jax.random.split(key, max(len(student), 1))
  return {n: init_projector(k, int(student[n].shape[-1]), int(teacher[n].shape[-1]), dtype)
          for k, n in zip(keys, student)}


def feature_kd_loss(params: Mapping[str, Array], f_student: Array, f_teacher: Array, *,
                    return_terms: bool = False) -> Array | tuple[Array, dict[str, Array]]:
  """mean (P(F_s) − F_t)² over all elements (MSE form of ‖P(F_s) − F_t‖²); teacher frozen.

  Returns the scalar; with return_terms=True, (loss, {'mse': loss}).
  """
  projected = apply_projector(params, f_student)
  f_teacher = jax.lax.stop_gradient(jnp.asarray(f_teacher))
  if projected.shape != f_teacher.shape:
    raise ValueError(f"projected student feature {projected.shape} and teacher feature "
                     f"{f_teacher.shape} differ in shape")
  loss = jnp.mean(jnp.square(projected - f_teacher))
  return (loss, {"mse": loss}) if return_terms else loss


# ---------------------------------------------------------------------- total loss


def _feature_term(student_taps: Taps, teacher_taps: Taps, projector_params: Any,
                  feature_pairs: Any) -> Array:
  """Mean over pairs of feature_kd_loss(P, time_mean(student tap), time_mean(teacher tap))."""
  if projector_params is None:
    raise ValueError("gamma != 0 needs projector_params {student_tap: projector params}, "
                     "got None")
  if feature_pairs is None:
    pairs = [(n, n) for n in projector_params]
  elif isinstance(feature_pairs, Mapping):
    pairs = list(feature_pairs.items())
  else:
    pairs = [tuple(p) for p in feature_pairs]
  if not pairs:
    raise ValueError(f"no feature pairs to distill: feature_pairs={feature_pairs!r}")
  student = flatten_taps(student_taps)
  teacher = flatten_taps(teacher_taps)
  total = 0.0
  for s_name, t_name in pairs:
    if s_name not in student:
      raise TapNotFoundError(f"feature tap {s_name!r} not in the student taps; "
                             f"available: {list(student)}")
    if t_name not in teacher:
      raise TapNotFoundError(f"feature tap {t_name!r} not in the teacher taps; "
                             f"available: {list(teacher)}")
    if s_name not in projector_params:
      raise ValueError(f"no projector for student tap {s_name!r}; projectors: "
                       f"{list(projector_params)}")
    total = total + feature_kd_loss(projector_params[s_name], time_mean(student[s_name]),
                                    time_mean(teacher[t_name]))
  return jnp.asarray(total / len(pairs))


def distillation_loss(
    student_logits: Array,
    labels: Array,
    teacher_logits: Array | None,
    student_taps: Taps | None,
    teacher_taps: Taps | None,
    *,
    alpha: Any = 1.0,
    beta: Any = 1.0,
    temperature: float = 4.0,
    gamma: Any = 0.0,
    projector_params: Mapping[str, Mapping[str, Array]] | None = None,
    feature_pairs: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    student_feature_taps: Taps | None = None,
    teacher_feature_taps: Taps | None = None,
    return_terms: bool = False,
    **md_kwargs: Any,
) -> Array | tuple[Array, dict[str, Array]]:
  """Total student loss L = CE(z_s, y) + α·L_MD + β·τ²·KL + γ·L_feat (docs/method.md).

  Logits are the time-mean readout [B, classes]; `labels` are integer classes [B] or
  (soft) one-hot [B, classes]. L_MD is `membrane_kd_loss(student_taps, teacher_taps,
  **md_kwargs)`. L_feat is the mean over `feature_pairs` ({student_tap: teacher_tap}, or
  (student, teacher) pairs; default: each key of `projector_params` with the same teacher
  name) of `feature_kd_loss(projector_params[s], time_mean(s_tap), time_mean(t_tap))`, on
  `student_feature_taps` / `teacher_feature_taps` when given (e.g. spikes), else on the
  membrane taps.
  A Python-number weight of 0 skips its term (its inputs may then be None).

  Returns L; with return_terms=True, (L, metrics) with metrics 'ce', 'md' (L_MD),
  'md_spatial' and 'md_temporal' (the layer-weighted means of L_sp and L_tm), 'kd' (τ²·KL),
  'feature', 'total'; the weights α, β, γ are not folded into the term metrics; skipped
  terms read 0.
  """
  for name, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
    _check_nonneg_weight(name, w)
  student_logits = jnp.asarray(student_logits)
  labels = jnp.asarray(labels)
  dtype = _compute_dtype(student_logits)
  logits32 = student_logits.astype(dtype)
  if labels.ndim == student_logits.ndim:
    if labels.shape != student_logits.shape:
      raise ValueError(f"one-hot labels {labels.shape} must match logits {student_logits.shape}")
    ce = jnp.mean(optax.softmax_cross_entropy(logits32, labels.astype(dtype)))
  elif labels.ndim == student_logits.ndim - 1 and labels.shape == student_logits.shape[:-1]:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"integer class labels expected for shape {labels.shape}, got dtype "
                       f"{labels.dtype}")
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits32, labels))
  else:
    raise ValueError(f"labels shape {labels.shape} fits neither integer labels "
                     f"{student_logits.shape[:-1]} nor one-hot {student_logits.shape}")

  unknown = sorted(set(md_kwargs) - set(_MD_KWARGS))
  if unknown:
    raise ValueError(f"unknown keyword arguments {unknown}; membrane_kd_loss accepts "
                     f"{list(_MD_KWARGS)}")
  md_options = {**_MD_KWARGS, **md_kwargs}

  zero = jnp.zeros((), dtype)
  md = md_sp = md_tm = kd = feat = zero
  total = ce
  if not _is_static_zero(alpha):
    if student_taps is None or teacher_taps is None:
      raise ValueError("alpha != 0 needs student_taps and teacher_taps, got None")
    md, _, md_sp, md_tm = _membrane_kd(student_taps, teacher_taps, **md_options)
    total = total + alpha * md
  if not _is_static_zero(beta):
    if teacher_logits is None:
      raise ValueError("beta != 0 needs teacher_logits, got None")
    kd = logit_kd_loss(student_logits, teacher_logits, temperature)
    total = total + beta * kd
  if not _is_static_zero(gamma):
    f_student = student_taps if student_feature_taps is None else student_feature_taps
    f_teacher = teacher_taps if teacher_feature_taps is None else teacher_feature_taps
    if f_student is None or f_teacher is None:
      raise ValueError("gamma != 0 needs student and teacher (feature) taps, got None")
    feat = _feature_term(f_student, f_teacher, projector_params, feature_pairs)
    total = total + gamma * feat
  metrics = {"ce": ce, "md": md, "md_spatial": md_sp, "md_temporal": md_tm, "kd": kd,
             "feature": feat, "total": total}
  return (total, metrics) if return_terms else total
