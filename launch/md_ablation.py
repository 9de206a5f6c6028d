"""Why does (or doesn't) membrane distillation help? Ablations around the MD evidence table.

Each variant is one quantized student of `launch/md_table.py` (same teacher, same steps and
seeds) with a few config fields changed: the loss weights and temperature, the membrane
normalisation, which layers are distilled, the student's T with the versatile teacher's
alignment, affine-projector feature KD, and a harder student (first and last layers 2-bit
too). Accuracies are paired with the no-KD student of the same seed and setting, so the
seed's data order cancels out of Δ.

    python launch/md_ablation.py --config=launch/configs/md_cifar10.py --workdir=runs/md_cifar10

Uses (and, if missing, trains) the teacher of the table in --workdir; the students of the
ablation live in their own folders there (abl_<variant>_seed<N>).
Writes `<out>.md` and `<out>.json` there (atomically; --out, default 'ablation'); every
run resumes and a finished run is read back, not repeated.
"""
from __future__ import annotations

import copy
import dataclasses
import pathlib

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from mdsnn_jax import data as data_lib
from mdsnn_jax import distill
from mdsnn_jax import nn as nn_lib
from mdsnn_jax.provenance import record, write_json_atomic, write_text_atomic
from mdsnn_jax.train import cli
from mdsnn_jax.train.experiments import paired_delta, run_student, run_teacher
from mdsnn_jax.train.stages import abstract_variables, sample_input, stage_model_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the MD table (teacher + students).")
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated student seeds.")
_VARIANTS = flags.DEFINE_string(
    "variants", "", "Comma-separated variant names (default: every one that fits the config's T).")
_OUT = flags.DEFINE_string("out", "ablation", "Basename of the .md / .json written in --workdir.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Retrain runs whose stored config differs.")
config_flags.DEFINE_config_file("config", None, "The MD table's configuration.")
flags.mark_flags_as_required(["config", "workdir"])



@dataclasses.dataclass(frozen=True)
class LifTaps:
  """LIF layers named relative to the model (its membrane taps in call order), so a variant
  fits any network: LifTaps(-2, None) = the last two, LifTaps(1, 3) = the two after the stem."""
  start: int | None
  stop: int | None
  need: int

  def resolve(self, taps: list[str]) -> str:
    if len(taps) < self.need:
      raise ValueError(f"this variant needs at least {self.need} LIF layers, but the model has "
                       f"{len(taps)}: {taps}")
    return ",".join(taps[self.start:self.stop])


LAST2, LAST3, EARLY2 = LifTaps(-2, None, 3), LifTaps(-3, None, 4), LifTaps(1, 3, 4)

# name -> (method, dotted config overrides, what it asks, the no-KD run it is paired with).
T1 = {"model.timesteps": 1, "distill.teacher_timesteps": 2}
ALL2 = {"model.quant.first_layer.kind": "same", "model.quant.last_layer.kind": "same"}
VARIANTS: dict[str, tuple[str, dict, str, str]] = {
    "none": ("none", {}, "baseline: QAT, no KD", "none"),
    "logit": ("logit", {}, "logit KD, β = 1, τ = 4 (table)", "none"),
    "md": ("md", {}, "MD, α = 1, β = 1, τ = 4 (table)", "none"),
    "mdonly": ("mdonly", {}, "membrane KD only, α = 1 (all 7 LIF layers)", "none"),
    "logit_tau1": ("logit", {"distill.temperature": 1.0}, "logit KD at τ = 1", "none"),
    "mdonly_a10": ("mdonly", {"distill.alpha": 10.0}, "membrane KD only, α = 10", "none"),
    "mdonly_rawmse": ("mdonly", {"distill.decorrelate": False},
                      "membrane KD on raw membranes (no per-(t,c) standardisation)", "none"),
    "mdonly_late": ("mdonly", {"distill.layers": LAST2},
                    "membrane KD on the last two LIF layers only", "none"),
    "T1_none": ("none", {"model.timesteps": 1}, "student T = 1, no KD", "T1_none"),
    "T1_mdonly_prefix": ("mdonly", {**T1, "distill.align": "prefix"},
                         "student T = 1, teacher T = 2, align = prefix", "T1_none"),
    "T1_mdonly_window": ("mdonly", {**T1, "distill.align": "window_mean"},
                         "student T = 1, teacher T = 2, align = window_mean", "T1_none"),
    "mdonly_a0.1": ("mdonly", {"distill.alpha": 0.1}, "membrane KD only, α = 0.1", "none"),
    "md_b0.1": ("md", {"distill.beta": 0.1}, "MD with a light logit term, α = 1, β = 0.1",
                "none"),
    "mdonly_early": ("mdonly", {"distill.layers": EARLY2},
                     "membrane KD on the first two hidden LIF layers after the 8-bit stem",
                     "none"),
    "feature": ("feature", {"distill.feature_layers": LAST3},
                "affine-projector feature KD only (γ = 1, time-mean membranes of the last 3 LIF layers)",
                "none"),
    "all2_none": ("none", ALL2, "first/last layer 2-bit too, no KD", "all2_none"),
    "all2_mdonly": ("mdonly", ALL2, "first/last layer 2-bit too, membrane KD only",
                    "all2_none"),
    "all2_md": ("md", ALL2, "first/last layer 2-bit too, MD", "all2_none"),
}


