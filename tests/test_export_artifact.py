"""The export command end to end: artifact contents, --force, tampering, a kill midway, bad input, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bertrt.artifact import load_manifest  # noqa: E402
from bertrt.converters.config import ExportConfig, ParityConfig, QuantizeConfig  # noqa: E402
from bertrt.converters.pipeline import export_artifact, verify_artifact  # noqa: E402
from bertrt.errors import (ArtifactError, CheckpointError, EvalDataError, ExportError,  # noqa: E402
                           OutputExistsError)

from .test_export_fixtures import LABELS, make_checkpoint  # noqa: E402

QUIET = dict(log=lambda m: None, progress=False)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {t: make_checkpoint(root, t) for t in ("classify", "ner", "base")}


@pytest.fixture(scope="module")
def artifact(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("arts") / "classify"
    export_artifact(ckpts["classify"], out, **QUIET)
    return out


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bertrt.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


def test_artifact_holds_the_files_and_a_complete_manifest(artifact):
    m = load_manifest(artifact)
    assert sorted(p.name for p in artifact.iterdir()) == ["bertrt.json", "model.onnx", "tokenizer.json"]
    assert m["task"] == "classify" and m["labels"] == LABELS["classify"] and m["precision"] == "fp32"
    assert m["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and m["outputs"] == ["logits"]
    assert m["optimization"]["fusions"]["Attention"] == 2 and m["padding"] == "any"
    assert m["export"]["opset"] == 17 and m["max_length"] == 128
    final = m["parity"]["final"]
    assert final["passed"] and final["gates"]["tensor"]["value"] <= 1e-4 and final["agreement"] == 1.0
    assert m["parity"]["data"] == "built-in English sample" and final["examples"] >= 90
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime", "bertrt"}
    assert len(m["tokenizer_fingerprint"]) == 64


def test_exporting_over_an_artifact_needs_force(artifact, ckpts):
    before = (artifact / "bertrt.json").read_text()
    with pytest.raises(OutputExistsError, match="--force"):
        export_artifact(ckpts["classify"], artifact, **QUIET)
    assert (artifact / "bertrt.json").read_text() == before
    r = _cli("export", ckpts["classify"], "-o", artifact)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "--force" in r.stderr
    assert (artifact / "bertrt.json").read_text() == before


def test_a_tampered_artifact_is_refused_at_load(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    load_manifest(copy)  # intact: loads
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx was modified"):
        load_manifest(copy)
    r = _cli("verify", copy, "--hashes-only")
    assert r.returncode == 1 and "modified or corrupted" in r.stderr


def _run_until(args: list, marker: str, timeout: float = 240) -> subprocess.Popen:
    """Start the CLI and return once ``marker`` appears on its stderr (the process keeps running)."""
    proc = subprocess.Popen([sys.executable, "-m", "bertrt.cli", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, bufsize=1)
    deadline, seen = time.time() + timeout, ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen += line
        if marker in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"never saw {marker!r}; stderr was: {seen[-2000:]}")


@pytest.mark.slow
def test_killing_the_export_midway_leaves_nothing_half_written(ckpts, artifact, tmp_path):
    out = tmp_path / "out" / "art"
    proc = _run_until(["export", ckpts["classify"], "-o", out, "--quantize", "dynamic"], "optimizing")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert _siblings(out) == []  # no temporary sibling either: the work happens elsewhere until the final rename

    # the same over an existing artifact with --force: the old one survives whole and still verifies
    import shutil

    old = tmp_path / "second" / "old"
    shutil.copytree(artifact, old)
    before = (old / "bertrt.json").read_text()
    proc = _run_until(["export", ckpts["classify"], "-o", old, "--force", "--quantize", "dynamic"], "quantizing")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert (old / "bertrt.json").read_text() == before
    load_manifest(old, verify=True)
    assert _siblings(old) == ["old"]


def test_checkpoint_without_the_head_the_task_needs(ckpts, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ExportError, match="no classify head .* fine-tune it for classify first, or export it with "
                                          "--task embed"):
        export_artifact(ckpts["base"], out, ExportConfig(task="classify"), **QUIET)
    with pytest.raises(ExportError, match="no ner head"):
        export_artifact(ckpts["classify"], out, ExportConfig(task="ner"), **QUIET)
    assert not out.exists() and _siblings(out) == []


def test_unknown_task_is_refused_before_anything_runs(ckpts, tmp_path):
    with pytest.raises(ExportError, match="unknown task 'summarize'"):
        ExportConfig(task="summarize")
    r = _cli("export", ckpts["classify"], "-o", tmp_path / "x", "--task", "summarize")
    assert r.returncode != 0 and "summarize" in r.stderr and not (tmp_path / "x").exists()


def test_openvino_options_that_cannot_apply_are_refused_before_anything_runs(ckpts, tmp_path):
    r = _cli("export", ckpts["classify"], "-o", tmp_path / "x", "--openvino", "off", "--openvino-bf16")
    assert r.returncode == 1
    assert r.stderr == ("error: --openvino-bf16 adds a candidate to the OpenVINO variant: not with --openvino off\n")
    assert not (tmp_path / "x").exists()


def test_eval_file_of_the_wrong_task_is_refused(ckpts, tmp_path):
    ner = tmp_path / "ner.jsonl"
    ner.write_text(json.dumps({"tokens": ["Alice", "lives", "in", "Paris"], "tags": ["O", "O", "O", "B-LOC"]}) + "\n")
    with pytest.raises(EvalDataError, match="holds ner data but the model's task is classify"):
        export_artifact(ckpts["classify"], tmp_path / "x", parity=ParityConfig(eval_path=str(ner)), **QUIET)
    bad_labels = tmp_path / "labels.jsonl"
    bad_labels.write_text(json.dumps({"text": "Shares fell.", "label": "weather"}) + "\n")
    with pytest.raises(Exception, match="'weather'"):
        export_artifact(ckpts["classify"], tmp_path / "x", parity=ParityConfig(eval_path=str(bad_labels)), **QUIET)
    r = _cli("export", ckpts["classify"], "-o", tmp_path / "x", "--eval", ner)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "holds ner data" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder(ckpts, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(Exception, match="permission denied"):
            export_artifact(ckpts["classify"], ro / "art", **QUIET)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_output_under_a_file_is_refused_with_one_line(ckpts, tmp_path):
    """Works as root too: a path below a regular file can never be created."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = _cli("export", ckpts["classify"], "-o", blocker / "art")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot create the folder" in r.stderr
    assert blocker.read_text() == "not a folder"


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        export_artifact(tmp_path / "nope", tmp_path / "x", **QUIET)


