"""Typed errors. Each message names the problem and, where there is one, the fix; the CLI prints it as one line."""


class BertrtError(Exception):
    """Base class of every error bertrt raises for a user's input (the CLI turns these into one line, no traceback)."""


class CheckpointError(BertrtError):
    """A checkpoint directory is missing, of another architecture, corrupt, or its weights do not fit the config."""


class TokenizerError(BertrtError):
    """A tokenizer cannot be trained, loaded or saved as asked."""


class OutputExistsError(BertrtError):
    """The output path exists and ``force`` was not given."""


class ArtifactError(BertrtError):
    """An artifact is missing a file, fails its sha256 check, or has a manifest this version cannot read."""


class DataError(BertrtError):
    """A task data file (classify, NER, QA, verbalizer) is missing, empty, malformed, or has labels the model lacks."""


class PeftError(BertrtError):
    """A parameter-efficient fine-tuning run or saved adapter cannot be applied, reloaded or merged as asked."""


class PruneError(BertrtError):
    """Pruning cannot run as asked: a budget outside (0, 1], data of another task, or too few examples."""


class DeviceError(BertrtError):
    """The requested device (e.g. CUDA) is not really active in ONNX Runtime: never a silent fallback to the CPU."""


class InputError(BertrtError):
    """An input to ``predict`` or the server has the wrong shape for the artifact's task (e.g. qa without context)."""


class QueueFullError(BertrtError):
    """The batcher's bounded queue is full: the caller should retry later (the server answers 503)."""


class NonFiniteOutputError(BertrtError):
    """The model produced NaN or Inf for an input: that input gets an error, never a number JSON cannot carry."""


class ShutdownError(BertrtError):
    """The batcher is closed and accepts no new work."""


class CorpusError(BertrtError):
    """A pretraining corpus is missing, unreadable, malformed JSONL, or too small for the examples asked for."""


class ExportError(BertrtError):
    """An export option is invalid, or a graph step (export, fusion, quantization) did not produce what it must."""


class EvalDataError(BertrtError):
    """An --eval / --calib file cannot be read, or holds data of another task or with unknown labels."""


class ParityError(BertrtError):
    """A converted model failed a parity gate; carries the measured report so callers can show the numbers."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


class BenchGateError(BertrtError):
    """``bertrt bench`` refused to time a variant: its outputs disagree with the reference beyond its gate.

    ``refusals`` holds one dict per refused variant with the measured agreement, metric and the gate's limits."""

    def __init__(self, message: str, refusals: list[dict] | None = None):
        super().__init__(message)
        self.refusals = refusals or []


class SigningKeyError(BertrtError):
    """A signing or trusted public key is missing, unreadable, not PEM or not Ed25519 (or cryptography is absent)."""


class MaskError(BertrtError):
    """Masking cannot run as asked: an unknown type or style, hash style without a key, NER types without --ner."""
