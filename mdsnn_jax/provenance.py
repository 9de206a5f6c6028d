"""Where a number came from, and files that are never half-written.

`record()` is stored beside every result and benchmark file: the commit (and whether the
tree had uncommitted changes), the command line, the machine (CPU model read at run time,
core count, device kind), the 1/5/15-minute load average, the date and library versions.
`write_json_atomic` / `write_text_atomic` write to a temporary file in the target folder and
rename it into place (`os.replace`), so a reader sees the old file or the new one, never a
partial one. This module imports nothing of the library: every layer can use it.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
from typing import Any, Iterator

_REPO = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """JSON (indented, sorted keys; numpy scalars as floats) written atomically."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (read now, not assumed), else platform's guess."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def record(command: list[str] | str | None = None, config: Any = None) -> dict:
  """Provenance of a result: commit, command, machine, load, date, versions (and the config).

  `command` defaults to this process's command line; `config` (a ConfigDict or dict) is
  stored in full when given.
  """
  if command is None:
    command = [pathlib.Path(sys.argv[0]).name if sys.argv[0] == "-c" else sys.argv[0],
               *sys.argv[1:]]
  if not isinstance(command, str):
    command = shlex.join(str(c) for c in command)
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no")
  versions = {"python": platform.python_version()}
  for name in ("jax", "flax", "optax", "orbax.checkpoint", "numpy"):
    module = sys.modules.get(name)
    if module is not None:
      versions[name] = getattr(module, "__version__", "?")
  devices = None
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    devs = jax.devices()
    devices = f"{len(devs)}× {devs[0].platform}:{devs[0].device_kind}"
  out = {
      "commit": commit,
      "dirty": bool(status) if status is not None else None,
      "command": command,
      "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "devices": devices,
                  "host": platform.node()},
      "load_average": load_average(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": versions,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if config is not None:
    out["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return out


def describe(prov: dict) -> str:
  """One line for a table's footer: date, machine, load, commit."""
  commit = (prov.get("commit") or "?")[:10] + ("+dirty" if prov.get("dirty") else "")
  load = prov.get("load_average")
  load_s = "/".join(f"{x:.2f}" for x in load) if load else "?"
  m = prov.get("machine", {})
  return (f"{prov.get('date', '?')} · {m.get('cpu', '?')} ({m.get('cores', '?')} cores, "
          f"{m.get('devices') or 'no jax'}) · load {load_s} · commit {commit}")
