"""The artifact format: what the runtime needs, and nothing else.

An artifact is a directory with ``model.onnx``, ``tokenizer.json`` and ``bertrt.json``, the manifest. The manifest
records how the model was built (task, labels, sequence length, input/output names, pooling, precision and
quantization recipe, pruning summary, parity report, versions) and the sha256 of every other file, which
``load_manifest`` checks before anything is used. ``bertrt sign`` adds ``bertrt.sig``, an Ed25519 signature of the
manifest's bytes; ``load_manifest(..., trusted_keys=...)`` then refuses artifacts not signed by a trusted key.
File names in the manifest must stay inside the artifact folder. Torch-free: the runtime imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .atomic import atomic_dir
from .digest import sha256_file
from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "bertrt.json"
SIGNATURE = "bertrt.sig"  # optional: an Ed25519 signature of the manifest's bytes (see bertrt/signing.py)
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


def validate_manifest(manifest, where: str) -> None:
    """Raise ``ArtifactError`` naming every problem of the first kind found: missing keys, wrong types, an unknown
    task, or a file name that could leave the artifact folder (absolute, ``..``, backslashes)."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: the manifest is a JSON {type(manifest).__name__}, not an object; re-export "
                            "the artifact")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{where}: the manifest lacks {', '.join(missing)}")
    wrong = [f"{key} should be {what}" for key, what, ok in _FIELD_TYPES if not ok(manifest[key])]
    if wrong:
        raise ArtifactError(f"{where}: malformed manifest: {'; '.join(wrong)}; re-export the artifact")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"{where} has format version {manifest['format_version']}, newer than this bertrt reads "
                            f"({FORMAT_VERSION}); upgrade bertrt")
    if manifest["task"] not in TASK_OUTPUTS:
        raise ArtifactError(f"{where}: unknown task {manifest['task']!r} in the manifest")
    bad = [name for name in manifest["files"] if not _safe_name(name)]
    if bad:
        raise ArtifactError(f"{where}: the manifest names files outside the artifact folder or reserved names: "
                            f"{', '.join(repr(n) for n in bad)}; refusing to read it")
    for name in ("model.onnx", "tokenizer.json"):
        if name not in manifest["files"]:
            raise ArtifactError(f"{where}: the manifest lists no {name}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _digest_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, str) and len(d) == 64
                                       and all(c in "0123456789abcdef" for c in d) for k, d in v.items())


_FIELD_TYPES = (  # (key, what it must be, check)
    ("format_version", "an integer >= 1", lambda v: _is_int(v) and v >= 1),
    ("task", "a string", lambda v: isinstance(v, str)),
    ("labels", "a list of strings", _str_list),
    ("max_length", "a positive integer", lambda v: _is_int(v) and v > 0),
    ("inputs", "a list of strings", _str_list),
    ("outputs", "a list of strings", _str_list),
    ("precision", "a string", lambda v: isinstance(v, str)),
    ("files", "an object of file name -> 64-digit lowercase hex sha256", _digest_map),
)


def _safe_name(name: str) -> bool:
    """A relative POSIX path inside the artifact: no absolute path, drive, backslash, NUL, ``.`` or ``..`` part,
    and not the manifest or its signature."""
    if not name or "\\" in name or "\0" in name or ":" in name or name.startswith("/"):
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and name not in (MANIFEST, SIGNATURE)


