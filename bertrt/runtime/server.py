"""HTTP server: a thin starlette layer over ``Runtime`` + ``Batcher``; ``launch.serve`` runs it under uvicorn.

POST /v1/predict {"inputs": [...]} -> {"outputs": [...]}; GET /healthz (the batcher is alive and beating),
/readyz (model loaded and warm; device, version and artifact sha256), /metrics (Prometheus), /openapi.json.

A predict request goes: API key (401) and rate limit (429; both in ``access.py``) -> admission
(``max_concurrent_requests`` requests at once, else 503 + Retry-After, before any body is read) -> body
(``max_body_bytes``) -> JSON and validation (on a worker thread when the body is large) -> tokenization (thread) ->
batcher -> render. The whole is bounded by ``timeout`` (504), and a client that disconnects takes its queued inputs
with it (counted). Limits answer 413, bad shapes 422, overload 503; a failure of the model or of postprocessing is
a JSON 500 that fails only the inputs that caused it.
Every answer carries X-Request-ID and is logged as one JSON line (``logs.py``); request texts are never logged.
SIGHUP reloads the API key file (in the event loop, between requests; see ``launch.py`` for several workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..artifact import MANIFEST, sha256_file
from ..errors import InputError, NonFiniteOutputError, QueueFullError, ShutdownError
from .access import KeyRing, RateLimiter, check_access
from .batcher import runtime_batcher
from .edge import EVENT_HOOK
from .logs import ACCESS, mask_logs
from .metrics import Metrics
from .openapi import build_openapi
from .payload import Refused, finite, parse_request, render, request_id
from .redact import available as masking_available
from .redact import load_mask, mask_all, mask_inputs, masked_text, parse_mask_request

log = logging.getLogger("bertrt.server")
access = logging.getLogger(ACCESS)
OFFLOAD_BYTES = 64 * 1024  # bodies above this are parsed, and their answers rendered, off the event loop
_MESSAGES = {  # errors whose message does not depend on the request
    "unauthorized": "missing or wrong API key (send Authorization: Bearer <key>)",
    "not_ready": "the server is starting or shutting down; retry later",
    "rate_limited": "this caller's rate limit (--rate-limit) is used up; retry after the Retry-After header's seconds",
    "overloaded": "the server is at its admission limit (--max-concurrent-requests); retry later",
    "client_disconnected": "the client disconnected before the answer",
}


@dataclass
class ServeConfig:
    """Everything a server process needs; JSON-serialisable so worker processes can rebuild it."""

    artifact: str
    device: str = "auto"
    threads: int | None = None
    api_key: str | None = None
    api_key_file: str | None = None  # read at startup and on SIGHUP; with workers, only the path travels
    trusted_keys: list[str] | None = None  # public key files: the artifact must be signed by one (bertrt sign)
    protect_metrics: bool = False  # /metrics and /openapi.json need a key too
    rate_limit: float | None = None  # requests per second per key (per client address without keys)
    rate_burst: float | None = None  # bucket size; default max(1, rate_limit)
    mask_inputs: bool = False  # mask personal data in texts before inference (needs bertrt.mask)
    mask_logs: bool | None = None  # mask personal data in logged messages; None: on when bertrt.mask is installed
    max_items: int = 64  # inputs per request
    max_chars: int = 100_000  # characters per text field
    max_body_bytes: int = 4_000_000
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    long: str = "truncate"  # classify/embed inputs past the max length: "truncate" (flagged) or "chunks" (pooled)
    backend: str = "auto"  # inference engine (Runtime's backend): auto, onnxruntime or openvino
    max_concurrent_requests: int = 256  # admission budget per worker
    timeout: float = 60.0  # seconds from admission to answer (504 past it)
    liveness_timeout: float = 30.0  # /healthz fails when the batcher has not beaten for this long
    workers: int = 1  # how many worker processes serve together (reported in the metrics)

    def __post_init__(self):
        for name in ("max_items", "max_chars", "max_body_bytes", "max_batch_size", "max_queue",
                     "max_concurrent_requests", "workers"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("timeout", "liveness_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if self.protect_metrics and not (self.api_key or self.api_key_file):
            raise InputError("--protect-metrics needs keys to protect with; add --api-key-file")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise InputError(f"--rate-limit must be > 0 per second (got {self.rate_limit})")
        if self.rate_burst is not None and (self.rate_limit is None or self.rate_burst < 1):
            raise InputError("--rate-burst needs --rate-limit, and must be >= 1")
        if self.mask_inputs:
            load_mask("--mask-inputs")  # fail at start-up, before the model loads, when bertrt.mask is missing
        if self.mask_logs:
            load_mask("--mask-logs")
        if self.max_items > self.max_queue:
            raise InputError(f"--max-items {self.max_items} is larger than --max-queue {self.max_queue}: a full "
                             "request could never be queued; lower --max-items or raise --max-queue")


def artifact_sha256(runtime) -> str:
    """sha256 of the artifact's manifest, which itself pins every file's sha256; of its canonical JSON for a
    runtime assembled from parts."""
    manifest = Path(runtime.path) / MANIFEST
    if manifest.is_file():
        return sha256_file(manifest)
    return hashlib.sha256(json.dumps(runtime.manifest, sort_keys=True).encode()).hexdigest()


class _Call:
    """One predict request's bookkeeping: id, inputs, why it was cut short, what it answered."""

    def __init__(self, rid: str):
        self.id, self.started, self.items, self.key = rid, time.perf_counter(), 0, None
        self.cancel_reason: str | None = None
        self.parsed = asyncio.Event()  # set once the inputs are known: from then on a disconnect cancels the work


