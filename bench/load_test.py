"""Bounded load test of `bertrt serve` on loopback: N requests, C concurrent, zero errors expected.

For each configuration asked (``--workers 1 2``, each ``--slow-clients 0 100``) it starts the server as a subprocess
on 127.0.0.1 (a free port), waits for /readyz, and sends the requests with httpx from C concurrent asyncio clients.
Slow clients, when asked, connect first and trickle a header byte a second without an API key (reconnecting when the
server's request deadline cuts them), so they hold connections for the whole run, as a slowloris attack would.
Prints one Markdown row per configuration: p50/p90/p99/max latency of the normal clients, throughput, errors, mean
batch size, and how many slow connections the server cut. Exits 1 if any normal request failed.

    python bench/load_test.py                                   # a tiny classify artifact built here (needs torch)
    python bench/load_test.py -n 5000 -c 64 --workers 1 2 --slow-clients 0 100
    python bench/load_test.py --artifact ART -n 2000 -c 32 --threads 2 --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORDS = ("the market fell sharply as investors worried about rates while the team won the final match "
         "北京 上海 😀 café naïve").split()


def payload(task: str, rng: random.Random, items: int) -> dict:
    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))

    if task == "qa":
        return {"inputs": [{"question": text()[:40], "context": text()} for _ in range(items)]}
    return {"inputs": [text() for _ in range(items)]}


async def slow_client(host: str, port: int, stop: asyncio.Event, cut: list) -> None:
    """Trickle a header a byte a second; when the server hangs up, count it and come back."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            for i in range(len(head)):
                writer.write(head[i:i + 1])
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1), timeout=1.0)
                except asyncio.TimeoutError:
                    if stop.is_set():
                        break
                    continue
                cut.append(1)  # the server answered (408) or hung up: its deadline cut us
                break
        except (ConnectionError, OSError):
            cut.append(1)
        finally:
            writer.close()


async def run_load(url: str, task: str, n: int, concurrency: int, items: int, seed: int, slow: int):
    import httpx

    rng = random.Random(seed)
    bodies = [payload(task, rng, items) for _ in range(n)]
    latencies, errors, cut = [], [], []
    stop = asyncio.Event()
    host, port = url.split("//")[1].split(":")
    slowpokes = [asyncio.create_task(slow_client(host, int(port), stop, cut)) for _ in range(slow)]
    await asyncio.sleep(2.0 if slow else 0)  # the slow clients are connected before the load starts
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
    stop.set()
    await asyncio.gather(*slowpokes, return_exceptions=True)
    return latencies, errors, wall, metrics, len(cut)


def one_run(art: Path, task: str, args, workers: int, slow: int) -> dict:
    from tests.serving import samples, serve_process

    server_args = ["--workers", workers, "--max-wait-ms", args.max_wait_ms, "--max-queue",
                   max(1024, 4 * args.concurrency * args.items), "--request-timeout", args.request_timeout]
    if args.threads:
        server_args += ["--threads", args.threads]
    with serve_process(art, *server_args) as (url, _):
        latencies, errors, wall, metrics, cut = asyncio.run(run_load(url, task, args.requests, args.concurrency,
                                                                    args.items, args.seed, slow))
    got = samples(metrics)
    ms = sorted(1000 * x for x in latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else [float("nan")] * 99
    return {"workers": workers, "slow_clients": slow, "requests": args.requests, "concurrency": args.concurrency,
            "items": args.items, "ok": len(ms), "errors": len(errors), "error_kinds": sorted(set(map(str, errors))),
            "p50_ms": statistics.median(ms) if ms else None, "p90_ms": q[89], "p99_ms": q[98],
            "max_ms": ms[-1] if ms else None, "requests_per_s": len(ms) / wall, "wall_s": wall,
            "mean_batch": got.get("bertrt_batch_size_sum", 0) / max(got.get("bertrt_batch_size_count", 0), 1),
            "slow_cut_by_deadline": got.get('bertrt_connection_events_total{event="request_timeout"}', 0),
            "slow_reconnects_seen": cut}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, help="artifact to serve (default: build a tiny classify one)")
    ap.add_argument("-n", "--requests", type=int, default=2000, help="total requests per configuration")
    ap.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent normal clients")
    ap.add_argument("--items", type=int, default=1, help="inputs per request")
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="server worker counts to run")
    ap.add_argument("--slow-clients", type=int, nargs="+", default=[0], help="slow-client counts to run with")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="the server's --request-timeout")
    ap.add_argument("--threads", type=int, default=None, help="server ONNX Runtime threads per worker")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="server batching wait")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    art = args.artifact
    if art is None:
        from tests.artifacts import build_artifact

        art = build_artifact("classify", Path(tempfile.mkdtemp(prefix="load_test_")) / "art")
    task = json.loads((Path(art) / "bertrt.json").read_text())["task"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"task {task}, {args.requests} requests x {args.items} inputs, {args.concurrency} concurrent, threads "
          f"{args.threads or 'default'}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load:.1f} at start, 127.0.0.1\n")
    print("| workers | slow clients | ok | errors | p50 ms | p90 ms | p99 ms | max ms | req/s | mean batch | "
          "slow cut by deadline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for workers in args.workers:
        for slow in args.slow_clients:
            r = one_run(Path(art), task, args, workers, slow)
            rows.append(r)
            print(f"| {workers} | {slow} | {r['ok']} | {r['errors']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['requests_per_s']:.0f} | {r['mean_batch']:.1f} | "
                  f"{r['slow_cut_by_deadline']:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
