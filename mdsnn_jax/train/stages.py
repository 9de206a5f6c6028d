"""What a training stage is, independent of the loop that trains it.

A workdir holds one folder per stage ('fp' teacher, 'qat' and 'md' students). Each folder
stores the stage's resolved config (`config.json`: the fields that decide its result, and
the whole config for reference), which is how a re-run decides to skip (identical and
finished), resume (identical, unfinished) or refuse (any difference, listed field by
field, unless the user overwrites). The loop, the report and the table runners all read
stages through this module, so none of them imports another.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from mdsnn_jax.provenance import write_json_atomic
from mdsnn_jax.train import checkpoint as ckpt
from mdsnn_jax.train.config import QUANT_FIELDS, quant_args

STAGES = ("fp", "qat", "md")
QUANT_OFF = {"kind": "none"}
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


class StaleRunError(ValueError):
  """A stage folder holds a run made with a different config."""


def parse_stages(stages: str | tuple | list) -> list[str]:
  names = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
  names = [n for n in names if n]
  bad = [n for n in names if n not in STAGES]
  if bad or not names:
    raise ValueError(f"unknown stage(s) {bad or names!r} in config.stages={stages!r}; "
                     f"allowed stages: {list(STAGES)} (comma-separated, run in order)")
  if len(set(names)) != len(names):
    raise ValueError(f"config.stages={stages!r} names a stage twice")
  return names


def stage_model_config(config, stage: str,
                       note: Callable[[str], None] | None = None) -> ml_collections.ConfigDict:
  """The model config a stage builds: the FP teacher has every quantizer off; the others
  keep, of each quantizer spec, the arguments its kind takes (`config.quant_args`)."""
  model_cfg = ml_collections.ConfigDict(config.model.to_dict())
  for field in QUANT_FIELDS:
    if field in model_cfg.quant:
      model_cfg.quant[field] = (dict(QUANT_OFF) if stage == "fp" else
                                quant_args(field, model_cfg.quant[field], note))
  if stage == "fp":
    model_cfg.quant.bn_fold = False
  return model_cfg


def sample_input(info, timesteps: int) -> np.ndarray:
  """A zero batch of one input of the dataset's shape (events: [1, T, H, W, 2])."""
  if info.is_event:
    return np.zeros((1, info.timesteps or timesteps) + tuple(info.image_shape), np.float32)
  return np.zeros((1,) + tuple(info.image_shape), np.float32)


def abstract_variables(model, sample: np.ndarray) -> dict:
  """The variable tree `model.init` would make (shapes and dtypes only, no compute)."""
  return jax.eval_shape(lambda k: model.init({"params": k}, sample, train=False),
                        jax.random.PRNGKey(0))


def load_trained_variables(model, sample: np.ndarray, directory: pathlib.Path,
                           sharding=None) -> dict:
  """The variables `save_variables` exported for `model` (tree shapes from an abstract
  init), placed with `sharding` (default: this process's first device)."""
  return ckpt.load_variables(directory, abstract_variables(model, sample), sharding)


# ----------------------------------------------------------------------------- teacher
def teacher_stage_dir(config, workdir: pathlib.Path) -> pathlib.Path:
  """The teacher's stage folder: workdir/fp, or distill.teacher_workdir given as a workdir
  (holding fp/) or as its fp stage folder itself."""
  path = str(config.distill.get("teacher_workdir") or "")
  if not path:
    return pathlib.Path(workdir) / "fp"
  path = pathlib.Path(path)
  if (path / "final_variables").is_dir() or (path / CONFIG_FILE).is_file():
    return path
  if (path / "fp").is_dir():
    return path / "fp"
  return path


def teacher_model_config(config, teacher_dir: pathlib.Path,
                         warn: Callable[[str], None] | None = None) -> ml_collections.ConfigDict:
  """The model config the teacher was trained with (its stored config.json), so a student
  whose own config differs (e.g. a learnable threshold) still loads its teacher."""
  stored = read_stage_config(teacher_dir)
  if stored is not None:
    return ml_collections.ConfigDict(stored["result"]["model"])
  if warn is not None:
    warn(f"the teacher in {teacher_dir} has no stored {CONFIG_FILE} (made by an older "
         f"version); building it from this run's config with quantizers off")
  return stage_model_config(config, "fp")


