"""One local Ray cluster for the Ray tests: 2 CPUs, no dashboard, Serve's proxy on 127.0.0.1 (a free port)."""

import contextlib
import threading
import time


@contextlib.contextmanager
def local_cluster(num_cpus: int = 2, serve_port: int | None = None):
    """Start Ray (and Serve's HTTP proxy when ``serve_port`` is given) for the block; stop both after it."""
    import os

    import ray

    from bertrt.scaleout.proxy import CALLBACK, CALLBACK_ENV

    os.environ[CALLBACK_ENV] = CALLBACK  # inherited by the cluster's processes, so its HTTP proxy loads it
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if serve_port is not None:
            from ray import serve

            serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        yield
    finally:
        if serve_port is not None:
            from ray import serve

            serve.shutdown()
        ray.shutdown()


def replica_counts(app: str = "bertrt", deployment: str = "BertrtReplica") -> dict:
    """{state: count} of the deployment's replicas, e.g. {"RUNNING": 2, "STARTING": 1}."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {str(getattr(k, "value", k)): v for k, v in status.deployments[deployment].replica_states.items()}


def actor_pids(class_name: str) -> list[int]:
    """Process ids of the live actors whose class name contains ``class_name`` (Ray's actor table, which needs no
    dashboard)."""
    import ray._private.state as state

    return sorted(a["Pid"] for a in state.actors().values()
                  if class_name in a.get("ActorClassName", "") and a["State"] == "ALIVE")


def replica_pids() -> list[int]:
    """Process ids of the live bertrt replicas."""
    return actor_pids(":BertrtReplica")


def wait_for(condition, within: float, every: float = 0.25, what: str = "the condition"):
    """Poll ``condition()`` until it returns something truthy (returned) or ``within`` seconds pass (raises)."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within:g} s")
        time.sleep(every)


class Load:
    """``clients`` threads posting ``body`` to ``url`` in a loop until ``stop()``; records every outcome.
    ``codes`` counts HTTP statuses; ``failures`` lists transport errors (connection reset, timeout)."""

    def __init__(self, url: str, body: dict, clients: int, headers: dict | None = None, timeout: float = 120.0):
        self.url, self.body, self.headers, self.timeout = url, body, headers or {}, timeout
        self.codes: dict[int, int] = {}
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.sent = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                with self._lock:
                    self.sent += 1
                t = time.perf_counter()
                try:
                    r = client.post(f"{self.url}/v1/predict", json=self.body, headers=self.headers)
                except httpx.HTTPError as e:
                    with self._lock:
                        self.failures.append(type(e).__name__)
                    continue
                ok = r.status_code == 200 and len(r.json()["outputs"]) == len(self.body["inputs"])
                with self._lock:
                    code = r.status_code if ok or r.status_code != 200 else -1  # -1: a 200 with a wrong answer
                    self.codes[code] = self.codes.get(code, 0) + 1
                    if ok:
                        self.latencies.append(time.perf_counter() - t)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)

    def __exit__(self, *exc):
        self.stop()

    @property
    def answered(self) -> int:
        return sum(self.codes.values()) + len(self.failures)
