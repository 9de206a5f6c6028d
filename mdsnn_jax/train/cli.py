"""What every launcher shares: quiet logging, and errors a user can act on.

    from mdsnn_jax.train import cli
    if __name__ == "__main__":
      cli.run(main)

- absl and orbax INFO lines are silenced (WARNING and above show); `--verbosity=0` (INFO)
  or higher restores them.
- A configuration or data error (ValueError, FileNotFoundError, KeyError, a stale or locked
  workdir, a diverged run) prints one line, `error: <what, the bad value, what is allowed>`,
  and exits 2 without a traceback. The traceback shows with `--verbosity=1` or with the
  environment variable MDSNN_TRACEBACK=1.
- XLA:CPU's convolutions run on XNNPACK (`mdsnn_jax.xla_cpu`; MDSNN_CPU_CONV=xla keeps XLA's
  default), set before jax starts its backend.
- A file-system error (read-only, not a directory, no space left, no permission) and a
  `--config=` file that does not exist or does not load print one `error:` line naming the
  path, and exit 2; what was saved stays, and the same command resumes.
- SIGINT / SIGTERM during training (`loop.Interrupted`) print the step reached and the
  command that resumes, and exit 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).
"""
from __future__ import annotations

import difflib
import errno
import glob
import logging as py_logging
import os
import shlex
import sys
import traceback
from typing import Callable

from absl import app, flags, logging

from mdsnn_jax import xla_cpu
from mdsnn_jax.train.loop import DivergenceError, Interrupted, StaleRunError, WorkdirLockedError

USAGE_EXIT = 2
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, StaleRunError, WorkdirLockedError,
               DivergenceError)
TRACEBACK_ENV = "MDSNN_TRACEBACK"


def _verbosity_asked() -> int | None:
  f = flags.FLAGS["verbosity"]
  return int(f.value) if f.present else None


def _not_from_orbax(record: py_logging.LogRecord) -> bool:
  # orbax logs each failed write of its worker threads (with tracebacks) before raising the
  # same failure to the caller, which reports it in one line; tfds warns about the folders of
  # a dataset it cannot open before the data error that names them.
  path = record.pathname or ""
  if f"{os.sep}orbax{os.sep}" in path:
    return False
  return not (f"{os.sep}tensorflow_datasets{os.sep}" in path
              and record.levelno < py_logging.ERROR)


def quiet_logging() -> None:
  """WARNING and above from absl, orbax and jax unless --verbosity was given; orbax's own
  error logs are left to the exception they precede."""
  asked = _verbosity_asked()
  if asked is None:
    logging.set_verbosity(logging.WARNING)
    for name in ("absl", "orbax", "jax", "grain"):
      py_logging.getLogger(name).setLevel(py_logging.WARNING)
    handler = logging.get_absl_handler()
    if _not_from_orbax not in handler.filters:
      handler.addFilter(_not_from_orbax)


def _show_traceback() -> bool:
  asked = _verbosity_asked()
  return (asked is not None and asked >= 1) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def resume_command() -> str:
  return shlex.join([sys.executable, *sys.argv])


def _error_line(e: BaseException) -> str:
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  if isinstance(e, (AttributeError, KeyError)):
    # ml_collections wraps "'name'\nDid you mean ..." in a repr: unwrap it.
    text = text.strip("'\"").replace("\\n", " ").replace("\\'", "'")
    if isinstance(e, AttributeError):
      text = f"unknown config field {text}"
  text = " ".join(text.split())
  return f"error: {text}" if text else f"error: {type(e).__name__}"


FILESYSTEM_ERRNOS = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                     errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
                     errno.EPERM: "operation not permitted", errno.ENOTDIR: "not a directory",
                     errno.EISDIR: "is a directory", errno.EEXIST: "file exists",
                     errno.ENAMETOOLONG: "file name too long", errno.ELOOP: "too many symbolic links",
                     errno.EIO: "input/output error", errno.ENOTEMPTY: "directory not empty",
                     errno.EXDEV: "cross-device link", errno.EFBIG: "file too large"}


def filesystem_error_line(e: OSError) -> str:
  """`error: <what>: <path>` for a file-system OSError, with what to do next."""
  what = e.strerror or FILESYSTEM_ERRNOS.get(e.errno or -1) or str(e)
  names = [str(n) for n in (e.filename, e.filename2) if n is not None]
  where = f" ({' -> '.join(names)})" if names and not any(n in what for n in names) else ""
  hint = ""
  if "free space" in what or "choose another" in what:
    pass  # the message says what to do already
  elif e.errno in (errno.ENOSPC, errno.EDQUOT):
    hint = ("; free space, then re-run the same command: it resumes from the last complete "
            "checkpoint")
  elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    hint = "; make it writable or choose another folder"
  return _error_line(ValueError(f"{what}{where}{hint}"))


def _is_filesystem_error(e: BaseException) -> bool:
  return isinstance(e, OSError) and e.errno in FILESYSTEM_ERRNOS


