"""Host memory for XLA:CPU: glibc's malloc on transparent huge pages (THP).

XLA:CPU allocates a training step's scratch buffer (hundreds of MiB for VGG-9 at batch 32)
afresh at every execution. glibc serves allocations that large with mmap and returns them
with munmap, so every step faults the whole buffer in again, 4 KiB page by page: measured
≈ 120,000 minor page faults (470 MiB) per VGG-9 FP step (BENCHMARKS.md, "Host memory").
glibc ≥ 2.35 can advise the kernel to back such mappings with 2 MiB pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), which cuts the faults about 70-fold. The tunable
is read once, when the process starts, so `reexec_with_thp_malloc` restarts the launcher
with it set (same interpreter, same command line, same PID) before any work is done.

Set MDSNN_THP_MALLOC=0 to keep the process as it was started.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "MDSNN_THP_MALLOC"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _thp_mode(path: str = _THP_MODE) -> str | None:
  """The kernel's THP mode: the bracketed word of `path` ('always', 'madvise', 'never')."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def thp_malloc_env(environ: Mapping[str, str] | None = None, *, glibc: tuple[int, int] | None = None,
                   thp_mode: str | None = None) -> dict[str, str] | None:
  """The environment to restart with, or None when a restart would change nothing: not
  glibc ≥ 2.35, THP mode other than 'madvise' ('always' already backs large mappings with
  huge pages; 'never' cannot), the tunable already set, or MDSNN_THP_MALLOC=0.
  glibc and thp_mode default to this machine's."""
  env = dict(os.environ if environ is None else environ)
  if env.get(OPT_OUT, "1") == "0":
    return None
  glibc = _glibc_version() if glibc is None else glibc
  thp_mode = _thp_mode() if thp_mode is None else thp_mode
  if glibc is None or glibc < (2, 35) or thp_mode != "madvise":
    return None
  tunables = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb=" in tunables:
    return None  # set by the user (or by the restart itself): keep it
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  return env


def reexec_with_thp_malloc() -> None:
  """Restarts this process with `thp_malloc_env` when it gives an environment; else returns.
  Call it first thing in a launcher's main process (nothing done before it survives)."""
  env = thp_malloc_env()
  if env is None:
    return
  argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