def load_manifest(path: str | os.PathLike, verify: bool = True, trusted_keys=None) -> dict:
    """Read and validate ``bertrt.json``; with ``verify`` (the default) check every file's sha256 first.

    ``trusted_keys`` (Ed25519 public keys: PEM file paths or PEM bytes): refuse the artifact unless ``bertrt.sig``
    holds a signature of the manifest by one of them; file hashes are then always checked, whatever ``verify``
    says, and files the manifest does not list are refused. Every problem is one ``ArtifactError`` (key files that cannot be used: ``SigningKeyError``).
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact directory not found: {path}")
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path} is not a bertrt artifact (no {MANIFEST}); create one with `bertrt export`")
    raw = mf.read_bytes()  # read once: the bytes whose signature is checked are the bytes that are parsed
    if trusted_keys is not None:
        from .signing import check_signature

        check_signature(str(path), raw, path / SIGNATURE, trusted_keys)
        verify = True
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"{mf} is not valid JSON: {e}") from None
    validate_manifest(manifest, where=str(path))
    if verify:
        root = path.resolve()
        for name, digest in manifest["files"].items():
            f = path / name
            if not f.resolve().is_relative_to(root):
                raise ArtifactError(f"{path}: {name} is a link to outside the artifact folder; refusing to read it")
            if not f.is_file():
                raise ArtifactError(f"{path}: {name} is missing")
            actual = sha256_file(f)
            if actual != digest:
                raise ArtifactError(f"{path}: {name} was modified or corrupted (sha256 {actual[:12]}..., manifest "
                                    f"says {digest[:12]}...); re-export the artifact")
    if trusted_keys is not None:  # a file the signature does not cover (e.g. ONNX external data) must not be there
        listed = set(manifest["files"]) | {MANIFEST, SIGNATURE}
        extra = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if not p.is_dir() and p.relative_to(path).as_posix() not in listed)
        if extra:
            raise ArtifactError(f"{path} holds files its signed manifest does not list ({', '.join(extra[:5])}); "
                                "remove them or rebuild and sign the artifact")
    return manifest


# ---------------------------------------------------------------------------------------------------- bertrt info
GATE_STAGES = ("export_fp32", "fused_fp32")  # the gates a variant passed on its way, before its final ones


def layer_table(heads: list[int], ffn: list[int], original: tuple[list[int], list[int]] | None = None) -> list[str]:
    """Per-layer attention heads and FFN sizes as table lines; with ``original``, the unpruned sizes beside them."""
    lines = ["layer  heads   ffn" + ("   unpruned heads   ffn" if original else "")]
    for i, (h, f) in enumerate(zip(heads, ffn)):
        lines.append(f"{i:>5}  {h:>5}  {f:>4}" + (f"   {original[0][i]:>14}  {original[1][i]:>4}" if original else ""))
    return lines


def _number(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def format_manifest(path: str | os.PathLike, m: dict) -> str:
    """The manifest as ``bertrt info ARTIFACT`` prints it: task and labels, precision, fusions and quantized-node
    counts, heads and FFN sizes per layer, every gate with its number, where it came from and the versions.
    Kept-neuron indices and rescaling reports stay in the manifest (``bertrt info --json``)."""
    labels = m.get("labels") or []
    lines = [f"artifact     {path} (format {m['format_version']}, {len(m['files'])} files verified)",
             f"task         {m['task']}" + (f"; {len(labels)} labels: {', '.join(labels)}" if labels else "")
             + (f"; {m.get('pooling')} pooling, {'' if m.get('normalize') else 'not '}normalized"
                if m["task"] == "embed" else ""),
             *([f"prompt       {m['prompt']['pattern']!r}, verbalizer "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in m["prompt"]["verbalizer"].items())]
               if m.get("prompt") else []),
             f"precision    {m['precision']}", f"max length   {m['max_length']} tokens",
             f"inputs       {', '.join(m['inputs'])}; outputs {', '.join(m['outputs'])}"]
    ens = m.get("ensemble")
    if ens:
        lines.append(f"ensemble     {len(ens['members'])} members, {ens['combine']}: "
                     + "; ".join(f"{x['precision']}" + (f" {x['model']['layers']} layers" if x.get("model") else "")
                                 for x in ens["members"]))
    opt = m.get("optimization") or {}
    if not ens:  # an ensemble's members carry their own fusions
        lines.append(f"fusions      {_counts(opt.get('fusions') or {})}" if opt.get("enabled")
                     else "fusions      none (unfused graph)")
    q = m.get("quantization")
    if q:
        counts = q.get("counts") or {}
        quantized = {k: v for k, v in counts.items() if not k.endswith("_fp32") and v}
        fp32 = {k[:-len("_fp32")]: v for k, v in counts.items() if k.endswith("_fp32")}
        lines.append(f"quantized    {_counts(quantized)} ({q.get('mode')} INT8, preset {q.get('preset')})")
        units = ", ".join(q.get("fp32_units") or []) or "none"
        lines.append(f"left fp32    {_counts(fp32)}; units kept in fp32: {units}")
    model = m.get("model")
    if model:
        lines.append(f"model        {model['layers']} layers, hidden {model['hidden_size']}, "
                     f"vocab {model['vocab_size']}")
    record = (m.get("pruning") or {}).get("prune")
    if isinstance(record, dict):
        o = record["original"]
        lines.append(f"pruned       to {100 * record['kept_flops']:.1f}% of the encoder FLOPs at length "
                     f"{record['seq_len']} ({record['method']}, {record['examples']} examples)")
        r = record.get("recovery")
        if r:
            lines.append(f"recovered    {r['epochs']:g} epoch(s) of distillation, {r['steps']} steps")
    elif m.get("pruning"):
        lines.append("pruned       yes (no pruning record in the checkpoint it was exported from)")
    if model:
        lines += layer_table(model["num_heads"], model["ffn_sizes"],
                             (o["num_heads"], o["ffn_sizes"]) if isinstance(record, dict) else None)
    lines += _gate_lines(m.get("parity") or {})
    if m.get("backends"):
        from .runtime.backends import describe_backends  # lazily: the runtime imports this module

        lines.append(f"backends     {describe_backends(m)}")
    source = m.get("source") or {}
    if source.get("checkpoint"):
        digest = source.get("weights_sha256")
        lines.append(f"source       {source['checkpoint']}"
                     + (f" (weights sha256 {digest[:12]}...)" if digest else ""))
    if m.get("tokenizer_fingerprint"):
        lines.append(f"tokenizer    {m['tokenizer_fingerprint'][:16]}")
    versions = m.get("versions") or {}
    lines.append(f"versions     {', '.join(f'{k} {v}' for k, v in sorted(versions.items())) or 'not recorded'}")
    if m.get("created"):
        lines.append(f"created      {m['created']}")
    return "\n".join(lines)


def _gate_lines(parity: dict) -> list[str]:
    final = parity.get("final")
    if not final:
        return ["gates        not recorded (an artifact written without bertrt export)"]
    against = final.get("against") or f"{final['precision']} against the PyTorch fp32 model"
    lines = [f"gates        {'passed' if final['passed'] else 'FAILED'}: {against} on {final['examples']} examples "
             f"of {parity.get('data', '?')}"]
    for name, g in final["gates"].items():
        verdict = "undecided" if g.get("verdict") == "undecided" else ("passed" if g["passed"] else "FAILED")
        lines.append(f"  {name:<11} {_number(g['value']):<10} {verdict:<7} {g['rule']}")
    if final.get("decided_by"):
        lines.append(f"  decided by {final['decided_by']}")
    for stage in GATE_STAGES:
        s = parity.get(stage)
        if s:
            values = ", ".join(f"{k} {_number(g['value'])}" for k, g in s["gates"].items())
            lines.append(f"  {stage:<11} {'passed' if s['passed'] else 'FAILED'} on the way ({values})")
    return lines
