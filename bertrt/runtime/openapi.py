"""The server's OpenAPI 3.0 schema, built for one artifact's task and the server's limits.

The same limits are enforced by hand in ``server.py`` (no JSON-schema library at runtime); tests fuzz the server
from this schema, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations


def _str(max_chars: int) -> dict:
    return {"type": "string", "maxLength": max_chars}


def input_schema(task: str, max_chars: int) -> dict:
    """JSON schema of one input item for ``task``."""
    s = _str(max_chars)
    if task == "qa":
        return {"type": "object", "required": ["question", "context"], "additionalProperties": False,
                "properties": {"question": s, "context": s}}
    if task == "relation":
        span = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}
        return {"type": "object", "required": ["text", "head", "tail"], "additionalProperties": False,
                "properties": {"text": s, "head": span, "tail": span}}
    props = {"text": s}
    if task in ("classify", "multilabel"):
        props["text_pair"] = s
    return {"oneOf": [s, {"type": "object", "required": ["text"], "additionalProperties": False,
                          "properties": props}]}


def output_schema(task: str) -> dict:
    num = {"type": "number"}
    truncated = {"type": "boolean", "description": "present (true) when the input was cut to the max length"}
    if task == "classify":
        props = {"label": {"type": "string"}, "score": num,
                 "scores": {"type": "object", "additionalProperties": num}}
    elif task == "relation":
        props = {"relation": {"type": "string"}, "score": num,
                 "scores": {"type": "object", "additionalProperties": num}}
    elif task == "multilabel":
        props = {"labels": {"type": "array", "items": {"type": "string"}},
                 "scores": {"type": "object", "additionalProperties": num}}
    elif task == "ner":
        entity = {"type": "object", "required": ["type", "start", "end", "text", "score"], "properties": {
            "type": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"},
            "text": {"type": "string"}, "score": num}}
        props = {"entities": {"type": "array", "items": entity}}
    elif task == "qa":
        props = {"answer": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"},
                 "score": num}
    else:
        props = {"embedding": {"type": "array", "items": num}}
    return {"type": "object", "required": list(props), "properties": {**props, "truncated": truncated}}


def build_openapi(task: str, max_items: int, max_chars: int, auth: bool, version: str) -> dict:
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

    def err(text: str) -> dict:
        return {**error, "description": text}

    predict = {
        "summary": f"Predict ({task}) for a list of inputs; outputs come back in the same order",
        "operationId": "predict",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/PredictRequest"}}}},
        "responses": {
            "200": {"description": "one output per input", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/PredictResponse"}}}},
            "413": err("too many inputs, a text too long, or a body too large"),
            "422": err("not JSON, or not the shape of PredictRequest"),
            "503": err("the queue is full or the server is shutting down; retry later"),
        },
    }
    if auth:
        predict["security"] = [{"bearer": []}]
        predict["responses"]["401"] = err("missing or wrong API key")
    status = {"type": "object", "properties": {"status": {"type": "string"}, "device": {"type": "string"}}}
    probe = {"content": {"application/json": {"schema": status}}}
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "bertrt server", "version": version,
                 "description": f"Inference for a bertrt {task} artifact."},
        "paths": {
            "/v1/predict": {"post": predict},
            "/healthz": {"get": {"summary": "The process is up", "operationId": "healthz",
                                 "responses": {"200": {"description": "alive", **probe}}}},
            "/readyz": {"get": {"summary": "Ready to serve; reports the device really in use",
                                "operationId": "readyz",
                                "responses": {"200": {"description": "ready", **probe},
                                              "503": {"description": "starting or shutting down", **probe}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "text exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "Input": input_schema(task, max_chars),
            "Output": output_schema(task),
            "PredictRequest": {"type": "object", "required": ["inputs"], "additionalProperties": False,
                               "properties": {"inputs": {"type": "array", "maxItems": max_items,
                                                         "items": {"$ref": "#/components/schemas/Input"}}}},
            "PredictResponse": {"type": "object", "required": ["outputs"], "properties": {
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Output"}}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        }},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
