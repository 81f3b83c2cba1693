"""ONNX Runtime's transformer fusions for BERT, checked by count; optional fp16 conversion for CUDA.

Fusion code returns without a word when a pattern stops matching, so after optimizing we count the fused nodes
and compare with what the model's shape says there must be: one Attention per layer that has heads, two
SkipLayerNormalization per layer, one EmbedLayerNormalization. A shortfall is an error (or, when allowed, a
warning recorded in the manifest) — never a silent slow or wrong graph.
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
    if cfg.fp16:
        fused.convert_float_to_float16(keep_io_types=True, op_block_list=list(cfg.fp16_keep_fp32))
        report["fp16"] = {"keep_fp32": list(cfg.fp16_keep_fp32), "io_types": "float32"}
    fused.save_model_to_file(str(dst))
    return report
