"""Property-based fuzzing of POST /v1/predict from the server's own OpenAPI schema (hypothesis), over a socket.

Valid requests are generated from the schema (strategies built from it, so the schema and the server cannot drift
apart) and must be served (200, outputs valid against the response schema); mutated and arbitrary JSON bodies must
be refused with a 4xx. Nothing may answer 500.
"""

import json

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertrt.runtime import Runtime
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import running
except ImportError:
    from serving import running

TEXT = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["", "北京 上海", "😀🚀", "cafe\u0301", "word " * 80, "\u200b", "[CLS] [SEP] [MASK]"])


def from_schema(schema: dict, defs: dict):
    """A hypothesis strategy for the JSON-schema subset our OpenAPI document uses."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "oneOf" in schema:
        return st.one_of([from_schema(s, defs) for s in schema["oneOf"]])
    kind = schema.get("type")
    if kind == "string":
        return TEXT.filter(lambda s: len(s) <= schema.get("maxLength", 10**9))
    if kind == "array":
        return st.lists(from_schema(schema["items"], defs), max_size=min(schema.get("maxItems", 8), 8))
    if kind == "object":
        props = schema.get("properties", {})
        required = {k: from_schema(props[k], defs) for k in schema.get("required", [])}
        optional = {k: from_schema(v, defs) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    raise AssertionError(f"schema construct not covered by the fuzzer: {schema}")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)


def mutate(request):
    """Break a valid request in one of the ways clients do."""
    return st.one_of(
        st.just([request]),
        JSON.map(lambda v: {"inputs": v}),
        JSON.map(lambda v: {"inputs": request["inputs"] + [v]}),
        JSON.map(lambda v: {**request, "extra": v}),
        st.sampled_from(["inputs", "text", "question", "context", "text_pair"]).flatmap(
            lambda k: JSON.map(lambda v: {"inputs": [{k: v}]})),
    )


@pytest.fixture(scope="module", params=["classify", "qa"])
def served(request, tiny_artifact):
    rt = Runtime(tiny_artifact(request.param), device="cpu", threads=1)
    app = create_app(ServeConfig(artifact="", max_items=8, max_chars=300), runtime=rt)
    with running(app) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client, schema


def _defs_schema(schema, name):
    components = schema["components"]["schemas"]
    return json.loads(json.dumps({**components[name], "$defs": components}).replace("#/components/schemas/",
                                                                                  "#/$defs/"))


def test_valid_requests_from_the_schema_are_served(served):
    client, schema = served
    defs = schema["components"]["schemas"]
    response_schema = _defs_schema(schema, "PredictResponse")

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(from_schema(defs["PredictRequest"], defs))
    def check(body):
        r = client.post("/v1/predict", json=body)
        assert r.status_code == 200, (body, r.text)
        out = r.json()
        jsonschema.validate(out, response_schema)
        assert len(out["outputs"]) == len(body["inputs"])

    check()


def test_invalid_requests_are_refused_never_500(served):
    client, schema = served
    defs = schema["components"]["schemas"]
    request_schema = _defs_schema(schema, "PredictRequest")

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(from_schema(defs["PredictRequest"], defs).flatmap(mutate) | JSON)
    def check(body):
        r = client.post("/v1/predict", content=json.dumps(body).encode())
        assert r.status_code != 500, (body, r.text)
        valid = jsonschema.Draft7Validator(request_schema).is_valid(body)
        assert r.status_code == (200 if valid else r.status_code)
        if not valid:
            assert r.status_code in (413, 422) and r.json()["error"], (body, r.text)

    check()
    assert client.post("/v1/predict", json={"inputs": []}).status_code == 200
