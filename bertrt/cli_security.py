"""Security commands of the ``bertrt`` command line: ``keygen`` and ``sign`` (artifact signatures), ``mask``
(personal-data masking). Merged into the main app by ``bertrt/cli.py``; thin over ``bertrt.signing`` and
``bertrt.mask``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer()

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
