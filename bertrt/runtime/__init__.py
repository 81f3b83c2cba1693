"""Torch-free inference: ONNX Runtime session, tokenization, batching, postprocessing, HTTP server.

Imports only numpy, tokenizers and onnxruntime (the server adds its ASGI stack, imported by ``bertrt.runtime.server``
alone; the OpenVINO backend imports openvino only when it is used).
"""

from .runtime import Runtime

__all__ = ["Runtime"]
