"""``Runtime``: an artifact loaded for inference, with ``predict`` for every task. Torch-free.

    rt = Runtime("artifacts/news", device="cpu")
    rt.predict(["A text", {"text": "premise", "text_pair": "hypothesis"}])
"""

from __future__ import annotations

from pathlib import Path

from ..artifact import INPUT_NAMES, TASK_OUTPUTS, load_manifest
from ..errors import ArtifactError, InputError
from ..tasks.encode import Encoded, TextEncoder
from ..tasks import LABELLED_TASKS
from ..tasks.predict import decode_options, predict
from .backends import choose_backend, open_session
from .encode import parse_input


class Runtime:
    """Load an artifact (model.onnx + tokenizer.json + bertrt.json) and predict.

    ``device``: "auto" (CUDA when onnxruntime offers it, else CPU), "cpu" or "cuda"; a requested device that is
    not really active raises ``DeviceError``. ``threads``: ONNX Runtime intra-op threads (default: the cores this
    process may use; under several workers give each its share). ``max_batch_tokens`` bounds rows x padded length
    of each batch ``predict`` runs; inputs are bucketed by length so that padding stays small. ``trusted_keys``
    (Ed25519 public keys: PEM paths or bytes) refuses an artifact that no trusted key signed (``bertrt sign``).

    Long inputs: qa contexts and ner texts longer than the artifact's max length are split into overlapping
    windows (the stride fine-tuning used, recorded in the manifest) and answered over all of them. classify and
    embed inputs are truncated and say so (``"truncated": true``), unless ``long="chunks"``: then a long single text
    is windowed too and the windows' probabilities (or vectors) are averaged.

    ``backend``: "onnxruntime", "openvino" (CPU; an artifact exported with an OpenVINO variant, and the ``openvino``
    package) or "auto": the fastest installed backend whose variant passed its gates, by the times the export
    measured (``bertrt.runtime.backends``). ``self.backend`` says which one runs.
    """

    def __init__(self, artifact, device: str = "auto", threads: int | None = None, max_batch_tokens: int = 16384,
                 max_batch_size: int = 64, verify: bool = True, long: str = "truncate", trusted_keys=None,
                 backend: str = "auto"):
        path = Path(artifact)
        manifest = load_manifest(path, verify=verify, trusted_keys=trusted_keys)
        encoder = encoder_for(manifest, path / "tokenizer.json", long)
        self.backend = choose_backend(manifest, backend, device)
        session = open_session(path, manifest, self.backend, device, threads)
        self._setup(manifest, encoder, session, max_batch_tokens, max_batch_size, str(path))

    @classmethod
    def from_parts(cls, manifest: dict, encoder: TextEncoder, session, max_batch_tokens: int = 16384,
                   max_batch_size: int = 64) -> "Runtime":
        """Assemble a runtime from a manifest, an encoder and any object with ``run(feeds) -> outputs``,
        ``input_names`` and ``device`` (tests use a fake session to check batching without ONNX Runtime)."""
        rt = cls.__new__(cls)
        rt.backend = getattr(session, "backend", "onnxruntime")
        rt._setup(manifest, encoder, session, max_batch_tokens, max_batch_size, "<parts>")
        return rt

    def _setup(self, manifest, encoder, session, max_batch_tokens, max_batch_size, where):
        self.manifest, self.encoder, self.session, self.path = manifest, encoder, session, where
        self.task, self.labels = manifest["task"], list(manifest.get("labels") or [])
        self.max_length = int(manifest["max_length"])
        if max_batch_tokens < self.max_length or max_batch_size < 1:
            raise InputError(f"max_batch_tokens must be >= the artifact's max_length ({self.max_length}) and "
                             f"max_batch_size >= 1 (got {max_batch_tokens}, {max_batch_size})")
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        unknown = [n for n in session.input_names if n not in INPUT_NAMES]
        if unknown:
            raise ArtifactError(f"{where}: model.onnx wants inputs {unknown}; the runtime provides {INPUT_NAMES}")
        missing = [n for n in TASK_OUTPUTS[self.task] if n not in manifest["outputs"]]
        if missing:
            raise ArtifactError(f"{where}: a {self.task} artifact needs outputs {missing}; re-export it")
        if self.task in LABELLED_TASKS and len(self.labels) < 2:
            raise ArtifactError(f"{where}: a {self.task} artifact needs label names in its manifest; re-export it")

    @property
    def device(self) -> str:
        """The device inference really runs on: "cpu" or "cuda" (checked against the session's providers)."""
        return self.session.device

    def encode(self, inputs: list) -> list[Encoded]:
        """Tokenize; raises ``InputError`` for an input that does not fit the task."""
        return self.encoder.encode([parse_input(item, self.task) for item in inputs])

    def run_batch(self, encs: list[Encoded]) -> list[dict]:
        """Answers for encoded inputs, in order: their rows (windows) grouped into length buckets within
        ``max_batch_tokens`` and ``max_batch_size``, padded, run and decoded. The batcher calls this."""
        return predict(self.task, encs, self.session.run, self.labels, self.encoder.pad_id, self.max_length,
                       self.max_batch_tokens, self.max_batch_size, decode_options(self.manifest))

    infer = run_batch

    def predict(self, inputs):
        """Predict for one input (returns one dict) or a list of inputs (returns a list, in the same order).

        Inputs per task: classify - "text", {"text", "text_pair"} or (text, pair); ner / embed - "text" or
        {"text"}; qa - {"question", "context"} or (question, context).
        """
        single = isinstance(inputs, (str, dict)) or (isinstance(inputs, tuple) and len(inputs) == 2 and
                                                      all(isinstance(x, str) for x in inputs))
        items = [inputs] if single else list(inputs)
        results = self.infer(self.encode(items))
        return results[0] if single else results

    @property
    def long(self) -> str:
        return self.encoder.long

    def __repr__(self) -> str:
        return f"Runtime({self.path!r}, task={self.task!r}, device={self.device!r}, backend={self.backend!r})"


def encoder_for(manifest: dict, tokenizer, long: str = "truncate") -> TextEncoder:
    """The encoder an artifact's inputs need: its task, max length, the windows' stride fine-tuning used and, for a
    prompt artifact, the cloze pattern its texts are filled into."""
    stride = manifest.get("doc_stride")
    prompt = (manifest.get("prompt") or {}).get("pattern")
    return TextEncoder(tokenizer, manifest["task"], int(manifest["max_length"]),
                       None if stride is None else int(stride), long, prompt)