def model_taps(config) -> list[str]:
  """The student's LIF membrane taps in call order (abstract forward pass: no compute)."""
  info = data_lib.dataset_info(config.data)
  model = nn_lib.create_model(stage_model_config(config, "md"), info.num_classes)
  sample = sample_input(info, int(config.model.timesteps))
  variables = abstract_variables(model, sample)
  _, cols = jax.eval_shape(lambda v: model.apply(v, sample, train=False, mutable=["membranes"]),
                           variables)
  return list(distill.flatten_taps(cols["membranes"]))


def _override(config, overrides: dict, taps: list[str] | None = None):
  """A copy of `config` with {'a.b.c': value} fields replaced (LifTaps resolved against
  `taps`). The copy is locked, so ml_collections rejects an unknown field (KeyError naming
  it and the fields present)."""
  resolved = {}
  for key, value in overrides.items():
    if isinstance(value, LifTaps):
      value = value.resolve(taps if taps is not None else model_taps(config))
    resolved[key] = value
  cfg = copy.deepcopy(config)
  cfg.lock()
  cfg.update_from_flattened_dict(resolved)
  return cfg


def _fits(base, overrides: dict) -> bool:
  """A versatile-teacher variant fits only a config whose teacher runs at its T_t."""
  t_teacher = overrides.get("distill.teacher_timesteps")
  return t_teacher is None or int(t_teacher) == int(base.model.timesteps)


def main(argv):
  del argv
  base = flags.FLAGS.config
  root = pathlib.Path(_WORKDIR.value)
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  fits = [v for v in VARIANTS if _fits(base, VARIANTS[v][1])]
  names = [v for v in _VARIANTS.value.split(",") if v] or fits
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  misfit = [v for v in names if v not in fits]
  if misfit:
    raise ValueError(f"variants {misfit} need a teacher at another T than this config's "
                     f"model.timesteps={base.model.timesteps}; variants that fit: {fits}")
  # Every row's config, resolved before any training (a variant that does not fit the
  # model's layers is refused here, listing them).
  runs = list(dict.fromkeys([VARIANTS[n][3] for n in names] + names))
  taps = model_taps(base)
  configs = {}
  for name in runs:
    try:
      configs[name] = _override(base, VARIANTS[name][1], taps)
    except ValueError as e:
      raise ValueError(f"variant {name!r}: {e}") from e
  teacher = run_teacher(base, root, overwrite=_OVERWRITE.value)

  # Each row's no-KD partner runs first (or is read back), so every Δ can be formed.
  results: dict[str, list[float]] = {}
  for name in runs:
    method = VARIANTS[name][0]
    # Own folders (not the table's method_seedN runs): every row of one ablation table is
    # trained by the same code, since float-level changes move a 250-step run by ~2 pp.
    results[name] = [run_student(configs[name], root, method, seed, name=f"abl_{name}",
                                 overwrite=_OVERWRITE.value)["test_accuracy"]
                     for seed in seeds]

  rows = []
  for name in names:
    method, overrides, what, baseline = VARIANTS[name]
    acc = np.array(results[name])
    delta = None if name == baseline else paired_delta(acc, results[baseline])
    overrides = {k: (configs[name].distill[k.split(".")[-1]] if isinstance(v, LifTaps) else v)
                 for k, v in overrides.items()}
    rows.append({"variant": name, "method": method, "overrides": overrides, "what": what,
                 "seeds": seeds, "accuracy": acc.tolist(), "mean": float(acc.mean()),
                 "baseline": baseline, "delta_vs_baseline": delta})
  fp = teacher["test_accuracy"]
  write_json_atomic(root / f"{_OUT.value}.json", {"fp_teacher": fp, "rows": rows,
                                                  "unit": "percent",
                                                  "provenance": record(config=base)})
  lines = [f"FP teacher {fp:.2f} %. Seeds {seeds}; Δ = accuracy − the paired no-KD student "
           "(same seed, same setting).", "",
           "| variant | what | test accuracy (%) | Δ vs no KD (pp) |", "|---|---|---|---|"]
  for r in rows:
    d = r["delta_vs_baseline"]
    d = "—" if d is None else (f"{d['mean']:+.2f}" if d["n"] == 1 else
                               f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['positive']}/{d['n']} > 0)")
    accs = ", ".join(f"{a:.2f}" for a in r["accuracy"])
    lines.append(f"| {r['variant']} | {r['what']} | {accs} | {d} |")
  text = "\n".join(lines) + "\n"
  write_text_atomic(root / f"{_OUT.value}.md", text)
  print(text)


if __name__ == "__main__":
  cli.run(main)
