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


def _mask_schemas(max_items: int, max_chars: int) -> dict:
    span = {"type": "object", "required": ["type", "start", "end"], "properties": {
        "type": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}}}
    masked = {"type": "object", "required": ["text", "found"], "properties": {
        "text": {"type": "string"}, "found": {"type": "array", "items": span}}}
    request = {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "inputs": {"type": "array", "maxItems": max_items, "items": input_schema("embed", max_chars)},
        "style": {"type": "string", "enum": ["tag", "partial"], "default": "tag",
                  "description": "tag: <EMAIL>; partial: keep a few characters (138****5678)"},
        "types": {"type": "array", "items": {"type": "string"}, "description": "only these types (default: all)"}}}
    return {"MaskRequest": request, "MaskResponse": {"type": "object", "required": ["outputs"], "properties": {
        "outputs": {"type": "array", "items": masked}}}}


def _mask_operation(predict: dict, err) -> dict:
    """POST /v1/mask: predict's security, limits and refusals, the CLI's output objects."""
    keep = ("401", "408", "413", "429", "503")
    return {"summary": "Mask personal data in texts; the same objects as `bertrt mask` (offsets into the original)",
            "operationId": "mask", **({"security": predict["security"]} if "security" in predict else {}),
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/MaskRequest"}}}},
            "responses": {"200": {"description": "one object per input", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/MaskResponse"}}}},
                "422": err("not JSON, not the shape of MaskRequest, or an unknown type"),
                **{k: v for k, v in predict["responses"].items() if k in keep}}}


def build_openapi(task: str, max_items: int, max_chars: int, auth: bool, version: str, protect_metrics: bool = False,
                  rate_limited: bool = False, mask: bool = False) -> dict:
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
            "408": err("the request was not received whole within the server's --request-timeout"),
            "413": err("too many inputs, a text too long, or a body too large"),
            "422": err("not JSON, or not the shape of PredictRequest"),
            "500": err("the model or its postprocessing failed for an input (named in the message), or produced "
                       "NaN/Inf for it; other requests are not affected"),
            "503": err("over the admission budget, the queue is full, too many connections, or the server is "
                       "starting or shutting down; retry after the Retry-After header's seconds"),
            "504": err("no answer within the server's --timeout"),
        },
    }
    if auth:
        predict["security"] = [{"bearer": []}]
        predict["responses"]["401"] = err("missing or wrong API key")
    if rate_limited:
        predict["responses"]["429"] = err("this caller's rate limit (per API key, or per client address without "
                                          "keys) is used up; retry after the Retry-After header's seconds")
    status = {"type": "object", "properties": {"status": {"type": "string"}, "device": {"type": "string"},
                                               "version": {"type": "string"}, "artifact_sha256": {"type": "string"},
                                               "reason": {"type": "string"}}}
    probe = {"content": {"application/json": {"schema": status}}}
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "bertrt server", "version": version,
                 "description": f"Inference for a bertrt {task} artifact."},
        "paths": {
            "/v1/predict": {"post": predict},
            "/healthz": {"get": {"summary": "The process is up and its batching thread alive and not wedged",
                                 "operationId": "healthz",
                                 "responses": {"200": {"description": "alive", **probe},
                                               "503": {"description": "the batcher is dead or stuck in a batch "
                                                                      "(restart this worker)", **probe}}}},
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
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"},
                "request_id": {"type": "string", "description": "also in the X-Request-ID header, and in the log"}}},
        }},
    }
    if mask:
        doc["paths"]["/v1/mask"] = {"post": _mask_operation(predict, err)}
        doc["components"]["schemas"].update(_mask_schemas(max_items, max_chars))
    if protect_metrics:
        for path in ("/metrics", "/openapi.json"):
            op = doc["paths"].setdefault(path, {"get": {"summary": "This schema", "operationId": "openapi",
                                                        "responses": {"200": {"description": "OpenAPI 3.0"}}}})["get"]
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = err("missing or wrong API key (--protect-metrics)")
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
