"""Timing and memory of any predictor: warm-up, then single timed passes (batch-1 latency; throughput per batch
size) that ``bertrt.bench.run`` interleaves across variants, and their summaries.

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


def warm_up(predictor, latency_texts: list[str], texts: list[str], batch_sizes: list[int]) -> None:
    """One untimed pass per shape the timing will use: each latency text alone, then the workload at every batch
    size (oneDNN and ONNX Runtime prepare kernels per input shape on first sight)."""
    for t in latency_texts:
        predictor.predict([t], 1)
    for b in batch_sizes:
        predictor.predict(texts, b)


def latency_pass(predictor, texts: list[str]) -> tuple[list[float], list[float]]:
    """Batch-1 latency of each text, tokenization included, and tokenization alone (ms), one pass."""
    total, tok = [], []
    for t in texts:
        t0 = time.perf_counter()
        predictor.tokenize([t])
        t1 = time.perf_counter()
        predictor.predict([t], 1)
        t2 = time.perf_counter()
        tok.append(1000 * (t1 - t0))
        total.append(1000 * (t2 - t1))
    return total, tok


def throughput_pass(predictor, texts: list[str], batch_size: int) -> tuple[float, float]:
    """One pass over ``texts`` at ``batch_size``: (seconds predicting, tokenization included; seconds tokenizing
    alone)."""
    t0 = time.perf_counter()
    predictor.tokenize(texts)
    t1 = time.perf_counter()
    predictor.predict(texts, batch_size)
    t2 = time.perf_counter()
    return t2 - t1, t1 - t0


def throughput_summary(rates: list[float], tokenize_s: list[float], n_texts: int) -> dict:
    """Median sequences per second of the passes (one per round), their std, and the share of a pass spent
    tokenizing."""
    median = statistics.median(rates)
    return {"seq_per_s": round(median, 2), "std": round(statistics.pstdev(rates), 2), "repeats": len(rates),
            "tokenize_share": round(statistics.median(tokenize_s) * median / n_texts, 4)}


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
