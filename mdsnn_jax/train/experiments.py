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
import scipy.stats

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


def one_sided_tests(delta) -> dict:
  """Tests of "Δ > 0" on paired per-seed differences, one-sided: `paired_delta`'s summary of
  Δ (without the list) plus, for n ≥ 2, the paired t statistic t = mean / (std / √n) with
  n − 1 degrees of freedom and p = P(T ≥ t) ('p_t_one_sided'), and the exact Wilcoxon
  signed-rank p ('p_wilcoxon_one_sided'; at n = 5 it cannot go below 1/32)."""
  d = np.asarray(delta, np.float64)
  out = paired_delta(d, np.zeros_like(d))
  out.pop("delta")
  if d.size >= 2:
    sd = d.std(ddof=1)
    if not d.any():  # every Δ = 0: no evidence either way
      t, p_t, p_w = float("nan"), 1.0, 1.0
    else:
      # Δ equal on every seed: t = ±inf, and p is 0 or 1 by its sign.
      t = float(np.sign(d.mean()) * np.inf if sd == 0 else d.mean() / (sd / np.sqrt(d.size)))
      p_t = float(scipy.stats.t.sf(t, d.size - 1))
      p_w = float(scipy.stats.wilcoxon(d, alternative="greater", method="exact").pvalue)
    out.update(t=t, df=int(d.size - 1), p_t_one_sided=p_t, p_wilcoxon_one_sided=p_w)
  return out


def holm(pvalues) -> list[float]:
  """Holm's step-down adjustment of m p-values (family-wise error control).

  With the p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
  max_{j ≤ i} min(1, (m − j + 1)·p_(j)); returned in the input order. Rejecting every
  hypothesis whose adjusted p is < α controls the family-wise error rate at α.
  """
  p = np.asarray(pvalues, np.float64)
  m = p.size
  order = np.argsort(p, kind="stable")
  adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
  out = np.empty(m)
  out[order] = adjusted
  return [float(v) for v in out]


def add_holm(tests: dict) -> dict:
  """Adds 'p_t_holm' and 'p_wilcoxon_holm' to every test of one family (a {name: tests} dict,
  in place; returned): each raw p is adjusted across all the family's tests that have it."""
  for raw, adj in (("p_t_one_sided", "p_t_holm"), ("p_wilcoxon_one_sided", "p_wilcoxon_holm")):
    keys = [k for k, s in tests.items() if raw in s]
    for k, v in zip(keys, holm([tests[k][raw] for k in keys])):
      tests[k][adj] = v
  return tests
