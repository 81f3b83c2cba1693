"""sha256 digests, written once: of files (artifact manifests, train state, PEFT bases, export sources) and of
JSON-able values (tokenizer fingerprints, cache keys). Torch-free; the runtime imports it through ``artifact``."""

from __future__ import annotations

import hashlib
import json
import os


def sha256_file(*paths: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (of several files' bytes one after the other, in the order given); read in
    blocks, so a large file never sits in memory whole."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sha256_json(value) -> str:
    """Hex sha256 of ``value`` as JSON with sorted keys: equal values give equal digests whatever their key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
