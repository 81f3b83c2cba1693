"""INT8 quantization of the fused graph: dynamic (MatMulInteger / QAttention) or static QDQ, calibrated.

Quantizable nodes are grouped into units so the INT8 fallback can keep parts in fp32 (``exclude``) when the parity
gates ask for it: by position — ``embeddings``, ``layer.<i>``, ``head`` — and by kind across all layers —
``attention``, ``attention_output``, ``ffn_input``, ``ffn_output``. Kinds matter for static INT8: the input of the
FFN output MatMul (after GELU) has outlier activations that one per-tensor range cannot hold (all-MiniLM-L6-v2:
8.6 dB SNR with only those MatMuls quantized, against 32.6 dB for the attention output MatMuls).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from bertrt.errors import ExportError

from .config import QuantizeConfig

DYNAMIC_OPS = ["MatMul", "Attention", "EmbedLayerNormalization"]
STATIC_OPS = ["MatMul", "Attention"]
_LAYER = re.compile(r"layers\.(\d+)[./]")


def node_unit(node: onnx.NodeProto) -> str:
    """The unit a node belongs to, from the module path the exporter wrote into its name or output names."""
    for text in [node.name, *node.output]:
        m = _LAYER.search(text)
        if m:
            return f"layer.{m.group(1)}"
    if node.op_type == "EmbedLayerNormalization" or "embeddings" in node.name:
        return "embeddings"
    return "head"


_KINDS = (("attention/output/", "attention_output"), ("ffn/intermediate/", "ffn_input"), ("ffn/output/", "ffn_output"))


def node_kind(node: onnx.NodeProto) -> str | None:
    """The kind of an encoder node (the same in every layer), or None for embeddings and head."""
    if node.op_type == "Attention":
        return "attention"
    for key, kind in _KINDS:
        if key in node.name:
            return kind
    return None


def quantizable_units(model_path: str | os.PathLike, mode: str = "dynamic") -> dict[str, list[str]]:
    """unit -> names of its nodes that INT8 quantization (of ``mode``) would touch, for a fused fp32 graph.

    Every node is in one position unit (embeddings, layer.<i>, head) and, in the encoder, one kind unit."""
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    ops = DYNAMIC_OPS if mode == "dynamic" else STATIC_OPS
    units: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in ops and (node.op_type != "MatMul" or any(i in inits for i in node.input)):
            units.setdefault(node_unit(node), []).append(node.name)
            kind = node_kind(node)
            if kind:
                units.setdefault(kind, []).append(node.name)
    return units


def quantized_counts(model: onnx.ModelProto | str | os.PathLike) -> dict[str, int]:
    """Counts of quantized compute nodes: dynamic integer ops, or QDQ-wrapped MatMul/Attention for static."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    qdq = Counter(n.op_type for n in model.graph.node if n.op_type in STATIC_OPS
                  and any(producers.get(i) == "DequantizeLinear" for i in n.input[:2]))
    return {"MatMulInteger": ops["MatMulInteger"], "QAttention": ops["QAttention"],
            "QEmbedLayerNormalization": ops["QEmbedLayerNormalization"],
            "QDQ_MatMul": qdq["MatMul"], "QDQ_Attention": qdq["Attention"],
            "MatMul_fp32": ops["MatMul"] - qdq["MatMul"], "Attention_fp32": ops["Attention"] - qdq["Attention"]}


def excluded_nodes(units: dict[str, list[str]], exclude: list[str]) -> list[str]:
    return sorted({name for unit in exclude for name in units.get(unit, [])})


def all_nodes(units: dict[str, list[str]]) -> set[str]:
    return {name for names in units.values() for name in names}


def quantize(src: str | os.PathLike, dst: str | os.PathLike, cfg: QuantizeConfig, exclude: list[str] = (),
             calib_feeds: list[dict[str, np.ndarray]] | None = None, only: list[str] | None = None) -> dict:
    """Quantize ``src`` (a fused fp32 graph) into ``dst``, leaving the units in ``exclude`` in fp32.

    ``only``: quantize just these units (a sensitivity probe; it may hold no MatMul, e.g. the embeddings)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns on the root logger
    units = quantizable_units(src, cfg.mode)
    exclude = sorted(set(exclude) | {f"layer.{i}" for i in cfg.exclude_layers})
    skip = excluded_nodes(units, exclude)
    if only is not None:
        skip = sorted(all_nodes(units) - set(excluded_nodes(units, only)))
    # Without DefaultTensorType, quantizing a fused graph fails with "Unable to find data type for weight_name"
    # (contrib ops have no type inference in onnx); with it, Attention and EmbedLayerNormalization quantize too.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    try:
        if cfg.mode == "dynamic":
            quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                             weight_type=QuantType.QInt8, op_types_to_quantize=DYNAMIC_OPS, nodes_to_exclude=skip,
                             extra_options=extra)
        elif cfg.mode == "static":
            if not calib_feeds:
                raise ExportError("static quantization needs calibration data: pass --calib DATA (or --eval)")
            _quantize_static(src, dst, cfg, skip, calib_feeds, extra)
        else:
            raise ExportError(f"quantize() called with mode {cfg.mode!r}")
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"ONNX Runtime's {cfg.mode} quantization failed: {type(e).__name__}: {e}") from None
    counts = quantized_counts(dst)
    done = counts["MatMulInteger"] + counts["QAttention"] + counts["QDQ_MatMul"] + counts["QDQ_Attention"]
    if done == 0 and only is None:
        raise ExportError(f"{cfg.mode} quantization quantized no MatMul or Attention node; nothing to gain from INT8")
    return {"mode": cfg.mode, "preset": cfg.preset, "per_channel": cfg.per_channel, "reduce_range": cfg.reduce_range,
            **({"calibration": cfg.calibration, "calib_batches": len(calib_feeds or [])}
               if cfg.mode == "static" else {}),
            "fp32_units": exclude, "counts": counts}


def _quantize_static(src, dst, cfg: QuantizeConfig, skip, feeds, extra) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if cfg.calibration != "minmax":
        feeds = _same_length(feeds)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.calibration]
    with tempfile.TemporaryDirectory(prefix="bertrt-static-") as tmp:
        # symbolic shape inference knows the contrib ops' output types; without it the calibrator cannot see the
        # activations between fused nodes and only the weights would be quantized
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_optimization=True)
        opts = dict(extra, CalibPercentile=cfg.percentile) if cfg.calibration == "percentile" else dict(extra)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        reduce_range=cfg.reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=STATIC_OPS, nodes_to_exclude=skip,
                        calibrate_method=method, extra_options=opts,
                        calibration_providers=["CPUExecutionProvider"])


def _same_length(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Right-pad every calibration batch to the longest: ORT's histogram calibrators stack the batches' activations
    into one array, which fails on mixed sequence lengths. Padding is masked, so only ranges see it."""
    T = max(f["input_ids"].shape[1] for f in feeds)
    out = []
    for f in feeds:
        pad = T - f["input_ids"].shape[1]
        out.append({k: np.pad(v, ((0, 0), (0, pad))) for k, v in f.items()})
    return out
