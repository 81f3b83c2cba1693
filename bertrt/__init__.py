"""bertrt: train, compress, export and serve BERT models.

``import bertrt`` is light: it imports neither torch, transformers nor onnx. The runtime entry points below load
on first use.
"""

__version__ = "0.1.0"

__all__ = ["Runtime", "load_artifact", "__version__"]


def __getattr__(name):  # lazy, so that `import bertrt` stays fast and torch-free
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    if name == "load_artifact":
        from .artifact import load_manifest

        return load_manifest
    raise AttributeError(f"module 'bertrt' has no attribute {name!r}")
