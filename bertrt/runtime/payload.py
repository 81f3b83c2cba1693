"""A /v1/predict request's body, in and out: parse and validate it, render the answer, check outputs are finite.

Every check here raises ``Refused`` with the status (413 for limits, 422 for shape) and a message that says what to
fix. Pure functions without I/O, so the server can run them on a worker thread when a body is large.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid

from ..errors import InputError
from .encode import parse_input

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class Refused(Exception):
    """A request refused for the client's own reason: its HTTP status, a message, and the metric reason."""

    def __init__(self, status: int, message: str, reason: str):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


def _check_strings(value, path: str) -> None:
    """Reject strings that cannot be UTF-8 (lone surrogates from JSON escapes such as "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(422, f"{path} is not valid Unicode (lone surrogate)", "bad_input") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_strings(v, f"{path}[{i}]")


def validate_request(payload, task: str, max_items: int, max_chars: int) -> list:
    """The inputs of a request, or ``Refused`` (413 for limits, 422 for shape) with a message saying what to fix."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise Refused(422, 'the body must be a JSON object {"inputs": [...]}', "bad_json")
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise Refused(422, f"unknown field(s) {extra}; the body is {{\"inputs\": [...]}}", "bad_input")
    inputs = payload["inputs"]
    if not isinstance(inputs, list):
        raise Refused(422, f'"inputs" must be a list, not {type(inputs).__name__}', "bad_input")
    if len(inputs) > max_items:
        raise Refused(413, f"{len(inputs)} inputs in one request; the limit is {max_items} (split the request)",
                       "too_many_inputs")
    allowed = {"qa": {"question", "context"}, "classify": {"text", "text_pair"},
               "multilabel": {"text", "text_pair"}, "relation": {"text", "head", "tail"}}.get(task, {"text"})
    spans = {"head", "tail"} if task == "relation" else set()  # [start, end] lists, checked by parse_input
    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise Refused(422, f"inputs[{i}]: unknown field(s) {unknown} for a {task} model; expected "
                               f"{sorted(allowed)}", "bad_input")
            wrong = sorted(k for k, v in item.items() if k not in spans and not isinstance(v, str))
            if wrong:
                raise Refused(422, f"inputs[{i}]: field(s) {wrong} must be strings", "bad_input")
        elif task == "qa" or not isinstance(item, str):
            raise Refused(422, f"inputs[{i}]: expected " + ('an object {"question", "context"}' if task == "qa"
                           else 'a string or an object {"text"}'), "bad_input")
        try:
            parse_input(item, task)
        except InputError as e:
            raise Refused(422, f"inputs[{i}]: {e}", "bad_input") from None
        _check_strings(item, f"inputs[{i}]")
        for value in (item.values() if isinstance(item, dict) else [item]):
            if isinstance(value, str) and len(value) > max_chars:
                raise Refused(413, f"inputs[{i}] has a text of {len(value)} characters; the limit is {max_chars}",
                               "text_too_long")
    return inputs


def parse_request(body: bytes, task: str, max_items: int, max_chars: int) -> list:
    """JSON body -> the validated inputs (``Refused`` when the body is not JSON or not a valid request)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
        raise Refused(422, f"the body is not valid JSON ({type(e).__name__})", "bad_json") from None
    return validate_request(payload, task, max_items, max_chars)


def render(content) -> bytes:
    """Compact UTF-8 JSON; NaN and Inf are refused (``ValueError``), as JSON has no such numbers."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def finite(value) -> bool:
    """Whether every number in a result (nested dicts and lists) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    return True


def request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is a sane token (letters, digits, ``._:-``, at most 128), else a new one."""
    if header and REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def key_id(key: bytes) -> str:
    """A short, stable name for an API key that logs may carry (a hash prefix; never the key)."""
    return hashlib.sha256(key).hexdigest()[:8]
