"""Every launcher config loads, validates its names, and builds: the model of every stage, one
forward and one training step with its optimizer, abstractly (jax.eval_shape; no training)."""
from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdsnn_jax import nn
from mdsnn_jax import quant as Q
from mdsnn_jax.train.loop import init_feature_projectors, parse_stages, stage_model_config
from mdsnn_jax.train.state import TrainState, make_optimizer
from mdsnn_jax.train.steps import train_step

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "launch" / "configs").glob("*.py"))


def _load(path, *args):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def test_all_paper_rows_present():
  names = {p.stem for p in CONFIGS}
  assert {"default", "mnist", "nmnist", "cifar10_resnet18", "cifar100_resnet18", "tinyimagenet",
          "ncaltech101_vgg", "spquant_cifar10_resnet19", "md_cifar10"} <= names


# Input of each dataset as the loader yields it (per example), and its class count; the
# event datasets' native sensors are used when a config sets no image_size.
STATIC_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3),
                 "cifar100": (32, 32, 3), "tinyimagenet": (64, 64, 3)}
EVENT_SENSORS = {"nmnist": (34, 34), "ncaltech101": (180, 240)}
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200,
               "nmnist": 10, "ncaltech101": 101}
# Every config with its default arguments, plus the other argument values configs take.
VARIANTS = [(p, ()) for p in CONFIGS] + [(p, ("2",)) for p in CONFIGS if p.stem == "md_cifar10"]


def _input(c):
  """A zero batch of one example, batch-major as the loader gives it."""
  name = c.data.name
  if name in EVENT_SENSORS:
    h, w = (c.data.image_size,) * 2 if c.data.image_size else EVENT_SENSORS[name]
    t = c.data.timesteps or 10
    return jnp.zeros((1, t, h, w, 2), jnp.float32)
  h, w, ch = STATIC_SHAPES[name]
  if c.data.image_size:
    h = w = c.data.image_size
  return jnp.zeros((1, h, w, ch), jnp.float32)


@pytest.mark.parametrize("path,args", VARIANTS,
                         ids=lambda v: v.stem if hasattr(v, "stem") else ":".join(v) or "default")
@pytest.mark.integration
def test_config_builds_every_stage_and_its_optimizer(path, args):
  """Abstractly (jax.eval_shape, no compilation or compute): init, one forward at batch 1, and
  one full training step of every stage (its loss, distillation terms against the FP
  teacher, optimizer update) as the training loop builds them."""
  c = _load(path, *args)
  stages = parse_stages(c.stages)
  k = NUM_CLASSES[c.data.name]
  x = _input(c)
  t = int(c.model.timesteps)
  t_out = x.shape[1] if x.ndim == 5 else t
  key = jax.random.PRNGKey(0)
  tx = make_optimizer(c.optim, int(c.train.steps))
  teacher = nn.create_model(stage_model_config(c, "fp"), k)
  teacher_vars = jax.eval_shape(lambda: nn.init_variables(teacher, key, x))
  assert c.train.global_batch > 0 and c.train.steps > 0
  for stage in stages:
    model = nn.create_model(stage_model_config(c, stage), k)
    variables = jax.eval_shape(lambda: nn.init_variables(model, key, x))
    assert nn.param_count(variables["params"]) > 0
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (t_out, 1, k), (stage, logits.shape)
    distill_cfg = c.distill if stage == "md" else None
    distill_params = None
    if distill_cfg is not None and float(distill_cfg.gamma) > 0:
      distill_params = init_feature_projectors(c, key, model, variables, teacher, teacher_vars,
                                               np.zeros(x.shape, np.float32))

    def step(variables, teacher_vars, batch):
      state = TrainState.create(variables=variables, tx=tx, distill_params=distill_params)
      return train_step(state, batch, teacher_vars if distill_cfg is not None else None,
                        model=model, loss_cfg=c.loss, distill_cfg=distill_cfg,
                        teacher_model=teacher if distill_cfg is not None else None, timesteps=t)

    batch = {"image": x, "label": jnp.zeros((1,), jnp.int32)}
    new_state, metrics = jax.eval_shape(step, variables, teacher_vars, batch)
    assert metrics["loss"].shape == () and metrics["accuracy"].shape == ()
    if distill_cfg is not None and float(distill_cfg.alpha) > 0:
      assert "md" in metrics, sorted(metrics)
    assert (jax.tree_util.tree_structure(new_state.params)
            == jax.tree_util.tree_structure(variables["params"]))
    assert jax.tree.map(lambda a: a.shape, new_state.params) == jax.tree.map(
        lambda a: a.shape, variables["params"])


def test_low_bit_rows_quantize_weights_to_two_bits():
  for stem in ("cifar10_resnet18", "cifar100_resnet18", "tinyimagenet", "md_cifar10"):
    c = _load(next(p for p in CONFIGS if p.stem == stem))
    student = stage_model_config(c, "md").quant  # the arguments each kind takes
    # md_cifar10 keeps the symmetric (ternary-level) grid its README tables were made with;
    # the paper rows take LSQ's default, the full grid (4 levels at 2 bits).
    grid = "symmetric" if stem == "md_cifar10" else "full"
    want = {"kind": "lsq", "bits": 2, **({"grid": grid} if stem == "md_cifar10" else {})}
    assert dict(student.weight) == want
    info = Q.grid_info(Q.make_weight_quantizer(student.weight))
    assert (info["grid"], info["levels"], info["stored_bits"]) == (grid, 3 if grid == "symmetric" else 4, 2)
    assert dict(student.membrane) == {"kind": "ternary"} and c.model.quant.bn_fold
    assert dict(stage_model_config(c, "fp").quant.weight) == {"kind": "none"}


def test_md_cifar10_whole_network_at_two_bits():
  path = next(p for p in CONFIGS if p.stem == "md_cifar10")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  eight = stage_model_config(module.get_config(), "md").quant
  two = stage_model_config(module.get_config("2"), "md").quant
  assert dict(eight.first_layer) == {"kind": "uniform", "bits": 8}
  assert dict(two.first_layer) == dict(two.last_layer) == {"kind": "same"}
  q = nn.layers.QuantConfig(**{k: two[k].to_dict() for k in ("weight", "membrane",
                                                             "first_layer", "last_layer")})
  assert q.first == q.last == {"kind": "lsq", "bits": 2, "grid": "symmetric"}
  with pytest.raises(ValueError, match="'4'"):
    module.get_config("4")
