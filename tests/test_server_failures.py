"""Failures are typed, counted and contained: a postprocessing error or a NaN output fails only its own request inside
a shared batch, a request past --timeout answers 504, a wedged batcher fails /healthz, bad limits fail at start-up;
every answer carries a request id and is logged as one JSON line without the text."""

import json
import logging
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from bertrt.errors import InputError
from bertrt.runtime import Runtime
from bertrt.runtime.logs import JsonFormatter
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import GatedSession, running, scrape
except ImportError:
    from serving import GatedSession, running, scrape



@pytest.fixture(scope="module")
def runtime(tiny_artifact):
    return Runtime(tiny_artifact("classify"), device="cpu", threads=1)


def send_all(url, bodies, headers=None):
    """POST each body from its own thread; the responses, in order."""
    out = [None] * len(bodies)

    def send(i):
        out[i] = httpx.post(f"{url}/v1/predict", json=bodies[i], headers=headers[i] if headers else None, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return threads, out


def wait_depth(url, n, limit=10.0):
    end = time.monotonic() + limit
    while scrape(url)["bertrt_queue_depth"] < n:
        assert time.monotonic() < end, f"the queue never held {n} inputs"
        time.sleep(0.02)


def test_a_bad_input_fails_only_its_own_request_in_a_shared_batch(runtime):
    """A crafted model whose logits have one column more than its label table, and that column wins for inputs
    holding a marker word: postprocessing fails (IndexError) for those inputs alone."""
    marker = runtime.encode(["museum"])[0].windows[0].ids[1]

    def extra_label(feeds, outputs):
        marked = (feeds["input_ids"] == marker).any(axis=1)
        extra = np.where(marked, 100.0, -100.0).astype(outputs["logits"].dtype)[:, None]
        return {**outputs, "logits": np.concatenate([outputs["logits"], extra], axis=1)}

    good = ["the team won", "markets fell", "alice met bob"]
    bad = ["the museum in the old town"]
    session = GatedSession(runtime.session, transform=extra_label)
    crafted = Runtime.from_parts(runtime.manifest, runtime.encoder, session)
    app = create_app(ServeConfig(artifact="", max_wait_ms=1), runtime=crafted)
    with running(app) as url:
        first, held = send_all(url, [{"inputs": ["hold the worker"]}])
        assert session.entered.wait(10)
        bodies = [{"inputs": [good[0]]}, {"inputs": [bad[0]]}, {"inputs": [good[1], good[2]]}]
        threads, answers = send_all(url, bodies, [{"X-Request-ID": f"req-{i}"} for i in range(3)])
        wait_depth(url, 4)
        session.release.set()
        for t in first + threads:
            t.join(30)
        assert session.rows[2] == 4  # the four inputs shared one batch, which failed as a whole, then ran apart
        expected = runtime.predict(good)
        assert [a.status_code for a in answers] == [200, 500, 200]
        assert answers[0].json()["outputs"] == [expected[0]] and answers[2].json()["outputs"] == expected[1:]
        err = answers[1].json()
        assert err["request_id"] == answers[1].headers["x-request-id"] == "req-1"
        assert err["error"].startswith("inputs[0]: internal error (IndexError)")
        got = scrape(url)
        assert got['bertrt_requests_total{code="500"}'] == 1 and got['bertrt_requests_total{code="200"}'] == 3
        assert got['bertrt_request_errors_total{reason="internal"}'] == 1
        assert got["bertrt_batch_failures_total"] == 1  # the shared batch (its re-runs apart are part of it)
        assert got['bertrt_request_seconds_count{code="500"}'] == 1


def test_nan_output_is_an_error_for_that_input_only(runtime):
    marker = runtime.encode(["museum"])[0].windows[0].ids[1]

    def poison(feeds, outputs):
        logits = outputs["logits"].copy()
        logits[(feeds["input_ids"] == marker).any(axis=1)] = np.nan
        return {**outputs, "logits": logits}

    session = GatedSession(runtime.session, gate_run=None, transform=poison)
    rt = Runtime.from_parts(runtime.manifest, runtime.encoder, session)
    with running(create_app(ServeConfig(artifact=""), runtime=rt)) as url:
        ok = httpx.post(f"{url}/v1/predict", json={"inputs": ["the team won"]}, timeout=30)
        bad = httpx.post(f"{url}/v1/predict", json={"inputs": ["the team won", "museum town"]}, timeout=30)
        assert ok.status_code == 200 and ok.json()["outputs"] == runtime.predict(["the team won"])
        assert bad.status_code == 500 and bad.json()["error"].startswith("inputs[1]: the model produced a non-finite")
        got = scrape(url)
        assert got['bertrt_request_errors_total{reason="non_finite"}'] == 1
        assert got['bertrt_requests_total{code="200"}'] == 1 and got['bertrt_requests_total{code="500"}'] == 1


def test_timeout_answers_504_and_drops_the_queued_inputs(runtime):
    session = GatedSession(runtime.session)
    rt = Runtime.from_parts(runtime.manifest, runtime.encoder, session)
    with running(create_app(ServeConfig(artifact="", timeout=1.0, max_wait_ms=1), runtime=rt)) as url:
        first, held = send_all(url, [{"inputs": ["hold"]}])
        assert session.entered.wait(10)
        late = httpx.post(f"{url}/v1/predict", json={"inputs": ["a", "b", "c"]}, timeout=30)
        got = scrape(url)
        session.release.set()
        first[0].join(30)
        assert late.status_code == 504 and "--timeout" in late.json()["error"]
        assert got['bertrt_inputs_cancelled_total{reason="timeout"}'] == 3 and got["bertrt_queue_depth"] == 0
        assert held[0].status_code == 504  # the held one was past its deadline too (its batch ran on)
        assert got['bertrt_request_errors_total{reason="timeout"}'] == 2


def test_wedged_batcher_fails_healthz_within_the_bound(runtime):
    session = GatedSession(runtime.session)
    rt = Runtime.from_parts(runtime.manifest, runtime.encoder, session)
    bound = 1.0
    with running(create_app(ServeConfig(artifact="", liveness_timeout=bound), runtime=rt)) as url:
        time.sleep(bound + 0.5)  # idle is not wedged: the worker beats while it waits
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        threads, _ = send_all(url, [{"inputs": ["wedge"]}])
        assert session.entered.wait(10)
        wedged_at, failed = time.monotonic(), None
        while time.monotonic() - wedged_at < bound + 5:
            r = httpx.get(f"{url}/healthz", timeout=10)
            if r.status_code == 503:
                failed = time.monotonic() - wedged_at
                break
            time.sleep(0.1)
        assert failed is not None and "stuck in a batch" in r.json()["reason"]
        assert failed >= bound - 0.2  # not before the bound
        assert scrape(url)["bertrt_batcher_heartbeat_age_seconds"] > bound
        session.release.set()
        threads[0].join(30)
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}


