"""The INT8 fallback: when a quantized variant misses its gates, keep the most sensitive units in fp32 and retry.

Units are positions (``embeddings``, ``layer.<i>``, ``head``) and kinds across layers (``attention``,
``attention_output``, ``ffn_input``, ``ffn_output``; see ``quantize``). The search is greedy forward selection:
each step tries returning every remaining unit to fp32 (with what is already kept), measures the output SNR against
the PyTorch reference on a subset, and keeps the unit that helps most; then the full gates run. Overlapping units
are handled by construction (a layer whose damage came from its FFN output stops looking sensitive once
``ffn_output`` is kept). At most ``max_fallback_layers`` steps, never everything in fp32; if the budget still
cannot be met, bertrt refuses, with the numbers of the last attempt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bertrt.errors import ParityError

from .config import QuantizeConfig
from .parity import failures
from .quantize import all_nodes, excluded_nodes, quantizable_units, quantize


def quantize_with_gates(fused: Path, work: Path, cfg: QuantizeConfig, evaluate: Callable[..., dict],
                        calib_feeds=None, log=print) -> tuple[Path, dict, dict]:
    """Quantize ``fused`` until ``evaluate(path)`` passes; return (model path, quantization report, parity report).

    ``evaluate(path, quick=True)`` may measure on a subset: probes only compare units with each other."""
    attempts = []

    def attempt(exclude: list[str], name: str) -> tuple[Path, dict, dict]:
        dst = work / f"{name}.onnx"
        qrep = quantize(fused, dst, cfg, exclude=exclude, calib_feeds=calib_feeds)
        prep = evaluate(dst)
        attempts.append({"fp32_units": qrep["fp32_units"], "passed": prep["passed"],
                         "gates": {k: g["value"] for k, g in prep["gates"].items()}})
        return dst, qrep, prep

    dst, qrep, prep = attempt([], "int8")
    if prep["passed"]:
        return dst, qrep | {"attempts": attempts}, prep
    log(f"INT8 ({cfg.mode}) misses its gates: {failures(prep)}")
    if not cfg.fallback or cfg.max_fallback_layers == 0:
        raise ParityError(f"the {cfg.mode} INT8 variant fails its parity gates: {failures(prep)}. Nothing written. "
                          "Try the fallback (drop --no-fallback), --quantize static with --calib, a larger "
                          "--max-drop, or export without --quantize", prep)

    groups = quantizable_units(fused, cfg.mode)
    fixed = list(qrep["fp32_units"])  # --exclude-layers: in fp32 in every attempt
    probe_calib = calib_feeds[:4] if calib_feeds else None  # ranges from fewer batches: probes only rank units
    kept, steps = [], []
    log(f"searching which of {len(groups)} units ({', '.join(groups)}) to keep in fp32")
    for k in range(1, cfg.max_fallback_layers + 1):
        # greedy forward selection: the unit whose return to fp32 raises the output SNR most, given those kept
        scores = {}
        for unit in groups:
            if unit in kept or unit in fixed:
                continue
            if set(excluded_nodes(groups, kept + [unit] + fixed)) >= all_nodes(groups):
                continue  # that would leave nothing in INT8
            probe = work / "probe.onnx"
            quantize(fused, probe, cfg, exclude=kept + [unit], calib_feeds=probe_calib)
            rep = evaluate(probe, quick=True)
            scores[unit] = min(s["snr_db"] for s in rep["tensors"].values())
        if not scores:
            break
        best = max(scores, key=scores.get)
        kept.append(best)
        steps.append({"kept_fp32": list(kept), "probe_snr_db": scores})
        log(f"retrying with {', '.join(kept)} in fp32 (probe SNR {scores[best]:.1f} dB; next best "
            + ", ".join(f"{u} {v:.1f}" for u, v in sorted(scores.items(), key=lambda x: -x[1])[1:4]) + ")")
        dst, qrep, prep = attempt(kept, f"int8-fallback{k}")
        if prep["passed"]:
            return dst, qrep | {"attempts": attempts, "search": steps}, prep
    raise ParityError(f"the {cfg.mode} INT8 variant fails its parity gates even with {', '.join(kept) or 'no unit'} kept in "
                      f"fp32: {failures(prep)}. Nothing written. Try --quantize static with --calib (or the other "
                      "mode), a larger --max-drop, more --max-fallback-layers, or export without --quantize",
                      prep | {"attempts": attempts, "search": steps})
