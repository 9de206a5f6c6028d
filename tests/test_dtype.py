"""model.dtype='bfloat16': bf16 compute, float32 parameters / statistics / quantizer
parameters / logits / taps / gradients; ternary membranes exact; digits trains like float32."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdsnn_jax.neuron import lif_scan
from mdsnn_jax.nn import create_model, default_model_config, init_variables
from mdsnn_jax.quant import make_membrane_quantizer

QAT = {"weight": {"kind": "lsq", "bits": 2}, "membrane": {"kind": "ternary"},
       "first_layer": {"kind": "uniform", "bits": 8}, "last_layer": {"kind": "uniform", "bits": 8},
       "bn_fold": True}


def _model(name="vgg9", dtype="bfloat16", quant=None, **kw):
  cfg = default_model_config()
  cfg.name, cfg.dtype = name, dtype
  for k, v in kw.items():
    setattr(cfg, k, v)
  if quant is not None:
    cfg.quant = quant
  return create_model(cfg, 10)


def _dtypes(tree):
  return {str(a.dtype) for a in jax.tree_util.tree_leaves(tree)}


@pytest.mark.integration
def test_bf16_keeps_state_logits_taps_and_grads_float32():
  model = _model("digits_cnn", quant=QAT, timesteps=2)
  x = jax.random.uniform(jax.random.key(0, impl="rbg"), (2, 8, 8, 1))
  variables = init_variables(model, jax.random.key(1, impl="rbg"), x)
  assert _dtypes(variables) == {"float32"}
  # quantizer parameters (LSQ step sizes) are among them
  assert any("wq" in str(p) for p in jax.tree_util.tree_leaves_with_path(variables["params"]))

  def loss(params):
    logits, cols = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats", "quant_state", "membranes", "spikes"])
    return optax.softmax_cross_entropy_with_integer_labels(logits.mean(0), jnp.array([1, 2])).mean(), (logits, cols)

  (value, (logits, cols)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  assert value.dtype == jnp.float32 and logits.dtype == jnp.float32
  assert _dtypes(cols) == {"float32"} and _dtypes(grads) == {"float32"}
  assert np.isfinite(float(value))
  # the convolutions and matmuls themselves run in bf16
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
  convs = [l for l in jaxpr.splitlines() if "conv_general_dilated[" in l or "dot_general[" in l]
  assert convs and all("bf16[" in l.split("=")[0] for l in convs), convs
  # spikes stay exactly binary
  spikes = np.concatenate([np.ravel(s[0]) for s in jax.tree_util.tree_leaves(
      cols["spikes"], is_leaf=lambda l: isinstance(l, tuple))])
  assert set(np.unique(spikes)) <= {0.0, 1.0}


def test_ternary_levels_exact_in_bfloat16():
  levels = jnp.array([-1.0, 0.0, 1.0], jnp.bfloat16)
  np.testing.assert_array_equal(levels.astype(jnp.float32), [-1.0, 0.0, 1.0])
  mq = make_membrane_quantizer({"kind": "ternary"})
  u = (3 * jax.random.normal(jax.random.key(0, impl="rbg"), (4096,))).astype(jnp.bfloat16)
  q = mq.apply({}, u)
  assert q.dtype == jnp.bfloat16
  np.testing.assert_array_equal(q.astype(jnp.float32), mq.apply({}, u.astype(jnp.float32)))
  assert set(np.unique(np.asarray(q.astype(jnp.float32)))) == {-1.0, 0.0, 1.0}
  # through the recurrence: every stored state is a ternary level, spikes agree with float32
  x = jax.random.normal(jax.random.key(1, impl="rbg"), (16, 8, 32)).astype(jnp.bfloat16)
  s16, _, u16 = lif_scan(x, membrane_quantizer=lambda u: mq.apply({}, u))
  s32, _, u32 = lif_scan(x.astype(jnp.float32), membrane_quantizer=lambda u: mq.apply({}, u))
  assert set(np.unique(np.asarray(u16.astype(jnp.float32)))) <= {-1.0, 0.0, 1.0}
  np.testing.assert_array_equal(s16.astype(jnp.float32), s32)
  np.testing.assert_array_equal(u16.astype(jnp.float32), u32)


def test_bad_dtype_raises():
  with pytest.raises(ValueError, match="model.dtype 'float16'.*allowed"):
    _model(dtype="float16")


def _train_digits(dtype: str, steps: int = 150, batch: int = 64, seed: int = 0) -> float:
  """bench/mixed_precision.py's run (test accuracy in percent), so the test and the
  BENCHMARKS.md number come from one function."""
  import pathlib
  import sys
  bench = str(pathlib.Path(__file__).resolve().parents[1] / "bench")
  sys.path.insert(0, bench)
  try:
    import mixed_precision
  finally:
    sys.path.remove(bench)
  return mixed_precision.train_digits(dtype, steps=steps, batch=batch, seed=seed)


@pytest.mark.integration
def test_bf16_digits_trains_within_2pp_of_float32():
  acc32 = _train_digits("float32")
  acc16 = _train_digits("bfloat16")
  assert acc32 > 80, acc32
  assert abs(acc16 - acc32) <= 2.0, (acc16, acc32)
