"""Tests of the wiring between the pure functions and the loop, report and checkpoints.

Each test recomputes a quantity the library produces from independent parts (the pure loss on
taps taken by hand, scipy's Wasserstein distance on rates counted by hand, checkpoints written
by hand, a hand-made tie) so that a change in how the parts are joined fails here even when
every part's own equation test still passes.
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mdsnn_jax import distill
from mdsnn_jax import saliency as sal

# ----------------------------------------------------------------------------------------
# The MD term of the training step uses the teacher at its own T.


def _md_setup(teacher_timesteps: int):
  from mdsnn_jax import nn
  from mdsnn_jax.train.config import base_config
  from mdsnn_jax.train.stages import stage_model_config
  from mdsnn_jax.train.state import TrainState, make_optimizer
  c = base_config()
  c.stages = "md"
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  c.model.quant.weight = {"kind": "lsq", "bits": 2}
  c.distill.teacher_timesteps = teacher_timesteps
  c.distill.align = "window_mean"
  c.distill.alpha, c.distill.beta = 1.0, 0.0
  c.distill.decorrelate = False  # raw membranes: the two teachers differ clearly
  teacher = nn.create_model(stage_model_config(c, "fp"), 10)
  student = nn.create_model(stage_model_config(c, "md"), 10)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((6, 8, 8, 1)), jnp.float32)
  batch = {"image": x, "label": jnp.asarray(rng.integers(0, 10, 6), jnp.int32)}
  tv = nn.init_variables(teacher, jax.random.PRNGKey(0), x[:1])
  # A teacher that fires: scaled-up weights so every LIF layer's membranes vary.
  tv = dict(tv, params=jax.tree.map(lambda p: 3.0 * p, tv["params"]))
  sv = nn.init_variables(student, jax.random.PRNGKey(1), x[:1])
  state = TrainState.create(variables=dict(sv), tx=make_optimizer(c.optim, 10))
  return c, teacher, student, tv, state, batch


def test_md_term_of_the_step_uses_the_teacher_at_teacher_timesteps():
  from mdsnn_jax.train import steps
  c, teacher, student, tv, state, batch = _md_setup(teacher_timesteps=4)
  _, metrics = steps.train_step(state, batch, tv, model=student, loss_cfg=c.loss,
                                distill_cfg=c.distill, teacher_model=teacher, timesteps=2)

  # Independent: the taps taken by applying each model by hand, then the pure loss.
  variables = {"params": state.params, "batch_stats": state.batch_stats,
               "quant_state": state.quant_state}
  _, s_cols = student.apply(variables, batch["image"], train=True, timesteps=2,
                            mutable=["batch_stats", "quant_state", "membranes"])
  student_taps = distill.flatten_taps(s_cols["membranes"])

  def teacher_taps(t):
    _, cols = teacher.apply(tv, batch["image"], train=False, timesteps=t, mutable=["membranes"])
    return distill.flatten_taps(cols["membranes"])

  t4, t2 = teacher_taps(4), teacher_taps(2)
  assert all(v.shape[0] == 4 for v in t4.values()), {k: v.shape for k, v in t4.items()}
  kw = dict(layers="all", decorrelate=c.distill.decorrelate,
            temporal_weight=c.distill.temporal_weight, align="window_mean")
  want = float(distill.membrane_kd_loss(student_taps, t4, **kw))
  at_t2 = float(distill.membrane_kd_loss(student_taps, t2, **kw))
  got = float(metrics["md"])
  assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
  # The two teachers' values must differ, or the check above could not tell them apart.
  assert abs(want - at_t2) > 0.05 * abs(want), (want, at_t2)
  assert got != pytest.approx(at_t2, rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------------------
# Checkpoint fall-back over three or more checkpoints.


def _manager_with_steps(directory: pathlib.Path, steps_: list[int]):
  from mdsnn_jax.train import checkpoint as ckpt
  manager = ckpt.make_manager(directory, max_to_keep=10)
  for s in steps_:
    ckpt.save(manager, s, {"w": jnp.full((4,), float(s)), "step": jnp.asarray(s)})
  return manager


def _damage(step_dir: pathlib.Path) -> None:
  for f in step_dir.rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def test_fallback_skips_the_two_newest_damaged_checkpoints(tmp_path):
  from mdsnn_jax.train import checkpoint as ckpt
  manager = _manager_with_steps(tmp_path / "c", [10, 20, 30, 40])
  for s in (40, 30):
    _damage(tmp_path / "c" / str(s))
  warnings = []
  like = {"w": jnp.zeros((4,)), "step": jnp.asarray(0)}
  state, step = ckpt.restore_latest_good(manager, like, warn=warnings.append)
  assert step == 20
  np.testing.assert_array_equal(np.asarray(state["w"]), np.full(4, 20.0))
  names = sorted(p.name for p in (tmp_path / "c").iterdir())
  assert "40.damaged" in names and "30.damaged" in names
  assert "40" not in names and "30" not in names and "20" in names and "10" in names
  # Newest first: the warnings name 40, then 30, then the step resumed from.
  assert [w.split("step ")[1].split()[0] for w in warnings[:2]] == ["40", "30"], warnings
  assert "resuming from step 20" in warnings[-1]
  # The resumed run can save those steps again.
  ckpt.save(manager, 30, {"w": jnp.full((4,), 31.0), "step": jnp.asarray(30)})
  assert sorted(manager.all_steps()) == [10, 20, 30]


def test_fallback_with_intact_checkpoints_takes_the_newest(tmp_path):
  from mdsnn_jax.train import checkpoint as ckpt
  manager = _manager_with_steps(tmp_path / "c", [10, 20, 30])
  warnings = []
  state, step = ckpt.restore_latest_good(
      manager, {"w": jnp.zeros((4,)), "step": jnp.asarray(0)}, warn=warnings.append)
  assert step == 30 and warnings == []
  np.testing.assert_array_equal(np.asarray(state["w"]), np.full(4, 30.0))
  assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".damaged")]


def test_fallback_warning_names_the_error_not_a_bound_method(tmp_path):
  from mdsnn_jax.train import checkpoint as ckpt
  manager = _manager_with_steps(tmp_path / "c", [1, 2])
  _damage(tmp_path / "c" / "2")
  warnings = []
  ckpt.restore_latest_good(manager, {"w": jnp.zeros((4,)), "step": jnp.asarray(0)},
                           warn=warnings.append)
  assert "bound method" not in warnings[0], warnings[0]


# ----------------------------------------------------------------------------------------
# Saliency top-k: ties go to the lower index.


def test_top_k_mask_ties_go_to_the_lower_index():
  # 8 pixels, k = 25 % -> 2 pixels. The maximum 5.0 is unique (index 6); the next value 3.0
  # is shared by indices 1, 4 and 7: the lower index, 1, is taken.
  maps = jnp.asarray([[0.0, 3.0, 1.0, 2.0, 3.0, 0.5, 5.0, 3.0]])
  got = np.asarray(sal.top_k_mask(maps, k=25))
  want = np.zeros((1, 8), bool)
  want[0, [6, 1]] = True
  np.testing.assert_array_equal(got, want)
  # All equal: the first ⌈k·P/100⌉ indices.
  flat = np.asarray(sal.top_k_mask(jnp.ones((2, 2, 4)), k=50))
  np.testing.assert_array_equal(flat, np.tile([True] * 4 + [False] * 4, (2, 1)))
  # Ties across the cut in a second image, independently of the first.
  two = jnp.asarray([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0]])
  np.testing.assert_array_equal(np.asarray(sal.top_k_mask(two, k=50)),
                                [[True, True, False, False], [False, True, True, False]])
