from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdsnn_jax import quant as Q

SHAPE = (3, 3, 4, 6)  # conv HWIO, 6 output channels


def _w(seed=0, shape=SHAPE, scale=0.3):
  return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, size=shape), jnp.float32)


def _init(q, w):
  return q.init_params(w), q.init_state(w)


def _np_uniform(w, step, n, n_neg=None):
  w = np.asarray(w, np.float32)
  step = np.asarray(step, np.float32)
  lo = n if n_neg is None else n_neg
  return (step * np.clip(np.round(w / step), -lo, n)).astype(np.float32)


def _np_codes(bits, grid):
  """(Q_n, Q_p) of docs/method.md, written out independently of the library."""
  half = 2 ** (bits - 1)
  return (half - 1, half - 1) if grid == "symmetric" else (half, half - 1)


def _axes(w, per_channel):
  return tuple(range(w.ndim - 1)) if per_channel else None


# name -> (factory(bits), per-channel grid?, bits range for the error test)
FACTORIES = {
    "uniform": (lambda b: Q.uniform(b), False, range(2, 11)),
    "uniform_pc": (lambda b: Q.uniform(b, per_channel=True), True, range(2, 11)),
    "uniform_pct": (lambda b: Q.uniform(b, clip="percentile", percentile=99.0), False, range(2, 11)),
    "uniform_pow2": (lambda b: Q.uniform(b, per_channel=True, power_of_two=True), True, range(2, 11)),
    "sawb": (lambda b: Q.sawb(b), False, range(2, 11)),
    "lsq": (lambda b: Q.lsq(b, grid="symmetric"), False, range(2, 11)),
    "lsq_pc": (lambda b: Q.lsq(b, per_channel=True, grid="symmetric"), True, range(2, 11)),
    "lsq_full": (lambda b: Q.lsq(b), False, range(2, 11)),
    "lsq_full_pc": (lambda b: Q.lsq(b, per_channel=True), True, range(2, 11)),
    "uniform_full": (lambda b: Q.uniform(b, grid="full"), False, range(2, 11)),
    "uniform_full_pow2": (lambda b: Q.uniform(b, per_channel=True, power_of_two=True, grid="full"),
                          True, range(2, 11)),
    "sawb_full": (lambda b: Q.sawb(b, grid="full"), False, range(2, 11)),
    "mint": (lambda b: Q.mint(b), False, range(2, 11)),
    "mint_none": (lambda b: Q.mint(b, squash="none"), False, range(2, 11)),
    "lqnet": (lambda b: Q.lqnet(b), True, range(1, 6)),
}


def _distinct(q_out, per_channel):
  x = np.asarray(q_out)
  if per_channel:
    flat = x.reshape(-1, x.shape[-1])
    return max(len(np.unique(flat[:, c])) for c in range(flat.shape[1]))
  return len(np.unique(x))


# ---------------------------------------------------------------------------------------
# Forward equations against NumPy.


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_uniform_max_matches_numpy(bits, per_channel):
  w = _w(1)
  q = Q.uniform(bits, per_channel=per_channel)
  n = 2 ** (bits - 1) - 1
  step = np.max(np.abs(np.asarray(w)), axis=_axes(w, per_channel)) / n
  np.testing.assert_allclose(q.apply({}, {}, w), _np_uniform(w, step, n), rtol=1e-6, atol=1e-7)


def test_uniform_percentile_matches_numpy():
  w = _w(2)
  q = Q.uniform(4, per_channel=True, clip="percentile", percentile=90.0)
  step = np.percentile(np.abs(np.asarray(w)), 90.0, axis=(0, 1, 2)) / 7
  np.testing.assert_allclose(q.apply({}, {}, w), _np_uniform(w, step, 7), rtol=1e-5, atol=1e-6)


def test_uniform_power_of_two_step():
  w = _w(3)
  q = Q.uniform(3, per_channel=True, power_of_two=True)
  _, step = q.to_integer({}, {}, w)
  step = np.asarray(step, np.float64)
  c = np.max(np.abs(np.asarray(w, np.float64)), axis=(0, 1, 2)) / 3
  np.testing.assert_array_equal(np.log2(step), np.round(np.log2(step)))  # a power of two
  assert np.all(step >= c * (1 - 1e-7)) and np.all(step < 2 * c)  # the smallest one >= c/n
  np.testing.assert_array_equal(q.apply({}, {}, w), _np_uniform(w, step, 3))


