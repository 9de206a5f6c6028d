"""Does a bfloat16 model train as well as float32? The digits CNN, both dtypes, one run each.

    python bench/mixed_precision.py [--steps 150] [--seeds 0]

digits_cnn (the quickstart's model), T = 4, Adam 2e-3, batches of 64 drawn from 1,400
shuffled digits; test accuracy (percent) on the other 397. Parameters and optimizer state
stay float32 in both runs (`model.dtype` changes the compute dtype only). Prints a markdown
table and writes results/bench/mixed_precision.{md,json}. No speed is claimed on CPU
(bfloat16 has no fast path there); the GPU suite times it. `tests/test_dtype.py` runs the
same function and requires |Δ| ≤ 2 pp.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mdsnn_jax.nn import create_model, default_model_config, init_variables  # noqa: E402


def train_digits(dtype: str, steps: int = 150, batch: int = 64, seed: int = 0) -> float:
  """Test accuracy (percent) of digits_cnn in `dtype` after `steps` Adam steps."""
  from sklearn.datasets import load_digits
  data = load_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  x_tr, y_tr, x_te, y_te = x[:1400], y[:1400], x[1400:], y[1400:]
  cfg = default_model_config()
  cfg.name, cfg.dtype, cfg.timesteps = "digits_cnn", dtype, 4
  model = create_model(cfg, 10)
  variables = init_variables(model, jax.random.key(seed, impl="rbg"), jnp.asarray(x_tr[:2]))
  tx = optax.adam(2e-3)
  params, stats = variables["params"], variables["batch_stats"]
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt, xb, yb):
    def loss(p):
      logits, cols = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                 mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), yb).mean(), cols
    (_, cols), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), cols["batch_stats"], opt

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x_tr), batch)
    params, stats, opt = step(params, stats, opt, x_tr[idx], y_tr[idx])
  dtypes = {str(a.dtype) for a in jax.tree_util.tree_leaves((params, opt))}
  if not dtypes <= {"float32", "int32"}:
    raise AssertionError(f"parameters / optimizer state left float32: {dtypes}")
  logits = jax.jit(lambda v, xb: model.apply(v, xb, train=False))(
      {"params": params, "batch_stats": stats}, x_te)
  return 100.0 * float(np.mean(np.argmax(np.asarray(logits.mean(0)), -1) == y_te))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--seeds", default="0", help="comma-separated seeds")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = []
  for seed in seeds:
    acc = {d: train_digits(d, steps=args.steps, seed=seed) for d in ("float32", "bfloat16")}
    rows.append({"seed": seed, **acc, "delta_pp": acc["bfloat16"] - acc["float32"]})
  lines = [f"digits_cnn, T = 4, Adam 2e-3, {args.steps} steps of batch 64; test accuracy (%) on "
           "397 held-out digits", "", "| seed | float32 | bfloat16 | Δ (pp) |", "|---|---|---|---|"]
  lines += [f"| {r['seed']} | {r['float32']:.2f} | {r['bfloat16']:.2f} | {r['delta_pp']:+.2f} |"
            for r in rows]
  text = "\n".join(lines) + "\n"
  print(text)
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from common import write_results
  print("wrote", write_results("mixed_precision", text, {"rows": rows, "steps": args.steps}))


if __name__ == "__main__":
  from mdsnn_jax import xla_cpu
  xla_cpu.use_xnnpack_convolutions()  # the launchers' convolution library, before any jax work
  main()
