from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import lif_scan, lif_step
from mdsnn_jax.surrogate import get_surrogate, surrogate_grad


def numpy_lif(x, decay, threshold, reset):
  """Plain NumPy loop of docs/method.md (the reference)."""
  u = np.zeros(x.shape[1:], np.float64)
  spikes, membranes = [], []
  for t in range(x.shape[0]):
    h = decay * u + x[t]
    s = (h >= threshold).astype(np.float64)
    if reset == "hard":
      u = h * (1 - s)
    elif reset == "soft":
      u = h - threshold * s
    else:
      u = h
    spikes.append(s)
    membranes.append(h)
  return np.stack(spikes), np.stack(membranes), u


@pytest.mark.parametrize("reset", ["hard", "soft", "none"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("decay", [0.0, 0.25, 0.5, 1.0])
def test_matches_numpy_loop(reset, per_channel, decay, record_property):
  # A fixed seed per case (hash() of a str varies between processes); printed on failure.
  seed = 1000 * ["hard", "soft", "none"].index(reset) + 100 * per_channel + int(decay * 4)
  record_property("seed", seed)
  print(f"seed={seed}")
  rng = np.random.default_rng(seed)
  x = rng.normal(0.4, 0.8, size=(7, 3, 5, 6)).astype(np.float32)
  threshold = rng.uniform(0.3, 1.5, size=(6,)).astype(np.float32) if per_channel else 0.8
  s, h, u = lif_scan(jnp.asarray(x), decay=decay, threshold=threshold, reset=reset)
  rs, rh, ru = numpy_lif(x.astype(np.float64), decay, np.asarray(threshold, np.float64), reset)
  np.testing.assert_allclose(np.asarray(h), rh, rtol=1e-5, atol=1e-5, err_msg=f"seed={seed}")
  # A spike may differ only where h sits within float error of θ.
  near = np.abs(rh - np.broadcast_to(threshold, rh.shape)) < 1e-4
  assert np.all((np.asarray(s) == rs) | near), f"seed={seed}"
  np.testing.assert_allclose(np.asarray(u), ru, rtol=1e-5, atol=1e-5, err_msg=f"seed={seed}")
  assert s.shape == h.shape == x.shape and u.shape == x.shape[1:]


def test_u0_and_membrane_quantizer_hook():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
  u0 = jnp.full((4,), 0.3)
  seen = []

  def quant(u):
    seen.append(u.shape)
    return jnp.round(u * 4) / 4

  s, h, u = lif_scan(x, u0=u0, membrane_quantizer=quant)
  assert seen  # the hook was traced inside the scan
  np.testing.assert_allclose(np.asarray(h[0]), 0.5 * 0.3 + np.asarray(x[0]), rtol=1e-6)
  # The stored state is on the quantizer's grid; h is the pre-reset value built from it.
  np.testing.assert_allclose(np.asarray(u) * 4, np.round(np.asarray(u) * 4), atol=1e-6)


def test_gradient_flows_through_time():
  x = jnp.asarray([[0.6], [0.3], [0.4], [0.2]], jnp.float32)
  loss = lambda c: lif_scan(c, decay=0.9, threshold=1.0)[0][2:].sum()
  g = jax.grad(loss)(x)
  assert float(jnp.abs(g[0, 0])) > 0, "later spikes depend on currents[0]"


@pytest.mark.parametrize("detach", [False, True])
def test_detach_reset_gradient_is_analytic(detach):
  # h_0 = x_0 fires (x_0 > θ), u_0 = h_0 (1 − s_0), h_1 = λ u_0 + x_1.
  # dh_1/dx_0 = λ (1 − s_0 − h_0 · H'(h_0 − θ))   or   λ (1 − s_0) with detach_reset.
  lam, theta, x0 = 0.5, 1.0, 1.2
  x = jnp.asarray([[x0], [0.1]], jnp.float32)
  g = jax.grad(lambda c: lif_scan(c, decay=lam, threshold=theta, detach_reset=detach)[1][1].sum())(x)
  sg = float(surrogate_grad("arctan", jnp.float32(x0 - theta)))
  expected = lam * (1 - 1.0) if detach else lam * (1 - 1.0 - x0 * sg)
  np.testing.assert_allclose(float(g[0, 0]), expected, rtol=1e-6, atol=1e-7)


def test_learnable_per_channel_threshold_gets_gradient():
  x = jnp.asarray(np.random.default_rng(1).normal(0.5, 1.0, size=(6, 8, 3)).astype(np.float32))
  th = jnp.asarray([0.5, 1.0, 1.5])
  g = jax.grad(lambda t: lif_scan(x, threshold=t, reset="soft")[0].mean())(th)
  assert g.shape == (3,) and np.all(np.asarray(g) < 0), "raising θ lowers the spike count"


def test_lif_step_matches_scan():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32))
  spike = get_surrogate("arctan")
  u = jnp.zeros(4)
  s_all, h_all, _ = lif_scan(x)
  for t in range(3):
    u, s, h = lif_step(u, x[t], decay=0.5, threshold=1.0, spike_fn=spike)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_all[t]))
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_all[t]))


