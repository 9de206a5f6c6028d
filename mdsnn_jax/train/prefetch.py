"""Input off the training step's critical path: batches built and sent to the devices ahead.

A background thread pulls host batches from the training stream, applies `put` (the
host-to-device transfer onto the mesh) and keeps up to `depth` of them ready in a queue.
The main thread only takes the next ready batch, so while the device runs step s the
host is already preparing batch s + 1 … s + depth. One producer and a FIFO queue keep
the stream's order exactly: batch s is still the stream's s-th batch, so resume and the
global-batch-per-step order are unchanged. `depth=0` is the synchronous form.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_DONE = object()


class _Failure:

  def __init__(self, error: BaseException):
    self.error = error


class Prefetcher:
  """Iterator over `put(batch)` for the batches of `batches`, `depth` of them prepared ahead.

  Use as a context manager (or call `close`) so that the thread stops when the loop ends
  early (an exception, a signal): the producer then stops at its next batch.
  """

  def __init__(self, batches: Iterable[Any], put: Callable[[Any], Any], depth: int = 2):
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
      raise ValueError(f"prefetch depth must be an int >= 0 (0: no prefetch), got {depth!r}")
    self._it = iter(batches)
    self._put = put
    self._depth = depth
    self._stop = threading.Event()
    self._thread = None
    if depth > 0:
      self._queue: queue.Queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._produce, name="mdsnn-prefetch", daemon=True)
      self._thread.start()

  def _offer(self, item) -> bool:
    """Puts `item` on the queue unless the consumer has stopped; False when stopped."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    try:
      for batch in self._it:
        if self._stop.is_set() or not self._offer(self._put(batch)):
          return
      self._offer(_DONE)
    except BaseException as e:  # handed to the consumer, raised there with its traceback
      self._offer(_Failure(e))

  def __iter__(self) -> Iterator[Any]:
    return self

  def __next__(self) -> Any:
    if self._thread is None:
      return self._put(next(self._it))
    item = self._queue.get()
    if item is _DONE:
      self._queue.put(_DONE)  # later calls keep raising StopIteration
      raise StopIteration
    if isinstance(item, _Failure):
      raise item.error
    return item

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5.0)

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
