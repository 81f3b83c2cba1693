"""fp32 export parity and fusion structure: real text, mixed lengths, right padding, every artifact task."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bertrt.converters.config import ExportConfig, OptimizeConfig, ParityConfig  # noqa: E402
from bertrt.converters.evaldata import builtin_examples, encode  # noqa: E402
from bertrt.converters.export import export_onnx, prepare_model  # noqa: E402
from bertrt.converters.optimize import op_counts, optimize  # noqa: E402
from bertrt.converters.parity import check, onnx_outputs, tensor_stats, torch_outputs  # noqa: E402
from .test_export_fixtures import tiny_model, tiny_tokenizer  # noqa: E402

ATOL = 1e-4
CASES = {  # case -> (model task, examples task): "pair" is classify fed sentence pairs only
    "classify": ("classify", "classify"), "pair": ("classify", "pair"), "ner": ("ner", "ner"),
    "qa": ("qa", "qa"), "embed": ("embed", "embed"),
}


def _batches(task_case: str, model):
    if task_case == "pair":
        examples = [e for e in builtin_examples("classify") if e.text_pair]
    else:
        examples = builtin_examples(CASES[task_case][1])
    return encode(examples, tiny_tokenizer(), model.config.task, 128, batch_size=8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per case: (model, batches, raw onnx path, fused onnx path, fusion report)."""
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for case, (task, _) in CASES.items():
        model = prepare_model(tiny_model(task, seed=len(case)), ExportConfig())
        raw, fused = root / f"{case}.onnx", root / f"{case}-fused.onnx"
        export_onnx(model, raw, ExportConfig())
        report = optimize(raw, fused, model.config, OptimizeConfig())
        out[case] = (model, _batches(case, model), raw, fused, report)
    return out


def test_batches_are_real_text_with_mixed_lengths_and_right_padding(exported):
    for case, (model, batches, *_rest) in exported.items():
        lengths = np.concatenate([b.feeds["attention_mask"].sum(1) for b in batches])
        assert len(set(lengths.tolist())) > 5, case
        for b in batches:
            m = b.feeds["attention_mask"]
            assert (np.diff(m, axis=1) <= 0).all(), f"{case}: padding must be on the right"
        assert any((b.feeds["attention_mask"] == 0).any() for b in batches), case
        if case in ("pair", "qa"):
            assert all((b.feeds["token_type_ids"] == 1).any(1).all() for b in batches), case


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("graph", ["raw", "fused"])
def test_fp32_onnx_matches_pytorch_within_1e4(exported, case, graph):
    model, batches, raw, fused, _ = exported[case]
    ref = torch_outputs(model, batches)
    out = onnx_outputs(raw if graph == "raw" else fused, batches, model.config.task)
    stats = tensor_stats(model.config.task, ref, out, batches)
    for name, s in stats.items():
        assert s["max_abs"] <= ATOL, (case, graph, name, s)
    report = check(model.config.task, "fp32", ref, out, batches, ParityConfig())
    assert report["passed"] and report["agreement"] == 1.0
    if case == "embed":
        assert stats["embedding"]["cosine_min"] >= 0.9999


@pytest.mark.parametrize("case", list(CASES))
def test_fused_graph_has_one_attention_and_two_skip_layernorms_per_layer(exported, case):
    model, _, raw, fused, report = exported[case]
    L = model.config.num_layers
    ops = op_counts(fused)
    assert ops["Attention"] == L
    assert report["fusions"]["SkipLayerNormalization"] == 2 * L  # all fused, then split back for the CPU kernel
    assert report["split_skip_layer_norm"] == 2 * L
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 * L
    assert ops["EmbedLayerNormalization"] == 1
    assert ops["BiasGelu"] == L
    assert ops["Softmax"] == 0 and ops["ReduceMean"] == 0  # nothing left unfused
    assert report["fusions"]["Attention"] == L and report["padding"] == "any"
    raw_ops = op_counts(raw)
    assert raw_ops["Attention"] == 0 and raw_ops["MatMul"] >= 6 * L  # the fusion, not the exporter, made them


def _left_padded(batch):
    """The same rows, padded on the left instead of the right."""
    feeds = {}
    m = batch.feeds["attention_mask"]
    n = m.sum(1)
    for k, v in batch.feeds.items():
        w = np.zeros_like(v)
        for i in range(len(v)):
            w[i, v.shape[1] - n[i]:] = v[i, :n[i]]
        feeds[k] = w
    return feeds


