"""HTTP server: a thin starlette layer over ``Runtime`` + ``Batcher``, run by uvicorn.

POST /v1/predict {"inputs": [...]} -> {"outputs": [...]}; GET /healthz, /readyz (device really in use), /metrics
(Prometheus), /openapi.json. Optional bearer API key (constant-time compare). Limits answer 413 (too many inputs,
text too long, body too large) or 422 (not JSON / wrong shape), a full queue 503, never a 500 for a user's input.
Request text is never logged. Shutdown (SIGTERM/SIGINT) stops accepting, finishes in-flight requests, then drains
the batcher.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import BertrtError, InputError, QueueFullError, ShutdownError
from .batcher import runtime_batcher
from .encode import parse_input
from .metrics import Metrics
from .openapi import build_openapi

log = logging.getLogger("bertrt.server")
CONFIG_ENV = "BERTRT_SERVE_CONFIG"  # how `--workers N` hands the configuration to each worker process


@dataclass
class ServeConfig:
    """Everything a server process needs; JSON-serialisable so worker processes can rebuild it."""

    artifact: str
    device: str = "auto"
    threads: int | None = None
    api_key: str | None = None
    api_key_file: str | None = None  # read at startup; with workers, only the path travels to worker processes
    max_items: int = 64  # inputs per request
    max_chars: int = 100_000  # characters per text field
    max_body_bytes: int = 4_000_000
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    long: str = "truncate"  # classify/embed inputs past the max length: "truncate" (flagged) or "chunks" (pooled)


class _Refused(Exception):
    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


def _check_strings(value, path: str) -> None:
    """Reject strings that cannot be UTF-8 (lone surrogates from JSON escapes such as "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(422, f"{path} is not valid Unicode (lone surrogate)", "bad_input") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_strings(v, f"{path}[{i}]")


def validate_request(payload, task: str, max_items: int, max_chars: int) -> list:
    """The inputs of a request, or ``_Refused`` (413 for limits, 422 for shape) with a message saying what to fix."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise _Refused(422, 'the body must be a JSON object {"inputs": [...]}', "bad_json")
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise _Refused(422, f"unknown field(s) {extra}; the body is {{\"inputs\": [...]}}", "bad_input")
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise _Refused(422, f'"inputs" must be a list, not {type(inputs).__name__}', "bad_input")
    if len(inputs) > max_items:
        raise _Refused(413, f"{len(inputs)} inputs in one request; the limit is {max_items} (split the request)",
                       "too_many_inputs")
    allowed = {"qa": {"question", "context"}, "classify": {"text", "text_pair"},
               "multilabel": {"text", "text_pair"}, "relation": {"text", "head", "tail"}}.get(task, {"text"})
    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise _Refused(422, f"inputs[{i}]: unknown field(s) {unknown} for a {task} model; expected "
                               f"{sorted(allowed)}", "bad_input")
            wrong = sorted(k for k, v in item.items() if not isinstance(v, str))
            if wrong:
                raise _Refused(422, f"inputs[{i}]: field(s) {wrong} must be strings", "bad_input")
        elif task == "qa" or not isinstance(item, str):
            raise _Refused(422, f"inputs[{i}]: expected " + ('an object {"question", "context"}' if task == "qa"
                           else 'a string or an object {"text"}'), "bad_input")
        try:
            parse_input(item, task)
        except InputError as e:
            raise _Refused(422, f"inputs[{i}]: {e}", "bad_input") from None
        _check_strings(item, f"inputs[{i}]")
        for value in (item.values() if isinstance(item, dict) else [item]):
            if len(value) > max_chars:
                raise _Refused(413, f"inputs[{i}] has a text of {len(value)} characters; the limit is {max_chars}",
                               "text_too_long")
    return inputs


def create_app(config: ServeConfig, runtime=None) -> Starlette:
    """The ASGI app. ``runtime`` may be given (tests share one); otherwise it is loaded from ``config.artifact``."""
    if runtime is None:
        from .runtime import Runtime

        runtime = Runtime(config.artifact, device=config.device, threads=config.threads,
                          max_batch_tokens=max(config.max_batch_tokens, 1), long=config.long)
    metrics = Metrics(runtime.device, runtime.task)
    state = {"ready": False, "batcher": None}
    schema = build_openapi(runtime.task, config.max_items, config.max_chars,
                           bool(config.api_key or config.api_key_file), __version__)
    api_key = read_api_key(config.api_key_file) if config.api_key_file else config.api_key
    key = api_key.encode() if api_key else None

    def refuse(status: int, message: str, reason: str, headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(reason=reason).inc()
        metrics.requests.labels(code=str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes constant time for equal-length inputs and does not short-circuit on content
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise _Refused(413, f"the body is {declared} bytes; the limit is {config.max_body_bytes}", "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise _Refused(413, f"the body exceeds {config.max_body_bytes} bytes", "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        if not authorized(request):
            return refuse(401, "missing or wrong API key (send Authorization: Bearer <key>)", "unauthorized",
                          {"WWW-Authenticate": "Bearer"})
        batcher = state["batcher"]
        if batcher is None or not state["ready"]:
            return refuse(503, "the server is starting or shutting down; retry later", "not_ready",
                          {"Retry-After": "1"})
        try:
            body = await read_body(request)
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
                raise _Refused(422, f"the body is not valid JSON ({type(e).__name__})", "bad_json") from None
            inputs = validate_request(payload, runtime.task, config.max_items, config.max_chars)
            t0 = time.perf_counter()
            encs = await run_in_threadpool(runtime.encode, inputs)
            metrics.stage_seconds.labels(stage="tokenize").observe(time.perf_counter() - t0)
            outputs = await batcher.predict_async(encs, [len(e) for e in encs]) if encs else []
        except _Refused as r:
            return refuse(r.status, r.message, r.reason)
        except QueueFullError as e:
            return refuse(503, str(e), "queue_full", {"Retry-After": "1"})
        except ShutdownError as e:
            return refuse(503, str(e), "shutting_down", {"Retry-After": "1"})
        except InputError as e:
            return refuse(422, str(e), "bad_input")
        except BertrtError as e:
            log.error("predict failed: %s", type(e).__name__)  # never the request text
            return refuse(500, f"internal error: {type(e).__name__}", "internal")
        metrics.items.inc(len(outputs))
        metrics.truncated.inc(sum(1 for o in outputs if o.get("truncated")))
        metrics.requests.labels(code="200").inc()
        metrics.request_seconds.observe(time.perf_counter() - started)
        return JSONResponse({"outputs": outputs})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        body = {"status": "ready" if state["ready"] else "not ready", "device": runtime.device,
                "providers": list(getattr(runtime.session, "providers", [])), "task": runtime.task}
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = runtime_batcher(runtime, max_batch_tokens=config.max_batch_tokens,
                                  max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                                  max_queue=config.max_queue, on_batch=metrics.observe_batch)
        metrics.queue_depth.set_function(lambda: batcher.depth)
        warm = runtime.encode([{"question": "warm up", "context": "warm up"} if runtime.task == "qa" else "warm up"])
        await run_in_threadpool(runtime.run_batch, warm)  # first run allocates; do it before saying ready
        state.update(batcher=batcher, ready=True)
        log.info("ready: %s on %s", runtime.task, runtime.device)
        try:
            yield
        finally:
            state["ready"] = False
            await run_in_threadpool(batcher.close, True)  # uvicorn has finished in-flight requests by now
            log.info("shut down")

    routes = [Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", readyz, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"]),
              Route("/openapi.json", openapi, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime, app.state.metrics = runtime, metrics
    return app


def read_api_key(path: str) -> str:
    """The API key in ``path`` (surrounding whitespace removed); an unreadable or empty file is an error."""
    try:
        key = open(path, encoding="utf-8").read().strip()
    except OSError as e:
        raise InputError(f"cannot read the API key file {path}: {e.strerror}") from None
    if not key:
        raise InputError(f"the API key file {path} is empty; put the key on its first line")
    return key


def app_from_env() -> Starlette:
    """uvicorn factory for ``--workers N``: each worker process loads the artifact itself."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          graceful_timeout: float = 30.0) -> None:
    """Run the server until SIGTERM/SIGINT. With several workers each gets ``threads // workers`` threads."""
    import uvicorn

    from .session import default_threads

    if workers < 1:
        raise InputError("--workers must be >= 1")
    if config.threads is None and workers > 1:
        config.threads = max(1, default_threads() // workers)  # share the cores instead of oversubscribing them
    common = dict(host=host, port=port, server_header=False, timeout_graceful_shutdown=graceful_timeout,
                  log_level="info")
    if workers == 1:
        uvicorn.run(create_app(config), **common)
    else:
        if config.api_key and not config.api_key_file:
            raise InputError("with several workers, give the API key as a file (--api-key-file)")
        os.environ[CONFIG_ENV] = json.dumps({**asdict(config), "api_key": None})
        uvicorn.run("bertrt.runtime.server:app_from_env", factory=True, workers=workers, **common)
