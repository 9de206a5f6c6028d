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
from mdsnn_jax.train.config import md_cifar10_config


def get_config(first_last_bits: str = "8"):
  """first_last_bits: '8' (uniform 8-bit first and last layer) or '2' (2-bit LSQ, as the body).
  The LSQ grid is symmetric (README's MD tables); the full-grid twin is table `md_evidence`."""
  return md_cifar10_config(first_last_bits, grid="symmetric")
