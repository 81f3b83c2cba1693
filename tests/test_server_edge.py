"""Hostile clients over real sockets on 127.0.0.1: slow and idle connections, too many connections, clients that leave
mid-body or after sending, and admission before any body is read. Every test is bounded by short server deadlines."""

import socket
import threading
import time

import httpx
import pytest

from bertrt.runtime import Runtime
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import GatedSession, running, scrape
except ImportError:
    from serving import GatedSession, running, scrape

KEY = "edge-key-0123456789ab"
AUTH = {"Authorization": f"Bearer {KEY}"}
DEADLINE = 2.5  # --request-timeout in these tests


def connect(url: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[-1].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def read_until_closed(s: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (at most ``limit`` seconds)."""
    data, end = b"", time.monotonic() + limit
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server did not close the connection within {limit} s (got {data[:80]!r})")


def read_response(s: socket.socket, limit: float = 10) -> bytes:
    """One HTTP response (headers and a Content-Length body) from a raw socket."""
    data, end = b"", time.monotonic() + limit
    while time.monotonic() < end:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            if len(rest) >= length:
                return data
        s.settimeout(max(0.01, end - time.monotonic()))
        data += s.recv(4096)
    raise AssertionError(f"no whole response within {limit} s: {data[:80]!r}")


@pytest.fixture(scope="module")
def runtime(tiny_artifact):
    return Runtime(tiny_artifact("classify"), device="cpu", threads=1)


def test_slow_clients_are_cut_at_the_deadline_while_others_are_served(runtime):
    app = create_app(ServeConfig(artifact="", api_key=KEY), runtime=runtime)
    with running(app, request_timeout=DEADLINE, max_connections=300) as url:
        first_open = time.monotonic()
        slow = [connect(url) for _ in range(200)]
        opened = time.monotonic()
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"  # no key, and the headers never end
        for rnd in range(2):  # a header byte per connection every ~0.8 s
            for s in slow:
                try:
                    s.send(head[rnd:rnd + 1])
                except OSError:  # already cut (only on a very slow machine): the reads below still check it
                    pass
            if rnd == 0:
                t = time.perf_counter()
                r = httpx.post(f"{url}/v1/predict", json={"inputs": ["served meanwhile"]}, headers=AUTH, timeout=10)
                served_in, served_at = time.perf_counter() - t, time.monotonic() - first_open
                assert r.status_code == 200 and len(r.json()["outputs"]) == 1
            time.sleep(0.8)
        assert served_at < DEADLINE  # answered while all 200 slow connections were still held
        answers = [read_until_closed(s, DEADLINE + 10) for s in slow]
        closed_after = time.monotonic() - opened
        for s in slow:
            s.close()
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
        assert served_in < 1.0  # the bound: a normal client is served within 1 s meanwhile
        assert closed_after >= DEADLINE - 0.5  # cut by the deadline, not before it
        got = scrape(url)
        assert got['bertrt_connection_events_total{event="request_timeout"}'] == 200
        assert got['bertrt_requests_total{code="200"}'] == 1
        assert got["bertrt_open_connections"] == 1  # only the scrape itself


def test_connection_bound_answers_503_with_retry_after(runtime):
    app = create_app(ServeConfig(artifact=""), runtime=runtime)
    with running(app, request_timeout=DEADLINE, max_connections=5) as url:
        idle = [connect(url) for _ in range(5)]
        time.sleep(0.2)
        extra = connect(url)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(extra, 10)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower()
        for s in idle + [extra]:
            s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the idle ones are gone: room again
            r = httpx.get(f"{url}/healthz", timeout=10)
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200
        assert scrape(url)['bertrt_connection_events_total{event="over_connection_limit"}'] >= 1


def test_keep_alive_closes_idle_connections(runtime):
    app = create_app(ServeConfig(artifact=""), runtime=runtime)
    with running(app, keep_alive=1.0) as url:
        s = connect(url)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        t = time.monotonic()
        answer = read_until_closed(s, 10)
        s.close()
        assert answer.startswith(b"HTTP/1.1 200 ") and 0.8 <= time.monotonic() - t


def test_slow_body_and_mid_body_disconnect_are_counted_not_tracebacks(runtime, caplog):
    app = create_app(ServeConfig(artifact=""), runtime=runtime)
    with running(app, request_timeout=DEADLINE) as url:
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        gone = connect(url)
        gone.sendall(head + b'{"inputs": ["a')
        time.sleep(0.3)
        gone.close()  # mid-body
        slow = connect(url)
        slow.sendall(head + b"{")
        answer = read_until_closed(slow, DEADLINE + 10)  # the body never completes: 408 at the deadline
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        time.sleep(0.2)
        got = scrape(url)
        assert got['bertrt_request_errors_total{reason="disconnected_mid_body"}'] == 2
        assert got['bertrt_requests_total{code="499"}'] == 2
        assert got['bertrt_connection_events_total{event="request_timeout"}'] == 1
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


def test_admission_refuses_before_reading_the_body(runtime):
    session = GatedSession(runtime.session)
    rt = Runtime.from_parts(runtime.manifest, runtime.encoder, session)
    app = create_app(ServeConfig(artifact="", max_concurrent_requests=2, max_wait_ms=1), runtime=rt)
    with running(app) as url:
        results = []
        threads = [threading.Thread(target=lambda: results.append(httpx.post(
            f"{url}/v1/predict", json={"inputs": ["held"]}, timeout=30))) for _ in range(2)]
        threads[0].start()
        assert session.entered.wait(10)  # the first is inside its batch; the second waits in the queue
        threads[1].start()
        deadline = time.monotonic() + 10
        while scrape(url)["bertrt_admission_in_use"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        s = connect(url)  # declares a body it never sends: refused from the headers alone
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        answer = read_response(s)
        s.close()
        got = scrape(url)
        session.release.set()
        for t in threads:
            t.join(30)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower()
        assert b"--max-concurrent-requests" in answer and b"request_id" in answer
        assert got["bertrt_admission_in_use"] == 2 and got["bertrt_admission_limit"] == 2
        assert got['bertrt_request_errors_total{reason="overloaded"}'] == 1
        assert [r.status_code for r in results] == [200, 200]
        assert scrape(url)["bertrt_admission_in_use"] == 0


def test_disconnect_storm_drops_abandoned_work(runtime):
    """20 requests of 64 long texts (~40 s of queued work at 0.25 s per batch of 8) whose clients leave 50 ms after
    their work is queued: a normal request sent right after is answered within seconds, and every input that never
    ran is counted as cancelled. (Clients that leave before their body was read are the mid-body test's case.)"""
    session = GatedSession(runtime.session, gate_run=None, delay=0.25)
    rt = Runtime.from_parts(runtime.manifest, runtime.encoder, session)
    app = create_app(ServeConfig(artifact="", max_batch_size=8, max_wait_ms=1, max_queue=2048), runtime=rt)
    texts = [("word " * 180 + str(i)) for i in range(64)]  # long (truncated to 64 tokens), under 64 KiB a request
    body = httpx.Request("POST", "http://x", json={"inputs": texts}).content
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with running(app) as url:
        storm = []
        for _ in range(20):
            s = connect(url)
            s.sendall(head + body)
            storm.append(s)
        deadline = time.monotonic() + 30
        while scrape(url).get('bertrt_stage_seconds_count{stage="tokenize"}', 0) < 20:  # all 20 queued
            assert time.monotonic() < deadline, "the storm's requests were never all queued"
            time.sleep(0.01)
        time.sleep(0.05)
        for s in storm:
            s.close()
        r = httpx.post(f"{url}/v1/predict", json={"inputs": ["normal"]}, timeout=60)
        ran_before_it = sum(session.rows) - 1 - 1  # storm rows run before the normal answer (minus warm-up, itself)
        assert r.status_code == 200
        # Without cancellation the normal request waits behind all 1,280 abandoned inputs (FIFO, ~40 s of batches):
        # counted, not timed, so a loaded machine cannot break it.
        assert ran_before_it <= 20 * 64 // 2
        deadline = time.monotonic() + 60  # the server notices each disconnect on its own schedule: wait for all 20
        while True:
            got = scrape(url)
            storm_rows = sum(session.rows) - 1 - 1
            cancelled = got.get('bertrt_inputs_cancelled_total{reason="disconnect"}', 0)
            settled = (got.get('bertrt_requests_total{code="499"}', 0) == 20 and got.get("bertrt_queue_depth") == 0
                       and cancelled == 20 * 64 - storm_rows)
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got['bertrt_request_errors_total{reason="client_disconnected"}'] == 20
        assert got['bertrt_requests_total{code="499"}'] == 20
        assert cancelled == 20 * 64 - storm_rows  # every storm input either ran (rows the session saw) or was counted
        assert got.get('bertrt_inputs_cancelled_total{reason="cancelled"}', 0) == 0  # each counted once, as a disconnect
        assert cancelled >= 20 * 64 // 2  # most of the abandoned work never ran
        assert got["bertrt_queue_depth"] == 0


def test_large_bodies_are_parsed_and_rendered_off_the_event_loop(runtime, monkeypatch):
    import bertrt.runtime.server as server

    threads = []
    for name in ("parse_request", "render"):
        real = getattr(server, name)
        monkeypatch.setattr(server, name, lambda *a, _real=real, _name=name: (
            threads.append((_name, threading.current_thread().name)), _real(*a))[1])
    app = create_app(ServeConfig(artifact="", max_chars=100_000), runtime=runtime)
    with running(app) as url:
        small = httpx.post(f"{url}/v1/predict", json={"inputs": ["small"]}, timeout=30)
        loop_thread = threads[0][1]  # a small body is parsed right on the event loop's thread
        big = httpx.post(f"{url}/v1/predict", json={"inputs": ["big " * 20_000]}, timeout=30)
    assert small.status_code == big.status_code == 200
    assert [n for n, _ in threads] == ["parse_request", "render"] * 2
    assert threads[1][1] == loop_thread and threads[2][1] != loop_thread and threads[3][1] != loop_thread
