"""Signed artifacts: `bertrt keygen` / `bertrt sign`, Runtime(trusted_keys=...) and `--trusted-key`; every kind of
tampering, an unsigned artifact, a wrong key, names leaving the folder and malformed manifests each refused with one
clear ArtifactError (one `error:` line in the CLI, never a traceback)."""

import base64
import json
import os
import shutil
import subprocess
import sys

import pytest

from bertrt.artifact import MANIFEST, SIGNATURE, load_manifest
from bertrt.digest import sha256_file
from bertrt.errors import ArtifactError, OutputExistsError, SigningKeyError
from bertrt.runtime import Runtime
from bertrt.signing import generate_keypair, sign_artifact

TEXTS = ["Alice met Bob in Paris", "北京 😀", "Markets fell sharply"]


def bertrt(*args):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def one_error_line(r, *needles):
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture
def keys(tmp_path):
    a = generate_keypair(tmp_path / "keys" / "a.pem")
    b = generate_keypair(tmp_path / "keys" / "b.pem")
    return {"a": a, "b": b}  # name -> (private, public, key id)


@pytest.fixture
def art(tiny_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact("classify"), copy)
    return copy


def edit_manifest(path, change):
    m = json.loads((path / MANIFEST).read_text())
    change(m)
    (path / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def test_signed_artifact_loads_under_trusted_keys_and_predicts_the_same(art, keys):
    priv, pub, kid = keys["a"]
    assert oct((priv.stat().st_mode) & 0o777) == "0o600"
    assert sign_artifact(art, priv) == kid
    sig = json.loads((art / SIGNATURE).read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == kid and len(base64.b64decode(sig["signature"])) == 64
    plain = Runtime(art, device="cpu", threads=1).predict(TEXTS)
    # a path, PEM bytes, and several keys of which one signed
    for trusted in ([pub], [pub.read_bytes()], [keys["b"][1], str(pub)], str(pub), pub.read_bytes()):
        assert Runtime(art, device="cpu", threads=1, trusted_keys=trusted).predict(TEXTS) == plain
    with pytest.raises(OutputExistsError, match="--force"):
        sign_artifact(art, priv)
    assert sign_artifact(art, keys["b"][0], force=True) == keys["b"][2]  # re-signed with the rotated key
    load_manifest(art, trusted_keys=[keys["b"][1]])
    with pytest.raises(ArtifactError, match="not among the trusted keys"):
        load_manifest(art, trusted_keys=[pub])


def test_tampered_file_is_refused(art, keys):
    sign_artifact(art, keys["a"][0])
    data = bytearray((art / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tokenizer.json was modified or corrupted"):
        Runtime(art, device="cpu", trusted_keys=[keys["a"][1]])
    # hashes are checked under trusted keys even when the caller asked not to
    with pytest.raises(ArtifactError, match="tokenizer.json was modified"):
        load_manifest(art, verify=False, trusted_keys=[keys["a"][1]])


def test_tampered_manifest_is_refused(art, keys):
    sign_artifact(art, keys["a"][0])
    # an attacker swaps a file and writes its new sha256 into the manifest: the hashes agree, the signature does not
    data = bytearray((art / "model.onnx").read_bytes())
    data[-10] ^= 0x01
    (art / "model.onnx").write_bytes(bytes(data))
    edit_manifest(art, lambda m: m["files"].update({"model.onnx": sha256_file(art / "model.onnx")}))
    load_manifest(art)  # without keys the forged manifest is self-consistent
    with pytest.raises(ArtifactError, match="signature does not match the manifest") as e:
        load_manifest(art, trusted_keys=[keys["a"][1]])
    assert "\n" not in str(e.value)
    r = bertrt("predict", art, "x", "--trusted-key", keys["a"][1])
    one_error_line(r, "signature does not match the manifest")


def test_unlisted_file_in_a_signed_artifact_is_refused(art, keys):
    sign_artifact(art, keys["a"][0])
    (art / "sub").mkdir()
    (art / "sub" / "model.onnx.data").write_bytes(b"weights the signature does not cover")
    load_manifest(art)  # without keys, extra files are not looked at
    with pytest.raises(ArtifactError, match="files its signed manifest does not list \\(sub/model.onnx.data\\)"):
        load_manifest(art, trusted_keys=[keys["a"][1]])


def test_wrong_key_and_corrupt_signature_are_refused(art, keys):
    sign_artifact(art, keys["a"][0])
    with pytest.raises(ArtifactError, match=f"signed by key {keys['a'][2]}, which is not among the trusted keys"):
        load_manifest(art, trusted_keys=[keys["b"][1]])
    sig = json.loads((art / SIGNATURE).read_text())
    raw = bytearray(base64.b64decode(sig["signature"]))
    raw[0] ^= 0x01
    sig["signature"] = base64.b64encode(bytes(raw)).decode()
    (art / SIGNATURE).write_text(json.dumps(sig))
    with pytest.raises(ArtifactError, match="signature does not match"):
        load_manifest(art, trusted_keys=[keys["a"][1]])
    for broken in ("not json", json.dumps(["a"]), json.dumps({"algorithm": "rsa", "signature": "AA=="}),
                   json.dumps({"algorithm": "ed25519", "signature": "@@not base64@@"})):
        (art / SIGNATURE).write_text(broken)
        with pytest.raises(ArtifactError, match=f"{SIGNATURE} is malformed"):
            load_manifest(art, trusted_keys=[keys["a"][1]])


def test_unsigned_artifact_is_refused_under_trusted_keys(art, keys):
    load_manifest(art)  # fine without keys
    with pytest.raises(ArtifactError, match="is not signed"):
        Runtime(art, device="cpu", trusted_keys=[keys["a"][1]])
    r = bertrt("verify", art, "--hashes-only", "--trusted-key", keys["a"][1])
    one_error_line(r, "is not signed", "bertrt sign")
    with pytest.raises(SigningKeyError, match="empty"):
        load_manifest(art, trusted_keys=[])


def test_unusable_keys_are_one_clear_error(art, tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SigningKeyError, match="not an Ed25519 public key"):
        load_manifest(art, trusted_keys=[ec_pub])
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        load_manifest(art, trusted_keys=[b"garbage"])
    with pytest.raises(SigningKeyError, match="cannot read the public key"):
        load_manifest(art, trusted_keys=[tmp_path / "absent.pub"])
    with pytest.raises(SigningKeyError, match="not a usable PEM private key"):
        sign_artifact(art, keys["a"][1])  # the public key given where the private one belongs
    assert not (art / SIGNATURE).exists()


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "a/../../x", "..\\x", "C:/x", "./model.onnx",
                                  "", SIGNATURE])
def test_manifest_names_must_stay_inside_the_artifact(art, tmp_path, name):
    (tmp_path / "outside.bin").write_bytes(b"secret")
    edit_manifest(art, lambda m: m["files"].update({name: sha256_file(tmp_path / "outside.bin")}))
    with pytest.raises(ArtifactError, match="outside the artifact folder or reserved names") as e:
        load_manifest(art)
    assert repr(name) in str(e.value)


def test_a_symlink_leaving_the_artifact_is_refused(art, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(art / "model.onnx", outside)
    os.remove(art / "model.onnx")
    os.symlink(outside, art / "model.onnx")  # same bytes, same sha256, but outside the folder
    with pytest.raises(ArtifactError, match="model.onnx is a link to outside the artifact folder"):
        load_manifest(art)


MALFORMED = {  # shape -> (manifest bytes or an edit, the words the error must hold)
    "not json": (b"{not json", "is not valid JSON"),
    "not utf-8": (b'{"task": "\xff"}', "is not valid JSON"),
    "a list": (b"[1, 2]", "JSON list, not an object"),
    "missing keys": (lambda m: m.pop("files") and m.pop("task"), "lacks task, files"),
    "files a list": (lambda m: m.update(files=["model.onnx"]), "files should be an object"),
    "digest not hex": (lambda m: m["files"].update({"model.onnx": "z" * 64}), "files should be an object"),
    "max_length a string": (lambda m: m.update(max_length="64"), "max_length should be a positive integer"),
    "labels not strings": (lambda m: m.update(labels=[1, 2]), "labels should be a list of strings"),
    "format a bool": (lambda m: m.update(format_version=True), "format_version should be an integer"),
    "task a number": (lambda m: m.update(task=3, inputs=None), "task should be a string; inputs should be"),
    "unknown task": (lambda m: m.update(task="translate"), "unknown task 'translate'"),
}


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_malformed_manifest_is_one_artifact_error(art, shape):
    content, words = MALFORMED[shape]
    if isinstance(content, bytes):
        (art / MANIFEST).write_bytes(content)
    else:
        edit_manifest(art, content)
    with pytest.raises(ArtifactError, match=words.replace("(", r"\(")) as e:
        Runtime(art, device="cpu")
    assert "\n" not in str(e.value)
    if shape in ("not json", "files a list"):  # and the CLI says it in one line
        one_error_line(bertrt("info", art), words)


def test_cli_keygen_sign_and_predict_with_trusted_key(art, tmp_path):
    r = bertrt("keygen", tmp_path / "k.pem")
    assert r.returncode == 0, r.stderr
    kid = r.stdout.split("key id ")[1].strip()
    assert (tmp_path / "k.pem.pub").is_file() and len(kid) == 16
    one_error_line(bertrt("keygen", tmp_path / "k.pem"), "--force")
    r = bertrt("sign", art, "--key", tmp_path / "k.pem")
    assert r.returncode == 0 and kid in r.stdout, r.stderr
    one_error_line(bertrt("sign", art, "--key", tmp_path / "k.pem"), "--force")
    r = bertrt("predict", art, *TEXTS, "--device", "cpu", "--threads", 1, "--trusted-key", tmp_path / "k.pem.pub")
    assert r.returncode == 0, r.stderr
    expected = json.loads(json.dumps(Runtime(art, device="cpu", threads=1).predict(TEXTS)))
    assert [json.loads(line) for line in r.stdout.splitlines()] == expected
    r = bertrt("verify", art, "--hashes-only", "--trusted-key", tmp_path / "k.pem.pub")
    assert r.returncode == 0 and "signature by a trusted key verified" in r.stdout, r.stderr


def test_runtime_imports_cryptography_only_for_trusted_keys(art):
    code = ("import sys; from bertrt.runtime import Runtime; Runtime(sys.argv[1], device='cpu', threads=1)"
            ".predict('x'); print('cryptography' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(art)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], (r.stdout, r.stderr)


def test_serve_with_trusted_key_refuses_an_unsigned_artifact_and_serves_a_signed_one(art, keys):
    import httpx

    from .serving import serve_process

    priv, pub, _ = keys["a"]
    r = bertrt("serve", art, "--device", "cpu", "--threads", 1, "--port", 0, "--trusted-key", pub)
    one_error_line(r, "is not signed", "bertrt sign")  # refused at start-up, before anything listens
    sign_artifact(art, priv)
    with serve_process(art, "--device", "cpu", "--threads", "1", "--trusted-key", str(pub)) as (url, _):
        got = httpx.post(f"{url}/v1/predict", json={"inputs": TEXTS}, timeout=30).json()["outputs"]
    expected = json.loads(json.dumps(Runtime(art, device="cpu", threads=1).predict(TEXTS)))
    assert [o["label"] for o in got] == [o["label"] for o in expected]
    for g, e in zip(got, expected):
        assert g["scores"] == pytest.approx(e["scores"], abs=1e-5)
