"""Ed25519 signatures over an artifact's manifest: key pairs, ``sign_artifact`` and ``check_signature``.

The manifest (``bertrt.json``) holds the sha256 of every file of the artifact, so a signature over the manifest's
exact bytes covers the whole artifact: ``artifact.load_manifest(path, trusted_keys=...)`` checks the signature,
then every file's sha256. The signature lives beside the manifest in ``bertrt.sig``, a small JSON file::

    {"format": 1, "algorithm": "ed25519", "key_id": "<sha256 of the raw public key, 16 hex>",
     "signature": "<base64 of the 64-byte Ed25519 signature of bertrt.json's bytes>"}

All cryptography comes from the ``cryptography`` package, imported only here and only when a key is used, so the
runtime stays light when no trusted keys are given. Torch-free.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from .artifact import MANIFEST, SIGNATURE, load_manifest
from .errors import ArtifactError, OutputExistsError, SigningKeyError

SIGNATURE_FORMAT = 1
ALGORITHM = "ed25519"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningKeyError("artifact signatures need the cryptography package: pip install 'bertrt[sign]'") \
            from None
    return serialization, ed25519, InvalidSignature


def key_id(public_key) -> str:
    """A short, stable name for a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_pem(source, what: str) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), f"the {what} given as bytes"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise SigningKeyError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def load_public_key(source):
    """An Ed25519 public key from a PEM file path or PEM bytes; ``SigningKeyError`` for anything else."""
    serialization, ed25519, _ = _crypto()
    pem, where = _read_pem(source, "public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise SigningKeyError(f"{where} is not a PEM public key; make one with `bertrt keygen`") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningKeyError(f"{where} is a {type(key).__name__}, not an Ed25519 public key; make one with "
                              "`bertrt keygen`")
    return key


def load_private_key(source, password: bytes | None = None):
    """An Ed25519 private key from a PEM (PKCS#8) file path or PEM bytes, optionally password-protected."""
    serialization, ed25519, _ = _crypto()
    pem, where = _read_pem(source, "private key")
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"{where} is not a usable PEM private key ({e}); make one with `bertrt keygen`") \
            from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"{where} is a {type(key).__name__}, not an Ed25519 private key")
    return key


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike | None = None,
                     force: bool = False) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: the private key (PKCS#8 PEM, mode 0600) and the public key (PEM, default
    ``<private>.pub``). Returns both paths and the key id. Existing files are kept unless ``force``."""
    serialization, ed25519, _ = _crypto()
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() and not force:
            raise OutputExistsError(f"{p} already exists; pass --force to replace it")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_file(private_path, private_pem, mode=0o600)
    _write_file(public_path, public_pem, mode=0o644)
    return private_path, public_path, key_id(key.public_key())


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary sibling created with ``mode``, then rename it over ``path``."""
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sign_artifact(artifact: str | os.PathLike, private_key, password: bytes | None = None,
                  force: bool = False) -> str:
    """Check the artifact (manifest and every file's sha256), then write ``bertrt.sig`` over its manifest's bytes.

    ``private_key``: a PEM path or PEM bytes. Replacing an existing signature needs ``force``. Returns the key id.
    """
    path = Path(artifact)
    key = load_private_key(private_key, password)
    sig_path = path / SIGNATURE
    if sig_path.exists() and not force:
        raise OutputExistsError(f"{sig_path} already exists; pass --force to sign the artifact again")
    load_manifest(path, verify=True)  # never sign an artifact that is already broken
    manifest_bytes = (path / MANIFEST).read_bytes()
    kid = key_id(key.public_key())
    record = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": kid,
              "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii")}
    _write_file(sig_path, (json.dumps(record, indent=2) + "\n").encode(), mode=0o644)
    return kid


def check_signature(where: str, manifest_bytes: bytes, sig_path: Path, trusted_keys) -> str:
    """Raise ``ArtifactError`` unless ``sig_path`` holds a valid signature of ``manifest_bytes`` by one of
    ``trusted_keys`` (PEM paths or PEM bytes); return the id of the key that signed it."""
    _, _, InvalidSignature = _crypto()
    single = isinstance(trusted_keys, (str, bytes, bytearray, os.PathLike))  # one key given bare, not in a list
    keys = [trusted_keys] if single else list(trusted_keys)
    if not keys:
        raise SigningKeyError("trusted_keys is empty: give at least one public key, or None to skip signatures")
    trusted = {}
    for source in keys:
        k = load_public_key(source)
        trusted[key_id(k)] = k
    if not sig_path.is_file():
        raise ArtifactError(f"{where} is not signed (no {SIGNATURE}) but trusted keys were given; sign it with "
                            "`bertrt sign`")
    try:
        record = json.loads(sig_path.read_bytes())
        if record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {record.get('algorithm')!r}, expected {ALGORITHM!r}")
        signature = base64.b64decode(record["signature"], validate=True)
        claimed = str(record.get("key_id", "?"))
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as e:
        raise ArtifactError(f"{where}: {SIGNATURE} is malformed ({type(e).__name__}: {e}); sign the artifact "
                            "again") from None
    for kid, key in trusted.items():
        try:
            key.verify(signature, manifest_bytes)
            return kid
        except InvalidSignature:
            continue
    if claimed in trusted:
        raise ArtifactError(f"{where}: the signature does not match the manifest (the manifest or {SIGNATURE} "
                            "was changed after signing); rebuild the artifact and sign it again")
    raise ArtifactError(f"{where} is signed by key {claimed}, which is not among the trusted keys "
                        f"({', '.join(sorted(trusted))})")
