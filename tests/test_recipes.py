"""The full-scale rows' recipes: every full-scale row config of every table builds and states
its recipe (derived from the config), the papers' recipe facts the rows claim, the students'
epochs as a table parameter (`--student_epochs`, full scale only), evaluation every epoch at
full scale with the final and best-epoch accuracy read from each run's metrics.jsonl, and the
full-scale commands of docs/reproducing.md reaching the pre-flight on miniature data roots."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from mdsnn_jax.train import cost, preflight, reproduce, tables
from mdsnn_jax.train.config import base_config

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reproducing.md"


def _full(table: tables.Table) -> dict[str, tables.Dataset]:
  return {d.key: d for d in table.datasets("full")}


def _configs(table, key):
  return tables.row_configs(table, _full(table)[key])


def _students(configs):
  return {k: c for k, c in configs.items() if not k.startswith("teacher")}


# ----------------------------------------------------------------------- (a) recipes
@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_every_full_row_builds_and_states_its_whole_recipe(name):
  """Every run of every full-scale dataset has every recipe field (shared, students' or its
  own line), derived from its config; each dataset's recipe notes and the table's
  students'-epochs note are stated."""
  t = tables.TABLES[name]
  assert t.epochs_note, name
  labels = {r.key: r.label for r in t.rows}
  for ds in t.datasets("full"):
    plan = tables.plan(t, ds)
    rec = tables.dataset_recipe(t, ds, plan)
    assert set(rec["runs"]) == set(plan[0])
    for key, own in rec["runs"].items():
      fields = {**rec["common"], **({} if key.startswith("teacher") else rec["students"]), **own}
      assert set(fields) == set(tables.RECIPE_FIELDS), (name, ds.key, key, fields)
      assert all(v for v in fields.values())
    lines = "\n".join(tables.recipe_lines(rec, labels))
    for field in tables.RECIPE_FIELDS:
      assert f"{field}: " in lines, (name, ds.key, field)
    assert ds.notes and "Recipe notes:" in lines, (name, ds.key)
    # The one-line form is the same facts.
    cfg = plan[0]["teacher"]
    assert tables.recipe(cfg).startswith(f"model: {cfg.model.name}, T = {int(cfg.model.timesteps)}")


def test_feature_kd_full_is_resnet18_with_sgd_on_cifar100():
  configs = _configs(tables.FEATURE_KD, "cifar100")
  for key, c in configs.items():
    assert c.data.name == "cifar100" and c.model.name == "resnet18", key
    assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.schedule) == (
        "sgd", 0.1, 0.9, 5e-4, "cosine"), key
    assert c.data.augment and c.data.cutout == 0 and c.data.autoaugment == "none"
  assert int(configs["teacher"].model.timesteps) == 4
  assert {int(c.model.timesteps) for c in _students(configs).values()} == {4, 2}
  rec = tables.dataset_recipe(tables.FEATURE_KD, _full(tables.FEATURE_KD)["cifar100"])
  assert "SGD, Nesterov momentum 0.9, lr 0.1, cosine" in rec["common"]["optimizer"]
  assert "weight decay 0.0005" in rec["common"]["optimizer"]
  assert "random crop" in rec["common"]["augmentation"]
  assert any("augmentation is not stated" in n for n in rec["notes"])


def test_spquant_full_rows_resnet19_and_the_cifar10dvs_event_row():
  sq = _full(tables.SPQUANT)
  assert list(sq) == ["cifar10", "cifar10dvs", "ncaltech101"]
  assert "memory" in tables.SPQUANT.columns
  for key, c in _configs(tables.SPQUANT, "cifar10").items():
    assert c.model.name == "resnet19_spquant" and c.loss.kind == "tet" and int(c.model.timesteps) == 2
    assert c.data.augment and c.data.cutout == 0 and c.data.autoaugment == "none"
    if key != "teacher":
      assert (c.model.quant.weight.kind, c.model.quant.weight.bits) == ("sawb", 4), key
  for event in ("cifar10dvs", "ncaltech101"):
    assert sq[event].is_event
    configs = _configs(tables.SPQUANT, event)
    for key, c in configs.items():
      assert (c.data.name, c.model.name, int(c.model.timesteps), int(c.data.timesteps),
              int(c.data.image_size), c.loss.kind) == (event, "vgg9", 10, 10, 48, "tet"), key
      assert c.data.event_augment == "none"
    for key, c in _students(configs).items():
      assert (c.model.quant.weight.kind, c.model.quant.weight.bits) == ("sawb", 2), key
    assert any("48.58 MB" in n and "×↓" in n for n in sq[event].notes)
  dvs = _configs(tables.SPQUANT, "cifar10dvs")["teacher"]
  assert dvs.data.cifar10dvs_train_fraction == 0.9
  ncal = _configs(tables.SPQUANT, "ncaltech101")["teacher"]
  assert (ncal.data.ncaltech101_train_fraction, ncal.data.ncaltech101_background) == (0.8, True)
  # The nominal shapes give the event row its 10 classes and 101 for N-Caltech101 + background.
  assert tables.nominal_info(dvs.data).num_classes == 10
  assert tables.nominal_info(ncal.data).num_classes == 101