async def _disconnected(request: Request, call: _Call) -> None:
    """Returns when the client goes away, watched once the request is parsed (its body read: uvicorn then only
    reports a disconnect). Parsing is short and bounded, so it finishes, and the dropped inputs can be counted."""
    await call.parsed.wait()
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(config: ServeConfig, runtime=None) -> Starlette:
    """The ASGI app. ``runtime`` may be given (tests share one); otherwise it is loaded from ``config.artifact``."""
    if runtime is None:
        from .runtime import Runtime

        runtime = Runtime(config.artifact, device=config.device, threads=config.threads,
                          max_batch_tokens=max(config.max_batch_tokens, 1), long=config.long,
                          trusted_keys=config.trusted_keys or None, backend=config.backend)
    digest = artifact_sha256(runtime)
    metrics = Metrics(runtime.device, runtime.task, __version__, digest, workers=config.workers)
    state = {"ready": False, "batcher": None, "admitted": 0}
    keys = KeyRing(config.api_key_file, config.api_key)
    limiter = RateLimiter(config.rate_limit, config.rate_burst) if config.rate_limit else None
    metrics.keys.set(len(keys.ids))
    masker = load_mask("--mask-inputs") if config.mask_inputs else None
    mask_route = masker is not None or masking_available()
    if config.mask_logs or (config.mask_logs is None and mask_route):
        mask_logs(functools.partial(masked_text, load_mask("--mask-logs")))
    else:
        mask_logs(None)
    schema = build_openapi(runtime.task, config.max_items, config.max_chars, keys.enabled, __version__,
                           protect_metrics=config.protect_metrics, rate_limited=limiter is not None,
                           mask=mask_route)

    def reload_keys() -> None:
        """SIGHUP: re-read the key file; a file that fails validation leaves the current keys in force."""
        try:
            keys.reload()
        except InputError as e:
            metrics.key_reloads.labels(result="failed").inc()
            log.error("API key reload failed; the %d current keys stay in force: %s", len(keys.ids), e)
            return
        metrics.key_reloads.labels(result="ok").inc()
        metrics.keys.set(len(keys.ids))
        log.info("API keys reloaded: %d keys (%s)", len(keys.ids), ", ".join(keys.ids))

    def refusal(status: int, reason: str, headers: dict, rid: str) -> Response:
        body = render({"error": _MESSAGES[reason], "request_id": rid})
        return Response(body, status_code=status, media_type="application/json",
                        headers={**headers, "X-Request-ID": rid})

    def run_checked(encs: list) -> list:
        """The batcher's work: a NaN/Inf result becomes an error for its input alone."""
        return [r if finite(r) else NonFiniteOutputError("the model produced a non-finite output (NaN or Inf) "
                                                          "for this input") for r in runtime.run_batch(encs)]

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise Refused(413, f"the body is {declared} bytes; the limit is {config.max_body_bytes}", "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise Refused(413, f"the body exceeds {config.max_body_bytes} bytes", "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def count_cancelled(call: _Call, n: int) -> None:
        if n:
            metrics.cancelled.labels(reason=call.cancel_reason or "request_failed").inc(n)

    async def work(request: Request, call: _Call, batcher) -> bytes:
        """Body -> inputs -> outputs -> rendered answer; raises for every way a request can fail."""
        try:
            body = await read_body(request)
        except ClientDisconnect:
            raise Refused(499, "the client disconnected while sending its body", "disconnected_mid_body") from None
        large = len(body) > OFFLOAD_BYTES
        args = (body, runtime.task, config.max_items, config.max_chars)
        inputs = await run_in_threadpool(parse_request, *args) if large else parse_request(*args)
        call.items = len(inputs)
        if masker is not None:
            inputs = await run_in_threadpool(mask_inputs, masker, inputs)
        call.parsed.set()
        t0 = time.perf_counter()
        try:
            encs = await run_in_threadpool(runtime.encode, inputs)
        except asyncio.CancelledError:
            count_cancelled(call, len(inputs))
            raise
        metrics.stage_seconds.labels(stage="tokenize").observe(time.perf_counter() - t0)
        outputs = await batcher.predict_async(encs, [len(e) for e in encs], return_exceptions=True,
                                              on_cancel=lambda n: count_cancelled(call, n)) if encs else []
        for i, out in enumerate(outputs):
            if isinstance(out, BaseException):
                out.input_index = i
                raise out
        metrics.items.inc(len(outputs))
        metrics.truncated.inc(sum(1 for o in outputs if o.get("truncated")))
        content = {"outputs": outputs}
        return await run_in_threadpool(render, content) if large or len(outputs) > 16 else render(content)

    async def guarded(request: Request, call: _Call, batcher) -> bytes:
        """``work`` under the request deadline, cancelled when its client disconnects."""
        task = asyncio.ensure_future(work(request, call, batcher))
        gone = asyncio.ensure_future(_disconnected(request, call))
        try:
            done, _ = await asyncio.wait({task, gone}, timeout=config.timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping this request: stop its work too
            task.cancel()
            raise
        finally:
            gone.cancel()
        if task in done:
            return task.result()
        call.cancel_reason = "disconnect" if gone in done else "timeout"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # let it count what it dropped
        if call.cancel_reason == "disconnect":
            raise ClientDisconnect()
        raise Refused(504, f"no answer within {config.timeout:g} s (--timeout); retry, or send fewer inputs",
                      "timeout")

    def gate(request: Request, call: _Call) -> tuple[int, bytes, str, dict] | None:
        """The 401/429 answer for a caller without a valid key or out of tokens, else None."""
        call.key, refused = check_access(keys, limiter, request.headers.get("authorization"),
                                         request.client.host if request.client else None)
        if not refused:
            return None
        if refused[1] == "rate_limited":
            metrics.rate_limited.labels(key=call.key or "-").inc()
        return refused[0], b"", refused[1], refused[2]

    async def answer(request: Request, call: _Call) -> tuple[int, bytes, str | None, dict]:
        """(status, body, error reason, extra headers) for one predict request."""
        refused = gate(request, call)
        if refused:
            return refused
        batcher = state["batcher"]
        if batcher is None or not state["ready"]:
            return 503, b"", "not_ready", {"Retry-After": "1"}
        if state["admitted"] >= config.max_concurrent_requests:
            return 503, b"", "overloaded", {"Retry-After": "1"}
        state["admitted"] += 1
        metrics.admitted.inc()
        try:
            return 200, await guarded(request, call, batcher), None, {}
        except Refused as r:
            return r.status, r.message.encode(), r.reason, {}
        except QueueFullError as e:
            return 503, str(e).encode(), "queue_full", {"Retry-After": "1"}
        except ShutdownError as e:
            return 503, str(e).encode(), "shutting_down", {"Retry-After": "1"}
        except InputError as e:
            return 422, str(e).encode(), "bad_input", {}
        except ClientDisconnect:
            return 499, b"", "client_disconnected", {}
        except NonFiniteOutputError as e:
            return 500, f"inputs[{getattr(e, 'input_index', '?')}]: {e}".encode(), "non_finite", {}
        except Exception as e:  # the model or postprocessing failed: typed, counted, contained to this request
            log.error("predict failed: %s", type(e).__name__, exc_info=True, extra={"request_id": call.id})
            where = f"inputs[{e.input_index}]: " if hasattr(e, "input_index") else ""
            return 500, f"{where}internal error ({type(e).__name__}); the server log has details under this " \
                        "request id".encode(), "internal", {}
        finally:
            state["admitted"] -= 1
            metrics.admitted.dec()

    async def answer_mask(request: Request, call: _Call) -> tuple[int, bytes, str | None, dict]:
        """(status, body, error reason, extra headers) for one /v1/mask request: the CLI's objects, one per text."""
        refused = gate(request, call)
        if refused:
            return refused
        try:
            body = await read_body(request)
            texts, style, types = await run_in_threadpool(parse_mask_request, body, config.max_items,
                                                          config.max_chars)
            call.items = len(texts)
            found = await run_in_threadpool(mask_all, masker or load_mask("/v1/mask"), texts, style, types)
            return 200, await run_in_threadpool(render, {"outputs": found}), None, {}
        except Refused as r:
            return r.status, r.message.encode(), r.reason, {}
        except ClientDisconnect:
            return 499, b"", "client_disconnected", {}
        except (InputError, ValueError) as e:  # e.g. an unknown type name
            return 422, str(e).encode(), "bad_input", {}

    async def respond(request: Request, path: str, handler) -> Response:
        """Run ``handler`` for one POST, then render its error, log one access line and (predict) count it."""
        call = _Call(request_id(request.headers.get("x-request-id")))
        predicting = path == "/v1/predict"
        metrics.in_flight.inc(int(predicting))
        try:
            status, body, reason, headers = await handler(request, call)
        finally:
            metrics.in_flight.dec(int(predicting))
        if reason is not None:
            if predicting:
                metrics.errors.labels(reason=reason).inc()
            body = render({"error": body.decode() or _MESSAGES[reason], "request_id": call.id})
        latency = time.perf_counter() - call.started
        if predicting:
            metrics.requests.labels(code=str(status)).inc()
            metrics.request_seconds.labels(code=str(status)).observe(latency)
        access.info(path.rsplit("/", 1)[1], extra={"request_id": call.id, "method": "POST", "path": path,
                                      "status": status, "latency_ms": round(1000 * latency, 2), "items": call.items,
                                      "reason": reason, "key_id": call.key, "worker": os.getpid()})
        return Response(body, status_code=status, media_type="application/json",
                        headers={**headers, "X-Request-ID": call.id})

    async def predict(request: Request) -> Response:
        return await respond(request, "/v1/predict", answer)

    async def mask_endpoint(request: Request) -> Response:
        return await respond(request, "/v1/mask", answer_mask)

    async def healthz(request: Request) -> Response:
        batcher = state["batcher"]
        problem = batcher.problem(config.liveness_timeout) if batcher is not None else None
        if problem:
            return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        body = {"status": "ready" if state["ready"] else "not ready", "device": runtime.device,
                "providers": list(getattr(runtime.session, "providers", [])), "task": runtime.task,
                "version": __version__, "artifact_sha256": digest}
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    def protected(request: Request) -> Response | None:
        """The 401 for /metrics and /openapi.json under --protect-metrics without a valid key, else None."""
        if config.protect_metrics and keys.identify(request.headers.get("authorization")) is None:
            metrics.errors.labels(reason="unauthorized").inc()
            return refusal(401, "unauthorized", {"WWW-Authenticate": "Bearer"},
                           request_id(request.headers.get("x-request-id")))
        return None

    async def metrics_endpoint(request: Request) -> Response:
        return protected(request) or Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return protected(request) or JSONResponse(schema)

    async def sampler() -> None:
        while True:
            metrics.sample()
            await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = runtime_batcher(runtime, run_batch=run_checked, max_batch_tokens=config.max_batch_tokens,
                                  max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                                  max_queue=config.max_queue, on_batch=metrics.observe_batch)
        metrics.watch(batcher, config.max_queue, config.max_concurrent_requests)
        warm = runtime.encode([{"question": "warm up", "context": "warm up"} if runtime.task == "qa" else "warm up"])
        await run_in_threadpool(runtime.run_batch, warm)  # first run allocates; do it before saying ready
        state.update(batcher=batcher, ready=True)
        metrics.ready.set(1)
        sampling = asyncio.ensure_future(sampler())
        hup = keys.path is not None and threading.current_thread() is threading.main_thread()
        if hup:  # a server process (not a test thread): SIGHUP reloads the keys, in the loop, between requests
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_keys)
            try:  # catch up with a change made while the model was loading (SIGHUP was ignored until now)
                if keys.reload():
                    log.info("API keys changed during start-up: %d keys (%s)", len(keys.ids), ", ".join(keys.ids))
                    metrics.keys.set(len(keys.ids))
            except InputError as e:
                log.error("the API key file changed during start-up and fails validation; keeping the keys read "
                          "at start: %s", e)
        log.info("ready: %s on %s, artifact sha256 %s", runtime.task, runtime.device, digest[:12])
        try:
            yield {EVENT_HOOK: metrics.edge_event}
        finally:
            state["ready"] = False
            sampling.cancel()
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await run_in_threadpool(batcher.close, True)  # uvicorn has finished in-flight requests by now
            metrics.shutdown()
            log.info("shut down")

    routes = [Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", readyz, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"]),
              Route("/openapi.json", openapi, methods=["GET"])]
    if mask_route:
        routes.append(Route("/v1/mask", mask_endpoint, methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime, app.state.metrics, app.state.serving = runtime, metrics, state
    app.state.reload_keys, app.state.limiter = reload_keys, limiter  # what SIGHUP runs; the buckets (tests)
    return app

