"""The Ray proxy middleware: a request whose replica died (the proxy's bare 500, or no answer) becomes a JSON 503 +
Retry-After; bertrt's own answers, JSON 500s included, pass through untouched."""

import asyncio
import json

from bertrt.scaleout.proxy import MESSAGE, ReplicaLost, middlewares


def call(inner) -> tuple[int, dict, bytes]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def run():
        try:
            await ReplicaLost(inner)({"type": "http"}, receive, send)
        except RuntimeError:
            pass

    asyncio.run(run())
    start = [m for m in sent if m["type"] == "http.response.start"]
    assert len(start) == 1, sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start[0]["status"], dict(start[0]["headers"]), body


def responder(status: int, content_type: bytes, body: bytes):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})
    return app


def test_a_lost_replica_is_a_json_503():
    async def silent(scope, receive, send):
        return None

    async def raising(scope, receive, send):
        raise RuntimeError("actor died")

    for inner in (silent, raising, responder(500, b"text/plain; charset=utf-8", b"Internal Server Error")):
        status, headers, body = call(inner)
        assert (status, headers[b"retry-after"], json.loads(body)) == (503, b"1", {"error": MESSAGE})


def test_bertrt_answers_pass_through():
    for status, body in ((200, b'{"outputs":[]}'), (500, b'{"error":"internal error (ValueError)"}'),
                         (422, b'{"error":"bad"}')):
        assert call(responder(status, b"application/json", body)) == (status, {b"content-type": b"application/json"},
                                                                      body)
    assert [m.cls for m in middlewares()] == [ReplicaLost]
