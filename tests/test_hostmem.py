"""hostmem: when a launcher restarts with glibc's malloc on transparent huge pages, and that
the restart really happens (same command line, the tunable set) in a launcher subprocess."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from mdsnn_jax import hostmem

REPO = pathlib.Path(__file__).resolve().parents[1]
GLIBC, MADVISE = (2, 36), "madvise"


def test_env_adds_the_tunable_on_glibc_with_madvise_thp():
  env = hostmem.thp_malloc_env({"PATH": "/bin"}, glibc=GLIBC, thp_mode=MADVISE)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  # Other tunables are kept.
  env = hostmem.thp_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc=GLIBC,
                               thp_mode=MADVISE)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,glibc,mode", [
    ({"MDSNN_THP_MALLOC": "0"}, GLIBC, MADVISE),                   # opted out
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, MADVISE),  # the user's choice
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, GLIBC, MADVISE),  # already restarted
    ({}, (2, 34), MADVISE),                                        # glibc without the tunable
    ({}, GLIBC, "always"),                                         # huge pages already
    ({}, GLIBC, "never"),                                          # no huge pages at all
])
def test_no_restart_where_it_would_change_nothing(environ, glibc, mode):
  assert hostmem.thp_malloc_env(environ, glibc=glibc, thp_mode=mode) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert hostmem._thp_mode(str(f)) == "madvise"
  assert hostmem._thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(hostmem.thp_malloc_env({}) is None,
                    reason="this machine's glibc / THP mode would not restart")
def test_a_launcher_restarts_itself_with_the_tunable(tmp_path):
  # A tiny launcher through cli.run (as every launch/ script): prints its PID before the
  # restart, and its environment and arguments in main.
  script = tmp_path / "show.py"
  script.write_text(
      "import os, sys\n"
      "from mdsnn_jax.train import cli\n"
      "def main(argv):\n"
      "  print('TUNABLES', os.environ.get('GLIBC_TUNABLES'), 'ARGV', argv[1:], os.getpid())\n"
      "if __name__ == '__main__':\n"
      "  print('START', os.getpid(), flush=True)\n"
      "  cli.run(main)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MDSNN_THP_MALLOC")}
  out = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  starts = [l.split()[1] for l in lines if l.startswith("START")]
  assert len(starts) == 2 and starts[0] == starts[1]  # restarted once, same PID
  assert any(l.startswith("TUNABLES glibc.malloc.hugetlb=1 ARGV []") for l in lines)
  # Opted out: no restart.
  out = subprocess.run([sys.executable, str(script)], cwd=REPO,
                       env={**env, "MDSNN_THP_MALLOC": "0"}, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert sum(l.startswith("START") for l in out.stdout.splitlines()) == 1
  assert "TUNABLES None" in out.stdout
