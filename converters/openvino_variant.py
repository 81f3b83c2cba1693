"""The artifact's OpenVINO variant: the unfused fp32 ONNX graph (pruned, when the checkpoint is) converted to
OpenVINO IR, quantized to INT8 by NNCF's post-training quantization (transformer preset) when the export asks for
INT8, calibrated on the export's sample (``--calib``, else the gate data), and gated by the same parity rules as
the ONNX variant. Then both variants are timed on the gate batches, in interleaved turns with the same threads,
and the times are recorded for ``Runtime(backend="auto")`` (``bertrt.runtime.backends``).

A variant that misses its gates is not written; the ONNX artifact is, with the refusal and its numbers in the
manifest. openvino and nncf are imported here only (the ``openvino`` extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import time
from pathlib import Path

import numpy as np

from bertrt.errors import ExportError
from bertrt.runtime.backends import OPENVINO_FILES, OpenVINOSession

TIMING_ROUNDS = 3  # interleaved rounds over the gate batches; the median round counts


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def build(src_onnx: Path, work: Path, int8: bool, calib_feeds: list[dict]) -> Path:
    """OpenVINO IR (fp32, or NNCF INT8 calibrated on ``calib_feeds``) of ``src_onnx``; returns the .xml path."""
    import openvino as ov

    model = ov.convert_model(str(src_onnx))
    if int8:
        import nncf

        nncf.set_log_level(logging.ERROR)
        feeds = [{k: np.asarray(v, np.int64) for k, v in f.items()} for f in calib_feeds]
        try:
            with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stderr, as every bar of bertrt's
                model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=max(1, len(feeds)))
        except Exception as e:  # nncf raises its own types from deep inside; one line with the cause
            raise ExportError(f"NNCF quantization of the OpenVINO variant failed: {type(e).__name__}: {e}") from None
    xml = work / OPENVINO_FILES[0]
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def outputs(xml: Path, batches, names: list[str], threads: int | None = None) -> list[dict]:
    """The variant's outputs on every gate batch."""
    session = OpenVINOSession(xml, threads)
    outs = []
    for b in batches:
        res = session.run(b.feeds)
        outs.append({n: np.asarray(res[n], np.float32) for n in names})
    return outs


def time_backends(onnx_path: Path, xml: Path, batches, threads: int | None = None) -> dict[str, float]:
    """Seconds per pass over ``batches`` of each backend (median of ``TIMING_ROUNDS`` interleaved rounds, after a
    warm-up pass), with the runtime's own session settings."""
    from bertrt.runtime.session import Session

    sessions = {"onnxruntime": Session(str(onnx_path), device="cpu", threads=threads),
                "openvino": OpenVINOSession(xml, threads)}
    rounds: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(TIMING_ROUNDS + 1):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            for b in batches:
                s.run(b.feeds)
            if r:  # round 0 warms up
                rounds[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in rounds.items()}


def add_variant(work: Path, onnx_final: Path, precision: str, task: str, ref: list[dict], batches, parity,
                calib_feeds: list[dict], log) -> tuple[dict, dict]:
    """Build, gate and time the OpenVINO variant beside the ONNX one (``onnx_final``, of ``precision``); return
    (the manifest's ``backends`` record, the variant's files to write, none when it missed its gates)."""
    from bertrt.artifact import TASK_OUTPUTS

    from .parity import check, failures, format_gates

    int8 = precision.startswith("int8")
    name = "OpenVINO NNCF INT8" if int8 else "OpenVINO fp32"
    log(f"building the {name} variant (from the unfused fp32 graph{', calibrated on ' + str(len(calib_feeds)) + ' batches' if int8 else ''})")
    xml = build(work / "export.onnx", work, int8, calib_feeds)
    report = check(task, "int8" if int8 else "fp32", ref, outputs(xml, batches, TASK_OUTPUTS[task]), batches, parity)
    variant = {"precision": "int8-nncf" if int8 else "fp32", "source": "unfused fp32 ONNX export",
               "files": list(OPENVINO_FILES), "passed": report["passed"], "parity": report}
    backends = {"onnxruntime": {"precision": precision, "passed": True}, "openvino": variant}
    if not report["passed"]:
        log(f"the {name} variant fails its gates ({failures(report)}); not written, the ONNX variant is")
        return backends, {}
    log(f"{name} gates passed: {format_gates(report)}")
    times = time_backends(onnx_final, xml, batches)
    for k, t in times.items():
        backends[k]["seconds"] = round(t, 6)
    backends["timing"] = {"rounds": TIMING_ROUNDS, "batches": len(batches),
                          "rule": "median seconds per pass over the gate batches, interleaved, the runtime's "
                                  "default threads; Runtime(backend='auto') picks the lowest"}
    fastest = min(times, key=times.get)
    log(f"timed on the gate batches: " + ", ".join(f"{k} {1000 * t:.1f} ms" for k, t in times.items())
        + f"; backend auto picks {fastest}")
    return backends, {f: work / f for f in OPENVINO_FILES}
