"""`bertrt serve --ray` on a local Ray cluster: throughput and latency with 1 vs 2 fixed replicas under the same
closed-loop load, and the time from a load step to the second replica being ready (autoscaling 1 -> 2).

    python bench/ray_scaling.py                           # a tiny classify artifact built here (needs torch)
    python bench/ray_scaling.py --artifact ART --clients 16 --seconds 20 --json out.json

Prints one Markdown row per replica count and the scale-up time. Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TEXTS = ["the market fell sharply as investors worried about rates", "the team won the final match",
         "北京 上海 café naïve"]


def deploy(art: str, **scaling) -> None:
    from ray import serve

    from bertrt.runtime.server import ServeConfig
    from bertrt.scaleout.online import APP_NAME, Scaling, build, builder_args

    config = ServeConfig(artifact=art, device="cpu", threads=1)
    serve.run(build(builder_args(config, Scaling(num_cpus=0.5, graceful_timeout=10.0, **scaling))), name=APP_NAME,
              route_prefix="/")


def fixed(url: str, art: str, replicas: int, clients: int, seconds: float) -> dict:
    from tests.ray_cluster import Load, replica_counts, wait_for

    deploy(art, min_replicas=replicas, max_replicas=replicas)
    wait_for(lambda: replica_counts() == {"RUNNING": replicas}, within=300, what=f"{replicas} replicas")
    with Load(url, {"inputs": TEXTS}, clients) as load:
        time.sleep(2.0)  # warm-up, not counted
        n0, t0 = len(load.latencies), time.perf_counter()
        time.sleep(seconds)
        lat, wall = load.latencies[n0:], time.perf_counter() - t0
    ms = sorted(1000 * x for x in lat)
    q = statistics.quantiles(ms, n=100)
    return {"replicas": replicas, "clients": clients, "ok": len(ms), "failed": load.answered - load.codes.get(200, 0),
            "requests_per_s": len(ms) / wall, "p50_ms": statistics.median(ms), "p99_ms": q[98]}


def scale_up(url: str, art: str, clients: int) -> dict:
    from tests.ray_cluster import Load, replica_counts, wait_for

    deploy(art, min_replicas=1, max_replicas=2, target_ongoing_requests=2, upscale_delay_s=1.0,
           downscale_delay_s=3.0, look_back_period_s=2.0, metrics_interval_s=0.5)
    wait_for(lambda: replica_counts() == {"RUNNING": 1}, within=300, what="1 replica")
    with Load(url, {"inputs": TEXTS}, clients) as load:
        t0 = time.perf_counter()
        wait_for(lambda: replica_counts().get("RUNNING", 0) >= 2, within=300, every=0.1, what="2 replicas")
        ready = time.perf_counter() - t0
    t1 = time.perf_counter()
    wait_for(lambda: replica_counts() == {"RUNNING": 1}, within=300, every=0.1, what="back to 1 replica")
    return {"load_step_to_second_replica_s": ready, "load_stop_to_one_replica_s": time.perf_counter() - t1,
            "failed": load.answered - load.codes.get(200, 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="artifact to serve (default: build a tiny classify one)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per replica count")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    from tests.ray_cluster import local_cluster
    from tests.serving import free_port

    art = args.artifact
    if art is None:
        from tests.artifacts import build_artifact

        art = build_artifact("classify", Path(tempfile.mkdtemp()) / "art")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with local_cluster(num_cpus=2, serve_port=port):
        rows = [fixed(url, str(art), n, args.clients, args.seconds) for n in (1, 2)]
        step = scale_up(url, str(art), args.clients)
    print(f"{args.clients} closed-loop clients, 3 short texts per request, {args.seconds:g} s measured each\n")
    print("| replicas | ok | failed | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['ok']} | {r['failed']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} |")
    print(f"\nload step -> second replica RUNNING: {step['load_step_to_second_replica_s']:.1f} s; load stop -> back "
          f"to 1 replica: {step['load_stop_to_one_replica_s']:.1f} s; failed during the step: {step['failed']}")
    if args.json:
        args.json.write_text(json.dumps({"fixed": rows, "scale_up": step}, indent=2))
    return 1 if any(r["failed"] for r in rows) or step["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
