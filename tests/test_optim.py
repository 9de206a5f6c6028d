"""`make_optimizer` and `task_loss` against the update rules and formulas written out in NumPy.

The optimizers are checked by running a few steps on fixed gradients and comparing every
parameter with a float64 NumPy loop of the textbook rule (Adam, AdamW with decoupled weight
decay, SGD with Nesterov momentum and L2 weight decay added to the gradient), under the
learning-rate schedule written out as a formula (cosine, linear warm-up + cosine, constant,
linear warm-up + constant).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdsnn_jax.train.state import make_optimizer
from mdsnn_jax.train.steps import task_loss

SEED = 0
TOTAL = 8
B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam / adamw defaults


def lr_at(step, lr, schedule, warmup, total):
  """The rate used for the update at 0-based `step` (the count before the update)."""
  if warmup and step < warmup:
    return lr * step / warmup
  if schedule == "constant":
    return lr
  decay = max(total, warmup + 1) - warmup
  frac = min(step - warmup, decay) / decay
  return lr * 0.5 * (1 + math.cos(math.pi * frac))


def np_run(name, grads, p0, *, lr, schedule, warmup, wd, momentum, total):
  p = p0.astype(np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for t, g in enumerate(grads):
    eta = lr_at(t, lr, schedule, warmup, total)
    if name == "sgd":
      g = g + wd * p                      # L2 decay, then Nesterov momentum (PyTorch's form)
      m = momentum * m + g
      p = p - eta * (g + momentum * m)
    else:
      m = B1 * m + (1 - B1) * g
      v = B2 * v + (1 - B2) * g * g
      m_hat, v_hat = m / (1 - B1 ** (t + 1)), v / (1 - B2 ** (t + 1))
      update = m_hat / (np.sqrt(v_hat) + EPS)
      if name == "adamw" or wd:           # decoupled weight decay, scaled by the rate
        update = update + wd * p
      p = p - eta * update
  return p


def run_optax(tx, grads, p0):
  params = {"w": jnp.asarray(p0, jnp.float32)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = jax.tree.map(lambda a, b: a + b, params, updates)
  return np.asarray(params["w"], np.float64)


CASES = [
    # (name, schedule, warmup, weight_decay, lr): the configs' settings and the other branches.
    ("adam", "cosine", 0, 0.0, 1e-3),     # default / md_cifar10 / ncaltech101 / spquant rows
    ("adam", "cosine", 3, 0.0, 2e-3),
    ("adam", "constant", 0, 0.0, 1e-2),
    ("adam", "constant", 3, 0.0, 1e-2),
    ("adam", "cosine", 0, 1e-2, 1e-3),    # adam with weight decay means AdamW
    ("adamw", "cosine", 3, 5e-2, 1e-3),
    ("adamw", "constant", 0, 1e-2, 1e-3),
    ("sgd", "cosine", 0, 5e-4, 0.1),      # the MS-ResNet paper rows: SGD 0.1, Nesterov, 5e-4
    ("sgd", "cosine", 3, 5e-4, 0.1),
    ("sgd", "constant", 0, 0.0, 0.1),
]


@pytest.mark.parametrize("name,schedule,warmup,wd,lr", CASES)
def test_make_optimizer_matches_the_update_rule(name, schedule, warmup, wd, lr):
  rng = np.random.default_rng(SEED)
  p0 = rng.normal(size=(5, 3))
  grads = [rng.normal(size=p0.shape) for _ in range(TOTAL)]
  cfg = ml_collections.ConfigDict(dict(name=name, lr=lr, schedule=schedule, warmup_steps=warmup,
                                       weight_decay=wd, momentum=0.9))
  got = run_optax(make_optimizer(cfg, TOTAL), grads, p0)
  want = np_run(name, grads, p0, lr=lr, schedule=schedule, warmup=warmup, wd=wd, momentum=0.9,
                total=TOTAL)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                             err_msg=f"{name}/{schedule}/warmup {warmup}/wd {wd} (seed {SEED})")
  assert np.abs(want - p0).max() > 1e-4  # the parameters moved


def test_schedule_reaches_zero_and_warmup_starts_at_zero():
  # A constant gradient 1 makes Adam's step m̂/(√v̂ + ε) = 1, so each update is −rate.
  for schedule, warmup in (("cosine", 0), ("cosine", 2), ("constant", 2)):
    cfg = ml_collections.ConfigDict(dict(name="adam", lr=0.5, schedule=schedule,
                                         warmup_steps=warmup, weight_decay=0.0))
    tx = make_optimizer(cfg, TOTAL)
    params = jnp.zeros(())
    state = tx.init(params)
    rates = []
    for _ in range(TOTAL + 1):
      upd, state = tx.update(jnp.ones(()), state, params)
      rates.append(-float(upd))
    want = [lr_at(t, 0.5, schedule, warmup, TOTAL) for t in range(TOTAL + 1)]
    np.testing.assert_allclose(rates, want, rtol=1e-5, atol=1e-7, err_msg=f"{schedule}/{warmup}")
    if warmup:
      assert rates[0] == 0.0
    if schedule == "cosine":
      assert rates[TOTAL] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("field,value,message", [("name", "rmsprop", "'rmsprop'"),
                                                 ("schedule", "step", "'step'")])
def test_make_optimizer_rejects_unknown_names(field, value, message):
  cfg = ml_collections.ConfigDict(dict(name="adam", lr=1e-3, schedule="cosine"))
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    make_optimizer(cfg, 10)


# ------------------------------------------------------------------ task loss


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("lam", [0.05, 0.0, 0.5])
def test_tet_loss_matches_its_formula(lam):
  # TET (docs/method.md): (1 − λ)·mean_t CE(o_t, y) + λ·mean_t MSE(o_t, 1), MSE over batch and classes.
  rng = np.random.default_rng(SEED + 1)
  t, b, k = 3, 5, 4
  logits = rng.normal(0, 2.0, (t, b, k))
  labels = rng.integers(0, k, b)
  ce_t = np.mean([-np_log_softmax(logits[i])[np.arange(b), labels].mean() for i in range(t)])
  mse = np.mean([np.mean((logits[i] - 1.0) ** 2) for i in range(t)])
  want = (1 - lam) * ce_t + lam * mse
  got = task_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), "tet", tet_lambda=lam)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_ce_loss_is_on_the_time_mean_and_differs_from_tet():
  rng = np.random.default_rng(SEED + 2)
  logits = rng.normal(0, 2.0, (3, 5, 4))
  labels = rng.integers(0, 4, 5)
  want = -np_log_softmax(logits.mean(0))[np.arange(5), labels].mean()
  x, y = jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
  assert float(task_loss(x, y, "ce")) == pytest.approx(want, rel=1e-5)
  # mean of per-step CE ≥ CE of the mean (convexity), strictly for these varying logits
  assert float(task_loss(x, y, "tet", tet_lambda=0.0)) > float(task_loss(x, y, "ce")) + 1e-3
  with pytest.raises(ValueError, match="'mse'"):
    task_loss(x, y, "mse")
