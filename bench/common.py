"""Timing helpers shared by the benchmarks: median wall time after warm-up, matmul peak."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from mdsnn_jax import xla_cpu
from mdsnn_jax.nn.conv import resolve_impl

# What the launchers run: XLA:CPU's convolutions on XNNPACK (MDSNN_CPU_CONV=xla for XLA's
# default). Every bench imports this module before its first jax computation.
CONV_LIBRARY = xla_cpu.use_xnnpack_convolutions()


def conv_impl_label(impl: str) -> str:
  """A conv_impl for a table: 'auto' shown with what it resolves to here, 'auto (= xla)'."""
  return impl if impl != "auto" else f"auto (= {resolve_impl(impl)})"


def time_fn(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> float:
  """Median seconds of `fn(*args)` over `repeats` runs, after `warmup` runs (compile included there)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_gflops(m: int = 2048, k: int = 2048, n: int = 2048, dtype=jnp.float32,
                       repeats: int = 5) -> float:
  """Achieved GFLOP/s of one large float32 matmul on the default device (the machine's peak)."""
  a = jnp.ones((m, k), dtype)
  b = jnp.ones((k, n), dtype)
  f = jax.jit(jnp.matmul)
  seconds = time_fn(f, a, b, repeats=repeats)
  return 2.0 * m * k * n / seconds / 1e9


def machine() -> str:
  """CPU model (from /proc/cpuinfo where present), device kind and jax version."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  dev = jax.devices()[0]
  return f"{cpu}, {dev.platform}:{dev.device_kind}, jax {jax.__version__}"


def write_results(name: str, markdown: str, data: dict, out_dir: str | None = None) -> str:
  """Writes results/bench/<name>.md (the printed table + a provenance footer) and
  <name>.json (data + `mdsnn_jax.provenance.record()`: commit, command, CPU model read now,
  load average, date); returns the markdown path. out_dir defaults to results/bench/ in the
  repository (env MDSNN_BENCH_OUT overrides)."""
  import os
  import pathlib

  from mdsnn_jax import provenance
  root = pathlib.Path(__file__).resolve().parents[1]
  out = pathlib.Path(out_dir or os.environ.get("MDSNN_BENCH_OUT") or root / "results" / "bench")
  prov = provenance.record()
  provenance.write_text_atomic(out / f"{name}.md",
                               markdown.rstrip("\n") + f"\n\n{provenance.describe(prov)}\n")
  provenance.write_json_atomic(out / f"{name}.json", {"provenance": prov, **data})
  return str(out / f"{name}.md")


def publish(name: str, lines: list[str], data: dict, out_dir: str | None = None) -> None:
  """Prints a bench's table (its lines) and writes it with `data` by `write_results`,
  printing where."""
  text = "\n".join(lines)
  print(text)
  print("wrote", write_results(name, text, data, out_dir))


class tee_results:
  """`with tee_results('conv'): main()` prints as usual and, on success, also writes what
  was printed to results/bench/conv.md and conv.json (with provenance, `write_results`)."""

  def __init__(self, name: str, out_dir: str | None = None):
    self.name, self.out_dir = name, out_dir

  def __enter__(self):
    import io
    import sys
    self._stdout = sys.stdout
    self._buffer = io.StringIO()
    outer = self

    class _Tee:
      def write(self, s):
        outer._stdout.write(s)
        outer._buffer.write(s)
        return len(s)

      def flush(self):
        outer._stdout.flush()

    sys.stdout = _Tee()
    return self

  def __exit__(self, exc_type, exc, tb):
    import sys
    sys.stdout = self._stdout
    if exc_type is None:
      text = self._buffer.getvalue()
      print("wrote", write_results(self.name, text, {"output": text}, self.out_dir))
    return False
