"""Timing and memory of any predictor: warm-up, repeats, latency percentiles, throughput per batch size.

A predictor has ``tokenize(texts)`` (tokenization alone) and ``predict(texts, batch_size) -> labels`` (tokenization
included, batches planned by length the same way for every variant). Model loading happens before any of this, so
it is never in a timed region.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time

import numpy as np


def distribution(ms: list[float]) -> dict:
    """p50/p90/p99, mean and std of a list of milliseconds (numpy's linear-interpolation percentiles)."""
    a = np.asarray(ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(a.mean()), 3), "std": round(float(a.std()), 3), "n": int(a.size)}


def latency(predictor, texts: list[str]) -> tuple[dict, dict]:
    """Batch-1 latency of each text, tokenization included, and tokenization alone (both in ms), after one
    warm-up pass over the same texts (oneDNN and ONNX Runtime prepare kernels per input shape on first sight)."""
    for t in texts:
        predictor.predict([t], 1)
    total, tok = [], []
    for t in texts:
        t0 = time.perf_counter()
        predictor.tokenize([t])
        t1 = time.perf_counter()
        predictor.predict([t], 1)
        t2 = time.perf_counter()
        tok.append(1000 * (t1 - t0))
        total.append(1000 * (t2 - t1))
    return distribution(total), distribution(tok)


def throughput(predictor, texts: list[str], batch_size: int, repeats: int) -> dict:
    """Sequences per second over the whole workload at ``batch_size`` (median of ``repeats`` passes after one
    warm-up pass, which meets every batch shape once), with the std of the passes and the share spent
    tokenizing."""
    predictor.predict(texts, batch_size)
    rates, tok_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.tokenize(texts)
        t1 = time.perf_counter()
        predictor.predict(texts, batch_size)
        t2 = time.perf_counter()
        tok_s.append(t1 - t0)
        rates.append(len(texts) / (t2 - t1))
    median = statistics.median(rates)
    return {"seq_per_s": round(median, 2), "std": round(statistics.pstdev(rates), 2), "repeats": repeats,
            "tokenize_share": round(statistics.median(tok_s) * median / len(texts), 4)}


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every ``interval`` s in a background thread
    (Linux /proc; ``delta_mb`` is None elsewhere). Garbage is collected first so earlier variants do not count."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.delta_mb = interval, None
        self._stop = threading.Event()

    def __enter__(self):
        gc.collect()
        self.base = rss_bytes()
        self.peak = self.base
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            now = rss_bytes() or 0
            self.peak = max(self.peak, now)

    def __exit__(self, *exc):
        if self.base is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes() or 0)
            self.delta_mb = round((self.peak - self.base) / 2 ** 20, 1)
        return False
