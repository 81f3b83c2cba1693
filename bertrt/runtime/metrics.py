"""Prometheus metrics of the server, in a registry of their own (one per app, so tests and workers do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import BatchStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    def __init__(self, device: str, task: str):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("bertrt_requests", "HTTP requests to /v1/predict by status code", ["code"],
                                registry=r)
        self.errors = Counter("bertrt_request_errors", "Refused or failed /v1/predict requests by reason",
                              ["reason"], registry=r)
        self.items = Counter("bertrt_inputs", "Inputs predicted", registry=r)
        self.truncated = Counter("bertrt_inputs_truncated", "Inputs cut to the artifact's max length", registry=r)
        self.request_seconds = Histogram("bertrt_request_seconds", "End-to-end /v1/predict latency",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("bertrt_stage_seconds", "Latency per stage: tokenize (per request), queue "
                                       "(per input), inference (per batch)", ["stage"], buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.batch_size = Histogram("bertrt_batch_size", "Inputs per batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("bertrt_batch_tokens", "Tokens per batch: real, and padded (work done)",
                                      ["kind"], buckets=TOKEN_BUCKETS, registry=r)
        self.dropped = Counter("bertrt_inputs_cancelled", "Queued inputs dropped because their request was "
                               "cancelled", registry=r)
        self.queue_depth = Gauge("bertrt_queue_depth", "Inputs waiting in the batcher's queue", registry=r)
        self.info = Gauge("bertrt_info", "Constant 1; labels say what is served", ["device", "task"], registry=r)
        self.info.labels(device=device, task=task).set(1)

    def observe_batch(self, s: BatchStats) -> None:
        self.batch_size.observe(s.size)
        self.batch_tokens.labels(kind="real").observe(s.tokens)
        self.batch_tokens.labels(kind="padded").observe(s.padded_tokens)
        self.stage_seconds.labels(stage="inference").observe(s.infer_seconds)
        for q in s.queue_seconds:
            self.stage_seconds.labels(stage="queue").observe(q)
        if s.dropped:
            self.dropped.inc(s.dropped)

    def render(self) -> bytes:
        return generate_latest(self.registry)