def test_labelled_eval_data_measures_the_task_metric_and_verify_reruns_the_gates(ckpts, artifact, tmp_path):
    """Labels: mostly the fp32 model's own predictions, so the metric is meaningful (and not 100%)."""
    from bertrt.checkpoint import load_checkpoint
    from bertrt.converters import sample
    from bertrt.converters.evaldata import Example, encode
    from bertrt.converters.parity import torch_outputs
    from bertrt.tokenizer import load_tokenizer

    model = load_checkpoint(ckpts["classify"])
    texts = sample.TEXTS[:60]
    batches = encode([Example(text=t) for t in texts], load_tokenizer(ckpts["classify"]), "classify", 128, 16)
    pred = np.concatenate([o["logits"].argmax(-1) for o in torch_outputs(model, batches)])
    gold = [(p + 1) % 3 if i % 10 == 0 else p for i, p in enumerate(pred)]  # every tenth label wrong: 90%
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": LABELS["classify"][g]}) + "\n" for t, g in
                            zip(texts, gold)))
    m = export_artifact(ckpts["classify"], tmp_path / "art", quantize=QuantizeConfig(mode="dynamic"),
                        parity=ParityConfig(eval_path=str(data)), **QUIET)
    task = m["parity"]["final"]["gates"]["task"]
    assert task["reference"] == pytest.approx(0.9) and task["metric"] == "accuracy"
    assert task["value"] <= 0.5 and task["passed"]

    report = verify_artifact(tmp_path / "art", eval_path=str(data), **QUIET)
    assert report["passed"] and report["gates"]["task"]["reference"] == pytest.approx(0.9)
    r = _cli("verify", artifact)
    assert r.returncode == 0 and '"passed": true' in r.stdout


def test_verify_refuses_when_the_reference_checkpoint_changed(ckpts, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(ckpts["ner"], ck)
    export_artifact(ck, tmp_path / "art", **QUIET)
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="changed since the export"):
        verify_artifact(tmp_path / "art", **QUIET)


def test_pruned_checkpoint_records_its_pruning_in_the_manifest(tmp_path):
    ck = make_checkpoint(tmp_path, "classify", heads=[4, 1], ffn=[96, 24])
    (ck / "pruning.json").write_text(json.dumps({"kept_flops": 0.5, "seq_len": 128}))
    m = export_artifact(ck, tmp_path / "art", **QUIET)
    assert m["pruning"]["num_heads"] == [4, 1] and m["pruning"]["ffn_sizes"] == [96, 24]
    assert m["pruning"]["prune"]["kept_flops"] == 0.5
    assert m["optimization"]["fusions"]["Attention"] == 2 and m["parity"]["final"]["gates"]["tensor"]["value"] <= 1e-4
