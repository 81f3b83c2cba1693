"""ONNX Runtime session: provider choice, explicit thread counts, IO binding on CUDA, and a device check.

A requested device that is not really active is an error. ONNX Runtime falls back to the CPU provider when the CUDA
provider cannot load (missing libraries, CPU-only wheel) and only logs a warning; we read back the providers the
session actually holds and refuse to run on anything but what was asked.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ONNX Runtime's own session optimizer would fuse Add + LayerNormalization back into SkipLayerNormalization, whose
# CPU kernel is several times slower (onnxruntime 1.32, 2 threads, 32 x 128 x 384: 3.9 ms against 0.85 ms; a third
# of a pruned INT8 BERT's time). CPU artifacts ship the pair (bertrt.converters.optimize) and keep it this way.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def default_threads() -> int:
    """CPU cores this process may use (respects taskset/cgroup affinity), the default intra-op thread count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_device(device: str, available: list[str]) -> str:
    """Map ``auto`` to ``cuda`` when ONNX Runtime offers the CUDA provider, else ``cpu``; check explicit choices."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if CUDA in available else "cpu"
    if device == "cuda" and CUDA not in available:
        raise DeviceError(f"device 'cuda' was requested but this onnxruntime build offers only {', '.join(available)}; "
                          "install bertrt[gpu] (onnxruntime-gpu, and not the CPU onnxruntime package beside it), "
                          "or pass device='cpu'")
    return device


class Session:
    """One ONNX Runtime inference session; ``run(feeds)`` returns the named outputs as numpy arrays on the host."""

    def __init__(self, model_path: str, device: str = "auto", threads: int | None = None, device_id: int = 0,
                 ort_defaults: bool = False):
        """``ort_defaults``: leave ONNX Runtime's graph optimizers as they are (the bench's peers), instead of
        turning off the ones ``CPU_DISABLED_OPTIMIZERS`` lists on CPU."""
        import onnxruntime as ort

        self.device = resolve_device(device, ort.get_available_providers())
        self.threads = threads or default_threads()
        if self.threads < 1:
            raise DeviceError(f"threads must be >= 1, not {self.threads}")
        opts = ort.SessionOptions()
        # Explicit thread counts: one pool of `threads` for the operators, no second pool competing with it.
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Memory patterns are cached per input shape; with dynamic batch and sequence sizes they only grow memory.
        opts.enable_mem_pattern = False
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only; a failed CUDA load is detected below, not just logged
        if self.device == "cuda":
            providers = [(CUDA, {"device_id": device_id}), CPU]
        else:
            providers = [CPU]
        disabled = list(CPU_DISABLED_OPTIMIZERS) if self.device == "cpu" and not ort_defaults else []
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers,
                                            disabled_optimizers=disabled)
        self.providers = self.session.get_providers()
        if self.device == "cuda" and self.providers[0] != CUDA:
            raise DeviceError(f"device 'cuda' was requested but ONNX Runtime could not start its CUDA provider "
                              f"(session providers: {', '.join(self.providers)}); check the CUDA and cuDNN libraries "
                              "that onnxruntime-gpu needs (see its install matrix), or pass device='cpu'")
        self.device_id = device_id
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # the graph decides the integer type of its inputs (int64 from torch.onnx, int32 from some optimizers)
        self.input_dtypes = {i.name: np.int32 if i.type == "tensor(int32)" else np.int64
                             for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: np.ascontiguousarray(feeds[name], dtype=self.input_dtypes[name]) for name in self.input_names}
        if self.device == "cuda":
            return self._run_bound(feeds)
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CUDA with IO binding: inputs copied to the GPU once, outputs bound to host memory (no extra copies)."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self.device_id))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