def test_md_snn_full_reads_four_datasets_and_states_the_ncaltech101_split():
  md = _full(tables.MD_SNN)
  assert list(md) == ["cifar10", "cifar100", "tinyimagenet", "ncaltech101"]
  for key in ("cifar10", "cifar100", "tinyimagenet"):
    for c in _configs(tables.MD_SNN, key).values():
      assert (c.data.name, c.model.name) == (key, "msresnet18")
      assert int(c.model.timesteps) in (4, 8)  # the versatile teacher at 2·T
  assert md["tinyimagenet"].steps_per_epoch == 100_000 // 128
  assert tables.nominal_info(_configs(tables.MD_SNN, "tinyimagenet")["teacher"].data).image_shape == (64, 64, 3)
  ncal = _configs(tables.MD_SNN, "ncaltech101")["teacher"]
  assert (ncal.data.ncaltech101_train_fraction, ncal.data.ncaltech101_background) == (0.9, False)
  assert any("90/10" in n and "BACKGROUND_Google" in n for n in md["ncaltech101"].notes)
  rec = tables.dataset_recipe(tables.MD_SNN, md["ncaltech101"])
  assert "split 90/10 per class, without BACKGROUND_Google (100 classes)" in rec["common"]["data"]
  paper = " ".join(tables.MD_SNN.paper)
  assert "74.91" in paper and "60.59" in paper


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_full_scale_evaluates_every_epoch_and_the_other_scales_as_before(name):
  t = tables.TABLES[name]
  for ds in t.datasets("full"):
    assert ds.steps_per_epoch, (name, ds.key)
    for key, c in tables.row_configs(t, ds).items():
      assert int(c.train.eval_every) == ds.steps_per_epoch, (name, ds.key, key)
  for ds in t.datasets("gpu_short"):
    assert ds.steps_per_epoch is None
    assert {int(c.train.eval_every) for c in tables.row_configs(t, ds).values()} == {0}
  for ds in t.datasets("smoke"):
    assert int(ds.build().train.eval_every) == 0


# ----------------------------------------------------------------- (b) student epochs
def test_student_epochs_set_the_students_steps_at_full_scale_only():
  ds = _full(tables.MD_SNN)["cifar10"]
  before = tables.row_configs(tables.MD_SNN, ds)
  after = tables.row_configs(tables.MD_SNN, tables.with_settings(ds, student_epochs=7))
  for key in before:
    if key.startswith("teacher"):
      assert int(after[key].teacher_steps) == int(before[key].teacher_steps) == 300 * 390
    else:
      assert int(before[key].train.steps) == 300 * 390
      assert int(after[key].train.steps) == 7 * 390, key
  # The cost model's runs (what --dry_run and --list count) see the same steps.
  runs = cost.table_runs(tables.MD_SNN, "cifar10", after)
  assert {r.key: r.steps for r in runs}["qat"] == 7 * 390
  assert {r.key: r.steps for r in runs}["teacher"] == 300 * 390
  assert tables.check_student_epochs("12", "full") == 12
  assert tables.check_student_epochs(None, "smoke") is None
  for scale in ("smoke", "cpu", "gpu_short"):
    with pytest.raises(ValueError, match=f"at --scale={scale}; it sets the students' training "
                                         "length at --scale=full only"):
      tables.check_student_epochs(5, scale)
  for bad in ("0", "-3", "2.5", "many"):
    with pytest.raises(ValueError, match="allowed: an integer >= 1"):
      tables.check_student_epochs(bad, "full")
  with pytest.raises(ValueError, match="--scale=full only"):
    tables.with_settings(tables.MD_SNN.datasets("gpu_short")[0], student_epochs=3)


