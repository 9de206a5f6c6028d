"""The runs of a table as functions: an FP teacher, and quantized students that differ only
in which distillation terms are switched on (`METHODS`), started from a teacher and reading it
as their distillation target (`reproduce.run_dataset` places them: one teacher per seed, or
one per table in root/teacher for the MD evidence tables).

Every run goes through `train_and_evaluate`: a finished run with the same config is read back
untouched, an unfinished one resumes, and a run made with a different config is refused
(listing the fields) unless `overwrite`. Test accuracies are in percent.
"""
from __future__ import annotations

import copy
import pathlib

import numpy as np

from mdsnn_jax.train.loop import train_and_evaluate

# method -> (stage, which of membrane KD (α), logit KD (β), feature KD (γ) it switches on);
# the weights themselves come from the config (γ defaults to 1 for 'feature').
METHODS = {"none": ("qat", ()), "logit": ("md", ("beta",)), "md": ("md", ("alpha", "beta")),
           "mdonly": ("md", ("alpha",)), "feature": ("md", ("gamma",)),
           "feature_logit": ("md", ("beta", "gamma"))}


def read_or_run(config, workdir: pathlib.Path, stage: str, *, overwrite: bool = False,
                tag: str = "") -> dict:
  """The stage's summary: read back when finished with this config, else trained."""
  return train_and_evaluate(config, str(workdir), overwrite=overwrite, tag=tag)[stage]


def parse_methods(text: str) -> list[str]:
  """'none,logit,md' -> ['none', 'logit', 'md'], rejecting unknown methods."""
  methods = [m for m in text.split(",") if m]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
  return methods


def run_teacher(base, root: pathlib.Path, *, overwrite: bool = False, name: str = "teacher",
                seed: int | None = None) -> dict:
  """The FP teacher of the table, trained once in root/<name> (`teacher_steps` steps; seed:
  the config's unless given)."""
  teacher_cfg = copy.deepcopy(base)
  with teacher_cfg.unlocked():
    teacher_cfg.stages = "fp"
    teacher_cfg.train.steps = int(base.get("teacher_steps", base.train.steps))
    if seed is not None:
      teacher_cfg.seed = int(seed)
  return read_or_run(teacher_cfg, root / name, "fp", overwrite=overwrite, tag=name)


def run_student(base, root: pathlib.Path, method: str, seed: int, *, name: str | None = None,
                eval_ptq: bool = False, overwrite: bool = False,
                teacher_dir: pathlib.Path | None = None) -> dict:
  """One quantized student in root/<name or method>_seed<seed>, started from and distilled
  from the FP teacher in `teacher_dir` (default root/teacher/fp).

  The method switches the membrane (α), logit (β) and feature (γ) terms on or off; their
  weights, temperature, layers etc. are the config's."""
  stage, terms = METHODS[method]
  cfg = copy.deepcopy(base)
  with cfg.unlocked():
    cfg.stages = stage
    cfg.seed = seed
    # γ is 0 (off) in most configs; the 'feature' method then uses γ = 1.
    weights = {"alpha": float(base.distill.alpha), "beta": float(base.distill.beta),
               "gamma": float(base.distill.gamma) or 1.0}
    for term, weight in weights.items():
      if term in terms and weight <= 0:
        raise ValueError(f"method {method!r} needs distill.{term} > 0, got {weight}")
      cfg.distill[term] = weight if term in terms else 0.0
    cfg.distill.teacher_workdir = str(teacher_dir or root / "teacher" / "fp")
    cfg.train.eval_ptq = eval_ptq
  run = f"{name or method}_seed{seed}"
  return read_or_run(cfg, root / run, stage, overwrite=overwrite, tag=run)


def paired_delta(accuracy, baseline) -> dict:
  """Per-seed differences accuracy − baseline (same seeds, same order), in the units given:
  {'delta': [...], 'mean', 'std' (sample std, 0 for one seed), 'positive' (how many > 0), 'n'}.
  Pairing by seed removes the seed's data order from the comparison."""
  a, b = np.asarray(accuracy, np.float64), np.asarray(baseline, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"paired_delta needs two equal-length 1-D lists, got {a.shape} and {b.shape}")
  d = a - b
  return {"delta": d.tolist(), "mean": float(d.mean()),
          "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
          "positive": int((d > 0).sum()), "n": int(d.size)}
