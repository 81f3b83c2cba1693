"""bertrt artifacts as bench predictors: ``Runtime`` exactly as users call it (torch-free), for every task."""

from __future__ import annotations

from pathlib import Path



def describe_artifact(manifest: dict) -> str:
    """A short variant name from the manifest: precision, fused or not, pruned or not."""
    fused = (manifest.get("optimization") or {}).get("enabled")
    parts = [manifest.get("precision", "?")]
    if manifest.get("precision") == "fp32":
        parts.append("fused" if fused else "unfused")
    if manifest.get("pruning"):
        parts.insert(0, "pruned")
    return " ".join(parts)


class ArtifactPredictor:
    kind = "bertrt"

    def __init__(self, path: str | Path, threads: int, name: str | None = None, long: str = "truncate",
                 backend: str = "auto"):
        from ..runtime import Runtime
        from ..runtime.backends import OPENVINO_FILES

        self.path = Path(path)
        self.rt = Runtime(self.path, device="cpu", threads=threads, long=long, backend=backend)
        self.manifest = self.rt.manifest
        engine = "" if self.rt.backend == "onnxruntime" else f", {self.rt.backend}"
        self.name = name or f"bertrt {describe_artifact(self.manifest)} ({self.path.name}{engine})"
        self.precision = self.manifest.get("precision", "fp32")
        files = ["model.onnx"]
        if self.rt.backend == "openvino":
            v = self.manifest["backends"]["openvino"]
            self.precision, files = v["precision"], list(OPENVINO_FILES)
            if self.rt.session.precision != "f32":  # what the non-quantized parts compute in, when not f32
                self.precision += f"+{self.rt.session.precision}"
        self.max_length = self.rt.max_length
        self.size_mb = round(sum((self.path / f).stat().st_size for f in files + ["tokenizer.json"]) / 2 ** 20, 2)

    def tokenize(self, texts: list[str]):
        return self.rt.encode(texts)

    def predict(self, texts: list, batch_size: int) -> list[dict]:
        # batches of at most batch_size rows, bucketed by length (the same plan the peers get)
        self.rt.max_batch_size = batch_size
        self.rt.max_batch_tokens = batch_size * self.max_length
        return self.rt.predict(texts)
