"""Artifact commands of the ``bertrt`` command line: ``export`` (checkpoint -> gated ONNX/OpenVINO artifact),
``verify`` (re-check one) and ``info`` (describe a checkpoint or an artifact). Merged into the main app by
``bertrt/cli.py``; thin over ``bertrt.converters``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .cli_options import TRUSTED_KEY_HELP, parse_ints

app = typer.Typer(rich_markup_mode=None)


# ---------------------------------------------------------------------------------------------------- info
@app.command()
def info(
    path: Path = typer.Argument(..., help="A checkpoint directory (bertrt or Hugging Face BERT) or an artifact."),
    seq_len: int = typer.Option(128, help="Sequence length for the FLOPs-per-token count (attention grows "
                                "with it)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of text (for an "
                                 "artifact: its whole manifest, kept-neuron indices included)."),
):
    """Describe a checkpoint (architecture, task, labels, parameters, per-layer sizes, FLOPs) or an artifact (task,
    labels, precision, fusions, quantized nodes, per-layer sizes, gates with their numbers, versions)."""
    from .artifact import MANIFEST

    if (path / MANIFEST).is_file():
        from .artifact import format_manifest, load_manifest

        manifest = load_manifest(path, verify=True)
        typer.echo(json.dumps(manifest, indent=2) if as_json else format_manifest(path, manifest))
        return
    from .checkpoint import checkpoint_report, format_checkpoint_report

    report = checkpoint_report(path, seq_len)
    typer.echo(json.dumps(report, indent=2) if as_json else format_checkpoint_report(path, report))


# ---------------------------------------------------------------------------------------------------- export
class ExportTask(str, Enum):
    classify = "classify"
    multilabel = "multilabel"
    relation = "relation"
    ner = "ner"
    qa = "qa"
    embed = "embed"


class QuantizeMode(str, Enum):
    none = "none"
    dynamic = "dynamic"
    static = "static"


class QuantPreset(str, Enum):
    auto = "auto"
    avx512_vnni = "avx512_vnni"
    avx2 = "avx2"
    arm64 = "arm64"


class CalibMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


class PoolingMode(str, Enum):
    mean = "mean"
    cls = "cls"


class OpenVINOMode(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class GateDevice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A bertrt checkpoint or any Hugging Face BERT directory "
                                      "(including one fine-tuned by transformers)."),
    output: Path = typer.Option(..., "-o", "--output", help="Artifact folder to create (model.onnx, tokenizer.json, "
                                "bertrt.json), written atomically once every gate passes."),
    task: Optional[ExportTask] = typer.Option(None, help="Artifact task. Default: the checkpoint's own (a bare "
                                              "encoder exports embed). Use embed to get sentence embeddings from "
                                              "any checkpoint."),
    pooling: Optional[PoolingMode] = typer.Option(None, help="embed: mean over real tokens or the [CLS] vector. "
                                                  "Default: the checkpoint's setting (mean). all-MiniLM-L6-v2 wants "
                                                  "mean."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="embed: L2-normalise inside "
                                             "the graph. Turn on for cosine-similarity search (sentence-transformers "
                                             "models such as all-MiniLM-L6-v2 do)."),
    max_length: Optional[int] = typer.Option(None, help="Longest input the artifact accepts (tokens). Default: the "
                                             "model's position limit; lower it to what you will serve."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Zero-shot prompt artifact from a masked-LM "
                                         "checkpoint: the cloze pattern ('{text} It is about [MASK].') its texts are "
                                         "filled into; the graph gives one logit per --verbalizer label. A checkpoint "
                                         "from finetune --prompt exports its own prompt without this."),
    verbalizer: Optional[Path] = typer.Option(None, "--verbalizer", help="With --prompt: JSON mapping each label to "
                                              "one or more single-token words."),
    opset: int = typer.Option(17, help="ONNX opset. 17 is tested; change it only for an older runtime."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="ONNX Runtime's BERT fusions (Attention, "
                                  "SkipLayerNormalization, EmbedLayerNormalization, BiasGelu; on CPU the "
                                  "SkipLayerNormalizations are then split back into Add + LayerNormalization, which "
                                  "ONNX Runtime runs faster). Turn off only to debug a fusion problem."),
    allow_partial_fusion: bool = typer.Option(False, help="Write the artifact even when some layers did not fuse "
                                              "(recorded as a warning). By default a partial fusion is refused."),
    right_padding_only: bool = typer.Option(False, help="Let fused attention read mask lengths instead of the mask: "
                                            "slightly faster, but wrong for left-padded input. Only for a runtime "
                                            "that always pads on the right (bertrt's does)."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision for CUDA, keeping normalisations and softmax-like "
                              "ops in fp32. Slower on most CPUs: use INT8 there."),
    quantize: QuantizeMode = typer.Option(QuantizeMode.none, help="INT8 for CPU: dynamic (no data needed) or static "
                                          "QDQ calibrated on --calib. Try dynamic first."),
    preset: QuantPreset = typer.Option(QuantPreset.auto, help="CPU the INT8 model is for; auto reads this machine's "
                                       "features. Set it when exporting for another machine."),
    per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor", help="Weight scales per output "
                                               "channel (more accurate) or per tensor. Default: from the preset."),
    reduce_range: Optional[bool] = typer.Option(None, "--reduce-range/--full-range", help="7-bit weights, which "
                                                "avoid overflow on CPUs without VNNI. Default: from the preset."),
    calib: Optional[Path] = typer.Option(None, help="Text for static calibration (same formats as --eval; "
                                         "labels ignored). Default: --eval, else the built-in sample."),
    calibration: CalibMethod = typer.Option(CalibMethod.minmax, help="Static range estimation: minmax is robust; "
                                            "percentile or entropy clip outliers and can help when minmax loses "
                                            "accuracy."),
    calib_samples: int = typer.Option(256, help="Texts used for static calibration; more is steadier and slower."),
    exclude_layers: Optional[str] = typer.Option(None, help="Encoder layers to keep in fp32 from the start, e.g. "
                                                 "'0,5' (the fallback finds them itself otherwise)."),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help="When INT8 misses a gate, keep the most "
                                  "sensitive layers in fp32 and retry. Turn off to fail fast."),
    max_fallback_layers: int = typer.Option(3, help="Most layers the fallback may keep in fp32 before refusing."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled data of the model's task for the gates "
                                             "(classify JSONL/CSV/TSV, ner CoNLL/JSONL, qa SQuAD, or .txt lines). "
                                             "Default: a built-in English sample (no task metric then)."),
    max_drop: float = typer.Option(0.5, help="Task-metric loss allowed vs PyTorch fp32, in points. Raise it only if "
                                   "you accept that accuracy cost for speed."),
    max_samples: int = typer.Option(512, help="Examples read from --eval for the gates; more is slower and surer."),
    batch_size: int = typer.Option(16, help="Batch size of the gate runs (rows of mixed lengths, right-padded)."),
    device: GateDevice = typer.Option(GateDevice.cpu, help="Where the gates run the ONNX model: cuda for fp16 "
                                      "artifacts meant for GPUs (needs onnxruntime-gpu)."),
    openvino: OpenVINOMode = typer.Option(OpenVINOMode.auto, help="Also write an OpenVINO IR variant (NNCF INT8 "
                                          "with --quantize, else fp32), gated like the ONNX one and timed beside "
                                          "it, so that the runtime's backend auto can pick the faster: auto when "
                                          "openvino and nncf are installed (the openvino extra); off for a smaller, "
                                          "quicker export; on to fail without them."),
    openvino_bf16: Optional[bool] = typer.Option(None, "--openvino-bf16/--no-openvino-bf16", help="Also gate and "
                                                 "time the fp32 OpenVINO IR computing in bf16 on a CPU with bf16 "
                                                 "(AVX-512 BF16 or AMX), and keep the fastest variant that passes. "
                                                 "Default: with --quantize (bf16 is nearer fp32 than INT8 is), not "
                                                 "for an fp32 export."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact at --output."),
):
    """Export a checkpoint to a verified ONNX artifact: export, fuse, optionally quantize, and pass the parity
    gates (tensor, decision, task metric) before anything is written."""
    from .converters.config import ExportConfig, OpenVINOConfig, OptimizeConfig, ParityConfig, QuantizeConfig
    from .converters.pipeline import export_artifact
    from .tasks.prompt import read_verbalizer

    configs = dict(
        export=ExportConfig(task=task.value if task else None, opset=opset, max_length=max_length,
                            pooling=pooling.value if pooling else None, normalize=normalize, prompt=prompt,
                            verbalizer=read_verbalizer(verbalizer) if verbalizer is not None else None),
        optimize=OptimizeConfig(enabled=optimize, raw_attention_mask=not right_padding_only,
                                require_full_fusion=not allow_partial_fusion, fp16=fp16),
        quantize=QuantizeConfig(mode=quantize.value, preset=preset.value, per_channel=per_channel,
                                reduce_range=reduce_range, calibration=calibration.value,
                                calib_samples=calib_samples, exclude_layers=parse_ints(exclude_layers, "--exclude-layers"),
                                fallback=fallback, max_fallback_layers=max_fallback_layers),
        parity=ParityConfig(eval_path=str(eval_data) if eval_data else None, max_drop=max_drop,
                            max_samples=max_samples, batch_size=batch_size, device=device.value),
        openvino=OpenVINOConfig(mode=openvino.value, bf16=openvino_bf16),
    )
    manifest = export_artifact(checkpoint, output, calib_path=str(calib) if calib else None, force=force, **configs)
    typer.echo(_format_export(output, manifest))


def _format_export(path: Path, m: dict) -> str:
    """What an export produced, in a few lines: precision, fusions, quantized nodes, and every gate's number."""
    lines = [f"artifact   {path}: {m['task']}, {m['precision']}, inputs up to {m['max_length']} tokens, "
             f"padding {m.get('padding', 'any')}"]
    opt = m.get("optimization") or {}
    if opt.get("fusions"):
        want = opt.get("expected", {})
        lines.append("fusions    " + ", ".join(f"{op} {n}" + (f"/{want[op]}" if op in want else "")
                                              for op, n in opt["fusions"].items()))
    q = m.get("quantization")
    if q:
        counts = ", ".join(f"{k} {v}" for k, v in q["counts"].items() if v)
        lines.append(f"quantized  {q['mode']} ({q['preset']}, per-channel {q['per_channel']}, reduce-range "
                     f"{q['reduce_range']}): {counts}; fp32 units: {', '.join(q['fp32_units']) or 'none'}")
    final = m["parity"]["final"]
    from .converters.parity import format_gates

    lines.append(f"gates      on {m['parity']['data']} ({final['examples']} examples): "
                 + format_gates(final, rules="rule", sep="; "))
    if final["gates"]["decision"].get("detail"):
        lines.append(f"decisions  {final['gates']['decision']['detail']}")
    if final.get("decided_by"):
        lines.append(f"decided by {final['decided_by']}")
    from .runtime.backends import describe_backends

    if m.get("backends"):
        lines.append(f"backends   {describe_backends(m)}")
    return "\n".join(lines)


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="An artifact folder written by `bertrt export`."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Data to re-run the gates on (formats as for "
                                             "export). Default: the built-in sample."),
    checkpoint: Optional[Path] = typer.Option(None, help="The PyTorch reference. Default: the checkpoint recorded in "
                                              "the manifest (refused if its weights changed)."),
    hashes_only: bool = typer.Option(False, "--hashes-only", help="Only check the sha256 of every file (no torch "
                                     "needed): use it on serving machines."),
    trusted_key: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
):
    """Re-check an artifact: the sha256 of every file, then the parity gates against the PyTorch model."""
    if hashes_only or trusted_key:
        from .artifact import load_manifest

        m = load_manifest(artifact, verify=True, trusted_keys=trusted_key or None)
        signed = ", signature by a trusted key verified" if trusted_key else ""
        typer.echo(f"{artifact}: sha256 of {len(m['files'])} files verified{signed}")
        if hashes_only:
            return
    from .converters.pipeline import verify_artifact

    report = verify_artifact(artifact, eval_path=str(eval_data) if eval_data else None,
                             checkpoint=str(checkpoint) if checkpoint else None)
    shown = {k: report[k] for k in ("precision", "examples", "agreement", "gates")}
    if "openvino" in report:
        shown["openvino"] = {k: report["openvino"][k] for k in ("inference_precision", "agreement", "gates")}
    typer.echo(json.dumps(shown, indent=2))
