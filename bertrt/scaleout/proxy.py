"""A middleware for Ray Serve's HTTP proxy: a request whose replica died under it is answered 503, not 500.

Ray retries a request whose replica is gone *before* the request reached it, but the ones a replica held when it was
killed fail in the proxy, which answers a bare 500 (or nothing). bertrt's own errors are always JSON, so a 500
that is not JSON, or no answer at all, can only come from the proxy: the client then gets what bertrt answers for
every other transient refusal, 503 + Retry-After with a JSON error, and knows it may retry.

Ray loads proxy middlewares from an import path in the proxy's environment: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
bertrt.scaleout.proxy:middlewares``. ``bertrt serve --ray`` sets it for the local cluster it starts; on a cluster of
your own set it on every node (``ray start``'s environment, or the KubeRay pod template's ``env``).
"""

from __future__ import annotations

import json

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "bertrt.scaleout.proxy:middlewares"
MESSAGE = "the replica serving this request stopped (crashed, killed or scaled away) before answering; retry"


class ReplicaLost:
    """ASGI middleware: see the module."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "swallow": False}

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                json_body = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] == 500 and not json_body:
                    state["swallow"] = True
                    return
                state["started"] = True
            elif state["swallow"]:
                return
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        finally:
            if not state["started"]:
                body = json.dumps({"error": MESSAGE}).encode()
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1")]})
                await send({"type": "http.response.body", "body": body})


def middlewares() -> list:
    """What Ray's proxy calls (``CALLBACK``): the middlewares to wrap itself in."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLost)]
