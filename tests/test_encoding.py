"""Input encoders: statistics of the rate code, hand values of latency and direct codes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdsnn_jax import encoding


def test_rate_is_bernoulli_with_p_clipped():
  x = jnp.array([-0.5, 0.0, 0.1, 0.5, 0.9, 1.0, 1.7])
  t = 4000
  s = np.asarray(encoding.rate(jax.random.key(0), x, t))
  assert s.shape == (t, 7) and set(np.unique(s)) <= {0.0, 1.0}
  p = np.clip(np.asarray(x), 0, 1)
  for j in range(7):
    k = int(s[:, j].sum())
    if p[j] in (0.0, 1.0):
      assert k == p[j] * t
    else:  # two-sided exact binomial test at a fixed seed
      assert stats.binomtest(k, t, p[j]).pvalue > 1e-3, (j, k / t, p[j])
  # Independent over time: the lag-1 autocorrelation of a p = 0.5 train is ~ 0.
  a = s[:, 3] - s[:, 3].mean()
  assert abs(float(np.dot(a[1:], a[:-1]) / np.dot(a, a))) < 4 / np.sqrt(t)


def test_rate_keys_and_dtype():
  x = jnp.full((2, 3), 0.5, jnp.bfloat16)
  a = encoding.rate(jax.random.key(1), x, 5)
  assert a.shape == (5, 2, 3) and a.dtype == jnp.bfloat16
  assert not np.array_equal(np.asarray(a, np.float32),
                            np.asarray(encoding.rate(jax.random.key(2), x, 5), np.float32))
  assert encoding.rate(jax.random.key(0), jnp.array([1, 0]), 3).dtype == jnp.float32


def test_latency_linear_hand_values():
  x = jnp.array([1.0, 0.5, 0.25, 0.005, 0.0, 2.0])
  s = np.asarray(encoding.latency(x, 5))  # t* = round(4·(1 − p)); p ≤ 0.01 never fires
  expected_t = [0, 2, 3, None, None, 0]
  for j, tj in enumerate(expected_t):
    col = s[:, j]
    if tj is None:
      assert col.sum() == 0
    else:
      assert col.sum() == 1 and col[tj] == 1


def test_latency_log_matches_rc_formula():
  x = np.array([1.0, 0.5, 0.2, 0.05])
  tau, theta, t = 3.0, 0.1, 10
  s = np.asarray(encoding.latency(jnp.asarray(x), t, kind="log", tau=tau, threshold=theta))
  for j, p in enumerate(x):
    t_star = tau * np.log(p / (p - theta)) if p > theta else np.inf
    t_star = np.round(t_star)
    if t_star <= t - 1:
      assert s[:, j].sum() == 1 and s[int(t_star), j] == 1
    else:
      assert s[:, j].sum() == 0
  # and the charge really crosses θ there: V(t*) ≈ θ
  p = 0.5
  assert abs(p * (1 - np.exp(-(tau * np.log(p / (p - theta))) / tau)) - theta) < 1e-12


def test_direct_repeats():
  x = jnp.arange(6.0).reshape(2, 3)
  d = encoding.direct(x, 3)
  assert d.shape == (3, 2, 3)
  np.testing.assert_array_equal(np.asarray(d), np.broadcast_to(np.asarray(x), (3, 2, 3)))


def test_encoders_under_jit():
  f = jax.jit(lambda k, x: encoding.rate(k, x, 4) + encoding.latency(x, 4) + encoding.direct(x, 4))
  assert f(jax.random.key(0), jnp.ones((2,))).shape == (4, 2)


@pytest.mark.parametrize("call, match", [
    (lambda: encoding.direct(jnp.ones(2), 0), "timesteps"),
    (lambda: encoding.rate(jax.random.key(0), jnp.ones(2), 2.5), "timesteps"),
    (lambda: encoding.latency(jnp.ones(2), 4, kind="exp"), "kind"),
    (lambda: encoding.latency(jnp.ones(2), 4, threshold=1.0), "threshold"),
    (lambda: encoding.latency(jnp.ones(2), 4, kind="log", tau=0.0), "tau"),
    (lambda: encoding.direct(np.array(["a"]), 2), "numeric"),
])
def test_bad_arguments_are_named(call, match):
  with pytest.raises(ValueError, match=match):
    call()
