"""ONNX Runtime's transformer fusions for BERT, checked by count; optional fp16 conversion for CUDA.

Fusion code returns without a word when a pattern stops matching, so after optimizing we count the fused nodes
and compare with what the model's shape says there must be: one Attention per layer that has heads, two
SkipLayerNormalization per layer, one EmbedLayerNormalization. A shortfall is an error (or, when allowed, a
warning recorded in the manifest) — never a silent slow or wrong graph.

On CPU artifacts each counted SkipLayerNormalization is then split back into Add (+ Add of its bias) and the
standard LayerNormalization: ONNX Runtime's CPU SkipLayerNormalization kernel is several times slower than that
pair (onnxruntime 1.32, 2 threads, 32 x 128 x 384: 3.9 ms against 0.85 ms), about a third of a pruned INT8
model's time. CUDA (fp16) artifacts keep the fused kernel.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import onnx

from bertrt.errors import ExportError
from bertrt.model import BertConfig

from .config import OptimizeConfig

GELU_FUSIONS = ("BiasGelu", "FastGelu", "Gelu", "BiasFastGelu")


def op_counts(model: onnx.ModelProto | str | os.PathLike) -> Counter:
    """How many nodes of each op type the graph has (``Counter``; missing types count 0)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node)


def expected_fusions(cfg: BertConfig) -> dict[str, int]:
    """The fused-node counts a complete fusion of this model must give."""
    return {
        "Attention": sum(1 for h in cfg.num_heads if h > 0),
        "SkipLayerNormalization": 2 * cfg.num_layers,
        "EmbedLayerNormalization": 1,
    }


def optimize(src: str | os.PathLike, dst: str | os.PathLike, model_cfg: BertConfig, cfg: OptimizeConfig) -> dict:
    """Fuse ``src`` into ``dst`` (and convert to fp16 if asked); return the counts the manifest records."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_raw_attention_mask(cfg.raw_attention_mask)
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # its per-fusion info lines
    # num_heads=0 / hidden_size=0: read from each layer's Reshape, so pruned layers with their own head counts fuse
    fused = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                           optimization_options=options, use_gpu=cfg.fp16)
    counts = op_counts(fused.model)
    expected = expected_fusions(model_cfg)
    gelu = sum(counts[op] for op in GELU_FUSIONS)
    found = {op: counts[op] for op in expected} | {"Gelu*": gelu}
    missing = {op: (found[op], n) for op, n in expected.items() if found[op] != n}
    report = {"fusions": found, "expected": expected, "raw_attention_mask": cfg.raw_attention_mask,
              "padding": "any" if cfg.raw_attention_mask else "right"}
    if missing:
        what = ", ".join(f"{op} {got} of {want}" for op, (got, want) in missing.items())
        if cfg.require_full_fusion:
            raise ExportError(f"ONNX Runtime fused the graph only partly ({what}); the exported graph no longer has "
                              "the pattern its BERT optimizer matches. Export with --no-optimize to ship the unfused "
                              "graph, or --allow-partial-fusion to ship what fused")
        report["warning"] = f"partial fusion: {what}"
    if cfg.split_skip_layer_norm and not cfg.fp16:
        report["split_skip_layer_norm"] = split_skip_layer_norm(fused.model)
    if cfg.fp16:
        fused.convert_float_to_float16(keep_io_types=True, op_block_list=list(cfg.fp16_keep_fp32))
        report["fp16"] = {"keep_fp32": list(cfg.fp16_keep_fp32), "io_types": "float32"}
    fused.save_model_to_file(str(dst))
    return report


def split_skip_layer_norm(model: onnx.ModelProto) -> int:
    """Replace every SkipLayerNormalization by [Add(input, bias) ->] Add(skip) -> LayerNormalization, in place.

    Same math (x + skip + bias, then normalisation over the last axis with the node's epsilon); the optional
    outputs keep their names: mean and inverse std come from LayerNormalization's own, and the pre-normalisation
    sum (output 3) is the last Add. Returns how many nodes were split (none below opset 17).
    """
    from onnx import helper

    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import):
        return 0  # LayerNormalization is opset 17: older graphs keep the fused kernel
    nodes, split = [], 0
    for n in model.graph.node:
        if n.op_type != "SkipLayerNormalization" or n.domain != "com.microsoft":
            nodes.append(n)
            continue
        split += 1
        ins = list(n.input) + [""] * (5 - len(n.input))
        x, skip, gamma, beta, bias = ins[:5]
        outs = list(n.output) + [""] * (4 - len(n.output))
        total = outs[3] or f"{n.name}_sum"
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        if bias:  # the bias first: x is the projection's MatMul output, and ORT folds a bias Add into the MatMul
            nodes.append(helper.make_node("Add", [x, bias], [f"{n.name}_biased"], name=f"{n.name}_add_bias"))
            nodes.append(helper.make_node("Add", [f"{n.name}_biased", skip], [total], name=f"{n.name}_add"))
        else:
            nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{n.name}_add"))
        ln_out = [outs[0], outs[1], outs[2]]
        while ln_out and not ln_out[-1]:
            ln_out.pop()
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), ln_out,
                                      name=n.name, axis=-1, epsilon=eps))
    if split:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return split