def test_student_epochs_flag_is_refused_off_full_scale_by_the_launcher(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "MDSNN_TRACEBACK"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  res = subprocess.run([sys.executable, "launch/reproduce.py", "--table=md_snn", "--scale=smoke",
                        "--seeds=0", "--student_epochs=5", f"--workdir={tmp_path / 'w'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2, res.stderr[-2000:]
  err = res.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --student_epochs=5 was given at "
                                              "--scale=smoke"), res.stderr
  assert not (tmp_path / "w").exists()


def test_datasets_selects_some_of_a_tables_datasets():
  full = tables.MD_SNN.datasets("full")
  assert [d.key for d in tables.select_datasets(full, ["tinyimagenet", "cifar10"])] == [
      "cifar10", "tinyimagenet"]
  assert tables.select_datasets(full, None) == full
  with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['imagenet'\]; this table at this "
                                       r"scale reads \['cifar10', 'cifar100', 'tinyimagenet', "
                                       r"'ncaltech101'\]"):
    tables.select_datasets(full, ["imagenet"])


# ------------------------------------------------------------------ (c) best epoch
def _write_metrics(stage_dir: pathlib.Path, records) -> None:
  stage_dir.mkdir(parents=True)
  (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_best_epoch_is_read_from_the_runs_metrics(tmp_path):
  d = tmp_path / "qat"
  _write_metrics(d, [
      {"step": 0, "stage": "qat", "ptq_accuracy": 10.0},  # PTQ, not an epoch
      {"step": 50, "stage": "qat", "loss": 1.0, "accuracy": 99.0},  # a train-batch accuracy
      {"step": 100, "stage": "qat", "eval_accuracy": 61.0},
      {"step": 200, "stage": "qat", "eval_accuracy": 70.0},
      {"step": 200, "stage": "qat", "eval_accuracy": 68.0},  # rewritten after a resume: last wins
      {"step": 300, "stage": "qat", "eval_accuracy": 69.5},
      {"step": 400, "stage": "qat", "eval_accuracy": 66.0},  # the final evaluation
  ])
  h = reproduce.eval_history(d, {"steps": 400, "test_accuracy": 66.0})
  assert h == dict(final_accuracy=66.0, final_step=400, evals=3, best_accuracy=69.5,
                   best_step=300)
  # A run evaluated only at the end has no best epoch (not a copy of final).
  e = tmp_path / "fp"
  _write_metrics(e, [{"step": 40, "stage": "fp", "eval_accuracy": 50.0}])
  h = reproduce.eval_history(e, {"steps": 40, "test_accuracy": 50.0})
  assert h["best_accuracy"] is None and h["evals"] == 0 and h["final_accuracy"] == 50.0


def test_best_epoch_column_is_labelled_and_says_when_there_is_none():
  per_seed = [dict(accuracy=66.0, best_accuracy=69.5, best_step=300, evals=3),
              dict(accuracy=64.0, best_accuracy=67.5, best_step=200, evals=3)]
  entry = dict(key="qat", label="QAT", available=True, accuracy=[66.0, 64.0],
               accuracy_mean=65.0, accuracy_std=1.41, **reproduce.best_summary(per_seed))
  assert entry["accuracy_best"] == [69.5, 67.5] and entry["accuracy_best_mean"] == 68.5
  none = dict(key="fp", label="FP", available=True, accuracy=[50.0], accuracy_mean=50.0,
              accuracy_std=0.0, **reproduce.best_summary(
                  [dict(accuracy=50.0, best_accuracy=None, best_step=None, evals=0)]))
  text = "\n".join(reproduce.accuracy_lines({}, {"rows": [entry, none]}))
  assert "| row | final (%) | best epoch (the papers' code reports this) (%) |" in text
  assert "| QAT | 65.00 ± 1.41 | 68.50 ± 1.41 | 300, 200 | 3, 3 |" in text
  assert f"| FP | 50.00 ± 0.00 | {reproduce.NO_BEST} | — | 0 |" in text
  # A result made before the evaluations were recorded renders as before.
  assert reproduce.accuracy_lines({}, {"rows": [dict(key="x", label="x", available=True)]}) == []


def _digits_eval_config():
  c = tables._md_student(tables._smoke(base_config(), 2))
  c.teacher_steps, c.train.steps = 30, 20
  c.train.eval_every = 10  # two evaluations during the student's run, then the final one
  return c


def test_a_tiny_real_run_reports_final_and_best_epoch_from_its_metrics(tmp_path):
  """The digits MLP through the real loop and table driver (seconds): the student's
  evaluations at steps 10 (and the teacher's at 10, 20) are in its metrics.jsonl, and the
  table file states the final and best accuracy, and the recipe, from them."""
  result = reproduce.run_table("md_evidence", tmp_path, config=_digits_eval_config(),
                               rows=["ptq", "none"], seeds="0", out="t")
  rows = {e["key"]: e for e in result["datasets"][0]["rows"] if e["available"]}
  for key in ("fp", "none"):
    e = rows[key]
    assert e["evals"] == [2 if key == "fp" else 1], (key, e["evals"])
    assert e["accuracy_best"][0] >= e["accuracy"][0]
    assert e["best_steps"][0] in ((10, 20, 30) if key == "fp" else (10, 20))
  assert "accuracy_best" not in rows["ptq"] and "evals" not in rows["ptq"]
  md = (tmp_path / "t.md").read_text()
  assert "best epoch (the papers' code reports this)" in md
  assert "Recipe (derived from the runs' configs):" in md
  assert "evaluation: test split every 10 steps and at the end; final and best reported" in md
  stored = json.loads((tmp_path / "t.json").read_text())
  assert stored["datasets"][0]["recipe"]["common"]["data"].startswith("digits")


# --------------------------------------------------------- (d) the documented commands
def _documented_commands() -> list[list[str]]:
  """The `launch/reproduce.py` commands of docs/reproducing.md at --scale=full / gpu_short."""
  text = DOC.read_text()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for cmd in block.replace("\\\n", " ").splitlines():
      cmd = cmd.split("#")[0].strip()
      if cmd.startswith("python launch/reproduce.py") and re.search(r"--scale=(full|gpu_short)", cmd):
        out.append(shlex.split(cmd)[2:])
  return out


COMMANDS = _documented_commands()


def test_docs_give_a_full_scale_command_for_every_table():
  tables_named = {a.split("=", 1)[1] for args in COMMANDS for a in args if a.startswith("--table=")}
  assert tables_named == set(tables.TABLES), tables_named
  for args in COMMANDS:
    flags = dict(a[2:].split("=", 1) for a in args if "=" in a)
    scale = flags["scale"]
    t = tables.TABLES[flags["table"]]
    keys = flags.get("datasets", "").split(",") if flags.get("datasets") else None
    read = {d.build().data.name for d in tables.select_datasets(t.datasets(scale), keys)}
    assert set(preflight.parse_data_roots(flags["data_root"])) == read, args


def write_mini_cifar10(root: pathlib.Path, n_train: int = 20, n_test: int = 10) -> pathlib.Path:
  """cifar-10-batches-py/ with data_batch_1 and test_batch in the real pickle format (as
  tests/test_full_scale.py writes it)."""
  import pickle

  import numpy as np
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    with open(folder / name, "wb") as f:
      pickle.dump({"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
                   "labels": [i % 10 for i in range(n)], "batch_label": "mini"}, f, protocol=2)
  return root


def _mini_roots(tmp_path: pathlib.Path, names) -> dict[str, str]:
  """A miniature CIFAR-10 in the real format (refused for its size) and an empty folder for
  every other dataset (refused as not found)."""
  roots = {}
  for name in names:
    folder = tmp_path / "data" / name
    if name == "cifar10":
      write_mini_cifar10(folder, n_train=200)
    else:
      folder.mkdir(parents=True)
    roots[name] = str(folder)
  return roots


def _expected(problem: str, roots: dict[str, str]) -> bool:
  return ("backend is 'cpu'" in problem
          or ("200 train / 10 test" in problem and "50,000 / 10,000" in problem)
          or any(problem.startswith(f"{n}: cannot be opened") for n in roots))


def _command_param(args):
  # md_evidence's command (a few seconds) runs in the fast tier; the others trace tens of
  # full-size steps each (10-45 s on 2 CPU cores) and run in the integration tier.
  fast = "--table=md_evidence" in args
  return pytest.param(args, id=" ".join(args[:3]),
                      marks=[] if fast else [pytest.mark.integration])


@pytest.mark.parametrize("args", [_command_param(a) for a in COMMANDS])
def test_documented_full_scale_commands_reach_the_preflight(args, tmp_path):
  """Each documented command, its --data_root replaced by miniature folders, runs to its
  pre-flight in-process (every dataset opened, every row's step traced on the dataset's
  shapes) and fails only with the expected problems: the CPU backend (without --dry_run),
  the miniature CIFAR-10's size, the empty folders; no row fails to build or trace."""
  flags = dict(a[2:].split("=", 1) for a in args if "=" in a)
  roots = _mini_roots(tmp_path, preflight.parse_data_roots(flags["data_root"]))
  kwargs = dict(scale=flags["scale"], seeds=flags.get("seeds", "0,1,2"),
                rows=[r for r in flags.get("rows", "").split(",") if r] or None,
                data_roots=roots, student_epochs=flags.get("student_epochs"),
                datasets=[d for d in flags.get("datasets", "").split(",") if d] or None)
  dry = "--dry_run" in args
  with pytest.raises(preflight.PreflightError) as e:
    # The dry run's checks without lowering every step for its cost (the launcher's --dry_run
    # lowers them; tracing them is the same check of the rows, and what a CPU test affords).
    reproduce.prepare(flags["table"], tmp_path / "w", dry_run=False, **kwargs) if not dry else \
        _traced_dry_run(flags["table"], tmp_path / "w", **kwargs)
  problems = e.value.problems
  assert problems and all(_expected(p, roots) for p in problems), problems
  assert any("backend is 'cpu'" in p for p in problems) != dry
  for name in roots:  # every dataset the command reads was opened, and refused
    assert any(name in p for p in problems), (name, problems)
  assert not (tmp_path / "w").exists()


def _traced_dry_run(table, workdir, **kwargs):
  from mdsnn_jax.train import preflight as pf
  original = pf.run_preflight

  def traced(*a, **k):
    k["lower"] = False
    return original(*a, **k)

  pf.run_preflight = traced
  try:
    return reproduce.prepare(table, workdir, dry_run=True, **kwargs)
  finally:
    pf.run_preflight = original


@pytest.mark.integration
def test_documented_md_snn_dry_run_lists_its_problems_as_error_lines(tmp_path):
  """The launcher itself on the documented md_snn --dry_run (miniature roots): exit 2, one
  `error:` line per problem, nothing created."""
  args = next(a for a in COMMANDS if "--table=md_snn" in a and "--dry_run" in a
              and not any(x.startswith("--datasets") for x in a))
  flags = dict(a[2:].split("=", 1) for a in args if "=" in a)
  roots = _mini_roots(tmp_path, preflight.parse_data_roots(flags["data_root"]))
  args = [a for a in args if not a.startswith(("--data_root=", "--workdir="))]
  env = {k: v for k, v in os.environ.items() if k != "MDSNN_TRACEBACK"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  res = subprocess.run([sys.executable, "launch/reproduce.py", *args,
                        "--data_root=" + ",".join(f"{k}={v}" for k, v in roots.items()),
                        f"--workdir={tmp_path / 'w'}"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
  assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
  err = res.stderr.strip().splitlines()
  assert len(err) == 4 and all(e.startswith("error: ") for e in err), res.stderr
  assert "200 train / 10 test" in err[0]
  for name, line in zip(("cifar100", "tinyimagenet", "ncaltech101"), err[1:]):
    assert line.startswith(f"error: {name}: cannot be opened"), line
  assert not (tmp_path / "w").exists()


def test_quoted_full_scale_estimates_are_the_lists():
  """Each "Estimate(s) (`--list`)" of docs/reproducing.md is what `--list` prints for that
  table at --scale=full (from results/cost/estimates.json), at 3 seeds and at 8 devices."""
  from mdsnn_jax.train import cost, reproduce
  text = " ".join((pathlib.Path(__file__).resolve().parents[1] / "docs" / "reproducing.md")
                  .read_text().split())
  quoted = 0
  for name, t in tables.TABLES.items():
    est = cost.table_estimate(t, "full")
    one = reproduce.fmt_range(*est.at(1))
    eight = reproduce.fmt_range(*est.at(reproduce.LIST_DEVICES))
    forms = (f"{one} on one H100 at 3 seeds, {eight} per device at 8",
             f"{name} {one} on one H100 at 3 seeds ({eight} per device at 8)",
             f"{name} {one} ({eight} per device at 8)")
    assert any(f in text for f in forms), (name, one, eight)
    quoted += 1
  assert quoted == len(tables.TABLES)
