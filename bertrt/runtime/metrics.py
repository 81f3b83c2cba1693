"""Prometheus metrics of the server: true whichever worker answers the scrape.

One process (tests, ``--workers 1``): a registry of its own per app. With ``--workers N``, ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start; every worker then writes its samples to
files there (prometheus_client's multiprocess mode) and any worker's /metrics reads them all. Counters and
histograms are summed over workers, dead ones included, so they never go back when a worker is replaced; gauges say
how they combine (``livesum``: summed over live workers; per-worker ones carry a ``pid`` label). Workers that died
are marked dead at each scrape, so their gauges disappear. Process gauges (RSS, open fds, CPU) are per worker.
"""

from __future__ import annotations

import glob
import os
import re
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import BatchStats

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)
_PID = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_pids(path: str) -> set[int]:
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "*.db")) if (m := _PID.search(f))}
    return {pid for pid in pids if pid != os.getpid() and not _alive(pid)}


def _process_sample() -> tuple[float, float, float]:
    """(resident bytes, open fds, CPU seconds) of this process; -1 where the OS does not say."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = -1
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    t = os.times()
    return float(rss), float(fds), t.user + t.system


class Metrics:
    def __init__(self, device: str, task: str, version: str = "", artifact_sha256: str = "", workers: int = 1):
        self.registry = r = CollectorRegistry()
        self.path = multiprocess_dir()
        restarted = bool(self.path and _dead_pids(self.path))  # a worker that died before: this one replaces it

        def gauge(name, doc, mode, labels=()):
            return Gauge(name, doc, list(labels), registry=r, multiprocess_mode=mode)

        self.requests = Counter("bertrt_requests", "HTTP requests to /v1/predict by status code", ["code"],
                                registry=r)
        self.errors = Counter("bertrt_request_errors", "Refused or failed /v1/predict requests by reason",
                              ["reason"], registry=r)
        self.items = Counter("bertrt_inputs", "Inputs predicted", registry=r)
        self.truncated = Counter("bertrt_inputs_truncated", "Inputs cut to the artifact's max length", registry=r)
        self.request_seconds = Histogram("bertrt_request_seconds", "End-to-end /v1/predict latency by status code",
                                         ["code"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("bertrt_stage_seconds", "Latency per stage: tokenize (per request), queue "
                                       "(per input), inference (per batch)", ["stage"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.batch_size = Histogram("bertrt_batch_size", "Inputs per batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("bertrt_batch_tokens", "Tokens per batch: real, and padded (work done)",
                                      ["kind"], buckets=TOKEN_BUCKETS, registry=r)
        self.batch_failures = Counter("bertrt_batch_failures", "Batches whose inference or postprocessing raised "
                                      "(their inputs were then re-run apart)", registry=r)
        self.cancelled = Counter("bertrt_inputs_cancelled", "Inputs dropped before inference because their "
                                 "request went away (client disconnected, or past --timeout)", ["reason"], registry=r)
        self.edge = Counter("bertrt_connection_events", "Connections cut at the edge: request_timeout (not "
                            "received whole in time), over_connection_limit (answered 503)", ["event"], registry=r)
        self.rate_limited = Counter("bertrt_rate_limited", "Requests answered 429 by --rate-limit, by API key id "
                                    "('-' when keys are off and the limit is per client address)", ["key"],
                                    registry=r)
        self.key_reloads = Counter("bertrt_api_key_reloads", "API key file reloads (SIGHUP), per worker: ok, or "
                                   "failed (the file did not validate; the old keys stayed)", ["result"], registry=r)
        self.restarts = Counter("bertrt_worker_restarts", "Worker processes started to replace one that died",
                                registry=r)
        self.in_flight = gauge("bertrt_requests_in_flight", "/v1/predict requests being handled", "livesum")
        self.connections = gauge("bertrt_open_connections", "Open client connections", "livesum")
        self.admitted = gauge("bertrt_admission_in_use", "/v1/predict requests admitted and not yet answered "
                              "(reading, parsing, tokenizing, queued or running)", "livesum")
        self.admission_limit = gauge("bertrt_admission_limit", "Admission budget (--max-concurrent-requests, "
                                     "summed over workers)", "livesum")
        self.queue_depth = gauge("bertrt_queue_depth", "Inputs waiting in the batchers' queues", "livesum")
        self.queue_capacity = gauge("bertrt_queue_capacity", "Queue bound (--max-queue, summed over workers)",
                                    "livesum")
        self.keys = gauge("bertrt_api_keys", "API keys in force, per worker (0: the API is open)", "liveall")
        self.ready = gauge("bertrt_workers_ready", "Worker processes ready to serve", "livesum")
        self.workers = gauge("bertrt_workers_configured", "Worker processes asked for (--workers)", "max")
        self.heartbeat_age = gauge("bertrt_batcher_heartbeat_age_seconds", "Seconds since a batcher last beat "
                                   "(the oldest over workers)", "livemax")
        self.rss = gauge("bertrt_process_resident_memory_bytes", "Resident memory per worker", "liveall")
        self.fds = gauge("bertrt_process_open_fds", "Open file descriptors per worker", "liveall")
        self.cpu = gauge("bertrt_process_cpu_seconds", "CPU time (user + system) per worker", "liveall")
        self.started = gauge("bertrt_process_start_time_seconds", "Start time per worker (Unix time)", "liveall")
        self.info = gauge("bertrt_info", "Constant 1; labels say what is served", "max",
                          ["device", "task", "version", "artifact_sha256"])
        self.info.labels(device=device, task=task, version=version, artifact_sha256=artifact_sha256).set(1)
        self.workers.set(workers)
        self.started.set(time.time())
        for reason in ("disconnect", "timeout"):
            self.cancelled.labels(reason=reason)  # present at 0, so rate() sees the first one
        for result in ("ok", "failed"):
            self.key_reloads.labels(result=result)
        for code in ("200", "500"):
            self.requests.labels(code=code)
        if restarted:
            self.restarts.inc()
        self._batcher = None

    def watch(self, batcher, max_queue: int, admission_limit: int) -> None:
        """Sample this batcher's queue and heartbeat from now on (``sample`` does it, periodically and on scrape)."""
        self._batcher = batcher
        self.queue_capacity.set(max_queue)
        self.admission_limit.set(admission_limit)

    def sample(self) -> None:
        """Refresh this process's sampled gauges: queue depth, heartbeat age, RSS, fds, CPU."""
        if self._batcher is not None:
            self.queue_depth.set(self._batcher.depth)
            self.heartbeat_age.set(max(0.0, time.monotonic() - self._batcher.heartbeat))
        rss, fds, cpu = _process_sample()
        self.rss.set(rss)
        self.fds.set(fds)
        self.cpu.set(cpu)

    def observe_batch(self, s: BatchStats) -> None:
        self.batch_size.observe(s.size)
        self.batch_tokens.labels(kind="real").observe(s.tokens)
        self.batch_tokens.labels(kind="padded").observe(s.padded_tokens)
        self.stage_seconds.labels(stage="inference").observe(s.infer_seconds)
        for q in s.queue_seconds:
            self.stage_seconds.labels(stage="queue").observe(q)
        if s.dropped:
            self.cancelled.labels(reason="cancelled").inc(s.dropped)
        if s.batch_error:
            self.batch_failures.inc()

    def edge_event(self, event: str) -> None:
        """Called by the connection edge (``edge.EdgeProtocol``) for each connection event."""
        if event == "open":
            self.connections.inc()
        elif event == "close":
            self.connections.dec()
        else:
            self.edge.labels(event=event).inc()

    def render(self) -> bytes:
        self.sample()
        if not self.path:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        for pid in _dead_pids(self.path):
            multiprocess.mark_process_dead(pid, self.path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.path)
        return generate_latest(registry)

    def shutdown(self) -> None:
        """This worker is leaving: its live gauges go with it."""
        self.ready.set(0)
        if self.path:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.path)
