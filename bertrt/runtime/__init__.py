"""Torch-free inference: ONNX Runtime session, tokenization, batching, postprocessing, HTTP server."""