def variables_checksum(variables: dict) -> str:
  """sha256 over a variable tree's leaves (path, dtype, shape, bytes), in path order: the
  identity of a trained model that survives copying, moving and re-saving its files."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def teacher_checksum(teacher_dir: pathlib.Path) -> str | None:
  """`variables_checksum` of a stage folder's final_variables (None when there are none).
  Collective in a multi-process run, like every orbax restore."""
  directory = pathlib.Path(teacher_dir) / "final_variables"
  if not directory.is_dir():
    return None
  return variables_checksum(ckpt.load_variables(directory))


def is_inside(path: pathlib.Path, workdir: pathlib.Path) -> bool:
  """Whether `path` lies in `workdir`, however either is typed (relative, through symlinks)."""
  try:
    pathlib.Path(path).resolve().relative_to(pathlib.Path(workdir).resolve())
    return True
  except ValueError:
    return False


def teacher_identity(workdir: pathlib.Path, teacher_dir: pathlib.Path, result: dict | None,
                     checksum: Callable[[], str | None] | None = None) -> dict:
  """What a student stores about its teacher. A teacher inside the workdir is named by its
  folder relative to the workdir, so the workdir can be moved, copied or reached through a
  symlink; one outside is named by content (its stored config and `teacher_checksum`), so
  the same teacher at another path is the same run and a retrained one is not."""
  if is_inside(teacher_dir, workdir):
    rel = pathlib.Path(teacher_dir).resolve().relative_to(pathlib.Path(workdir).resolve())
    return {"dir": rel.as_posix(), "result": result}
  return {"result": result, "checksum": checksum() if checksum is not None else None}


def comparable_teacher(stored: dict, current: dict) -> dict:
  """The stored teacher identity in the form `current` uses. Versions before relative paths
  stored the teacher's absolute folder and no checksum: such a record is compared by the
  teacher's stored config alone, since the path says nothing once the workdir has moved."""
  stored = dict(stored)
  if os.path.isabs(str(stored.get("dir") or "")):
    stored.pop("dir")
    if "dir" in current:
      stored["dir"] = current["dir"]
    elif "checksum" in current:
      stored["checksum"] = current["checksum"]
  return stored


# ------------------------------------------------------------------- the stored config
def _plain(value: Any) -> Any:
  """JSON-comparable form (tuples as lists, numpy scalars as Python)."""
  return json.loads(json.dumps(value, default=float))


NCALTECH101_FIELDS = ("ncaltech101_background", "ncaltech101_train_fraction")


def data_result(data_cfg) -> dict:
  """The data fields that decide a result: not the worker count or the prefetch depth, and the
  N-Caltech101 split fields only for N-Caltech101 (CIFAR10-DVS's only for CIFAR10-DVS),
  AutoAugment, Cutout and event augmentation only when on (runs stored before those fields
  existed stay valid)."""
  out = {k: v for k, v in data_cfg.to_dict().items() if k not in ("worker_count", "prefetch")}
  if out.get("name") != "ncaltech101":
    for k in NCALTECH101_FIELDS:
      out.pop(k, None)
  if out.get("name") != "cifar10dvs":
    out.pop("cifar10dvs_train_fraction", None)
  # Augmentation fields added later count only when switched on: runs stored before they
  # existed trained without them.
  for k, off in (("autoaugment", "none"), ("cutout", 0), ("event_augment", "none")):
    if out.get(k, off) == off:
      out.pop(k, None)
  return out


def result_fields(config, stage: str, teacher: dict | None = None) -> dict:
  """The config fields that decide a stage's result. Logging, checkpoint cadence, the eval
  batch, the mesh, the process count and the report do not: a run may resume on another
  topology or log more often without counting as a different run."""
  train = config.train
  model = stage_model_config(config, stage).to_dict()
  loss = config.loss.to_dict()
  if model["neuron"].get("gate_rho") is None:
    # Only the learned gate's loss reads it: an ungated run (or one stored before the field
    # existed) is the same run whatever its value.
    loss.pop("gate_weight", None)
  out = {
      "stage": stage,
      "seed": int(config.seed),
      "data": data_result(config.data),
      "model": model,
      "train": {"global_batch": int(train.global_batch), "steps": int(train.steps),
                "nan_policy": str(train.get("nan_policy", "stop")),
                "max_skipped": int(train.get("max_skipped", 10))},
      "optim": config.optim.to_dict(),
      "loss": loss,
  }
  if stage != "fp":
    out["init_from_teacher"] = bool(config.init_from_teacher)
  if stage == "md":
    out["distill"] = {k: v for k, v in config.distill.to_dict().items()
                      if k != "teacher_workdir"}
  if teacher is not None:
    out["teacher"] = teacher
  return _plain(out)


def read_stage_config(stage_dir: pathlib.Path) -> dict | None:
  path = pathlib.Path(stage_dir) / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise StaleRunError(f"{path} is not valid JSON ({e}); remove the stage folder or re-run "
                        f"with --overwrite") from e


