"""The OpenVINO backend behind the one Runtime: the export's IR variant (fp32, or NNCF INT8 with --quantize) is
gated like the ONNX one and recorded with its timing; each backend gives the ONNX Runtime fp32 reference's decisions
on real text within its precision's budget, and the same answer for a text alone as inside a batch; ``auto``
follows the recorded numbers; the onnxruntime backend never imports openvino."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from bertrt.converters import evaldata  # noqa: E402
from bertrt.converters.config import OpenVINOConfig, ParityConfig, QuantizeConfig  # noqa: E402
from bertrt.converters.parity import check  # noqa: E402
from bertrt.converters.pipeline import export_artifact  # noqa: E402
from bertrt.errors import DeviceError  # noqa: E402
from bertrt.runtime import Runtime  # noqa: E402
from bertrt.runtime.backends import (OPENVINO_FILES, OpenVINOSession, choose_backend, cpu_precisions,  # noqa: E402
                                     describe_backends)
from bertrt.tokenizer import load_tokenizer  # noqa: E402

from .test_export_fixtures import make_checkpoint  # noqa: E402

# real text the gates never saw (the export calibrates and gates on the built-in sample)
TEXTS = [
    "The council will vote on the new budget next Tuesday.",
    "Our flight was delayed by three hours because of fog.",
    "She finished the race in second place, just behind the champion.",
    "The software update made the laptop noticeably faster.",
    "Investors welcomed the news and the shares rose by 4%.",
    "Please remember to bring your passport to the interview.",
    "The orchestra's new conductor is only twenty-nine years old.",
    "Heavy snow closed several roads in the mountains overnight.",
    "A local bakery won the national bread award this year.",
    "The committee rejected the proposal by a narrow margin.",
    "Doctors advise drinking more water during hot weather.",
    "The museum reopened after a two-year renovation.",
    "He forgot his umbrella and got soaked on the way home.",
    "The startup raised 12 million dollars in its first funding round.",
    "Fans queued all night to buy tickets for the concert.",
    "Scientists recorded the coldest temperature in the region's history.",
    "The train to Manchester leaves from platform four.",
    "Could you explain how the new tax rules affect small firms?",
    "The goalkeeper saved a penalty in the final minute.",
    "Engineers are testing a battery that charges in ten minutes.",
    "Why does the printer keep jamming?",
    "The library will extend its opening hours during exams.",
    "Rents in the city centre have risen sharply since spring.",
    "The chef recommends the fish with a glass of white wine.",
]
QUIET = dict(log=lambda m: None, progress=False)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    ckpt = make_checkpoint(root, "classify", seed=3)
    fp32 = export_artifact(ckpt, root / "fp32", openvino=OpenVINOConfig("on"), **QUIET)
    int8 = export_artifact(ckpt, root / "int8", quantize=QuantizeConfig(mode="dynamic"),  # the NNCF IR alone
                           openvino=OpenVINOConfig("on", bf16=False), **QUIET)
    return {"fp32": (root / "fp32", fp32), "int8": (root / "int8", int8)}


def _matmul_inputs(xml) -> list[list[str]]:
    """For each MatMul of the IR: the op types producing its inputs."""
    return [[i.get_source_output().get_node().get_type_name() for i in op.inputs()]
            for op in ov.Core().read_model(str(xml)).get_ops() if op.get_type_name() == "MatMul"]


def test_export_writes_a_gated_and_timed_openvino_variant(artifacts):
    for kind, (path, m) in artifacts.items():
        v = m["backends"]["openvino"]
        assert v["passed"] and v["parity"]["passed"] and v["files"] == list(OPENVINO_FILES)
        assert all(f in m["files"] for f in OPENVINO_FILES)  # hashed and verified like every file
        assert v["precision"] == ("int8-nncf" if kind == "int8" else "fp32")
        assert v["seconds"] > 0 and m["backends"]["onnxruntime"]["seconds"] > 0
        assert m["backends"]["onnxruntime"]["precision"] == m["precision"]
        matmuls = _matmul_inputs(path / OPENVINO_FILES[0])
        assert len(matmuls) == 2 * 6 + 2  # per layer q, k, v, attention output, FFN in, FFN out; pooler; classifier
        if kind == "int8":  # every one INT8: activations through FakeQuantize, int8 weights dequantized (Multiply)
            assert all(m == ["FakeQuantize", "Multiply"] for m in matmuls), matmuls
            assert v["parity"]["gates"]["tensor"]["rule"] == "SNR >= 20 dB"
        else:
            assert all(m[0] != "FakeQuantize" for m in matmuls) and v["parity"]["gates"]["tensor"]["value"] <= 1e-4
        # no bf16 candidate: not asked for fp32, refused for the INT8 one
        assert v["computes"] == {"f32": {"ir": v["precision"], "passed": True, "seconds": v["seconds"]}}
        assert v["inference_precision"] == "f32"
        timed = {k: m["backends"][k]["seconds"] for k in ("onnxruntime", "openvino")}
        fastest = min(timed, key=timed.get)
        rt = Runtime(path)
        assert rt.backend == fastest  # auto follows the export's numbers
        if fastest == "openvino":
            assert rt.session.precision == v["inference_precision"]
        assert describe_backends(m) == (f"onnxruntime {m['precision']} {1000 * timed['onnxruntime']:.1f} ms; "
                                        f"openvino {v['precision']} {1000 * timed['openvino']:.1f} ms (per pass "
                                        f"over the gate batches); auto picks {fastest}")  # bertrt info, export


def _batches(path):
    examples = [evaldata.Example(text=t) for t in TEXTS]
    return evaldata.encode(examples, load_tokenizer(path / "tokenizer.json"), "classify", 64, 7,
                           labels=["business", "sport", "tech"])


@pytest.mark.parametrize("kind,backend", [("fp32", "openvino"), ("int8", "onnxruntime"), ("int8", "openvino")])
def test_each_backend_decides_as_the_onnxruntime_fp32_reference(artifacts, kind, backend):
    ref_path = artifacts["fp32"][0]
    reference = Runtime(ref_path, backend="onnxruntime")
    variant = Runtime(artifacts[kind][0], backend=backend)
    assert variant.backend == backend
    batches = _batches(ref_path)
    ref = [reference.session.run(b.feeds) for b in batches]
    out = [variant.session.run(b.feeds) for b in batches]
    report = check("classify", kind, ref, out, batches, ParityConfig())
    if kind == "fp32":  # the same computation: 1e-4 on logits and every decision
        assert report["gates"]["tensor"]["value"] <= 1e-4 and report["agreement"] == 1.0
    else:  # no flip beyond the noise the precision measurably adds, and the SNR floor
        stats = report["gates"]["decision"]["statistics"]
        assert stats["confident_flips"] == 0 and report["gates"]["tensor"]["value"] >= 20.0
    assert report["passed"]
    labels = [a["label"] for a in variant.predict(TEXTS)]
    if kind == "fp32":
        assert labels == [a["label"] for a in reference.predict(TEXTS)]


# fp32 on either engine and NNCF's static INT8 (fixed activation scales) compute each row on its own: a text's
# answer alone and inside a padded batch differ by float summation order only. ONNX Runtime's dynamic INT8 scales
# activations per tensor, i.e. over the whole batch, so its rows move with their neighbours (measured: 4.1e-3).
SCORE_ATOL = {("fp32", "onnxruntime"): 1e-5, ("fp32", "openvino"): 1e-5, ("int8", "openvino"): 1e-5,
              ("int8", "onnxruntime"): 1e-2}


@pytest.mark.parametrize("kind,backend", sorted(SCORE_ATOL))
def test_batch_invariance_per_backend(artifacts, kind, backend):
    rt = Runtime(artifacts[kind][0], backend=backend, max_batch_size=64)
    together = rt.predict(TEXTS)
    alone = [rt.predict(t) for t in TEXTS]
    worst = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(together, alone) for k in a["scores"])
    assert worst <= SCORE_ATOL[(kind, backend)], worst
    if SCORE_ATOL[(kind, backend)] <= 1e-5:
        assert [a["label"] for a in together] == [b["label"] for b in alone]


def _manifest(ort_s=None, ov_s=None, ov_passed=True) -> dict:
    b = {"onnxruntime": {"precision": "int8-dynamic", "passed": True, **({"seconds": ort_s} if ort_s else {})},
         "openvino": {"precision": "int8-nncf", "passed": ov_passed, "files": list(OPENVINO_FILES),
                      **({"seconds": ov_s} if ov_s else {})}}
    return {"backends": b, "files": {f: "0" * 64 for f in ["model.onnx", "tokenizer.json", *OPENVINO_FILES]}}


def test_backend_choice_follows_the_recorded_numbers_and_refuses_what_cannot_run():
    assert choose_backend(_manifest(0.2, 0.1), "auto", "cpu") == "openvino"
    assert choose_backend(_manifest(0.1, 0.2), "auto", "cpu") == "onnxruntime"
    assert choose_backend(_manifest(0.2, 0.1, ov_passed=False), "auto", "cpu") == "onnxruntime"
    assert choose_backend(_manifest(), "auto", "cpu") == "onnxruntime"  # nothing measured: the default engine
    assert choose_backend(_manifest(0.2, 0.1), "auto", "cuda") == "onnxruntime"
    assert choose_backend(_manifest(0.1, 0.2), "openvino", "cpu") == "openvino"  # asked for: used
    with pytest.raises(DeviceError, match="no OpenVINO variant that passed"):
        choose_backend(_manifest(0.2, 0.1, ov_passed=False), "openvino", "cpu")
    with pytest.raises(DeviceError, match="runs on the CPU"):
        choose_backend(_manifest(0.2, 0.1), "openvino", "cuda")
    with pytest.raises(DeviceError, match="unknown backend"):
        choose_backend(_manifest(), "tensorrt", "cpu")
    plain = {"files": {"model.onnx": "0" * 64}}  # an artifact exported without the variant
    assert choose_backend(plain, "auto", "cpu") == "onnxruntime"


def test_onnxruntime_backend_never_imports_openvino(artifacts):
    code = ("import sys, json; from bertrt.runtime import Runtime; "
            f"rt = Runtime({str(artifacts['int8'][0])!r}, backend='onnxruntime'); rt.predict('a text'); "
            "print(json.dumps(['openvino' in sys.modules, 'torch' in sys.modules, rt.backend]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, False, "onnxruntime"]


def test_bench_times_the_openvino_peers_interleaved_with_the_others(artifacts, tmp_path):
    from bertrt.bench.peers import installed_peers
    from bertrt.bench.run import BenchConfig, run_bench

    assert {"ov-fp32", "ov-int8"} <= set(installed_peers())  # "all" includes them here
    path, manifest = artifacts["int8"]
    ckpt = manifest["source"]["checkpoint"]
    reference = Runtime(artifacts["fp32"][0], backend="onnxruntime").predict(TEXTS)
    data = tmp_path / "news.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": a["label"]}) + "\n" for t, a in zip(TEXTS, reference)))
    doc = run_bench([path], [data], tmp_path / "out", BenchConfig(peers=["ort-int8", "ov-fp32", "ov-int8"],
                    batch_sizes=[1, 8], repeats=1, latency_n=4, progress=False), reference=ckpt, log=lambda m: None)
    rows = {r["variant"]: r for r in doc["rows"]}
    ov_fp32, ov_int8 = rows["OpenVINO plain export"], rows["OpenVINO NNCF INT8"]
    for r in (ov_fp32, ov_int8, rows["ONNX Runtime dynamic INT8 (Optimum recipe)"]):
        assert r["status"] == "timed" and r["kind"] == "peer" and r["throughput"]["8"]["seq_per_s"] > 0
        assert r["agreement"] >= 0.9, r["agreement"]  # no gate for peers, but they must be the same model
    # int8 weights: a quarter of the encoder's bytes; the embedding tables (most of this tiny model) stay fp32
    assert ov_int8["precision"] == "int8-nncf" and ov_int8["size_mb"] < 0.7 * ov_fp32["size_mb"]
    ours = [r for r in doc["rows"] if r["kind"] == "bertrt"][0]
    engine = Runtime(path).backend
    assert ours["status"] == "timed" and ours["variant"].endswith("openvino)" if engine == "openvino" else "int8)")
    assert ours["precision"] == ("int8-nncf" if engine == "openvino" else "int8-dynamic")
    best = max((r for r in doc["rows"] if r["kind"] == "peer"), key=lambda r: r["throughput"]["8"]["seq_per_s"])
    assert ours["vs_best_peer"]["throughput_peer"] == best["variant"]


def test_hot_shapes_get_a_static_compile_with_the_same_outputs(artifacts, monkeypatch):
    from bertrt.runtime import backends

    xml = artifacts["fp32"][0] / OPENVINO_FILES[0]
    batches = _batches(artifacts["fp32"][0])
    shapes = [b.feeds["input_ids"].shape for b in batches]
    assert len(set(shapes)) >= 2
    dynamic = OpenVINOSession(xml, static_shapes=False)
    expected = [dynamic.run(b.feeds)["logits"] for b in batches]
    monkeypatch.setattr(backends, "MAX_STATIC", 1)
    session = OpenVINOSession(xml)
    for _ in range(backends.HOT_AFTER):
        for b in batches:
            session.run(b.feeds)
    session.settle()
    assert session.specialised() == [shapes[0]]  # the first shape that got hot; the cap keeps the rest dynamic
    assert session._request_for(shapes[0]) is not session.request
    assert session._request_for(shapes[1]) is session.request
    worst = max(float(np.abs(session.run(b.feeds)["logits"] - e).max()) for b, e in zip(batches, expected))
    assert worst <= 1e-5, worst  # the static compile computes what the dynamic one does (f32)
    with pytest.raises(DeviceError, match="unknown OpenVINO inference precision"):
        OpenVINOSession(xml, precision="fp8")


@pytest.mark.skipif("bf16" not in cpu_precisions(), reason="this CPU has no bf16")
def test_bf16_compute_is_gated_timed_and_kept_only_when_fastest(artifacts, tmp_path):
    ckpt = artifacts["fp32"][1]["source"]["checkpoint"]
    m = export_artifact(ckpt, tmp_path / "bf16", openvino=OpenVINOConfig("on", bf16=True), **QUIET)
    v = m["backends"]["openvino"]
    assert sorted(v["computes"]) == ["bf16", "f32"]
    timed = {c: r["seconds"] for c, r in v["computes"].items() if r["passed"]}
    assert v["inference_precision"] == min(timed, key=timed.get) and v["seconds"] == timed[v["inference_precision"]]
    report = v["parity"]  # the kept compute's gates: bf16 by the quantized rules (SNR floor, flip statistic)
    if v["inference_precision"] == "bf16":
        assert report["precision"] == "bf16" and report["gates"]["tensor"]["rule"] == "SNR >= 20 dB"
        assert "statistics" in report["gates"]["decision"]
        compute = " (bf16 compute)"
    else:
        assert report["precision"] == "fp32"
        compute = ""
    rt = Runtime(tmp_path / "bf16", backend="openvino")
    assert rt.session.precision == v["inference_precision"]
    assert f"openvino fp32{compute} " in describe_backends(m)


def test_with_int8_the_bf16_candidate_is_the_fp32_ir(artifacts, tmp_path):
    """An INT8 export, by default: the NNCF INT8 IR computes in f32 and the fp32 IR in bf16 (never INT8 in bf16) on
    a CPU with bf16; the artifact carries the IR of the candidate kept, and says which."""
    ckpt = artifacts["fp32"][1]["source"]["checkpoint"]
    m = export_artifact(ckpt, tmp_path / "q", quantize=QuantizeConfig(mode="dynamic"), openvino=OpenVINOConfig("on"),
                        **QUIET)
    v = m["backends"]["openvino"]
    has_bf16 = "bf16" in cpu_precisions()
    assert {c: r["ir"] for c, r in v["computes"].items()} == ({"f32": "int8-nncf", "bf16": "fp32"} if has_bf16
                                                              else {"f32": "int8-nncf"})
    assert v["precision"] == v["computes"][v["inference_precision"]]["ir"]
    fake_quantized = sum(op.get_type_name() == "FakeQuantize"
                         for op in ov.Core().read_model(str(tmp_path / "q" / OPENVINO_FILES[0])).get_ops())
    assert (fake_quantized > 0) == (v["precision"] == "int8-nncf")
    if v["inference_precision"] == "bf16":
        assert v["parity"]["precision"] == "bf16"
    else:
        assert v["parity"]["precision"] == "int8"
    rt = Runtime(tmp_path / "q", backend="openvino")
    assert rt.session.precision == v["inference_precision"]


def test_verify_regates_the_openvino_variant(artifacts, monkeypatch):
    from bertrt.converters import openvino_variant
    from bertrt.converters.pipeline import verify_artifact
    from bertrt.errors import ParityError

    for kind, (path, m) in artifacts.items():
        report = verify_artifact(path, **QUIET)
        ov_report = report["openvino"]
        assert ov_report["precision"] == ("int8" if kind == "int8" else "fp32")
        assert ov_report["inference_precision"] == "f32" and ov_report["passed"]
        assert ov_report["agreement"] == 1.0 and ov_report["examples"] == report["examples"]
    real = openvino_variant.session_outputs  # a variant that drifted: every logit moved by 1.0
    monkeypatch.setattr(openvino_variant, "session_outputs", lambda *a, **k: [
        {n: v + np.float32(1.0) for n, v in o.items()} for o in real(*a, **k)])
    with pytest.raises(ParityError, match="OpenVINO variant fails its parity gates.*tensor"):
        verify_artifact(artifacts["fp32"][0], **QUIET)
