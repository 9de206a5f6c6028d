"""The training state: parameters, non-gradient collections and the optimizer state."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training (and so is checkpointed).

  params: the model's parameters, trained by gradient. distill_params: parameters trained
  with them that are not part of the model (feature-KD projectors; {} when unused), so
  they are checkpointed but never exported. batch_stats: tdBN running statistics.
  quant_state: quantizer state updated outside the gradient (e.g. LQ-Net bases). The
  optimizer state is over the pair (params, distill_params). skipped: how many updates were
  dropped for a non-finite loss or gradient (train.nan_policy='skip').
  """
  step: jax.Array
  skipped: jax.Array
  params: PyTree
  distill_params: PyTree
  batch_stats: PyTree
  quant_state: PyTree
  opt_state: optax.OptState
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, variables: dict, tx: optax.GradientTransformation,
             distill_params: PyTree = None) -> "TrainState":
    params = variables["params"]
    distill_params = {} if distill_params is None else distill_params
    return cls(
        step=jax.numpy.zeros((), jax.numpy.int32),
        skipped=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        distill_params=distill_params,
        batch_stats=variables.get("batch_stats", {}),
        quant_state=variables.get("quant_state", {}),
        opt_state=tx.init((params, distill_params)),
        tx=tx,
    )

  @property
  def trainable(self) -> tuple[PyTree, PyTree]:
    """What the gradient is taken of: (params, distill_params)."""
    return self.params, self.distill_params

  @property
  def variables(self) -> dict:
    """The model variables in the form `model.apply` takes."""
    return {"params": self.params, "batch_stats": self.batch_stats,
            "quant_state": self.quant_state}

  def apply_gradients(self, grads, *, batch_stats, quant_state,
                      apply: jax.Array | bool = True) -> "TrainState":
    """grads: gradients of (params, distill_params), the structure of `trainable`.

    apply=False (a traced bool is fine) keeps every array as it was and counts a skipped
    update; the step advances either way, so schedules and data stay aligned."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.trainable)
    params, distill_params = optax.apply_updates(self.trainable, updates)
    new = self.replace(params=params, distill_params=distill_params,
                       batch_stats=batch_stats, quant_state=quant_state, opt_state=opt_state)
    if apply is not True:
      new = jax.tree.map(lambda n, o: jax.numpy.where(apply, n, o), new, self)
    return new.replace(step=self.step + 1,
                       skipped=self.skipped + (1 - jax.numpy.asarray(apply, jax.numpy.int32)))


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """Adam / AdamW / SGD-momentum with a constant or (warm-up +) cosine learning rate."""
  lr = float(optim_cfg.lr)
  schedule = optim_cfg.get("schedule", "cosine")
  warmup = int(optim_cfg.get("warmup_steps", 0))
  if schedule == "cosine":
    lr_fn = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1))
  elif schedule == "constant":
    lr_fn = optax.constant_schedule(lr) if not warmup else optax.linear_schedule(0.0, lr, warmup)
  else:
    raise ValueError(f"unknown optim.schedule {schedule!r}; allowed: ['cosine', 'constant']")
  name = optim_cfg.get("name", "adam")
  wd = float(optim_cfg.get("weight_decay", 0.0))
  if name == "adam":
    return optax.adam(lr_fn) if wd == 0 else optax.adamw(lr_fn, weight_decay=wd)
  if name == "adamw":
    return optax.adamw(lr_fn, weight_decay=wd)
  if name == "sgd":
    tx = optax.sgd(lr_fn, momentum=float(optim_cfg.get("momentum", 0.9)), nesterov=True)
    return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
  raise ValueError(f"unknown optim.name {name!r}; allowed: ['adam', 'adamw', 'sgd']")