def test_limits_that_cannot_work_are_refused_at_start_up(tmp_path):
    with pytest.raises(InputError, match="--max-items 100 is larger than --max-queue 50"):
        ServeConfig(artifact="", max_items=100, max_queue=50)
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "serve", str(tmp_path), "--max-items", "100",
                        "--max-queue", "50"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: --max-items 100 is larger than --max-queue 50")


def test_request_ids_and_one_json_log_line_per_request(runtime, caplog):
    app = create_app(ServeConfig(artifact="", api_key="k3y-0123456789abcdef"), runtime=runtime)
    secret = "a very private sentence"
    with running(app) as url, caplog.at_level(logging.INFO, logger="bertrt.access"):
        auth = {"Authorization": "Bearer k3y-0123456789abcdef"}
        given = httpx.post(f"{url}/v1/predict", json={"inputs": [secret]}, headers={**auth, "X-Request-ID": "abc.1"})
        minted = httpx.post(f"{url}/v1/predict", json={"inputs": [secret, secret]}, headers=auth)
        odd = httpx.post(f"{url}/v1/predict", json={"inputs": [secret]}, headers={**auth, "X-Request-ID": "x y"})
        denied = httpx.post(f"{url}/v1/predict", json={"inputs": [secret]})
    assert given.headers["x-request-id"] == "abc.1"
    assert re.fullmatch(r"[0-9a-f]{32}", minted.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])  # not a sane token: replaced
    assert denied.status_code == 401 and denied.json()["request_id"] == denied.headers["x-request-id"]
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "bertrt.access"]
    assert [(x["request_id"], x["status"], x["items"]) for x in lines] == [
        ("abc.1", 200, 1), (minted.headers["x-request-id"], 200, 2), (odd.headers["x-request-id"], 200, 1),
        (denied.headers["x-request-id"], 401, 0)]
    assert lines[0]["key_id"] and lines[0]["key_id"] == lines[1]["key_id"] and lines[3]["key_id"] is None
    assert all(isinstance(x["latency_ms"], float) for x in lines) and lines[3]["reason"] == "unauthorized"
    assert secret not in caplog.text and "k3y-0123456789abcdef" not in caplog.text


def test_the_open_file_limit_is_raised_to_fit_max_connections_or_refused(monkeypatch):
    import resource

    from bertrt.runtime.launch import FD_MARGIN, ensure_fd_limit

    set_to = []
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: set_to.append(limits))
    ensure_fd_limit(512)
    assert set_to == []  # 512 + margin fits in 1024
    ensure_fd_limit(2000)
    assert set_to == [(2000 + FD_MARGIN, 4096)]
    with pytest.raises(InputError, match=r"--max-connections 5000 needs .* the hard limit is 4096"):
        ensure_fd_limit(5000)
