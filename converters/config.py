"""One config dataclass per converter verb; each validates itself and serialises into the artifact manifest.

``ExportConfig`` (PyTorch -> ONNX), ``OptimizeConfig`` (ONNX Runtime's BERT fusions, fp16),
``QuantizeConfig`` (INT8, with CPU presets in the style of optimum's ``AutoQuantizationConfig.avx512_vnni()``),
``ParityConfig`` (the gates every variant must pass). Invalid values raise ``ExportError`` naming the fix.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field

from bertrt.artifact import TASK_OUTPUTS
from bertrt.errors import ExportError

ARTIFACT_TASKS = tuple(TASK_OUTPUTS)  # classify, ner, qa, embed
QUANT_MODES = ("none", "dynamic", "static")
OPENVINO_MODES = ("off", "auto", "on")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Ops kept in fp32 by --fp16: normalisations and reductions lose too much in half precision.
FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax",
                  "ReduceSum", "ReduceMean", "ReduceL2", "Div", "Sqrt", "Pow", "Tanh"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ExportError(message)


class _Config:
    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportConfig(_Config):
    """PyTorch -> ONNX. ``task=None`` takes the checkpoint's task (a bare encoder becomes ``embed``)."""

    task: str | None = None
    opset: int = 17
    max_length: int | None = None  # None: the model's max_position_embeddings
    pooling: str | None = None  # embed: "mean" | "cls"; None keeps the checkpoint's setting
    normalize: bool | None = None  # embed: L2-normalise inside the graph; None keeps the checkpoint's setting
    # a prompt artifact from a masked-LM checkpoint (zero-shot): the cloze pattern and its verbalizer (label ->
    # words); None: the checkpoint's own few-shot prompt record, if it has one
    prompt: str | None = None
    verbalizer: dict | None = None

    def __post_init__(self):
        _check(self.task is None or self.task in ARTIFACT_TASKS,
               f"unknown task {self.task!r} for export; choose one of {', '.join(ARTIFACT_TASKS)} (a sentence-pair "
               "model is 'classify')")
        # 14 is the first opset with the ops the fusions expect; the TorchScript exporter stops at 20
        _check(14 <= self.opset <= 20, f"opset {self.opset} is outside 14..20; 17 is the tested default")
        _check(self.max_length is None or self.max_length >= 8, f"max_length {self.max_length} is too small (>= 8)")
        _check(self.pooling in (None, "mean", "cls"), f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        _check((self.prompt is None) == (self.verbalizer is None),
               "--prompt and --verbalizer go together: the pattern's mask is read through the verbalizer's words")
        _check(self.prompt is None or self.task in (None, "classify"),
               f"a prompt artifact is a classifier (task classify), not {self.task}")


@dataclass
class OptimizeConfig(_Config):
    """ONNX Runtime's transformer fusions for BERT, and optional fp16 for CUDA."""

    enabled: bool = True
    # The raw 2-D mask is correct for any padding side; ORT's default (mask lengths) assumes right padding and is
    # wrong on left-padded batches, which we measured. Only turn this off for a runtime that always right-pads.
    raw_attention_mask: bool = True
    require_full_fusion: bool = True  # refuse when a layer's attention or LayerNorms did not fuse
    fp16: bool = False
    # CPU artifacts: split SkipLayerNormalization back into Add + LayerNormalization (ORT's CPU kernel is slower)
    split_skip_layer_norm: bool = True
    fp16_keep_fp32: list[str] = field(default_factory=lambda: list(FP16_KEEP_FP32))

    def __post_init__(self):
        _check(not (self.fp16 and not self.enabled), "--fp16 needs the optimizer (drop --no-optimize): the fp16 "
               "conversion keeps the fused normalisation ops in fp32")


def detect_cpu() -> str:
    """The CPU preset this machine wants: avx512_vnni, avx2 or arm64 (read from /proc/cpuinfo on Linux)."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "avx2"
    return "avx512_vnni" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "avx2"


# preset: (per_channel, reduce_range). Without VNNI, u8*s8 products can saturate the 16-bit accumulation of
# vpmaddubsw, so AVX2 uses 7-bit weights (reduce_range); VNNI and ARM accumulate in 32 bits and need no headroom.
CPU_PRESETS = {"avx512_vnni": (True, False), "avx2": (True, True), "arm64": (True, False)}


@dataclass
class QuantizeConfig(_Config):
    """INT8 quantization. ``preset="auto"`` picks per-channel / reduce-range from this CPU's features."""

    mode: str = "none"
    preset: str = "auto"
    per_channel: bool | None = None  # None: from the preset
    reduce_range: bool | None = None  # None: from the preset
    calibration: str = "minmax"  # static only
    percentile: float = 99.999  # static + percentile calibration
    calib_samples: int = 256  # static: texts used to calibrate activation ranges
    exclude_layers: list[int] = field(default_factory=list)  # encoder layers kept in fp32 from the start
    fallback: bool = True  # when a gate fails: keep the most sensitive layers in fp32 and retry
    max_fallback_layers: int = 3

    def __post_init__(self):
        _check(self.mode in QUANT_MODES, f"--quantize must be one of {', '.join(QUANT_MODES)}, not {self.mode!r}")
        _check(self.preset == "auto" or self.preset in CPU_PRESETS,
               f"unknown CPU preset {self.preset!r}; choose auto or one of {', '.join(CPU_PRESETS)}")
        _check(self.calibration in CALIBRATION_METHODS,
               f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, not {self.calibration!r}")
        _check(90.0 < self.percentile <= 100.0, f"percentile {self.percentile} must be in (90, 100]")
        _check(self.calib_samples >= 8, f"calib_samples {self.calib_samples} is too few to calibrate (>= 8)")
        _check(all(i >= 0 for i in self.exclude_layers), "exclude_layers holds layer indices (>= 0)")
        _check(self.max_fallback_layers >= 0, "max_fallback_layers must be >= 0")
        if self.preset == "auto":
            self.preset = detect_cpu()
        pc, rr = CPU_PRESETS[self.preset]
        self.per_channel = pc if self.per_channel is None else self.per_channel
        self.reduce_range = rr if self.reduce_range is None else self.reduce_range

    @classmethod
    def avx512_vnni(cls, mode: str = "dynamic", **kw) -> "QuantizeConfig":
        return cls(mode=mode, preset="avx512_vnni", **kw)

    @classmethod
    def avx2(cls, mode: str = "dynamic", **kw) -> "QuantizeConfig":
        return cls(mode=mode, preset="avx2", **kw)

    @classmethod
    def arm64(cls, mode: str = "dynamic", **kw) -> "QuantizeConfig":
        return cls(mode=mode, preset="arm64", **kw)


@dataclass
class OpenVINOConfig(_Config):
    """The artifact's OpenVINO IR variant (NNCF INT8 when the export quantizes, else fp32), gated like the ONNX one:
    "on" builds it (an error without openvino and nncf), "auto" builds it when they are installed, "off" never.
    The CLI's default is "auto"; the library's is "off", so that an export costs no second variant unless asked."""

    mode: str = "off"
    # Also gate and time the fp32 IR computed in bf16, on a CPU that has bf16; the fastest candidate that passes is
    # kept (``openvino_variant.candidates``). None (the default): when the export quantizes -- bf16 is nearer fp32
    # than INT8 is (BBC: 46 against 30 dB SNR, 1.16x the throughput) -- and not for an fp32 export, which must not
    # compute below fp32 unasked.
    bf16: bool | None = None

    def wants_bf16(self, quantized: bool) -> bool:
        return quantized if self.bf16 is None else self.bf16

    def __post_init__(self):
        _check(self.mode in OPENVINO_MODES, f"--openvino must be one of {', '.join(OPENVINO_MODES)}, not "
               f"{self.mode!r}")


@dataclass
class ParityConfig(_Config):
    """The gates. Tolerances belong to the precision: fp32 is compared elementwise, INT8 and fp16 by SNR."""

    eval_path: str | None = None  # labelled data of the task; None: the built-in English sample
    max_drop: float = 0.5  # task metric drop allowed vs fp32, in points (percent)
    fp32_atol: float = 1e-4  # max abs error of fp32 outputs vs PyTorch
    int8_min_snr_db: float = 20.0  # output signal-to-noise floor for INT8 (torchao's floor)
    fp16_min_snr_db: float = 30.0
    # INT8 / fp16: at most 1 - min_agreement of the decisions may flip beyond the precision's noise, judged by a
    # one-sided 95% bound (bertrt.tasks.agreement); fp32 must agree everywhere
    min_agreement: float = 0.99
    min_cosine_fp32: float = 0.9999  # embed: cosine to PyTorch, per text
    min_cosine_quantized: float = 0.99
    max_samples: int = 512  # texts read from the eval data
    batch_size: int = 16
    device: str = "cpu"  # where the ONNX variant runs for the gates: cpu | cuda

    def __post_init__(self):
        _check(0.0 <= self.max_drop <= 100.0, f"--max-drop {self.max_drop} must be in points between 0 and 100")
        _check(self.fp32_atol > 0, "fp32_atol must be > 0")
        _check(0.0 < self.min_agreement <= 1.0, f"min_agreement {self.min_agreement} must be in (0, 1]")
        _check(0.0 < self.min_cosine_quantized <= 1.0 and 0.0 < self.min_cosine_fp32 <= 1.0,
               "cosine floors must be in (0, 1]")
        _check(self.max_samples >= 8, f"max_samples {self.max_samples} is too few for a gate (>= 8)")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.device in ("cpu", "cuda"), f"device must be cpu or cuda, not {self.device!r}")
