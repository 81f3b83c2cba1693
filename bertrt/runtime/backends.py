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
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
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


PRECISIONS = ("f32", "bf16")  # what OpenVINO computes the IR's non-quantized parts in (INFERENCE_PRECISION_HINT)
HOT_AFTER = 2  # a (batch, length) shape run this many times gets a compile of its own, specialised to that shape
MAX_STATIC = 8  # at most this many shape-specialised compiles per session: each holds its own buffers (~10s of MB)


def cpu_precisions() -> tuple[str, ...]:
    """The inference precisions this machine's CPU computes natively (bf16 needs AVX-512 BF16 or AMX)."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return tuple(p for p in PRECISIONS if p == "f32" or p.upper() in caps)


class OpenVINOSession:
    """An OpenVINO IR compiled for the CPU; ``run(feeds)`` returns the named outputs as numpy arrays, like
    ``Session``.

    ``precision``: what the IR's non-quantized parts compute in — "f32", or "bf16" when the export's gates measured
    it (the manifest's ``inference_precision``). OpenVINO's own default would be bf16 on every CPU that has it,
    gated or not, so it is always set; on a CPU without bf16, "bf16" runs in f32 (closer to the reference than
    what the gates passed; ``self.precision`` says which).

    Shapes: the IR is dynamic in batch and length and first runs as such. A shape seen ``HOT_AFTER`` times (lengths
    are padded to a multiple of 8, so real traffic repeats a few) is compiled for that static shape in a background
    thread and runs there once ready: 10-20% faster on the same kernels' arithmetic, measured on BBC at 128 tokens.
    At most ``MAX_STATIC`` shapes are specialised, the first that get hot; a failed specialisation keeps the dynamic
    compile. ``run`` is serialised by a lock: an infer request runs one inference at a time.
    """

    device = "cpu"

    def __init__(self, xml_path: str | Path, threads: int | None = None, precision: str = "f32",
                 static_shapes: bool = True):
        import openvino as ov

        from .session import default_threads

        if precision not in PRECISIONS:
            raise DeviceError(f"unknown OpenVINO inference precision {precision!r}; one of {', '.join(PRECISIONS)}")
        self.threads = threads or default_threads()
        if self.threads < 1:
            raise DeviceError(f"threads must be >= 1, not {self.threads}")
        self.precision = precision if precision in cpu_precisions() else "f32"
        self.xml_path = str(xml_path)
        self._core = ov.Core()
        self._config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_PRECISION_HINT": self.precision}
        self.compiled = self._core.compile_model(self._core.read_model(self.xml_path), "CPU", self._config)
        self.request = self.compiled.create_infer_request()
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} CPU {self.precision}"]
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self.static_shapes = static_shapes
        self._lock = threading.Lock()
        self._seen: Counter = Counter()
        self._static: dict[tuple, object] = {}  # shape -> infer request of its own compile (None: it failed)
        self._pending: dict[tuple, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in self.input_names}
        with self._lock:
            request = self._request_for(arrays[self.input_names[0]].shape)
            res = request.infer(arrays)
            return {name: np.array(res[i]) for i, name in enumerate(self.output_names)}

    def specialised(self) -> list[tuple]:
        """The shapes that run on a compile of their own."""
        return [s for s, r in self._static.items() if r is not None]

    def settle(self) -> None:
        """Wait for the specialisations under way (timing wants the steady state)."""
        with self._lock:
            for shape in list(self._pending):
                self._install(shape)  # waits for it

    def _request_for(self, shape: tuple):
        if shape in self._static:
            return self._static[shape] or self.request
        if shape in self._pending:
            if self._pending[shape].done():
                self._install(shape)
                return self._static[shape] or self.request
        elif self.static_shapes and len(self._static) + len(self._pending) < MAX_STATIC:
            self._seen[shape] += 1
            if self._seen[shape] >= HOT_AFTER:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="bertrt-openvino-compile")
                self._pending[shape] = self._pool.submit(self._compile_static, shape)
        return self.request

    def _compile_static(self, shape: tuple):
        model = self._core.read_model(self.xml_path)
        model.reshape({name: list(shape) for name in self.input_names})
        return self._core.compile_model(model, "CPU", self._config).create_infer_request()

    def _install(self, shape: tuple) -> None:
        future = self._pending.pop(shape)
        self._static[shape] = None if future.exception() else future.result()


def open_session(path: Path, manifest: dict, backend: str, device: str, threads: int | None):
    """The inference session of ``backend`` for the artifact at ``path``."""
    if backend == "openvino":
        precision = variant(manifest, "openvino").get("inference_precision", "f32")
        return OpenVINOSession(path / OPENVINO_FILES[0], threads, precision)
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
        compute = f" ({v['inference_precision']} compute)" if v.get("inference_precision", "f32") != "f32" else ""
        parts.append(f"{name} {v.get('precision')}{compute}{timed}{state}")
    return "; ".join(parts) + f" (per pass over the gate batches); auto picks {choose_backend(manifest, 'auto', 'cpu')}"
