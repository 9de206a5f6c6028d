"""Your own spiking model from the pure functions: rate-coded digits, a recurrent LIF layer
and a firing-rate regulariser, trained with optax (no Flax).

    python examples/own_model.py [--steps 60] [--timesteps 6]

    x_t ~ Bernoulli(pixel)                             encoding.rate       [T, B, 64]
    s¹ = RLIF(x W₁ + b₁; W_rec)                         neuron.rlif_scan   [T, B, 64]
    h² = LIF(s¹ W₂) membranes, logits = mean_t h²       lif_scan           [B, 10]
    L = CE + 1e-2·(rate of s¹ − 0.1)² per neuron        regularizers.rate_target_loss
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

from mdsnn_jax import encoding, lif_scan, regularizers
from mdsnn_jax.neuron import rlif_scan


def init(key, n_in=64, hidden=64, classes=10):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w1": jax.random.normal(k1, (n_in, hidden)) * np.sqrt(2.0 / n_in),
          "b1": jnp.zeros(hidden),
          "w_rec": jax.random.normal(k2, (hidden, hidden)) * 0.1 / np.sqrt(hidden),
          "w2": jax.random.normal(k3, (hidden, classes)) * np.sqrt(2.0 / hidden)}


def forward(params, spikes_in):
  """spikes_in [T, B, 64] -> (logits [B, 10], hidden spikes [T, B, hidden])."""
  s1, _, _ = rlif_scan(spikes_in @ params["w1"] + params["b1"], params["w_rec"], decay=0.8)
  _, h2, _ = lif_scan(s1 @ params["w2"], reset="none", decay=0.8)  # a leaky integrator readout
  return h2.mean(0), s1


def main(steps: int = 60, timesteps: int = 6, batch: int = 128, seed: int = 0) -> dict:
  digits = load_digits()
  x = jnp.asarray(digits.data / 16.0, jnp.float32)
  y = jnp.asarray(digits.target)
  n_train = 1400
  opt = optax.adam(3e-3)
  params = init(jax.random.key(seed))
  opt_state = opt.init(params)

  def loss_fn(params, key, xb, yb):
    logits, s1 = forward(params, encoding.rate(key, xb, timesteps))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return ce + 1e-2 * regularizers.rate_target_loss({"rlif": s1}, 0.1), (ce, s1.mean())

  @jax.jit
  def step(params, opt_state, key):
    k_batch, k_code = jax.random.split(key)
    idx = jax.random.choice(k_batch, n_train, (batch,), replace=False)
    (loss, (ce, rate)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, k_code, x[idx], y[idx])
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, rate

  key = jax.random.key(seed + 1)
  losses = []
  for _ in range(steps):
    key, sub = jax.random.split(key)
    params, opt_state, loss, rate = step(params, opt_state, sub)
    losses.append(float(loss))
  logits, _ = jax.jit(forward)(params, encoding.rate(jax.random.key(99), x[n_train:], timesteps))
  acc = float(jnp.mean(jnp.argmax(logits, -1) == y[n_train:]))
  print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} | hidden rate {float(rate):.3f} | "
        f"test accuracy {acc:.3f}")
  return {"first_loss": losses[0], "last_loss": losses[-1], "accuracy": acc, "rate": float(rate)}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--timesteps", type=int, default=6)
  args = parser.parse_args()
  main(args.steps, args.timesteps)
