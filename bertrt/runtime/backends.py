"""Inference backends behind the one ``Runtime``: ONNX Runtime (every artifact's ``model.onnx``) and OpenVINO (CPU,
for an artifact that carries an OpenVINO IR variant; ``bertrt export --openvino``).

The rule ``auto`` follows, written once here: among the backends that are installed, can run on the requested
device and whose variant passed its parity gates at export, pick the one with the lowest time the export measured
on its gate batches (both variants timed in interleaved turns, same threads; ``backends`` in the manifest). Without
those numbers, ONNX Runtime. Those timings come from the machine that exported: on another CPU, measure with
``bertrt bench`` and pass ``backend=`` explicitly. OpenVINO is imported only when its backend is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DeviceError

BACKENDS = ("auto", "onnxruntime", "openvino")
OPENVINO_FILES = ("openvino.xml", "openvino.bin")  # the IR variant's files inside the artifact


def installed(backend: str) -> bool:
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[backend]
    return importlib.util.find_spec(module) is not None


def variant(manifest: dict, backend: str) -> dict | None:
    """The manifest's record of ``backend``'s variant when it passed its gates (ONNX Runtime's always did: an
    artifact is written only then), else None."""
    if backend == "onnxruntime":
        return (manifest.get("backends") or {}).get("onnxruntime") or {"precision": manifest.get("precision")}
    v = (manifest.get("backends") or {}).get(backend)
    return v if v and v.get("passed") and all(f in manifest.get("files", {}) for f in v.get("files", [])) else None


def choose_backend(manifest: dict, backend: str = "auto", device: str = "auto") -> str:
    """The backend a runtime of ``manifest`` uses on ``device``; an explicit choice that cannot run is an error."""
    if backend not in BACKENDS:
        raise DeviceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "openvino":
        if device == "cuda":
            raise DeviceError("the openvino backend runs on the CPU; pass device='cpu' or backend='onnxruntime'")
        if variant(manifest, "openvino") is None:
            raise DeviceError("this artifact carries no OpenVINO variant that passed its gates; re-export it with "
                              "`bertrt export --openvino on` or use backend='onnxruntime'")
        if not installed("openvino"):
            raise DeviceError("backend 'openvino' needs the openvino package: pip install 'bertrt[openvino]'")
        return "openvino"
    if backend == "onnxruntime" or device == "cuda":
        return "onnxruntime"
    if device == "auto":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "onnxruntime"  # a GPU beats either CPU backend
    timed = {name: v["seconds"] for name in ("onnxruntime", "openvino")
             if (v := variant(manifest, name)) and v.get("seconds") and installed(name)}
    return min(timed, key=timed.get) if len(timed) > 1 else "onnxruntime"


class OpenVINOSession:
    """An OpenVINO IR compiled for the CPU; ``run(feeds)`` returns the named outputs as numpy arrays, like
    ``Session``. fp32 parts run in fp32 (``INFERENCE_PRECISION_HINT``): OpenVINO would otherwise use bf16 on CPUs
    that have it, which the export's gates did not measure."""

    device = "cpu"

    def __init__(self, xml_path: str | Path, threads: int | None = None):
        import openvino as ov

        from .session import default_threads

        self.threads = threads or default_threads()
        if self.threads < 1:
            raise DeviceError(f"threads must be >= 1, not {self.threads}")
        core = ov.Core()
        model = core.read_model(str(xml_path))
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                          "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} CPU"]
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.request.infer({n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in self.input_names})
        return {name: np.array(res[port]) for name, port in zip(self.output_names, self.compiled.outputs)}


def open_session(path: Path, manifest: dict, backend: str, device: str, threads: int | None):
    """The inference session of ``backend`` for the artifact at ``path``."""
    if backend == "openvino":
        return OpenVINOSession(path / OPENVINO_FILES[0], threads)
    from .session import Session

    return Session(path / "model.onnx", device=device, threads=threads)


def describe_backends(manifest: dict) -> str:
    """The variants an artifact carries, their gates and export timings, and what ``auto`` picks here."""
    b = manifest.get("backends") or {}
    parts = []
    for name in ("onnxruntime", "openvino"):
        v = b.get(name)
        if not v:
            continue
        state = "" if v.get("passed") else " (failed its gates: not written)"
        timed = f" {1000 * v['seconds']:.1f} ms" if v.get("seconds") else ""
        parts.append(f"{name} {v.get('precision')}{timed}{state}")
    return "; ".join(parts) + f" (per pass over the gate batches); auto picks {choose_backend(manifest, 'auto', 'cpu')}"
