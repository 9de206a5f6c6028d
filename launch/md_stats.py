"""Significance and noise floor of the MD evidence tables, from the files in results/.

    python launch/md_stats.py            # writes results/md_stats.{json,md}

Reads
  results/md_cifar10_all2/table_5seeds.json   all-2-bit student, seeds 0-4 (commit 815cd73)
  results/md_cifar10_8bit/table.json          8-bit first/last student, seeds 0-2 (commit 815cd73)
  results/md_cifar10_8bit/table_v1_bb0c7c7.json   the same config and seeds, first measured
      with the code of commit bb0c7c7 (the table committed there as results/md_cifar10/)
  results/quickstart.json (optional)          repeated quickstart runs
  results/tables/md_evidence.json (optional)  the runner's MD evidence table (its commit is in
      its provenance):
      full-grid and symmetric-grid students, each MD / logit KD against its own no-KD row

and reports, for each method pair, the paired-by-seed Δ (`experiments.paired_delta`) with
ONE-SIDED tests of Δ > 0: a paired t-test and the exact Wilcoxon signed-rank test, over all
seeds and over seeds 1-4 alone (seed 0 is the seed whose ablation chose the all-2-bit
setting). Beside each raw p-value it gives the Holm-adjusted one (`holm`), adjusted across
all the tests of the same kind (t or Wilcoxon) in one table: the family is every row of
that table. A claim "Δ > 0" is supported at level 0.05 only where the adjusted p is below
0.05. The noise floor is the per-seed change of the same config and seed between the
two code versions of the 8-bit table. Nothing is trained.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mdsnn_jax import provenance  # noqa: E402
from mdsnn_jax.train.experiments import add_holm, holm, one_sided_tests  # noqa: E402,F401

_RESULTS = flags.DEFINE_string("results", str(REPO / "results"), "The results folder.")
PAIRS = (("md", "none"), ("logit", "none"), ("md", "logit"))


EVIDENCE_PAIRS = PAIRS + (("md_sym", "none_sym"), ("logit_sym", "none_sym"),
                         ("md_sym", "logit_sym"))


def rows_by_method(table: dict) -> dict:
  """{method or row key: {seed: accuracy}} of a `md_table.py` table as written before it ran
  on the table runner ('rows' with 'method'), or of a runner table (its first dataset)."""
  if "datasets" in table:
    return {r["key"]: dict(zip(r["seeds"], r["accuracy"]))
            for r in table["datasets"][0]["rows"] if r["available"]}
  return {r["method"]: dict(zip(r["seeds"], r["accuracy"])) for r in table["rows"]}


def significance(table: dict, seed_sets: dict, pairs=PAIRS) -> dict:
  rows = rows_by_method(table)
  out = {}
  for a, b in pairs:
    if a not in rows or b not in rows:
      continue
    for label, seeds in seed_sets.items():
      delta = [rows[a][s] - rows[b][s] for s in seeds]
      out[f"{a} vs {b}, {label}"] = {"seeds": list(seeds), "delta": delta,
                                     **one_sided_tests(delta)}
  return add_holm(out)


def noise_floor(old: dict, new: dict) -> dict:
  """Per (method, seed): accuracy under the newer code (`new`) minus under the older (`old`)."""
  a, b = rows_by_method(old), rows_by_method(new)
  changes = {f"{m} seed {s}": b[m][s] - a[m][s] for m in a if m in b for s in a[m] if s in b[m]}
  v = np.abs(np.asarray(list(changes.values())))
  return {"changes_pp": changes, "max_abs_pp": float(v.max()), "mean_abs_pp": float(v.mean()),
          "n": int(v.size), "teacher_old": old["fp_teacher"], "teacher_new": new["fp_teacher"]}


def config_differences(a: dict, b: dict, prefix: str = "") -> dict:
  out = {}
  for k in sorted(set(a) | set(b)):
    x, y = a.get(k), b.get(k)
    if isinstance(x, dict) and isinstance(y, dict):
      out.update(config_differences(x, y, f"{prefix}{k}."))
    elif x != y:
      out[f"{prefix}{k}"] = [x, y]
  return out


def render(stats: dict) -> str:
  lines = ["# MD evidence: one-sided significance and noise floor", "",
           "Written by `python launch/md_stats.py` from the table files named below; "
           "all tests one-sided (H1: Δ > 0), Δ in pp, paired by seed. Each table's p-values "
           "are given raw and Holm-adjusted across all the tests of that table (one family "
           "per table and per test: its t-tests, its Wilcoxon tests); read a comparison as "
           "supported at the 5 % level only where its adjusted p is below 0.05.", ""]
  blocks = [("archive: all-2-bit student, symmetric grid (`md_cifar10_all2/table_5seeds.json`, "
             "code of commit 815cd73)", "all2"),
            ("archive: 8-bit first/last student (`md_cifar10_8bit/table.json`, code of commit "
             "815cd73)", "eightbit")]
  if "evidence" in stats:
    commit = stats.get("evidence_commit") or "unknown"
    blocks.insert(0, ("`md_evidence` at `--scale=cpu`: the full grid (`md`, `logit`, `none`) and "
                      "the symmetric grid (`*_sym`) (`tables/md_evidence.json`, code of commit "
                      f"{commit})", "evidence"))
  for name, block in blocks:
    lines += [f"## {name}", "",
              "| comparison | seeds | Δ mean ± std | > 0 | t (df) | p (t, one-sided) | "
              "p (t, Holm) | p (Wilcoxon exact, one-sided) | p (Wilcoxon, Holm) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, s in stats[block].items():
      lines.append(f"| {key.split(',')[0]} | {','.join(map(str, s['seeds']))} | "
                   f"{s['mean']:+.2f} ± {s['std']:.2f} | {s['positive']}/{s['n']} | "
                   f"{s['t']:.2f} ({s['df']}) | {s['p_t_one_sided']:.3f} | "
                   f"{s['p_t_holm']:.3f} | {s['p_wilcoxon_one_sided']:.3f} | "
                   f"{s['p_wilcoxon_holm']:.3f} |")
    supported = [k.split(",")[0] + f" (seeds {','.join(map(str, s['seeds']))})"
                 for k, s in stats[block].items() if s.get("p_t_holm", 1.0) < 0.05
                 or s.get("p_wilcoxon_holm", 1.0) < 0.05]
    lines += ["", f"{len(stats[block])} comparisons in this table; Holm-adjusted p < 0.05: "
              + (", ".join(supported) if supported else "none") + ".", ""]
  nf = stats["noise_floor"]
  lines += ["## Noise floor: the same config and seeds under two code versions", "",
            f"8-bit first/last table, {nf['n']} (method, seed) runs; config differences: "
            f"{nf['config_differences'] or 'none'}; FP teacher {nf['teacher_old']:.2f} (bb0c7c7) "
            f"and {nf['teacher_new']:.2f} (815cd73).", "",
            "| run | 815cd73 − bb0c7c7 (pp) |", "|---|---|"]
  lines += [f"| {k} | {v:+.2f} |" for k, v in nf["changes_pp"].items()]
  lines += ["", f"max |Δ| = {nf['max_abs_pp']:.2f} pp, mean |Δ| = {nf['mean_abs_pp']:.2f} pp.", ""]
  if "quickstart_repeats" in stats:
    q = stats["quickstart_repeats"]
    lines += ["## Repeated quickstart runs (`quickstart.json`)", "",
              f"{q['runs']} runs of the same command, same code: identical accuracies: "
              f"{q['identical']}.", ""]
  lines += [f"Provenance: {provenance.describe(stats['provenance'])}", ""]
  return "\n".join(lines)


def write_stats(root: pathlib.Path) -> dict:
  """Computes the statistics from the files under `root`; writes root/md_stats.{json,md}."""
  root = pathlib.Path(root)
  read = lambda p: json.loads((root / p).read_text())
  all2 = read("md_cifar10_all2/table_5seeds.json")
  eight, eight_v1 = read("md_cifar10_8bit/table.json"), read("md_cifar10_8bit/table_v1_bb0c7c7.json")
  stats = {
      "all2": significance(all2, {"seeds 0-4": [0, 1, 2, 3, 4], "seeds 1-4": [1, 2, 3, 4]}),
      "eightbit": significance(eight, {"seeds 0-2": [0, 1, 2]}),
      "noise_floor": {**noise_floor(eight_v1, eight),
                      "config_differences": config_differences(eight_v1["config"],
                                                               eight["config"])},
      "inputs": ["md_cifar10_all2/table_5seeds.json", "md_cifar10_8bit/table.json",
                 "md_cifar10_8bit/table_v1_bb0c7c7.json"],
  }
  if (root / "tables" / "md_evidence.json").exists():
    ev = read("tables/md_evidence.json")
    stats["evidence"] = significance(ev, {f"seeds {','.join(map(str, ev['seeds']))}": ev["seeds"]},
                                     EVIDENCE_PAIRS)
    stats["evidence_commit"] = str(ev.get("provenance", {}).get("commit") or "")[:7] or None
    stats["inputs"].append("tables/md_evidence.json")
  if (root / "quickstart.json").exists():
    q = read("quickstart.json")
    stats["quickstart_repeats"] = {"runs": len(q["runs"]), "identical": q["identical_across_runs"]}
    stats["inputs"].append("quickstart.json")
  stats["provenance"] = provenance.record()
  provenance.write_json_atomic(root / "md_stats.json", stats)
  provenance.write_text_atomic(root / "md_stats.md", render(stats))
  return stats


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  stats = write_stats(pathlib.Path(_RESULTS.value))
  print(render(stats))


if __name__ == "__main__":
  app.run(main)
