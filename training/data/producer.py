"""Background work for the loader: the thread that runs an epoch's batch generator behind a bounded prefetch
queue, and the keyed decode futures."""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Iterator
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Background production of one epoch's batches


class _Producer:
    """Runs a batch generator in a thread and hands its batches over a bounded queue (the prefetch)."""

    def __init__(self, batches: Iterator[Any], depth: int) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(batches,), name="loader-batches", daemon=True)
        self.thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[Any]) -> None:
        try:
            for batch in batches:
                if not self._put(("batch", batch)):
                    return
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(("error", e))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # runs the generator's cleanup (cancels queued decodes) in the thread that ran it

    def get(self) -> tuple[str, Any]:
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    return ("error", RuntimeError("the loader's batch thread stopped without a result"))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


class _Keyed:
    """A decode future and the stream indices of its rows, in the order it returns them."""

    __slots__ = ("future", "streams")

    def __init__(self, future: cf.Future, streams: list[int]) -> None:
        self.future, self.streams = future, streams

    def result(self) -> dict[int, Any]:
        return dict(zip(self.streams, self.future.result(), strict=True))