def test_jit_vmap_grad_compose():
  x = jnp.asarray(np.random.default_rng(3).normal(0.5, 1, size=(4, 5, 2, 3)).astype(np.float32))

  def loss(c):
    s, h, _ = lif_scan(c, surrogate="sigmoid")
    return (s * h).sum()

  per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=1, out_axes=1))(x)
  whole = jax.grad(loss)(x)
  np.testing.assert_allclose(np.asarray(per_example), np.asarray(whole), rtol=1e-5, atol=1e-6)


def test_bf16_in_bf16_out():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 2, 3)), jnp.bfloat16)
  s, h, u = lif_scan(x, threshold=jnp.ones(3))
  assert s.dtype == h.dtype == u.dtype == jnp.bfloat16
  g = jax.grad(lambda c: lif_scan(c)[0].astype(jnp.float32).sum())(x)
  assert g.dtype == jnp.bfloat16


def test_callable_surrogate_and_unroll():
  x = jnp.asarray(np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32))
  a = lif_scan(x, surrogate=get_surrogate("triangle"), unroll=4)
  b = lif_scan(x, surrogate="triangle")
  for p, q in zip(a, b):
    np.testing.assert_allclose(np.asarray(p), np.asarray(q))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(decay=1.5), "1.5"),
    (dict(decay=-0.1), "-0.1"),
    (dict(threshold=0.0), "0.0"),
    (dict(threshold=-2.0), "-2.0"),
    (dict(threshold=np.array([1.0, -1.0, 1.0])), "-1."),
    (dict(threshold=np.ones(4)), r"\(4,\)"),
    (dict(reset="soft-ish"), "soft-ish"),
    (dict(surrogate="nope"), "nope"),
])
def test_bad_inputs_name_the_value(kwargs, pattern):
  x = jnp.zeros((2, 5, 3))
  with pytest.raises(ValueError, match=pattern):
    lif_scan(x, **kwargs)


def test_integer_currents_rejected():
  with pytest.raises(ValueError, match="int32"):
    lif_scan(jnp.zeros((2, 3), jnp.int32))


def test_traced_decay_and_threshold_skip_concrete_checks():
  x = jnp.ones((3, 2))
  f = jax.jit(lambda d, t: lif_scan(x, decay=d, threshold=t)[1])
  np.testing.assert_allclose(np.asarray(f(0.5, 2.0))[:, 0], [1.0, 1.5, 0.0 + 1.75])


# ------------------------------------------------------------------ issue 17: as a JAX user


@pytest.fixture
def compile_counter():
  """Counts XLA backend compilations (jax.monitoring) while the test body runs."""
  events = []

  def listener(name, duration, **kwargs):
    del duration, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


def test_eager_lif_scan_compiles_once_per_configuration(compile_counter):
  from mdsnn_jax import quant
  x = jnp.asarray(np.random.default_rng(7).normal(0.5, 1, size=(4, 3, 6)).astype(np.float32))
  mq = quant.ternary_membrane()
  calls = [
      lambda th: lif_scan(x, threshold=th),
      lambda th: lif_scan(x, threshold=th, reset="soft", surrogate="sigmoid", alpha=3.0),
      lambda th: lif_scan(x, threshold=th, membrane_quantizer=mq),
      lambda th: lif_scan(x, threshold=th, membrane_quantizer=functools.partial(mq.apply, {})),
      lambda th: lif_scan(x, threshold=th,
                          membrane_quantizer=quant.make_membrane_quantizer({"kind": "ternary"})),
  ]
  thresholds = (1.0, 0.7, np.float32(0.8), jnp.float32(0.9))
  for i, call in enumerate(calls):
    for th in thresholds:  # first calls of a configuration (and argument type) may compile
      jax.block_until_ready(call(th))
    compile_counter.clear()
    for _ in range(3):
      for th in thresholds:
        jax.block_until_ready(call(th))  # same configuration, other threshold values
    assert compile_counter == [], f"call {i} recompiled {len(compile_counter)} times"
  # A new static configuration compiles again (the counter sees it).
  lif_scan(x, unroll=2)
  assert compile_counter


