"""Every mistake a new user makes ends in one `error:` line before any step (exit 2, nothing
lost): a file system that is read-only, full or in the way, a --config= file that is not
there, a dataset whose split leaves nothing to test on, a misspelled quantizer key."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.name=digits_mlp", "--config.model.timesteps=2",
        "--config.train.global_batch=32", "--config.train.eval_batch=64",
        "--config.train.log_every=5", "--config.train.checkpoint_every=10",
        "--config.train.steps=30", "--config.train.tensorboard=False"]


def _launch(*args, env=None, timeout=600):
  full_env = {k: v for k, v in os.environ.items() if k != "MDSNN_TRACEBACK"}
  full_env.update({"JAX_PLATFORMS": "cpu", **(env or {})})
  return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout)


def _one_error_line(res, *needles):
  assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
  assert "Traceback" not in res.stderr
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


def _ncaltech(root: pathlib.Path, counts: dict[str, int]) -> pathlib.Path:
  """A Caltech101/<class>/image_XXXX.bin tree in the ATIS format (5 bytes per event)."""
  rng = np.random.default_rng(0)
  for cls, n in counts.items():
    (root / "Caltech101" / cls).mkdir(parents=True)
    for k in range(1, n + 1):
      x, y = rng.integers(0, 240, 300), rng.integers(0, 180, 300)
      t, p = np.sort(rng.integers(0, 200_000, 300)), rng.integers(0, 2, 300)
      word = (x.astype(np.uint64) << 32) | (y.astype(np.uint64) << 24) | (
          p.astype(np.uint64) << 23) | t.astype(np.uint64)
      raw = np.stack([(word >> s) & 0xFF for s in (32, 24, 16, 8, 0)], 1).astype(np.uint8)
      (root / "Caltech101" / cls / f"image_{k:04d}.bin").write_bytes(raw.tobytes())
  return root


def _config(stages="fp"):
  from mdsnn_jax.train.config import base_config, set_quant
  c = base_config()
  c.stages = stages
  c.model.name = "digits_mlp"
  c.model.timesteps = 2
  set_quant(c, "weight", "lsq", bits=2)
  set_quant(c, "membrane", "ternary")
  c.train.update(dict(global_batch=32, eval_batch=64, steps=10, log_every=5,
                      checkpoint_every=10))
  return c


def _event_config(root, stages="fp", **data):
  from mdsnn_jax.train.config import base_config
  c = base_config()
  c.stages = stages
  c.data.name = "ncaltech101"
  c.data.root = str(root)
  c.data.timesteps = 2
  c.data.image_size = 8
  c.data.update(data)
  c.model.name = "digits_cnn"
  c.model.timesteps = 2
  c.train.update(dict(global_batch=2, eval_batch=2, steps=2, log_every=1, checkpoint_every=2))
  return c


# ------------------------------------------------------------ the data, in the dry check
def test_empty_test_split_is_refused_in_the_check(tmp_path):
  from mdsnn_jax.train import loop
  root = _ncaltech(tmp_path / "data", {"accordion": 1, "airplanes": 1, "anchor": 1})
  with pytest.raises(ValueError, match=r"the test split of 'ncaltech101' is empty: .*"
                                       r"3 classes, 3 train / 0 test examples.*ceil\(0.9 n\)"):
    loop.check(_event_config(root), tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_ncaltech_background_and_split_are_fields_and_the_dataset_line_says_them(tmp_path):
  from mdsnn_jax.data import registry
  from mdsnn_jax.train.config import base_config
  assert base_config().data.ncaltech101_background is False
  assert base_config().data.ncaltech101_train_fraction == 0.9
  root = _ncaltech(tmp_path, {"accordion": 10, "airplanes": 4, "BACKGROUND_Google": 3})
  cfg = _event_config(root).data
  line = registry.describe(cfg)
  # ⌈0.9·10⌉ + ⌈0.9·4⌉ = 13 train, 1 + 0 test; the airplanes class has no test example.
  assert "ncaltech101 at " in line and "2 classes, 13 train / 1 test examples" in line
  assert "BACKGROUND_Google excluded (data.ncaltech101_background=False)" in line
  assert "1 class(es) have no test example (class indices [1])" in line
  cfg.ncaltech101_background = True
  assert "3 classes, 16 train / 1 test examples" in registry.describe(cfg)
  cfg.ncaltech101_train_fraction = 0.5
  assert "3 classes, 9 train / 8 test examples" in registry.describe(cfg)  # 5+2+2 / 5+2+1
  cfg.ncaltech101_train_fraction = 1.0
  with pytest.raises(ValueError, match=r"ncaltech101_train_fraction must be a number in "
                                       r"\(0, 1\), got 1.0"):
    registry.describe(cfg)


# ------------------------------------------------------------ the workdir, in the dry check
def test_workdir_under_a_file_is_refused_in_the_check(tmp_path):
  from mdsnn_jax.train import loop
  (tmp_path / "f").write_text("x")
  with pytest.raises(NotADirectoryError, match=r"--workdir .*f/w lies under .*f, which is a "
                                               r"file, not a directory"):
    loop.check(_config("fp"), tmp_path / "f" / "w")


def test_a_disk_too_small_for_one_checkpoint_is_refused_in_the_check(tmp_path, monkeypatch):
  from mdsnn_jax.train import loop, stages
  monkeypatch.setattr(stages.shutil, "disk_usage",
                      lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
  with pytest.raises(OSError, match=r"0.0 MiB free on the file system of .*one checkpoint "
                                    r"needs about 1.\d MiB") as e:
    loop.check(_config("fp"), tmp_path / "w")
  assert e.value.errno == errno.ENOSPC


# ------------------------------------------------------------ one line for each mistake
def test_filesystem_error_line_names_the_path_and_what_to_do():
  from mdsnn_jax.train import cli
  line = cli.filesystem_error_line(OSError(errno.EROFS, "Read-only file system", "/x/w/.lock"))
  assert line == ("error: Read-only file system (/x/w/.lock); make it writable or choose "
                  "another folder")
  line = cli.filesystem_error_line(OSError(errno.ENOSPC, "no space", "/x/w/fp"))
  assert line.startswith("error: no space (/x/w/fp); free space, then re-run the same command")


def test_orbax_no_space_error_becomes_enospc_naming_the_folder():
  from mdsnn_jax.train import checkpoint as ckpt
  wrapped = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/w/fp/checkpoints/20."
                       "orbax-checkpoint-tmp/_sharding\": Failed to write 4085 bytes to file "
                       "20: No space left on device [os_error_code='28']")
  e = ckpt.no_space_error(wrapped, "/w/fp/checkpoints", "the checkpoint of step 20")
  assert e.errno == errno.ENOSPC and e.filename == "/w/fp/checkpoints"
  assert str(e.strerror) == "no space left on device while writing the checkpoint of step 20"
  assert ckpt.no_space_error(ValueError("shape mismatch"), "/w", "x") is None


def test_damaged_checkpoint_reason_is_not_an_object_repr():
  from mdsnn_jax.train.checkpoint import error_summary
  try:
    try:
      raise OSError("Unable to open the OCDBT manifest: checksum mismatch")
    except OSError as cause:
      raise ValueError("<bound method pybind11_detail_function_record_v1_system_libstdcpp_gxx_"
                       "abi_1xxx.__call__ of <tensorstore.Future object at 0x7f3>>") from cause
  except ValueError as e:
    got = error_summary(e)
  assert got == "OSError: Unable to open the OCDBT manifest: checksum mismatch"
  assert error_summary(RuntimeError("word " * 100), limit=40).endswith(" …")


def test_a_corrupt_line_inside_metrics_is_warned_about_on_resume(tmp_path):
  from mdsnn_jax.train.metrics import MetricsWriter
  path = tmp_path / "metrics.jsonl"
  text = '{"step": 5}\n{"step": 1\x00\x00garbage\n{"step": 10}\n{"step": 15}\n{"step": 2'
  path.write_text(text)
  said = []
  MetricsWriter(path, resume_step=10, warn=said.append)
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [5, 10]
  assert len(said) == 1 and "1 line(s) that are not JSON dropped on resume (line 2 of 5)" in said[0]
  assert (tmp_path / "metrics.jsonl.damaged").read_text() == text + "\n"
  # The last line cut off by a kill is expected: no warning.
  path.write_text('{"step": 5}\n{"step": 1')
  said.clear()
  MetricsWriter(path, resume_step=10, warn=said.append)
  assert said == []


def test_whole_dict_quantizer_typo_is_an_error_and_print_config_shows_what_runs():
  from mdsnn_jax.train import loop
  from mdsnn_jax.train.config import quant_args, resolved_config
  with pytest.raises(ValueError, match=r"unknown argument\(s\) 'per_chanel' \(did you mean "
                                       r"'per_channel'\?\) in model.quant.weight; allowed:"):
    quant_args("weight", {"kind": "lsq", "bits": 3, "per_chanel": True})
  cfg = _config("fp")  # a stage that builds no quantizer refuses the typo too
  cfg.model.quant.weight = {"kind": "lsq", "bits": 3, "per_chanel": True}
  with pytest.raises(ValueError, match="per_chanel"):
    loop.check(cfg, "/nonexistent/never/made")
  cfg = _config("fp")
  cfg.model.quant.weight.kind = "ternary"  # the config file's bits=2 is not used by ternary
  notes = []
  shown = resolved_config(cfg, note=notes.append)
  assert shown.model.quant.weight.to_dict() == {"kind": "ternary"}
  assert shown.model.quant.membrane.to_dict() == {"kind": "ternary"}
  assert any("takes no bits=2" in n for n in notes)


# ------------------------------------------------------------ through the launchers
def test_bad_config_path_is_one_line():
  for given in ("launch/configs/defualt.py", "launch/configs/defualt.py:fp,md"):
    res = _launch("launch/train.py", f"--config={given}", "--workdir=/tmp/never",
                  "--config.train.steps=3")
    _one_error_line(res, "--config file 'launch/configs/defualt.py' does not exist",
                    "did you mean launch/configs/default.py")


def test_wrong_cifar100_root_is_one_line_naming_the_folders(tmp_path):
  res = _launch("launch/train.py", "--config=launch/configs/cifar100_resnet18.py",
                f"--config.data.root={tmp_path}", f"--workdir={tmp_path / 'w'}", "--check")
  line = _one_error_line(res, f"looked at: {tmp_path}/cifar-100-python",
                         f"no dataset_info.json under {tmp_path}/cifar100")
  assert "TFRECORD" not in line
  assert list(tmp_path.iterdir()) == []  # nothing left behind under the wrong root


def test_print_config_prints_what_the_run_uses():
  res = _launch("launch/train.py", "--config=launch/configs/default.py", "--print_config",
                "--config.model.quant.weight.kind=ternary")
  assert res.returncode == 0, res.stderr[-2000:]
  weight = res.stdout.split("    weight:\n", 1)[1].split("\n  ")[0]
  assert weight.strip() == "kind: ternary"  # no `bits: 2` the run would not use
  assert "ncaltech101_background: false" in res.stdout
  res = _launch("launch/train.py", "--config=launch/configs/default.py", "--print_config",
                "--config.model.quant.weight={'kind':'lsq','bits':3,'per_chanel':True}")
  _one_error_line(res, "'per_chanel' (did you mean 'per_channel'?)")


def _can_mount() -> bool:
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  probe = pathlib.Path("/tmp") / f"mdsnn-mount-probe-{os.getpid()}"
  probe.mkdir(exist_ok=True)
  try:
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
      subprocess.run(["umount", str(probe)], capture_output=True)
    return ok
  finally:
    probe.rmdir()


@contextlib.contextmanager
def _read_only(path: pathlib.Path):
  """`path` read-only: a read-only bind mount as root (permissions do not stop root), else
  the write bits removed."""
  if os.geteuid() == 0:
    if not _can_mount():
      pytest.skip("running as root without mount: cannot make a folder read-only")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
      subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
      yield
    finally:
      subprocess.run(["umount", str(path)], check=True)
  else:
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
      p.chmod(modes[p] & ~0o222)
    try:
      yield
    finally:
      for p, m in modes.items():
        p.chmod(m)


def _files(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.integration
def test_read_only_workdir_and_file_in_the_way_are_one_line_in_every_launcher(tmp_path):
  w = tmp_path / "w"
  cfg = "--config=launch/configs/default.py:fp"
  res = _launch("launch/train.py", cfg, f"--workdir={w}", *TINY, "--config.train.steps=10",
                "--config.report=False")
  assert res.returncode == 0, res.stderr[-3000:]
  before = _files(w)
  with _read_only(w):
    # A re-run (skip: it would still write the lock and the report), a changed run, a report.
    for extra in ([], ["--config.train.steps=20", "--overwrite"]):
      res = _launch("launch/train.py", cfg, f"--workdir={w}", *TINY,
                    "--config.train.steps=10", *extra)
      _one_error_line(res, str(w), "not writable")
    res = _launch("launch/report.py", f"--workdir={w}", "--max_batches=1")
    _one_error_line(res, str(w / "report"), "not writable")
    res = _launch("launch/export.py", f"--workdir={w}", "--stage=fp", f"--out={w / 'fp.nir'}")
    _one_error_line(res, str(w), "not writable")
  assert _files(w) == before  # nothing lost, nothing half-written
  (tmp_path / "file").write_text("not a folder")
  res = _launch("launch/train.py", cfg, f"--workdir={tmp_path / 'file' / 'w1'}", *TINY, "--check")
  _one_error_line(res, str(tmp_path / "file"), "a file, not a directory")


_INJECT = r"""
import os, pathlib, runpy, shutil, sys
from mdsnn_jax.train import checkpoint as ckpt
mode, at = os.environ["INJECT_MODE"], int(os.environ["INJECT_STEP"])
real = ckpt.save