def test_fused_attention_with_raw_mask_is_correct_for_left_padding(exported, tmp_path):
    """ORT's default mask-lengths fusion assumes right padding; ours reads the mask, so left padding is right too.
    Positions shift with left padding, so the reference is PyTorch on the same left-padded rows."""
    model, batches, raw, fused, _ = exported["classify"]
    import onnxruntime as ort

    lengths_only = tmp_path / "lengths.onnx"
    optimize(raw, lengths_only, model.config, OptimizeConfig(raw_attention_mask=False))
    errors = {}
    for name, path in (("raw_mask", fused), ("lengths", lengths_only)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for b in batches:
            feeds = _left_padded(b)
            with torch.no_grad():
                ref = model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                                   "token_type_ids")))["logits"].numpy()
            worst = max(worst, float(np.abs(sess.run(["logits"], feeds)[0] - ref).max()))
        errors[name] = worst
    assert errors["raw_mask"] <= ATOL
    assert errors["lengths"] > 100 * ATOL  # why raw_attention_mask is the default


def test_pruned_layers_with_their_own_head_counts_fuse_and_match(tmp_path):
    model = prepare_model(tiny_model("classify", heads=[4, 2, 0], ffn=[96, 48, 64], layers=3), ExportConfig())
    raw, fused = tmp_path / "p.onnx", tmp_path / "pf.onnx"
    export_onnx(model, raw, ExportConfig())
    report = optimize(raw, fused, model.config, OptimizeConfig())
    assert report["fusions"]["Attention"] == 2  # a layer with 0 heads has no attention to fuse
    assert report["fusions"]["SkipLayerNormalization"] == 6 and op_counts(fused)["LayerNormalization"] == 6
    batches = _batches("classify", model)
    stats = tensor_stats("classify", torch_outputs(model, batches), onnx_outputs(fused, batches, "classify"), batches)
    assert stats["logits"]["max_abs"] <= ATOL


def test_embed_pooling_and_normalisation_follow_the_config(tmp_path):
    base = tiny_model("embed", seed=3)
    batches = encode(builtin_examples("embed"), tiny_tokenizer(), "embed", 128, 16)
    for pooling, normalize in (("cls", True), ("mean", False)):
        model = prepare_model(base, ExportConfig(pooling=pooling, normalize=normalize))
        path = tmp_path / f"{pooling}.onnx"
        export_onnx(model, path, ExportConfig())
        out = np.concatenate([o["embedding"] for o in onnx_outputs(path, batches, "embed")])
        ref = np.concatenate([o["embedding"] for o in torch_outputs(model, batches)])
        assert np.abs(out - ref).max() <= ATOL
        norms = np.linalg.norm(out, axis=1)
        if normalize:
            assert np.allclose(norms, 1.0, atol=1e-5)
        else:
            assert norms.std() > 1e-3  # not normalised
    assert base.config.pooling == "mean" and not base.config.normalize  # the caller's model is untouched


def test_transformers_checkpoint_exports_with_parity_to_transformers(tmp_path):
    """A checkpoint saved by transformers itself: the ONNX logits match transformers' own within 1e-4."""
    transformers = pytest.importorskip("transformers")
    from bertrt.checkpoint import load_checkpoint

    tok = tiny_tokenizer()
    hc = transformers.BertConfig(vocab_size=400, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=80, max_position_embeddings=128, num_labels=3)
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(hc).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    model = prepare_model(load_checkpoint(tmp_path / "hf"), ExportConfig())
    export_onnx(model, tmp_path / "hf.onnx", ExportConfig())
    optimize(tmp_path / "hf.onnx", tmp_path / "hf-fused.onnx", model.config, OptimizeConfig())
    batches = _batches("pair", model)
    out = onnx_outputs(tmp_path / "hf-fused.onnx", batches, "classify")
    for b, o in zip(batches, out):
        with torch.no_grad():
            ref = hf(**{k: torch.from_numpy(v) for k, v in b.feeds.items()}).logits.numpy()
        assert np.abs(o["logits"] - ref).max() <= ATOL


