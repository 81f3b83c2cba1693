"""The INT8 fallback: when a quantized variant misses its gates, keep the most sensitive layers in fp32 and retry.

Sensitivity of a unit (``embeddings``, ``layer.<i>``, ``head``) is measured by quantizing that unit alone and
reading the output SNR against the PyTorch reference: the lower the SNR, the more the unit hurts. Units are then
kept in fp32 most-sensitive first, one more per attempt, up to ``max_fallback_layers``. If the budget still cannot be
met, bertrt refuses, with the numbers of the best attempt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bertrt.errors import ParityError

from .config import QuantizeConfig
from .parity import failures
from .quantize import quantizable_units, quantize


def quantize_with_gates(fused: Path, work: Path, cfg: QuantizeConfig, evaluate: Callable[[Path], dict],
                        calib_feeds=None, log=print) -> tuple[Path, dict, dict]:
    """Quantize ``fused`` until ``evaluate`` passes; return (model path, quantization report, parity report)."""
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

    units = [u for u in quantizable_units(fused, cfg.mode) if u not in qrep["fp32_units"]]
    log(f"measuring the sensitivity of {len(units)} units ({', '.join(units)})")
    sensitivity = {}
    for unit in units:
        others = [u for u in units if u != unit]
        probe = work / "probe.onnx"
        quantize(fused, probe, cfg, exclude=others, calib_feeds=calib_feeds, probe=True)
        rep = evaluate(probe)
        sensitivity[unit] = min(s["snr_db"] for s in rep["tensors"].values())
    ranked = sorted(sensitivity, key=sensitivity.get)  # lowest SNR first: most sensitive
    log("sensitivity (SNR dB when quantized alone, lowest first): "
        + ", ".join(f"{u} {sensitivity[u]:.1f}" for u in ranked))
    k = 0
    for k in range(1, min(cfg.max_fallback_layers, len(ranked) - 1) + 1):  # always leave one unit in INT8
        keep = ranked[:k]
        log(f"retrying with {', '.join(keep)} in fp32")
        dst, qrep, prep = attempt(keep, f"int8-fallback{k}")
        if prep["passed"]:
            return dst, qrep | {"attempts": attempts, "sensitivity_snr_db": sensitivity}, prep
    kept = ", ".join(ranked[:k]) or "no unit"
    raise ParityError(f"the {cfg.mode} INT8 variant fails its parity gates even with {kept} kept in "
                      f"fp32: {failures(prep)}. Nothing written. Try --quantize static with --calib (or the other "
                      "mode), a larger --max-drop, more --max-fallback-layers, or export without --quantize",
                      prep | {"attempts": attempts, "sensitivity_snr_db": sensitivity})
