"""The server's access controls over a real socket on 127.0.0.1: several named keys, --protect-metrics, per-key rate
limits (429 + Retry-After, counted and logged, on a fake clock), a key reload, and TLS with a self-signed
certificate made here. SIGHUP in real processes: test_server_keys.py."""

import datetime
import json
import logging
import ssl
import subprocess
import sys

import httpx
import pytest

from bertrt.runtime import Runtime
from bertrt.runtime.logs import JsonFormatter
from bertrt.runtime.server import ServeConfig, create_app

try:
    from .serving import running, samples
except ImportError:
    from serving import running, samples

A, B = "alpha-key-0123456789", "bravo-key-0123456789"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def runtime(tiny_artifact):
    return Runtime(tiny_artifact("classify"), device="cpu", threads=1)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# two clients\nalpha:{A}\nbravo:{B}\n")
    return path


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_protect_metrics_puts_metrics_and_schema_behind_a_key(runtime, key_file):
    app = create_app(ServeConfig(artifact="", api_key_file=str(key_file), protect_metrics=True), runtime=runtime)
    with running(app) as url:
        refused = [httpx.get(f"{url}{path}", headers=h) for path in ("/metrics", "/openapi.json")
                   for h in ({}, bearer("wrong-key-0123456789"))]
        metrics = httpx.get(f"{url}/metrics", headers=bearer(B))
        schema = httpx.get(f"{url}/openapi.json", headers=bearer(A)).json()
        probes = [httpx.get(f"{url}{path}").status_code for path in ("/healthz", "/readyz")]
    assert [r.status_code for r in refused] == [401] * 4
    assert all(r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"] for r in refused)
    assert metrics.status_code == 200
    assert samples(metrics.text)['bertrt_request_errors_total{reason="unauthorized"}'] == 4
    assert probes == [200, 200]  # orchestrator probes stay open
    for path in ("/metrics", "/openapi.json", "/v1/predict"):
        op = next(iter(schema["paths"][path].values()))
        assert op["security"] == [{"bearer": []}] and "401" in op["responses"]
    open_app = create_app(ServeConfig(artifact="", api_key_file=str(key_file)), runtime=runtime)
    with running(open_app) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200 and httpx.get(f"{url}/openapi.json").status_code == 200


def test_protect_metrics_without_keys_is_refused():
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "serve", "nowhere", "--protect-metrics"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr == "error: --protect-metrics needs keys to protect with; add --api-key-file\n"


def test_rate_limit_per_key_429_then_refill(runtime, key_file, caplog):
    app = create_app(ServeConfig(artifact="", api_key_file=str(key_file), rate_limit=2.0, rate_burst=2),
                     runtime=runtime)
    clock = app.state.limiter.clock = Clock()  # time moves only when the test says so
    body = {"inputs": ["a private sentence"]}
    with running(app) as url, caplog.at_level(logging.INFO, logger="bertrt.access"):
        with httpx.Client(base_url=url, timeout=30) as c:
            first = [c.post("/v1/predict", json=body, headers=bearer(A)).status_code for _ in range(3)]
            limited = c.post("/v1/predict", json=body, headers=bearer(A))
            other = c.post("/v1/predict", json=body, headers=bearer(B)).status_code  # B has its own bucket
            clock.now += 0.5  # one token back for A
            refilled = [c.post("/v1/predict", json=body, headers=bearer(A)).status_code for _ in range(2)]
            clock.now += 10  # full again: the burst, not more
            after_idle = [c.post("/v1/predict", json=body, headers=bearer(A)).status_code for _ in range(3)]
            got = samples(c.get("/metrics").text)
            schema = c.get("/openapi.json").json()
    assert first == [200, 200, 429] and other == 200
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert "rate limit" in limited.json()["error"] and limited.json()["request_id"] == limited.headers["x-request-id"]
    assert refilled == [200, 429] and after_idle == [200, 200, 429]
    assert got['bertrt_rate_limited_total{key="alpha"}'] == 4 and 'bertrt_rate_limited_total{key="bravo"}' not in got
    assert got['bertrt_requests_total{code="429"}'] == 4
    assert got['bertrt_request_errors_total{reason="rate_limited"}'] == 4
    assert "429" in schema["paths"]["/v1/predict"]["post"]["responses"]
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "bertrt.access"]
    assert [(x["status"], x["key_id"], x["reason"]) for x in lines if x["status"] == 429] == [
        (429, "alpha", "rate_limited")] * 4
    assert {x["key_id"] for x in lines} == {"alpha", "bravo"}
    assert A not in caplog.text and B not in caplog.text and "private" not in caplog.text


