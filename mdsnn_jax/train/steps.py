"""Training and evaluation steps: FP / QAT (task loss) and MD distillation (see docs/method.md,
'Distillation').

Models return per-timestep logits [T, B, K]; the readout is their time mean. The step
functions are pure `(state, batch, ...) -> (state, metrics)` and are jitted with explicit
shardings by `make_*_step` (batch on the mesh's 'data' axis, everything else replicated).

In the distillation step the teacher's variables are an argument that is never
differentiated: its forward runs in eval mode outside `jax.value_and_grad`, so no backward
pass through the teacher is built (tests count the convolutions in the jaxpr).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mdsnn_jax import distill
from mdsnn_jax.train import sharding as shd
from mdsnn_jax.train.state import TrainState

LOSS_KINDS = ("ce", "tet")


def task_loss(logits_t: jax.Array, labels: jax.Array, kind: str = "ce",
              tet_lambda: float = 0.05) -> jax.Array:
  """Task loss on per-timestep logits [T, B, K].

  'ce': CE(mean_t o_t, y).  'tet' (temporal efficient training):
  (1 − λ)·mean_t CE(o_t, y) + λ·mean_t MSE(o_t, 1).
  """
  if kind == "ce":
    return optax.softmax_cross_entropy_with_integer_labels(logits_t.mean(0), labels).mean()
  if kind == "tet":
    ce_t = optax.softmax_cross_entropy_with_integer_labels(
        logits_t, jnp.broadcast_to(labels, logits_t.shape[:2])).mean()
    if tet_lambda == 0:
      return ce_t
    return (1.0 - tet_lambda) * ce_t + tet_lambda * jnp.mean((logits_t - 1.0) ** 2)
  raise ValueError(f"unknown loss.kind {kind!r}; allowed: {list(LOSS_KINDS)}")


FEATURE_SOURCES = ("membranes", "spikes")


def _apply(model, variables, images, *, train: bool, timesteps: int | None, taps=()):
  """Runs the model; returns (logits [T,B,K], updated collections incl. the tap
  collections named in `taps`)."""
  mutable = (["batch_stats", "quant_state"] if train else []) + list(taps)
  if not mutable:
    return model.apply(variables, images, train=train, timesteps=timesteps), {}
  return model.apply(variables, images, train=train, timesteps=timesteps, mutable=mutable)


def train_step(state: TrainState, batch: dict, teacher_variables: Any = None, *, model,
               loss_cfg, distill_cfg=None, teacher_model=None,
               timesteps: int | None = None) -> tuple[TrainState, dict]:
  """One optimizer step. With `distill_cfg` (stage 'md'): L = task + α·MD + β·τ²KL + γ·feat.
  A model with a learned channel gate (neuron.gate_rho) adds loss.gate_weight × the mean
  over its gates of their BCE against the mass target (metric 'gate', unweighted).

  The feature term (γ > 0) reads the taps of `distill_cfg.feature_source` ('membranes' or
  'spikes') through the projectors in `state.distill_params` ({tap: projector}), which
  are trained with the student."""
  images, labels = batch["image"], batch["label"]
  kind = loss_cfg.get("kind", "ce")
  tet_lambda = float(loss_cfg.get("tet_lambda", 0.05))
  gated = has_gate(model)
  gate_weight = float(loss_cfg.get("gate_weight", 1.0))

  taps = ()
  feature_source = None
  teacher_logits = teacher_taps = teacher_features = None
  if distill_cfg is not None:
    taps = ("membranes",)
    if float(distill_cfg.get("gamma", 0.0)) > 0:
      feature_source = distill_cfg.get("feature_source", "membranes")
      taps = tuple(dict.fromkeys(taps + (feature_source,)))
    t_out, t_cols = _apply(teacher_model, teacher_variables, images, train=False,
                           timesteps=distill_cfg.get("teacher_timesteps") or timesteps, taps=taps)
    t_cols = jax.lax.stop_gradient(t_cols)
    teacher_logits = jax.lax.stop_gradient(t_out.mean(0))
    teacher_taps = distill.flatten_taps(t_cols["membranes"])
    if feature_source is not None:
      teacher_features = distill.flatten_taps(t_cols[feature_source])

  def loss_fn(trainable):
    params, distill_params = trainable
    variables = {"params": params, "batch_stats": state.batch_stats,
                 "quant_state": state.quant_state}
    logits_t, cols = _apply(model, variables, images, train=True, timesteps=timesteps,
                            taps=taps + (("gate_losses",) if gated else ()))
    metrics = {}
    if distill_cfg is None:
      loss = task_loss(logits_t, labels, kind, tet_lambda)
      metrics["ce"] = loss if kind == "ce" else optax.softmax_cross_entropy_with_integer_labels(
          logits_t.mean(0), labels).mean()
    else:
      loss, metrics = distill.distillation_loss(
          logits_t.mean(0), labels, teacher_logits, distill.flatten_taps(cols["membranes"]),
          teacher_taps, alpha=distill_cfg.alpha, beta=distill_cfg.beta,
          temperature=distill_cfg.temperature, gamma=distill_cfg.gamma,
          layers=layer_spec(distill_cfg.layers), decorrelate=distill_cfg.decorrelate,
          temporal_weight=distill_cfg.temporal_weight, align=distill_cfg.align,
          projector_params=distill_params if feature_source else None,
          student_feature_taps=(distill.flatten_taps(cols[feature_source])
                                if feature_source else None),
          teacher_feature_taps=teacher_features, return_terms=True)
      if kind != "ce":  # swap the CE task term for the configured one
        loss = loss - metrics["ce"] + task_loss(logits_t, labels, kind, tet_lambda)
    if gated:
      metrics["gate"] = gate_loss(cols)
      loss = loss + gate_weight * metrics["gate"]
    metrics["loss"] = loss
    metrics["accuracy"] = jnp.mean(jnp.argmax(logits_t.mean(0), -1) == labels)
    return loss, (metrics, cols)

  (loss, (metrics, cols)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
  # A non-finite loss or gradient is never applied (the loop stops or skips: nan_policy).
  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [True]))
  new_state = state.apply_gradients(
      grads, batch_stats=cols.get("batch_stats", state.batch_stats),
      quant_state=cols.get("quant_state", state.quant_state), apply=finite)
  metrics["finite"] = finite
  return new_state, metrics


def has_gate(model) -> bool:
  """Whether `model` has learned channel gates (its neuron config's gate_rho is set)."""
  return getattr(getattr(model, "neuron", None), "gate_rho", None) is not None


def gate_loss(cols: dict) -> jax.Array:
  """Mean over the gated layers of the BCE each sowed into 'gate_losses' (a scalar)."""
  losses = distill.flatten_taps(cols.get("gate_losses", {}))
  if not losses:
    raise ValueError("the model has neuron.gate_rho set but no layer sowed a gate loss into "
                     "'gate_losses'")
  return jnp.mean(jnp.stack([jnp.asarray(v, jnp.float32) for v in losses.values()]))


def layer_spec(spec):
  """Config form of `distill.select_taps`'s layers: 'all', 're:<pattern>' or a comma list."""
  if isinstance(spec, str) and spec != "all" and not spec.startswith("re:"):
    return [s.strip() for s in spec.split(",") if s.strip()]
  return spec


def eval_step(variables: dict, batch: dict, *, model, timesteps: int | None = None) -> dict:
  """Sums of correct predictions and of examples (padding excluded through batch['mask'])."""
  logits = model.apply(variables, batch["image"], train=False, timesteps=timesteps).mean(0)
  mask = batch["mask"]
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * mask
  return {"correct": correct.sum(), "count": mask.sum()}


def make_train_step(mesh, *, model, loss_cfg, distill_cfg=None, teacher_model=None,
                    timesteps=None) -> Callable:
  """`train_step` jitted with the batch sharded on 'data' and state/teacher replicated."""
  rep, data = shd.replicated(mesh), shd.batch_sharding(mesh)
  fn = lambda state, batch, teacher_variables: train_step(
      state, batch, teacher_variables, model=model, loss_cfg=loss_cfg, distill_cfg=distill_cfg,
      teacher_model=teacher_model, timesteps=timesteps)
  return jax.jit(fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))


def make_eval_step(mesh, *, model, timesteps=None) -> Callable:
  rep, data = shd.replicated(mesh), shd.batch_sharding(mesh)
  fn = lambda variables, batch: eval_step(variables, batch, model=model, timesteps=timesteps)
  return jax.jit(fn, in_shardings=(rep, data), out_shardings=rep)
