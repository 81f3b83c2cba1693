"""The artifact format: what the runtime needs, and nothing else.

An artifact is a directory with ``model.onnx``, ``tokenizer.json`` and ``bertrt.json``, the manifest. The manifest
records how the model was built (task, labels, sequence length, input/output names, pooling, precision and
quantization recipe, pruning summary, parity report, versions) and the sha256 of every other file, which
``load_manifest`` checks before anything is used. Torch-free: the runtime imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .atomic import atomic_dir
from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "bertrt.json"
REQUIRED_KEYS = ("format_version", "task", "labels", "max_length", "inputs", "outputs", "precision", "files")
TASK_OUTPUTS = {  # ONNX output names per task, in order
    "classify": ["logits"],
    "multilabel": ["logits"],
    "relation": ["logits"],
    "ner": ["logits"],
    "qa": ["start_logits", "end_logits"],
    "embed": ["embedding"],
}
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_artifact(path: str | os.PathLike, files: dict[str, str | os.PathLike], manifest: dict,
                   force: bool = False) -> Path:
    """Copy ``files`` (name in the artifact -> source path) into a new artifact at ``path``, atomically.

    The manifest is completed with the format version, sha256 of every file and the creation time, then
    validated; an invalid manifest raises before anything becomes visible at ``path``.
    """
    manifest = dict(manifest)
    with atomic_dir(path, force) as tmp:
        hashes = {}
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
            hashes[name] = sha256_file(tmp / name)
        manifest.update(format_version=FORMAT_VERSION, files=hashes,
                        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        validate_manifest(manifest, where=str(path))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Path(path)


def validate_manifest(manifest: dict, where: str) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{where}: the manifest lacks {', '.join(missing)}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"{where} has format version {manifest['format_version']}, newer than this bertrt reads "
                            f"({FORMAT_VERSION}); upgrade bertrt")
    if manifest["task"] not in TASK_OUTPUTS:
        raise ArtifactError(f"{where}: unknown task {manifest['task']!r} in the manifest")
    for name in ("model.onnx", "tokenizer.json"):
        if name not in manifest["files"]:
            raise ArtifactError(f"{where}: the manifest lists no {name}")


def load_manifest(path: str | os.PathLike, verify: bool = True) -> dict:
    """Read and validate ``bertrt.json``; with ``verify`` (the default) check every file's sha256 first."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact directory not found: {path}")
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path} is not a bertrt artifact (no {MANIFEST}); create one with `bertrt export`")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf} is not valid JSON: {e}") from None
    validate_manifest(manifest, where=str(path))
    if verify:
        for name, digest in manifest["files"].items():
            f = path / name
            if not f.is_file():
                raise ArtifactError(f"{path}: {name} is missing")
            actual = sha256_file(f)
            if actual != digest:
                raise ArtifactError(f"{path}: {name} was modified or corrupted (sha256 {actual[:12]}..., manifest "
                                    f"says {digest[:12]}...); re-export the artifact")
    return manifest
