"""The server's masking seam (``bertrt.runtime.redact``): POST /v1/mask, --mask-inputs, --mask-logs, and the clear
error when ``bertrt.mask`` is missing. The seam is tested against a stand-in ``bertrt.mask`` that masks two fixed
strings (no detection here: detection is ``bertrt.mask``'s, tested on its own); the last tests run against the real
module when it is installed."""

import json
import logging
import subprocess
import sys
import types
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from bertrt.errors import InputError
from bertrt.runtime import Runtime
from bertrt.runtime.logs import JsonFormatter, mask_logs
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import running
except ImportError:
    from serving import running

EMAIL, PHONE = "alice@example.com", "13812345678"


@dataclass
class Found:
    type: str
    start: int
    end: int


@dataclass
class Result:
    text: str
    found: list


def fake_mask(text, style="tag", types=None):
    """Masks the two fixed strings above, left to right: tag -> <EMAIL>/<PHONE>, partial -> 138****5678."""
    spans = sorted((text.find(s), s, t) for s, t in ((EMAIL, "EMAIL"), (PHONE, "PHONE")) if s in text)
    spans = [(i, s, t) for i, s, t in spans if types is None or t in types]
    if types is not None and not set(types) <= {"EMAIL", "PHONE"}:
        raise ValueError(f"unknown type(s) {sorted(set(types) - {'EMAIL', 'PHONE'})}")
    out, at, found = [], 0, []
    for i, s, t in spans:
        out += [text[at:i], f"<{t}>" if style == "tag" else s[:3] + "*" * (len(s) - 7) + s[-4:]]
        found.append(Found(t, i, i + len(s)) if t == "EMAIL" else {"type": t, "start": i, "end": i + len(s)})
        at = i + len(s)
    return Result("".join(out) + text[at:], found)


@pytest.fixture
def with_mask(monkeypatch):
    module = types.ModuleType("bertrt.mask")
    module.mask = fake_mask
    monkeypatch.setitem(sys.modules, "bertrt.mask", module)
    yield
    mask_logs(None)


@pytest.fixture
def without_mask(monkeypatch):
    monkeypatch.setitem(sys.modules, "bertrt.mask", None)  # import bertrt.mask now raises ImportError


@pytest.fixture(scope="module")
def embed(tiny_artifact):
    return Runtime(tiny_artifact("embed"), device="cpu", threads=1)


def test_mask_flags_fail_clearly_without_the_module(without_mask, embed):
    for flag in ("mask_inputs", "mask_logs"):
        with pytest.raises(InputError, match=f"--{flag.replace('_', '-')} needs personal-data masking"):
            ServeConfig(artifact="", **{flag: True})
    app = create_app(ServeConfig(artifact=""), runtime=embed)  # default: no /v1/mask, logs as they are
    with running(app) as url:
        assert httpx.post(f"{url}/v1/mask", json={"inputs": ["x"]}).status_code == 404
        assert "/v1/mask" not in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_cli_mask_inputs_without_the_module_is_one_error_line(tiny_artifact):
    try:
        import bertrt.mask  # noqa: F401
        pytest.skip("bertrt.mask is installed")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "serve", str(tiny_artifact("embed")), "--mask-inputs"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: --mask-inputs needs personal-data masking (bertrt.mask)")
    assert r.stderr.count("\n") == 1


