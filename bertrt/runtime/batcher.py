"""Dynamic batching for concurrent callers, from threads (``submit``/``predict``) or asyncio (``predict_async``).

One worker thread runs one batch at a time, so ONNX Runtime's intra-op threads never compete with a second batch.
A batch is filled in arrival order until adding the next item would exceed ``max_batch_tokens`` *counting padding*
(rows x padded length of the longest row) or ``max_batch_size`` rows, or until ``max_wait_ms`` has passed since its
first item arrived. The queue is bounded: when ``max_queue`` items wait, new work is refused with
``QueueFullError`` instead of growing memory and latency without limit. A request cancelled before its batch
starts (a caller's future cancelled, or an awaiting asyncio task cancelled) is dropped from the batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InputError, QueueFullError, ShutdownError

log = logging.getLogger("bertrt.batcher")


@dataclass
class BatchStats:
    """What one batch was: passed to ``on_batch`` (the server turns it into Prometheus metrics)."""

    size: int
    tokens: int  # real tokens
    padded_tokens: int  # rows x padded length: the work actually done
    queue_seconds: list[float]  # per item: from submit to the start of its batch
    infer_seconds: float
    dropped: int  # cancelled before the batch started


@dataclass
class _Pending:
    item: Any
    tokens: int
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Feed ``run_batch(items) -> results`` (one result per item, same order) with dynamically formed batches.

    ``padded_length(n)`` is the length a batch whose longest item has ``n`` tokens is padded to (default: ``n``).
    """

    def __init__(self, run_batch: Callable[[list], list], *, max_batch_tokens: int = 8192, max_batch_size: int = 64,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, padded_length: Callable[[int], int] | None = None,
                 on_batch: Callable[[BatchStats], None] | None = None, name: str = "bertrt-batcher"):
        if max_batch_tokens < 1 or max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise InputError("max_batch_tokens, max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self.run_batch, self.on_batch = run_batch, on_batch
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.max_wait, self.max_queue = max_wait_ms / 1000.0, max_queue
        self.padded_length = padded_length or (lambda n: n)
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------------ callers
    @property
    def depth(self) -> int:
        """Items waiting (not counting the batch being run)."""
        return len(self._queue)

    def submit(self, item, tokens: int) -> Future:
        return self.submit_many([item], [tokens])[0]

    def submit_many(self, items: list, tokens: list[int]) -> list[Future]:
        """Queue all of ``items`` or none: raises ``QueueFullError`` if they do not all fit."""
        pending = [_Pending(item, int(n), Future()) for item, n in zip(items, tokens)]
        with self._cond:
            if self._closed:
                raise ShutdownError("the batcher is shut down and accepts no new work")
            if len(self._queue) + len(pending) > self.max_queue:
                raise QueueFullError(f"the queue is full ({len(self._queue)} of {self.max_queue} items waiting); "
                                     "retry later, or raise max_queue if latency allows")
            self._queue.extend(pending)
            self._cond.notify()
        return [p.future for p in pending]

    def predict(self, items: list, tokens: list[int], timeout: float | None = None) -> list:
        """Blocking: queue ``items`` and wait for their results, in order."""
        futures = self.submit_many(items, tokens)
        try:
            return [f.result(timeout) for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    async def predict_async(self, items: list, tokens: list[int]) -> list:
        """Await results without blocking the event loop; cancelling the awaiting task drops the queued items."""
        futures = self.submit_many(items, tokens)
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; with ``drain`` finish what is queued, else cancel it. Waits for the worker."""
        with self._cond:
            self._closed = True
            if not drain:
                while self._queue:
                    self._queue.popleft().future.cancel()
            self._cond.notify_all()
        self._worker.join(timeout)

    # ------------------------------------------------------------------------------------------------ worker
    def _fits(self, batch: list[_Pending], longest: int, nxt: _Pending) -> bool:
        if len(batch) + 1 > self.max_batch_size:
            return False
        return (len(batch) + 1) * self.padded_length(max(longest, nxt.tokens)) <= self.max_batch_tokens

    def _take_batch(self) -> tuple[list[_Pending], int] | None:
        """Under the lock: wait for work, then fill a batch by tokens or time. None when closed and empty."""
        batch: list[_Pending] = []
        longest, dropped, deadline = 0, 0, None
        with self._cond:
            while True:
                while self._queue and (not batch or self._fits(batch, longest, self._queue[0])):
                    p = self._queue.popleft()
                    if p.future.cancelled():
                        dropped += 1
                        continue
                    if not batch:
                        deadline = p.enqueued + self.max_wait
                    batch.append(p)
                    longest = max(longest, p.tokens)
                if batch and (self._queue or len(batch) >= self.max_batch_size or self._closed):
                    return batch, dropped  # full (the next item does not fit), or shutting down: run now
                if not batch:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return batch, dropped
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, dropped = taken
            started = time.perf_counter()
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # False: cancelled meanwhile
            dropped += len(batch) - len(live)
            if not live:
                continue
            try:
                results = self.run_batch([p.item for p in live])
            except BaseException as e:  # a failed batch fails its callers, never the worker
                for p in live:
                    p.future.set_exception(e)
                continue
            infer = time.perf_counter() - started
            for p, r in zip(live, results):
                p.future.set_result(r)
            if self.on_batch is not None:
                longest = max(p.tokens for p in live)
                stats = BatchStats(size=len(live), tokens=sum(p.tokens for p in live),
                                   padded_tokens=len(live) * self.padded_length(longest),
                                   queue_seconds=[started - p.enqueued for p in live], infer_seconds=infer,
                                   dropped=dropped)
                try:
                    self.on_batch(stats)
                except Exception:  # metrics must never stop the worker
                    log.exception("on_batch callback failed")


def runtime_batcher(runtime, **options) -> Batcher:
    """A batcher over ``runtime.run_batch`` whose token budget counts the runtime's padding. Items are
    ``Encoded`` inputs from ``runtime.encode``; pass ``len(encoded)`` as their tokens."""
    from ..tasks.encode import padded_length

    return Batcher(runtime.run_batch, padded_length=lambda n: padded_length(n, runtime.max_length), **options)
