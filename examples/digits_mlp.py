"""A spiking MLP on scikit-learn's bundled digits, in pure JAX + optax (no Flax).

    python examples/digits_mlp.py [--steps 300] [--timesteps 4]

The image is fed as a constant current at every timestep (direct encoding); the hidden
layer's input currents are one matmul on the merged T·B axis; only the LIF recurrence is
scanned. The readout is the time-mean of a linear layer on the spikes.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

from mdsnn_jax import lif_scan


def init(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (i, o)) * np.sqrt(2.0 / i), "b": jnp.zeros(o)}
          for k, i, o in zip(keys, sizes[:-1], sizes[1:])]


def forward(params, x, timesteps):
  """x: [B, 64] in [0, 1] -> logits [B, classes] (time-mean readout)."""
  t, b = timesteps, x.shape[0]
  h = jnp.broadcast_to(x, (t,) + x.shape)  # [T, B, F]
  for layer in params[:-1]:
    cur = (h.reshape(t * b, -1) @ layer["w"] + layer["b"]).reshape(t, b, -1)
    h, _, _ = lif_scan(cur, decay=0.5, threshold=1.0, surrogate="arctan")
  out = params[-1]
  return (h.reshape(t * b, -1) @ out["w"] + out["b"]).reshape(t, b, -1).mean(0)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--timesteps", type=int, default=4)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()

  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  n_train = int(0.8 * len(x))
  tr, te = perm[:n_train], perm[n_train:]

  params = init(jax.random.PRNGKey(a.seed), [64, a.hidden, 10])
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits = forward(p, xb, a.timesteps)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(a.seed)
  for i in range(a.steps):
    idx = rng.choice(tr, a.batch, replace=False)
    params, opt_state, loss = step(params, opt_state, x[idx], y[idx])
    if (i + 1) % 100 == 0:
      print(f"step {i+1:4d}  loss {float(loss):.4f}")
  pred = jnp.argmax(forward(params, x[te], a.timesteps), -1)
  print(f"test accuracy: {float((pred == y[te]).mean()):.4f} ({len(te)} held-out digits)")


if __name__ == "__main__":
  main()