def test_mask_endpoint_returns_the_cli_objects(with_mask, embed):
    key = "mask-key-0123456789ab"
    app = create_app(ServeConfig(artifact="", api_key=key, max_items=3), runtime=embed)
    text = f"mail {EMAIL} or call {PHONE}."
    auth = {"Authorization": f"Bearer {key}"}
    with running(app) as url:
        tag = httpx.post(f"{url}/v1/mask", json={"inputs": [text, {"text": "nothing here"}]}, headers=auth)
        partial = httpx.post(f"{url}/v1/mask", json={"inputs": [text], "style": "partial", "types": ["PHONE"]},
                             headers=auth)
        refused = [httpx.post(f"{url}/v1/mask", json=body, headers=auth)
                   for body in ({"inputs": [text], "style": "hash"}, {"inputs": [text], "types": ["SSN"]},
                                {"inputs": ["a"] * 4}, {"inputs": "x"})]
        denied = httpx.post(f"{url}/v1/mask", json={"inputs": [text]})
        schema = httpx.get(f"{url}/openapi.json").json()
    assert tag.status_code == 200 and tag.json() == {"outputs": [
        {"text": "mail <EMAIL> or call <PHONE>.", "found": [{"type": "EMAIL", "start": 5, "end": 22},
                                                           {"type": "PHONE", "start": 31, "end": 42}]},
        {"text": "nothing here", "found": []}]}
    assert partial.json() == {"outputs": [{"text": f"mail {EMAIL} or call 138****5678.",
                                           "found": [{"type": "PHONE", "start": 31, "end": 42}]}]}
    assert [r.status_code for r in refused] == [422, 422, 413, 422] and denied.status_code == 401
    assert "unknown type(s) ['SSN']" in refused[1].json()["error"]
    op = schema["paths"]["/v1/mask"]["post"]
    assert op["security"] == [{"bearer": []}] and {"200", "401", "413", "422"} <= set(op["responses"])
    assert schema["components"]["schemas"]["MaskRequest"]["properties"]["inputs"]["maxItems"] == 3


def test_mask_inputs_means_the_model_sees_only_masked_text(with_mask, embed):
    app = create_app(ServeConfig(artifact="", mask_inputs=True), runtime=embed)
    raw = [f"write to {EMAIL} today", {"text": f"call {PHONE}"}]
    with running(app) as url:
        got = httpx.post(f"{url}/v1/predict", json={"inputs": raw}, timeout=30).json()["outputs"]
    want = embed.predict(["write to <EMAIL> today", "call <PHONE>"])
    unmasked = embed.predict([raw[0]])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["embedding"], w["embedding"], atol=1e-6)
    assert np.abs(np.array(got[0]["embedding"]) - np.array(unmasked[0]["embedding"])).max() > 1e-3


def test_mask_logs_masks_messages_and_tracebacks(with_mask, embed, caplog):
    create_app(ServeConfig(artifact=""), runtime=embed)  # default: on, since bertrt.mask is importable
    try:
        raise ValueError(f"cannot parse {EMAIL}")
    except ValueError:
        record = logging.getLogger("bertrt.server").makeRecord("bertrt.server", logging.ERROR, __file__, 1,
                                                               "failed for %s", (PHONE,), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "failed for <PHONE>" and "ValueError: cannot parse <EMAIL>" in line["exc"]
    create_app(ServeConfig(artifact="", mask_logs=False), runtime=embed)
    assert json.loads(JsonFormatter().format(record))["msg"] == f"failed for {PHONE}"


def test_the_real_module_behind_the_seam(embed):
    real = pytest.importorskip("bertrt.mask")
    text = f"Mail {EMAIL} or call +86 138 1234 5678 today."
    want = real.mask(text, style="tag", types=None)
    app = create_app(ServeConfig(artifact="", mask_inputs=True), runtime=embed)
    try:
        with running(app) as url:
            got = httpx.post(f"{url}/v1/mask", json={"inputs": [text]}, timeout=30).json()["outputs"][0]
            predicted = httpx.post(f"{url}/v1/predict", json={"inputs": [text]}, timeout=30).json()["outputs"][0]
    finally:
        mask_logs(None)
    def field(x, name):
        return x[name] if isinstance(x, dict) else getattr(x, name)

    assert got["text"] == field(want, "text") and EMAIL not in got["text"]
    assert [(f["start"], f["end"]) for f in got["found"]] == [(field(f, "start"), field(f, "end"))
                                                             for f in field(want, "found")]
    assert text[got["found"][0]["start"]:got["found"][0]["end"]] == EMAIL
    np.testing.assert_allclose(predicted["embedding"], embed.predict([got["text"]])[0]["embedding"], atol=1e-6)
