"""Batcher logic against a fake model: token budget with padding, waiting, order under concurrency, a full queue,
cancellation, shutdown. A gate holds the worker inside a first batch so that the queue's contents are known."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bertrt.errors import QueueFullError, ShutdownError
from bertrt.runtime.batcher import Batcher


class Fake:
    """run_batch that records batches, answers f(item), and can hold the worker on an item named 'gate'."""

    def __init__(self, delay=0.0):
        self.batches, self.delay = [], delay
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        if "gate" in items:
            self.entered.set()
            assert self.release.wait(10)
        if "boom" in items:
            raise RuntimeError("model failed")
        time.sleep(self.delay)
        return [("done", item) for item in items]


def gated(fake, **kw):
    b = Batcher(fake, **kw)
    gate = b.submit("gate", 1)
    assert fake.entered.wait(5)
    return b, gate


def test_budget_counts_padding():
    fake = Fake()
    b, gate = gated(fake, max_batch_tokens=100, max_batch_size=8, max_wait_ms=1000)
    sizes = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 10, "long": 60, "f": 5}
    futures = {k: b.submit(k, n) for k, n in sizes.items()}
    fake.release.set()
    assert [f.result(5) for f in futures.values()] == [("done", k) for k in sizes]
    # 5 x 10 = 50 fits; adding the 60-token item would cost 6 x 60 = 360 > 100; then 60 + 5 -> 2 x 60 > 100
    assert fake.batches[1:] == [["a", "b", "c", "d", "e"], ["long"], ["f"]]
    b.close()


def test_padded_length_function_is_used():
    fake = Fake()
    b, gate = gated(fake, max_batch_tokens=64, max_batch_size=8, max_wait_ms=1000,
                    padded_length=lambda n: -(-n // 16) * 16)
    futures = [b.submit(k, 3) for k in "abcde"]  # 3 tokens pad to 16: four rows make the 64 budget
    fake.release.set()
    [f.result(5) for f in futures]
    assert fake.batches[1:] == [["a", "b", "c", "d"], ["e"]]
    b.close()


def test_waits_for_max_wait_then_runs_a_partial_batch():
    fake = Fake()
    b = Batcher(fake, max_batch_tokens=10_000, max_wait_ms=150)
    t = time.perf_counter()
    assert b.submit("x", 4).result(5) == ("done", "x")
    assert time.perf_counter() - t >= 0.14  # it did wait (a busy machine only makes the wait longer)
    b.close()


def test_full_batch_does_not_wait():
    fake = Fake()
    b = Batcher(fake, max_batch_tokens=10_000, max_batch_size=2, max_wait_ms=600_000)
    futures = [b.submit(k, 4) for k in "ab"]
    # had it waited for max_wait (10 minutes) the results would time out; the full batch ran at once
    assert [f.result(60) for f in futures] == [("done", "a"), ("done", "b")]
    b.close(drain=False)


def test_order_under_32_concurrent_callers():
    fake = Fake(delay=0.002)
    b = Batcher(fake, max_batch_tokens=4096, max_batch_size=16, max_wait_ms=2)

    def caller(c):
        items = [f"{c}-{i}" for i in range(1 + c % 5)]
        return items, b.predict(items, [1 + (i * 7 + c) % 30 for i in range(len(items))], timeout=10)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(caller, range(32)))
    for items, results in answers:
        assert results == [("done", x) for x in items]
    assert sorted(x for batch in fake.batches for x in batch) == sorted(x for items, _ in answers for x in items)
    assert max(len(batch) for batch in fake.batches) > 1  # callers really were batched together
    b.close()


def test_order_under_32_concurrent_asyncio_tasks():
    fake = Fake(delay=0.002)
    b = Batcher(fake, max_batch_tokens=4096, max_batch_size=16, max_wait_ms=2)

    async def main():
        async def caller(c):
            items = [f"a{c}-{i}" for i in range(1 + c % 3)]
            return items, await b.predict_async(items, [5] * len(items))

        return await asyncio.gather(*(caller(c) for c in range(32)))

    for items, results in asyncio.run(main()):
        assert results == [("done", x) for x in items]
    assert max(len(batch) for batch in fake.batches) > 1
    b.close()


def test_full_queue_refuses_instead_of_growing():
    fake = Fake()
    b, gate = gated(fake, max_queue=4, max_wait_ms=1)
    futures = [b.submit(k, 1) for k in "abcd"]
    with pytest.raises(QueueFullError, match="queue is full"):
        b.submit("e", 1)
    assert b.depth == 4
    b2_fake = Fake()
    b2, _ = gated(b2_fake, max_queue=4, max_wait_ms=1)
    b2.submit("x", 1)
    with pytest.raises(QueueFullError):
        b2.submit_many(["p", "q", "r", "s"], [1, 1, 1, 1])  # all or none: 1 + 4 > 4
    assert b2.depth == 1
    fake.release.set()
    b2_fake.release.set()
    assert [f.result(5) for f in futures] == [("done", k) for k in "abcd"]
    assert b.submit("e", 1).result(5) == ("done", "e")  # room again once the queue drained
    b.close()
    b2.close()


def test_cancelled_requests_are_dropped_from_their_batch():
    fake = Fake()
    seen = []
    b, gate = gated(fake, max_wait_ms=1, on_batch=seen.append)
    a, c, d = b.submit("a", 1), b.submit("c", 1), b.submit("d", 1)
    assert c.cancel()
    fake.release.set()
    assert a.result(5) == ("done", "a") and d.result(5) == ("done", "d")
    assert fake.batches[1] == ["a", "d"]
    assert seen[-1].dropped == 1 and seen[-1].size == 2
    b.close()


def test_cancelled_asyncio_task_drops_its_items():
    fake = Fake()
    b, gate = gated(fake, max_wait_ms=1)

    async def main():
        task = asyncio.create_task(b.predict_async(["x", "y"], [1, 1]))
        await asyncio.sleep(0.05)
        assert b.depth == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fake.release.set()
        return await b.predict_async(["z"], [1])

    assert asyncio.run(main()) == [("done", "z")]
    assert all("x" not in batch and "y" not in batch for batch in fake.batches)
    b.close()


def test_a_cancelled_task_counts_its_dropped_items_once(monkeypatch):
    """The items of a cancelled awaiting task are still live when ``cancel`` takes them out under the lock, so the
    worker never sees them cancelled and counts them as its own ``dropped`` (the race a disconnect storm hit)."""
    fake, seen, told, at_entry = Fake(), [], [], []
    b, gate = gated(fake, max_wait_ms=1, on_batch=seen.append)
    real_cancel = b.cancel
    monkeypatch.setattr(b, "cancel", lambda fs: (at_entry.extend(f.cancelled() for f in fs), real_cancel(fs))[1])

    async def main():
        task = asyncio.create_task(b.predict_async(list("abcde"), [1] * 5, on_cancel=told.append))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    fake.release.set()
    assert b.predict(["z"], [1], timeout=5) == [("done", "z")]
    assert at_entry == [False] * 5
    assert told == [5] and sum(s.dropped for s in seen) == 0
    assert all(not set("abcde") & set(batch) for batch in fake.batches)
    b.close()


def test_async_items_unrun_at_shutdown_answer_a_shutdown_error():
    fake = Fake()
    b, gate = gated(fake, max_wait_ms=1)

    async def main():
        task = asyncio.create_task(b.predict_async(["x", "y"], [1, 1], return_exceptions=True))
        await asyncio.sleep(0.05)
        closer = threading.Thread(target=b.close, kwargs={"drain": False})
        closer.start()
        got = await task
        fake.release.set()
        closer.join(5)
        return got

    got = asyncio.run(main())
    assert [type(g) for g in got] == [ShutdownError, ShutdownError]


def test_failure_reaches_callers_and_the_worker_survives():
    fake = Fake()
    b = Batcher(fake, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="model failed"):
        b.predict(["boom"], [1], timeout=5)
    assert b.predict(["ok"], [1], timeout=5) == [("done", "ok")]
    b.close()


def test_close_drains_then_refuses():
    fake = Fake()
    b, gate = gated(fake, max_wait_ms=1)
    futures = [b.submit(k, 1) for k in "abc"]
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(ShutdownError):
        b.submit("late", 1)
    fake.release.set()
    closer.join(5)
    assert [f.result(0) for f in futures] == [("done", k) for k in "abc"]
    assert not closer.is_alive()


def test_cancel_takes_items_out_of_the_queue_and_of_the_batch_being_filled():
    fake = Fake()
    seen = []
    b = Batcher(fake, max_wait_ms=400, on_batch=seen.append)
    first = b.submit("a", 1)
    time.sleep(0.1)  # the worker holds "a" in the batch it is filling, waiting for more
    assert b.depth == 0
    assert b.cancel([first]) == 1 and first.cancelled()
    b2 = b.submit("b", 1)
    assert b.cancel([b2, first]) == 1  # "b" waits in the queue or the forming batch; "a" is gone already
    c = b.submit("c", 1)
    assert c.result(5) == ("done", "c")
    assert fake.batches == [["c"]] and seen[-1].dropped == 0
    b.close()


def test_problem_reports_a_stuck_worker_a_dead_thread_and_shutdown():
    fake = Fake()
    b = Batcher(fake, max_wait_ms=1)
    time.sleep(2.5)
    assert b.problem(2.0) is None  # idle for longer than the bound, but beating (every second) while it waits
    gate = b.submit("gate", 1)
    assert fake.entered.wait(5)
    time.sleep(0.4)
    assert "stuck in a batch" in b.problem(0.2)
    fake.release.set()
    gate.result(5)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    live, b._worker = b._worker, dead  # as if the worker thread had died
    assert b.problem(60) == "the batcher thread is dead"
    b._worker = live
    b.close()
    assert b.problem(60) == "the batcher is shut down"


def test_a_failing_batch_is_rerun_apart_and_an_exception_result_fails_its_item_alone():
    fake = Fake()
    seen = []
    b, gate = gated(fake, max_wait_ms=1, on_batch=seen.append)
    futures = [b.submit(k, 1) for k in ("a", "boom", "c")]
    fake.release.set()
    assert futures[0].result(5) == ("done", "a") and futures[2].result(5) == ("done", "c")
    with pytest.raises(RuntimeError, match="model failed"):
        futures[1].result(5)
    assert fake.batches[1:] == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]
    assert (seen[-1].size, seen[-1].failed, seen[-1].batch_error) == (3, 1, True)

    odd = Batcher(lambda items: [ValueError(i) if i == "nan" else i for i in items], max_wait_ms=50)
    x, nan = odd.submit("x", 1), odd.submit("nan", 1)
    assert x.result(5) == "x"
    with pytest.raises(ValueError):
        nan.result(5)
    b.close()
    odd.close()