def save(manager, step, state):
  if step == at and mode == "orbax":
    # What orbax raises when tensorstore's writer threads hit a full disk.
    def fail(step, args=None, force=False):
      (pathlib.Path(manager.directory) / f"{step}.orbax-checkpoint-tmp").mkdir()
      raise ValueError(
          "RESOURCE_EXHAUSTED: Error writing local file \"" + str(manager.directory)
          + f"/{step}.orbax-checkpoint-tmp/_sharding\": Failed to write 4085 bytes to file 20: "
          "No space left on device [os_error_code='28']")
    manager.save = fail
  if step == at and mode == "fill":  # a real small file system, filled up to `leave` bytes
    d = pathlib.Path(manager.directory)
    with open(d.parent.parent / "filler", "wb") as f:
      f.write(b"\0" * max(0, shutil.disk_usage(d).free - int(os.environ["INJECT_LEAVE"])))
  return real(manager, step, state)

ckpt.save = save
sys.argv = ["launch/train.py", *sys.argv[1:]]
runpy.run_path("launch/train.py", run_name="__main__")
"""


@pytest.mark.integration
def test_disk_full_is_one_line_and_the_resume_ends_bit_identical(tmp_path):
  import jax
  from mdsnn_jax.train import checkpoint as ckpt
  (tmp_path / "inject.py").write_text(_INJECT)
  args = ["--config=launch/configs/default.py:fp", *TINY, "--config.report=False"]
  res = _launch("launch/train.py", *args, f"--workdir={tmp_path / 'ref'}")
  assert res.returncode == 0, res.stderr[-3000:]
  want = jax.tree.leaves(ckpt.load_variables(tmp_path / "ref" / "fp" / "final_variables"))

  runs = [("orbax", tmp_path / "w_orbax", None)]
  if _can_mount():  # and a real full file system where one can be made
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    runs.append(("fill", small / "w", small))
  try:
    for mode, w, mount in runs:
      env = {"INJECT_MODE": mode, "INJECT_STEP": "20", "INJECT_LEAVE": "120000",
             "PYTHONPATH": str(REPO)}
      res = _launch(str(tmp_path / "inject.py"), *args, f"--workdir={w}", env=env)
      line = _one_error_line(res, "no space left on device", str(w / "fp" / "checkpoints"),
                             "re-run the same command")
      assert "step 20" in line, line
      assert "[fp] step 20/30" in res.stdout  # training had got there
      if mount is not None:
        (w / "filler").unlink()
      res = _launch("launch/train.py", *args, f"--workdir={w}")
      assert res.returncode == 0, res.stderr[-3000:]
      assert "resuming from step 10 of 30" in res.stdout, res.stdout
      got = jax.tree.leaves(ckpt.load_variables(w / "fp" / "final_variables"))
      assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want)), mode
  finally:
    for mode, w, mount in runs:
      if mount is not None:
        subprocess.run(["umount", str(mount)], check=False)
