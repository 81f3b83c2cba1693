"""The artifact's OpenVINO variant: the unfused fp32 ONNX graph (pruned, when the checkpoint is) converted to
OpenVINO IR, quantized to INT8 by NNCF's post-training quantization (transformer preset) when the export asks for
INT8, calibrated on the export's sample (``--calib``, else the gate data), and gated by the same parity rules as
the ONNX variant (with ``--openvino-bf16`` also the fp32 IR computed in bf16, where the CPU has it). Then they are
timed on the gate batches, in interleaved turns with the same threads, and the times are recorded for
``Runtime(backend="auto")`` (``bertrt.runtime.backends``).

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
from bertrt.runtime.backends import HOT_AFTER, OPENVINO_FILES, OpenVINOSession, cpu_precisions

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


def outputs(xml: Path, batches, names: list[str], threads: int | None = None, precision: str = "f32") -> list[dict]:
    """The variant's outputs on every gate batch, computed in ``precision``."""
    return session_outputs(OpenVINOSession(xml, threads, precision, static_shapes=False), batches, names)


def session_outputs(session: OpenVINOSession, batches, names: list[str]) -> list[dict]:
    outs = []
    for b in batches:
        res = session.run(b.feeds)
        outs.append({n: np.asarray(res[n], np.float32) for n in names})
    return outs


def time_backends(sessions: dict, batches) -> dict[str, float]:
    """Seconds per pass over ``batches`` of each session (median of ``TIMING_ROUNDS`` interleaved rounds), in the
    steady state the runtime reaches: two warm-up passes, then the shape specialisations they started finished."""
    for _ in range(HOT_AFTER):
        for s in sessions.values():
            for b in batches:
                s.run(b.feeds)
    for s in sessions.values():
        getattr(s, "settle", lambda: None)()
    rounds: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(TIMING_ROUNDS):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            for b in batches:
                s.run(b.feeds)
            rounds[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in rounds.items()}


def gate_precision(int8: bool, compute: str) -> str:
    """The parity rules a variant is judged by: INT8's when its weights are, else those of what it computes in."""
    return "int8" if int8 else ("fp32" if compute == "f32" else "bf16")


def regate(artifact: Path, record: dict, task: str, ref: list[dict], batches, parity) -> dict:
    """Re-run the gates of an artifact's written OpenVINO variant (``record``: its manifest entry), in the compute
    the runtime uses for it on this CPU; returns the parity report (``bertrt verify``)."""
    from bertrt.artifact import TASK_OUTPUTS

    from .parity import check

    session = OpenVINOSession(artifact / OPENVINO_FILES[0], precision=record.get("inference_precision", "f32"),
                              static_shapes=False)  # it falls back to f32 where this CPU lacks the recorded compute
    out = session_outputs(session, batches, TASK_OUTPUTS[task])
    report = check(task, gate_precision(record["precision"].startswith("int8"), session.precision), ref, out, batches,
                   parity)
    return report | {"inference_precision": session.precision}


def candidates(int8: bool, bf16: bool) -> dict[str, str]:
    """compute -> the IR it runs: the export's own IR computing in f32; with ``bf16`` on a CPU that has it, also
    the fp32 IR computing in bf16. Not INT8 computed in bf16: on BBC's short texts that lost 1.35-1.9 points that
    the built-in gate sample could not show, while the fp32 IR in bf16 kept every decision and ran as fast."""
    irs = {"f32": "int8-nncf" if int8 else "fp32"}
    if bf16 and "bf16" in cpu_precisions():
        irs["bf16"] = "fp32"
    return irs


