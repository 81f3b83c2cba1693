"""Dynamic batching for concurrent callers, from threads (``submit``/``predict``) or asyncio (``predict_async``).

One worker thread runs one batch at a time, so ONNX Runtime's intra-op threads never compete with a second batch.
A batch is filled in arrival order until adding the next item would exceed ``max_batch_tokens`` *counting padding*
(rows x padded length of the longest row) or ``max_batch_size`` rows, or until ``max_wait_ms`` has passed since its
first item arrived. The queue is bounded: when ``max_queue`` items wait, new work is refused with
``QueueFullError`` instead of growing memory and latency without limit. A request cancelled before its batch
starts (``cancel``, a caller's future cancelled, or an awaiting asyncio task cancelled) is dropped from the queue.

Failures stay with the inputs that caused them: ``run_batch`` may answer an exception instance for one item, which
fails that item alone, and when it raises for a batch of several items, each is re-run apart so that one bad input
fails only its own caller. The worker beats a heartbeat at least once a second while idle and between batches;
``problem()`` says when the thread is dead or stuck in one batch longer than a bound (a liveness probe's signal).
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
    dropped: int  # cancelled (their futures) before the batch started
    failed: int = 0  # items answered with an exception
    batch_error: bool = False  # run_batch raised for the whole batch (its items were then re-run apart)


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
        self._forming: list[_Pending] = []  # the batch the worker is filling (guarded by _cond)
        self.heartbeat = time.monotonic()  # the worker's last sign of life (idle waits wake at least every second)
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

    async def predict_async(self, items: list, tokens: list[int], on_cancel: Callable[[int], None] | None = None,
                            return_exceptions: bool = False) -> list:
        """Await results without blocking the event loop. Cancelling the awaiting task (or any failure) drops the
        items still queued; ``on_cancel(n)`` is then told how many were dropped before inference. With
        ``return_exceptions`` an item that failed answers its exception in its place, and the others still run.

        The futures are awaited through one loop future of their own, not ``asyncio.wrap_future``: cancelling a
        wrapped future cancels its source from a loop callback, before this coroutine runs again, and the worker
        would then discard those items itself and count them as its own ``dropped`` -- the same inputs told twice
        or under the wrong reason. Here only ``cancel`` takes them out, under the lock, and counts them once."""
        futures = self.submit_many(items, tokens)
        try:
            await _all_done(futures)
        except BaseException:
            dropped = self.cancel(futures)
            if on_cancel is not None:
                on_cancel(dropped)
            raise
        return [_outcome(f) if return_exceptions else f.result() for f in futures]

    def cancel(self, futures: list[Future]) -> int:
        """Take these futures' items out of the queue, or out of the batch still being filled, and cancel them;
        returns how many were taken. Items whose batch has started run to the end (their results are discarded)."""
        wanted = {id(f) for f in futures}
        with self._cond:
            removed = [p for p in self._queue if id(p.future) in wanted]
            if removed:
                self._queue = deque(p for p in self._queue if id(p.future) not in wanted)
            forming = [p for p in self._forming if id(p.future) in wanted]
            if forming:  # still filling, not started: take them out too (the list is the worker's own batch)
                self._forming[:] = [p for p in self._forming if id(p.future) not in wanted]
                removed += forming
                self._cond.notify_all()
        for p in removed:
            p.future.cancel()
        return len(removed)

    def problem(self, stale_after: float) -> str | None:
        """None while the worker is alive and beat within ``stale_after`` seconds; else what is wrong."""
        if not self._worker.is_alive():
            return "the batcher thread is dead" if not self._closed else "the batcher is shut down"
        age = time.monotonic() - self.heartbeat
        if age > stale_after:
            return f"the batcher has not beaten for {age:.1f} s (bound {stale_after:g} s): stuck in a batch"
        return None

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
    def _fits(self, batch: list[_Pending], nxt: _Pending) -> bool:
        if len(batch) + 1 > self.max_batch_size:
            return False
        longest = max(nxt.tokens, *(p.tokens for p in batch))
        return (len(batch) + 1) * self.padded_length(longest) <= self.max_batch_tokens

    def _take_batch(self) -> tuple[list[_Pending], int] | None:
        """Under the lock: wait for work, then fill a batch by tokens or time. None when closed and empty.
        The batch being filled is ``self._forming``, so that ``cancel`` can still take items out of it."""
        dropped = 0
        with self._cond:
            batch = self._forming = []
            try:
                while True:
                    while self._queue and (not batch or self._fits(batch, self._queue[0])):
                        p = self._queue.popleft()
                        if p.future.cancelled():
                            dropped += 1
                            continue
                        batch.append(p)
                    if batch and (self._queue or len(batch) >= self.max_batch_size or self._closed):
                        return batch, dropped  # full (the next item does not fit), or shutting down: run now
                    if not batch:
                        if self._closed:
                            return None
                        self.heartbeat = time.monotonic()
                        self._cond.wait(1.0)
                        continue
                    remaining = batch[0].enqueued + self.max_wait - time.perf_counter()
                    if remaining <= 0:
                        return batch, dropped
                    self.heartbeat = time.monotonic()
                    self._cond.wait(min(remaining, 1.0))
            finally:
                self._forming = []

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
            self.heartbeat = time.monotonic()
            failed, batch_error = self._run(live)
            self.heartbeat = time.monotonic()
            infer = time.perf_counter() - started
            if self.on_batch is not None:
                longest = max(p.tokens for p in live)
                stats = BatchStats(size=len(live), tokens=sum(p.tokens for p in live),
                                   padded_tokens=len(live) * self.padded_length(longest),
                                   queue_seconds=[started - p.enqueued for p in live], infer_seconds=infer,
                                   dropped=dropped, failed=failed, batch_error=batch_error)
                try:
                    self.on_batch(stats)
                except Exception:  # metrics must never stop the worker
                    log.exception("on_batch callback failed")


    def _run(self, live: list[_Pending]) -> tuple[int, bool]:
        """Run a batch and settle its futures; returns (items failed, whether the whole batch raised)."""
        try:
            results = self.run_batch([p.item for p in live])
            if len(results) != len(live):
                raise RuntimeError(f"run_batch answered {len(results)} results for {len(live)} items")
        except BaseException as e:  # a failed batch fails its callers, never the worker
            if len(live) == 1:
                live[0].future.set_exception(e)
                return 1, True
            log.warning("a batch of %d failed (%s); re-running its inputs apart", len(live), type(e).__name__)
            failed = 0
            for p in live:  # one bad input must not fail the other callers sharing its batch
                self.heartbeat = time.monotonic()
                failed += self._run([p])[0]
            return failed, True
        failed = 0
        for p, r in zip(live, results):
            if isinstance(r, BaseException):
                p.future.set_exception(r)
                failed += 1
            else:
                p.future.set_result(r)
        return failed, False


def runtime_batcher(runtime, run_batch: Callable[[list], list] | None = None, **options) -> Batcher:
    """A batcher over ``run_batch`` (default ``runtime.run_batch``) whose token budget counts the runtime's
    padding. Items are ``Encoded`` inputs from ``runtime.encode``; pass ``len(encoded)`` as their tokens."""
    from ..tasks.encode import padded_length

    return Batcher(run_batch or runtime.run_batch, padded_length=lambda n: padded_length(n, runtime.max_length),
                   **options)


def _outcome(f: Future) -> Any:
    """A done future's result, or the exception it failed with (shut down unrun: a ``ShutdownError``)."""
    if f.cancelled():
        return ShutdownError("the batcher shut down before this input ran")
    return f.exception() or f.result()


async def _all_done(futures: list[Future]) -> None:
    """Wait until every one of these thread futures is done, without tying their fate to the awaiting task's."""
    if not futures:
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    left = [len(futures)]
    lock = threading.Lock()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    for f in futures:
        f.add_done_callback(one_done)
    await waiter