def write_stage_config(stage_dir: pathlib.Path, result: dict, config, provenance: dict) -> None:
  write_json_atomic(pathlib.Path(stage_dir) / CONFIG_FILE,
                    {"result": result, "config": config.to_dict(), "provenance": provenance})


def diff_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
  """['train.steps: 50 -> 20', ...] for every leaf that differs (added or removed too).

  A field absent on one side and None on the other is no difference: None is an optional
  feature switched off, so a run stored before that field existed is the same run."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      name = f"{prefix}.{key}" if prefix else str(key)
      if old.get(key) is None and new.get(key) is None:
        continue
      if key not in old:
        out.append(f"{name}: (absent) -> {new[key]!r}")
      elif key not in new:
        out.append(f"{name}: {old[key]!r} -> (absent)")
      else:
        out.extend(diff_fields(old[key], new[key], name))
    return out
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def stage_status(stage_dir: pathlib.Path) -> str:
  """'new' (nothing there), 'finished' (summary written, the last act of a stage) or
  'unfinished'."""
  stage_dir = pathlib.Path(stage_dir)
  if (stage_dir / SUMMARY_FILE).is_file() and (stage_dir / "final_variables").is_dir():
    return "finished"
  if not stage_dir.is_dir() or not any(stage_dir.iterdir()):
    return "new"
  return "unfinished"


def stale_reason(workdir: pathlib.Path, stage: str) -> str | None:
  """Why a finished student stage no longer belongs to the teacher the workdir holds now
  (None: it does, or it has no teacher). A student records its teacher's identity when it
  starts; the teacher retrained since (another config, or other weights for a teacher
  outside the workdir) makes the student's numbers those of a model nobody can rebuild."""
  workdir = pathlib.Path(workdir)
  stored = read_stage_config(workdir / stage) if stage != "fp" else None
  teacher = (stored or {}).get("result", {}).get("teacher")
  if not teacher:
    return None
  tdir_text = teacher.get("dir")
  if tdir_text and not os.path.isabs(tdir_text):
    tdir, name = workdir / tdir_text, tdir_text
  else:
    config = ml_collections.ConfigDict(stored.get("config") or {})
    tdir = (pathlib.Path(tdir_text) if tdir_text and not config.get("distill")
            else teacher_stage_dir(config, workdir))
    name = str(tdir)
  if not (tdir / "final_variables").is_dir():
    return f"its teacher {name} is gone"
  now = read_stage_config(tdir)
  if now is not None and teacher.get("result") is not None:
    diff = diff_fields(teacher["result"], now["result"])
    if diff:
      return (f"its teacher {name} was retrained after it with another config ("
              + "; ".join(diff[:4]) + ("; …" if len(diff) > 4 else "") + ")")
  if teacher.get("checksum") and teacher_checksum(tdir) != teacher["checksum"]:
    return f"its teacher {name} holds other weights than the ones it was trained from"
  return None


# ------------------------------------------------------------------------- the workdir
def ensure_writable_dir(folder: pathlib.Path, what: str) -> None:
  """Makes `folder` and writes a temporary file in it, so a read-only or full file system, a
  file in the way or a missing permission is an OSError naming it before any work, not at
  the first write after minutes of it."""
  folder = pathlib.Path(folder)
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    raise OSError(e.errno, f"{what} {folder} is not writable ({e.strerror})",
                  str(e.filename or folder)) from e


def check_workdir(workdir: pathlib.Path, need_bytes: int) -> None:
  """The workdir can be made and written, with room for `need_bytes` (one checkpoint and
  the exported variables), before any work: an error names the path and what is wrong."""
  workdir = pathlib.Path(workdir)
  probe = workdir
  while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
    probe = probe.parent
  if probe.is_symlink() and not probe.exists():
    raise NotADirectoryError(errno.ENOENT, f"--workdir {workdir}: {probe} is a dangling "
                             f"symbolic link", str(probe))
  if not probe.is_dir():
    what = "is" if probe == workdir else f"lies under {probe}, which is"
    raise NotADirectoryError(errno.ENOTDIR, f"--workdir {workdir} {what} a file, not a "
                             f"directory; choose a folder path", str(probe))
  try:  # a real write: access() alone misses read-only mounts for root and ACLs
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as e:
    raise type(e)(e.errno, f"--workdir {workdir}: {probe} is not writable ({e.strerror})",
                  str(probe)) from e
  try:
    free = shutil.disk_usage(probe).free
  except OSError:
    return
  if free < need_bytes:
    raise OSError(errno.ENOSPC, f"--workdir {workdir}: {free / 2**20:.1f} MiB free on the "
                  f"file system of {probe}, but one checkpoint needs about "
                  f"{need_bytes / 2**20:.1f} MiB; free space or choose another folder",
                  str(probe))
