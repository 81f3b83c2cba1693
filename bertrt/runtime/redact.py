"""The server's seam to personal-data masking (``bertrt.mask``): POST /v1/mask, --mask-inputs and --mask-logs.

Detection lives in ``bertrt.mask``; this module only calls ``mask(text, style=..., types=...)`` once per text and
turns its result (``.text`` and ``.found``: items with type, start, end) into the JSON the CLI writes:
``{"text": <masked>, "found": [{"type", "start", "end"}]}``, offsets into the original text.
"""

from __future__ import annotations

import json

from ..errors import InputError
from .payload import Refused, validate_request

STYLES = ("tag", "partial")  # "hash" needs a server-side secret, which the server does not hold


def load_mask(option: str):
    """``bertrt.mask.mask``, or ``InputError`` saying that ``option`` needs it."""
    try:
        from ..mask import mask
    except ImportError as e:
        raise InputError(f"{option} needs personal-data masking (bertrt.mask), which this install lacks: {e}") \
            from None
    return mask


def available() -> bool:
    try:
        load_mask("")
    except InputError:
        return False
    return True


def _field(item, name):
    return item[name] if isinstance(item, dict) else getattr(item, name)


def mask_one(mask, text: str, style: str = "tag", types=None) -> dict:
    """One text -> {"text": masked, "found": [{"type", "start", "end"}]} (the result's fields read as attributes or
    keys, whichever ``bertrt.mask`` returns)."""
    result = mask(text, style=style, types=types)
    return {"text": _field(result, "text"), "found": [{k: _field(f, k) for k in ("type", "start", "end")}
                                                      for f in _field(result, "found")]}


def masked_text(mask, text: str) -> str:
    """``text`` with its personal data replaced by tags."""
    return mask_one(mask, text)["text"]


def mask_all(mask, texts: list[str], style: str = "tag", types=None) -> list[dict]:
    return [mask_one(mask, t, style, types) for t in texts]


def mask_inputs(mask, inputs: list) -> list:
    """Predict inputs (strings or objects of strings) with every text masked (tag style), so the model and all
    that follows never see the raw values."""
    return [masked_text(mask, i) if isinstance(i, str)
            else {k: masked_text(mask, v) if isinstance(v, str) else v for k, v in i.items()}  # relation spans
            for i in inputs]


def parse_mask_request(body: bytes, max_items: int, max_chars: int) -> tuple[list[str], str, list | None]:
    """{"inputs": [text or {"text"}...], "style"?: "tag"|"partial", "types"?: [...]} -> (texts, style, types)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise Refused(422, f"the body is not valid JSON ({type(e).__name__})", "bad_json") from None
    if not isinstance(payload, dict):
        raise Refused(422, 'the body must be a JSON object {"inputs": [...]}', "bad_json")
    style, types = payload.pop("style", "tag"), payload.pop("types", None)
    if style not in STYLES:
        raise Refused(422, f'"style" must be one of {list(STYLES)}', "bad_input")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise Refused(422, '"types" must be a list of type names', "bad_input")
    inputs = validate_request(payload, "embed", max_items, max_chars)  # strings or {"text"}: the embed shape
    return [i if isinstance(i, str) else i["text"] for i in inputs], style, types
