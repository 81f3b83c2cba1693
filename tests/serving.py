"""Run a bertrt app with uvicorn on a real loopback socket, in a thread (for server tests), with the same edge
(``EdgeProtocol``: request deadline, connection bound) as ``bertrt serve``."""

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def running(app, tls=None, **limits):
    """Serve ``app`` on 127.0.0.1 (a free port) until the block ends; ``limits``: ``EdgeLimits`` fields; ``tls``:
    uvicorn's ssl_certfile/ssl_keyfile (the URL is then https)."""
    import uvicorn

    from bertrt.runtime.launch import EdgeLimits, uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, EdgeLimits(**{"graceful_timeout": 5.0, **limits}), port=port,
                                           log_level="warning", logs=False, lifespan="on", **(tls or {})))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def samples(text: str) -> dict:
    """Prometheus text -> {'name{labels}': value}."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def scrape(url: str) -> dict:
    import httpx

    return samples(httpx.get(f"{url}/metrics", timeout=10).text)


class GatedSession:
    """Wraps a real session for server tests: run ``gate_run`` (2: the first after the warm-up) waits for
    ``release``, every run sleeps ``delay`` seconds, rows per run are recorded, and ``transform(feeds, outputs)``
    may rewrite the outputs (e.g. to inject NaN)."""

    def __init__(self, inner, gate_run: int | None = 2, delay: float = 0.0, transform=None):
        self.inner, self.device, self.providers = inner, inner.device, inner.providers
        self.input_names = inner.input_names
        self.entered, self.release = threading.Event(), threading.Event()
        self.gate_run, self.delay, self.transform = gate_run, delay, transform
        self.rows: list[int] = []

    @property
    def runs(self) -> int:
        return len(self.rows)

    def run(self, feeds):
        self.rows.append(len(feeds["input_ids"]))
        if self.runs == self.gate_run:
            self.entered.set()
            assert self.release.wait(30)
        time.sleep(self.delay)
        outputs = self.inner.run(feeds)
        return self.transform(feeds, outputs) if self.transform else outputs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(artifact, *args, ready_within: float = 120.0, log_path=None):
    """``bertrt serve ARTIFACT *args`` as a subprocess on 127.0.0.1 (a free port), ready when the block starts and
    stopped (SIGTERM, then SIGKILL) when it ends. Yields (url, process); the log (JSON lines) goes to ``log_path``
    or a temporary file, readable as ``process.log_path``."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    import httpx

    port = free_port()
    log_path = log_path or tempfile.mkstemp(prefix=f"bertrt_serve_{port}_", suffix=".log")[1]
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "bertrt.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_within
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"bertrt serve did not become ready; see {log_path}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
