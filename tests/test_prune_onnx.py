"""A pruned model exports and fuses like any other: one fused Attention per layer that still has heads, two
SkipLayerNormalization per layer (split back into Add + LayerNormalization for the CPU), and ONNX Runtime's outputs match PyTorch within 1e-4 on padded batches."""

import numpy as np
import pytest
import torch

from bertrt.converters.config import ExportConfig, OptimizeConfig
from bertrt.converters.export import export_onnx, prepare_model
from bertrt.converters.optimize import op_counts, optimize
from bertrt.converters.prune import PruneConfig, prune, remove_units

from .prune_helpers import batches, tiny_model

ort = pytest.importorskip("onnxruntime")


def fused_session(model, tmp_path):
    cfg = ExportConfig()
    export_onnx(prepare_model(model, cfg), tmp_path / "raw.onnx", cfg)
    report = optimize(tmp_path / "raw.onnx", tmp_path / "fused.onnx", model.config, OptimizeConfig())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(tmp_path / "fused.onnx"), opts, providers=["CPUExecutionProvider"]), report


def hand_pruned():  # layer 1 keeps no heads, layer 2 no FFN neurons, layer 0 an odd mix
    return remove_units(tiny_model(heads=(4, 4, 4), ffn=(48, 48, 48)), [[0, 2], [], [1, 2, 3]],
                        [[1, 2, 3], list(range(20)), []])


def searched():
    model = tiny_model(heads=(4, 4, 4), ffn=(48, 48, 48), seed=4)
    return prune(model, batches(seed=4), PruneConfig(0.4, seq_len=12, min_examples=8), progress=False)


@pytest.mark.parametrize("build", [hand_pruned, searched])
def test_fused_pruned_model_counts_and_parity(build, tmp_path):
    model = build()
    with_heads = sum(1 for h in model.config.num_heads if h > 0)
    assert model.config.num_heads != [4, 4, 4]  # really pruned
    session, report = fused_session(model, tmp_path)
    counts = op_counts(tmp_path / "fused.onnx")
    assert counts["Attention"] == with_heads
    assert report["fusions"]["SkipLayerNormalization"] == 2 * model.config.num_layers
    assert counts["LayerNormalization"] == 2 * model.config.num_layers  # split back for ORT's CPU kernel
    assert counts["EmbedLayerNormalization"] == 1
    assert report["fusions"]["Attention"] == with_heads
    for b in batches(2, seed=7):
        feeds = {k: b[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")}
        (logits,) = session.run(["logits"], feeds)
        with torch.no_grad():
            want = model(**{k: b[k] for k in feeds})["logits"].numpy()
        assert np.abs(logits - want).max() <= 1e-4