def _silence_teardown() -> None:
  """After a file-system error line: orbax's writer threads, cut off by the failed write, can
  print 'Event loop is closed' tracebacks while the interpreter shuts down. The one line
  already says what happened, so stderr goes to /dev/null for the rest of the process."""
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.close(devnull)
  sys.stderr = open(os.devnull, "w")


def guarded(main: Callable[[list[str]], None],
            conv_library: str | None = None) -> Callable[[list[str]], None]:
  """`main` with quiet logging and one-line user errors (see the module docstring);
  conv_library: what `xla_cpu.use_xnnpack_convolutions` did, logged at INFO."""

  def wrapped(argv):
    quiet_logging()
    if conv_library:
      logging.info("convolutions: %s", conv_library)
    try:
      return main(argv)
    except Interrupted as e:
      print(f"{e}. Re-run the same command to resume:\n  {resume_command()}",
            file=sys.stderr, flush=True)
      sys.exit(128 + int(e.signum))
    except USER_ERRORS as e:
      if _show_traceback():
        traceback.print_exc()
      # An error that found several problems at once (`preflight.PreflightError`) lists them,
      # one `error:` line each.
      for problem in getattr(e, "problems", None) or [e]:
        print(_error_line(problem if isinstance(problem, BaseException) else ValueError(problem)),
              file=sys.stderr, flush=True)
      sys.exit(USAGE_EXIT)
    except OSError as e:
      if not _is_filesystem_error(e):
        raise
      if _show_traceback():
        traceback.print_exc()
      print(filesystem_error_line(e), file=sys.stderr, flush=True)
      if not _show_traceback():
        _silence_teardown()
      sys.exit(USAGE_EXIT)
    except KeyboardInterrupt:
      print(f"interrupted. Re-run the same command to resume from the last checkpoint:\n  "
            f"{resume_command()}", file=sys.stderr, flush=True)
      sys.exit(130)

  return wrapped


_HELP = ("--help", "--helpfull", "--helpshort", "-h", "-?")


def config_fields(config, prefix: str = "config.") -> list[str]:
  """'config.train.steps: int = 500' for every leaf of a ConfigDict."""
  out = []
  for key in config.keys():
    value = config[key]
    if hasattr(value, "keys"):
      out += config_fields(value, f"{prefix}{key}.")
    else:
      out.append(f"  --{prefix}{key}: {config.get_type(key).__name__} = {value!r}")
  return out


def _config_file_error(argv: list[str], e: BaseException) -> str:
  """One line for a --config= file that is missing or fails to load, with near names."""
  given = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  path = (given or "").split(":", 1)[0]
  if not path or not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    near = difflib.get_close_matches(path, glob.glob(os.path.join(folder, "*.py")), 3)
    if not near:
      near = sorted(glob.glob(os.path.join("launch", "configs", "*.py")))[:12]
    return (f"error: --config file {path!r} does not exist; "
            + (f"did you mean {', '.join(near)}? " if near else "")
            + "give a config file (launch/configs/<name>.py[:stages])")
  cause = e
  while cause.__cause__ is not None:
    cause = cause.__cause__
  return _error_line(ValueError(f"--config file {given!r} could not be loaded: "
                                f"{type(cause).__name__}: {cause}"))


def _load_config_now(argv: list[str]) -> None:
  """ml_collections loads the --config file lazily, at the first field read (deep inside a
  run, as a 40-line traceback): load it here so a bad file is one line before any work."""
  if "config" not in flags.FLAGS or flags.FLAGS["config"].value is None:
    return
  try:
    flags.FLAGS["config"].value.get("stages")
  except Exception as e:  # whatever the file raises when it is executed
    print(_config_file_error(argv, e), file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config field as one `error:` line (exit 2)
  and --help / --helpfull listing every config field and exiting 0."""
  wants_help = any(a in _HELP for a in argv[1:])
  args = [a for a in argv if a not in _HELP]
  try:
    rest = flags.FLAGS(args)
  except OSError as e:  # a --config= file that does not exist, found while parsing overrides
    print(_config_file_error(args, e), file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    if not wants_help:
      print(_error_line(e), file=sys.stderr, flush=True)
      sys.exit(USAGE_EXIT)
    rest = None
  if rest is not None:
    _load_config_now(args)
  if wants_help:
    print(flags.FLAGS.main_module_help() if "--helpfull" not in argv else flags.FLAGS.get_help())
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if config is not None:
      print("\nConfig fields (set any with --config.<field>=<value>):")
      print("\n".join(config_fields(config)))
    else:
      print("\nGive --config=<file> with --help to list its fields.")
    sys.exit(0)
  return rest


def run(main: Callable[[list[str]], None]) -> None:
  try:
    conv_library = xla_cpu.use_xnnpack_convolutions()
  except ValueError as e:  # a bad MDSNN_CPU_CONV, before any work
    print(_error_line(e), file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)
  app.run(guarded(main, conv_library), flags_parser=parse_flags)
