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
import pathlib

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mdsnn_jax.train.experiments import paired_delta, run_student, run_teacher
from mdsnn_jax.report import write_text_atomic
from mdsnn_jax.train.checkpoint import write_json_atomic

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the MD table (teacher + students).")
_SEEDS = flags.DEFINE_string("seeds", "0", "Comma-separated student seeds.")
_VARIANTS = flags.DEFINE_string(
    "variants", "", "Comma-separated variant names (default: every one that fits the config's T).")
_OUT = flags.DEFINE_string("out", "ablation", "Basename of the .md / .json written in --workdir.")
config_flags.DEFINE_config_file("config", None, "The MD table's configuration.")
flags.mark_flags_as_required(["config", "workdir"])

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
    "mdonly_late": ("mdonly", {"distill.layers": "lif5,lif6"},
                    "membrane KD on the last two LIF layers only", "none"),
    "T1_none": ("none", {"model.timesteps": 1}, "student T = 1, no KD", "T1_none"),
    "T1_mdonly_prefix": ("mdonly", {**T1, "distill.align": "prefix"},
                         "student T = 1, teacher T = 2, align = prefix", "T1_none"),
    "T1_mdonly_window": ("mdonly", {**T1, "distill.align": "window_mean"},
                         "student T = 1, teacher T = 2, align = window_mean", "T1_none"),
    "mdonly_a0.1": ("mdonly", {"distill.alpha": 0.1}, "membrane KD only, α = 0.1", "none"),
    "md_b0.1": ("md", {"distill.beta": 0.1}, "MD with a light logit term, α = 1, β = 0.1",
                "none"),
    "mdonly_early": ("mdonly", {"distill.layers": "lif1,lif2"},
                     "membrane KD on the first two hidden LIF layers after the 8-bit stem",
                     "none"),
    "feature": ("feature", {"distill.feature_layers": "lif4,lif5,lif6"},
                "affine-projector feature KD only (γ = 1, time-mean membranes of lif4–6)",
                "none"),
    "all2_none": ("none", ALL2, "first/last layer 2-bit too, no KD", "all2_none"),
    "all2_mdonly": ("mdonly", ALL2, "first/last layer 2-bit too, membrane KD only",
                    "all2_none"),
    "all2_md": ("md", ALL2, "first/last layer 2-bit too, MD", "all2_none"),
}


def _override(config, overrides: dict):
  """A copy of `config` with {'a.b.c': value} fields replaced. The copy is locked, so
  ml_collections rejects an unknown field (KeyError naming it and the fields present)."""
  cfg = copy.deepcopy(config)
  cfg.lock()
  cfg.update_from_flattened_dict(overrides)
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
    raise app.UsageError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  misfit = [v for v in names if v not in fits]
  if misfit:
    raise app.UsageError(f"variants {misfit} need a teacher at another T than this config's "
                         f"model.timesteps={base.model.timesteps}; variants that fit: {fits}")
  teacher = run_teacher(base, root)

  # Each row's no-KD partner runs first (or is read back), so every Δ can be formed.
  runs = list(dict.fromkeys([VARIANTS[n][3] for n in names] + names))
  results: dict[str, list[float]] = {}
  for name in runs:
    method, overrides, _, _ = VARIANTS[name]
    cfg = _override(base, overrides)
    # Own folders (not the table's method_seedN runs): every row of one ablation table is
    # trained by the same code, since float-level changes move a 250-step run by ~2 pp.
    results[name] = [100 * run_student(cfg, root, method, seed, name=f"abl_{name}")["test_accuracy"]
                     for seed in seeds]

  rows = []
  for name in names:
    method, overrides, what, baseline = VARIANTS[name]
    acc = np.array(results[name])
    delta = None if name == baseline else paired_delta(acc, results[baseline])
    rows.append({"variant": name, "method": method, "overrides": overrides, "what": what,
                 "seeds": seeds, "accuracy": acc.tolist(), "mean": float(acc.mean()),
                 "baseline": baseline, "delta_vs_baseline": delta})
  fp = 100 * teacher["test_accuracy"]
  write_json_atomic(root / f"{_OUT.value}.json", {"fp_teacher": fp, "rows": rows,
                                             "config": base.to_dict()})
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
  app.run(main)
