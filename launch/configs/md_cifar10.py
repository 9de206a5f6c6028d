"""Issue-5 evidence: does membrane distillation recover what quantization loses?

CIFAR-10 subset of ../shared/data (10,000 train / 10,000 test), VGG-9 narrowed to a quarter
width (16–64 channels) to fit a 2-core CPU, T = 2, direct encoding. Teacher: full precision.
Student: 2-bit LSQ weights on the SYMMETRIC grid (3 levels {−1, 0, 1}·Δ, i.e. ternary
weights stored in 2 bits; README's MD tables were made with it, before `grid` existed and
LSQ's default became the 4-level full grid) with batch norm folded into the weights and
quantized (folded bias at 16 bits), ternary integer membranes {−1, 0, 1}, first and last
layer 8-bit, initialised from the teacher. `--config.model.quant.weight.grid=full` gives the
real 2-bit (4-level) student. The same student is trained with the same steps and seeds three ways
(`launch/md_table.py`): no KD, logit KD only, MD (membrane + logit KD).

    python launch/md_table.py --config=launch/configs/md_cifar10.py --workdir=runs/md_cifar10

`--config=launch/configs/md_cifar10.py:2` is the harder student whose first and last layers
are 2-bit LSQ like the rest (the whole network at 2 bits), where QAT alone leaves a larger
gap to the teacher:

    python launch/md_table.py --config=launch/configs/md_cifar10.py:2 --workdir=runs/md_cifar10_all2
"""
from mdsnn_jax.train.config import base_config, low_bit_student, set_quant


def get_config(first_last_bits: str = "8"):
  """first_last_bits: '8' (uniform 8-bit first and last layer) or '2' (2-bit LSQ, as the body)."""
  if first_last_bits not in ("8", "2"):
    raise ValueError(f"md_cifar10 first/last layer bits must be '8' or '2', got {first_last_bits!r}")
  c = base_config()
  c.report = False  # per-run reports are not needed for the table
  c.data.name = "cifar10"
  c.data.root = "../shared/data"
  c.data.augment = True
  c.model.name = "vgg9"
  c.model.width = 0.25
  c.model.timesteps = 2
  c.model.conv_impl = "auto"
  low_bit_student(c, grid="symmetric")  # reproduces README's MD tables (see above)
  c.model.quant.bias_bits = 16
  if first_last_bits == "2":
    set_quant(c, "first_layer", "same")
    set_quant(c, "last_layer", "same")
  c.teacher_steps = 2400  # ≈ 15 epochs of 10,000 images at batch 64
  c.train.steps = 250  # student steps (≈ 1.6 epochs)
  c.train.global_batch = 64
  c.train.eval_batch = 500
  c.train.log_every = 50
  c.train.eval_every = 800
  c.train.checkpoint_every = 200
  c.optim.lr = 1e-3
  c.distill.alpha = 1.0
  c.distill.beta = 1.0
  c.distill.temperature = 4.0
  return c
