"""Converters: prune, export to ONNX, optimize, quantize, and the parity gates every variant must pass."""
