"""Every code block of the documentation runs in CI.

- `python` blocks of docs/*.md run as written, each in a fresh namespace and a temporary
  working folder. A block preceded by `<!-- test: integration -->` runs in the integration
  tier (it takes more than a few seconds); `<!-- test: integration, needs: a b -->` also skips
  when a module it needs is not installed.
- `bash` blocks of docs/*.md and README.md: every `python launch/<script>.py` command names
  an existing script and only flags that script defines (checked against its `--helpfull`);
  in the integration tier, train.py commands on the digits config run their `--check`
  dry check in a temporary workdir, and reproduce.py `--list` runs.
- `mkdocs build --strict` succeeds (skipped when MkDocs is not installed).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
_BLOCK = re.compile(r"(?:<!--\s*test:\s*(?P<marks>[^>]*?)\s*-->\s*\n)?```(?P<lang>\w+)\n(?P<body>.*?)```",
                    re.S)


def _blocks(path: pathlib.Path, lang: str):
  out = []
  for i, m in enumerate(b for b in _BLOCK.finditer(path.read_text()) if b.group("lang") == lang):
    out.append((f"{path.name}#{i}", m.group("body"), m.group("marks") or ""))
  return out


PY_BLOCKS = [b for p in PAGES for b in _blocks(p, "python")]


def _param(block):
  name, body, marks = block
  integration = "integration" in marks
  return pytest.param(block, id=name, marks=[pytest.mark.integration] if integration else [])


def test_every_page_is_found_and_has_code():
  names = {p.name for p in PAGES}
  assert {"index.md", "getting-started.md", "launcher.md", "pure-functions.md", "method.md",
          "reproducing.md", "results.md", "interop.md", "benchmarks.md", "development.md",
          "api.md"} <= names, names
  assert len(PY_BLOCKS) >= 6


def _check_output(body: str, out: str) -> None:
  if "equal spikes" in body:
    assert "exact: True | equal spikes: True" in out, out
  if "student loss" in body:
    # The flax-free step trains: the loss goes down and stays finite.
    first, last = map(float, re.search(r"student loss (\S+) -> (\S+)", out).groups())
    assert last < first, out
  if "own model loss" in body:
    first, last = map(float, re.search(r"own model loss (\S+) -> (\S+)", out).groups())
    assert last < first, out
  if "crossbar_cost" in body:
    assert "E 15.907 µJ, L 62.833 ms, A 8.4255 mm²" in out, out
  if "snnTorch outputs equal ours" in body:
    assert "snnTorch outputs equal ours: True" in out, out


@pytest.mark.parametrize("block", [_param(b) for b in PY_BLOCKS])
def test_docs_python_block_runs(block, tmp_path, monkeypatch, capsys):
  name, body, marks = block
  needs = re.search(r"needs:\s*([\w\s]+)", marks)
  for module in (needs.group(1).split() if needs else []):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{name} needs {module} (pip install -e '.[interop]')")
  monkeypatch.chdir(tmp_path)  # blocks that write files write them here
  exec(compile(body, name, "exec"), {"__name__": "__docs__"})
  _check_output(body, capsys.readouterr().out)


# ----------------------------------------------------------------------------------------
# bash blocks: launcher commands


def _commands(path: pathlib.Path):
  out = []
  for name, body, _ in _blocks(path, "bash"):
    joined = body.replace("\\\n", " ")
    for line in joined.splitlines():
      for part in line.split("&&"):
        part = part.split("#")[0].strip()
        if part.startswith("python launch/"):
          out.append((name, shlex.split(part)))
  return out


COMMANDS = [c for p in [*PAGES, ROOT / "README.md"] for c in _commands(p)]
SCRIPTS = sorted({argv[1] for _, argv in COMMANDS})


def _run(argv, timeout=120, **kw):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env, **kw)


@functools.lru_cache(maxsize=None)
def _flags(script: str) -> frozenset:
  r = _run([script, "--helpfull"])
  assert r.returncode in (0, 1), (script, r.stderr[-2000:])
  return frozenset(re.findall(r"^\s+--(?:\[no\])?([\w.]+)", r.stdout, flags=re.M)) | {
      "help", "helpfull", "helpshort"}


def test_docs_have_launcher_commands():
  assert len(COMMANDS) >= 10
  assert {"launch/train.py", "launch/reproduce.py"} <= set(SCRIPTS), SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_launcher_commands_use_only_defined_flags(script):
  assert (ROOT / script).is_file(), script
  flags = _flags(script)
  assert flags, script
  for name, argv in COMMANDS:
    if argv[1] != script:
      continue
    for arg in argv[2:]:
      if not arg.startswith("--"):
        continue
      flag = arg[2:].split("=", 1)[0]
      if flag.startswith("config."):
        continue  # a config override: checked by the dry check below and tests/test_config_overrides.py
      base = flag[2:] if flag.startswith("no") and flag[2:] in flags else flag
      assert base in flags, f"{name}: {shlex.join(argv)}: {script} has no flag --{flag}"


@pytest.mark.integration
def test_digits_train_commands_pass_their_dry_check(tmp_path):
  # Every documented train.py command on the digits config, with its own overrides, passes
  # the dry check (data opened, every stage's step traced) in a fresh workdir.
  checked = 0
  for name, argv in COMMANDS:
    if argv[1] != "launch/train.py" or "--config=launch/configs/default.py" not in argv:
      continue
    if any(a.startswith("--config.distributed") or a in ("--help", "--print_config") for a in argv):
      continue
    args = [a for a in argv[2:] if not a.startswith("--workdir=")]
    args += [f"--workdir={tmp_path / f'w{checked}'}"]
    if "--check" not in args:
      args.append("--check")
    r = _run(["launch/train.py", *args], timeout=300)
    assert r.returncode == 0, (name, args, r.stdout[-1500:], r.stderr[-1500:])
    checked += 1
  assert checked >= 2


@pytest.mark.integration
@pytest.mark.parametrize("script", SCRIPTS)
def test_launcher_help_runs(script):
  r = _run([script, "--help"])
  assert r.returncode == 0 and "--" in r.stdout, (script, r.stderr[-1500:])


@pytest.mark.integration
def test_reproduce_list_runs():
  r = _run(["launch/reproduce.py", "--list"], timeout=300)
  assert r.returncode == 0 and "md_evidence" in r.stdout, r.stderr[-1500:]


# ----------------------------------------------------------------------------------------
# the site


@pytest.mark.integration
def test_mkdocs_build_strict(tmp_path):
  if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
    pytest.skip("MkDocs is not installed (pip install -e '.[docs]')")
  r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                      str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert (tmp_path / "site" / "api" / "index.html").read_text().count("lif_scan") > 0