def test_membrane_quantizer_object_plugs_in_directly():
  from mdsnn_jax import quant
  x = jnp.asarray(np.random.default_rng(8).normal(0.3, 1, size=(5, 4, 3)).astype(np.float32))
  mq = quant.uniform_membrane(3, clip=1.0, learn_clip=True)
  want = lif_scan(x, membrane_quantizer=functools.partial(mq.apply, mq.init_params()))
  got = lif_scan(x, membrane_quantizer=mq)  # mq_params defaults to mq.init_params()
  for a, b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # mq_params are traced: the clip gets a gradient through the scan.
  g = jax.grad(lambda p: lif_scan(x, membrane_quantizer=mq, mq_params=p)[1].sum())(
      {"clip": jnp.float32(0.6)})
  assert float(jnp.abs(g["clip"])) > 0
  # lif_step takes the object too.
  u, _, _ = lif_step(jnp.zeros(3), x[0, 0], decay=0.5, threshold=1.0,
                     spike_fn=get_surrogate("arctan"), membrane_quantizer=quant.ternary_membrane())
  assert set(np.asarray(u).tolist()) <= {-1.0, 0.0, 1.0}


def test_quantizer_apply_and_stray_params_are_refused_by_name():
  from mdsnn_jax import quant
  x = jnp.zeros((2, 3))
  mq = quant.ternary_membrane()
  with pytest.raises(ValueError, match=r"membrane_quantizer.*2 required arguments.*MembraneQuantizer"):
    lif_scan(x, membrane_quantizer=mq.apply)
  with pytest.raises(ValueError, match="mq_params"):
    lif_scan(x, mq_params={})
  with pytest.raises(ValueError, match="mq_params is only used with a MembraneQuantizer"):
    lif_scan(x, membrane_quantizer=lambda u: u, mq_params={})
  with pytest.raises(ValueError, match="membrane_quantizer must be"):
    lif_scan(x, membrane_quantizer="ternary")
  with pytest.raises(ValueError, match=r"uniform membrane.*'clip'"):
    lif_scan(x, membrane_quantizer=quant.uniform_membrane(3, learn_clip=True), mq_params={})


def test_alpha_with_a_spike_function_is_refused():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"alpha=-5\.0.*spike_fast_sigmoid"):
    lif_scan(x, surrogate=get_surrogate("fast_sigmoid"), alpha=-5.0)
  lif_scan(x, surrogate=get_surrogate("fast_sigmoid"))  # no alpha: fine


@pytest.mark.parametrize("u0_shape", [(16,), (2, 5, 4)])
def test_wrong_u0_shape_names_u0(u0_shape):
  x = jnp.zeros((3, 5, 4))
  with pytest.raises(ValueError, match=r"u0 of shape .* per-step shape \(5, 4\)"):
    lif_scan(x, u0=jnp.ones(u0_shape))
  # Broadcastable initial states are accepted.
  _, h, _ = lif_scan(x, u0=jnp.full((4,), 0.5))
  np.testing.assert_allclose(np.asarray(h[0]), 0.25)


def test_runtime_checks_catch_a_traced_negative_threshold():
  from jax.experimental import checkify
  x = jnp.ones((3, 2))
  f = jax.jit(lambda t: lif_scan(x, threshold=t, runtime_checks=True)[0])
  err, _ = checkify.checkify(f)(jnp.float32(-1.0))
  with pytest.raises(Exception, match="threshold must be positive"):
    err.throw()
  err, out = checkify.checkify(f)(jnp.float32(1.0))
  err.throw()  # no error for a valid threshold
  np.testing.assert_array_equal(np.asarray(out), np.asarray(lif_scan(x, threshold=1.0)[0]))
  # Concrete values are checked without checkify.
  with pytest.raises(ValueError, match="threshold must be positive"):
    lif_scan(x, threshold=-1.0, runtime_checks=True)


def test_spike_and_reset_against_hand_values():
  from mdsnn_jax.neuron import spike_and_reset
  from mdsnn_jax.surrogate import heaviside
  h = jnp.array([0.4, 1.0, 1.7])
  for reset, want in (("hard", [0.4, 0.0, 0.0]), ("soft", [0.4, 0.0, 0.7]),
                      ("none", [0.4, 1.0, 1.7])):
    s, u = spike_and_reset(h, 1.0, spike_fn=heaviside, reset=reset)
    np.testing.assert_array_equal(s, [0.0, 1.0, 1.0])
    np.testing.assert_allclose(u, want, rtol=1e-6, err_msg=reset)
  _, u = spike_and_reset(h, 1.0, spike_fn=heaviside, membrane_quantizer=lambda u: u + 2.0)
  np.testing.assert_allclose(u, [2.4, 2.0, 2.0], rtol=1e-6)
  with pytest.raises(ValueError, match="unknown reset 'zero'"):
    spike_and_reset(h, 1.0, spike_fn=heaviside, reset="zero")
