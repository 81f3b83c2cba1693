"""The connection edge, below the app: a deadline for receiving each whole request, and a bound on open connections.

uvicorn closes an idle keep-alive connection only after a response has been sent; nothing bounds a client that opens
a socket and then trickles its request line, headers or body a byte at a time, and such a client holds a file
descriptor (and, without an API key, gets that far, since auth needs the headers). ``EdgeProtocol`` (uvicorn's h11
protocol plus one timer per connection) arms a deadline when a connection opens and when the first byte of each
later request arrives, and disarms it once the request has been received whole. When it fires the connection is
answered 408 (if no response has begun) and closed. A connection that would exceed ``max_connections`` is answered
503 with ``Retry-After`` as soon as its headers arrive, without reaching the app. The app learns of these events
through ``EVENT_HOOK`` in the lifespan state (it counts them in its metrics).
"""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

EVENT_HOOK = "bertrt_edge_event"  # lifespan-state key of a callable(event: str) the app provides
_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's states while a request is still arriving


def _raw_response(status: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


async def _over_limit(scope, receive, send) -> None:
    """The app a connection beyond ``max_connections`` gets: 503 + Retry-After, then close."""
    body = json.dumps({"error": "too many open connections; retry later"}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class EdgeProtocol(H11Protocol):
    """uvicorn's h11 protocol with a per-connection request deadline and a connection bound (see the module)."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.request_timeout: float | None = getattr(config, "request_timeout", None)
        self.max_connections: int | None = getattr(config, "max_connections", None)
        self._deadline = None

    def _event(self, name: str) -> None:
        hook = self.app_state.get(EVENT_HOOK)
        if hook is not None:
            hook(name)

    def _arm(self) -> None:
        if self.request_timeout and self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _watch(self) -> None:
        """Armed while a request is arriving (even before its first byte on a new connection), else not."""
        state = self.conn.their_state
        if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            self._arm()
        elif state not in _RECEIVING:
            self._disarm()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._event("open")
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.app = _over_limit  # this connection only; its request never reaches bertrt's app
            self._event("over_connection_limit")
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._watch()  # a pipelined request may already be partly in

    def connection_lost(self, exc) -> None:
        self._disarm()
        self._event("close")
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self._event("request_timeout")
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no response begun: say why we hang up
            self.transport.write(_raw_response(
                "408 Request Timeout", f"the request was not received whole within {self.request_timeout:g} s"))
        self.transport.close()


class EdgeConfig(uvicorn.Config):
    """``uvicorn.Config`` serving through ``EdgeProtocol``. Both limits are per worker process."""

    def __init__(self, app, *, request_timeout: float | None = 30.0, max_connections: int | None = 512, **kwargs):
        super().__init__(app, http=EdgeProtocol, ws="none", **kwargs)
        self.request_timeout, self.max_connections = request_timeout, max_connections