def add_variant(work: Path, onnx_final: Path, precision: str, task: str, ref: list[dict], batches, parity,
                calib_feeds: list[dict], log, bf16: bool = False) -> tuple[dict, dict]:
    """Build, gate and time the OpenVINO variant beside the ONNX one (``onnx_final``, of ``precision``); return
    (the manifest's ``backends`` record, the variant's files to write, none when it missed its gates).

    The variant is the export's IR (NNCF INT8 for an INT8 export) computing in f32 (its ``inference_precision``).
    With ``bf16`` (``--openvino-bf16``), on a CPU that has bf16, the fp32 IR computing in bf16 is also gated (by the
    quantized-precision rules) and timed, and the fastest candidate that passes is written."""
    from bertrt.artifact import TASK_OUTPUTS
    from bertrt.runtime.session import Session

    from .parity import check, failures, format_gates

    int8 = precision.startswith("int8")
    irs = candidates(int8, bf16)
    if bf16 and "bf16" not in irs:
        log("--openvino-bf16: this CPU has no bf16 (AVX-512 BF16 or AMX); the variant computes in f32")
    names = {"int8-nncf": "OpenVINO NNCF INT8", "fp32": "OpenVINO fp32"}
    xmls = {}
    for ir in dict.fromkeys(irs.values()):
        calibrated = f", calibrated on {len(calib_feeds)} batches" if ir == "int8-nncf" else ""
        log(f"building the {names[ir]} variant (from the unfused fp32 graph{calibrated})")
        (work / f"openvino-{ir}").mkdir(exist_ok=True)
        xmls[ir] = build(work / "export.onnx", work / f"openvino-{ir}", ir == "int8-nncf", calib_feeds)
    reports = {c: check(task, gate_precision(ir == "int8-nncf", c), ref,
                        outputs(xmls[ir], batches, TASK_OUTPUTS[task], precision=c), batches, parity)
               for c, ir in irs.items()}
    passing = [c for c in irs if reports[c]["passed"]]
    for c, ir in irs.items():
        verdict = "passes" if reports[c]["passed"] else f"fails ({failures(reports[c])})"
        log(f"{names[ir]}, {c} compute: {verdict}" + (f": {format_gates(reports[c])}" if reports[c]["passed"] else ""))
    backends = {"onnxruntime": {"precision": precision, "passed": True}}
    record = {"source": "unfused fp32 ONNX export", "files": list(OPENVINO_FILES)}
    if not passing:
        backends["openvino"] = record | {"precision": irs["f32"], "passed": False, "parity": reports["f32"]}
        log(f"the {names[irs['f32']]} variant fails its gates; not written, the ONNX variant is")
        return backends, {}
    sessions = {"onnxruntime": Session(str(onnx_final), device="cpu")}
    sessions |= {f"openvino {c}": OpenVINOSession(xmls[irs[c]], precision=c) for c in passing}
    times = time_backends(sessions, batches)
    chosen = min(passing, key=lambda c: times[f"openvino {c}"])
    backends["onnxruntime"]["seconds"] = round(times["onnxruntime"], 6)
    backends["openvino"] = record | {
        "precision": irs[chosen], "inference_precision": chosen, "passed": True,
        "parity": reports[chosen], "seconds": round(times[f"openvino {chosen}"], 6),
        "computes": {c: {"ir": irs[c], "passed": reports[c]["passed"], "seconds": times.get(f"openvino {c}") and
                         round(times[f"openvino {c}"], 6)} for c in irs}}
    backends["timing"] = {"rounds": TIMING_ROUNDS, "batches": len(batches),
                          "rule": "median seconds per pass over the gate batches, interleaved, the runtime's "
                                  "default threads, after warm-up; Runtime(backend='auto') picks the lowest"}
    fastest = "onnxruntime" if times["onnxruntime"] < times[f"openvino {chosen}"] else "openvino"
    log("timed on the gate batches: " + ", ".join(f"{k} {1000 * t:.1f} ms" for k, t in times.items())
        + f"; the variant is the {names[irs[chosen]]} IR computing in {chosen}; backend auto picks {fastest}")
    return backends, {f: xmls[irs[chosen]].parent / f for f in OPENVINO_FILES}
