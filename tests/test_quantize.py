"""INT8 (dynamic, static QDQ), the sensitivity fallback, fp16 structure, and the configs' validation."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bertrt.checkpoint import save_checkpoint  # noqa: E402
from bertrt.converters.config import (CPU_PRESETS, ExportConfig, OptimizeConfig, ParityConfig,  # noqa: E402
                                      QuantizeConfig, detect_cpu)
from bertrt.converters.evaldata import builtin_examples, encode  # noqa: E402
from bertrt.converters.export import export_onnx, prepare_model  # noqa: E402
from bertrt.converters.optimize import op_counts, optimize  # noqa: E402
from bertrt.converters.parity import check, onnx_outputs, torch_outputs  # noqa: E402
from bertrt.converters.pipeline import export_artifact  # noqa: E402
from bertrt.converters.quantize import quantizable_units, quantize  # noqa: E402
from bertrt.errors import ExportError, ParityError  # noqa: E402

from .test_export_fixtures import tiny_model, tiny_tokenizer  # noqa: E402

SNR_FLOOR_DB = 20.0  # the INT8 tensor gate: torchao's signal-to-noise floor
QUIET = dict(log=lambda m: None, progress=False)


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """task -> (model, batches, fused fp32 path, reference outputs)."""
    root = tmp_path_factory.mktemp("q")
    out = {}
    for task in ("classify", "ner"):
        model = prepare_model(tiny_model(task, seed=7), ExportConfig())
        export_onnx(model, root / f"{task}.onnx", ExportConfig())
        optimize(root / f"{task}.onnx", root / f"{task}-fused.onnx", model.config, OptimizeConfig())
        batches = encode(builtin_examples(task), tiny_tokenizer(), task, 128, 16)
        out[task] = (model, batches, root / f"{task}-fused.onnx", torch_outputs(model, batches))
    return out


@pytest.mark.parametrize("task", ["classify", "ner"])
def test_dynamic_int8_quantizes_every_matmul_and_keeps_decisions(fused, task, tmp_path):
    model, batches, src, ref = fused[task]
    L = model.config.num_layers
    rep = quantize(src, tmp_path / "q.onnx", QuantizeConfig(mode="dynamic"))
    ops = op_counts(tmp_path / "q.onnx")
    assert ops["QAttention"] == L and ops["Attention"] == 0
    assert ops["MatMulInteger"] >= 3 * L  # attention output, FFN in, FFN out per layer (+ the head)
    assert ops["QEmbedLayerNormalization"] == 1
    assert rep["counts"]["MatMul_fp32"] == 0  # no weight MatMul left in fp32
    report = check(task, "int8-dynamic", ref, onnx_outputs(tmp_path / "q.onnx", batches, task), batches,
                   ParityConfig())
    for name, s in report["tensors"].items():
        assert s["snr_db"] >= SNR_FLOOR_DB, (name, s)
    assert report["agreement"] >= 0.99
    assert report["passed"]
    assert 0 < max(s["max_abs"] for s in report["tensors"].values())  # it really is quantized


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_qdq_int8_calibrates_activations(fused, method, tmp_path):
    model, batches, src, ref = fused["classify"]
    L = model.config.num_layers
    rep = quantize(src, tmp_path / "s.onnx", QuantizeConfig(mode="static", calibration=method),
                   calib_feeds=[b.feeds for b in batches[:4]])
    ops = op_counts(tmp_path / "s.onnx")
    assert rep["counts"]["QDQ_Attention"] == L and rep["counts"]["QDQ_MatMul"] >= 3 * L
    assert rep["counts"]["MatMul_fp32"] == 0 and rep["counts"]["Attention_fp32"] == 0
    assert ops["QuantizeLinear"] >= 2 * L  # activations are quantized too, not only weights
    report = check("classify", "int8-static", ref, onnx_outputs(tmp_path / "s.onnx", batches, "classify"),
                   batches, ParityConfig())
    assert report["tensors"]["logits"]["snr_db"] >= SNR_FLOOR_DB


def test_excluded_units_stay_fp32(fused, tmp_path):
    model, _, src, _ = fused["ner"]
    units = quantizable_units(src)
    assert set(units) >= {"embeddings", "layer.0", "layer.1"}
    rep = quantize(src, tmp_path / "q.onnx", QuantizeConfig(mode="dynamic", exclude_layers=[1]))
    ops = op_counts(tmp_path / "q.onnx")
    assert rep["fp32_units"] == ["layer.1"]
    assert ops["QAttention"] == 1 and ops["Attention"] == 1
    assert rep["counts"]["MatMul_fp32"] == 3  # layer 1's attention output and FFN MatMuls


def _sensitive_checkpoint(root):
    """A 3-layer classifier whose layer 1 has one huge FFN weight: per-tensor INT8 ruins that layer only."""
    model = tiny_model("classify", layers=3)
    with torch.no_grad():
        w = model.bert.layers[1].ffn.intermediate.weight
        w[0, 0] = 40 * w.abs().max()
    save_checkpoint(model, root / "ck", tokenizer=tiny_tokenizer())
    return root / "ck"


def test_fallback_finds_the_sensitive_layer_and_keeps_it_fp32(tmp_path):
    ck = _sensitive_checkpoint(tmp_path)
    m = export_artifact(ck, tmp_path / "art", quantize=QuantizeConfig(mode="dynamic", per_channel=False), **QUIET)
    q = m["quantization"]
    first_step = q["search"][0]["probe_snr_db"]
    ranked = sorted(first_step, key=first_step.get, reverse=True)
    # returning either unit that holds the outlier MatMul (its layer, or the FFN-input MatMuls of all layers) to
    # fp32 helps by far the most; any other unit leaves the outlier quantized
    assert set(ranked[:2]) == {"layer.1", "ffn_input"}
    assert first_step[ranked[1]] > first_step[ranked[2]] + 10
    first = q["attempts"][0]
    assert not first["passed"] and first["fp32_units"] == []
    assert q["search"][0]["kept_fp32"] == [ranked[0]] and ranked[0] in q["fp32_units"] and len(q["fp32_units"]) <= 3
    assert m["parity"]["final"]["passed"] and m["parity"]["final"]["gates"]["tensor"]["value"] >= SNR_FLOOR_DB
    assert m["precision"] == "int8-dynamic"


def test_int8_that_cannot_meet_the_gates_is_refused_with_numbers(tmp_path):
    ck = _sensitive_checkpoint(tmp_path)
    with pytest.raises(ParityError) as err:
        export_artifact(ck, tmp_path / "art", quantize=QuantizeConfig(mode="dynamic", per_channel=False,
                                                                      max_fallback_layers=1),
                        parity=ParityConfig(int8_min_snr_db=60.0), **QUIET)
    msg = str(err.value)
    assert re.search(r"even with (layer\.1|ffn_input) kept in fp32", msg), msg
    assert "needs SNR >= 60 dB" in msg and "Nothing written" in msg
    assert err.value.report["gates"]["tensor"]["value"] < 60
    assert not (tmp_path / "art").exists()
    with pytest.raises(ParityError, match="drop --no-fallback"):
        export_artifact(ck, tmp_path / "art", quantize=QuantizeConfig(mode="dynamic", per_channel=False,
                                                                      fallback=False), **QUIET)
    assert not (tmp_path / "art").exists()


def test_fp16_keeps_normalisations_in_fp32(fused, tmp_path):
    model, batches, _, ref = fused["classify"]
    raw = tmp_path / "raw.onnx"
    export_onnx(model, raw, ExportConfig())
    rep = optimize(raw, tmp_path / "h.onnx", model.config, OptimizeConfig(fp16=True))
    m = onnx.load(str(tmp_path / "h.onnx"))
    inits = {i.name: i.data_type for i in m.graph.initializer}
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    matmul_weights = [i for n in m.graph.node if n.op_type == "MatMul" for i in n.input if i in inits]
    assert matmul_weights and all(inits[w] == fp16 for w in matmul_weights)
    attention = [n for n in m.graph.node if n.op_type == "Attention"]
    assert len(attention) == model.config.num_layers and all(inits[n.input[1]] == fp16 for n in attention)
    for n in m.graph.node:
        if n.op_type in ("SkipLayerNormalization", "EmbedLayerNormalization"):
            assert all(inits.get(i, fp32) == fp32 for i in n.input if i), n.name
    assert all(i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, fp32) for i in m.graph.input)
    assert all(o.type.tensor_type.elem_type == fp32 for o in m.graph.output)
    assert rep["fp16"]["io_types"] == "float32"
    # the CPU provider of onnxruntime 1.32 runs this graph; CUDA numerics are checked by bench/gpu_fp16_check.py
    report = check("classify", "fp16", ref, onnx_outputs(tmp_path / "h.onnx", batches, "classify"), batches,
                   ParityConfig())
    assert report["tensors"]["logits"]["snr_db"] >= 30.0 and report["agreement"] >= 0.99


def test_cpu_presets_choose_per_channel_and_reduce_range():
    assert detect_cpu() in CPU_PRESETS
    assert QuantizeConfig.avx2().reduce_range is True
    assert QuantizeConfig.avx512_vnni().reduce_range is False
    assert QuantizeConfig.arm64().per_channel is True
    assert QuantizeConfig(mode="dynamic", preset="avx2", reduce_range=False).reduce_range is False  # explicit wins
    auto = QuantizeConfig(mode="dynamic")
    assert auto.preset == detect_cpu() and (auto.per_channel, auto.reduce_range) == CPU_PRESETS[auto.preset]


@pytest.mark.parametrize("make, match", [
    (lambda: QuantizeConfig(mode="int4"), "--quantize must be one of none, dynamic, static"),
    (lambda: QuantizeConfig(mode="static", calibration="mse"), "calibration must be one of"),
    (lambda: QuantizeConfig(preset="sparc"), "unknown CPU preset"),
    (lambda: ParityConfig(max_drop=-1), "--max-drop"),
    (lambda: ParityConfig(device="tpu"), "device must be cpu or cuda"),
    (lambda: ExportConfig(opset=11), "opset 11 is outside"),
    (lambda: ExportConfig(pooling="max"), "pooling must be"),
    (lambda: OptimizeConfig(enabled=False, fp16=True), "--fp16 needs the optimizer"),
])
def test_configs_validate_themselves(make, match):
    with pytest.raises(ExportError, match=match):
        make()


def test_configs_serialise_to_json_round_trip():
    import json

    for cfg in (ExportConfig(task="embed", pooling="cls", normalize=True), OptimizeConfig(fp16=True),
                QuantizeConfig(mode="static", calibration="entropy", exclude_layers=[0]), ParityConfig(max_drop=1.0)):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert type(cfg)(**d) == cfg


def test_fp16_and_int8_together_are_refused(tmp_path):
    with pytest.raises(ExportError, match="alternatives"):
        export_artifact(tmp_path / "ck", tmp_path / "x", optimize=OptimizeConfig(fp16=True),
                        quantize=QuantizeConfig(mode="dynamic"), **QUIET)
    assert not np.any([p.name == "x" for p in tmp_path.iterdir()])


def test_embed_int8_keeps_cosine_to_pytorch(tmp_path):
    from .test_export_fixtures import make_checkpoint

    ck = make_checkpoint(tmp_path, "base")  # a bare encoder exports as embed
    m = export_artifact(ck, tmp_path / "art", ExportConfig(normalize=True), quantize=QuantizeConfig(mode="dynamic"),
                        **QUIET)
    assert m["task"] == "embed" and m["outputs"] == ["embedding"] and m["pooling"] == "mean" and m["normalize"]
    assert m["parity"]["fused_fp32"]["tensors"]["embedding"]["cosine_min"] >= 0.9999
    final = m["parity"]["final"]
    assert final["tensors"]["embedding"]["cosine_min"] >= 0.99 and final["agreement"] >= 0.99
    assert m["quantization"]["counts"]["QAttention"] == 2