def test_sawb_matches_numpy():
  w = _w(4)
  step = 2 * np.mean(np.abs(np.asarray(w))) / 7
  np.testing.assert_allclose(Q.sawb(4).apply({}, {}, w), _np_uniform(w, step, 7), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("grid", ["symmetric", "full"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_init_and_forward_match_numpy(per_channel, grid):
  w = _w(5)
  q = Q.lsq(4, per_channel=per_channel, grid=grid)
  params = q.init_params(w)
  # LSQ paper: s0 = 2·E|w|/√Q_p, Q_p = 7 on both 4-bit grids; Q_n = 7 (symmetric) or 8 (full).
  want = 2 * np.mean(np.abs(np.asarray(w)), axis=_axes(w, per_channel)) / math.sqrt(7)
  np.testing.assert_allclose(params["step"], want, rtol=1e-6)
  step = np.asarray(params["step"]) * 1.3  # a trained step, away from the init
  q_n = 7 if grid == "symmetric" else 8
  np.testing.assert_allclose(q.apply({"step": jnp.asarray(step)}, {}, w), _np_uniform(w, step, 7, q_n),
                             rtol=1e-6, atol=1e-7)


def test_lsq_defaults_to_the_full_grid_uniform_and_sawb_to_symmetric():
  assert (Q.lsq(2).grid, Q.lsq(2).levels) == ("full", 4)
  assert (Q.uniform(2).grid, Q.uniform(2).levels) == ("symmetric", 3)
  assert (Q.sawb(4).grid, Q.sawb(4).levels) == ("symmetric", 15)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("grid", ["symmetric", "full"])
@pytest.mark.parametrize("kind", ["uniform", "sawb", "lsq"])
def test_level_sets_of_both_grids_match_numpy(kind, grid, bits):
  """Every integer code −Q_n … Q_p is reached, nothing else, and apply == NumPy's grid."""
  q_n, q_p = _np_codes(bits, grid)
  # A ramp well past both ends of the grid, so every level and both clips are hit.
  w = jnp.asarray(np.linspace(-3.0, 3.0, 601), jnp.float32).reshape(-1, 1)
  factory = {"uniform": Q.uniform, "sawb": Q.sawb, "lsq": Q.lsq}[kind]
  q = factory(bits, grid=grid)
  if kind == "lsq":
    params = {"step": jnp.float32(2.0 / (q_p + 1))}  # range narrower than the ramp: clips
  else:
    params = q.init_params(w)
  ints, step = q.to_integer(params, {}, w)
  codes = sorted(set(np.asarray(ints).ravel().tolist()))
  assert codes == list(range(-q_n, q_p + 1))
  assert q.levels == len(codes) == (2**bits - 1 if grid == "symmetric" else 2**bits)
  if kind == "uniform":  # Δ = max|w| / Q_n
    np.testing.assert_allclose(step, 3.0 / q_n, rtol=1e-6)
  elif kind == "sawb":  # Δ = 2·E|w| / Q_n
    np.testing.assert_allclose(step, 2 * np.mean(np.abs(np.asarray(w))) / q_n, rtol=1e-6)
  got = np.asarray(q.apply(params, {}, w))
  np.testing.assert_array_equal(got, _np_uniform(w, step, q_p, q_n))
  np.testing.assert_allclose(sorted(set(got.ravel().tolist())), np.float32(step) * np.arange(-q_n, q_p + 1),
                             rtol=1e-6)


@pytest.mark.parametrize("factory", [Q.uniform, Q.sawb, Q.lsq])
@pytest.mark.parametrize("bad", ["asymmetric", "Full", "", None, 2])
def test_bad_grid_is_rejected_naming_value_and_allowed(factory, bad):
  with pytest.raises(ValueError, match=r"grid .*allowed: \['symmetric', 'full'\]") as err:
    factory(4, grid=bad)
  assert repr(bad) in str(err.value)


@pytest.mark.parametrize("wq,want", [
    (Q.lsq(2), ("full", 4, 2)), (Q.lsq(2, grid="symmetric"), ("symmetric", 3, 2)),
    (Q.uniform(4), ("symmetric", 15, 4)), (Q.uniform(4, grid="full"), ("full", 16, 4)),
    (Q.sawb(8, grid="full"), ("full", 256, 8)), (Q.ternary(), ("ternary", 3, 2)),
    (Q.mint(3), ("symmetric", 7, 3)), (Q.lqnet(3), ("learned", 8, 3)),
    (Q.identity_weight(), ("float", None, 32))])
def test_grid_info(wq, want):
  info = Q.grid_info(wq)
  assert (info["grid"], info["levels"], info["stored_bits"]) == want
  if info["levels"] is not None:
    assert info["stored_bits"] == math.ceil(math.log2(info["levels"])) == wq.bits


@pytest.mark.parametrize("per_channel", [False, True])
def test_ternary_matches_numpy(per_channel):
  w = np.asarray(_w(6))
  axes = _axes(w, per_channel)
  thr = 0.3 * np.max(np.abs(w), axis=axes, keepdims=True)
  keep = np.abs(w) >= thr
  w_bar = np.sum(np.abs(w) * keep, axis=axes) / np.sum(keep, axis=axes)
  want = w_bar * np.sign(w) * keep
  got = Q.ternary(0.3, per_channel=per_channel).apply({}, {}, jnp.asarray(w))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert _distinct(got, per_channel) == 3


@pytest.mark.parametrize("squash", ["tanh", "none"])
def test_mint_matches_numpy(squash):
  x = np.asarray(_w(7, scale=1.0))
  alpha, bits, n = 0.6, 3, 3
  t = np.tanh(x) if squash == "tanh" else x
  want = alpha / n * np.round(np.clip(t / alpha, -1, 1) * n)
  got = Q.mint_quantize(jnp.asarray(x), jnp.float32(alpha), bits, squash)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  q = Q.mint(bits, squash=squash)
  np.testing.assert_allclose(q.init_params(jnp.asarray(x))["alpha"], np.max(np.abs(t)), rtol=1e-6)


def test_lqnet_init_basis_and_nearest_level():
  w = _w(8, shape=(5, 5, 3, 4), scale=0.2)
  bits = 3
  basis = Q.lqnet_init_basis(w, bits)
  s = 0.6745 * math.sqrt(2 / 75)
  np.testing.assert_allclose(basis, np.tile([s / 4, s / 2, s], (4, 1)), rtol=1e-6)
  basis = basis * jnp.asarray([1.0, 0.7, 1.3])  # break the uniform init grid
  got = np.asarray(Q.lqnet(bits).apply({}, {"basis": basis}, w))
  codes = np.array(list(itertools.product([-1, 1], repeat=bits)), np.float64)
  for c in range(4):
    levels = codes @ np.asarray(basis[c], np.float64)
    x = np.asarray(w[..., c], np.float64).ravel()
    nearest = levels[np.argmin(np.abs(x[:, None] - levels[None]), axis=1)]
    np.testing.assert_allclose(got[..., c].ravel(), nearest, rtol=1e-6)


def test_lqnet_levels_sorted_and_codes_consistent():
  rng = np.random.default_rng(9)
  basis = jnp.asarray(rng.uniform(0.05, 1.0, size=(5, 3)), jnp.float32)
  levels, codes = Q.lqnet_levels(basis)
  assert np.all(np.diff(np.asarray(levels), axis=-1) >= 0)
  np.testing.assert_allclose(np.einsum("cmk,ck->cm", codes, basis), levels, rtol=1e-6)
  assert set(np.unique(np.asarray(codes))) == {-1.0, 1.0}
  w = _w(10, shape=(20, 5))
  q, e = Q.lqnet_encode(w, basis)
  np.testing.assert_allclose(np.einsum("nck,ck->nc", e, basis), q, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Properties every quantizer must have.


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_at_most_2_to_the_bits_outputs(name, bits):
  factory, per_channel, _ = FACTORIES[name]
  w = _w(11)
  q = factory(bits)
  params, state = _init(q, w)
  assert _distinct(q.apply(params, state, w), per_channel) <= 2**bits


@pytest.mark.parametrize("name", ["uniform", "uniform_pc", "uniform_pow2", "lsq", "lsq_pc", "mint_none", "lqnet",
                                  "lsq_full", "lsq_full_pc"])
def test_idempotent(name):
  factory, _, _ = FACTORIES[name]
  w = _w(12)
  q = factory(3)
  params, state = _init(q, w)
  once = q.apply(params, state, w)
  np.testing.assert_allclose(q.apply(params, state, once), once, rtol=1e-6, atol=0)


def test_ternary_idempotent():
  w = _w(13)
  q = Q.ternary()
  once = q.apply({}, {}, w)
  np.testing.assert_allclose(q.apply({}, {}, once), once, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["uniform_pct", "sawb", "uniform_full", "uniform_full_pow2", "sawb_full"])
def test_calibrated_grid_projection_is_idempotent(name):
  # The scale is recalibrated from its input, so Q(Q(w)) re-grids (on the full grid even
  # with clip='max': the positive side clips at c − Δ); the projection with the same scale
  # must leave Q(w) unchanged.
  factory, _, _ = FACTORIES[name]
  w = _w(14)
  q = factory(4)
  once = np.asarray(q.apply({}, {}, w))
  _, step = q.to_integer({}, {}, w)
  q_n, q_p = _np_codes(4, "full" if "full" in name else "symmetric")
  np.testing.assert_allclose(_np_uniform(once, step, q_p, q_n), once, rtol=1e-6, atol=0)


def test_mint_tanh_outputs_are_grid_fixed_points():
  x = _w(15, scale=1.5)
  alpha = jnp.float32(0.8)
  once = Q.mint_quantize(x, alpha, 4, "tanh")
  np.testing.assert_allclose(Q.mint_quantize(once, alpha, 4, "none"), once, rtol=1e-6, atol=0)
  # tanh(q) != q, so the tanh form is not idempotent (documented).
  assert not np.allclose(Q.mint_quantize(once, alpha, 4, "tanh"), once)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_error_decreases_with_bits(name):
  factory, _, bit_range = FACTORIES[name]
  w = _w(16, shape=(3, 3, 8, 16))
  target = np.tanh(np.asarray(w)) if name == "mint" else np.asarray(w)  # tanh form targets tanh(w)
  errors = []
  for bits in bit_range:
    q = factory(bits)
    params, state = _init(q, w)
    errors.append(float(np.mean((np.asarray(q.apply(params, state, w)) - target) ** 2)))
  assert all(b < a for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("name", ["uniform", "uniform_pc", "uniform_pow2", "lsq", "mint_none",
                                  "lsq_full", "uniform_full", "uniform_full_pow2", "sawb_full"])
def test_to_integer_reproduces_apply(name):
  factory, _, _ = FACTORIES[name]
  w = _w(17)
  q = factory(4)
  params, state = _init(q, w)
  ints, scale = q.to_integer(params, state, w)
  q_n, q_p = _np_codes(4, "full" if "full" in name else "symmetric")
  assert ints.dtype == jnp.int32 and -q_n <= int(jnp.min(ints)) and int(jnp.max(ints)) <= q_p
  np.testing.assert_array_equal(np.asarray(ints, np.float32) * np.asarray(scale), q.apply(params, state, w))


def test_ternary_and_lqnet_integer_forms():
  w = _w(18)
  ints, scale = Q.ternary().to_integer({}, {}, w)
  assert set(np.unique(np.asarray(ints))) <= {-1, 0, 1}
  np.testing.assert_allclose(np.asarray(ints) * np.asarray(scale), Q.ternary().apply({}, {}, w), rtol=1e-7)
  q = Q.lqnet(2)
  with pytest.raises(NotImplementedError):
    q.to_integer({}, q.init_state(w), w)


# ---------------------------------------------------------------------------------------
# Straight-through gradients.


def _grad_w(q, params, state, w, r):
  return jax.grad(lambda x: jnp.sum(r * q.apply(params, state, x)))(w)


@pytest.mark.parametrize("name,inclusive", [("uniform", True), ("uniform_pct", True), ("sawb", True), ("lsq", False),
                                            ("uniform_full", True), ("sawb_full", True), ("lsq_full", False)])
def test_ste_mask_inside_clip_range(name, inclusive):
  factory, _, _ = FACTORIES[name]
  w = _w(19)
  r = _w(20, scale=1.0)
  q = factory(3)
  params, state = _init(q, w)
  ints, step = q.to_integer(params, state, w)
  v = np.asarray(w) / np.asarray(step)
  q_n, q_p = _np_codes(3, "full" if "full" in name else "symmetric")
  inside = (v >= -q_n) & (v <= q_p) if inclusive else (v > -q_n) & (v < q_p)
  if name in ("sawb", "uniform_pct", "sawb_full", "uniform_full"):
    assert 0 < inside.sum() < inside.size  # the mask is not trivial
  np.testing.assert_allclose(_grad_w(q, params, state, w, r), np.asarray(r) * inside, rtol=1e-6)


@pytest.mark.parametrize("q", [Q.ternary(), Q.lqnet(2)], ids=["ternary", "lqnet"])
def test_ste_identity_without_clip_range(q):
  w = _w(21)
  r = _w(22, scale=1.0)
  params, state = _init(q, w)
  np.testing.assert_allclose(_grad_w(q, params, state, w, r), r, rtol=1e-6)


@pytest.mark.parametrize("grid", ["symmetric", "full"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_step_gradient_matches_paper(per_channel, grid):
  """Esser et al. 2020, eq. 3: ∂q/∂s = −Q_N below, Q_P above, round(v) − v inside (v = w/s);
  gradient scale g = 1/√(N·Q_P)."""
  w = _w(23)
  r = np.asarray(_w(24, scale=1.0))
  bits = 3
  q_n, q_p = (4, 3) if grid == "full" else (3, 3)
  q = Q.lsq(bits, per_channel=per_channel, grid=grid)
  step = np.asarray(q.init_params(w)["step"]) * 0.8  # some weights fall outside the range
  got = jax.grad(lambda s: jnp.sum(r * q.apply({"step": s}, {}, w)))(jnp.asarray(step))
  v = np.asarray(w, np.float64) / step
  below, above = v <= -q_n, v >= q_p
  inside = ~below & ~above
  dq = np.where(below, -q_n, np.where(above, q_p, np.round(v) - v))
  per_step = w.size // (w.shape[-1] if per_channel else 1)
  g = 1 / math.sqrt(per_step * q_p)
  want = g * np.sum(r * dq, axis=_axes(w, per_channel))
  assert 0 < inside.sum() < inside.size and below.any() and above.any()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mint_gradients_match_formula():
  x = np.asarray(_w(25, scale=1.0))
  r = np.asarray(_w(26, scale=1.0))
  alpha, bits, n = 0.5, 4, 7
  gx, ga = jax.grad(lambda a, b: jnp.sum(r * Q.mint_quantize(a, b, bits)), argnums=(0, 1))(
      jnp.asarray(x), jnp.float32(alpha))
  t = np.tanh(x.astype(np.float64))
  v = t / (alpha / n)
  inside = np.abs(v) <= n
  assert 0 < inside.sum() < inside.size
  np.testing.assert_allclose(gx, r * (1 - t**2) * inside, rtol=1e-5, atol=1e-7)
  want_a = np.sum(r * np.where(inside, (np.round(v) - v) / n, np.sign(v)))
  np.testing.assert_allclose(ga, want_a, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# LQ-Net QEM.


def test_qem_update_matches_formula():
  w = _w(27, shape=(40, 3))
  basis = Q.lqnet_init_basis(w, 2) * jnp.asarray([1.0, 1.4])
  got = Q.qem_update(basis, w, delta=1e-2, momentum=0.7)
  _, e = Q.lqnet_encode(w, basis)
  for c in range(3):
    b = np.asarray(e[:, c, :], np.float64)
    x = np.asarray(w[:, c], np.float64)
    v_old = np.asarray(basis[c], np.float64)
    v_star = np.linalg.solve(b.T @ b + 1e-2 * np.eye(2), b.T @ x + 1e-2 * v_old)
    np.testing.assert_allclose(got[c], 0.7 * v_old + 0.3 * v_star, rtol=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_qem_never_increases_mse(bits):
  w = _w(28, shape=(3, 3, 8, 5), scale=0.25)
  q = Q.lqnet(bits)
  state = q.init_state(w)
  mses = []
  for _ in range(8):
    mses.append(float(jnp.mean((q.apply({}, state, w) - w) ** 2)))
    state = q.update_state(state, w)
  mses.append(float(jnp.mean((q.apply({}, state, w) - w) ** 2)))
  assert all(b <= a * (1 + 1e-6) for a, b in zip(mses, mses[1:])), mses
  assert mses[-1] < mses[0]


# ---------------------------------------------------------------------------------------
# Bad input and the registry.


@pytest.mark.parametrize("factory,bits,allowed", [
    (Q.uniform, 1, "2..16"), (Q.uniform, 17, "2..16"), (Q.sawb, 0, "2..16"), (Q.lsq, 1, "2..16"),
    (Q.mint, 32, "2..16"), (Q.lqnet, 0, "1..16"), (Q.uniform, 4.0, "2..16"), (Q.lsq, True, "2..16"),
])
def test_bad_bits_raise(factory, bits, allowed):
  with pytest.raises(ValueError, match=rf"{allowed}.*got {bits!r}"):
    factory(bits)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="'median'"):
    Q.uniform(4, clip="median")
  with pytest.raises(ValueError, match="150"):
    Q.uniform(4, clip="percentile", percentile=150)
  with pytest.raises(ValueError, match="1.5"):
    Q.ternary(1.5)
  with pytest.raises(ValueError, match="'sin'"):
    Q.mint(4, squash="sin")
  with pytest.raises(ValueError, match="-0.5"):
    Q.qem_update(jnp.ones((2, 2)), jnp.ones((3, 2)), delta=-0.5)


def test_registry_builds_each_kind():
  w = _w(29)
  for kind in Q.WEIGHT_QUANTIZERS:
    cfg = {"kind": kind} if kind in ("none", "ternary") else {"kind": kind, "bits": 3}
    q = Q.make_weight_quantizer(cfg)
    assert q.kind == kind and q.bits == (32 if kind == "none" else 2 if kind == "ternary" else 3)
  q = Q.make_weight_quantizer(ml_collections.ConfigDict({"kind": "lsq", "bits": 4, "per_channel": True}))
  assert q.init_params(w)["step"].shape == (6,)
  ident = Q.make_weight_quantizer({"kind": "none"})
  np.testing.assert_array_equal(ident.apply({}, {}, w), w)


def test_registry_rejects_unknown_kind_and_kwargs():
  with pytest.raises(ValueError, match=r"'fancy'.*known kinds.*'lsq'"):
    Q.make_weight_quantizer({"kind": "fancy", "bits": 4})
  with pytest.raises(ValueError, match=r"\['colour'\]"):
    Q.make_weight_quantizer({"kind": "uniform", "bits": 4, "colour": "red"})
  with pytest.raises(ValueError, match="got 1"):
    Q.make_weight_quantizer({"kind": "uniform", "bits": 1})
  with pytest.raises(ValueError, match=r"'sawb'.*\['bits'\]"):
    Q.make_weight_quantizer({"kind": "sawb"})


def test_lsq_params_are_validated_by_field_and_shape():
  # Issue 17 (3, 4): a bare KeyError 'step', a broadcasting error, a negative step accepted.
  w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
  wq = Q.lsq(2, per_channel=True)
  with pytest.raises(ValueError, match=r"LSQ \(2-bit\) params need the field 'step' \(shape \(4,\)\)"):
    wq.apply({}, {}, w)
  with pytest.raises(ValueError, match=r"params\['step'\] must have shape \(4,\), got \(3,\)"):
    wq.apply({"step": jnp.ones(3)}, {}, w)
  with pytest.raises(ValueError, match=r"params\['step'\] must be positive"):
    wq.apply({"step": jnp.asarray([0.1, -0.1, 0.1, 0.1])}, {}, w)
  with pytest.raises(ValueError, match=r"must have shape \(\)"):
    Q.lsq(2).apply({"step": jnp.ones(4)}, {}, w)
  with pytest.raises(ValueError, match="'alpha'"):
    Q.mint(2).apply({"step": 1.0}, {}, w)
  # Valid params work, eagerly and under jit (where the value check is skipped).
  p = wq.init_params(w)
  np.testing.assert_array_equal(np.asarray(wq.apply(p, {}, w)),
                                np.asarray(jax.jit(wq.apply)(p, {}, w)))


def test_weight_quantizer_params_default_to_init():
  w = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)), jnp.float32)
  wq = Q.lsq(2)
  a = Q.quantize_folded(w, None, wq)
  b = Q.quantize_folded(w, None, wq, wq.init_params(w), wq.init_state(w))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(ValueError, match="wq must be a WeightQuantizer"):
    Q.quantize_folded(w, None, "lsq")
