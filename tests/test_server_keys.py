"""Key rotation in a real `bertrt serve` process, with one worker and with two: while three threads send a bounded
stream of requests, the key file changes and SIGHUP arrives. The key that stays never fails, the removed key is
refused (401) once the reload is confirmed, the added key works, a file that fails validation keeps the old keys,
and no process dies of SIGHUP. Events are ordered by the metrics (reloads counted per worker), never by sleeps."""

import json
import os
import signal
import threading
import time

import httpx
import pytest

try:
    from .serving import samples, serve_process
except ImportError:
    from serving import samples, serve_process

A, B, C = "alpha-key-0123456789", "bravo-key-0123456789", "charlie-key-0123456789"


def write(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # how a deploy tool swaps a file: readers see the old one or the new one


def scrape(url):
    return samples(httpx.get(f"{url}/metrics", timeout=10).text)


def wait_for(url, name, value, within=60.0):
    deadline = time.monotonic() + within
    while scrape(url).get(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_keys_under_load(tiny_artifact, tmp_path, workers):
    path = tmp_path / "keys"
    write(path, f"alpha:{A}\nbravo:{B}\n")
    args = ("--api-key-file", path, "--workers", workers, "--threads", "1")
    with serve_process(tiny_artifact("classify"), *args) as (url, proc):
        wait_for(url, "bertrt_workers_ready", workers)
        hup, confirmed, done = threading.Event(), threading.Event(), threading.Event()
        results = []  # (sent after the reload was confirmed, answered before SIGHUP was sent, key, status)
        lock = threading.Lock()

        def stream(keys):
            after = 0
            for i in range(300):  # bounded; ends once 15 requests went out after the confirmed reload
                if after >= 15:
                    break
                key = keys[i % len(keys)]
                late = confirmed.is_set()
                r = httpx.post(f"{url}/v1/predict", json={"inputs": [f"request {i}"]}, timeout=60,
                               headers={"Authorization": f"Bearer {key}"})  # a new connection: either worker
                with lock:
                    results.append((late, not hup.is_set(), key, r.status_code))
                after += late
                if len(results) >= 30:
                    done.set()

        threads = [threading.Thread(target=stream, args=(ks,)) for ks in ([A], [A, B], [B, A])]
        for t in threads:
            t.start()
        assert done.wait(120)  # the stream is flowing
        write(path, f"alpha:{A}\ncharlie:{C}\n")
        hup.set()
        proc.send_signal(signal.SIGHUP)
        wait_for(url, 'bertrt_api_key_reloads_total{result="ok"}', workers)  # every worker has reloaded
        confirmed.set()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        added = httpx.post(f"{url}/v1/predict", json={"inputs": ["x"]}, headers={"Authorization": f"Bearer {C}"})
        write(path, f"alpha:{A}\ncharlie:short\n")  # a bad edit: refused, the current keys stay
        proc.send_signal(signal.SIGHUP)
        wait_for(url, 'bertrt_api_key_reloads_total{result="failed"}', workers)
        kept = [httpx.post(f"{url}/v1/predict", json={"inputs": ["x"]}, timeout=60,
                           headers={"Authorization": f"Bearer {k}"}).status_code for k in (A, B, C)]
        last = scrape(url)
        assert proc.poll() is None  # nobody died of SIGHUP
    stays = [s for _, _, k, s in results if k == A]
    removed_early = [s for _, early, k, s in results if k == B and early]
    removed_late = [s for late, _, k, s in results if k == B and late]
    assert len(stays) >= 30 and stays == [200] * len(stays)  # zero failed requests for the key that stays
    assert len(removed_early) >= 5 and removed_early == [200] * len(removed_early)  # valid until the reload
    assert len(removed_late) >= 10 and removed_late == [401] * len(removed_late)  # refused from then on
    assert {s for _, _, k, s in results if k == B} <= {200, 401}  # in between: one or the other, nothing else
    assert added.status_code == 200 and kept == [200, 401, 200]
    assert [v for k, v in last.items() if k.split("{")[0] == "bertrt_api_keys"] == [2.0] * workers  # per worker
    with open(proc.log_path) as f:
        text = f.read()
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    messages = [x["msg"] for x in lines if x["logger"] == "bertrt.server"]
    assert messages.count("API keys reloaded: 2 keys (alpha, charlie)") == workers
    assert sum("API key reload failed; the 2 current keys stay in force" in m and "(key 'charlie')" in m
               for m in messages) == workers
    if workers == 2:
        assert messages.count("SIGHUP: the 2 workers reload the API key file") == 2
    access = [x for x in lines if x["logger"] == "bertrt.access"]
    assert {x["key_id"] for x in access if x["status"] == 200} == {"alpha", "bravo", "charlie"}
    assert A not in text and B not in text and C not in text
