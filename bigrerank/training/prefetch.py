"""The next micro-batches drawn and tokenized in a background thread while the current one computes.

The worker runs `produce(epoch, index)` (training/batches.py `draw_groups`: sampling and tokenization, no
collective and no device work) for each position in training order, up to `depth` ahead; the training thread
takes them in the same order, so the batches, and the training, are the same with or without it. `wait_s` counts
the time the training thread spent waiting for data: with depth 0 that is all of the drawing and tokenizing.
An error of the worker (bad data) is raised on the training thread, at the batch it belongs to.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable


class Prefetcher:
    def __init__(self, produce: Callable, positions: Iterable[tuple], depth: int):
        self.produce, self.wait_s = produce, 0.0
        self._positions = iter(positions)
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth:
            self._thread = threading.Thread(target=self._work, name="bigrerank-data", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        for position in self._positions:
            try:
                item = (self.produce(*position), None)
            except Exception as error:  # handed to the training thread with the batch it belongs to
                item = (None, error)
            self._put_until_stopped(item)
            if item[1] is not None or self._stop.is_set():
                return
        self._put_until_stopped((None, StopIteration()))

    def _put_until_stopped(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self):
        """The next batch in training order; StopIteration after the last."""
        start = time.perf_counter()
        try:
            if self._thread is None:
                return self.produce(*next(self._positions))
            item, error = self._queue.get()
            if error is not None:
                raise error
            return item
        finally:
            self.wait_s += time.perf_counter() - start

    def close(self) -> None:
        """Stop the worker (it finishes the batch it is drawing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
