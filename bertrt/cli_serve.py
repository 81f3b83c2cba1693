"""Serving commands of the ``bertrt`` command line: ``predict`` (files and stdin) and ``serve`` (HTTP, one box
or a Ray cluster). Merged into the main app by ``bertrt/cli.py``; thin over ``bertrt.runtime``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .cli_options import BACKEND_HELP, LONG_HELP, TRUSTED_KEY_HELP, Backend, Long

app = typer.Typer(rich_markup_mode=None)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="An artifact directory (model.onnx, tokenizer.json, bertrt.json)."),
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to predict (classify / ner / embed). Omit them "
                                                "to read JSONL from --input or stdin."),
    input: Optional[Path] = typer.Option(None, "-i", "--input", help="JSONL file, one input per line: "
                                         '{"text"} (+ "text_pair" for pairs), {"question", "context"} for qa, '
                                         '{"text", "head": [start, end], "tail": [start, end]} for relation. '
                                         "Default: stdin when no TEXT is given."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write JSONL results here instead of stdout."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when onnxruntime-gpu can use it. Ask for "
                                  "cuda explicitly to fail loudly when the GPU is not really in use."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads (default: every core this process may "
                                          "use). Lower it when other busy processes share the machine."),
    batch_size: int = typer.Option(64, help="Most inputs per batch. Inputs are grouped by length; raise it on a "
                                   "GPU with short texts, lower it to reduce memory."),
    max_batch_tokens: int = typer.Option(16384, help="Most tokens per batch, padding included (rows x padded "
                                         "length). Lower it if memory is tight with long texts."),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
    ray: bool = typer.Option(False, "--ray", help="Run through Ray Data on a pool of Runtime actors (needs "
                             "bertrt[ray]); -i may be a folder of .jsonl files and -o is a folder of part files, "
                             "each row with the input's id (or line number)."),
    address: Optional[str] = typer.Option(None, help="With --ray: the Ray cluster to join; default: a local one."),
    concurrency: str = typer.Option("1,2", help="With --ray: MIN,MAX Runtime actors; Ray adds actors up to MAX "
                                    "while work waits. One actor per core (or GPU) is a good MAX."),
    format: str = typer.Option("jsonl", "--format", help="With --ray: part file format, jsonl or parquet."),
    rows_per_task: int = typer.Option(1000, help="With --ray: input lines per task (and per part file). Smaller "
                                      "spreads work finer and loses less on a retry; larger makes fewer files."),
):
    """Predict with an artifact: one JSON object per input, in input order (labels, entities, answers, vectors)."""
    from .errors import InputError
    from .runtime import Runtime
    from .runtime.jsonl import check_io, predict_stream, read_inputs, run_io

    if ray:
        from .scaleout.cli import predict_ray

        return predict_ray(artifact, input, output, texts=texts, address=address, concurrency=concurrency,
                           fmt=format, rows_per_task=rows_per_task, force=force,
                           runtime_options={"device": device.value, "threads": threads, "max_batch_size": batch_size,
                                            "max_batch_tokens": max_batch_tokens, "long": long.value,
                                            "backend": backend.value,
                                            "trusted_keys": [str(k) for k in trusted_key] if trusted_key else None})
    check_io(texts, input, output, force)
    rt = Runtime(artifact, device=device.value, threads=threads, max_batch_tokens=max_batch_tokens,
                 max_batch_size=batch_size, long=long.value, trusted_keys=trusted_key or None, backend=backend.value)
    if texts and rt.task in ("qa", "relation"):
        fields = '{"question", "context"}' if rt.task == "qa" else '{"text", "head", "tail"}'
        raise InputError(f"a {rt.task} artifact needs {fields} objects: give them as JSONL with --input")
    run_io(texts, input, output, read_inputs,
           lambda items, out, bar: predict_stream(rt, items, out, chunk_size=1024, progress=bar), "predict", "input")


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command()
def serve(
    artifact: Path = typer.Argument(..., help="An artifact directory to serve."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on. Use 0.0.0.0 only behind a firewall or "
                             "with --api-key-file."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="Server processes, each with its own model copy and threads // workers "
                                "ONNX Runtime threads. Raise it when tokenization or JSON, not inference, is the "
                                "bottleneck."),
    api_key_file: Optional[Path] = typer.Option(None, help="File of API keys, one per line as key or name:key "
                                                "(# comments; keys >= 16 visible ASCII characters); clients send "
                                                "'Authorization: Bearer <key>'. Logs and metrics show the name (or "
                                                "a hash prefix), never the key. Edit the file and send SIGHUP to "
                                                "rotate keys without a restart. Without it the API is open."),
    protect_metrics: bool = typer.Option(False, help="Require a key for /metrics and /openapi.json too. Use it "
                                         "when the port is reachable by more than your Prometheus (give "
                                         "Prometheus a key of its own)."),
    rate_limit: Optional[str] = typer.Option(None, help="Requests allowed per API key (per client address "
                                             "without keys), as N/s or N/m; more get 429 + Retry-After. The "
                                             "limit is per worker: with --workers N a caller may get up to N "
                                             "times it. Behind a proxy all clients share its address: use keys."),
    rate_burst: Optional[float] = typer.Option(None, help="Requests a caller may send at once after being idle "
                                               "(the token bucket's size; default: one second's worth of "
                                               "--rate-limit, at least 1). Raise it for bursty clients."),
    ssl_certfile: Optional[Path] = typer.Option(None, help="TLS certificate (PEM, with its chain) to serve "
                                                "HTTPS; needs --ssl-keyfile. Use it when no TLS proxy sits in "
                                                "front, and always with keys on a non-loopback --host."),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="The TLS certificate's private key (PEM)."),
    mask_inputs: bool = typer.Option(False, help="Mask personal data (emails, phones, cards, IDs, ...) in every "
                                     "text before inference, so the model and everything after it never see the "
                                     "raw values. Turn it on when outputs or downstream stores must not hold "
                                     "them; it changes what the model reads. Needs bertrt.mask."),
    mask_logs: Optional[bool] = typer.Option(None, "--mask-logs/--no-mask-logs", help="Mask personal data in log "
                                             "messages and tracebacks (request texts are never logged; a failure's "
                                             "message could quote one). Default: on when bertrt.mask is "
                                             "installed."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when available; cuda fails at startup when "
                                  "the GPU is not really in use."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads per worker (default: cores / workers)."),
    max_batch_tokens: int = typer.Option(8192, help="Token budget of a batch, padding included. Higher raises "
                                         "throughput and latency; lower it when memory is tight."),
    max_batch_size: int = typer.Option(64, help="Most inputs in one batch."),
    max_wait_ms: float = typer.Option(5.0, help="How long a batch waits to fill. Raise it for throughput under "
                                      "heavy load, lower it for latency at light load."),
    max_queue: int = typer.Option(1024, help="Inputs allowed to wait; beyond it requests get 503 instead of "
                                  "ever-growing latency. Size it to what you can serve within your timeout."),
    max_items: int = typer.Option(64, help="Most inputs in one request (more: 413); at most --max-queue."),
    max_chars: int = typer.Option(100_000, help="Most characters in one text field (more: 413). Texts are "
                                  "truncated to the artifact's max length anyway; this bounds tokenization work."),
    max_body_bytes: int = typer.Option(4_000_000, help="Largest request body in bytes (more: 413)."),
    max_concurrent_requests: int = typer.Option(256, help="Admission budget per worker: predict requests admitted "
                                                "at once (reading, tokenizing, queued or running); more get 503 + "
                                                "Retry-After before their body is read. Lower it when memory is "
                                                "tight; raise it when clients send many small requests at once."),
    timeout: float = typer.Option(60.0, help="Seconds a predict request may take from admission to answer (more: "
                                  "504, and its queued inputs are dropped). Set it a little below your clients' or "
                                  "proxy's own timeout."),
    request_timeout: float = typer.Option(30.0, help="Seconds a client has to send a whole request, headers and "
                                          "body (then 408 and close). Bounds slow or idle clients that would hold "
                                          "connections; raise it only for very slow links with large bodies."),
    max_connections: int = typer.Option(512, help="Open client connections per worker; more are answered 503 + "
                                        "Retry-After. The open-file limit is raised to fit."),
    keep_alive: float = typer.Option(75.0, help="Seconds an idle keep-alive connection stays open. Keep it above "
                                     "your load balancer's idle timeout (often 60 s), or it will reuse closed "
                                     "connections."),
    graceful_timeout: float = typer.Option(30.0, help="On SIGTERM, seconds in-flight requests get to finish. "
                                           "Keep it below your orchestrator's kill grace period."),
    liveness_timeout: float = typer.Option(30.0, help="/healthz fails when the batching thread is dead or has "
                                           "been inside one batch longer than this (a wedged worker). Raise it if "
                                           "a single batch can legitimately take longer."),
    log_level: LogLevel = typer.Option(LogLevel.info, help="JSON log lines on stderr; info logs one line per "
                                       "request (id, status, latency, inputs, key id; never the text)."),
    ray: bool = typer.Option(False, "--ray", help="Deploy as a Ray Serve application whose replicas scale with "
                             "load (needs bertrt[ray]); the HTTP API is the same. See README 'Scaling out'."),
    address: Optional[str] = typer.Option(None, help="With --ray: the Ray cluster to join (e.g. auto, "
                                          "ray://head:10001). Default: start a local one."),
    min_replicas: int = typer.Option(1, help="With --ray: fewest replicas; 0 scales to zero when idle (the first "
                                     "request then waits for a replica to load)."),
    max_replicas: int = typer.Option(4, help="With --ray: most replicas; bound it by the cluster's CPUs/GPUs."),
    target_ongoing_requests: float = typer.Option(2.0, help="With --ray: ongoing requests per replica autoscaling "
                                                  "aims for. Lower it for latency, raise it for fewer replicas."),
    upscale_delay: float = typer.Option(10.0, help="With --ray: seconds load must stay above target before "
                                        "replicas are added. Lower it for bursty traffic."),
    downscale_delay: float = typer.Option(60.0, help="With --ray: seconds load must stay below target before "
                                          "replicas are removed. Raise it to avoid flapping."),
    replica_cpus: float = typer.Option(1.0, help="With --ray: CPUs reserved per replica (its ONNX Runtime "
                                       "threads unless --threads is given)."),
    replica_gpus: float = typer.Option(0.0, help="With --ray: GPUs per replica (1 with --device cuda)."),
    print_config: bool = typer.Option(False, "--print-config", help="With --ray: print the equivalent Ray Serve "
                                      "config (for `serve deploy` or a KubeRay RayService) instead of deploying."),
    long: Long = typer.Option(Long.truncate, "--long", help=LONG_HELP),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    backend: Backend = typer.Option(Backend.auto, help=BACKEND_HELP),
):
    """Serve an artifact over HTTP: POST /v1/predict (and /v1/mask with bertrt.mask), /healthz, /readyz, /metrics,
    /openapi.json. SIGHUP reloads --api-key-file."""
    from .runtime.access import KeyRing, parse_rate
    from .runtime.launch import EdgeLimits, check_tls
    from .runtime.launch import serve as run_server
    from .runtime.server import ServeConfig

    if api_key_file is not None:
        KeyRing(str(api_key_file))  # fail now, with one line naming the bad line, before loading anything
    tls = check_tls(str(ssl_certfile) if ssl_certfile else None, str(ssl_keyfile) if ssl_keyfile else None)
    config = ServeConfig(artifact=str(artifact), device=device.value, threads=threads,
                         api_key_file=str(api_key_file) if api_key_file else None, protect_metrics=protect_metrics,
                         rate_limit=parse_rate(rate_limit) if rate_limit is not None else None,
                         rate_burst=rate_burst, mask_inputs=mask_inputs, mask_logs=mask_logs, max_items=max_items,
                         max_chars=max_chars, max_body_bytes=max_body_bytes, max_batch_tokens=max_batch_tokens,
                         max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_concurrent_requests=max_concurrent_requests, timeout=timeout,
                         liveness_timeout=liveness_timeout, long=long.value, backend=backend.value,
                         trusted_keys=[str(k) for k in trusted_key] if trusted_key else None)
    limits = EdgeLimits(request_timeout=request_timeout, max_connections=max_connections, keep_alive=keep_alive,
                        graceful_timeout=graceful_timeout)
    if ray or print_config:
        from .errors import InputError
        from .scaleout.cli import serve_ray

        if tls:
            raise InputError("--ssl-certfile/--ssl-keyfile serve TLS from bertrt's own server; with --ray, terminate "
                             "TLS in front of Ray's HTTP proxy (an ingress or load balancer)")
        serve_ray(config, limits, ray=ray, print_config=print_config, address=address, host=host, port=port,
                  min_replicas=min_replicas, max_replicas=max_replicas,
                  target_ongoing_requests=target_ongoing_requests, upscale_delay_s=upscale_delay,
                  downscale_delay_s=downscale_delay, num_cpus=replica_cpus, num_gpus=replica_gpus)
        return
    run_server(config, limits, host=host, port=port, workers=workers, log_level=log_level.value, tls=tls)
