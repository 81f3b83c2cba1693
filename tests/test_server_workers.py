"""`bertrt serve --workers 2` as a real process: metrics are the same whichever worker answers the scrape, counters
never go back (also when a worker is killed and replaced), every worker reports its own process gauges and a dead
worker's disappear, the metrics directory is removed at exit, and the JSON request log reaches stderr."""

import json
import os
import signal
import tempfile
import time

import httpx

try:
    from .serving import samples, serve_process
except ImportError:
    from serving import samples, serve_process

N = 60


def test_two_workers_report_exact_counts_on_every_scrape(tiny_artifact):
    secret = "private words never logged"
    with serve_process(tiny_artifact("classify"), "--workers", "2", "--threads", "1") as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(N):
                r = client.post("/v1/predict", json={"inputs": [f"{secret} {i}"]}, headers={"X-Request-ID": f"w-{i}"})
                assert r.status_code == 200
        scrapes = []
        for _ in range(10):  # a new connection each time, so the scrapes land on either worker
            scrapes.append(samples(httpx.get(f"{url}/metrics", timeout=10).text))
        assert [s['bertrt_requests_total{code="200"}'] for s in scrapes] == [N] * 10
        assert [s['bertrt_request_seconds_count{code="200"}'] for s in scrapes] == [N] * 10
        assert [s["bertrt_inputs_total"] for s in scrapes] == [N] * 10
        monotone = [k for k in scrapes[0] if k.split("{")[0].endswith(("_total", "_count", "_sum", "_bucket"))]
        assert len(monotone) > 20
        for before, after in zip(scrapes, scrapes[1:]):
            assert all(after[k] >= before[k] for k in monotone), [k for k in monotone if after[k] < before[k]]
        last = scrapes[-1]
        assert last["bertrt_workers_ready"] == 2 and last["bertrt_workers_configured"] == 2
        rss = {k: v for k, v in last.items() if k.startswith("bertrt_process_resident_memory_bytes{")}
        assert len(rss) == 2 and all(v > 10e6 for v in rss.values())  # one per worker pid, tens of MB each
        assert len([k for k in last if k.startswith("bertrt_process_open_fds{")]) == 2
        assert last["bertrt_worker_restarts_total"] == 0
        pids = sorted(int(k.split('"')[1]) for k in rss)
        os.kill(pids[0], signal.SIGKILL)  # a worker dies: uvicorn replaces it; the counters must not go back
        deadline, after = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                after = samples(httpx.get(f"{url}/metrics", timeout=10).text)
            except httpx.TransportError:
                continue
            if after["bertrt_worker_restarts_total"] == 1 and after["bertrt_workers_ready"] == 2:
                break
        assert after["bertrt_worker_restarts_total"] == 1 and after["bertrt_workers_ready"] == 2
        assert after['bertrt_requests_total{code="200"}'] == N and after["bertrt_inputs_total"] == N
        live = sorted(int(k.split('"')[1]) for k in after if k.startswith("bertrt_process_resident_memory_bytes{"))
        assert len(live) == 2 and pids[0] not in live and pids[1] in live  # the dead worker's gauges are gone
    with open(proc.log_path) as f:
        lines = [json.loads(line) for line in f if line.startswith("{")]
    access = [x for x in lines if x["logger"] == "bertrt.access"]
    assert sorted(x["request_id"] for x in access) == sorted(f"w-{i}" for i in range(N))
    assert all(x["status"] == 200 and x["items"] == 1 for x in access)
    ready = [x for x in lines if x["logger"] == "bertrt.server" and x["msg"].startswith("ready")]
    assert len(ready) == 3  # two workers, then the one that replaced the killed worker
    assert secret not in open(proc.log_path).read()
    shared = [x["msg"].rsplit(" ", 1)[1] for x in lines if x["msg"].startswith("2 workers share the metrics directory")]
    assert len(shared) == 1 and shared[0].startswith(tempfile.gettempdir()) and not os.path.exists(shared[0])