def test_rate_limit_per_address_without_keys(runtime):
    app = create_app(ServeConfig(artifact="", rate_limit=0.01), runtime=runtime)  # one request per 100 s
    app.state.limiter.clock = Clock()
    with running(app) as url:
        codes = [httpx.post(f"{url}/v1/predict", json={"inputs": ["x"]}, timeout=30) for _ in range(2)]
        got = samples(httpx.get(f"{url}/metrics").text)
    assert [r.status_code for r in codes] == [200, 429] and codes[1].headers["retry-after"] == "100"
    assert got['bertrt_rate_limited_total{key="-"}'] == 1


def test_reload_swaps_keys_for_the_next_request_and_a_bad_file_keeps_them(runtime, key_file, caplog):
    app = create_app(ServeConfig(artifact="", api_key_file=str(key_file)), runtime=runtime)
    with running(app) as url, caplog.at_level(logging.INFO, logger="bertrt.server"):
        with httpx.Client(base_url=url, timeout=30) as c:
            def codes():
                return [c.post("/v1/predict", json={"inputs": ["x"]}, headers=bearer(k)).status_code for k in (A, B)]

            before = codes()
            key_file.write_text(f"alpha:{A}\n")
            app.state.reload_keys()
            removed = codes()
            key_file.write_text(f"alpha:{A}\nbravo:short\n")
            app.state.reload_keys()
            kept = codes()
            got = samples(c.get("/metrics").text)
    assert before == [200, 200] and removed == [200, 401] and kept == [200, 401]
    assert got['bertrt_api_key_reloads_total{result="ok"}'] == 1
    assert got['bertrt_api_key_reloads_total{result="failed"}'] == 1 and got["bertrt_api_keys"] == 1
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "bertrt.server"]
    assert ("INFO", "API keys reloaded: 1 keys (alpha)") in messages
    assert any(level == "ERROR" and "line 2 (key 'bravo')" in m and "the 1 current keys stay" in m
               for level, m in messages)
    assert A not in caplog.text and B not in caplog.text


def self_signed(tmp_path):
    """A certificate for 127.0.0.1, valid for a day, and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bertrt test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_round_trip_through_the_edge_protocol(runtime, key_file, tmp_path):
    from bertrt.runtime.launch import check_tls

    cert, key = self_signed(tmp_path)
    tls = check_tls(cert, key)
    app = create_app(ServeConfig(artifact="", api_key_file=str(key_file)), runtime=runtime)
    trust = ssl.create_default_context(cafile=cert)
    with running(app, tls=tls, request_timeout=1.0) as url:
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=trust, timeout=30) as c:
            r = c.post("/v1/predict", json={"inputs": ["hello", "world"]}, headers=bearer(A))
            denied = c.post("/v1/predict", json={"inputs": ["hello"]})
            plain = runtime.predict(["hello", "world"])
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(f"{url}/readyz", timeout=10)
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
            httpx.get(url.replace("https", "http") + "/readyz", timeout=10)
        import socket

        raw = ssl.create_default_context(cafile=cert).wrap_socket(
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10),
            server_hostname="127.0.0.1")
        raw.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # and then nothing: the edge's deadline
        answer = raw.recv(4096)
        raw.close()
        got = samples(httpx.get(f"{url}/metrics", verify=trust).text)
    assert r.status_code == 200 and denied.status_code == 401
    assert [o["label"] for o in r.json()["outputs"]] == [o["label"] for o in plain]
    assert answer.startswith(b"HTTP/1.1 408 ")  # EdgeProtocol's timer works under TLS too
    assert got['bertrt_connection_events_total{event="request_timeout"}'] == 1


def test_tls_and_key_file_errors_at_start_up(tmp_path, tiny_artifact):
    cert, key = self_signed(tmp_path)
    (tmp_path / "bad_keys").write_text(f"alpha:{A}\nbravo:tooshort\n")
    (tmp_path / "no_keys").write_text("# nothing yet\n")
    cases = [
        (["--ssl-certfile", cert], "error: TLS needs both --ssl-certfile and --ssl-keyfile\n"),
        (["--ssl-certfile", cert, "--ssl-keyfile", str(tmp_path / "missing.pem")],
         f"error: cannot load the TLS certificate {cert} with the key {tmp_path / 'missing.pem'}: "),
        (["--api-key-file", str(tmp_path / "bad_keys")],
         f"error: the API key file {tmp_path / 'bad_keys'} line 2 (key 'bravo'): the key has 8 characters; "),
        (["--api-key-file", str(tmp_path / "no_keys")],
         f"error: the API key file {tmp_path / 'no_keys'} holds no key; "),
        (["--rate-limit", "fast"], "error: --rate-limit 'fast': expected N/s or N/m"),
    ]
    for args, start in cases:
        r = subprocess.run([sys.executable, "-m", "bertrt.cli", "serve", str(tiny_artifact("classify")), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.startswith(start) and r.stderr.count("\n") == 1, r.stderr
