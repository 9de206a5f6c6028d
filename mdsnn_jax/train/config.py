"""The base configuration every launcher config starts from (big_vision / flax-examples style)."""
from __future__ import annotations

import ml_collections

from mdsnn_jax.nn import default_model_config


def base_config() -> ml_collections.ConfigDict:
  """All fields with defaults; `launch/configs/*.py` override what a run needs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Comma-separated stages, run in order: 'fp' (FP teacher), 'qat' (quantized student, no
  # KD), 'md' (quantized student distilled from the teacher in workdir/fp or
  # distill.teacher_workdir).
  c.stages = "fp"
  c.init_from_teacher = True  # qat / md students start from the FP teacher's weights
  c.report = True  # write workdir/report (accuracy, firing, EMD, hardware, plots) at the end

  c.data = ml_collections.ConfigDict(dict(
      name="digits", root=None, source="auto", image_size=None, timesteps=None,
      augment=False, train_subset=None, worker_count=0))
  c.model = default_model_config()

  c.train = ml_collections.ConfigDict(dict(
      global_batch=64, eval_batch=128, steps=500, log_every=50, eval_every=0,
      checkpoint_every=100, keep_checkpoints=2, eval_ptq=True,
      tensorboard=True))  # also write <workdir>/<stage>/tb/ event files (tensorboardX)
  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-3, schedule="cosine", warmup_steps=0, weight_decay=0.0, momentum=0.9))
  c.loss = ml_collections.ConfigDict(dict(kind="ce", tet_lambda=0.05))
  c.distill = ml_collections.ConfigDict(dict(
      alpha=1.0, beta=1.0, temperature=4.0, gamma=0.0, layers="all", decorrelate=True,
      temporal_weight=1.0, align="prefix", teacher_timesteps=0, teacher_workdir="",
      # Feature KD (γ > 0): time-mean of these taps ('all', 're:<pattern>' or a comma list)
      # of 'membranes' or 'spikes', through a per-tap affine projector trained with the
      # student (a 1×1 conv when the teacher's channels differ).
      feature_layers="all", feature_source="membranes"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address=None, num_processes=None, process_id=None))
  return c


def low_bit_student(c: ml_collections.ConfigDict, weight_bits: int = 2) -> None:
  """MD-SNN's low-bit student, in place: LSQ weights, batch norm folded and quantized,
  ternary integer membranes, 8-bit first and last layers."""
  c.model.quant.weight = {"kind": "lsq", "bits": weight_bits}
  c.model.quant.membrane = {"kind": "ternary"}
  c.model.quant.first_layer = {"kind": "uniform", "bits": 8}
  c.model.quant.last_layer = {"kind": "uniform", "bits": 8}
  c.model.quant.bn_fold = True


def msresnet18_paper_config(stages: str, dataset: str, root: str, *, epochs: int,
                            steps_per_epoch: int) -> ml_collections.ConfigDict:
  """The MD-SNN paper rows on static images: MS-ResNet-18, T = 4 (λ = 0.25, θ = 0.5),
  low-bit student, SGD 0.1 with weight decay 5e-4 and a cosine schedule, batch 128."""
  c = base_config()
  c.stages = stages
  c.data.name = dataset
  c.data.root = root
  c.data.augment = True
  c.model.name = "msresnet18"
  c.model.timesteps = 4
  c.model.neuron.decay = 0.25
  c.model.neuron.threshold = 0.5
  low_bit_student(c)
  c.train.global_batch = 128
  c.train.eval_batch = 500
  c.train.steps = epochs * steps_per_epoch
  c.train.log_every = 100
  c.train.eval_every = 10 * steps_per_epoch
  c.train.checkpoint_every = 1000
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  return c
