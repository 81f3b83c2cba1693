"""Security commands of the ``bertrt`` command line: ``keygen`` and ``sign`` (artifact signatures), ``mask``
(personal-data masking). Merged into the main app by ``bertrt/cli.py``; thin over ``bertrt.signing`` and
``bertrt.mask``."""

from __future__ import annotations

import os
from pathlib import Path
from enum import Enum
from typing import Optional

import typer

app = typer.Typer(rich_markup_mode=None)  # help texts say bertrt[extra]: not rich markup

PASSPHRASE_ENV = "BERTRT_SIGNING_PASSPHRASE"


@app.command()
def keygen(
    private: Path = typer.Argument(..., help="Where to write the new private key (PEM, mode 0600). Keep it off "
                                   "serving machines: only the machine that signs needs it."),
    public: Optional[Path] = typer.Option(None, "--public", help="Where to write the public key (PEM) that "
                                          "servers trust. Default: PRIVATE.pub."),
    force: bool = typer.Option(False, "--force", help="Replace existing key files (artifacts signed with the old "
                               "key are then refused by servers that trust only the new one)."),
):
    """Make an Ed25519 key pair for `bertrt sign` (private) and `--trusted-key` (public)."""
    from .signing import generate_keypair

    priv, pub, kid = generate_keypair(private, public, force=force)
    typer.echo(f"wrote {priv} (private) and {pub} (public), key id {kid}")


@app.command()
def sign(
    artifact: Path = typer.Argument(..., help="An artifact folder from `bertrt export`; its files' sha256 are "
                                    "checked before it is signed."),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM, from `bertrt keygen`). A passphrase, "
                             f"if the key has one, is read from ${PASSPHRASE_ENV}."),
    force: bool = typer.Option(False, "--force", help="Replace an existing signature (e.g. after rotating the "
                               "signing key)."),
):
    """Sign an artifact: write bertrt.sig, an Ed25519 signature of its manifest (which holds every file's sha256).
    Runtime(trusted_keys=...) and `--trusted-key` then refuse artifacts that are unsigned or were changed."""
    from .signing import SIGNATURE, sign_artifact

    passphrase = os.environ.get(PASSPHRASE_ENV)
    kid = sign_artifact(artifact, key, password=passphrase.encode() if passphrase else None, force=force)
    typer.echo(f"wrote {artifact / SIGNATURE} (key id {kid})")


class MaskStyle(str, Enum):
    tag = "tag"
    partial = "partial"
    hash = "hash"


@app.command("mask")
def mask_command(
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to mask. Omit them to read JSONL from --input or "
                                                "stdin."),
    input: Optional[Path] = typer.Option(None, "-i", "--input", help='JSONL file, one text per line: a JSON string '
                                         'or {"text": ...}. Default: stdin when no TEXT is given.'),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help='Write JSONL here instead of stdout: one '
                                          '{"text": <masked>, "found": [{"type", "start", "end"}]} per input, '
                                          "offsets into the original text."),
    style: MaskStyle = typer.Option(MaskStyle.tag, "--style", help="tag: <PHONE>. partial: keep a few characters "
                                    "(138****5678), for people who must recognise a value. hash: <PHONE:5c1e...>, "
                                    "a keyed HMAC, when records must still be joined on the value."),
    types: Optional[str] = typer.Option(None, "--types", help="Comma list of what to mask: EMAIL, PHONE, CARD, "
                                        "IBAN, IP, CN_ID, URL_CREDENTIALS, and with --ner PERSON, ORG, LOCATION. "
                                        "Default: all of them. Narrow it when, e.g., IP addresses must stay."),
    ner: Optional[Path] = typer.Option(None, "--ner", help="An NER artifact (bertrt export of an NER model): its "
                                       "person, organisation and location entities are masked too."),
    hash_key_file: Optional[Path] = typer.Option(None, "--hash-key-file", help="Secret key of --style hash (at "
                                                 "least 16 bytes). Default: the BERTRT_MASK_KEY environment "
                                                 "variable. Keep it the same to keep tokens stable across runs."),
    region: Optional[list[str]] = typer.Option(None, "--region", help="Country (ISO code) whose numbers may be "
                                               "written without a country code; repeat it. Default: CN, then US. "
                                               "Numbers with +CC are found whatever it says."),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help="Ed25519 public key the --ner "
                                                     "artifact must be signed by (see `bertrt sign`)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --output if it exists."),
):
    """Find and mask personal data: emails, phone numbers, payment cards, IBANs, IP addresses, Chinese resident ID
    numbers, credentials in URLs, and with --ner names, organisations and places. Prints counts, never values."""
    from .mask import Masker, load_hash_key, load_ner
    from .mask.phone import DEFAULT_REGIONS
    from .mask.stream import mask_stream, texts_of
    from .runtime.jsonl import check_io, run_io

    check_io(texts, input, output, force)
    key = load_hash_key(hash_key_file) if style == MaskStyle.hash else None
    runtime = load_ner(ner, trusted_keys=trusted_key or None) if ner is not None else None
    wanted = [t.strip().upper() for t in types.split(",") if t.strip()] if types else None
    masker = Masker(wanted, style.value, key, runtime, tuple(r.upper() for r in region) if region else DEFAULT_REGIONS)
    counts = run_io(texts, input, output, texts_of,
                    lambda items, out, bar: mask_stream(masker, items, out, progress=bar), "mask", "text")
    n = counts.pop("texts", 0)
    found = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
    typer.echo(f"masked {n} texts: {found}", err=True)
