"""Evaluation excludes padding: a padded batch gives the accuracy of the unpadded one.

The expected accuracy is computed directly from the model's logits with NumPy. The padding
rows are given the labels the model predicts for them, so that counting them would change
the result.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import data as data_lib
from mdsnn_jax.nn.models import create_model, default_model_config, init_variables
from mdsnn_jax.train import sharding as shd
from mdsnn_jax.train.config import base_config
from mdsnn_jax.train.loop import evaluate
from mdsnn_jax.train.steps import eval_step, make_eval_step

SEED = 0


def digits_model(seed=SEED):
  cfg = default_model_config()
  cfg.name, cfg.timesteps = "digits_mlp", 2
  model = create_model(cfg, 10)
  variables = init_variables(model, jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))
  return model, variables


def np_accuracy(model, variables, images, labels):
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x).mean(0))(variables, images))
  return float(np.mean(logits.argmax(-1) == np.asarray(labels))), logits.argmax(-1)


def test_eval_step_masks_padding_rows():
  model, variables = digits_model()
  rng = np.random.default_rng(SEED)
  n, pad = 6, 5
  images = rng.random((n + pad, 8, 8, 1)).astype(np.float32)
  _, predicted = np_accuracy(model, variables, images, np.zeros(n + pad, np.int32))
  labels = rng.integers(0, 10, n + pad).astype(np.int32)
  labels[n:] = predicted[n:]  # padding rows would all count as correct if not masked
  want, _ = np_accuracy(model, variables, images[:n], labels[:n])
  mask = np.r_[np.ones(n), np.zeros(pad)].astype(np.float32)
  padded = eval_step(variables, {"image": images, "label": labels, "mask": mask}, model=model)
  plain = eval_step(variables, {"image": images[:n], "label": labels[:n],
                                "mask": np.ones(n, np.float32)}, model=model)
  assert float(padded["count"]) == float(plain["count"]) == n
  assert float(padded["correct"]) == float(plain["correct"])
  assert float(padded["correct"]) / n == pytest.approx(want, abs=1e-9), f"seed {SEED}"
  assert want < 1.0  # some real row is wrong while every padding row is 'right'


def test_evaluate_with_a_short_last_batch_equals_one_full_pass():
  # digits' test split has 359 images: batches of 128 leave a last batch of 103 + 25 padding.
  config = base_config()
  config.train.eval_batch = 128
  model, variables = digits_model(SEED + 1)
  mesh = shd.make_mesh(-1)
  got = evaluate(make_eval_step(mesh, model=model), variables, config, mesh, num_test=359)
  loader = data_lib.make_loader(config.data, "test", batch_size=359, seed=0, shuffle=False,
                                num_epochs=1, drop_remainder=False)
  (batch,) = list(loader)
  assert len(batch["label"]) == 359
  want, _ = np_accuracy(model, variables, np.asarray(batch["image"], np.float32), batch["label"])
  assert got == pytest.approx(100 * want, abs=1e-7), f"seed {SEED + 1}"  # percent
