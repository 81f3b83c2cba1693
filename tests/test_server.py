"""The HTTP server over a real socket on 127.0.0.1: auth, limits, bad input, odd text, metrics, a full queue."""

import json
import threading

import httpx
import jsonschema
import pytest

import bertrt
from bertrt.artifact import sha256_file
from bertrt.runtime import Runtime
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import GatedSession, running, samples
except ImportError:
    from serving import GatedSession, running, samples

KEY = "s3cret-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ODD = ["", "北京 上海 中文", "emoji 😀🚀👩‍👩‍👧", "cafe\u0301 e\u0301te\u0301 Zu\u0308rich", "word " * 3000, "\x00\t\n ",
       "\u200b\u200d", "a" * 5000]


@pytest.fixture(scope="module")
def classify(tiny_artifact):
    rt = Runtime(tiny_artifact("classify"), device="cpu", threads=1)
    config = ServeConfig(artifact="", api_key=KEY, max_items=8, max_chars=20_000, max_body_bytes=100_000)
    app = create_app(config, runtime=rt)
    with running(app) as url:
        yield url, rt, app


def post(url, body, headers=AUTH, **kw):
    return httpx.post(f"{url}/v1/predict", content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                      headers={"Content-Type": "application/json", **headers}, timeout=30, **kw)


