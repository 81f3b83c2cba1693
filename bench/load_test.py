"""Bounded load test of `bertrt serve` on loopback: N requests, C concurrent, zero errors expected.

Starts the server as a subprocess on 127.0.0.1 (a free port), waits for /readyz, sends the requests with httpx from
C concurrent asyncio clients, then prints p50/p90/p99 latency, throughput and the error count, and scrapes the
server's batch-size metric. Exits 1 if any request failed.

    python bench/load_test.py                          # a tiny classify artifact built here (needs torch)
    python bench/load_test.py --artifact ART -n 2000 -c 32 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the market fell sharply as investors worried about rates while the team won the final match "
         "北京 上海 😀 café naïve").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(task: str, rng: random.Random, items: int) -> dict:
    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))

    if task == "qa":
        return {"inputs": [{"question": text()[:40], "context": text()} for _ in range(items)]}
    return {"inputs": [text() for _ in range(items)]}


async def run_load(url: str, task: str, n: int, concurrency: int, items: int, seed: int):
    import httpx

    rng = random.Random(seed)
    bodies = [payload(task, rng, items) for _ in range(n)]
    latencies, errors = [], []
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker():
            while not queue.empty():
                body = queue.get_nowait()
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", json=body)
                    ok = r.status_code == 200 and len(r.json()["outputs"]) == len(body["inputs"])
                    (latencies if ok else errors).append(time.perf_counter() - t if ok else r.status_code)
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        metrics = (await client.get("/metrics")).text
    return latencies, errors, wall, metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, help="artifact to serve (default: build a tiny classify one)")
    ap.add_argument("-n", "--requests", type=int, default=2000, help="total requests")
    ap.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent clients")
    ap.add_argument("--items", type=int, default=1, help="inputs per request")
    ap.add_argument("--threads", type=int, default=None, help="server ONNX Runtime threads")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="server batching wait")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    art = args.artifact
    if art is None:
        sys.path.insert(0, str(REPO))
        from tests.artifacts import build_artifact

        art = build_artifact("classify", Path(tempfile.mkdtemp(prefix="load_test_")) / "art")
    task = json.loads((Path(art) / "bertrt.json").read_text())["task"]
    port = free_port()
    cmd = [sys.executable, "-m", "bertrt.cli", "serve", str(art), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(4 * args.concurrency *
                                                                                         args.items)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = open(Path(tempfile.gettempdir()) / f"load_test_server_{port}.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            print(f"server did not become ready; see {log.name}")
            return 1
        latencies, errors, wall, metrics = asyncio.run(run_load(url, task, args.requests, args.concurrency,
                                                               args.items, args.seed))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    ms = sorted(1000 * x for x in latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else [0.0] * 99
    batch_sum = sum(float(l.split()[1]) for l in metrics.splitlines() if l.startswith("bertrt_batch_size_sum"))
    batch_count = sum(float(l.split()[1]) for l in metrics.splitlines() if l.startswith("bertrt_batch_size_count"))
    print(f"task {task}, {args.requests} requests x {args.items} inputs, {args.concurrency} concurrent, "
          f"threads {args.threads or 'default'}, {os.cpu_count()} CPUs")
    print(f"ok {len(ms)}, errors {len(errors)}{' ' + str(sorted(set(map(str, errors)))) if errors else ''}")
    if ms:
        print(f"latency ms: p50 {statistics.median(ms):.1f}  p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {ms[-1]:.1f}")
    print(f"throughput: {len(ms) / wall:.0f} requests/s, {len(ms) * args.items / wall:.0f} inputs/s "
          f"(wall {wall:.1f} s); mean batch size {batch_sum / max(batch_count, 1):.1f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
