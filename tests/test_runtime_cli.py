"""`bertrt predict` (texts, JSONL file, stdin; one-line errors) and `bertrt serve` (auth file, graceful shutdown)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

try:
    from .serving import samples
except ImportError:
    from serving import samples

from bertrt.runtime import Runtime


def bertrt(*args, input=None):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=120)


def test_predict_texts_file_and_stdin(tiny_artifact, tmp_path):
    art = tiny_artifact("classify")
    rt = Runtime(art, device="cpu", threads=1)
    texts = ["Alice met Bob", "北京 😀", "", "word " * 100]
    r = bertrt("predict", art, *texts, "--device", "cpu", "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == json.loads(json.dumps(rt.predict(texts)))

    lines = ['"Alice met Bob"', json.dumps({"text": "Markets fell", "text_pair": "sharply"}), "", '{"text": "x"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = bertrt("predict", art, "-i", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = rt.predict(["Alice met Bob", {"text": "Markets fell", "text_pair": "sharply"}, "x"])
    assert out == json.loads(json.dumps(expected))  # the blank line is not an input
    assert "3/3" in r.stderr  # progress bar on files

    r = bertrt("predict", art, "-i", tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl")
    assert r.returncode == 1 and "--force" in r.stderr

    qa = tiny_artifact("qa")
    item = {"question": "who met Bob?", "context": "Alice met Bob in Paris"}
    r = bertrt("predict", qa, input=json.dumps(item) + "\n")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer == json.loads(json.dumps(Runtime(qa, device="cpu").predict(item)))
    assert item["context"][answer["start"]:answer["end"]] == answer["answer"]


def test_predict_errors_are_one_line(tiny_artifact, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    r = bertrt("predict", tiny_artifact("classify"), "-i", tmp_path / "bad.jsonl")
    assert r.returncode == 1 and "line 2" in r.stderr and "Traceback" not in r.stderr
    r = bertrt("predict", tiny_artifact("qa"), "just text")
    assert r.returncode == 1 and "question" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = bertrt("predict", tiny_artifact("classify"), "x", "--device", "cuda")
    assert r.returncode == 1 and "cuda" in r.stderr and "Traceback" not in r.stderr
    r = bertrt("predict", tmp_path, "x")
    assert r.returncode == 1 and "not a bertrt artifact" in r.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_with_key_file_finishes_in_flight_requests_on_sigterm(tiny_artifact, tmp_path):
    (tmp_path / "key").write_text("k3y-0123456789abcdef\n")
    port = _free_port()
    # a long batching wait keeps requests in flight when SIGTERM arrives
    proc = subprocess.Popen([sys.executable, "-m", "bertrt.cli", "serve", str(tiny_artifact("embed")), "--port",
                             str(port), "--api-key-file", str(tmp_path / "key"), "--device", "cpu", "--threads", "1",
                             "--max-wait-ms", "1500", "--max-batch-size", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert httpx.get(f"{url}/readyz").json()["device"] == "cpu"
        assert httpx.post(f"{url}/v1/predict", json={"inputs": ["x"]}).status_code == 401
        results = []

        def send(i):
            results.append(httpx.post(f"{url}/v1/predict", json={"inputs": [f"secret text {i}"]}, timeout=30,
                                      headers={"Authorization": "Bearer k3y-0123456789abcdef"}))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30  # wait until all 4 are in flight (held by the 1.5 s batching wait)
        while samples(httpx.get(f"{url}/metrics").text).get("bertrt_requests_in_flight", 0) < 4 and not results:
            assert time.monotonic() < deadline, "the 4 requests never were in flight together"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert [r.status_code for r in results] == [200] * 4
        assert all(len(r.json()["outputs"][0]["embedding"]) == 32 for r in results)
        log, _ = proc.communicate(timeout=30)
        # uvicorn re-raises the caught SIGTERM after a clean shutdown, so the exit is "terminated by SIGTERM"
        assert proc.returncode in (0, -signal.SIGTERM), log
        assert "Application shutdown complete" in log
        assert "secret text" not in log  # request text never logged
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
