"""The JSON schema of ``bench.json`` (draft 2020-12). ``validate(doc)`` raises ``BertrtError`` naming the first
violation; ``bertrt bench`` validates before it writes, and the tests validate what it wrote."""

from __future__ import annotations

from ..errors import BertrtError

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_DIST = {"type": "object", "required": ["p50", "p90", "p99", "mean", "std", "n"],
         "properties": {k: _NUM for k in ("p50", "p90", "p99", "mean", "std")} | {"n": {"type": "integer",
                                                                                       "minimum": 1}}}
_THROUGHPUT = {"type": "object", "required": ["seq_per_s", "std", "repeats", "tokenize_share"],
               "properties": {"seq_per_s": {"type": "number", "exclusiveMinimum": 0}, "std": _NUM,
                              "repeats": {"type": "integer", "minimum": 1},
                              "tokenize_share": {"type": "number", "minimum": 0}}}
_VERSIONS = {"type": "object", "required": ["bertrt", "onnxruntime", "torch", "transformers"],
             "properties": {k: {"type": ["string", "null"]} for k in ("bertrt", "onnxruntime", "torch",
                                                                        "transformers")}}
_ROW = {
    "type": "object",
    "required": ["workload", "variant", "kind", "precision", "status", "cpu", "cores", "threads", "commit",
                 "versions", "batch_sizes", "max_length", "examples"],
    "properties": {
        "workload": {"type": "string"}, "variant": {"type": "string"},
        "kind": {"enum": ["bertrt", "peer"]}, "precision": {"type": "string"},
        "status": {"enum": ["timed", "refused", "failed"]}, "reason": {"type": ["string", "null"]},
        "artifact": {"type": ["string", "null"]},
        "metric": {"type": ["string", "null"]}, "score": _NUM_OR_NULL,  # the task metric, a fraction
        "agreement": _NUM_OR_NULL, "drop": _NUM_OR_NULL,  # agreement a fraction, drop in points
        "gate": {"type": ["object", "null"]},
        "latency_ms": _DIST, "tokenize_ms": _DIST,
        "throughput": {"type": "object", "patternProperties": {"^[0-9]+$": _THROUGHPUT},
                       "additionalProperties": False},
        "peak_mb": _NUM_OR_NULL, "size_mb": _NUM_OR_NULL,
        "vs_best_peer": {"type": ["object", "null"]},
        "cpu": {"type": "string"}, "cores": {"type": ["integer", "null"]}, "threads": {"type": "integer"},
        "commit": {"type": ["string", "null"]}, "versions": _VERSIONS,
        "batch_sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "max_length": {"type": "integer", "minimum": 1}, "examples": {"type": "integer", "minimum": 1},
    },
    # a timed row has every measurement; a refused or failed row says why
    "if": {"properties": {"status": {"const": "timed"}}},
    "then": {"required": ["metric", "score", "agreement", "latency_ms", "tokenize_ms", "throughput", "peak_mb",
                          "size_mb"]},
    "else": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "bertrt bench results",
    "type": "object",
    "required": ["format", "machine", "settings", "workloads", "rows"],
    "properties": {
        "format": {"const": 2},  # 2: every task, "metric" + "score" (fractions) instead of "accuracy" (percent)
        "machine": {"type": "object", "required": ["cpu", "cores", "threads", "commit", "versions"]},
        "settings": {"type": "object", "required": ["batch_sizes", "repeats", "latency_n", "reference"]},
        "workloads": {"type": "array", "items": {"type": "object", "required": ["name", "path", "examples",
                                                                                "max_length"]}},
        "rows": {"type": "array", "items": _ROW, "minItems": 1},
    },
}


def validate(doc: dict) -> bool:
    """True when validated; False when jsonschema is not installed (``pip install bertrt[bench]``)."""
    try:
        import jsonschema
    except ImportError:
        return False

    try:
        jsonschema.validate(doc, SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise BertrtError(f"bench results do not match their schema at {where}: {e.message}") from None
    return True