def test_auth(classify):
    url, _, _ = classify
    assert post(url, {"inputs": ["hi"]}, headers={}).status_code == 401
    r = post(url, {"inputs": ["hi"]}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]
    assert post(url, {"inputs": ["hi"]}, headers={"Authorization": KEY}).status_code == 401  # no scheme
    assert post(url, {"inputs": ["hi"]}).status_code == 200


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 422, "not valid JSON"),
    (b"\xff\xfe\x00", 422, "not valid JSON"),
    (b"[" * 100_000, 422, "not valid JSON"),  # deep nesting: RecursionError, not a 500
    ("[]", 422, '{"inputs"'),
    ('{"inputs": "hello"}', 422, "must be a list"),
    ('{"inputs": [3]}', 422, "inputs[0]"),
    ('{"inputs": [null]}', 422, "inputs[0]"),
    ('{"inputs": [["a", "b"]]}', 422, "inputs[0]"),
    ('{"inputs": [{"txt": "a"}]}', 422, "unknown field"),
    ('{"inputs": [{"text": "a", "text_pair": null}]}', 422, "must be strings"),
    ('{"inputs": [{"text_pair": "a"}]}', 422, '"text" must be a string'),
    ('{"inputs": ["a"], "extra": 1}', 422, "unknown field"),
    ('{"inputs": ["\\ud800"]}', 422, "lone surrogate"),
    (json.dumps({"inputs": ["x"] * 9}), 413, "limit is 8"),
    (json.dumps({"inputs": ["x" * 20_001]}), 413, "limit is 20000"),
    (json.dumps({"inputs": ["x" * 15_000] * 8}), 413, "bytes"),
], ids=lambda v: v[:30] if isinstance(v, (str, bytes)) else str(v))
def test_bad_requests_are_4xx_with_a_message(classify, body, status, words):
    url, _, _ = classify
    r = post(url, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_body_limit_without_content_length(classify):
    url, _, _ = classify

    def chunks():
        for _ in range(30):
            yield b" " * 10_000

    r = httpx.post(f"{url}/v1/predict", content=chunks(), headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == 413


def test_odd_texts_are_served_and_match_the_runtime(classify):
    url, rt, _ = classify
    r = post(url, {"inputs": ODD})
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    expected = rt.predict(ODD)
    assert [o["label"] for o in outputs] == [e["label"] for e in expected]
    for o, e in zip(outputs, expected):
        assert o["score"] == pytest.approx(e["score"], abs=1e-12)
        assert o.get("truncated", False) == e.get("truncated", False)
    assert outputs[4]["truncated"] is True and "truncated" not in outputs[0]
    assert post(url, {"inputs": []}).json() == {"outputs": []}
    pair = post(url, {"inputs": [{"text": "Markets fell", "text_pair": "sharply"}]}).json()["outputs"][0]
    assert pair["label"] == rt.predict({"text": "Markets fell", "text_pair": "sharply"})["label"]


def test_schema_describes_the_responses(classify):
    url, _, _ = classify
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]
    components = schema["components"]["schemas"]
    resolver = {"$defs": components}
    response = json.loads(json.dumps(components["PredictResponse"]).replace("#/components/schemas/", "#/$defs/"))
    out = post(url, {"inputs": ["hello", {"text": "a", "text_pair": "b"}, "word " * 300]}).json()
    jsonschema.validate(out, {**response, **resolver})
    assert components["PredictRequest"]["properties"]["inputs"]["maxItems"] == 8


def test_probes_and_metrics_after_abuse(classify):
    url, rt, _ = classify
    for _ in range(3):
        post(url, b"{", headers={})  # unauthorized before parsing
    assert post(url, {"inputs": ["still served"]}).status_code == 200
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["status"] == "ready" and ready["device"] == "cpu" and ready["providers"] == ["CPUExecutionProvider"]
    got = samples(httpx.get(f"{url}/metrics").text)
    assert got['bertrt_request_errors_total{reason="unauthorized"}'] >= 3
    assert got['bertrt_requests_total{code="200"}'] >= 1
    for stage in ("tokenize", "queue", "inference"):
        assert got[f'bertrt_stage_seconds_count{{stage="{stage}"}}'] >= 1
    assert got["bertrt_batch_size_count"] >= 1 and got['bertrt_batch_tokens_sum{kind="padded"}'] >= \
        got['bertrt_batch_tokens_sum{kind="real"}'] > 0
    assert got["bertrt_queue_depth"] == 0
    sha = sha256_file(f"{rt.path}/bertrt.json")
    assert ready["artifact_sha256"] == sha and ready["version"] == bertrt.__version__
    assert got[f'bertrt_info{{artifact_sha256="{sha}",device="cpu",task="classify",'
                   f'version="{bertrt.__version__}"}}'] == 1


@pytest.mark.parametrize("task", ["ner", "qa", "embed"])
def test_other_tasks(tiny_artifact, task):
    rt = Runtime(tiny_artifact(task), device="cpu", threads=1)
    if task == "qa":
        inputs = [{"question": "où est le musée?", "context": ctx} for ctx in ODD[:5]]
        bad = {"inputs": ["a plain string"]}
    else:
        inputs = ODD
        bad = {"inputs": [{"text": "a", "text_pair": "b"}]}
    with running(create_app(ServeConfig(artifact=""), runtime=rt)) as url:
        r = post(url, {"inputs": inputs}, headers={})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == json.loads(json.dumps(rt.predict(inputs)))
        assert post(url, bad, headers={}).status_code == 422
    if task == "ner":
        for text, out in zip(inputs, r.json()["outputs"]):
            assert all(text[e["start"]:e["end"]] == e["text"] for e in out["entities"])


def test_full_queue_answers_503_then_recovers(tiny_artifact):
    real = Runtime(tiny_artifact("classify"), device="cpu", threads=1)
    session = GatedSession(real.session)
    rt = Runtime.from_parts(real.manifest, real.encoder, session)
    app = create_app(ServeConfig(artifact="", max_items=3, max_queue=3, max_wait_ms=1), runtime=rt)
    with running(app) as url:
        results = {}

        def send(name, n):
            results[name] = post(url, {"inputs": [f"text {i}" for i in range(n)]}, headers={})

        first = threading.Thread(target=send, args=("first", 1))
        first.start()
        assert session.entered.wait(10)  # the worker is inside the first batch
        second = threading.Thread(target=send, args=("second", 3))
        second.start()
        for _ in range(200):
            if rt_depth(app) == 3:
                break
            threading.Event().wait(0.01)
        full = post(url, {"inputs": ["one more"]}, headers={})
        assert full.status_code == 503 and full.headers["retry-after"] == "1" and "queue is full" in full.text
        session.release.set()
        first.join(10)
        second.join(10)
        assert results["first"].status_code == 200 and len(results["second"].json()["outputs"]) == 3
        assert post(url, {"inputs": ["after"]}, headers={}).status_code == 200


def rt_depth(app) -> int:
    return int(samples(app.state.metrics.render().decode())["bertrt_queue_depth"])