def test_embed_decision_is_the_nearest_neighbour_with_ties_at_the_cosine_budget():
    from bertrt.converters.parity import agreement

    # text 0's neighbours: text 1 at cosine 0.900, text 2 at 0.895 (a near-tie), text 3 far away
    ref = np.array([[1.0, 0.0, 0.0], [0.9, np.sqrt(1 - 0.81), 0.0], [0.895, 0.0, np.sqrt(1 - 0.895 ** 2)],
                    [0.0, -1.0, 0.0]], dtype=np.float32)
    swapped = ref.copy()
    swapped[1] = [0.8, np.sqrt(1 - 0.64), 0.0]  # now text 2 is text 0's nearest neighbour
    refs, outs = [{"embedding": ref}], [{"embedding": swapped}]
    assert agreement("embed", refs, refs, [None]) == 1.0
    assert agreement("embed", refs, outs, [None], tie=1e-4) == 0.75  # text 0 changed its neighbour
    assert agreement("embed", refs, outs, [None], tie=1e-2) == 1.0  # ...to one within the INT8 cosine budget


@pytest.mark.parametrize("bias", [True, False])
def test_split_skip_layer_norm_computes_what_the_fused_kernel_does(bias):
    """Add (+ bias) -> LayerNormalization gives ORT's SkipLayerNormalization outputs, the pre-norm sum included."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    from bertrt.converters.optimize import split_skip_layer_norm

    rng = np.random.default_rng(0)
    H = 24
    inits = [numpy_helper.from_array(rng.normal(1, 0.2, H).astype(np.float32), "g"),
             numpy_helper.from_array(rng.normal(0, 0.2, H).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.5, H).astype(np.float32), "bias")]
    ins = ["x", "s", "g", "b"] + (["bias"] if bias else [])
    nodes = [helper.make_node("SkipLayerNormalization", ins, ["y", "", "", "sum"], name="sln", domain="com.microsoft",
                              epsilon=1e-5),
             helper.make_node("Mul", ["sum", "y"], ["z"])]  # output 3 consumed downstream
    io = [helper.make_tensor_value_info(n, TP.FLOAT, [2, 5, H]) for n in ("x", "s")]
    outs = [helper.make_tensor_value_info(n, TP.FLOAT, [2, 5, H]) for n in ("y", "z")]
    model = helper.make_model(helper.make_graph(nodes, "g", io, outs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    feeds = {"x": rng.normal(0, 1, (2, 5, H)).astype(np.float32), "s": rng.normal(0, 1, (2, 5, H)).astype(np.float32)}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    fused = run(model)
    assert split_skip_layer_norm(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add"] * (1 + bias) + ["LayerNormalization", "Mul"]
    for a, b in zip(run(model), fused):
        assert np.abs(a - b).max() <= 1e-5


def test_runtime_keeps_the_split_layer_norms_that_onnx_runtime_would_fuse_back(exported, tmp_path):
    """ORT's session optimizer re-fuses Add + LayerNormalization into SkipLayerNormalization unless told not to."""
    import onnxruntime as ort

    from bertrt.runtime.session import CPU_DISABLED_OPTIMIZERS

    model, _, _, fused, _ = exported["classify"]
    L = model.config.num_layers
    counts = {}
    for name, disabled in (("defaults", []), ("bertrt", list(CPU_DISABLED_OPTIMIZERS))):
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(str(fused), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        counts[name] = op_counts(tmp_path / f"{name}.onnx")
    assert counts["defaults"]["SkipLayerNormalization"] == 2 * L  # why the runtime turns that fusion off
    assert counts["bertrt"]["SkipLayerNormalization"] == 0 and counts["bertrt"]["LayerNormalization"] == 2 * L


def test_one_gate_formatter_serves_every_printout():
    from bertrt.converters.parity import failures, format_gates

    report = {"gates": {"tensor": {"passed": True, "value": 5.96e-08, "rule": "max abs <= 0.0001"},
                        "decision": {"passed": False, "value": 0.9875, "rule": "agreement >= 99.00%"},
                        "task": {"passed": True, "value": None, "rule": "not measured"}}}
    assert format_gates(report) == "tensor 5.96e-08, decision 0.9875, task -"  # the export log
    assert failures(report) == "decision 0.9875 (needs agreement >= 99.00%)"  # refusals
    assert format_gates(report, rules="rule", sep="; ") == (  # bertrt export's summary
        "tensor 5.96e-08 (max abs <= 0.0001); decision 0.9875 (agreement >= 99.00%); task - (not measured)")
